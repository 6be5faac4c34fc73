"""`crypto-live dynamo-sink`: upsert one TTL row per event into DYNAMO_TABLE_NAME.

Runs the shared stream (:mod:`processors.stream`) as its own consumer group. Quix hands
:class:`DynamoTableSink` each event as it is read (``add``); the sink cuts full 25-row
BatchWriteItem requests across all partitions of the open checkpoint and writes them at
once on its writer threads, so writing overlaps reading. When the checkpoint closes
(``flush``), the last partial request is written, every request of the checkpoint is
awaited, and only then does Quix commit the offsets. The table is
defined, checked and (for local runs) created by :mod:`crypto_live.dynamo_table`; the rows
by :mod:`processors.dynamo_items`.

Failures, the rule both sinks follow (decided by :func:`crypto_live.aws.is_transient`):

- UnprocessedItems are retried within the request with capped exponential backoff and
  full jitter, a bounded number of times.
- Transient -- items still unprocessed, throttling left after boto3's own retries, 5xx,
  a timeout, an unreachable endpoint: ``SinkBackpressureError`` with a growing delay
  (:func:`processors.stream.backpressure_backoff`, reset by a successful write). Quix
  pauses the partitions, seeks back to the last committed offsets and replays later;
  rows are idempotent, so a replay rewrites the same items. The process keeps running
  through outages of any length.
- Anything else -- the table deleted, access revoked, the request refused: a
  :class:`~crypto_live.errors.DestinationError` naming the table and the DynamoDB error.
  The process stops (exit status 1) and nothing is committed past what was stored; a
  restart after the fix resumes from the last committed offset.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions
from quixstreams import Application
from quixstreams.sinks import SinkBackpressureError

from crypto_live import aws, dynamo_table
from crypto_live.backoff import Backoff, exponential, full_jitter
from crypto_live.errors import DestinationError
from crypto_live.event import Invalid, decode
from crypto_live.settings import DynamoSinkSettings
from processors import dynamo_items as items
from processors.stream import CheckingSink, StreamPlan, backpressure_backoff, build_application, state_directory
from processors.telemetry import SinkTelemetry

log = logging.getLogger(__name__)

STAGE = "dynamo-sink"

#: Concurrent BatchWriteItem requests per batch; under botocore's 10 pooled connections.
WRITERS = 8
# Requests are bounded by aws.SINK_REQUEST_LIMITS (under 40 s each, though a BatchWriteItem
# takes milliseconds). The sink beats its heartbeat after each request, so even a hanging
# endpoint leaves it well inside HEALTHCHECK_MAX_AGE.


@dataclass(frozen=True)
class _NotNow:
    """Why DynamoDB did not take a request this time (throttled, 5xx, unreachable): pause and replay."""

    reason: str


#: One BatchWriteItem request (at most 25 PutRequests), and how writing it ended:
#: None (every row stored), or why not.
_Request = list[dict[str, Any]]
_Outcome = _NotNow | DestinationError | None


class DynamoTableSink(CheckingSink):
    """Writes each checkpoint as one row per event (see :mod:`processors.dynamo_items`).

    A BatchingSink to Quix, but not per topic-partition: ``add`` and ``flush`` are its own.
    Each message is checked as it is added: an event that is not valid, or that DynamoDB
    cannot hold (a number out of its range), goes to the DLQ with the reason.

    ``sleep`` and ``jitter`` (uniform in [0, 1)) are injectable so tests need not wait.
    ``rows_written`` counts rows DynamoDB accepted, a row written twice in one checkpoint counted twice.
    The sink owns a pool of writer threads: :meth:`close` it (or use it as a context
    manager) when the run ends.
    """

    def __init__(
        self,
        client: Any,
        table: str,
        *,
        ttl_days: int,
        create_table: bool = False,
        unprocessed_retries: int = 5,
        retry_base: float = 0.05,
        retry_cap: float = 2.0,
        backpressure: Backoff | None = None,
        writers: int = WRITERS,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
        on_progress: Callable[[], None] = lambda: None,
    ):
        super().__init__(STAGE, writers=writers)
        self.client = client
        self.table = table
        self.ttl_days = ttl_days
        self.create_table = create_table
        self.rows_written = 0
        self._unprocessed_retries = unprocessed_retries
        self._retry_base = retry_base
        self._retry_cap = retry_cap
        self._backpressure = backpressure or backpressure_backoff()
        self._sleep = sleep
        self._jitter = jitter
        self._on_progress = on_progress  # after each request: a long flush keeps the heartbeat fresh
        self._ready = False
        self._cutter = items.RequestCutter()
        self._in_flight: list[tuple[_Request, Future[_Outcome]]] = []  # this checkpoint's requests
        self._events_read: Counter[tuple[str, int]] = Counter()  # this checkpoint's, per topic-partition

    def __repr__(self) -> str:
        return f"<DynamoTableSink table={self.table!r}>"

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Check the table (creating it first if allowed); raise TableSetupError if unusable.

        Runs once: ``run`` calls it before connecting to Kafka, Quix calls it again on start.
        """
        if self._ready:
            return
        dynamo_table.ensure_table(self.client, self.table, create=self.create_table)
        self._ready = True
        log.info("writing to DynamoDB table %s (%s)", self.table, dynamo_table.expected_keys())

    def _label(self) -> str:
        return dynamo_table.table_label(self.client, self.table)

    # ------------------------------------------------------------------ writing

    def take(self, value: bytes | None, topic: str, partition: int, offset: int) -> str | None:
        """Take one event of the open checkpoint; a request it fills is written at once. Why
        not, for a message that is no valid event or holds a number DynamoDB cannot.

        Requests are cut across the checkpoint's partitions (see
        :class:`~processors.dynamo_items.RequestCutter`), so every request but the
        checkpoint's last is full, and they are written by the writer threads while Quix
        reads on: the writes overlap the reading instead of following it.
        """
        result = decode(value)
        if isinstance(result, Invalid):
            return result.reason
        try:
            item = items.to_item(result.fields, self.ttl_days)
        except ValueError as exc:  # a number DynamoDB cannot hold
            return str(exc)
        self._events_read[topic, partition] += 1
        request = self._cutter.add(item)
        if request is not None:
            self._in_flight.append(self._start(request))
        return None

    def flush(self) -> None:
        """Quix's checkpoint closes: write what is left, wait for every request of the
        checkpoint, then return (Quix commits), or raise SinkBackpressureError /
        DestinationError (Quix commits nothing)."""
        # Take this checkpoint's state first: a flush Quix abandoned on a revoke (it runs on a
        # thread of its own, and may outlive its time budget) must never touch the next one's.
        in_flight, events_read, rest, late = self._close_checkpoint()
        outcomes = self._wait(in_flight + [self._start(request) for request in rest])
        if late:  # keys already written in this checkpoint: only now may they be rewritten
            outcomes += self._wait([self._start(request) for request in late])
        refused = next((o for _, o in outcomes if isinstance(o, DestinationError)), None)
        if refused is not None:
            raise refused
        not_now = [o for _, o in outcomes if isinstance(o, _NotNow)]
        if not_now:
            more = f" (and {len(not_now) - 1} more requests)" if len(not_now) > 1 else ""
            raise self._pause(f"{not_now[0].reason}{more}")
        self._backpressure.reset()
        for (topic, partition), events in sorted(events_read.items()):
            log.debug("wrote %d events of %s[%d] to %s", events, topic, partition, self.table)

    def _start(self, request: _Request) -> tuple[_Request, Future[_Outcome]]:
        """Write ``request`` on a writer thread."""
        return request, self.writer_pool.submit(self._put, request)

    def _wait(self, writes: list[tuple[_Request, Future[_Outcome]]]) -> list[tuple[_Request, _Outcome]]:
        """Each request's outcome, once all are done; rows DynamoDB took are counted."""
        outcomes = []
        for request, future in writes:
            outcome = future.result()
            self._on_progress()  # on the loop's thread: a long flush keeps the heartbeat fresh
            if outcome is None:
                self.rows_written += len(request)
            outcomes.append((request, outcome))
        return outcomes

    def on_paused(self) -> None:
        """Quix drops the checkpoint (backpressure elsewhere, lost membership): forget its
        rows. Requests already in flight finish on their own; a replay rewrites the same rows."""
        in_flight, *_ = self._close_checkpoint()
        for _, future in in_flight:
            future.cancel()

    def _close_checkpoint(
        self,
    ) -> tuple[list[tuple[_Request, Future[_Outcome]]], Counter[tuple[str, int]], list[_Request], list[_Request]]:
        """The open checkpoint's requests in flight, events read per topic-partition, and
        requests still to write (the partial one; then the late rows'); the next opens empty."""
        rest, late = self._cutter.finish()
        closed = self._in_flight, self._events_read, rest, late
        self._in_flight, self._events_read = [], Counter()
        return closed

    def _put(self, requests: _Request) -> _Outcome:
        """Write one BatchWriteItem request; returns None, or the failure (never raises)."""
        retry_delays = full_jitter(exponential(self._retry_base, self._retry_cap), draw=self._jitter)
        pending = requests
        for attempt in range(self._unprocessed_retries + 1):
            if attempt:
                self._sleep(next(retry_delays))
            try:
                response = self.client.batch_write_item(RequestItems={self.table: pending})
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                if aws.is_transient(exc):
                    return _NotNow(aws.error_text(exc))
                return DestinationError(f"{self._label()}: BatchWriteItem failed: {aws.error_text(exc)}")
            pending = response.get("UnprocessedItems", {}).get(self.table, [])
            if not pending:
                return None
        return _NotNow(
            f"{len(pending)} of {len(requests)} items still unprocessed after {self._unprocessed_retries} retries"
        )

    def _pause(self, why: str) -> SinkBackpressureError:
        retry_after = self._backpressure.next_delay()
        log.warning(
            "%s is not taking writes (%s): pausing %.1f s, then replaying from the last committed offset",
            self._label(),
            why,
            retry_after,
        )
        return SinkBackpressureError(retry_after=retry_after)


