"""Outages, against the whole pipeline as processes (issue 13): S3 and DynamoDB unreachable
for 60 s (connections cut and refused) and slow for 60 s (every answer held past the
sinks' read timeout), the broker gone for 60 s for the producer and both sinks at once, and
the exchange dropping the socket again and again.

In every case no service exits, memory stays bounded, each service recovers by itself once
the fault ends, and, drained, the topic holds every event the exchange sent once and S3 and
DynamoDB each hold the topic once.

*Recovery* is the time from the fault's end to a service's first new progress: a sink's
committed offsets advance, the producer has a message acknowledged again (or, for the
exchange, is connected again). A sink that meets an unreachable store pauses for
:func:`~processors.stream.backpressure_backoff`'s doubling delay, capped at 30 s, so after
a 60 s outage it may have just begun a 30 s pause: the bound for a sink is that cap plus
one held request (the read timeout) plus one batch.

*Bounded memory*: a sink under backpressure drops its batch and replays it from Kafka, and
the producer's librdkafka queue is bounded; neither may grow with the outage. The peak RSS
during the fault and after it must stay within :data:`RSS_GROWTH` of the peak before it
(what a minute of this stream, some 3,000 events of ~300 bytes, could add is about 1 MB;
a leak per retry, reconnection or held batch would show).
"""

from __future__ import annotations

import contextlib
import functools
import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from crypto_live.aws import SINK_READ_TIMEOUT
from crypto_live.embedded import EmbeddedBroker, free_port
from crypto_live.simulator import SimulatorOptions
from processors.stream import backpressure_backoff
from tests import figures
from tests.helpers import CliProcess, wait_for
from tests.pipeline import SERVICES, Pipeline, RssSampler, Verdict, running_pipeline, verdict
from tests.proxy import TcpGate

SINKS = ("s3-sink", "dynamo-sink")
STORE = {"s3-sink": "S3", "dynamo-sink": "DynamoDB"}

#: How long each outage lasts: the issue's minute.
OUTAGE = 60.0
#: 10 symbols every 0.2 s: 50 events/s, some 5,000 events per case.
EXCHANGE = SimulatorOptions(symbols=10, interval=0.2)
#: A slow store holds every answer this long: past the sinks' read timeout, so every
#: attempt of every request times out.
SLOW_ANSWER = SINK_READ_TIMEOUT + 5.0


def longest_pause() -> float:
    """The longest pause a sink's backpressure takes: the policy's own cap, read off one
    backoff failing again and again (a fresh backoff's first delay is only its shortest)."""
    backoff = backpressure_backoff()
    return max(backoff.next_delay() for _ in range(30))


BACKPRESSURE_CAP = longest_pause()
#: A sink recovers within the pause it may just have begun, one held request, one batch.
SINK_RECOVERY_BOUND = BACKPRESSURE_CAP + SINK_READ_TIMEOUT + 5.0
#: The producer reconnects to the broker within librdkafka's reconnect backoff (10 s at most).
PRODUCER_RECOVERY_BOUND = 15.0
#: The exchange dropping the socket: how many times, and how soon the producer must be back.
DROPS = 25
RECONNECT_BOUND = 5.0
#: A minute's outage, start-up, recovery and drain take up to ~3 min on 2 cores with the
#: rest of the suite alongside: past the suite's 180 s default.
LONG_CASE_TIMEOUT = 360
#: How far a service's peak RSS during or after the fault may exceed its peak before it.
RSS_GROWTH = 1.25


# --------------------------------------------------------------------------- helpers


def progress(pipeline: Pipeline, sink: str) -> int:
    """Messages ``sink``'s group has committed, over all partitions."""
    return sum(max(offset, 0) for offset in pipeline.committed(sink))


def started(pipeline: Pipeline, sink_env: dict[str, dict[str, str]] | None = None) -> CliProcess:
    """The producer (returned) and one instance of each sink (``sink_env``: each sink's own
    variables), storing events before the fault begins."""
    producer = pipeline.start("producer")
    for sink in SINKS:
        pipeline.start(sink, **(sink_env or {}).get(sink, {}))
    wait_for(
        lambda: all(progress(pipeline, sink) > 0 for sink in SINKS),
        90,
        interval=0.5,
        what=f"both sinks to commit before the fault\n{pipeline.logs()}",
    )
    return producer


def recovery(
    pipeline: Pipeline, progressed: dict[str, Callable[[], bool]], ended: float, what: str
) -> dict[str, float]:
    """Seconds from ``ended`` until each ``progressed[name]()`` first returns True."""
    times: dict[str, float] = {}

    def all_recovered() -> bool:
        for name, check in progressed.items():
            if name not in times and check():
                times[name] = time.monotonic() - ended
        return len(times) == len(progressed)

    wait_for(all_recovered, 180, interval=0.2, what=f"{what} to recover (so far {times})\n{pipeline.logs()}")
    return times


