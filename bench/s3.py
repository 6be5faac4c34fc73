"""The S3 sink against Quix's own S3FileSink and against Quix itself (the floor).

One 3-partition topic is pre-filled with N events; each contender then drains all of it
as a child process, one after another, each with a consumer group (and bucket) of its own:

1. ``crypto-live s3-sink`` (MAX_BATCH_SIZE objects);
2. Quix's ``S3FileSink``, format json (bench/contenders/quix_sink.py);
3. the floor: a Quix app whose sink discards every batch, json deserializer (and, in a
   full run, bytes deserializer: informational).

The Quix contenders checkpoint every 3 x MAX_BATCH_SIZE messages or 0.1 s, whichever
comes first: S3FileSink writes one object per partition per checkpoint. Rates come from
each group's commits (first to last), CPU from the child's own user + system time over the
same window; each contender's longest gap between two commits, as a share of that window,
is recorded (``*_commit_share``): a commit landing late can move a rate by that much, and it
stays under 5 %. CPU per event, the headline figure, does not depend on it. crypto-live's bucket must then hold
every event exactly once: a fast sink that loses or doubles events does not count.
"""

from __future__ import annotations

import sys
from collections import Counter

import orjson

from bench.stack import Drain, Stack, drain, market_events, prefill

PARTITIONS = 3
FULL_EVENTS, QUICK_EVENTS = 200_000, 6_000
FULL_BATCH, QUICK_BATCH = 1000, 250
SYMBOLS = 400
#: Tansu holds a group's first assignment for half the session timeout: short, as start-up is not measured.
FULL_SESSION_MS, QUICK_SESSION_MS = 6000, 3000


def _bucket(stack: Stack, name: str) -> str:
    s3 = stack.client("s3")
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": stack.aws_env["AWS_DEFAULT_REGION"]})
    return name


def stored_events(stack: Stack, bucket: str) -> Counter[tuple[str, int]]:
    """How many times each (s, E) appears across every object of ``bucket``."""
    import gzip

    s3 = stack.client("s3")
    counts: Counter[tuple[str, int]] = Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            if item["Key"].endswith(".gz"):
                body = gzip.decompress(body)
            for line in body.splitlines():
                if line.strip():
                    event = orjson.loads(line)
                    counts[(event["s"], event["E"])] += 1
    return counts


def _run(stack: Stack, label: str, args: list[str], env: dict[str, str], group: str, topic: str, n: int) -> Drain:
    print(f"  {label} ...", end="", flush=True)
    child = stack.start(args, f"s3-{label}.log", env)
    result = drain(stack, child, group, topic, PARTITIONS, n)
    print(
        f" {result.events_per_s:,.0f} events/s, {result.cpu_us_per_event:.1f} µs CPU/event"
        f" (longest gap between commits: {result.commit_share:.1%} of the timed span)",
        flush=True,
    )
    if result.committed < n:
        print(f"  {label}: committed {result.committed:,} of {n:,} (log: {child.log})", flush=True)
    return result


def measure(stack: Stack, *, quick: bool = False) -> dict[str, float]:
    n = QUICK_EVENTS if quick else FULL_EVENTS
    batch = QUICK_BATCH if quick else FULL_BATCH
    session_ms = str(QUICK_SESSION_MS if quick else FULL_SESSION_MS)
    events = market_events(n, SYMBOLS)
    topic = stack.name("s3-topic")
    print(f"S3: {n:,} events into {PARTITIONS} partitions ...", flush=True)
    prefill(stack, topic, events, PARTITIONS)
    results: dict[str, float] = {}

    group, bucket = stack.name("s3-sink"), _bucket(stack, stack.name("s3-sink"))
    env = stack.env(
        KAFKA_TOPIC=topic,
        S3_BUCKET=bucket,
        S3_SINK_GROUP=group,
        MAX_BATCH_SIZE=str(batch),
        MAX_BATCH_TIMEOUT="2",
        KAFKA_SESSION_TIMEOUT_MS=session_ms,
        LOG_LEVEL="WARNING",
    )
    ours = _run(stack, "crypto-live-s3-sink", [sys.executable, "-m", "crypto_live", "s3-sink"], env, group, topic, n)
    stored = stored_events(stack, bucket)
    sent = {(e["s"], e["E"]) for e in map(orjson.loads, events)}
    exactly_once = stored.keys() == sent and all(count == 1 for count in stored.values())
    results.update(
        s3_sink_events_per_s=ours.events_per_s,
        s3_sink_cpu_us_per_event=ours.cpu_us_per_event,
        s3_sink_commit_share=ours.commit_share,
        s3_sink_startup_s=ours.startup_s,
        s3_sink_bench_rss_mb=ours.peak_rss_mb,
        s3_sink_rows=float(sum(stored.values())),
        s3_sink_distinct_events=float(len(stored)),
        s3_sink_events_sent=float(len(sent)),
        s3_sink_exactly_once=1.0 if exactly_once else 0.0,
    )

    # The smoke run (quick) starts one contender: each is a process importing Quix, seconds of CPU.
    contenders = [("stock_s3filesink", "s3filesink")]
    if not quick:
        contenders += [("quix_floor", "discard-json"), ("quix_floor_bytes", "discard-bytes")]
    for key, kind in contenders:
        group = stack.name(key.replace("_", "-"))
        env = stack.env(
            KAFKA_TOPIC=topic,
            GROUP=group,
            S3_BUCKET=_bucket(stack, stack.name(key.replace("_", "-"))),
            COMMIT_EVERY=str(batch * PARTITIONS),
            # Commits 0.1 s apart at most: a 2 s interval over a 5-8 s drain let a fast
            # contender's last commit land up to 2 s after its work ended, understating it.
            COMMIT_INTERVAL="0.1",
            KAFKA_SESSION_TIMEOUT_MS=session_ms,
        )
        args = [sys.executable, "-m", "bench.contenders.quix_sink", kind]
        result = _run(stack, kind, args, env, group, topic, n)
        results[f"{key}_events_per_s"] = result.events_per_s
        results[f"{key}_cpu_us_per_event"] = result.cpu_us_per_event
        results[f"{key}_commit_share"] = result.commit_share
    return results