# --------------------------------------------------------------------------- wiring


def table_sink(settings: DynamoSinkSettings, **options: Any) -> DynamoTableSink:
    return DynamoTableSink(
        # No client-side parameter validation: the sink builds every request itself
        # (processors.dynamo_items), and botocore's walk over 25 typed items a request was
        # a tenth of the sink's CPU. DynamoDB still validates each request on its side.
        aws.client(settings.aws, "dynamodb", **aws.SINK_REQUEST_LIMITS, parameter_validation=False),
        settings.table,
        ttl_days=settings.retention_ttl_days,
        create_table=settings.create_table,
        **options,
    )


def application(
    settings: DynamoSinkSettings, sink: DynamoTableSink, state_dir: Path, telemetry: SinkTelemetry | None = None
) -> Application:
    """The sink's Quix application: events DynamoDB cannot hold go to the DLQ too."""
    plan = StreamPlan(STAGE, settings.consumer_group, settings.max_batch_size, settings.max_batch_timeout)
    return build_application(settings.kafka, plan, sink, state_dir=state_dir, telemetry=telemetry)


def run(settings: DynamoSinkSettings) -> int:
    """Check the table, then consume until SIGTERM/SIGINT (which commits and returns 0).

    Errors (a table that is unusable at start or refuses writes later) propagate as
    :class:`~crypto_live.errors.CryptoLiveError`; the writer threads and the state
    directory are cleaned up either way.
    """
    telemetry = SinkTelemetry(
        STAGE, settings.kafka.topic, settings.monitoring, written=lambda: {"RowsWritten": sink.rows_written}
    )
    with table_sink(settings, on_progress=telemetry.progress) as sink:
        sink.setup()  # before Kafka: a wrong table is reported at once, alone
        with state_directory(STAGE) as state_dir:
            app = application(settings, sink, state_dir, telemetry)
            log.info(
                "consuming %s as group %s into %s (batches of up to %d events or %.1f s)",
                settings.kafka.topic,
                settings.consumer_group,
                settings.table,
                settings.max_batch_size,
                settings.max_batch_timeout,
            )
            with telemetry:  # the heartbeat file exists while the loop runs
                app.run()
    return 0
