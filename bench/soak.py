"""`make soak`: the whole pipeline under steady load for minutes; memory and exactly-once.

    python -m bench.soak [--minutes 10] [--rate 10000] [--symbols 400] [--warmup SECONDS]

Everything runs on this machine: the embedded broker (Tansu) and AWS emulator (moto), the
market simulator on a thread of this process at --rate events/s on average (``--symbols``
symbols, each updated at a tick with the market's change probability), and producer, S3
sink and DynamoDB sink as ``python -m crypto_live`` child processes, as a user runs them.
Every --sample seconds the
resident memory (RSS) of each service, the events on the topic and each sink group's
committed offsets are recorded. After --minutes the market closes, the producer gets
SIGTERM, both sinks are given up to --drain-limit seconds to commit the end of the topic,
then get SIGTERM, and what is where is checked:

* topic against the simulator: every event sent is on the topic once;
* S3 and DynamoDB against the topic: every event up to the offsets each sink group
  committed is stored, once (lost, doubled, and unexpected = stored but never on the topic).

Written to ``--out`` (default ``bench/``): ``soak.json`` (every figure) and ``soak.md`` (a
short summary). Exit status 1 when anything is lost, doubled or unexpected, a sink did not
drain within the limit, a service exited other than 0, or a service's RSS grew by 10 % or
more between the end of warm-up (default: the first minute, or 20 % of a shorter run) and
the end of the load. Each RSS figure is the largest of the last 3 samples up to that moment,
so one batch in flight does not decide it.

Honest figures, not a pass at any price: on a 2-core machine with moto, 10,000 events/s
may not be sustainable (the DynamoDB sink stores ~1,500 events/s into moto). The report
gives the rate asked, the rate the simulator achieved, the rates reaching the topic and
each store during the load, and each sink's backlog when the load stopped, and the
verdict fails when a sink has not caught up by the drain limit.

Memory, and why the checks are done the way they are (everything here is memory only;
per-event costs measured at 2,000 events/s, scaled to 6 M events = 10 min at 10,000/s):

* Tansu keeps the topic: a few hundred bytes per event, ~2 GB for 6 M events.
* moto keeps S3 bodies and DynamoDB items as Python objects: ~4 KB per event stored in
  both (710 MB after ~160,000 events), most of it the DynamoDB items. 6 M events in both
  stores would need ~25 GB: more than these machines have. What bounds it is the DynamoDB
  sink's own pace into moto (~1,500 rows/s, so ~1-2 M rows by the drain limit, ~4-8 GB):
  at 10,000 events/s the soak reports the backlog it could not drain and fails, rather
  than pretending or exhausting memory.
* This process: the simulator records every event it sends (~1 KB each, ~6 GB at 6 M),
  and the checks hold one (symbol, event time) key per event on the topic and per S3 row
  (~150 B each). The services' RSS, which the verdict is about, is measured apart.
* S3 is read row by row (one GET per object of up to MAX_BATCH_SIZE rows). DynamoDB is
  read key by key (a Scan) only while the table holds at most --keys-limit rows (default
  50,000): moto answers every Scan page, and every Query, by walking the whole table
  (measured: 3-8 s per request at 160,000 rows, so reading them all takes many minutes).
  Above that, or with ``--verify counts``, the table's item count (DescribeTable, exact in
  moto) is compared with the distinct events the sink committed: rows are keyed by
  (symbol, event time), so a replay rewrites a row and can never double it, and the sink
  writes only events it read from the topic; equal counts mean none is lost.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import gzip
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SERVICES = ("producer", "s3-sink", "dynamo-sink")
SINKS = {"s3-sink": "s3", "dynamo-sink": "dynamo"}  # service -> the Observer's name for its group
RSS_GROWTH_LIMIT_PCT = 10.0
RSS_WINDOW = 3  # samples: the RSS at a moment is the largest of the last RSS_WINDOW up to it
DEFAULT_KEYS_LIMIT = 50_000
Key = tuple[str, int]


@dataclass(frozen=True)
class Options:
    minutes: float = 10.0
    rate: float = 10_000.0
    symbols: int = 400
    warmup: float | None = None  # seconds; None: min(60, 20 % of the run)
    sample: float = 5.0
    drain_limit: float | None = None  # seconds; None: max(120, the run's length)
    verify: str = "auto"  # keys | counts | auto
    keys_limit: int = DEFAULT_KEYS_LIMIT
    out: Path = Path(__file__).resolve().parent

    @property
    def seconds(self) -> float:
        return self.minutes * 60

    @property
    def warmup_s(self) -> float:
        return self.warmup if self.warmup is not None else min(60.0, 0.2 * self.seconds)

    @property
    def drain_limit_s(self) -> float:
        return self.drain_limit if self.drain_limit is not None else max(120.0, self.seconds)


# ------------------------------------------------------------------ pure figures


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the load started
    sent: int  # events the simulator sent
    on_topic: int
    committed: dict[str, int]  # per sink service
    rss_mb: dict[str, float]  # per service (0 once exited)


@dataclass(frozen=True)
class Verdict:
    store: str
    events: int  # distinct events it should hold
    stored: int
    lost: int
    doubled: int
    unexpected: int
    method: str = "keys"

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.doubled == 0 and self.unexpected == 0


def verdict(store: str, stored_keys: Iterable[Key], expected_keys: Iterable[Key]) -> Verdict:
    counts = Counter(stored_keys)
    expected = set(expected_keys)
    return Verdict(
        store=store,
        events=len(expected),
        stored=sum(counts.values()),
        lost=len(expected - counts.keys()),
        doubled=sum(n - 1 for n in counts.values() if n > 1),
        unexpected=len(counts.keys() - expected),
    )


def count_verdict(store: str, stored: int, expected: int) -> Verdict:
    """A store whose rows are keyed by the event (no doubles possible), judged by its count."""
    return Verdict(store, expected, stored, max(expected - stored, 0), 0, max(stored - expected, 0), "counts")


def tick_interval(options: Options) -> float:
    """Seconds between market ticks for --rate events/s: each tick updates every symbol with
    the market's change probability (:func:`crypto_live.simulator.market.step`)."""
    from crypto_live.simulator import market

    changing = inspect.signature(market.step).parameters["change_probability"].default
    return float(options.symbols * changing / options.rate)


