"""`crypto-live s3-sink`: cut KAFKA_TOPIC into JSONL objects in S3_BUCKET.

Batching is Quix's checkpoint (see :mod:`processors.stream`) with
``commit_every = MAX_BATCH_SIZE`` and ``commit_interval = MAX_BATCH_TIMEOUT``: a
checkpoint closes when MAX_BATCH_SIZE messages were processed or MAX_BATCH_TIMEOUT
wall-clock seconds passed since it opened — checked on every turn of the poll loop, so a
quiet stream is flushed too and the last events never wait for new ones. Closing it
hands :class:`S3JsonlSink` one batch per topic-partition; each becomes one object per
event hour (:mod:`processors.s3_objects`), and only then are the offsets committed.

One consumer's checkpoint counts messages across ALL its assigned partitions, so a
partition's batch holds at most MAX_BATCH_SIZE events and is written no later than when
MAX_BATCH_SIZE of its events wait; a consumer with several busy partitions writes
smaller objects, earlier. The alternatives fail the contract:

- Quix time windows close only when a newer message arrives: on a quiet stream the last
  events would wait for the next one (no wall-clock guarantee).
- Quix count windows count per message key (per symbol), not per partition.
- A larger checkpoint chunked into MAX_BATCH_SIZE-row objects: chunk names would depend
  on where the checkpoint was cut, so a replay after a crash, cut elsewhere, would leave
  the old chunks next to the new ones (duplicates; see :mod:`processors.s3_objects`).

Failures, the rule both sinks follow (decided by :func:`crypto_live.aws.is_transient`):

- Transient -- throttling (SlowDown), 5xx, a timeout, an unreachable endpoint, left after
  boto3's own retries: ``SinkBackpressureError`` with a growing delay
  (:func:`processors.stream.backpressure_backoff`, reset by a successful write). Quix
  pauses, seeks back to the committed offsets and replays the batch later; as object
  names depend only on topic, partition and first offset, the rewrite overwrites
  whatever part was written. The process keeps running through outages of any length.
- Anything else -- the bucket deleted, access revoked, the request refused: a
  :class:`~crypto_live.errors.DestinationError` naming the bucket and the S3 error. The
  process stops (exit status 1) and nothing is committed past what was stored; a
  restart after the fix resumes from the last committed offset.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
from quixstreams import Application
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch

from crypto_live import aws
from crypto_live.backoff import Backoff
from crypto_live.errors import BucketSetupError, DestinationError
from crypto_live.settings import S3SinkSettings
from processors.s3_objects import batch_objects
from processors.stream import StreamPlan, backpressure_backoff, build_application, state_directory
from processors.telemetry import SinkTelemetry

log = logging.getLogger(__name__)

STAGE = "s3-sink"

# Each put is bounded by aws.SINK_REQUEST_LIMITS (under 40 s). With WRITE_BUDGET, one
# write() ends within WRITE_BUDGET + aws.SINK_REQUEST_MAX_SECONDS = 54 s: inside the 60 s
# Quix gives a sink flush when a rebalance revokes partitions (0.2 x max.poll.interval.ms),
# so a revoked owner never writes after the new owner has started replaying.
#: Seconds after which write() stops starting new puts and asks for a replay instead.
WRITE_BUDGET = 15.0


class S3JsonlSink(BatchingSink):
    """Puts each partition's batch as JSONL objects; see the module docstring for failures.

    ``objects_written`` / ``rows_written`` count successful puts (a replay counts again);
    ``backpressures`` counts the pauses asked for.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        *,
        compression: str = "none",
        backpressure: Backoff | None = None,
        write_budget: float = WRITE_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        on_progress: Callable[[], None] = lambda: None,
    ):
        super().__init__(on_client_connect_success=lambda: None)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.compression = compression
        self.objects_written = 0
        self.rows_written = 0
        self.backpressures = 0
        self._backpressure = backpressure or backpressure_backoff()
        self._write_budget = write_budget
        self._clock = clock
        self._on_progress = on_progress  # after each put: a long flush keeps the heartbeat fresh
        self._checked = False

    def __repr__(self) -> str:
        return f"<S3JsonlSink s3://{self.bucket}/{self.prefix}>"

    def _where(self) -> str:
        return f"(region {self.client.meta.region_name}, endpoint {self.client.meta.endpoint_url})"

    def _label(self) -> str:
        return f"S3 bucket {self.bucket!r} {self._where()}"

    def setup(self) -> None:
        """Check that the bucket exists and is ours to use; raise BucketSetupError naming it.

        Runs once: ``run`` calls it before connecting to Kafka, Quix again on start.
        """
        if self._checked:
            return
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            raise BucketSetupError(self._setup_problem(exc)) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise BucketSetupError(f"cannot check S3 bucket {self.bucket!r} {self._where()}: {exc}") from None
        self._checked = True
        log.info("writing to s3://%s/%s %s", self.bucket, self.prefix, self._where())

    def _setup_problem(self, exc: botocore.exceptions.ClientError) -> str:
        code = aws.error_code(exc)
        if code in aws.MISSING_CODES:
            return (
                f"S3 bucket {self.bucket!r} does not exist {self._where()}: create it with the "
                "infrastructure code (or `crypto-live provision --aws` for a local stack)"
            )
        if code in aws.DENIED_CODES:
            keys = f"{self.prefix}/*" if self.prefix else "*"
            return (
                f"access to S3 bucket {self.bucket!r} is denied {self._where()}: the sink needs "
                f"s3:ListBucket on the bucket and s3:PutObject on {keys}"
            )
        if code in {"301", "PermanentRedirect"}:
            actual = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region", "?")
            return f"S3 bucket {self.bucket!r} is in region {actual}, not REGION={self.client.meta.region_name}"
        return f"S3 bucket {self.bucket!r} {self._where()}: HeadBucket failed: {aws.error_text(exc)}"

    def write(self, batch: SinkBatch) -> None:
        """Put the batch's objects; raise SinkBackpressureError so Quix replays the batch
        later, or DestinationError when S3 refuses it for good (see the module docstring)."""
        objects = batch_objects(
            ((item.offset, item.value) for item in batch),
            prefix=self.prefix,
            topic=batch.topic,
            partition=batch.partition,
            compression=self.compression,
        )
        started = self._clock()
        for obj in objects:
            if self._clock() - started > self._write_budget:
                raise self._pause(f"writing took over {self._write_budget:.0f} s", obj.key)
            try:
                self.client.put_object(Bucket=self.bucket, Key=obj.key, Body=obj.body, ContentType=obj.content_type)
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                if aws.is_transient(exc):
                    raise self._pause(aws.error_text(exc), obj.key) from None
                raise DestinationError(
                    f"{self._label()} refused PutObject of {obj.key}: {aws.error_text(exc)}"
                ) from None
            self.objects_written += 1
            self.rows_written += obj.rows
            self._on_progress()
            log.info("wrote s3://%s/%s (%d rows)", self.bucket, obj.key, obj.rows)
        self._backpressure.reset()

    def _pause(self, why: str, key: str) -> SinkBackpressureError:
        retry_after = self._backpressure.next_delay()
        self.backpressures += 1
        log.warning(
            "S3 bucket %s did not take %s (%s): pausing %.1f s, then replaying from the last committed offset",
            self.bucket,
            key,
            why,
            retry_after,
        )
        return SinkBackpressureError(retry_after=retry_after)


