"""Crash anywhere (issue 13): kill -9 of each service at random moments, each followed by a restart.

One pipeline, the simulated exchange streaming steadily, and the three services' kill loops
running at the same time, a thread each: the sinks are killed while the producer is killed
too, as a crashing node takes several services down. Each loop starts an instance, kills it
at a seeded random moment, starts the next at once, and goes again. Half of the moments
fall in start-up: a random fraction of the time a restarted instance takes to make progress,
i.e. while a sink joins its group (a rebalance: the dead member's partitions move to the new
one). The other half fall while the instance runs: a random moment after its first progress
(a sink's first commit, the producer's first event), when batches are being filled,
written and committed (mid-batch, mid-upload: objects and batches are small and close twice
a second). Which side of its first commit (first delivery) each kill actually fell on is
measured, not assumed, and recorded.

Then the last instances drain the topic, and the verdicts: S3 and DynamoDB hold every event
of the topic exactly once, and the topic holds no event twice. The events a producer had read
but Kafka had not acknowledged when it was killed are gone (the exchange replays nothing):
they are counted, and each must have been read shortly before a kill.
"""

from __future__ import annotations

import random
import signal
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest

from crypto_live.simulator import SimulatorOptions
from tests import figures
from tests.helpers import CliProcess, wait_for
from tests.pipeline import GROUP_VARIABLE, Pipeline, running_pipeline, verdict

SEED = 13_009  # of the simulated market and of the kill moments: a failing run can be replayed
RANDOM_KILLS = 30  # per service, after the two kills that measure its start-up
SIMULATOR = SimulatorOptions(symbols=5, interval=0.1, seed=SEED)  # about 35 events/s
# Objects of 5 rows, several per batch (a checkpoint holds 10 objects' worth); DynamoDB batches
# of up to 60 rows (several BatchWriteItem requests); batches close twice a second.
BATCHES = {"MAX_BATCH_SIZE": "5", "MAX_BATCH_TIMEOUT": "0.5", "DYNAMO_MAX_BATCH_SIZE": "60"}
# A kill while the instance runs comes within this many seconds of its first progress.
RUNNING_S = {"producer": 3.0, "s3-sink": 1.5, "dynamo-sink": 1.5}
# The longest an event may stay in a producer between being read and being acknowledged: a
# new instance's first delivery waits about a second (producer id, metadata), later ones
# linger 20 ms. A lost event read longer than this before its kill was dropped, not in flight.
IN_FLIGHT_S = 5.0
STORE = {"s3-sink": "S3", "dynamo-sink": "DynamoDB"}


@dataclass(frozen=True)
class ProducerRun:
    """One producer instance: where its events start in the simulator's, and its kill."""

    first_sent: int  # index, in the simulator's sent events, of the first one it could receive
    killed_ms: float | None  # wall clock at the kill (the clock of the events' E); None: SIGTERM


class Aborted(Exception):
    """Another loop failed: this one stops too, so that the failure is reported at once."""


def wait_random_moment(seconds: float, stop: threading.Event) -> None:
    # The random moment is what is tested here, not a stand-in for a condition.
    if stop.wait(seconds):
        raise Aborted


class KillLoop:
    """Instances of one service, each killed -9 at a random moment, and the times they took to
    make progress (a sink's first commit, the producer's first event) when they were let to."""

    def __init__(self, pipeline: Pipeline, service: str, stop: threading.Event):
        self.pipeline, self.service, self.stop = pipeline, service, stop
        self.rng = random.Random(f"{SEED}/{service}")
        self.start_ups: list[float] = []  # seconds from an instance's start to its first progress

    def kill_at_first_progress(self, process: CliProcess, started: float, made_progress: Callable[[], bool]) -> None:
        self._wait_for_progress(process, started, made_progress)
        self._kill(process)

    def kill_at_a_random_moment(self, process: CliProcess, started: float, made_progress: Callable[[], bool]) -> None:
        """During start-up (within the median time to first progress so far), or while running
        (within RUNNING_S of the instance's first progress), one or the other at random."""
        while_running, fraction = self.rng.random() < 0.5, self.rng.random()  # one sequence per seed
        if while_running:
            self._wait_for_progress(process, started, made_progress)
            wait_random_moment(fraction * RUNNING_S[self.service], self.stop)
        else:
            moment = started + fraction * statistics.median(self.start_ups)
            wait_random_moment(max(0.0, moment - time.monotonic()), self.stop)
        self._kill(process)

    def _wait_for_progress(self, process: CliProcess, started: float, made_progress: Callable[[], bool]) -> None:
        wait_for(
            lambda: self.stop.is_set() or not process.alive or made_progress(),
            90,
            interval=0.1,
            what=f"{self.service} to make progress\n{self.pipeline.logs(self.service)}",
        )
        self.start_ups.append(time.monotonic() - started)

    def _kill(self, process: CliProcess) -> None:
        if self.stop.is_set():
            raise Aborted
        assert process.alive, f"{self.service} exited by itself before its kill\n{self.pipeline.logs(self.service)}"
        process.kill()


