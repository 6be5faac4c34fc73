"""Latency of the whole pipeline at a steady 2,000 events/s, and each service's peak memory.

The market simulator (on a thread here) sends 2,000 events/s on average to ``crypto-live
producer``; ``s3-sink`` and ``dynamo-sink`` store them; all three are child processes
with the services' default batching (MAX_BATCH_SIZE, MAX_BATCH_TIMEOUT and
DYNAMO_MAX_BATCH_TIMEOUT as ``crypto_live.settings`` defines them, unless this process's
environment sets them: the figures reported are the ones the services loaded).

Latency = the moment an event became readable in the store minus its event time ``E``
(the simulator stamps ``E`` with the wall clock in ms, on this machine). Only events of
the measured window count: it opens once both sinks have caught up with the backlog the
start-up left (or after a warm-up limit; ``latency_warmup_s`` says which), and lasts ~30 s
(quick, the test suite's smoke run: ~4 s at 500 events/s, with batch timeouts of 2 s
and 1 s).

Readers, from outside the services:

* S3: a watcher lists the bucket every ~100 ms; every row of a new object was first
  readable between the start of the previous listing (it was not there) and the end of
  this one. The objects are read (one GET each) after the window, not during it: GETs
  during the run would load the shared emulator and slow the watcher's own listing.
* DynamoDB: moto answers every Scan page and every Query by sorting the whole table, so
  polling with those would cost seconds and disturb the sink. A GetItem is a dictionary
  look-up, so the reader asks BatchGetItem (100 keys a request) for the keys the
  simulator sent that it has not seen yet, every ~100 ms. To keep that load on the
  shared emulator small, a fixed 1 in ``DYNAMO_SAMPLE`` of the events (by a hash of the
  key, so every partition and every batch is sampled alike) is followed. A row was first
  readable between the start of the last request that did not find it (or E) and the
  end of the one that did. At most GETS_PER_CYCLE requests go out a cycle, the pending
  keys taken in turn, so a sink that falls behind widens the brackets instead of making
  the reader load the emulator without bound.

Polling bias: each latency is the midpoint of that bracket, so the poll interval adds no
systematic delay; the error of a single figure is at most half the bracket
(``*_poll_bracket_s`` gives the mean bracket). The upper bounds (end of the request that
saw the row) are reported too, as ``*_latency_p99_upper_s``.
"""

from __future__ import annotations

import functools
import gzip
import math
import sys
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from bench.stack import Child, Stack, committed_total, wait_until

RATE = 2000.0
#: A rate moto's DynamoDB keeps up with beside the rest of the pipeline (see measure).
EMULATOR_RATE = 500.0
SYMBOLS = 400
FULL_S = 30.0
QUICK_S = 4.0
POLL_S = 0.1
#: DynamoDB: follow one event in this many (by key hash).
DYNAMO_SAMPLE = 4
#: Keys per BatchGetItem (DynamoDB's limit), and requests per poll at most.
BATCH_GET = 100
GETS_PER_CYCLE = 3
#: The window opens once both sinks have caught up with the backlog the start-up left (the
#: simulator ran while the groups joined): each group has committed every event sent
#: CAUGHT_UP_S earlier. A sink that never catches up opens it after at most this warm-up.
CAUGHT_UP_S = 2.0
WARMUP_S = 60.0
QUICK_WARMUP_S = 3.0
#: After the window, wait at most this long beyond the batch timeout for its last rows (an
#: event not seen by then counts as seen then: a lower bound, and the count is reported).
SETTLE_S = 20.0
QUICK_SETTLE_S = 3.0
#: The smoke run (quick) streams at EMULATOR_RATE with short batch timeouts: it proves the
#: measurement works, and at the default 10 s timeouts half of it would be waiting.
QUICK_BATCH_TIMEOUTS = {"MAX_BATCH_TIMEOUT": "2", "DYNAMO_MAX_BATCH_TIMEOUT": "1"}
SERVICES = ("producer", "s3-sink", "dynamo-sink")

Key = tuple[str, int]
Bracket = tuple[float, float]  # (not yet readable at, readable at), epoch seconds


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (pure): the smallest value with ``fraction`` of them at or below it."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def latencies(seen: dict[Key, Bracket], events: Sequence[Key], unseen_at: float) -> tuple[list[float], list[float]]:
    """(midpoint latencies, upper-bound latencies) in seconds for ``events``; an event never
    seen counts as readable at ``unseen_at`` (an understatement, reported apart)."""
    mid, upper = [], []
    for key in events:
        event_s = key[1] / 1000
        low, high = seen.get(key, (unseen_at, unseen_at))
        low = max(low, event_s)  # never readable before it happened
        mid.append((low + high) / 2 - event_s)
        upper.append(high - event_s)
    return mid, upper


