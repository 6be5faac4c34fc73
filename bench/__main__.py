"""`make bench`: throughput and memory of each service, as a user runs them.

Everything runs on this machine: the embedded broker and AWS emulator, the market
simulator at a rate above Binance's (~1-2k events/s for all symbols), and the services
as child processes (`crypto-live producer`, `s3-sink`, `dynamo-sink`). Progress is read
from outside (committed offsets, the stores), as `crypto-live run` does.

    python -m bench [--rate 4000] [--seconds 20] [--symbols 400]

1. The producer reads the simulator for --seconds; the simulator sends only the tickers
   that changed, so the event rate is below --rate. Then the market closes, so every
   event sent was read, and the producer gets SIGTERM.
2. Each sink in turn drains the topic; its rate runs from its first commit to its last
   (start-up, including the consumer-group join, is reported apart).
3. S3 rows and DynamoDB rows must both equal the events sent: nothing lost, nothing twice.

Targets (printed as PASS/FAIL, not asserted by the test suite): the producer keeps up with
at least 2,000 events/s; each sink drains at least 2,000 events/s; no service exceeds
400 MiB resident memory. DynamoDB here is moto's emulator, itself the slower party.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

TARGET_EVENTS_PER_S = 2000
TARGET_RSS_MIB = 400
DRAIN_LIMIT_S = 600
STALLED_AFTER_S = 30


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) of a running process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "crypto_live.cli", name],
        env=env,
        stdout=open(logs / f"{name}.log", "wb"),
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def drain(name: str, key: str, expected: int, env: dict[str, str], logs: Path, observer) -> dict[str, float]:
    """Run one sink until its group has committed ``expected`` events; time it.

    The rate is taken from the first commit to the last, so consumer-group start-up
    (process start, group join) is reported apart rather than diluting it.
    """
    started = time.monotonic()
    sink = start(name, env, logs)
    first_at = first_done = None
    done = 0
    moved_at = started
    while time.monotonic() - started < DRAIN_LIMIT_S:
        now, before, done = time.monotonic(), done, sum(observer.committed()[key].values())
        if done and first_at is None:
            first_at, first_done = now, done
        if done >= expected:
            break
        if done != before:
            moved_at = now
        elif first_at is not None and now - moved_at > STALLED_AFTER_S:
            break  # short of expected and no longer moving: events are missing
        time.sleep(0.25)
    finished = time.monotonic()
    rss = peak_rss_mib(sink.pid)  # the kernel's high-water mark: one reading covers the whole run
    code = stop(sink)
    rate = (done - first_done) / (finished - first_at) if first_at and finished > first_at else 0.0
    return {"rate": rate, "startup": (first_at or finished) - started, "rss": rss, "code": code, "done": done}


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=4000, help="simulated market updates per second")
    parser.add_argument("--symbols", type=int, default=400, help="simulated symbols")
    parser.add_argument("--seconds", type=float, default=20, help="how long the producer runs")
    args = parser.parse_args()

    from crypto_live.cli import silence_authlib_httpx_warning

    silence_authlib_httpx_warning()
    from crypto_live.embedded import EmbeddedAws, EmbeddedBroker, emulator_environment
    from crypto_live.local import Observer
    from crypto_live.provision import provision_aws, provision_kafka
    from crypto_live.settings import DynamoSinkSettings, ProducerSettings, S3SinkSettings, load
    from crypto_live.simulator import SimulatorOptions, SimulatorThread

    results: list[tuple[str, str, bool]] = []
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker())
        aws = stack.enter_context(EmbeddedAws())
        sim = stack.enter_context(
            SimulatorThread(SimulatorOptions(symbols=args.symbols, interval=args.symbols / args.rate))
        )
        logs = Path(tempfile.mkdtemp(prefix="crypto-live-bench-"))
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
        producer_s, s3_s, dynamo_s = (load(c, env) for c in (ProducerSettings, S3SinkSettings, DynamoSinkSettings))
        provision_kafka(producer_s.kafka)
        provision_aws(producer_s, s3_s, dynamo_s, sim.url())
        observer = Observer(s3_s, dynamo_s)
        stack.callback(observer.close)

        print(f"producer: simulator at up to {args.rate:,.0f} updates/s for {args.seconds:.0f} s ...", flush=True)
        producer = start("producer", env, logs)
        time.sleep(3)  # connection and topic metadata warm-up, excluded from the rate
        first, t0 = sim.sent_count, time.monotonic()
        time.sleep(args.seconds)
        last, t1 = sim.sent_count, time.monotonic()
        # Close the market first, so that every event sent was also read: the count the
        # sinks must then find is exact (the producer reconnects meanwhile, in vain).
        sim.stop()
        time.sleep(2)
        producer_rss = peak_rss_mib(producer.pid)
        code = stop(producer)
        expected = len(sim.sent_keys())
        rate = (last - first) / (t1 - t0)
        results.append(("producer events/s (simulator's rate)", f"{rate:,.0f}", rate >= TARGET_EVENTS_PER_S))
        results.append(("producer peak RSS MiB", f"{producer_rss:,.0f}", producer_rss <= TARGET_RSS_MIB))
        results.append(("producer exit code", str(code), code == 0))

        for name, key in (("s3-sink", "s3"), ("dynamo-sink", "dynamo")):
            print(f"{name}: draining {expected:,} events ...", flush=True)
            run = drain(name, key, expected, env, logs, observer)
            ok = run["rate"] >= TARGET_EVENTS_PER_S
            results.append((f"{name} events/s (after start-up)", f"{run['rate']:,.0f}", ok))
            results.append((f"{name} start-up to first commit s", f"{run['startup']:.1f}", True))
            results.append((f"{name} peak RSS MiB", f"{run['rss']:,.0f}", run["rss"] <= TARGET_RSS_MIB))
            results.append(
                (
                    f"{name} exit code / events committed",
                    f"{run['code']} / {run['done']:,}",
                    run["code"] == 0 and run["done"] >= expected,
                )
            )
        in_s3 = observer.s3_rows()
        rows = observer.dynamo_rows()
        results.append(
            (
                "events in topic / S3 rows / DynamoDB rows",
                f"{expected:,} / {in_s3:,} / {rows:,}",
                in_s3 == expected == rows,
            )
        )

    width = max(len(name) for name, _, _ in results)
    print()
    for name, value, ok in results:
        print(f"{name:<{width}}  {value:>24}  {'PASS' if ok else 'FAIL'}")
    print(f"(logs: {logs})")
    return 0 if all(ok for _, _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