def span(loop: KillLoop) -> str:
    """The start-up times a loop saw, for the figures."""
    return f"{min(loop.start_ups):.1f}-{max(loop.start_ups):.1f} s, median {statistics.median(loop.start_ups):.1f} s"


def advanced(before: list[int], after: list[int]) -> bool:
    return any(a > b for a, b in zip(after, before, strict=True))


def kill_sink_again_and_again(pipeline: Pipeline, service: str, stop: threading.Event) -> tuple[list[bool], KillLoop]:
    """Whether each killed instance of ``service`` had committed, and the loop (its start-up times)."""
    loop = KillLoop(pipeline, service, stop)
    committed_at_kill = []
    for trial in range(2 + RANDOM_KILLS):
        before = pipeline.committed(service)
        started = time.monotonic()
        process = pipeline.start(service)

        def committed(before: list[int] = before) -> bool:
            return advanced(before, pipeline.committed(service))

        if trial < 2:  # the first instance (cold: topics, group) and a restart: the first start-up times
            loop.kill_at_first_progress(process, started, committed)
        else:
            loop.kill_at_a_random_moment(process, started, committed)
        committed_at_kill.append(committed())  # a dead instance commits nothing more
    pipeline.start(service)  # the instance that drains the topic at the end
    return committed_at_kill, loop


def kill_producer_again_and_again(pipeline: Pipeline, stop: threading.Event) -> tuple[list[ProducerRun], KillLoop]:
    """Every producer run (the last one still running), and the loop (its start-up times)."""
    simulator = pipeline.simulator
    assert simulator is not None
    loop = KillLoop(pipeline, "producer", stop)
    runs = []
    for trial in range(2 + RANDOM_KILLS + 1):
        # The previous instance's connection is closed: every event sent from here on goes to this one.
        wait_for(lambda: simulator.server.open_connections == 0, 30, what="the killed producer's connection to close")
        first_sent, started = simulator.sent_count, time.monotonic()
        process = pipeline.start("producer")

        def read(first_sent: int = first_sent) -> bool:
            return simulator.sent_count > first_sent

        if trial == 2 + RANDOM_KILLS:
            runs.append(ProducerRun(first_sent, None))  # the last: stopped by SIGTERM at the end
            break
        if trial < 2:
            loop.kill_at_first_progress(process, started, read)
        else:
            loop.kill_at_a_random_moment(process, started, read)
        runs.append(ProducerRun(first_sent, time.time() * 1000))
    return runs, loop


def failing_fast(stop: threading.Event, work: Callable[[], Any]) -> Callable[[], Any]:
    """``work``, setting ``stop`` if it fails so that the other loops end early."""

    def run() -> Any:
        try:
            return work()
        except BaseException:
            stop.set()
            raise

    return run


