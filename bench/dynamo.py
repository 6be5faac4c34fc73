"""DynamoDB sink throughput and requests per event, against a plain BatchWriteItem loop.

A 3-partition topic is pre-filled with ``N`` events; ``crypto-live dynamo-sink`` drains it
into a table of its own as a child process, timed from outside by its group's committed
offsets (first commit to last, so process start and group join are not in the rate).
Between the sink and moto sits :class:`CountingProxy`, which counts the DynamoDB requests
by their ``X-Amz-Target`` header: requests per 1,000 events come from the wire, not from
the sink's own word. They are the requests of the drain, every kind counted (retries
included); the start-up check of the table (the requests before the first BatchWriteItem,
a fixed cost per process) is reported apart as ``dynamo_sink_setup_requests``.

The baseline writes the same events into another table with a plain loop: the items the
sink would write (:func:`processors.dynamo_items.to_item` and ``put_batches``, so the bytes
on the wire are the same), 25 per BatchWriteItem, ``WRITERS`` requests at once (the
sink's own concurrency), a boto3 client against the same moto. Half of them just before
the sink runs and half just after, so a change of load on the shared machine weighs on
both alike. Items are built before the wall clock starts: the baseline's rate is the
emulator's own pace, the sink's is everything it does. The wire floor writes the same
requests a third way (orjson bodies, botocore's SigV4, one urllib3 pool), beside the
baseline's halves.

CPU per event is the headline figure: the sink's process CPU over its drain (from outside,
as for every child), and this process's CPU for each loop, counted from the raw events
(parsing and building the items included) to the last response. It does not depend on when
anyone commits.

At the end each table must hold every event exactly once: rows are keyed by (symbol,
event time), so a replay rewrites a row and cannot double it, and moto's DescribeTable
ItemCount is exact; item count = distinct events means none lost.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from bench.stack import Stack, committed_total, market_events, prefill
from crypto_live.dynamo_table import ensure_table

PARTITIONS = 3
SYMBOLS = 400
FULL_EVENTS = 30_000
QUICK_EVENTS = 2_000
DRAIN_LIMIT_S = 600
#: The sink has stopped short when its commits have not moved for this long.
STALLED_AFTER_S = 30
POLL_S = 0.1
TTL_DAYS = 1


class CountingProxy:
    """An HTTP/1.1 forwarder on a free loopback port that counts requests by ``X-Amz-Target``.

    Requests are parsed only as far as their header and Content-Length body (botocore sends
    no chunked DynamoDB bodies); responses are copied back as bytes. One thread per
    direction per connection: the sink opens at most a dozen.
    """

    def __init__(self, upstream: str):
        host, _, port = upstream.removeprefix("http://").rstrip("/").partition(":")
        self._upstream = (host, int(port or 80))
        self._server = socket.create_server(("127.0.0.1", 0))
        self.counts: Counter[str] = Counter()
        #: Requests before the first BatchWriteItem: the sink's start-up check of the table.
        self.before_first_write: int | None = None
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="counting-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.getsockname()[1]}"

    def total(self) -> int:
        with self._lock:
            return sum(self.counts.values())

    def close(self) -> None:
        self._closed = True
        self._server.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._requests, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()

    def _requests(self, client: socket.socket, upstream: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                headers = {}
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get(b"content-length", b"0"))
                while len(buffer) < length:
                    chunk = client.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                target = headers.get(b"x-amz-target", b"(none)").decode().rpartition(".")[2]
                with self._lock:
                    if target == "BatchWriteItem" and self.before_first_write is None:
                        self.before_first_write = sum(self.counts.values())
                    self.counts[target] += 1
                upstream.sendall(head + b"\r\n\r\n" + body)
        except OSError:
            return
        finally:
            _close(upstream)
            _close(client)

    @staticmethod
    def _copy(source: socket.socket, target: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                target.sendall(chunk)
        except OSError:
            return
        finally:
            _close(source)
            _close(target)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # the peer may have closed it already
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def dynamo_client(stack: Stack) -> Any:
    """A boto3 DynamoDB client against the stack's moto, pooling enough connections for the writers."""
    from processors.dynamo_sink import WRITERS

    return stack.client("dynamodb", max_pool_connections=WRITERS + 2)


def item_count(client: Any, table: str) -> int:
    """Rows in ``table`` (moto's DescribeTable ItemCount is exact, unlike DynamoDB's)."""
    return int(client.describe_table(TableName=table)["Table"]["ItemCount"])