def exited(pipeline: Pipeline) -> list[str]:
    return [f"{name} (exit {p.process.returncode})" for name, p in pipeline.processes if not p.alive]


def drained(pipeline: Pipeline) -> tuple[Verdict, list[Verdict], dict[str, list[int]]]:
    """Quiet the exchange, let the producer deliver what it read and stop it, let the sinks
    commit the whole topic and stop them: the producer's verdict (topic against what the
    exchange sent), the sinks' verdicts, and every exit status."""
    sim = pipeline.simulator
    assert sim is not None
    sim.stall()  # from here on, what was sent is all there is
    wait_for(
        lambda: len(set(pipeline.topic_keys())) >= len(sim.sent_keys()),
        120,
        interval=1,
        what=f"the topic to hold every event sent\n{pipeline.logs('producer')}",
    )
    statuses = {"producer": [p.stop(signal.SIGTERM) for p in pipeline.running("producer")]}
    topic = verdict("topic", pipeline.topic_keys(), sim.sent_keys())
    pipeline.wait_drained(*SINKS)
    sinks = pipeline.verdicts(*SINKS)
    statuses.update(pipeline.stop_all())
    return topic, sinks, statuses


@contextlib.contextmanager
def sampled(pipeline: Pipeline) -> Iterator[dict[str, RssSampler]]:
    with contextlib.ExitStack() as stack:
        yield {service: stack.enter_context(RssSampler(pipeline, service)) for service in SERVICES}


def peak(sampler: RssSampler, since: float, until: float = float("inf")) -> float:
    return max((mb for t, mb in sampler.samples if since <= t < until), default=0.0)


def rss_phases(samplers: dict[str, RssSampler], began: float, ended: float) -> dict[str, tuple[float, float, float]]:
    """Each service's peak RSS (MB) before, during and after the fault."""
    return {
        service: (peak(sampler, 0, began), peak(sampler, began, ended), peak(sampler, ended))
        for service, sampler in samplers.items()
    }


def unbounded(phases: dict[str, tuple[float, float, float]]) -> dict[str, tuple[float, float, float]]:
    return {
        service: (before, during, after)
        for service, (before, during, after) in phases.items()
        if max(during, after) > before * RSS_GROWTH
    }


def rss_text(phases: dict[str, tuple[float, float, float]]) -> str:
    return "; ".join(f"{s} RSS {b:.0f}/{d:.0f}/{a:.0f} MB before/during/after" for s, (b, d, a) in phases.items())


def warnings_seen(pipeline: Pipeline, service: str) -> str:
    """The kinds of warning and error lines ``service`` logged itself (librdkafka's own left
    out; numbers masked), most frequent first."""
    kinds = Counter(
        re.sub(r"\d+(\.\d+)?", "N", line.split(": ", 1)[-1])[:60]
        for line in pipeline.logs(service, tail=10**9).splitlines()
        if (" WARNING " in line or " ERROR " in line) and "rdkafka" not in line
    )
    return ", ".join(f"{n} x '{kind}'" for kind, n in kinds.most_common(3)) or "no warnings"


def pauses(pipeline: Pipeline, sink: str) -> int:
    """Backpressure pauses ``sink`` logged."""
    return pipeline.logs(sink, tail=10**9).count("then replaying from the last committed offset")


@dataclass
class Outcome:
    """What one fault case saw."""

    began: float
    ended: float
    exited: list[str]  # services gone by the end of the fault
    recovered: dict[str, float]  # seconds from the fault's end to new progress
    notes: dict[str, str] = field(default_factory=dict)  # what the fault did, per service
    topic: Verdict | None = None
    sinks: list[Verdict] = field(default_factory=list)
    statuses: dict[str, list[int]] = field(default_factory=dict)
    phases: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    paused: dict[str, int] = field(default_factory=dict)  # backpressure pauses during the fault
    late_commits: dict[str, int] = field(default_factory=dict)  # committed in the fault's 2nd half


# --------------------------------------------------------------------------- S3 and DynamoDB


