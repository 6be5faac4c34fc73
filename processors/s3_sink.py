"""`crypto-live s3-sink`: cut KAFKA_TOPIC into JSONL objects in S3_BUCKET.

Batching is Quix's checkpoint (see :mod:`processors.stream`) with ``commit_interval =
MAX_BATCH_TIMEOUT`` and ``commit_every = CHECKPOINT_OBJECTS x MAX_BATCH_SIZE``: a checkpoint
closes when MAX_BATCH_TIMEOUT wall-clock seconds passed since it opened -- checked on every
turn of the poll loop, so a quiet stream is flushed too and no event waits longer -- or
when it holds that many messages (a bound on memory that a backlog reaches, live load
rarely). Closing it hands :class:`S3JsonlSink` one batch per topic-partition; each is cut
per event hour into objects of MAX_BATCH_SIZE rows, the rest as the hour's last, smaller
object (:mod:`processors.s3_objects`), and only then are the offsets committed.

Objects are cut per partition, whatever the checkpoint holds across partitions, so at
steady load they hold MAX_BATCH_SIZE rows instead of MAX_BATCH_SIZE divided by the number
of busy partitions (a checkpoint closed by MAX_BATCH_SIZE messages across all of a
consumer's partitions did that): one smaller object per partition-hour and checkpoint
remains. Cutting a batch into several objects is safe because objects are create-only and
a writer resumes after whatever is stored (:mod:`processors.s3_objects`: exactly once
across crashes, replays and zombie writers). The alternatives fail the contract:

- Quix time windows close only when a newer message arrives: on a quiet stream the last
  events would wait for the next one (no wall-clock guarantee).
- Quix count windows count per message key (per symbol), not per partition.

The S3 calls: PutObject with If-None-Match (s3:PutObject); ListObjectsV2 of one
partition's hour when a writer starts on a partition or after a gap (s3:ListBucket); and
(s3:GetObject) a ranged GetObject of the start of a key found taken or of the object the
listing found: its extent (metadata) and first line, for the incarnation check of
:mod:`processors.s3_objects`. When the batch does not
hold the offset that check needs, the sink reads that one message of the topic
(:mod:`processors.topic_log`: no group, no commit).

Failures, the rule both sinks follow (decided by :func:`crypto_live.aws.is_transient`):

- Transient -- throttling (SlowDown), 5xx, a timeout, an unreachable endpoint, left after
  boto3's own retries: ``SinkBackpressureError`` with a growing delay
  (:func:`processors.stream.backpressure_backoff`, reset by a successful write). Quix
  pauses, seeks back to the committed offsets and replays the batch later; the replay
  finds the objects already written (412 on its create-only put) and continues after
  them. The process keeps running through outages of any length.
- Anything else -- the bucket deleted, access revoked, the request refused: a
  :class:`~crypto_live.errors.DestinationError` naming the bucket and the S3 error. The
  process stops (exit status 1) and nothing is committed past what was stored; a
  restart after the fix resumes from the last committed offset.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from datetime import datetime
from pathlib import Path
from typing import Any

import botocore.exceptions
from quixstreams import Application
from quixstreams.sinks import SinkBackpressureError

from crypto_live import aws
from crypto_live.backoff import Backoff
from crypto_live.errors import BucketSetupError, CryptoLiveError, DestinationError
from crypto_live.event import Invalid
from crypto_live.kafka import client_config
from crypto_live.settings import S3SinkSettings
from processors.s3_objects import (
    Extent,
    ForeignObjectError,
    Layout,
    Mismatch,
    Progress,
    Row,
    S3Object,
    Standing,
    Stored,
    hour_path,
    locate,
    resume_after,
    store_rows,
    to_row,
)
from processors.stream import CheckingSink, StreamPlan, backpressure_backoff, build_application, state_directory
from processors.telemetry import SinkTelemetry
from processors.topic_log import ABSENT, Read, TopicLog, TopicReadError

log = logging.getLogger(__name__)

STAGE = "s3-sink"

# Each put is bounded by aws.SINK_REQUEST_LIMITS (under 40 s). With WRITE_BUDGET, one
# write() ends within WRITE_BUDGET + aws.SINK_REQUEST_MAX_SECONDS = 54 s: inside the 60 s
# Quix gives a sink flush when a rebalance revokes partitions (0.2 x max.poll.interval.ms),
# so a revoked owner never writes after the new owner has started replaying.
#: A checkpoint closes at the latest when it holds this many objects' worth of messages.
CHECKPOINT_OBJECTS = 10

#: Seconds after which write() stops starting new puts and asks for a replay instead.
WRITE_BUDGET = 15.0


#: Bytes per ranged GET of a gzip object's start (a first line is some 150 bytes inflated).
_GZIP_READ = 16 * 1024


#: How much of an event line a warning shows: enough to tell two apart (symbol, event time).
_IDENTITY_BYTES = 160


def _identity(line: bytes) -> str:
    return repr(line[:_IDENTITY_BYTES].decode(errors="replace"))


def _no_topic_log(topic: str, partition: int, offset: int) -> Read:
    raise TopicReadError(f"no topic reader: cannot check {topic}[{partition}]@{offset}")


class _Skipped(CryptoLiveError):
    """A store not tried because an earlier one of its checkpoint failed (never leaves the sink)."""


class S3JsonlSink(CheckingSink):
    """Puts each partition's batch as JSONL objects; see the module docstring for failures.

    Quix hands it each message as read (``add``): a valid event becomes a row of its
    partition's batch, its bytes unchanged (:func:`~processors.s3_objects.to_row`), anything
    else goes to the DLQ with the reason. Each time a partition has ``max_rows`` rows, they
    go to the writer thread, which stores them while Quix reads on; when the checkpoint
    closes (``flush``), the rest go too, every store of the checkpoint is awaited, and only
    then does Quix commit the offsets. One writer thread stores everything in the order
    handed over, so each partition's chain is walked by one writer at a time, in order.
    Close the sink (or use it as a context manager) when the run ends.

    ``objects_written`` / ``rows_written`` count objects created; ``objects_found`` counts
    puts refused because the key was already written (by a lost attempt or another instance);
    ``backpressures`` counts the pauses asked for.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str,
        *,
        compression: str = "none",
        max_rows: int = 1000,
        backpressure: Backoff | None = None,
        write_budget: float = WRITE_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        on_progress: Callable[[], None] = lambda: None,
        topic_log: Callable[[str, int, int], Read] | None = None,
    ):
        super().__init__(STAGE, writers=1)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.compression = compression
        self.max_rows = max_rows
        self.objects_written = 0
        self.objects_found = 0
        self.rows_written = 0
        self.backpressures = 0
        self._backpressure = backpressure or backpressure_backoff()
        self._write_budget = write_budget
        self._clock = clock
        self._on_progress = on_progress  # after each put: a long flush keeps the heartbeat fresh
        # What the topic holds now at an offset (processors.topic_log): the incarnation check.
        self._topic_log = topic_log or _no_topic_log
        self._incarnations_told: set[tuple[str, int, int]] = set()  # (topic, partition, generation) warned of
        self._checked = False
        self._progress: dict[tuple[str, int], Progress] = {}  # per topic-partition, see s3_objects
        self._rows: dict[tuple[str, int], list[Row]] = {}  # not handed to the writer yet, per topic-partition
        self._stores: list[Future[None]] = []  # the open checkpoint's, in the order handed over
        self._handed_over: set[tuple[str, int]] = set()  # the partitions the open checkpoint handed rows of
        # Per checkpoint being flushed, when its flush began: from then on, its stores run
        # against the write budget.
        self._flush_started: dict[int, float] = {}
        self._checkpoint = 0  # counts checkpoints closed or dropped: which one a store belongs to
        self._failed_checkpoint = -1  # the last one a store failed in
        # Per topic-partition, on the writer thread: rows a store left for the next (fewer
        # than an object's worth of an hour), and the checkpoint they belong to.
        self._left: dict[tuple[str, int], tuple[int, list[Row]]] = {}

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
                f"s3:ListBucket on the bucket and s3:PutObject and s3:GetObject on {keys}"
            )
        if code in {"301", "PermanentRedirect"}:
            actual = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("x-amz-bucket-region", "?")
            return f"S3 bucket {self.bucket!r} is in region {actual}, not REGION={self.client.meta.region_name}"
        return f"S3 bucket {self.bucket!r} {self._where()}: HeadBucket failed: {aws.error_text(exc)}"

    def take(self, value: bytes | None, topic: str, partition: int, offset: int) -> str | None:
        """Take one message of the open checkpoint as a row of its partition's batch; why not,
        for a message that is no valid event."""
        row = to_row(offset, value)
        if isinstance(row, Invalid):
            return row.reason
        rows = self._rows.get((topic, partition))
        if rows is None:
            self._rows[topic, partition] = [row]
        else:
            rows.append(row)
            if len(rows) >= self.max_rows:  # an object's worth: store it while Quix reads on
                self._hand_over(topic, partition)
        return None

    def _hand_over(self, topic: str, partition: int) -> None:
        rows = self._rows.pop((topic, partition))
        self._handed_over.add((topic, partition))
        self._stores.append(self._submit(topic, partition, rows, self._checkpoint, last=False))

    def _submit(self, topic: str, partition: int, rows: list[Row], checkpoint: int, *, last: bool) -> Future[None]:
        return self.writer_pool.submit(self._store, topic, partition, rows, checkpoint, last)

    def flush(self) -> None:
        """Quix's checkpoint closes: store the rest of each partition's rows, wait for every
        store of the checkpoint, then return (Quix commits), or raise SinkBackpressureError /
        DestinationError (Quix commits nothing)."""
        # Take this checkpoint's state first: a flush Quix abandoned on a revoke (it runs on a
        # thread of its own, and may outlive its time budget) must never touch the next one's.
        rows, stores, handed_over, checkpoint = self._close_checkpoint()
        self._flush_started[checkpoint] = self._clock()
        try:
            # Every partition of the checkpoint, even one with no rows since its last hand-over:
            # its last store writes what the earlier ones left.
            for topic, partition in rows.keys() | handed_over:
                stores.append(self._submit(topic, partition, rows.get((topic, partition), []), checkpoint, last=True))
            failures = []
            for store in stores:
                failure = store.exception()
                self._on_progress()  # on the loop's thread: a long flush keeps the heartbeat fresh
                if failure is not None and not isinstance(failure, _Skipped):
                    failures.append(failure)
        finally:
            self._flush_started.pop(checkpoint, None)
        if failures:
            # Something S3 refused for good wins over a pause: waiting would not fix it.
            raise next((f for f in failures if isinstance(f, DestinationError)), failures[0])
        self._backpressure.reset()

    def on_paused(self) -> None:
        """Quix drops the checkpoint (backpressure elsewhere, lost membership): forget its
        rows. Stores already handed over finish on their own; a replay finds what they wrote."""
        _, stores, _, _ = self._close_checkpoint()
        for store in stores:
            store.cancel()

    def _close_checkpoint(
        self,
    ) -> tuple[dict[tuple[str, int], list[Row]], list[Future[None]], set[tuple[str, int]], int]:
        """The open checkpoint's rows not handed over, stores, partitions handed over and
        number; the next checkpoint opens empty."""
        closed = self._rows, self._stores, self._handed_over, self._checkpoint
        self._rows, self._stores, self._handed_over = {}, [], set()
        self._checkpoint += 1
        return closed

    def _store(self, topic: str, partition: int, rows: list[Row], checkpoint: int, last: bool) -> None:
        """Store rows of one partition, on the writer thread: only full objects unless they
        are the ``last`` of the checkpoint, the rest left for the partition's next rows (so
        objects stay full however the rows were handed over). Raise SinkBackpressureError
        so Quix replays the checkpoint later, or DestinationError when S3 refuses it for
        good (see the module docstring). After a failure the checkpoint's other stores do
        nothing: the replay will redo them."""
        if checkpoint == self._failed_checkpoint:
            raise _Skipped
        left_checkpoint, left = self._left.pop((topic, partition), (checkpoint, []))
        if left_checkpoint == checkpoint:  # a dropped checkpoint's rows are replayed, not kept
            rows = left + rows
        try:
            left = self._store_rows(topic, partition, rows, checkpoint, full_only=not last)
        except BaseException:
            self._failed_checkpoint = checkpoint
            raise
        if left:
            self._left[topic, partition] = (checkpoint, left)

    def _store_rows(
        self, topic: str, partition: int, rows: list[Row], checkpoint: int, *, full_only: bool
    ) -> list[Row]:
        layout = Layout(self.prefix, topic, partition, self.max_rows, self.compression)

        def create(obj: S3Object) -> Stored | None:
            started = self._flush_started.get(checkpoint)
            if started is not None and self._clock() - started > self._write_budget:
                raise self._pause(f"writing took over {self._write_budget:.0f} s", obj.key)
            return self._create(obj)

        try:
            self._progress[topic, partition], left = store_rows(
                rows,
                layout,
                self._progress.get((topic, partition), Progress()),
                create,
                lambda hour, rows, mismatch: self._locate(layout, hour, rows, mismatch),
                full_only=full_only,
            )
        except ForeignObjectError as exc:
            raise DestinationError(f"{self._label()} holds an object the sink did not write: {exc}") from None
        return left

    def _create(self, obj: S3Object) -> Stored | None:
        """Put ``obj`` unless its key exists (If-None-Match: *); return what the existing object holds if it does."""
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=obj.key,
                Body=obj.body,
                ContentType=obj.content_type,
                Metadata=obj.extent.metadata(),
                IfNoneMatch="*",
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            if isinstance(exc, botocore.exceptions.ClientError) and aws.error_code(exc) == "PreconditionFailed":
                existing = self._stored(obj.key, len(obj.first_line))
                if existing.first_line == obj.first_line:  # else store_rows looks for this incarnation's chain
                    log.info(
                        "found s3://%s/%s (%d rows through offset %d, written earlier): continuing after it",
                        self.bucket,
                        obj.key,
                        existing.extent.rows,
                        existing.extent.last_offset,
                    )
                    self.objects_found += 1
                return existing
            raise self._failure(exc, "PutObject", obj.key) from None
        self.objects_written += 1
        self.rows_written += obj.rows
        log.info("wrote s3://%s/%s (%d rows)", self.bucket, obj.key, obj.rows)
        return None

    def _stored(self, key: str, line_length: int) -> Stored:
        """The extent and the first line of the object at ``key``, with one ranged GET of the
        start of its body (``line_length`` + 1 bytes of it uncompressed: a first line of
        that length and its newline, or enough to tell it is another).

        A gzip object is read in ranges from its start until that much is decompressed."""
        gzipped = key.endswith(".gz")
        inflate = zlib.decompressobj(wbits=31) if gzipped else None
        wanted = line_length + 1
        start, text, metadata = 0, b"", None
        while len(text) < wanted:
            size = max(_GZIP_READ, wanted) if gzipped else wanted
            try:
                response = self.client.get_object(
                    Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + size - 1}"
                )
                chunk = response["Body"].read()
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
                raise self._failure(exc, "GetObject", key) from None
            if metadata is None:
                metadata = response.get("Metadata", {})
            text += inflate.decompress(chunk, wanted - len(text)) if inflate is not None else chunk
            start += len(chunk)
            if len(chunk) < size or (inflate is not None and inflate.eof):
                break
        return Stored(self._extent_of(key, metadata or {}), text[:wanted].split(b"\n", 1)[0])

    def _extent_of(self, key: str, metadata: dict[str, str]) -> Extent:
        """The extent an object's metadata records; DestinationError for an object without one."""
        try:
            return Extent.from_metadata(metadata)
        except ValueError as exc:
            raise DestinationError(
                f"{self._label()} holds {key}, which the sink did not write and will not overwrite: {exc}"
            ) from None

    def _locate(self, layout: Layout, hour: datetime, rows: Sequence[Row], mismatch: Mismatch | None) -> Standing:
        """Where this incarnation's chain of ``hour`` stands for the hour's ``rows`` of a batch:
        one listing of the partition's hour, then :func:`~processors.s3_objects.locate`,
        which checks a generation's object against the message now at its first offset
        (the batch's own row when it holds that offset, else one read of the topic)."""
        prefix = layout.hour_prefix(hour)
        keys: dict[int, dict[int, str]] = {}  # generation -> first offset -> key
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for entry in page.get("Contents", []):
                    named = layout.listed(hour, entry["Key"])
                    if named is not None:
                        keys.setdefault(named[0], {})[named[1]] = entry["Key"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise self._failure(exc, "ListObjectsV2", prefix) from None
        held = {offset: line for offset, _, line in rows}
        read: dict[str, Stored] = {}
        foreign: list[Mismatch] = [mismatch] if mismatch is not None else []

        def belongs(generation: int, offset: int) -> bool:
            key = keys[generation][offset]
            current = held.get(offset)
            if current is None:
                current = self._line_now(layout, offset, key)
            # No event there now: the object is another incarnation's; its start still names it in the warning.
            stored = read[key] = self._stored(key, len(current) if current is not None else _IDENTITY_BYTES)
            if current != stored.first_line:
                foreign.append(Mismatch(generation, key, stored.first_line, current or b""))
                return False
            return True

        generation, previous = locate(
            {generation: list(offsets) for generation, offsets in keys.items()},
            rows[0][0],
            belongs,
            above=mismatch.generation if mismatch is not None else -1,
        )
        if foreign:
            self._tell_incarnation(layout, hour, generation, foreign[0])
        # The object a writer resumes after is the one locate checked: its extent is read already.
        return resume_after(generation, None if previous is None else read[keys[generation][previous]].extent)

    def _line_now(self, layout: Layout, offset: int, key: str) -> bytes | None:
        """The line the message now at ``offset`` of the layout's partition makes, or None when
        there is no valid event there (no message: the log is another incarnation's)."""
        try:
            value = self._topic_log(layout.topic, layout.partition, offset)
        except TopicReadError as exc:
            raise self._pause(str(exc), key) from None
        if value is ABSENT:
            return None
        row = to_row(offset, value if isinstance(value, bytes) else None)
        return None if isinstance(row, Invalid) else row[2]

    def _tell_incarnation(self, layout: Layout, hour: datetime, generation: int, found: Mismatch) -> None:
        """One warning per partition and generation: the chain found is another incarnation's."""
        if (layout.topic, layout.partition, generation) in self._incarnations_told:
            return
        self._incarnations_told.add((layout.topic, layout.partition, generation))
        log.warning(
            "topic %s partition %d was created again (its offsets started again at 0): s3://%s/%s starts with "
            "%s, but the topic now holds %s at that offset; not skipping anything: this incarnation's objects "
            "of %s and later go to generation %d (keys <topic>-<partition>-g%d-<offset>)",
            layout.topic,
            layout.partition,
            self.bucket,
            found.key,
            _identity(found.stored),
            _identity(found.current) if found.current else "no event",
            hour_path(hour),
            generation,
            generation,
        )

    def _failure(self, exc: BaseException, operation: str, key: str) -> Exception:
        """Backpressure for what S3 may take later, DestinationError for the rest (see the module docstring)."""
        # 409 ConditionalRequestConflict: a concurrent conditional write on the key; try again later.
        conflict = (
            isinstance(exc, botocore.exceptions.ClientError) and aws.error_code(exc) == "ConditionalRequestConflict"
        )
        if conflict or aws.is_transient(exc):
            return self._pause(aws.error_text(exc), key)
        return DestinationError(f"{self._label()} refused {operation} of {key}: {aws.error_text(exc)}")

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
    options.setdefault("topic_log", TopicLog(client_config(settings.kafka), settings.consumer_group).read)
    return S3JsonlSink(
        aws.client(settings.aws, "s3", **aws.SINK_REQUEST_LIMITS),
        settings.bucket,
        settings.prefix,
        compression=settings.compression,
        max_rows=settings.max_batch_size,
        **options,
    )


def checkpoint_size(max_batch_size: int) -> int:
    """Messages per checkpoint at most: CHECKPOINT_OBJECTS full objects' worth (see the module docstring)."""
    return max_batch_size * CHECKPOINT_OBJECTS


def application(
    settings: S3SinkSettings, sink: S3JsonlSink, state_dir: Path, telemetry: SinkTelemetry | None = None
) -> Application:
    """The sink's Quix application: checkpoints of :func:`checkpoint_size` messages or MAX_BATCH_TIMEOUT seconds."""
    plan = StreamPlan(
        STAGE,
        settings.consumer_group,
        checkpoint_size(settings.max_batch_size),
        settings.max_batch_timeout,
    )
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
    with jsonl_sink(settings, on_progress=telemetry.progress) as sink:
        _consume(settings, sink, telemetry)
    log.info("stopped: %d objects, %d rows written", sink.objects_written, sink.rows_written)
    return 0


def _consume(settings: S3SinkSettings, sink: S3JsonlSink, telemetry: SinkTelemetry) -> None:
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