def sampled(key: Key) -> bool:
    return zlib.crc32(f"{key[0]}/{key[1]}".encode()) % DYNAMO_SAMPLE == 0


class Watcher(threading.Thread):
    """Runs ``poll`` every POLL_S until stopped; ``seen`` is for a poll that finds rows itself."""

    def __init__(self, name: str, poll: Callable[[], None], close: Callable[[], None] = lambda: None):
        super().__init__(name=name, daemon=True)
        self.seen: dict[Key, Bracket] = {}
        self.cycles = 0
        self.busy_s = 0.0
        self.error: BaseException | None = None
        self._poll = poll
        self._close = close
        self._stopped = threading.Event()

    def run(self) -> None:
        try:
            while not self._stopped.is_set():
                started = time.monotonic()
                self._poll()
                self.cycles += 1
                self.busy_s += time.monotonic() - started
                self._stopped.wait(max(0.0, POLL_S - (time.monotonic() - started)))
        except BaseException as exc:  # noqa: BLE001 - re-raised by stop()
            self.error = exc

    def stop(self) -> None:
        self._stopped.set()
        self.join(30)
        self._close()
        if self.error is not None:
            raise RuntimeError(f"{self.name} failed") from self.error


class S3Objects:
    """The bucket's objects with the bracket in which each was first listed, and their rows.

    :meth:`poll` (the watcher's cycle) only lists: GETs on the shared emulator during the
    run would slow the sinks and the watcher's own listing. :meth:`read_rows` reads, once
    each, the objects first listed after a moment.
    """

    def __init__(self, client: Any, bucket: str):
        self._client = client
        self._bucket = bucket
        self._previous_listing = time.time()
        self.listed_at: dict[str, Bracket] = {}
        self.rows: dict[Key, Bracket] = {}
        self._read: set[str] = set()

    def poll(self) -> None:
        started = time.time()
        pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self._bucket)
        names = [o["Key"] for page in pages for o in page.get("Contents", [])]
        listed = time.time()
        for name in names:
            self.listed_at.setdefault(name, (self._previous_listing, listed))
        self._previous_listing = started

    def read_rows(self, since: float) -> None:
        """Read the objects first listed after ``since`` (epoch s): one listed earlier holds only
        older events. Each row gets the bracket of the first object found holding it."""
        for name, bracket in sorted(dict(self.listed_at).items(), key=lambda item: item[1]):
            if bracket[1] < since or name in self._read:
                continue
            body = self._client.get_object(Bucket=self._bucket, Key=name)["Body"].read()
            for line in (gzip.decompress(body) if name.endswith(".gz") else body).splitlines():
                event = orjson.loads(line)
                self.rows.setdefault((event["s"], event["E"]), bracket)
            self._read.add(name)


def dynamo_watcher(client: Any, table: str, sent: Callable[[], list[dict[str, Any]]], since_ms: int) -> Watcher:
    """Follows the sampled events sent with E >= ``since_ms`` until each is in ``table``."""
    pending: dict[Key, float] = {}  # key -> start of the last request that did not find it
    taken = [0]
    turn = [0]  # where the next cycle's keys start in the pending ones
    pool = ThreadPoolExecutor(4, thread_name_prefix="dynamo-reader")

    def get(keys: list[Key]) -> tuple[float, float, list[Key]]:
        started = time.time()
        response = client.batch_get_item(
            RequestItems={
                table: {
                    "Keys": [{"symbol": {"S": s}, "event_time": {"N": str(e)}} for s, e in keys],
                    "ProjectionExpression": "symbol, event_time",
                }
            }
        )
        found = [(i["symbol"]["S"], int(i["event_time"]["N"])) for i in response["Responses"].get(table, [])]
        return started, time.time(), found

    def poll() -> None:
        events = sent()
        for event in events[taken[0] :]:
            key = (event["s"], event["E"])
            if event["E"] >= since_ms and sampled(key) and key not in watcher.seen:
                pending.setdefault(key, event["E"] / 1000)
        taken[0] = len(events)
        # At most GETS_PER_CYCLE requests a cycle, taking the pending keys in turn: a sink
        # that falls behind must not make this reader load the shared emulator without bound.
        keys = list(pending)
        start = turn[0] % len(keys) if keys else 0
        keys = (keys[start:] + keys[:start])[: BATCH_GET * GETS_PER_CYCLE]
        turn[0] = start + len(keys)
        chunks = [keys[i : i + BATCH_GET] for i in range(0, len(keys), BATCH_GET)]
        for (started, answered, found), chunk in zip(pool.map(get, chunks), chunks, strict=True):
            for key in found:
                watcher.seen[key] = (pending.pop(key), answered)
            for key in chunk:
                if key in pending:
                    pending[key] = started

    watcher = Watcher("dynamo-watcher", poll, close=pool.shutdown)
    return watcher


