"""The Quix Streams application both sinks share: read each message's bytes into the sink.

The dataframe is a bare ``sink``: Quix hands each message's value, as the bytes read, to
the sink's ``add``. The sink (a :class:`CheckingSink`) validates it in whatever way is
cheapest for what it writes, and sends what it cannot store to its :class:`DeadLetters`.

Batching is Quix's checkpoint: a checkpoint closes when ``commit_every`` messages were
processed or ``commit_interval`` seconds passed since it opened — checked on every turn
of Quix's poll loop, so the time limit holds on a quiet stream too. Closing a
checkpoint flushes the sinks (``flush``), then the producer (dead letters), and only
then commits the offsets: an offset is committed only
after what it carried is stored. A sink that raises ``SinkBackpressureError`` makes
Quix pause, seek back to the last committed offsets and process the batch again later.

Both sinks follow one failure rule, decided by :func:`crypto_live.aws.is_transient`: a
write AWS may take later (throttling, 5xx, a timeout, an unreachable endpoint) becomes
backpressure, paused for :func:`backpressure_backoff`'s growing delay however long it
lasts; any other refusal (the bucket or table deleted, access denied, the request
refused) raises :class:`~crypto_live.errors.DestinationError` and stops the process with
nothing committed past what was stored.

A sink that loses its group membership (its session timed out: the process was paused, or
the broker stalled) rejoins instead of crashing (:class:`SinkApplication`): the batch it
had not committed is dropped, not committed, and whoever owns those partitions next
replays them from the committed offsets. One warning line says so.

A run owns a temporary Quix state directory (:func:`state_directory`): the application is
stateless, but Quix insists on one, and it must not outlive the process.
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from confluent_kafka import Consumer, KafkaError, TopicPartition
from quixstreams import Application
from quixstreams.checkpointing.exceptions import CheckpointConsumerCommitError
from quixstreams.internal_producer import InternalProducer
from quixstreams.kafka import ConnectionConfig
from quixstreams.models import Topic, TopicConfig
from quixstreams.processing import ProcessingContext
from quixstreams.sinks import BatchingSink, SinkBatch

from crypto_live import dead_letter
from crypto_live.backoff import Backoff, exponential
from crypto_live.kafka import client_config, ensure_topics, topic_specs
from crypto_live.settings import KafkaSettings
from processors.telemetry import SinkTelemetry, StreamCounters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamPlan:
    """What a sink process runs: which group, how batches close, which sink writes."""

    stage: str
    consumer_group: str
    commit_every: int
    commit_interval: float


def backpressure_backoff() -> Backoff:
    """How long a sink pauses when its destination does not take writes: 1 s, doubling up
    to 30 s. An outage of any length costs at most 30 s after it ends; reset it after a
    successful write."""
    return Backoff(lambda: exponential(1.0, 30.0))


#: Commit refusals that mean this consumer is no longer a member of the group's current
#: generation: the group moved on without it (its session timed out, a rebalance started,
#: it was fenced), or librdkafka already knows its assignment is lost.
LOST_MEMBERSHIP = frozenset(
    {
        KafkaError.UNKNOWN_MEMBER_ID,
        KafkaError.ILLEGAL_GENERATION,
        KafkaError.REBALANCE_IN_PROGRESS,
        KafkaError.FENCED_INSTANCE_ID,
        KafkaError.STALE_MEMBER_EPOCH,
        KafkaError.FENCED_MEMBER_EPOCH,
        KafkaError._ASSIGNMENT_LOST,
    }
)


#: Commit failures that say nothing about the batch or the membership, only that the group
#: coordinator cannot be reached now: the broker is gone, restarting or moving the group.
COORDINATOR_UNREACHABLE = frozenset(
    {
        KafkaError._WAIT_COORD,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
    }
)


def lost_membership(error: KafkaError) -> bool:
    """Whether a refused commit means the group no longer counts this consumer in (pure)."""
    return error.code() in LOST_MEMBERSHIP


def coordinator_unreachable(error: KafkaError) -> bool:
    """Whether a failed commit only means the group coordinator cannot be reached now (pure)."""
    return error.code() in COORDINATOR_UNREACHABLE


@dataclasses.dataclass
class _RejoiningContext(ProcessingContext):
    """Quix's processing context, except that a checkpoint whose commit fails for lost
    membership (``on_refused``) or an unreachable coordinator (``on_unreachable``) is
    dropped, the callback told why, instead of raised. Its batch is already stored."""

    on_refused: Callable[[str], None] = lambda cause: None
    on_unreachable: Callable[[str], None] = lambda cause: None

    def commit_checkpoint(self, force: bool = False, revoking: bool = False) -> None:
        try:
            super().commit_checkpoint(force=force, revoking=revoking)
        except CheckpointConsumerCommitError as exc:
            if lost_membership(exc.error):
                self.on_refused(f"commit refused: {exc.description}")
            elif coordinator_unreachable(exc.error):
                self.on_unreachable(exc.description)
            else:
                raise

    def drop_checkpoint(self) -> None:
        """Forget the open checkpoint without committing: its offsets, and the batches the
        sinks accumulated for it (``on_paused`` is how Quix drops them on backpressure)."""
        for sink in self.sink_manager.sinks:
            sink.on_paused()  # type: ignore[no-untyped-call]  # Quix leaves these unannotated
        self.init_checkpoint()  # type: ignore[no-untyped-call]


#: Seconds between two warnings that commits fail for an unreachable coordinator (an outage
#: would otherwise log one per batch).
UNREACHABLE_WARNING_EVERY = 60.0


class SinkApplication(Application):
    """A Quix Application that survives losing its consumer-group membership.

    Quix 3.28 raises when the group refuses a commit because the member was evicted
    (``CheckpointConsumerCommitError: ... Unknown member``), and when librdkafka reports
    the assignment lost it keeps the open checkpoint, so the replay that follows the
    rejoin fails the checkpoint's increasing-offset check (``InvalidStoredOffset``).
    Here both drop the open checkpoint without committing it and log one warning; the
    consumer rejoins on its next poll (librdkafka does that) and the partitions it gets
    are replayed from their committed offsets. The sinks' writes are idempotent for a
    replay; whatever the dropped checkpoint flushed before its commit was refused is
    rewritten the same way.

    A commit that fails because the group coordinator cannot be reached (the broker is
    gone or restarting) is dropped the same way, with one warning per outage: the batch is
    stored, the consumer keeps its place, and the next commit that goes through covers it
    (a restart before then replays it, which the writes also allow).

    Only at-least-once processing is supported (no transaction to abort).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        quix = self._processing_context
        fields = {field.name: getattr(quix, field.name) for field in dataclasses.fields(quix) if field.init}
        # Replaced before any dataframe exists: every part of the app shares this one.
        self._rejoining_context = _RejoiningContext(
            **fields, on_refused=self._lost_membership, on_unreachable=self._coordinator_unreachable
        )
        self._processing_context = self._rejoining_context
        self._rejoining = False  # the warning was logged for this loss; cleared by the next assignment
        self._unreachable_warned = -UNREACHABLE_WARNING_EVERY  # monotonic time of the last warning

    def processing_context_producer(self) -> InternalProducer:
        """The producer whose messages every checkpoint flushes before committing its offsets."""
        return self._rejoining_context.producer

    def _coordinator_unreachable(self, cause: str) -> None:
        now = time.monotonic()
        if now - self._unreachable_warned >= UNREACHABLE_WARNING_EVERY:
            self._unreachable_warned = now
            log.warning(
                "cannot commit: the group coordinator is unreachable (%s); the batch is stored, "
                "and its offsets will be committed with the next batch once the broker answers",
                cause,
            )
        self._rejoining_context.drop_checkpoint()

    def _lost_membership(self, cause: str) -> None:
        if not self._rejoining:
            log.warning(
                "lost group membership (%s): rejoining; the uncommitted batch will be replayed "
                "from the committed offsets",
                cause,
            )
        self._rejoining = True
        self._rejoining_context.drop_checkpoint()

    def _on_lost(self, consumer: Consumer, topic_partitions: list[TopicPartition]) -> None:
        # Lost partitions may already be someone else's: what the open checkpoint holds
        # for them must be neither written nor committed, and it must not meet the replay.
        # Said even when the checkpoint is empty: the operator sees every eviction.
        self._lost_membership("session timed out")
        super()._on_lost(consumer, topic_partitions)

    def _on_assign(self, consumer: Consumer, topic_partitions: list[TopicPartition]) -> None:
        self._rejoining = False
        super()._on_assign(consumer, topic_partitions)


