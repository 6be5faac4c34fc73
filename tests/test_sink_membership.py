"""A sink that loses its consumer-group membership rejoins instead of crashing.

Its session times out when the process is paused (SIGSTOP here; a GC pause or a frozen
container in production) or the broker stalls. Two ways it surfaces, one test each:

- librdkafka notices first and reports the assignment lost, then the group hands the
  partitions back and they are replayed from the committed offsets -- into the
  checkpoint still open from before the pause (Quix: ``InvalidStoredOffset``);
- the group refuses the next commit (Quix: ``CheckpointConsumerCommitError ... Unknown
  member``). Which of the two a real pause hits first is a race, so the refusal is
  injected here at the consumer's commit, the one place the broker's answer arrives.
"""

from __future__ import annotations

import logging
import signal
import time

import pytest
from confluent_kafka import KafkaError, KafkaException

from crypto_live.settings import KafkaSettings, load
from processors.s3_sink import STAGE, application, jsonl_sink
from processors.stream import coordinator_unreachable, lost_membership, state_directory
from tests import test_s3_sink as in_process
from tests import test_s3_sink_process as as_process
from tests.conftest import TEST_SESSION_TIMEOUT_MS
from tests.factories import assert_exactly_once, committed, key_of, publish, run_app_until, ticker
from tests.helpers import cli_env, read_topic, wait_for
from tests.test_s3_sink import all_rows, sink_settings, stored

s3, bucket, sinks = in_process.s3, in_process.bucket, as_process.sinks  # the same fixtures

LOST = "lost group membership"


def stored_keys(s3, bucket: str) -> list[tuple[str, int]]:
    return [key_of(row) for row in all_rows(stored(s3, bucket))]


def dead_letters(kafka: KafkaSettings) -> int:
    return len(read_topic(kafka.bootstrap_servers, kafka.dlq_topic, timeout=1, idle=0.2))


def test_a_sink_frozen_past_its_session_timeout_rejoins_replays_and_stores_every_event_once(
    kafka_env, aws_env, s3, bucket, sinks
):
    # A batch that closes only on SIGTERM: the frozen sink holds it open and uncommitted.
    env = cli_env(
        kafka_env,
        aws_env,
        {"S3_BUCKET": bucket, "KAFKA_TOPIC_PARTITIONS": "1", "MAX_BATCH_SIZE": "1000", "MAX_BATCH_TIMEOUT": "300"},
    )
    kafka, group = load(KafkaSettings, env), env["S3_SINK_GROUP"]
    events = [ticker(n) for n in range(10)]
    # A poison message last: its dead letter shows the sink has read everything before it.
    publish(kafka, [*events, b"probe"])
    sink = sinks(env)
    wait_for(lambda: not sink.alive or dead_letters(kafka) == 1, 60, what="the probe's dead letter")
    assert sink.alive, sink.log()
    assert committed(kafka.bootstrap_servers, group, kafka.topic, 1) == [-1001]  # the batch is open

    sink.process.send_signal(signal.SIGSTOP)
    time.sleep(1.5 * int(TEST_SESSION_TIMEOUT_MS) / 1000)  # the pause itself: past the session timeout
    sink.process.send_signal(signal.SIGCONT)

    # Replayed from the committed offsets (none: the earliest), so the probe is dead-lettered again.
    wait_for(lambda: not sink.alive or dead_letters(kafka) == 2, 30, what="the replay's dead letter")
    assert sink.alive, sink.log()
    assert sink.terminate() == 0, sink.log()
    output = "".join(sink.lines)
    assert output.count(LOST) == 1, sink.log()
    assert "Traceback" not in output, sink.log()
    assert_exactly_once(stored_keys(s3, bucket), map(key_of, events))
    assert committed(kafka.bootstrap_servers, group, kafka.topic, 1) == [11]


UNREACHABLE = "group coordinator is unreachable"


@pytest.mark.parametrize(
    ("code", "text", "warning"),
    [
        (KafkaError.UNKNOWN_MEMBER_ID, "Commit failed: Broker: Unknown member", LOST),
        # The broker gone mid-run (tests/test_faults_outage.py): this used to end the sink with a traceback.
        (KafkaError._WAIT_COORD, "Commit failed: Local: Waiting for coordinator", UNREACHABLE),
    ],
    ids=["lost membership", "coordinator unreachable"],
)
def test_a_commit_that_fails_for_lost_membership_or_an_unreachable_coordinator_is_dropped_and_the_sink_keeps_going(
    kafka_env, s3, bucket, monkeypatch, caplog, code, text, warning
):
    settings = sink_settings(
        kafka_env, bucket, KAFKA_TOPIC_PARTITIONS="1", MAX_BATCH_SIZE="1000", MAX_BATCH_TIMEOUT="0.5"
    )
    kafka = settings.kafka
    events = [ticker(n) for n in range(20)]
    sink = jsonl_sink(settings)
    refusals: list[int] = []

    with state_directory(STAGE) as state_dir:
        app = application(settings, sink, state_dir)
        consumer = app._consumer  # where the broker's answer to a commit arrives
        commit = consumer.commit

        def refuse_first(*args, **kwargs):
            if not refusals:
                refusals.append(1)
                raise KafkaException(KafkaError(code, text))
            return commit(*args, **kwargs)

        monkeypatch.setattr(consumer, "commit", refuse_first)

        def scenario() -> None:
            publish(kafka, events[:10])
            wait_for(lambda: refusals, 30, what="the refused commit")
            publish(kafka, events[10:])
            wait_for(
                lambda: committed(kafka.bootstrap_servers, settings.consumer_group, kafka.topic, 1) == [20],
                30,
                interval=0.2,
                what="the later batch committed",
            )

        with caplog.at_level(logging.WARNING, logger="processors.stream"):
            run_app_until(app, scenario)

    said = [r.getMessage() for r in caplog.records if warning in r.getMessage()]
    assert len(said) == 1 and text in said[0], said
    # The refused batch was written before its commit was refused; nothing lost, nothing twice.
    assert_exactly_once(stored_keys(s3, bucket), map(key_of, events))


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (KafkaError.UNKNOWN_MEMBER_ID, "lost"),
        (KafkaError.ILLEGAL_GENERATION, "lost"),
        (KafkaError.REBALANCE_IN_PROGRESS, "lost"),
        (KafkaError._ASSIGNMENT_LOST, "lost"),
        (KafkaError._WAIT_COORD, "unreachable"),
        (KafkaError.COORDINATOR_NOT_AVAILABLE, "unreachable"),
        (KafkaError._TRANSPORT, "unreachable"),
        (KafkaError._ALL_BROKERS_DOWN, "unreachable"),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, None),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, None),
        (KafkaError.OFFSET_METADATA_TOO_LARGE, None),
    ],
)
def test_only_lost_membership_and_an_unreachable_coordinator_are_survived(code, kind):
    """Any other commit failure (a refusal that will not change) still stops the sink."""
    error = KafkaError(code)
    assert (lost_membership(error), coordinator_unreachable(error)) == (kind == "lost", kind == "unreachable")