def rss_at(samples: Sequence[Sample], service: str, until: float) -> float:
    """The service's RSS at ``until``: the largest of the last RSS_WINDOW samples up to it."""
    window = [s.rss_mb.get(service, 0.0) for s in samples if s.at <= until][-RSS_WINDOW:]
    return max(window, default=0.0)


def rate(samples: Sequence[Sample], start: float, end: float, value: Any) -> float:
    """Events per second of ``value(sample)`` between the samples nearest after ``start``
    and at or before ``end``."""
    window = [s for s in samples if start <= s.at <= end]
    if len(window) < 2 or window[-1].at <= window[0].at:
        return 0.0
    return float(value(window[-1]) - value(window[0])) / (window[-1].at - window[0].at)


def growth_pct(before: float, after: float) -> float:
    return (after - before) / before * 100 if before > 0 else float("inf")


def failures(report: Mapping[str, Any]) -> list[str]:
    """Why the soak fails (empty: it passes)."""
    why = []
    for v in report["verdicts"]:
        if v["lost"] or v["doubled"] or v["unexpected"]:
            why.append(f"{v['store']}: {v['lost']} lost, {v['doubled']} doubled, {v['unexpected']} unexpected")
    for name, drained in report["drain_s"].items():
        if drained is None:
            why.append(f"{name} did not drain within {report['drain_limit_s']:.0f} s")
    for name, code in report["exit_codes"].items():
        if code != 0:
            why.append(f"{name} exited with {code}")
    for name, rss in report["rss_mb"].items():
        if rss["growth_pct"] >= report["rss_growth_limit_pct"]:
            why.append(f"{name} RSS grew {rss['growth_pct']:.1f} % after warm-up")
    return why