@pytest.mark.long
@pytest.mark.timeout(480)
def test_kill_9_of_every_service_at_random_moments_then_a_restart_stores_every_event_once(
    broker, aws_env, unique, tmp_path
):
    # TMPDIR: the Quix state directories and heartbeats a kill -9 leaves behind go with tmp_path.
    with running_pipeline(broker, aws_env, unique, simulator=SIMULATOR, TMPDIR=str(tmp_path), **BATCHES) as pipeline:
        simulator = pipeline.simulator
        assert simulator is not None
        stop = threading.Event()  # set when a loop fails or the test is interrupted: the others end
        try:
            with ThreadPoolExecutor(3) as pool:
                producer_work = pool.submit(failing_fast(stop, lambda: kill_producer_again_and_again(pipeline, stop)))
                sink_work = {
                    service: pool.submit(
                        failing_fast(stop, lambda s=service: kill_sink_again_and_again(pipeline, s, stop))
                    )
                    for service in GROUP_VARIABLE
                }
                runs, producer_loop = producer_work.result()
                sink_kills = {service: work.result() for service, work in sink_work.items()}
        finally:
            stop.set()

        # The last producer has read events; SIGTERM makes it deliver all it read, then the sinks drain.
        wait_for(lambda: simulator.sent_count > runs[-1].first_sent, 60, what="the last producer's first event")
        [last_producer] = pipeline.running("producer")
        assert last_producer.stop(signal.SIGTERM) == 0, pipeline.logs("producer")
        pipeline.wait_drained(timeout=180)
        sent, topic = simulator.sent_events, pipeline.topic_keys()
        stores = pipeline.verdicts()
        statuses = pipeline.stop_all()
        logs = pipeline.logs(tail=10**9)

    # -- the producer: what each killed instance had read but Kafka had not acknowledged
    on_topic = set(topic)
    read_before_kill: list[float] = []  # for each lost event, seconds from its E to its instance's kill
    lost_per_run, delivered_before_kill = [], 0
    for run, end in zip(runs, [r.first_sent for r in runs[1:]] + [len(sent)], strict=True):
        lost = [e for e in sent[run.first_sent : end] if (e["s"], e["E"]) not in on_topic]
        lost_per_run.append(len(lost))
        if run.killed_ms is not None and len(lost) < end - run.first_sent:
            delivered_before_kill += 1
        # The last instance, stopped by SIGTERM, must deliver all it read: a loss there counts as infinitely old.
        read_before_kill += [(run.killed_ms - e["E"]) / 1000 if run.killed_ms else float("inf") for e in lost]
    topic_verdict = verdict("topic", topic, {(e["s"], e["E"]) for e in sent})
    producer_kills = len(runs) - 1
    figures.record_verdict(
        "kill -9 producer",
        topic_verdict,
        trials=producer_kills,
        detail=(
            f"seed {SEED}; {producer_kills - delivered_before_kill} kills before the instance's first "
            f"delivery (start-up: {span(producer_loop)} to its first event), {delivered_before_kill} after; "
            f"lost = read but not yet acknowledged at a kill -9 (the exchange replays nothing): at most "
            f"{max(lost_per_run)} per kill, each read at most {max(read_before_kill, default=0):.1f} s before "
            "its kill; the last instance (SIGTERM) lost none; both sinks killed at the same time"
        ),
    )

    # -- the sinks: every event of the topic stored once, whatever the kills
    for result in stores:
        committed_at_kill, loop = sink_kills[result.store]
        after = sum(committed_at_kill)
        # A restart that finds the object a killed instance wrote but did not commit continues after it.
        found = logs.count("written earlier): continuing after it") if result.store == "s3-sink" else 0
        uncommitted = f"; {found} objects written but not committed at a kill, found (not rewritten)" if found else ""
        figures.record_verdict(
            f"kill -9 {result.store}",
            result,
            store=STORE[result.store],
            trials=len(committed_at_kill),
            detail=(
                f"seed {SEED}; {len(committed_at_kill) - after} kills before the instance's first commit "
                f"(start-up, group join: {span(loop)} to the first commit), {after} after "
                "(mid-batch, mid-upload)" + uncommitted + "; the producer and the other sink killed at the same time"
            ),
        )

    assert [(r.store, r.lost, r.doubled, r.unexpected) for r in stores] == [
        (service, 0, 0, 0) for service in GROUP_VARIABLE
    ]
    assert (topic_verdict.doubled, topic_verdict.unexpected) == (0, 0), "the topic holds an event twice"
    assert max(read_before_kill, default=0) < IN_FLIGHT_S, sorted(read_before_kill)[-10:]
    assert statuses == {service: [0] for service in GROUP_VARIABLE}, logs[-6000:]
    assert "Traceback" not in logs, logs[max(0, logs.find("Traceback") - 2000) :][:6000]
    # The kills fell on both sides of the first commit (first delivery), and the trials as a
    # whole made progress: loops that only ever killed starting instances would prove little.
    for service, (committed_at_kill, _) in sink_kills.items():
        assert 5 <= sum(committed_at_kill) <= len(committed_at_kill) - 5, (service, committed_at_kill)
    assert 5 <= delivered_before_kill <= producer_kills - 5, lost_per_run
