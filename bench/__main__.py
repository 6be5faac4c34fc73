"""`make bench`: throughput and memory of each service, as a user runs them.

Everything runs on this machine: the embedded broker and AWS emulator, the market
simulator at a rate above Binance's (~1-2k events/s for all symbols), and the services
as child processes (`crypto-live producer`, `s3-sink`, `dynamo-sink`). Progress is read
from outside (topic offsets, consumer lag), as `crypto-live run` does.

    python -m bench [--rate 4000] [--seconds 20] [--symbols 400]

Targets (printed as PASS/FAIL, not asserted by the test suite): the producer publishes
at least 2,000 events/s with no loss; each sink drains at least 2,000 events/s; no service
exceeds 400 MiB resident memory.
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


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) of a running process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start(name: str, env: dict[str, str], logs: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "crypto_live.cli", name], env=env,
                            stdout=open(logs / f"{name}.log", "wb"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=4000, help="simulated events per second")
    parser.add_argument("--symbols", type=int, default=400, help="simulated symbols")
    parser.add_argument("--seconds", type=float, default=20, help="how long the producer runs")
    args = parser.parse_args()

    from crypto_live.embedded import EmbeddedAws, EmbeddedBroker, emulator_environment
    from crypto_live.local import Observer
    from crypto_live.provision import provision_aws, provision_kafka
    from crypto_live.settings import DynamoSinkSettings, ProducerSettings, S3SinkSettings, load
    from crypto_live.simulator import SimulatorOptions, SimulatorThread

    results: list[tuple[str, str, bool]] = []
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker())
        aws = stack.enter_context(EmbeddedAws())
        sim = stack.enter_context(SimulatorThread(SimulatorOptions(symbols=args.symbols,
                                                                   interval=args.symbols / args.rate)))
        logs = Path(tempfile.mkdtemp(prefix="crypto-live-bench-"))
        env = {**os.environ, **emulator_environment(aws.endpoint_url),
               "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "BINANCE_WEBSOCKET_URL": sim.url(),
               "MAX_BATCH_SIZE": "1000", "MAX_BATCH_TIMEOUT": "2", "LOG_LEVEL": "WARNING"}
        os.environ.update(emulator_environment(aws.endpoint_url))
        producer_s, s3_s, dynamo_s = (load(c, env) for c in (ProducerSettings, S3SinkSettings, DynamoSinkSettings))
        provision_kafka(producer_s.kafka)
        provision_aws(producer_s, s3_s, dynamo_s, sim.url())
        observer = Observer(s3_s, dynamo_s)
        stack.callback(observer.close)

        def events_in() -> int:
            return observer.snapshot().events_in

        print(f"producer: simulator at {args.rate:,.0f} events/s for {args.seconds:.0f} s ...", flush=True)
        producer = start("producer", env, logs)
        time.sleep(3)  # connection and topic metadata warm-up, excluded from the rate
        first, t0 = events_in(), time.monotonic()
        time.sleep(args.seconds)
        last, t1 = events_in(), time.monotonic()
        producer_rss = peak_rss_mib(producer.pid)
        code = stop(producer)
        published = events_in()
        rate = (last - first) / (t1 - t0)
        results.append(("producer events/s", f"{rate:,.0f}", rate >= TARGET_EVENTS_PER_S))
        results.append(("producer peak RSS MiB", f"{producer_rss:,.0f}", producer_rss <= TARGET_RSS_MIB))
        results.append(("producer exit code / events published", f"{code} / {published:,}", code == 0))

        for name in ("s3-sink", "dynamo-sink"):
            print(f"{name}: draining {published:,} events ...", flush=True)
            started = time.monotonic()
            sink = start(name, env, logs)
            key = "s3" if name == "s3-sink" else "dynamo"
            rss = 0.0
            while observer.lag()[key] > 0 and time.monotonic() - started < 600:
                rss = max(rss, peak_rss_mib(sink.pid))
                time.sleep(0.5)
            elapsed = time.monotonic() - started
            code = stop(sink)
            drain = published / elapsed
            results.append((f"{name} events/s (incl. start-up)", f"{drain:,.0f}", drain >= TARGET_EVENTS_PER_S))
            results.append((f"{name} peak RSS MiB", f"{rss:,.0f}", rss <= TARGET_RSS_MIB))
            results.append((f"{name} exit code", str(code), code == 0))
        results.append(("S3 objects / DynamoDB rows", f"{len(observer.s3_keys()):,} / {observer.dynamo_rows():,}",
                        observer.dynamo_rows() == published))

    width = max(len(name) for name, _, _ in results)
    print()
    for name, value, ok in results:
        print(f"{name:<{width}}  {value:>18}  {'PASS' if ok else 'FAIL'}")
    print(f"(logs: {logs})")
    return 0 if all(ok for _, _, ok in results) else 1


if __name__ == "__main__":
    sys.exit(main())