# --------------------------------------------------------------------------- wiring


def jsonl_sink(settings: S3SinkSettings, **options: Any) -> S3JsonlSink:
    return S3JsonlSink(
        aws.client(settings.aws, "s3", **aws.SINK_REQUEST_LIMITS),
        settings.bucket,
        settings.prefix,
        compression=settings.compression,
        **options,
    )


def application(
    settings: S3SinkSettings, sink: S3JsonlSink, state_dir: Path, telemetry: SinkTelemetry | None = None
) -> Application:
    """The sink's Quix application: checkpoints of MAX_BATCH_SIZE messages or MAX_BATCH_TIMEOUT seconds."""
    plan = StreamPlan(STAGE, settings.consumer_group, settings.max_batch_size, settings.max_batch_timeout)
    return build_application(settings.kafka, plan, sink, state_dir=state_dir, telemetry=telemetry)


def run(settings: S3SinkSettings) -> int:
    """Check the bucket, then consume until SIGTERM/SIGINT (which writes, commits and returns 0).

    Errors (a bucket that is unusable at start or refuses writes later) propagate as
    :class:`~crypto_live.errors.CryptoLiveError`; the state directory is removed either way.
    """
    telemetry = SinkTelemetry(
        STAGE,
        settings.kafka.topic,
        settings.monitoring,
        written=lambda: {"ObjectsWritten": sink.objects_written, "RowsWritten": sink.rows_written},
    )
    sink = jsonl_sink(settings, on_progress=telemetry.progress)
    sink.setup()  # before Kafka: a wrong bucket is reported at once, alone
    with state_directory(STAGE) as state_dir:
        app = application(settings, sink, state_dir, telemetry)
        log.info(
            "consuming %s as group %s into s3://%s/%s (objects of up to %d events or %.1f s, compression %s)",
            settings.kafka.topic,
            settings.consumer_group,
            settings.bucket,
            settings.prefix,
            settings.max_batch_size,
            settings.max_batch_timeout,
            settings.compression,
        )
        with telemetry:  # the heartbeat file exists while the loop runs
            app.run()
    log.info("stopped: %d objects, %d rows written", sink.objects_written, sink.rows_written)
    return 0