def ride_out_a_store_outage(pipeline: Pipeline, aws_endpoint: str, *, slow: bool) -> Outcome:
    """Each sink behind a gate to moto; the fault on both at once for OUTAGE seconds."""
    moto_port = int(aws_endpoint.rsplit(":", 1)[1])
    gates = {sink: TcpGate(moto_port) for sink in SINKS}
    for gate in gates.values():
        gate.open()
    try:
        with sampled(pipeline) as samplers:
            started(pipeline, {sink: {"AWS_ENDPOINT_URL": gate.url} for sink, gate in gates.items()})
            began = time.monotonic()
            for gate in gates.values():
                if slow:
                    gate.delay = SLOW_ANSWER
                else:
                    gate.close()
            # What was in flight when the fault began may still land; after that nothing may.
            time.sleep(OUTAGE / 2)  # the outage itself: nothing to wait for but the clock
            halfway = {sink: progress(pipeline, sink) for sink in SINKS}
            time.sleep(began + OUTAGE - time.monotonic())
            at_end = {sink: progress(pipeline, sink) for sink in SINKS}
            paused = {sink: pauses(pipeline, sink) for sink in SINKS}
            ended = time.monotonic()
            for gate in gates.values():
                if slow:
                    gate.delay = 0.0
                else:
                    gate.open()
            outcome = Outcome(
                began,
                ended,
                exited(pipeline),
                recovery(
                    pipeline,
                    {sink: functools.partial(lambda s: progress(pipeline, s) > at_end[s], sink) for sink in SINKS},
                    ended,
                    "the sinks",
                ),
            )
            outcome.paused = paused
            outcome.late_commits = {sink: at_end[sink] - halfway[sink] for sink in SINKS}
            outcome.topic, outcome.sinks, outcome.statuses = drained(pipeline)
        outcome.phases = rss_phases(samplers, began, ended)
    finally:
        for gate in gates.values():
            gate.close()
    return outcome


def record_sinks(case: str, outcome: Outcome) -> None:
    for sink_verdict in outcome.sinks:
        sink = sink_verdict.store
        figures.record_verdict(
            case.format(store=STORE[sink]),
            sink_verdict,
            store=STORE[sink],
            trials=1,
            **({"recovery_s": outcome.recovered[sink]} if sink in outcome.recovered else {}),
            peak_rss_mb=outcome.phases[sink][1],
            detail=f"{outcome.notes[sink]}; {rss_text({sink: outcome.phases[sink]})}",
        )


def assert_ridden_out(outcome: Outcome, bounds: dict[str, float]) -> None:
    """No exit, bounded memory, recovery within ``bounds``, clean stops, exactly once."""
    assert outcome.exited == [], f"services exited during the fault: {outcome.exited}"
    late = {name: t for name, t in outcome.recovered.items() if t > bounds[name]}
    assert outcome.recovered.keys() == bounds.keys(), outcome.recovered
    assert not late, f"recovered later than {bounds}: {late}"
    assert not unbounded(outcome.phases), rss_text(outcome.phases)
    assert outcome.statuses == {service: [0] for service in SERVICES}, outcome.statuses
    assert outcome.topic is not None and outcome.topic.exact, outcome.topic
    assert outcome.sinks and all(v.exact for v in outcome.sinks), outcome.sinks


@pytest.mark.long
@pytest.mark.timeout(LONG_CASE_TIMEOUT)
@pytest.mark.parametrize("slow", [False, True], ids=["unreachable", "slow"])
def test_s3_and_dynamodb_unreachable_or_slow_for_a_minute_nothing_exits_and_every_event_lands_once(
    broker, aws_env, aws_endpoint, unique, slow
):
    with running_pipeline(broker, aws_env, unique, simulator=EXCHANGE) as pipeline:
        outcome = ride_out_a_store_outage(pipeline, aws_endpoint, slow=slow)
    mode = f"slow (every answer held {SLOW_ANSWER:g} s)" if slow else "unreachable (cut and refused)"
    for sink in SINKS:
        outcome.notes[sink] = (
            f"{mode}; {outcome.paused[sink]} backpressure pauses; "
            f"{outcome.late_commits[sink]} committed in the fault's 2nd half"
        )
    record_sinks(f"{{store}} {'slow' if slow else 'unreachable'} {OUTAGE:g} s", outcome)
    # The fault was real: the sinks felt it, and nothing was stored once in-flight requests ended.
    assert all(outcome.paused[sink] >= 1 for sink in SINKS), outcome.paused
    assert outcome.late_commits == dict.fromkeys(SINKS, 0), outcome.late_commits
    assert_ridden_out(outcome, dict.fromkeys(SINKS, SINK_RECOVERY_BOUND))


# --------------------------------------------------------------------------- the broker


@contextlib.contextmanager
def gated_broker() -> Iterator[TcpGate]:
    """A Tansu of its own whose advertised listener is a gate: every client, the
    producer's and the sinks' alike, reaches it through the gate only."""
    port = free_port()
    gate = TcpGate(port)
    gate.open()
    try:
        with EmbeddedBroker(port, advertised_port=gate.port):
            yield gate
    finally:
        gate.close()