def markdown(report: Mapping[str, Any]) -> str:
    """The short summary written next to soak.json (pure)."""
    r = report
    lines = [
        f"# Soak: {r['minutes']:g} min at {r['rate_asked']:,.0f} events/s asked — {'PASS' if r['passed'] else 'FAIL'}",
        "",
        f"Warm-up {r['warmup_s']:.0f} s; rates measured from its end to the end of the load.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| simulator sent (achieved offered rate) | {r['rates']['simulator']:,.0f} events/s |",
        f"| reaching the topic | {r['rates']['topic']:,.0f} events/s |",
    ]
    for name in SINKS:
        lines.append(f"| committed by {name} | {r['rates'][name]:,.0f} events/s |")
        lines.append(f"| {name} backlog when the load stopped | {r['backlog_at_load_end'][name]:,} events |")
        drained = r["drain_s"][name]
        lines.append(f"| {name} drain | {'not drained' if drained is None else f'{drained:.1f} s'} |")
    lines += ["", "| store | method | events | stored | lost | doubled | unexpected |", "|---|---|---|---|---|---|---|"]
    for v in r["verdicts"]:
        lines.append(
            f"| {v['store']} | {v['method']} | {v['events']:,} | {v['stored']:,} | {v['lost']} | {v['doubled']} "
            f"| {v['unexpected']} |"
        )
    lines += ["", "| service | RSS MB at warm-up end | at load end | growth | exit |", "|---|---|---|---|---|"]
    for name, rss in r["rss_mb"].items():
        lines.append(
            f"| {name} | {rss['warmup_end']:.0f} | {rss['load_end']:.0f} | {rss['growth_pct']:+.1f} % "
            f"| {r['exit_codes'][name]} |"
        )
    if r["stack_rss_mb"]:
        stack = ", ".join(f"{name} {mb:,.0f} MB" for name, mb in r["stack_rss_mb"].items())
        lines += ["", f"Test stack at the end (not judged): {stack}."]
    lines += ["", *(f"- FAIL: {why}" for why in r["failures"])]
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------ the shell


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    exit_code: int | None = field(default=None)

    def rss_mb(self) -> float:
        import psutil

        with contextlib.suppress(psutil.Error):
            return float(psutil.Process(self.process.pid).memory_info().rss) / 1e6
        return 0.0

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a user stops a service; killed if it takes longer than ``timeout``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_code = self.process.wait()
        return self.exit_code


def start(name: str, env: Mapping[str, str], logs: Path) -> Service:
    with open(logs / f"{name}.log", "wb") as log:  # the child keeps its own handle
        process = subprocess.Popen(
            [sys.executable, "-m", "crypto_live", name], env=dict(env), stdout=log, stderr=subprocess.STDOUT
        )
    return Service(name, process)


def stack_rss_mb() -> dict[str, float]:
    """RSS of the broker and the emulator (children of this process), for the record."""
    import psutil

    found: dict[str, float] = {}
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(child.cmdline())
            name = "moto" if "moto.server" in cmdline else "tansu" if " broker " in f"{cmdline} " else None
            if name:
                found[name] = child.memory_info().rss / 1e6
    return found


