"""Fault cases of issue 13 for groups of sink instances and for stopping under load.

- **Freeze:** a sink instance SIGSTOPped until a second instance has taken over all its
  partitions (past the session timeout), then SIGCONT: it logs one "lost group membership"
  line, no traceback, rejoins, gets partitions again and writes again.
- **Graceful stop under load:** SIGTERM of each service while it has work to do (the
  sinks: a backlog of thousands of events plus the live stream; the producer: thousands of
  events per second), exit 0 within 30 s, then a restart that continues.
- **Scale-out:** 1 instance of each sink, then 3 (each one working), then 1 again, while
  the market streams.

Every case runs the whole pipeline as processes (``tests.pipeline``), drains it and
records its figures before asserting exactly once in every store it wrote to.

Which partitions an instance works on is read from its log: the S3 sink logs every object
it writes (INFO) and the DynamoDB sink every batch (DEBUG, so its instances run with
LOG_LEVEL=DEBUG); both name the topic partition.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable

import pytest

from crypto_live.simulator import SimulatorOptions
from tests.figures import record_verdict
from tests.helpers import CliProcess, wait_for
from tests.pipeline import Pipeline, Verdict, running_pipeline, verdict

SINKS = ("s3-sink", "dynamo-sink")
#: Per-instance environment: the DynamoDB sink logs its writes at DEBUG only.
SINK_ENV = {"s3-sink": {}, "dynamo-sink": {"LOG_LEVEL": "DEBUG"}}
LOST = "lost group membership"
#: The market as the freeze and scale cases stream it (200 events/s), and as the graceful
#: stop cases load the sinks (500 events/s) and the producer (2,500 events/s). Rates and
#: counts are modest: a verdict scans the whole table, seconds per thousand rows in moto.
STREAM = SimulatorOptions(symbols=20, interval=0.1)
SINK_LOAD = SimulatorOptions(symbols=25, interval=0.05)
PRODUCER_LOAD = SimulatorOptions(symbols=50, interval=0.02)
#: Events on the topic before a sink under load starts (more arrive while it starts up).
BACKLOG = 2500
#: Events the producer under load reads before each SIGTERM.
PRODUCER_BURST = 2000
#: What the issue allows a service between SIGTERM and its exit.
STOP_DEADLINE_S = 30.0


def rate(options: SimulatorOptions) -> int:
    """Events per second the simulator streams with ``options``."""
    return round(options.symbols / options.interval)


def write_pattern(sink: str, topic: str) -> re.Pattern[str]:
    """A log line of ``sink`` saying it stored events of ``topic``; group 1 is the partition."""
    if sink == "s3-sink":  # "wrote s3://bucket/.../<topic>-00002-<first offset>.jsonl (200 rows)"
        return re.compile(rf" wrote s3://\S+/{re.escape(topic)}-(\d+)-\d+\.")
    return re.compile(rf" wrote \d+ events of {re.escape(topic)}\[(\d+)\]")  # DynamoDB, at DEBUG


def written_partitions(pipeline: Pipeline, sink: str, instance: CliProcess, since: int = 0) -> set[int]:
    """The partitions ``instance`` logged writes of from its log line ``since`` on."""
    pattern = write_pattern(sink, pipeline.topic)
    return {int(m[1]) for line in instance.lines[since:] if (m := pattern.search(line))}


def wait_showing(condition: Callable[[], object], timeout: float, what: str, logs: Callable[[], str]) -> None:
    """:func:`wait_for` ``condition``; a timeout shows ``logs()`` as they are then."""
    try:
        wait_for(condition, timeout, interval=0.2, what=what)
    except AssertionError as timeout_error:
        raise AssertionError(f"{timeout_error}\n{logs()}") from None


def wait_writing(pipeline: Pipeline, sink: str, instance: CliProcess, since: int = 0, timeout: float = 60) -> set[int]:
    """Wait until ``instance`` writes (from log line ``since``); the partitions it wrote."""
    wait_showing(
        lambda: written_partitions(pipeline, sink, instance, since) or not instance.alive,
        timeout,
        f"{sink} pid {instance.process.pid} to write",
        lambda: instance.output()[-6000:],
    )
    assert instance.alive, instance.output()[-6000:]
    return written_partitions(pipeline, sink, instance, since)


def timed_stop(instance: CliProcess) -> tuple[int, float]:
    """SIGTERM ``instance``: its exit status and the seconds it took to exit."""
    started = time.monotonic()
    status = instance.stop(signal.SIGTERM, timeout=STOP_DEADLINE_S + 10)
    return status, time.monotonic() - started


def record_verdicts(case: str, verdicts: list[Verdict], **figures: object) -> None:
    for v in verdicts:
        record_verdict(case, v, **figures)


def assert_exact(verdicts: list[Verdict], logs: str) -> None:
    assert all(v.exact for v in verdicts), f"{verdicts}\n{logs}"


def committed_events(pipeline: Pipeline, sink: str) -> int:
    return sum(max(0, offset) for offset in pipeline.committed(sink))


# ----------------------------------------------------------------------------- freeze


@pytest.mark.parametrize("sink", SINKS)
def test_a_sink_frozen_past_its_session_timeout_while_a_second_instance_runs_rejoins_and_carries_on(
    broker, aws_env, unique, sink
):
    with running_pipeline(broker, aws_env, unique, simulator=STREAM) as pipeline:
        producer = pipeline.start("producer")
        frozen = pipeline.start(sink, **SINK_ENV[sink])
        wait_writing(pipeline, sink, frozen)
        other = pipeline.start(sink, **SINK_ENV[sink])
        wait_writing(pipeline, sink, other)

        frozen.process.send_signal(signal.SIGSTOP)
        stopped, mark = time.monotonic(), len(other.lines)
        # Frozen until the group has given all its partitions to the other instance, which
        # takes its session timing out: a zombie, as a GC pause or a frozen container makes one.
        wait_showing(
            lambda: written_partitions(pipeline, sink, other, mark) == set(range(pipeline.partitions)),
            30,
            "the second instance to take over every partition",
            lambda: pipeline.logs(sink),
        )
        frozen_s = time.monotonic() - stopped
        frozen.process.send_signal(signal.SIGCONT)
        resumed = time.monotonic()

        def lost_line() -> int | None:
            return next((n for n, line in enumerate(frozen.lines) if LOST in line), None)

        wait_showing(lambda: lost_line() is not None or not frozen.alive, 30, "the lost-membership line", frozen.output)
        lost_at = lost_line()
        assert lost_at is not None, frozen.output()
        # Carries on: back in the group with partitions of its own, writing them again.
        rewritten = wait_writing(pipeline, sink, frozen, since=lost_at + 1)
        recovery_s = time.monotonic() - resumed

        assert producer.stop(signal.SIGTERM) == 0, pipeline.logs("producer")
        pipeline.wait_drained(sink)
        statuses = pipeline.stop_all()
        verdicts = pipeline.verdicts(sink)

    record_verdicts(
        f"SIGSTOP {sink} past session timeout, second instance running",
        verdicts,
        trials=1,
        recovery_s=recovery_s,
        detail=f"frozen {frozen_s:.1f} s (session timeout {int(pipeline.env['KAFKA_SESSION_TIMEOUT_MS']) / 1000:g} s); "
        f"rejoined and wrote partitions {sorted(rewritten)} {recovery_s:.1f} s after SIGCONT",
    )
    output = frozen.output()
    assert output.count(LOST) == 1, output
    assert "Traceback" not in pipeline.logs(sink, tail=10**9), pipeline.logs(sink)
    assert statuses == {sink: [0, 0]}, pipeline.logs(sink)
    assert_exact(verdicts, pipeline.logs(sink))


# ---------------------------------------------------------------- graceful stop under load


@pytest.mark.parametrize("sink", SINKS)
def test_a_sink_stopped_under_load_exits_0_within_30_s_and_its_restart_continues_exactly_once(
    broker, aws_env, unique, sink
):
    with running_pipeline(broker, aws_env, unique, simulator=SINK_LOAD) as pipeline:
        producer = pipeline.start("producer")
        pipeline.simulator.wait_until_sent(BACKLOG, timeout=30)
        first = pipeline.start(sink, **SINK_ENV[sink])
        wait_writing(pipeline, sink, first)  # busy: a backlog of thousands and the live stream

        on_topic = pipeline.simulator.sent_count
        status, stop_s = timed_stop(first)
        behind = on_topic - committed_events(pipeline, sink)
        restarted_at = time.monotonic()
        restarted = pipeline.start(sink, **SINK_ENV[sink])
        wait_writing(pipeline, sink, restarted)
        recovery_s = time.monotonic() - restarted_at

        assert producer.stop(signal.SIGTERM) == 0, pipeline.logs("producer")
        pipeline.wait_drained(sink)
        statuses = pipeline.stop_all()
        verdicts = pipeline.verdicts(sink)

    record_verdicts(
        f"SIGTERM under load: {sink}",
        verdicts,
        trials=1,
        stop_s=stop_s,
        recovery_s=recovery_s,
        detail=f"exit {status} {stop_s:.1f} s after SIGTERM with ~{behind} events not stored yet "
        f"({rate(SINK_LOAD)} events/s streaming); the restart wrote {recovery_s:.1f} s after it started",
    )
    assert status == 0, first.output()[-6000:]
    assert stop_s < STOP_DEADLINE_S
    assert behind > 0, "the sink had caught up: the stop was not under load"
    assert statuses == {sink: [0]}, pipeline.logs(sink)
    assert_exact(verdicts, pipeline.logs(sink))


def test_the_producer_stopped_under_load_exits_0_within_30_s_and_its_restart_continues_exactly_once(
    broker, aws_env, unique
):
    with running_pipeline(broker, aws_env, unique, simulator=PRODUCER_LOAD) as pipeline:
        first = pipeline.start("producer")
        for sink in SINKS:
            pipeline.start(sink, **SINK_ENV[sink])
        pipeline.simulator.wait_until_sent(PRODUCER_BURST, timeout=30)
        status, stop_s = timed_stop(first)

        # The simulator sends only to connected clients: nothing is sent until the restart.
        sent_before = pipeline.simulator.sent_count
        restarted_at = time.monotonic()
        restarted = pipeline.start("producer")
        pipeline.simulator.wait_until_sent(sent_before + 1, timeout=30)
        recovery_s = time.monotonic() - restarted_at
        pipeline.simulator.wait_until_sent(sent_before + PRODUCER_BURST, timeout=30)
        restart_status, restart_stop_s = timed_stop(restarted)

        topic = verdict("topic", pipeline.topic_keys(), pipeline.simulator.sent_keys())
        pipeline.wait_drained()
        statuses = pipeline.stop_all()
        verdicts = [topic, *pipeline.verdicts()]

    record_verdicts(
        "SIGTERM under load: producer",
        verdicts,
        trials=2,
        stop_s=max(stop_s, restart_stop_s),
        recovery_s=recovery_s,
        detail=f"{rate(PRODUCER_LOAD)} events/s; 2 stops, exits {status} and {restart_status}, "
        f"{stop_s:.1f} s and {restart_stop_s:.1f} s after SIGTERM; the restart read again {recovery_s:.1f} s "
        "after it started",
    )
    assert status == 0 and restart_status == 0, pipeline.logs("producer")
    assert stop_s < STOP_DEADLINE_S and restart_stop_s < STOP_DEADLINE_S
    assert statuses == {"s3-sink": [0], "dynamo-sink": [0]}, pipeline.logs()
    assert_exact(verdicts, pipeline.logs())


# ------------------------------------------------------------------------------ scale-out


def wait_taken_over(
    pipeline: Pipeline, sink: str, members: list[CliProcess], marks: list[int], partitions: set[int]
) -> None:
    """Wait until ``members`` between them write ``partitions`` (from their log lines ``marks``
    on): partitions another instance held, so the rebalance that handed them over is over."""

    def taken_over() -> bool:
        written = [written_partitions(pipeline, sink, m, mark) for m, mark in zip(members, marks, strict=True)]
        return partitions <= set().union(*written)

    wait_showing(taken_over, 60, f"{sink} to take over {partitions}", lambda: pipeline.logs(sink))


@pytest.mark.long
def test_sinks_scaled_from_1_to_3_instances_and_back_mid_stream_store_every_event_exactly_once(broker, aws_env, unique):
    with running_pipeline(broker, aws_env, unique, simulator=STREAM) as pipeline:
        producer = pipeline.start("producer")
        instances = {sink: [pipeline.start(sink, **SINK_ENV[sink])] for sink in SINKS}
        for sink in SINKS:
            wait_writing(pipeline, sink, instances[sink][0])

        # 1 -> 3: once both new instances write, the group has settled with 3 members; from
        # then on each of the 3 writes a partition of its own.
        for sink in SINKS:
            instances[sink] += [pipeline.start(sink, **SINK_ENV[sink]) for _ in range(2)]
        for sink in SINKS:
            for instance in instances[sink][1:]:
                wait_writing(pipeline, sink, instance)
        marks = {sink: [len(i.lines) for i in instances[sink]] for sink in SINKS}
        with_three = {
            sink: [wait_writing(pipeline, sink, i, mark) for i, mark in zip(instances[sink], marks[sink], strict=True)]
            for sink in SINKS
        }

        # 3 -> 1, one instance at a time: each stop is a rebalance that must be over before
        # the next stop (the test broker, Tansu, never ends a rebalance whose leader leaves
        # while it is still joining; Kafka elects another leader).
        stops: dict[str, list[tuple[int, float]]] = {sink: [] for sink in SINKS}
        for sink in SINKS:
            first, second, last = instances[sink]
            staying = [second, last]
            marks_before = [len(i.lines) for i in staying]
            stops[sink].append(timed_stop(first))
            wait_taken_over(pipeline, sink, staying, marks_before, with_three[sink][0])
            mark_before = len(last.lines)
            stops[sink].append(timed_stop(second))
            wait_taken_over(pipeline, sink, [last], [mark_before], set(range(pipeline.partitions)))

        assert producer.stop(signal.SIGTERM) == 0, pipeline.logs("producer")
        pipeline.wait_drained()
        statuses = pipeline.stop_all()
        verdicts = pipeline.verdicts()

    for v in verdicts:
        record_verdict(
            "scale 1→3→1 sinks",
            v,
            trials=1,
            detail=f"instances 1→3→1; with 3, partitions per instance "
            f"{[sorted(p) for p in with_three[v.store]]}; the 2 stopped exited "
            f"{[status for status, _ in stops[v.store]]} in {max(s for _, s in stops[v.store]):.1f} s at most",
        )
    for sink in SINKS:
        assert [status for status, _ in stops[sink]] == [0, 0], pipeline.logs(sink)
        assert all(len(p) == 1 for p in with_three[sink]), with_three  # 3 partitions, 3 members
    assert statuses == {"s3-sink": [0], "dynamo-sink": [0]}, pipeline.logs()
    assert "Traceback" not in pipeline.logs(tail=10**9), pipeline.logs()
    assert_exact(verdicts, pipeline.logs())
