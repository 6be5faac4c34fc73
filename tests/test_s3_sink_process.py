"""`crypto-live s3-sink` as a process: kill -9 and restarts, SIGTERM, two instances in one group."""

from __future__ import annotations

import re
import signal
import time
from collections import Counter

import orjson
import pytest

from crypto_live.settings import KafkaSettings, load
from processors.s3_sink import STAGE
from tests import figures
from tests import test_s3_sink as in_process
from tests.factories import committed, publish, ticker
from tests.helpers import CliProcess, cli_env, read_topic, wait_for
from tests.test_s3_sink import (
    NEXT_HOUR,
    all_rows,
    first_offset,
    identities,
    incarnations,
    key_count,
    recreate_topic,
    stored,
)

s3, bucket = in_process.s3, in_process.bucket  # the same fixtures
SYMBOLS = ["BTCUSDT", "ETHUSDT", "BNBBTC", "SOLUSDT", "XRPUSDT", "ADAUSDT", "DOGEUSDT", "TRXUSDT"]


class SinkProcess(CliProcess):
    """One `crypto-live s3-sink` child; its log lines are collected as they come."""

    def __init__(self, env: dict[str, str]):
        super().__init__(["s3-sink"], env)

    def written_keys(self) -> list[str]:
        return [m.group(1) for line in self.lines if (m := re.search(r" wrote s3://[^/]+/(\S+) \(", line))]

    def log(self) -> str:
        return self.output()[-4000:]

    def terminate(self, timeout: float = 30) -> int:
        return self.stop(signal.SIGTERM, timeout)


@pytest.fixture
def sinks():
    started: list[SinkProcess] = []

    def start(env: dict[str, str]) -> SinkProcess:
        started.append(SinkProcess(env))
        return started[-1]

    yield start
    for sink in started:
        if sink.alive:
            sink.kill()


def offsets(kafka: KafkaSettings, group: str) -> list[int]:
    """The offsets ``group`` committed on each partition of the event topic (negative: none yet)."""
    return committed(kafka.bootstrap_servers, group, kafka.topic, kafka.partitions)


def ends(events: list[dict], partitions: int) -> list[int]:
    """The end offset of each partition once ``events`` were produced :func:`by_symbol` into an empty topic."""
    counts = Counter(map(by_symbol(partitions), events))
    return [counts[p] for p in range(partitions)]


def stream_across_an_hour(count: int) -> list[dict]:
    """Events of several symbols around 23:00, every 50th one a late 22:5x event."""
    return [
        ticker(
            n,
            symbol=SYMBOLS[n % len(SYMBOLS)],
            event_time=NEXT_HOUR - count * 20 + n * 40 - (300_000 if n % 50 == 7 else 0),
        )
        for n in range(count)
    ]


def by_symbol(partitions: int):
    return lambda event: SYMBOLS.index(event["s"]) % partitions


def test_every_event_exactly_once_after_kill_9_at_three_points(kafka_env, aws_env, s3, bucket, sinks):
    env = cli_env(
        kafka_env,
        aws_env,
        {"S3_BUCKET": bucket, "KAFKA_TOPIC_PARTITIONS": "3", "MAX_BATCH_SIZE": "20", "MAX_BATCH_TIMEOUT": "1"},
    )
    kafka, group = load(KafkaSettings, env), env["S3_SINK_GROUP"]
    events = stream_across_an_hour(3000)
    publish(kafka, events, partition_of=by_symbol(3))
    end = ends(events, 3)

    for objects_before_kill in (30, 70, 110):
        sink = sinks(env)
        wait_for(
            lambda sink=sink, n=objects_before_kill: not sink.alive or key_count(s3, bucket) >= n,
            60,
            interval=0.02,
            what=f"{objects_before_kill} objects",
        )
        assert sink.alive, sink.log()
        sink.kill()
        assert offsets(kafka, group) != end, "the sink was not killed mid-stream"

    last = sinks(env)
    wait_for(lambda: not last.alive or offsets(kafka, group) == end, 60, interval=0.2, what="every offset committed")
    assert last.terminate() == 0, last.log()

    objects = stored(s3, bucket)
    assert identities(all_rows(objects)) == identities(events)  # no duplicate, no gap
    assert max(len(rows) for rows in objects.values()) <= 20
    assert {key.split("/")[2] for key in objects} == {"hour=22", "hour=23"}