def run_sink(stack: Stack, topic: str, events: int, client: Any) -> dict[str, float]:
    """Drain ``topic`` with ``crypto-live dynamo-sink`` behind the counting proxy; its figures."""
    table, group = stack.name("dynamo-table"), stack.name("dynamo-group")
    ensure_table(client, table, create=True)
    proxy = CountingProxy(stack.aws_env["AWS_ENDPOINT_URL"])
    env = stack.env(
        KAFKA_TOPIC=topic,
        DYNAMO_TABLE_NAME=table,
        DYNAMO_SINK_GROUP=group,
        AWS_ENDPOINT_URL_DYNAMODB=proxy.url,  # DynamoDB only: boto3's per-service endpoint
        # Tansu holds a group's first assignment for session.timeout.ms / 2: keep that short.
        KAFKA_SESSION_TIMEOUT_MS="6000",
        LOG_LEVEL="WARNING",
    )
    sink = stack.start([sys.executable, "-m", "crypto_live", "dynamo-sink"], "dynamo-sink-throughput.log", env)
    try:
        started = time.monotonic()
        first_at: float | None = None
        first_done = done = 0
        first_cpu = last_cpu = 0.0
        moved_at = last_at = started
        while time.monotonic() - started < DRAIN_LIMIT_S:
            if not sink.running():
                raise RuntimeError(f"dynamo-sink exited with {sink.popen.returncode}; see {sink.log}")
            now, before = time.monotonic(), done
            done = committed_total(stack, group, topic, PARTITIONS)
            if done != before:
                moved_at = last_at = now
                last_cpu = sink.cpu_seconds()
                if first_at is None:
                    first_at, first_done, first_cpu = now, done, last_cpu
            if done >= events:
                break
            if first_at is not None and now - moved_at > STALLED_AFTER_S:
                raise RuntimeError(f"dynamo-sink stalled at {done:,} of {events:,} events; see {sink.log}")
            time.sleep(POLL_S)
        else:
            raise RuntimeError(f"dynamo-sink drained {done:,} of {events:,} events in {DRAIN_LIMIT_S} s")
        requests = proxy.total()
        setup = proxy.before_first_write or 0
        by_target = dict(proxy.counts)
    finally:
        code = sink.stop()
        proxy.close()
    assert first_at is not None
    stored = item_count(client, table)
    rate = (done - first_done) / (last_at - first_at) if last_at > first_at else 0.0
    return {
        "dynamo_sink_events_per_s": rate,
        "dynamo_requests_per_1000_events": (requests - setup) / events * 1000,
        "dynamo_sink_setup_requests": float(setup),
        "dynamo_sink_batch_writes_per_1000_events": by_target.get("BatchWriteItem", 0) / events * 1000,
        "dynamo_sink_startup_s": first_at - started,
        # Over the same window as the rate (first commit to last): start-up and group join left
        # out, as the loops below leave out their imports.
        "dynamo_sink_cpu_us_per_event": (last_cpu - first_cpu) / max(1, done - first_done) * 1e6,
        "dynamo_sink_process_cpu_us_per_event": sink.cpu_seconds() / events * 1e6,
        "dynamo_sink_items_stored": float(stored),
        "dynamo_sink_exit_code": float(code),
    }


def timed_writes(put: Any, raw_events: list[bytes]) -> tuple[float, float]:
    """Build the sink's BatchWriteItem requests for ``raw_events`` and ``put`` each, WRITERS at
    once: seconds from the first request, and this process's CPU seconds from the raw events
    on (parsing and building each item is the writer's work too; the wall clock is the
    emulator's pace, as the rate always was)."""
    from processors import dynamo_items
    from processors.dynamo_sink import WRITERS

    cpu = time.process_time()
    requests = list(dynamo_items.put_batches(dynamo_items.to_item(orjson.loads(raw), TTL_DAYS) for raw in raw_events))
    with ThreadPoolExecutor(WRITERS) as pool:
        started = time.monotonic()
        list(pool.map(put, requests))
        return time.monotonic() - started, time.process_time() - cpu


