"""`crypto-live dynamo-sink`: upsert one TTL row per event into DYNAMO_TABLE_NAME.

Runs the shared stream (:mod:`processors.stream`) as its own consumer group. Each Quix
checkpoint hands :class:`DynamoTableSink` the batch of one topic-partition; it writes
the rows with BatchWriteItem and only then does Quix commit the offsets.

Failure handling:
- UnprocessedItems are retried in the same call with capped exponential backoff and full
  jitter, a bounded number of times.
- Still unprocessed, throttled after boto3's own retries, 5xx or unreachable: the sink
  raises ``SinkBackpressureError``. Quix pauses the partitions, seeks back to the last
  committed offsets and replays later; rows are idempotent, so a replay rewrites the same
  items.
- Anything else (table deleted, access denied) is a :class:`DynamoWriteError`: the
  process stops with one line naming the table, nothing committed past what was stored.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import botocore.exceptions
from quixstreams import Application
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch

from crypto_live import aws
from crypto_live.cli import CommandError
from crypto_live.kafka import TopicSetupError
from crypto_live.settings import DynamoSinkSettings
from processors import dynamo_items as items
from processors.stream import StreamPlan, build_application

log = logging.getLogger(__name__)

STAGE = "dynamo-sink"

# Error codes that mean "not now" rather than "never": worth a pause and a replay.
TRANSIENT_ERROR_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)
#: Concurrent BatchWriteItem requests per batch; under botocore's 10 pooled connections.
WRITERS = 8

_UNREACHABLE = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
)


class TableSetupError(Exception):
    """The table is missing, mis-keyed or unreadable; ``str()`` is the one-line reason."""


class DynamoWriteError(Exception):
    """A write failed in a way waiting will not fix; ``str()`` names the table and the error."""


class _NotNow(Exception):
    """A write DynamoDB did not take this time (throttled, 5xx, unreachable): pause and replay."""


class DynamoTableSink(BatchingSink):
    """Writes each batch as one row per event (see :mod:`processors.dynamo_items`).

    ``sleep`` and ``jitter`` (uniform in [0, 1)) are injectable so tests need not wait.
    ``rows_written`` counts rows DynamoDB accepted, duplicates within a batch counted once.
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
        backpressure_base: float = 1.0,
        backpressure_cap: float = 30.0,
        writers: int = WRITERS,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ):
        super().__init__(on_client_connect_success=lambda: None)
        self.client = client
        self.table = table
        self.ttl_days = ttl_days
        self.create_table = create_table
        self.rows_written = 0
        self._unprocessed_retries = unprocessed_retries
        self._retry = {"base": retry_base, "cap": retry_cap}
        self._backpressure = {"base": backpressure_base, "cap": backpressure_cap}
        self._sleep = sleep
        self._jitter = jitter
        self._ready = False
        self._backpressure_streak = 0
        self._pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix="dynamo-writer")

    def __repr__(self) -> str:
        return f"<DynamoTableSink table={self.table!r}>"

    # ------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Check the table (creating it first if allowed); raise TableSetupError if unusable.

        Runs once: ``run`` calls it before connecting to Kafka, Quix calls it again on start.
        """
        if self._ready:
            return
        table = self._describe()
        if table is None and self.create_table:
            table = self._create()
        problems = items.table_problems(table)
        if problems:
            raise TableSetupError(self._setup_message(problems))
        if table.get("TableStatus") == "CREATING":
            self._wait_until_active()
        self._warn_if_rows_never_expire()
        self._ready = True
        log.info("writing to DynamoDB table %s (%s)", self.table, items.expected_keys())

    def _where(self) -> str:
        return f"DynamoDB table {self.table!r} (region {self.client.meta.region_name})"

    def _setup_message(self, problems: list[str]) -> str:
        message = f"{self._where()} " + "; ".join(problems)
        if problems == ["does not exist"]:
            return message + ": create it with the infrastructure code, or set DYNAMO_CREATE_TABLE=true for a local run"
        return message + f"; the sink needs {items.expected_keys()}"

    @contextlib.contextmanager
    def _fatal(self, operation: str) -> Iterator[None]:
        """Turn a control-plane failure into the one-line reason the sink cannot start."""
        try:
            yield
        except botocore.exceptions.ClientError as exc:
            raise TableSetupError(f"{self._where()}: {operation} failed: {_error_text(exc)}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise TableSetupError(f"{self._where()}: {operation} failed: {exc}") from None

    def _describe(self) -> dict[str, Any] | None:
        with self._fatal("DescribeTable"):
            try:
                return self.client.describe_table(TableName=self.table)["Table"]
            except self.client.exceptions.ResourceNotFoundException:
                return None

    def _create(self) -> dict[str, Any]:
        with self._fatal("CreateTable"):
            try:
                self.client.create_table(**items.create_table_request(self.table))
            except self.client.exceptions.ResourceInUseException:
                return self._wait_until_active()  # another process created it: check, don't modify
        table = self._wait_until_active()
        with self._fatal("UpdateTimeToLive"):
            self.client.update_time_to_live(
                TableName=self.table,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": items.TTL_ATTRIBUTE},
            )
        log.info("created %s: on-demand billing, TTL on %r", self._where(), items.TTL_ATTRIBUTE)
        return table

    def _wait_until_active(self) -> dict[str, Any]:
        with self._fatal("waiting for the table to become ACTIVE"):
            self.client.get_waiter("table_exists").wait(
                TableName=self.table, WaiterConfig={"Delay": 2, "MaxAttempts": 90}
            )
            return self.client.describe_table(TableName=self.table)["Table"]

    def _warn_if_rows_never_expire(self) -> None:
        try:
            description = self.client.describe_time_to_live(TableName=self.table)["TimeToLiveDescription"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            log.debug("could not read the TTL setting of %s: %s", self.table, exc)
            return
        problem = items.ttl_problem(description)
        if problem:
            log.warning("%s: %s", self._where(), problem)

    # ------------------------------------------------------------------ writing

    def write(self, batch: SinkBatch) -> None:
        """Store every event of ``batch``, or raise SinkBackpressureError / DynamoWriteError.

        The BatchWriteItem requests of one batch run concurrently (``writers`` at a time):
        one request is a round trip of ~10 ms, so sequential requests would cap the sink
        near the market's own rate. Duplicate keys were collapsed across the whole batch
        first, so no two requests touch the same row and their order does not matter.
        """
        rows = [items.to_item(sink_item.value, self.ttl_days) for sink_item in batch]
        requests = list(items.put_batches(rows))
        # One request (the common small batch) needs no thread hop.
        outcomes = list((self._pool.map if len(requests) > 1 else map)(self._put, requests))
        self.rows_written += sum(len(chunk) for chunk, o in zip(requests, outcomes, strict=True) if o is None)
        fatal = next((o for o in outcomes if isinstance(o, DynamoWriteError)), None)
        if fatal is not None:
            raise fatal
        not_now = [o for o in outcomes if isinstance(o, _NotNow)]
        if not_now:
            more = f" (and {len(not_now) - 1} more requests)" if len(not_now) > 1 else ""
            raise self._pause(f"{not_now[0]}{more}")
        self._backpressure_streak = 0
        log.debug("wrote %d events of %s[%s] to %s", batch.size, batch.topic, batch.partition, self.table)

    def _put(self, requests: list[dict[str, Any]]) -> Exception | None:
        """Write one BatchWriteItem request; returns None, or the failure (never raises)."""
        pending = requests
        for attempt in range(self._unprocessed_retries + 1):
            if attempt:
                self._sleep(items.backoff_delay(attempt - 1, jitter=self._jitter(), **self._retry))
            try:
                response = self.client.batch_write_item(RequestItems={self.table: pending})
            except botocore.exceptions.ClientError as exc:
                if not _transient(exc):
                    return DynamoWriteError(f"{self._where()}: BatchWriteItem failed: {_error_text(exc)}")
                return _NotNow(_error_text(exc))
            except _UNREACHABLE as exc:
                return _NotNow(str(exc))
            pending = response.get("UnprocessedItems", {}).get(self.table, [])
            if not pending:
                return None
        return _NotNow(
            f"{len(pending)} of {len(requests)} items still unprocessed after {self._unprocessed_retries} retries"
        )

    def _pause(self, why: str) -> SinkBackpressureError:
        retry_after = items.backoff_ceiling(self._backpressure_streak, **self._backpressure)
        self._backpressure_streak += 1
        log.warning(
            "%s is not taking writes (%s): pausing %.1f s, then replaying from the last committed offset",
            self._where(),
            why,
            retry_after,
        )
        return SinkBackpressureError(retry_after=retry_after)


def _transient(exc: botocore.exceptions.ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return code in TRANSIENT_ERROR_CODES or status >= 500


def _error_text(exc: botocore.exceptions.ClientError) -> str:
    error = exc.response.get("Error", {})
    return f"{error.get('Code', 'error')}: {error.get('Message', str(exc))}"


# --------------------------------------------------------------------------- wiring


def table_sink(settings: DynamoSinkSettings, **options: Any) -> DynamoTableSink:
    return DynamoTableSink(
        aws.client(settings.aws, "dynamodb"),
        settings.table,
        ttl_days=settings.retention_ttl_days,
        create_table=settings.create_table,
        **options,
    )


def application(settings: DynamoSinkSettings, sink: DynamoTableSink, **options: Any) -> Application:
    """The sink's Quix application: events DynamoDB cannot hold go to the DLQ too."""
    plan = StreamPlan(STAGE, settings.consumer_group, settings.max_batch_size, settings.max_batch_timeout)
    return build_application(settings.kafka, plan, sink, reject=items.item_problem, **options)


def run(settings: DynamoSinkSettings) -> int:
    """Check the table, then consume until SIGTERM/SIGINT (which commits and returns 0)."""
    sink = table_sink(settings)
    try:
        sink.setup()  # before Kafka: a wrong table is reported at once, alone
        app = application(settings, sink)
        log.info(
            "consuming %s as group %s into %s (batches of up to %d events or %.1f s)",
            settings.kafka.topic,
            settings.consumer_group,
            settings.table,
            settings.max_batch_size,
            settings.max_batch_timeout,
        )
        app.run()
    except (TableSetupError, DynamoWriteError, TopicSetupError) as exc:
        raise CommandError(str(exc)) from None
    return 0