#: The consumer's prefetch queue, in kB: about 5,000 events of 200 B, a quarter of a second
#: of work at 20,000 events/s (librdkafka refills it as it drains; it may overshoot it by one
#: fetch). The prefetch is most of a sink's memory: librdkafka's default (64 MB) took a sink
#: draining a backlog to 190 MB; at 16 MB it still peaked at 190 MB, at 1 MB at 125-140 MB.
PREFETCH_KBYTES = 1024


@contextmanager
def state_directory(stage: str) -> Iterator[Path]:
    """A Quix state directory for one run of ``stage``, removed when the run ends however it ends."""
    with tempfile.TemporaryDirectory(prefix=f"crypto-live-{stage}-") as path:
        yield Path(path)


class DeadLetters:
    """Where a sink sends the messages it cannot store: the DLQ topic, each as the record
    :func:`crypto_live.dead_letter.dead_letter` builds, with one warning line each.

    ``produce(value, key, timestamp)`` is the checkpoint's own producer (see
    :func:`build_application`): what it takes is flushed before the checkpoint's offsets are
    committed, so a message is committed only once stored or dead-lettered. The default
    keeps the records in ``records`` (a sink used without an application, as in unit tests).
    """

    def __init__(
        self,
        stage: str,
        produce: Callable[[bytes, Any, int], None] | None = None,
        *,
        counters: StreamCounters | None = None,
    ):
        self.stage = stage
        self.records: list[dict[str, Any]] = []
        self._produce = produce
        self._counters = counters

    def reject(
        self, reason: str, raw: bytes | None, *, topic: str, partition: int, offset: int, key: Any, timestamp: int
    ) -> None:
        """Dead-letter the message at ``topic[partition]@offset`` for ``reason``, keyed and timed as it was."""
        record = dead_letter.dead_letter(
            reason, raw or b"", stage=self.stage, topic=topic, partition=partition, offset=offset
        )
        log.warning("dead-lettered %s[%s]@%s: %s", topic, partition, offset, reason)
        if self._counters is not None:
            self._counters.dead_letters += 1
        if self._produce is None:
            self.records.append(record)
        else:
            self._produce(dead_letter.encode(record), key, timestamp)