ACKNOWLEDGED_AGAIN = "Kafka acknowledges messages again"


@pytest.mark.long
@pytest.mark.timeout(LONG_CASE_TIMEOUT)
def test_the_broker_gone_for_a_minute_for_producer_and_sinks_nothing_exits_and_nothing_is_lost_or_doubled(
    aws_env, unique
):
    with (
        gated_broker() as gate,
        running_pipeline(f"127.0.0.1:{gate.port}", aws_env, unique, simulator=EXCHANGE) as pipeline,
        sampled(pipeline) as samplers,
    ):
        producer = started(pipeline)
        # Read through the gate, so the last read before it closes: a commit landing in the
        # few milliseconds between the two would only make the recovery look shorter.
        before = {sink: progress(pipeline, sink) for sink in SINKS}
        gate.close()
        began = time.monotonic()
        sent_before = len(pipeline.simulator.sent_keys())
        time.sleep(OUTAGE)  # the outage itself: nothing to wait for but the clock
        acknowledged = producer.output().count(ACKNOWLEDGED_AGAIN)
        sent_during = len(pipeline.simulator.sent_keys()) - sent_before
        ended = time.monotonic()
        gate.open()
        checks = {sink: functools.partial(lambda s: progress(pipeline, s) > before[s], sink) for sink in SINKS}
        checks["producer"] = lambda: producer.output().count(ACKNOWLEDGED_AGAIN) > acknowledged
        outcome = Outcome(began, ended, exited(pipeline), recovery(pipeline, checks, ended, "the pipeline"))
        outcome.notes = {service: warnings_seen(pipeline, service) for service in SERVICES}
        outcome.topic, outcome.sinks, outcome.statuses = drained(pipeline)
    outcome.phases = rss_phases(samplers, began, ended)
    case = f"broker gone {OUTAGE:g} s"
    topic = outcome.topic
    figures.record_verdict(
        case,
        topic,
        trials=1,
        recovery_s=outcome.recovered["producer"],
        peak_rss_mb=outcome.phases["producer"][1],
        detail=f"{sent_during} events sent by the exchange during the outage; {outcome.notes['producer']}; "
        f"{rss_text({'producer': outcome.phases['producer']})}",
    )
    record_sinks(case + " ({store} sink)", outcome)
    assert "Kafka brokers unreachable" in producer.output(), "the producer never noticed the outage"
    assert_ridden_out(outcome, {"producer": PRODUCER_RECOVERY_BOUND, **dict.fromkeys(SINKS, SINK_RECOVERY_BOUND)})


# --------------------------------------------------------------------------- the exchange


@pytest.mark.long
@pytest.mark.timeout(LONG_CASE_TIMEOUT)
def test_the_exchange_dropping_the_socket_again_and_again_loses_and_doubles_nothing(broker, aws_env, unique):
    with running_pipeline(broker, aws_env, unique, simulator=EXCHANGE) as pipeline, sampled(pipeline) as samplers:
        sim = pipeline.simulator
        started(pipeline)
        began = time.monotonic()
        reconnects: list[float] = []
        for _ in range(DROPS):
            accepted, sent = sim.connections_accepted, sim.sent_count
            sim.wait_until_sent(sent + 25, timeout=30)  # some events on this connection first
            dropped_at = time.monotonic()
            assert sim.drop_connections() == 1
            sim.wait_for_connections(accepted + 1, timeout=60)
            reconnects.append(time.monotonic() - dropped_at)
        ended = time.monotonic() - reconnects[-1]
        outcome = Outcome(began, ended, exited(pipeline), {"producer": max(reconnects)})
        producer_log = pipeline.logs("producer", tail=10**9)
        outcome.topic, outcome.sinks, outcome.statuses = drained(pipeline)
    outcome.phases = rss_phases(samplers, began, ended)
    topic = outcome.topic
    detail = (
        f"{DROPS} drops, {sim.connections_accepted - 1} reconnections accepted by the exchange, "
        f"{producer_log.count('reconnecting in')} logged by the producer; reconnect after a drop "
        f"{min(reconnects):.2f}-{max(reconnects):.2f} s; {rss_text({'producer': outcome.phases['producer']})}"
    )
    figures.record_verdict(
        "exchange drops the socket",
        topic,
        trials=DROPS,
        recovery_s=max(reconnects),
        peak_rss_mb=outcome.phases["producer"][1],
        detail=detail,
    )
    for sink in SINKS:
        outcome.notes[sink] = f"downstream of {DROPS} drops"
    record_sinks("exchange drops the socket ({store})", outcome)
    assert sim.connections_accepted == DROPS + 1, detail
    assert_ridden_out(outcome, {"producer": RECONNECT_BOUND})