def measure(stack: Stack, *, quick: bool = False) -> dict[str, float]:
    """p50/p99 event-to-S3 and p99 event-to-DynamoDB latency at RATE events/s, the batch
    timeouts in force, and each service's peak RSS (MiB) during the run.

    Then (not quick), informational: the same at EMULATOR_RATE, which moto's DynamoDB takes
    while the rest of the pipeline runs on the same cores. At RATE it does not: the
    plain BatchWriteItem loop of bench.dynamo stores ~1,500 events/s with the machine to
    itself, so any writer's backlog, and its latency, grow for as long as the run lasts.
    """
    results = _measure_at(stack, EMULATOR_RATE if quick else RATE, quick=quick)
    if quick:  # the smoke run streams at EMULATOR_RATE already
        results[f"dynamo_latency_p99_at_{EMULATOR_RATE:.0f}_s"] = results["dynamo_latency_p99_s"]
    else:
        slow = _measure_at(stack, EMULATOR_RATE, quick=False)
        at = f"at_{EMULATOR_RATE:.0f}"
        for key in ("s3_latency_p99_s", "dynamo_latency_p50_s", "dynamo_latency_p99_s", "dynamo_latency_p99_upper_s"):
            results[f"{key[:-2]}_{at}_s"] = slow[key]
        results[f"dynamo_sink_backlog_at_close_{at}_events"] = slow["dynamo_sink_backlog_at_close_events"]
        results[f"dynamo_latency_unseen_{at}_events"] = slow["dynamo_latency_unseen_events"]
    return results


