"""`make bench`: throughput and memory of each service, as a user runs them.

Everything runs on this machine: the embedded broker and AWS emulator, the market
simulator at a rate above Binance's (~1-2k events/s for all symbols), and the services
as child processes (`crypto-live producer`, `s3-sink`, `dynamo-sink`). Progress is read
from outside (the topic, committed offsets, the stores) with the Observer that
`crypto-live run` uses; nothing is taken from the services' or the simulator's word.

    python -m bench [--rate 4000] [--seconds 20] [--symbols 400]

1. The producer reads the simulator. Once its first events are on the topic, the events
   that reach the topic in the next --seconds give its rate. Then the market closes, the
   producer takes in what was in flight and gets SIGTERM, and the topic is counted.
2. Each sink in turn drains the topic; its rate runs from its first commit to its last
   (start-up, including the consumer-group join, is reported apart, without a verdict).
3. Events sent, events on the topic, S3 rows and DynamoDB rows must all be equal:
   nothing lost, nothing twice.

Targets (printed as PASS/FAIL, not asserted by the test suite): at least 2,000 events/s
reach the topic from the producer; each sink drains at least 2,000 events/s; no service
exceeds 400 MiB resident memory. Figures without a target are printed without a verdict.
DynamoDB here is moto's emulator, itself the slower party.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crypto_live.observer import Observer
    from crypto_live.settings import KafkaSettings

TARGET_EVENTS_PER_S = 2000
TARGET_RSS_MIB = 400
DRAIN_LIMIT_S = 600
STALLED_AFTER_S = 30
#: The topic has stopped growing when it has not for this long (the producer is done reading).
QUIET_FOR_S = 2.0
POLL_S = 0.25
FIRST_FETCH_S = 10.0


@dataclass(frozen=True)
class Row:
    """One line of the report: a measured figure, graded against a target or not at all."""

    name: str
    value: str
    passed: bool | None = None  # None: informational, no target


def report(rows: Sequence[Row]) -> str:
    """The results table (pure): name, value, and PASS/FAIL for graded rows only."""
    width = max(len(row.name) for row in rows)
    verdicts = {True: "PASS", False: "FAIL", None: ""}
    return "\n".join(f"{row.name:<{width}}  {row.value:>24}  {verdicts[row.passed]}".rstrip() for row in rows)


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) of a running process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen[bytes]:
    """Start `crypto-live NAME`, its output to NAME.log (the child keeps its own handle)."""
    with open(logs / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "crypto_live", name], env=env, stdout=log, stderr=subprocess.STDOUT
        )


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, as a user stops a service; its exit code. Killed if it takes over a minute."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: gave up after {timeout:.0f} s waiting for {what}")
        time.sleep(POLL_S)


def wait_until_quiet(read: Callable[[], int], quiet_for: float, limit: float) -> None:
    """Return once ``read()`` has not changed for ``quiet_for`` seconds (or after ``limit``)."""
    started = changed_at = time.monotonic()
    last = read()
    while time.monotonic() - changed_at < quiet_for and time.monotonic() - started < limit:
        time.sleep(POLL_S)
        now = read()
        if now != last:
            last, changed_at = now, time.monotonic()


def count_messages(kafka: KafkaSettings, topic: str, idle: float = QUIET_FOR_S, limit: float = 300) -> int:
    """Every message on ``topic``, read from the start by a consumer of its own.

    Read rather than taken from watermarks, which some brokers (Tansu) report behind the
    last record batch; done when nothing new came for ``idle`` seconds.
    """
    from confluent_kafka import Consumer, TopicPartition

    from crypto_live.kafka import client_config

    consumer = Consumer({**client_config(kafka), "group.id": f"bench-count-{os.getpid()}", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        count, started = 0, time.monotonic()
        last_new = started + FIRST_FETCH_S  # the first fetch may take longer than ``idle``
        while time.monotonic() - last_new < idle and time.monotonic() - started < limit:
            batch = consumer.consume(10_000, timeout=POLL_S)
            fresh = sum(1 for message in batch if message.error() is None)
            if fresh:
                count, last_new = count + fresh, time.monotonic()
        return count
    finally:
        consumer.close()


@dataclass(frozen=True)
class Drained:
    """How one sink's drain of the topic went."""

    rate: float  # events/s from its first commit to its last
    startup: float  # seconds from process start to its first commit
    rss: float  # peak resident memory, MiB
    exit_code: int
    committed: int  # events its group committed


