"""`make bench`: each service against the contender a user would otherwise run, side by side.

    python -m bench [--quick] [--out DIR]

One broker (Tansu) and one AWS emulator (moto) for the whole run; every contender runs as
a child process against them, one after the other:

- bench.s3: `crypto-live s3-sink` vs Quix's S3FileSink vs the Quix floor (a discarding sink);
- bench.producer: `crypto-live producer` vs raw confluent-kafka produce;
- bench.dynamo: `crypto-live dynamo-sink` vs a plain loop of concurrent BatchWriteItem calls;
- bench.latency: the whole pipeline at a steady rate, and each service's peak memory.

Writes results.json, results.md and results.png to DIR (default: bench/), prints the
targets table and exits 1 if any target FAILs. Verdicts come from same-run ratios and
configured limits only; a figure not measured is "not measured", never PASS. --quick is
the test suite's smoke run (small counts; its figures mean little).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from bench import report

#: The measuring modules, in the order they run.
MODULES = ("bench.s3", "bench.producer", "bench.dynamo", "bench.latency")

#: Peaks seen by the throughput runs stand for the memory keys when bench.latency failed to
#: measure them (a drain of a full backlog is a service's heaviest moment).
PEAK_RSS_STANDINS = {"producer_rss_mb": "producer_bench_rss_mb", "s3_sink_rss_mb": "s3_sink_bench_rss_mb"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run, not a measurement")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent, help="where the three files go")
    args = parser.parse_args(argv)

    from crypto_live import logs

    logs.configure("WARNING")
    from bench.stack import running_stack

    results: dict[str, object] = {}
    started = time.monotonic()
    with running_stack() as stack:
        for name in MODULES:
            try:
                results.update(importlib.import_module(name).measure(stack, quick=args.quick))
            except Exception:  # noqa: BLE001 - one broken measurement leaves the others standing
                traceback.print_exc()
                print(f"{name}: failed; its figures are not measured (logs: {stack.workdir})", flush=True)
        logs_dir = stack.workdir
    for key, standin in PEAK_RSS_STANDINS.items():
        if report.figure(results, key) is None and report.figure(results, standin) is not None:
            results[key] = results[standin]

    meta: dict[str, object] = {
        "quick": args.quick,
        "seconds": round(time.monotonic() - started, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    judged = report.write(args.out, results, meta)
    print()
    print(report.markdown(judged))
    print(f"({args.out}/results.json, results.md, results.png; child logs: {logs_dir})")
    return 1 if report.failed(judged) else 0


if __name__ == "__main__":
    sys.exit(main())