def _measure_at(stack: Stack, rate: float, *, quick: bool) -> dict[str, float]:
    from bench.soak import Options, tick_interval
    from crypto_live import aws
    from crypto_live.embedded import patched_environ
    from crypto_live.provision import ensure_bucket, ensure_table, provision_kafka
    from crypto_live.settings import DynamoSinkSettings, ProducerSettings, S3SinkSettings, load
    from crypto_live.simulator import SimulatorOptions, SimulatorThread

    seconds, warmup, settle = (QUICK_S, QUICK_WARMUP_S, QUICK_SETTLE_S) if quick else (FULL_S, WARMUP_S, SETTLE_S)
    topic = stack.name("latency-topic")
    groups = {"s3-sink": stack.name("latency-s3"), "dynamo-sink": stack.name("latency-dynamo")}
    interval = tick_interval(Options(rate=rate, symbols=SYMBOLS))
    with (
        SimulatorThread(SimulatorOptions(symbols=SYMBOLS, interval=interval)) as sim,
        patched_environ(stack.aws_env),
    ):
        env = stack.env(
            KAFKA_TOPIC=topic,
            S3_BUCKET=stack.name("latency-bucket"),
            S3_SINK_GROUP=groups["s3-sink"],
            DYNAMO_TABLE_NAME=stack.name("latency-table"),
            DYNAMO_SINK_GROUP=groups["dynamo-sink"],
            BINANCE_WEBSOCKET_URL=sim.url(),
            # Tansu holds a group's first assignment for session.timeout.ms / 2: keep that short.
            KAFKA_SESSION_TIMEOUT_MS="6000",
            LOG_LEVEL="WARNING",
            **(QUICK_BATCH_TIMEOUTS if quick else {}),
        )
        producer_s = load(ProducerSettings, env)
        s3_s = load(S3SinkSettings, env)
        dynamo_s = load(DynamoSinkSettings, env)
        provision_kafka(producer_s.kafka)
        ensure_bucket(s3_s.aws, s3_s.bucket)
        ensure_table(dynamo_s)
        s3_client = aws.client(s3_s.aws, "s3")
        dynamo_client = aws.client(dynamo_s.aws, "dynamodb", max_pool_connections=8)

        children: dict[str, Child] = {}
        try:
            for service in SERVICES:
                args = [sys.executable, "-m", "crypto_live", service]
                children[service] = stack.start(args, f"latency-{service}.log", env)

            def committed(service: str) -> int:
                if not all(child.running() for child in children.values()):
                    dead = [name for name, child in children.items() if not child.running()]
                    raise RuntimeError(f"{', '.join(dead)} exited; see {stack.workdir}")
                return committed_total(stack, groups[service], topic, producer_s.kafka.partitions)

            def has_committed(service: str) -> bool:
                return committed(service) > 0

            # Listing from the start: an object is new to the watcher only once, when it first appears.
            s3_objects = S3Objects(s3_client, s3_s.bucket)
            s3 = Watcher("s3-watcher", s3_objects.poll)
            s3.start()
            for service in groups:
                wait_until(functools.partial(has_committed, service), timeout=120, what=f"{service} to commit")
            warmup_started = time.monotonic()
            sent_log = [(warmup_started, sim.sent_count)]
            while time.monotonic() - warmup_started < warmup:
                time.sleep(0.5)
                now = time.monotonic()
                sent_log.append((now, sim.sent_count))
                sent_before = (
                    max(n for t, n in sent_log if t <= now - CAUGHT_UP_S)
                    if now - warmup_started > CAUGHT_UP_S
                    else None
                )
                if sent_before is not None and all(committed(service) >= sent_before for service in groups):
                    break
            warmed_up = time.monotonic() - warmup_started
            opened_ms = time.time_ns() // 1_000_000
            dynamo = dynamo_watcher(dynamo_client, dynamo_s.table, lambda: sim.sent_events, opened_ms)
            dynamo.start()
            time.sleep(seconds)
            closed_ms = time.time_ns() // 1_000_000
            window = sorted({(e["s"], e["E"]) for e in sim.sent_events if opened_ms <= e["E"] < closed_ms})
            followed = [key for key in window if sampled(key)]
            sent_at_close = sim.sent_count
            backlog = {service: sent_at_close - committed(service) for service in groups}
            limit = max(s3_s.max_batch_timeout, dynamo_s.max_batch_timeout) + settle

            def all_seen() -> bool:
                committed("s3-sink")  # fails fast if a service died
                s3_objects.read_rows(since=opened_ms / 1000)
                return all(k in s3_objects.rows for k in window) and all(k in dynamo.seen for k in followed)

            deadline = time.monotonic() + limit  # events not seen by then are reported as unseen
            while not all_seen() and time.monotonic() < deadline:
                time.sleep(0.5)
            unseen_at = time.time()
            s3.stop()
            dynamo.stop()
            rss = {service: child.peak_rss_mb() for service, child in children.items()}
        finally:
            for child in children.values():
                child.stop()

    s3_mid, s3_upper = latencies(s3_objects.rows, window, unseen_at)
    dynamo_mid, dynamo_upper = latencies(dynamo.seen, followed, unseen_at)

    def mean_bracket(seen: dict[Key, Bracket], keys: Sequence[Key]) -> float:
        spans = [seen[k][1] - max(seen[k][0], k[1] / 1000) for k in keys if k in seen]
        return sum(spans) / len(spans) if spans else math.nan

    return {
        "s3_latency_p50_s": percentile(s3_mid, 0.50),
        "s3_latency_p99_s": percentile(s3_mid, 0.99),
        "dynamo_latency_p99_s": percentile(dynamo_mid, 0.99),
        "max_batch_timeout_s": s3_s.max_batch_timeout,
        "dynamo_max_batch_timeout_s": dynamo_s.max_batch_timeout,
        "producer_rss_mb": rss["producer"],
        "s3_sink_rss_mb": rss["s3-sink"],
        "dynamo_sink_rss_mb": rss["dynamo-sink"],
        # informational
        "latency_rate_events_per_s": len(window) / ((closed_ms - opened_ms) / 1000),
        "latency_window_s": (closed_ms - opened_ms) / 1000,
        "s3_latency_events": float(len(window)),
        "s3_latency_unseen_events": float(sum(k not in s3_objects.rows for k in window)),
        "s3_latency_p99_upper_s": percentile(s3_upper, 0.99),
        "s3_poll_bracket_s": mean_bracket(s3_objects.rows, window),
        "dynamo_latency_p50_s": percentile(dynamo_mid, 0.50),
        "dynamo_latency_events": float(len(followed)),
        "dynamo_latency_unseen_events": float(sum(k not in dynamo.seen for k in followed)),
        "dynamo_latency_p99_upper_s": percentile(dynamo_upper, 0.99),
        "dynamo_poll_bracket_s": mean_bracket(dynamo.seen, followed),
        "dynamo_poll_cycle_s": dynamo.busy_s / dynamo.cycles if dynamo.cycles else math.nan,
        "s3_poll_cycle_s": s3.busy_s / s3.cycles if s3.cycles else math.nan,
        "max_batch_size": float(s3_s.max_batch_size),
        "latency_warmup_s": warmed_up,  # from both first commits to the window (warm-up limit: not caught up)
        # Events sent but not yet committed by each sink when the window closed: a sink (or the
        # producer ahead of it) that does not keep up with RATE shows here, not only in latency.
        "s3_sink_backlog_at_close_events": float(backlog["s3-sink"]),
        "dynamo_sink_backlog_at_close_events": float(backlog["dynamo-sink"]),
    }