def drain(name: str, key: str, expected: int, env: dict[str, str], logs: Path, observer: Observer) -> Drained:
    """Run one sink until its group has committed ``expected`` events; time it.

    The rate is taken from the first commit to the last, so consumer-group start-up
    (process start, group join) is reported apart rather than diluting it.
    """
    started = time.monotonic()
    sink = start(name, env, logs)
    try:
        first_at: float | None = None
        first_done = done = 0
        moved_at = started
        while time.monotonic() - started < DRAIN_LIMIT_S and sink.poll() is None:
            now, before, done = time.monotonic(), done, sum(observer.committed()[key].values())
            if done and first_at is None:
                first_at, first_done = now, done
            if done >= expected:
                break
            if done != before:
                moved_at = now
            elif first_at is not None and now - moved_at > STALLED_AFTER_S:
                break  # short of expected and no longer moving: events are missing
            time.sleep(POLL_S)
        finished = time.monotonic()
        rss = peak_rss_mib(sink.pid) if sink.poll() is None else float("nan")  # a high-water mark: one reading
    finally:
        code = stop(sink)
    rate = (done - first_done) / (finished - first_at) if first_at is not None and finished > first_at else 0.0
    startup = (first_at if first_at is not None else finished) - started
    return Drained(rate=rate, startup=startup, rss=rss, exit_code=code, committed=done)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=4000, help="simulated market updates per second")
    parser.add_argument("--symbols", type=int, default=400, help="simulated symbols")
    parser.add_argument("--seconds", type=float, default=20, help="how long the producer is measured")
    args = parser.parse_args()

    from crypto_live import logs

    logs.configure("WARNING")
    from crypto_live.embedded import EmbeddedAws, EmbeddedBroker, emulator_environment
    from crypto_live.observer import Observer
    from crypto_live.provision import provision_aws, provision_kafka
    from crypto_live.settings import DynamoSinkSettings, ProducerSettings, S3SinkSettings, load
    from crypto_live.simulator import SimulatorOptions, SimulatorThread

    rows: list[Row] = []
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker())
        aws = stack.enter_context(EmbeddedAws())
        sim = stack.enter_context(
            SimulatorThread(SimulatorOptions(symbols=args.symbols, interval=args.symbols / args.rate))
        )
        log_dir = Path(tempfile.mkdtemp(prefix="crypto-live-bench-"))
        # Tansu holds a group's first assignment for session.timeout.ms / 2: keep that short.
        env = {
            **os.environ,
            **emulator_environment(aws.endpoint_url),
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "BINANCE_WEBSOCKET_URL": sim.url(),
            "MAX_BATCH_SIZE": "1000",
            "MAX_BATCH_TIMEOUT": "2",
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "LOG_LEVEL": "WARNING",
        }
        os.environ.update(emulator_environment(aws.endpoint_url))
        producer_s, s3_s = load(ProducerSettings, env), load(S3SinkSettings, env)
        dynamo_s = load(DynamoSinkSettings, env)
        provision_kafka(producer_s.kafka)
        provision_aws(producer_s, s3_s, dynamo_s, sim.url())
        observer = Observer(s3_s, dynamo_s)
        stack.callback(observer.close)

        def on_topic() -> int:
            return observer.progress()[0]

        print(
            f"producer: simulator at up to {args.rate:,.0f} updates/s, measured for {args.seconds:.0f} s ...",
            flush=True,
        )
        producer = start("producer", env, log_dir)
        stack.callback(stop, producer)  # also when the bench itself fails: no orphan service

        def producer_running(condition: Callable[[], bool]) -> Callable[[], bool]:
            def check() -> bool:
                if producer.poll() is not None:
                    raise SystemExit(f"bench: the producer exited with {producer.returncode}; see {log_dir}")
                return condition()

            return check

        # Warm-up (process start, connection, topic metadata) is over once the producer is
        # connected and has caught up: the topic holds every event sent before that point.
        wait_for(producer_running(lambda: sim.sent_count > 0), timeout=60, what="the producer to connect")
        backlog = sim.sent_count
        wait_for(producer_running(lambda: on_topic() >= backlog), timeout=60, what="the producer to catch up")
        first_on_topic, first_sent, t0 = on_topic(), sim.sent_count, time.monotonic()
        time.sleep(args.seconds)  # the measured window itself
        last_on_topic, last_sent, t1 = on_topic(), sim.sent_count, time.monotonic()
        # Close the market, so every event sent is final; the producer takes in what was in
        # flight (the topic stops growing), then flushes and exits on SIGTERM.
        sim.stop()
        wait_until_quiet(on_topic, QUIET_FOR_S, limit=120)
        producer_rss = peak_rss_mib(producer.pid)
        code = stop(producer)
        sent = len(sim.sent_keys())
        in_topic = count_messages(producer_s.kafka, producer_s.kafka.topic)

        offered = (last_sent - first_sent) / (t1 - t0)
        reached = (last_on_topic - first_on_topic) / (t1 - t0)
        rows.append(Row("simulator events/s sent (offered load)", f"{offered:,.0f}"))
        rows.append(Row("producer events/s reaching the topic", f"{reached:,.0f}", reached >= TARGET_EVENTS_PER_S))
        rows.append(Row("producer peak RSS MiB", f"{producer_rss:,.0f}", producer_rss <= TARGET_RSS_MIB))
        rows.append(Row("producer exit code", str(code), code == 0))
        rows.append(Row("events sent / on the topic", f"{sent:,} / {in_topic:,}", sent == in_topic))

        for name, key in (("s3-sink", "s3"), ("dynamo-sink", "dynamo")):
            print(f"{name}: draining {in_topic:,} events ...", flush=True)
            run = drain(name, key, in_topic, env, log_dir, observer)
            rows.append(Row(f"{name} events/s (after start-up)", f"{run.rate:,.0f}", run.rate >= TARGET_EVENTS_PER_S))
            rows.append(Row(f"{name} start-up to first commit s", f"{run.startup:.1f}"))
            rows.append(Row(f"{name} peak RSS MiB", f"{run.rss:,.0f}", run.rss <= TARGET_RSS_MIB))
            rows.append(
                Row(
                    f"{name} exit code / events committed",
                    f"{run.exit_code} / {run.committed:,}",
                    run.exit_code == 0 and run.committed >= in_topic,
                )
            )
        in_s3 = observer.s3_rows()
        in_dynamo = observer.dynamo_rows()
        rows.append(
            Row(
                "events on the topic / S3 rows / DynamoDB rows",
                f"{in_topic:,} / {in_s3:,} / {in_dynamo:,}",
                in_topic == in_s3 == in_dynamo,
            )
        )

    print()
    print(report(rows))
    print(f"(logs: {log_dir})")
    return 0 if all(row.passed is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