def test_sigterm_writes_and_commits_the_open_batch_exits_0_and_leaves_no_state_directory(
    kafka_env, aws_env, s3, bucket, sinks, tmp_path
):
    env = cli_env(
        kafka_env,
        aws_env,
        {"S3_BUCKET": bucket, "KAFKA_TOPIC_PARTITIONS": "1", "MAX_BATCH_SIZE": "25", "MAX_BATCH_TIMEOUT": "300"},
        {"TMPDIR": str(tmp_path)},  # where each run's Quix state directory goes
    )
    kafka, group = load(KafkaSettings, env), env["S3_SINK_GROUP"]
    events = [ticker(n) for n in range(30)]
    # A poison message last: its dead letter shows the sink has read everything before it.
    publish(kafka, [*events, b"probe 1"])

    sink = sinks(env)
    wait_for(
        lambda: not sink.alive or read_topic(kafka.bootstrap_servers, kafka.dlq_topic, timeout=1, idle=0.2),
        60,
        what="the probe's dead letter",
    )
    assert sink.alive, sink.log()
    assert list(tmp_path.glob(f"crypto-live-{STAGE}-*")), "the run keeps its state elsewhere: nothing to check"
    assert sink.terminate() == 0, sink.log()
    assert not list(tmp_path.glob("crypto-live-*"))

    objects = stored(s3, bucket)
    assert [(first_offset(k), len(rows)) for k, rows in sorted(objects.items())] == [(0, 25), (25, 5)]
    assert offsets(kafka, group) == [31]  # a restart starts after what was written

    publish(kafka, [ticker(30), b"probe 2"])
    again = sinks(env)
    wait_for(
        lambda: not again.alive or len(read_topic(kafka.bootstrap_servers, kafka.dlq_topic, timeout=1, idle=0.2)) == 2,
        60,
        what="the second probe's dead letter",
    )
    assert again.terminate() == 0, again.log()
    assert again.written_keys() == [k for k in stored(s3, bucket) if first_offset(k) == 31]  # nothing re-written
    assert identities(all_rows(stored(s3, bucket))) == identities([*events, ticker(30)])
    assert [orjson.loads(m.value())["reason"][:8] for m in read_topic(kafka.bootstrap_servers, kafka.dlq_topic)] == [
        "not JSON",
        "not JSON",
    ]


def test_two_instances_in_one_group_share_the_partitions_and_store_every_event_once(
    kafka_env, aws_env, s3, bucket, sinks
):
    env = cli_env(
        kafka_env,
        aws_env,
        {"S3_BUCKET": bucket, "KAFKA_TOPIC_PARTITIONS": "4", "MAX_BATCH_SIZE": "30", "MAX_BATCH_TIMEOUT": "0.5"},
    )
    kafka, group = load(KafkaSettings, env), env["S3_SINK_GROUP"]
    stream = stream_across_an_hour(6000)
    events = stream[:400]
    publish(kafka, events, partition_of=by_symbol(4))
    first = sinks(env)
    wait_for(lambda: not first.alive or first.written_keys(), 60, what="the first instance writing")

    second = sinks(env)
    # Events keep flowing while the group rebalances, until the second instance has taken
    # partitions over: a stream that ended first would leave it nothing to write.
    for start in range(400, len(stream), 100):
        chunk = stream[start : start + 100]
        publish(kafka, chunk, partition_of=by_symbol(4))
        events += chunk
        if second.written_keys() or not (first.alive and second.alive):
            break
        time.sleep(0.1)  # the stream's pace, not a wait for a condition
    wait_for(
        lambda: not (first.alive and second.alive) or second.written_keys(), 60, what="the second instance writing"
    )
    wait_for(lambda: offsets(kafka, group) == ends(events, 4), 60, interval=0.2, what="every offset committed")
    assert first.alive and second.alive, first.log() + second.log()
    assert first.terminate() == 0 and second.terminate() == 0

    objects = stored(s3, bucket)
    assert identities(all_rows(objects)) == identities(events)
    partitions_of_second = {int(key.rsplit("-", 2)[1]) for key in second.written_keys()}
    assert 0 < len(partitions_of_second) < 4, f"the second instance wrote partitions {partitions_of_second}"


def test_a_topic_created_again_under_a_running_sink_is_never_skipped(kafka_env, aws_env, s3, bucket, sinks):
    """The topic is deleted and created again while the sink runs. The sink stores the new
    incarnation's events, or it stops; started again, it stores them all. It never skips
    them. (With the embedded broker the sink stops: librdkafka 2.12 crashes with SIGSEGV
    when a partition it is assigned is deleted. The restart reads the new topic from its
    start, since the broker deleted the group's offsets with the topic.)"""
    env = cli_env(
        kafka_env,
        aws_env,
        {"S3_BUCKET": bucket, "KAFKA_TOPIC_PARTITIONS": "1", "MAX_BATCH_SIZE": "50", "MAX_BATCH_TIMEOUT": "1"},
    )
    kafka = load(KafkaSettings, env)
    old, new = incarnations()
    publish(kafka, old)
    sink = sinks(env)
    wait_for(lambda: not sink.alive or len(all_rows(stored(s3, bucket))) >= len(old), 60, what="the old topic stored")
    assert sink.alive, sink.log()
    recreate_topic(kafka)
    publish(kafka, new)
    everything = len(old) + len(new)
    wait_for(lambda: not sink.alive or len(all_rows(stored(s3, bucket))) >= everything, 60, what="the new topic stored")
    stopped = not sink.alive
    if stopped:
        assert len(all_rows(stored(s3, bucket))) < everything  # it stopped before storing what is new
        sink = sinks(env)
        wait_for(
            lambda: not sink.alive or len(all_rows(stored(s3, bucket))) >= everything, 60, what="stored after a restart"
        )
    assert sink.terminate() == 0, sink.log()
    found, wanted = identities(all_rows(stored(s3, bucket))), identities(old + new)
    figures.record(
        "topic created again under a running S3 sink",
        events=len(old) + len(new),
        lost=sum((wanted - found).values()),
        doubled=sum((found - wanted).values()),
        sink_stopped=int(stopped),
    )
    assert found == wanted