def write_baseline(client: Any, table: str, raw_events: list[bytes]) -> tuple[float, float]:
    """Write ``raw_events`` as the sink would, in concurrent boto3 BatchWriteItem calls: the
    loop a user writes by hand. Seconds taken, and this process's CPU seconds for it (from
    parsing each event to the last response)."""

    def put(chunk: list[dict[str, Any]]) -> None:
        pending = chunk
        while pending:  # moto never leaves items unprocessed; a real table might
            response = client.batch_write_item(RequestItems={table: pending})
            pending = response.get("UnprocessedItems", {}).get(table, [])

    return timed_writes(put, raw_events)


def write_wire_floor(stack: Stack, table: str, raw_events: list[bytes]) -> tuple[float, float]:
    """The floor with standard parts: the same BatchWriteItem requests, their JSON bodies
    written with orjson, signed with botocore's SigV4 and sent over one urllib3 pool by as
    many threads as the sink has writers. Seconds taken, and this process's CPU seconds."""
    import botocore.auth
    import botocore.awsrequest
    import botocore.credentials
    import urllib3

    from processors.dynamo_sink import WRITERS

    env = stack.aws_env
    credentials = botocore.credentials.Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"])
    signer = botocore.auth.SigV4Auth(credentials, "dynamodb", env["AWS_DEFAULT_REGION"])
    url = env["AWS_ENDPOINT_URL"].rstrip("/") + "/"
    http = urllib3.PoolManager(maxsize=WRITERS)
    headers = {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.BatchWriteItem"}

    def put(chunk: list[dict[str, Any]]) -> None:
        pending = chunk
        while pending:
            body = orjson.dumps({"RequestItems": {table: pending}})
            request = botocore.awsrequest.AWSRequest(method="POST", url=url, data=body, headers=headers)
            signer.add_auth(request)
            response = http.request("POST", url, body=body, headers=dict(request.headers.items()))
            if response.status != 200:
                raise RuntimeError(f"BatchWriteItem answered {response.status}: {response.data[:200]!r}")
            pending = orjson.loads(response.data).get("UnprocessedItems", {}).get(table, [])

    return timed_writes(put, raw_events)


def measure(stack: Stack, *, quick: bool = False) -> dict[str, float]:
    """The DynamoDB sink's events/s and requests per 1,000 events, and the baseline's events/s.

    The baseline writes half of the events just before the sink runs and the other half
    just after, so a change in the shared machine's load during the run weighs on both
    alike. Also ``dynamo_exactly_once`` (1.0 when both tables hold every event once, else
    0.0) and informational figures (start-up, CPU per event, items stored).
    """
    count = QUICK_EVENTS if quick else FULL_EVENTS
    raw_events = market_events(count, SYMBOLS)
    topic = stack.name("dynamo-topic")
    prefill(stack, topic, raw_events, PARTITIONS)
    client = dynamo_client(stack)
    baseline = stack.name("dynamo-baseline")
    ensure_table(client, baseline, create=True)
    floor = stack.name("dynamo-wire-floor")
    ensure_table(client, floor, create=True)
    half = count // 2
    (before, before_cpu), (floor_before, floor_before_cpu) = (
        write_baseline(client, baseline, raw_events[:half]),
        write_wire_floor(stack, floor, raw_events[:half]),
    )
    results = run_sink(stack, topic, count, client)
    (after, after_cpu), (floor_after, floor_after_cpu) = (
        write_baseline(client, baseline, raw_events[half:]),
        write_wire_floor(stack, floor, raw_events[half:]),
    )
    results["dynamo_baseline_events_per_s"] = count / (before + after)
    results["dynamo_baseline_before_events_per_s"] = half / before
    results["dynamo_baseline_after_events_per_s"] = (count - half) / after
    results["dynamo_baseline_items_stored"] = float(item_count(client, baseline))
    # CPU per event: the headline figure; it does not depend on when anything commits.
    results["dynamo_boto3_loop_cpu_us_per_event"] = (before_cpu + after_cpu) / count * 1e6
    results["dynamo_wire_floor_cpu_us_per_event"] = (floor_before_cpu + floor_after_cpu) / count * 1e6
    results["dynamo_wire_floor_events_per_s"] = count / (floor_before + floor_after)
    results["dynamo_wire_floor_items_stored"] = float(item_count(client, floor))
    exact = (
        results["dynamo_sink_items_stored"]
        == results["dynamo_baseline_items_stored"]
        == results["dynamo_wire_floor_items_stored"]
        == count
    )
    results["dynamo_events"] = float(count)
    results["dynamo_exactly_once"] = 1.0 if exact else 0.0
    return results