def read_topic(kafka: Any, topic: str, idle: float = 3.0, limit: float = 1800) -> dict[int, list[Key]]:
    """Every event on ``topic``, as each partition's keys in offset order (offsets from 0, no gaps:
    the producer writes no transactions, so a gap would be an error worth seeing)."""
    import orjson
    from confluent_kafka import Consumer, TopicPartition

    from crypto_live.kafka import client_config

    consumer = Consumer({**client_config(kafka), "group.id": f"soak-read-{os.getpid()}", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        keys: dict[int, list[Key]] = {p: [] for p in partitions}
        started = time.monotonic()
        last_new = started + 10  # the first fetch may take longer than ``idle``
        while time.monotonic() - last_new < idle and time.monotonic() - started < limit:
            for message in consumer.consume(10_000, timeout=0.25):
                if message.error() is not None:
                    continue
                event = orjson.loads(message.value())
                held = keys[message.partition()]
                if message.offset() != len(held):
                    raise SystemExit(f"soak: partition {message.partition()} jumps to offset {message.offset()}")
                held.append((sys.intern(event["s"]), int(event["E"])))
                last_new = time.monotonic()
        return keys
    finally:
        consumer.close()


def s3_keys(client: Any, bucket: str) -> list[Key]:
    import orjson

    keys: list[Key] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            for line in (gzip.decompress(body) if obj["Key"].endswith(".gz") else body).splitlines():
                event = orjson.loads(line)
                keys.append((sys.intern(event["s"]), int(event["E"])))
    return keys


def dynamo_keys(client: Any, table: str) -> list[Key]:
    keys: list[Key] = []
    kwargs: dict[str, Any] = {"TableName": table, "ProjectionExpression": "#s, #t"}
    kwargs["ExpressionAttributeNames"] = {"#s": "symbol", "#t": "event_time"}
    while True:
        page = client.scan(**kwargs)
        keys.extend((sys.intern(i["symbol"]["S"]), int(i["event_time"]["N"])) for i in page["Items"])
        if "LastEvaluatedKey" not in page:
            return keys
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def say(message: str) -> None:
    print(f"soak: {message}", flush=True)


def run(options: Options) -> dict[str, Any]:
    from crypto_live import aws, logs
    from crypto_live.embedded import EmbeddedAws, EmbeddedBroker, emulator_environment, patched_environ
    from crypto_live.observer import Observer
    from crypto_live.provision import provision_aws, provision_kafka
    from crypto_live.settings import DynamoSinkSettings, ProducerSettings, S3SinkSettings, load
    from crypto_live.simulator import SimulatorOptions, SimulatorThread

    logs.configure("WARNING")
    with ExitStack() as stack:
        broker = stack.enter_context(EmbeddedBroker())
        emulator = stack.enter_context(EmbeddedAws())
        stack.enter_context(patched_environ(emulator_environment(emulator.endpoint_url)))
        sim = stack.enter_context(
            SimulatorThread(SimulatorOptions(symbols=options.symbols, interval=tick_interval(options)))
        )
        log_dir = Path(tempfile.mkdtemp(prefix="crypto-live-soak-"))
        env = {
            **os.environ,
            **emulator_environment(emulator.endpoint_url),
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "KAFKA_TOPIC": "soak",
            "S3_SINK_GROUP": "soak-s3-sink",
            "DYNAMO_SINK_GROUP": "soak-dynamo-sink",
            "S3_BUCKET": "soak",
            "DYNAMO_TABLE_NAME": "soak",
            "BINANCE_WEBSOCKET_URL": sim.url(),
            "MAX_BATCH_SIZE": "1000",
            "MAX_BATCH_TIMEOUT": "2",
            # Tansu holds a group's first assignment for session.timeout.ms / 2: keep that short.
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "LOG_LEVEL": "WARNING",
        }
        producer_s, s3_s, dynamo_s = (load(cls, env) for cls in (ProducerSettings, S3SinkSettings, DynamoSinkSettings))
        provision_kafka(producer_s.kafka)
        provision_aws(producer_s, s3_s, dynamo_s, sim.url())
        observer = Observer(s3_s, dynamo_s)
        stack.callback(observer.close)

        say(f"{options.minutes:g} min at {options.rate:,.0f} events/s asked; service logs in {log_dir}")
        services = {name: start(name, env, log_dir) for name in SERVICES}
        for service in services.values():
            stack.callback(service.stop)  # also when the soak itself fails: no orphan service

        samples: list[Sample] = []
        t0 = time.monotonic()

        def take_sample() -> Sample:
            events, _ = observer.progress()
            committed = observer.committed()
            sample = Sample(
                at=time.monotonic() - t0,
                sent=sim.sent_count,
                on_topic=events,
                committed={name: sum(committed[group].values()) for name, group in SINKS.items()},
                rss_mb={name: s.rss_mb() for name, s in services.items()},
            )
            samples.append(sample)
            return sample

        # ---- the load
        next_print = 0.0
        while time.monotonic() - t0 < options.seconds:
            time.sleep(min(options.sample, max(options.seconds - (time.monotonic() - t0), 0.01)))
            sample = take_sample()
            dead = [name for name, s in services.items() if s.process.poll() is not None]
            if dead:
                raise SystemExit(f"soak: {', '.join(dead)} exited during the load; see {log_dir}")
            if sample.at >= next_print:
                lag = ", ".join(f"{n} backlog {sample.on_topic - c:,}" for n, c in sample.committed.items())
                rss = ", ".join(f"{n} {mb:.0f}" for n, mb in sample.rss_mb.items())
                say(f"{sample.at:5.0f} s: sent {sample.sent:,}, topic {sample.on_topic:,}, {lag}; RSS MB {rss}")
                next_print = sample.at + 30
        load_end = samples[-1].at if samples else 0.0

        # ---- stop the producer, let the sinks drain
        sim.stop()  # the market closes: every event sent is final
        producer_code = services["producer"].stop()
        stopped_at = time.monotonic()
        say(f"producer stopped (exit {producer_code}); reading the topic while the sinks drain")
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            topic_read = pool.submit(read_topic, producer_s.kafka, producer_s.kafka.topic)
            committed_log: list[tuple[float, dict[str, dict[int, int]]]] = []
            drain_s: dict[str, float | None] = dict.fromkeys(SINKS)
            while time.monotonic() - stopped_at < options.drain_limit_s:
                committed_log.append((time.monotonic() - stopped_at, observer.committed()))
                if topic_read.done():
                    ends = {p: len(keys) for p, keys in topic_read.result().items()}
                    for name, group in SINKS.items():
                        if drain_s[name] is None:
                            drain_s[name] = next(
                                (t for t, c in committed_log if all(c[group][p] >= ends[p] for p in ends)), None
                            )
                    if all(t is not None for t in drain_s.values()):
                        break
                time.sleep(0.5)
            topic = topic_read.result()
        for name in SINKS:
            services[name].stop()
        final_committed = observer.committed()
        say("sinks stopped; checking every store")

        # ---- what is where
        sent_keys = sim.sent_keys()
        topic_keys = [key for keys in topic.values() for key in keys]
        verdicts = [verdict("topic", topic_keys, sent_keys)]
        expected = {
            name: {key for p, keys in topic.items() for key in keys[: final_committed[group].get(p, 0)]}
            for name, group in SINKS.items()
        }
        s3 = aws.client(s3_s.aws, "s3")
        verdicts.append(verdict("s3-sink", s3_keys(s3, s3_s.bucket), expected["s3-sink"]))
        dynamo = aws.client(dynamo_s.aws, "dynamodb")
        rows = int(dynamo.describe_table(TableName=dynamo_s.table)["Table"]["ItemCount"])
        by_keys = options.verify == "keys" or (options.verify == "auto" and rows <= options.keys_limit)
        verdicts.append(
            verdict("dynamo-sink", dynamo_keys(dynamo, dynamo_s.table), expected["dynamo-sink"])
            if by_keys
            else count_verdict("dynamo-sink", rows, len(expected["dynamo-sink"]))
        )
        stack_rss = stack_rss_mb()

    warmup_end = min(options.warmup_s, load_end)
    last = samples[-1]
    report: dict[str, Any] = {
        "minutes": options.minutes,
        "rate_asked": options.rate,
        "symbols": options.symbols,
        "warmup_s": warmup_end,
        "load_s": load_end,
        "rates": {
            "simulator": rate(samples, warmup_end, load_end, lambda s: s.sent),
            "topic": rate(samples, warmup_end, load_end, lambda s: s.on_topic),
            **{name: rate(samples, warmup_end, load_end, lambda s, n=name: s.committed[n]) for name in SINKS},
        },
        "events_sent": len(sent_keys),
        "events_on_topic": len(topic_keys),
        "backlog_at_load_end": {name: last.on_topic - last.committed[name] for name in SINKS},
        "drain_limit_s": options.drain_limit_s,
        "drain_s": drain_s,
        "exit_codes": {name: s.exit_code for name, s in services.items()},
        "verdicts": [{**asdict(v), "exact": v.exact} for v in verdicts],
        "rss_growth_limit_pct": RSS_GROWTH_LIMIT_PCT,
        "rss_mb": {
            name: {
                "warmup_end": (before := rss_at(samples, name, warmup_end)),
                "load_end": (after := rss_at(samples, name, load_end)),
                "growth_pct": growth_pct(before, after),
                "peak": max(s.rss_mb[name] for s in samples),
            }
            for name in SERVICES
        },
        "stack_rss_mb": stack_rss,
        "samples": [asdict(s) for s in samples],
        "logs": str(log_dir),
    }
    report["failures"] = failures(report)
    report["passed"] = not report["failures"]
    return report


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load (default 10)")
    parser.add_argument("--rate", type=float, default=10_000, help="events/s the simulator sends (default 10000)")
    parser.add_argument("--symbols", type=int, default=400, help="simulated symbols (default 400)")
    parser.add_argument("--warmup", type=float, default=None, help="seconds (default: min(60, 20 %% of the run))")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between samples (default 5)")
    parser.add_argument("--drain-limit", type=float, default=None, help="seconds (default: max(120, the run))")
    parser.add_argument("--verify", choices=("auto", "keys", "counts"), default="auto", help="how DynamoDB is checked")
    parser.add_argument(
        "--keys-limit", type=int, default=DEFAULT_KEYS_LIMIT, help="auto: read DynamoDB key by key up to this many rows"
    )
    parser.add_argument("--out", type=Path, default=Options.out, help="where soak.json and soak.md go (default bench/)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0 or args.symbols < 1 or args.sample <= 0:
        parser.error("--minutes, --rate and --sample must be positive and --symbols at least 1")
    return Options(
        minutes=args.minutes,
        rate=args.rate,
        symbols=args.symbols,
        warmup=args.warmup,
        sample=args.sample,
        drain_limit=args.drain_limit,
        verify=args.verify,
        keys_limit=args.keys_limit,
        out=args.out,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    report = run(options)
    options.out.mkdir(parents=True, exist_ok=True)
    (options.out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    summary = markdown(report)
    (options.out / "soak.md").write_text(summary)
    print()
    print(summary, end="")
    print(f"(figures: {options.out / 'soak.json'}; service logs: {report['logs']})")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