class CheckingSink(BatchingSink):
    """A sink handed each message's value as the bytes read: it checks them itself, and
    sends what it cannot store to :attr:`dead_letters` (bound by :func:`build_application`).

    Quix calls ``add`` per message and ``flush`` when the checkpoint closes, nothing
    else; a sink implements :meth:`take` (each message) and :meth:`flush`. Checking inside
    the sink spares every message Quix's per-step dataframe work, and lets a sink check in
    whatever way is cheapest for what it writes.
    ``counters.consumed`` counts the messages added (the telemetry's EventsPerSecond).

    The sink owns ``writers`` threads (:attr:`writer_pool`), to write while Quix reads on:
    :meth:`close` it (or use it as a context manager) when the run ends.
    """

    dead_letters: DeadLetters
    counters: StreamCounters

    def __init__(self, stage: str, *, writers: int) -> None:
        super().__init__(on_client_connect_success=lambda: None)
        self.counters = StreamCounters()
        self.dead_letters = DeadLetters(stage, counters=self.counters)
        self.writer_pool = ThreadPoolExecutor(max_workers=writers, thread_name_prefix=f"{stage}-writer")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop the writer threads (waiting for any write in progress)."""
        self.writer_pool.shutdown(wait=True, cancel_futures=True)

    def add(
        self,
        value: Any,
        key: Any,
        timestamp: int,
        headers: Any,
        topic: str,
        partition: int,
        offset: int,
    ) -> None:
        """Quix hands over one message: count it, let the sink :meth:`take` it, and dead-letter
        it, keyed and timed as it was, if the sink says why it cannot store it."""
        self.counters.consumed += 1
        reason = self.take(value, topic, partition, offset)
        if reason is not None:
            self.dead_letters.reject(
                reason, value, topic=topic, partition=partition, offset=offset, key=key, timestamp=timestamp
            )

    def take(self, value: bytes | None, topic: str, partition: int, offset: int) -> str | None:
        """Take one message of the open checkpoint (its value as read); why it is not
        something the sink can store, or None once it has it."""
        raise NotImplementedError

    def flush(self) -> None:
        """The checkpoint closes: store what it took, or raise (Quix then commits nothing)."""
        raise NotImplementedError

    def write(self, batch: SinkBatch) -> None:
        """Store ``batch`` (raw message values) as one checkpoint would: :meth:`add` each, then :meth:`flush`."""
        for item in batch:
            self.add(item.value, item.key, item.timestamp, item.headers, batch.topic, batch.partition, item.offset)
        self.flush()


def build_application(
    kafka: KafkaSettings,
    plan: StreamPlan,
    sink: CheckingSink,
    *,
    state_dir: Path,
    telemetry: SinkTelemetry | None = None,
) -> SinkApplication:
    """A :class:`SinkApplication` wired for ``plan``; topics are created first if missing.

    ``state_dir`` is Quix's state directory (see :func:`state_directory`). The sink gets
    every message's value as bytes, and its :class:`DeadLetters` produce to the DLQ through
    the checkpoint's producer. ``telemetry`` gets librdkafka's statistics on the poll loop.
    """
    ensure_topics(kafka)
    heartbeat_ms = max(100, min(3000, kafka.session_timeout_ms // 3))
    app = SinkApplication(
        # The same connection settings as every other client (security, SASL, oauth_cb).
        broker_address=ConnectionConfig.from_librdkafka_dict(client_config(kafka)),
        consumer_group=plan.consumer_group,
        # A group deployed after the producer must not miss what is already in the topic.
        auto_offset_reset="earliest",
        commit_every=plan.commit_every,
        commit_interval=plan.commit_interval,
        # Expiry is checked once per poll-loop turn and an idle turn lasts one poll
        # timeout (Quix's default: 1 s); a tenth of the interval keeps a time flush
        # on a quiet stream late by at most that.
        consumer_poll_timeout=min(1.0, max(0.05, plan.commit_interval / 10)),
        processing_guarantee="at-least-once",
        auto_create_topics=False,
        use_changelog_topics=False,
        # Stateless app: keep Quix's state directory out of the working directory.
        state_dir=state_dir,
        # Quix's own handler would bypass crypto_live.logs (LOG_FORMAT, redaction): log through ours.
        loglevel=None,
        consumer_extra_config={
            # A sink behind a backlog would otherwise prefetch up to librdkafka's 64 MB
            # default, and its memory would grow with the backlog; this bounds it.
            "queued.max.messages.kbytes": PREFETCH_KBYTES,
            "session.timeout.ms": kafka.session_timeout_ms,
            "heartbeat.interval.ms": heartbeat_ms,
            **(telemetry.consumer_config() if telemetry is not None else {}),
        },
    )
    spec_by_name = {spec.name: spec for spec in topic_specs(kafka)}

    def topic(name: str, **serde: Any) -> Topic:
        spec = spec_by_name[name]
        config = TopicConfig(
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            extra_config=dict(spec.config),
        )
        return app.topic(name, config=config, **serde)

    source = topic(kafka.topic, key_deserializer="bytes", value_deserializer="bytes")
    dlq = topic(kafka.dlq_topic, key_serializer="bytes", value_serializer="bytes")

    dlq_producer = app.processing_context_producer()

    def produce_dead_letter(value: bytes, key: Any, timestamp: int) -> None:
        dlq_producer.produce(topic=dlq.name, value=value, key=key, timestamp=timestamp)

    if telemetry is not None:
        sink.counters = telemetry.counters
    sink.dead_letters = DeadLetters(plan.stage, produce_dead_letter, counters=sink.counters)
    app.dataframe(source).sink(sink)
    return app
