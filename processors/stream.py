"""The Quix Streams application both sinks share: read, validate, dead-letter, sink.

Batching is Quix's checkpoint: a checkpoint closes when ``commit_every`` messages were
processed or ``commit_interval`` seconds passed since it opened — checked on every turn
of Quix's poll loop, so the time limit holds on a quiet stream too. Closing a
checkpoint flushes the sinks (``BatchingSink.write`` per topic-partition), then the
producer (dead letters), and only then commits the offsets: an offset is committed only
after what it carried is stored. A sink that raises ``SinkBackpressureError`` makes
Quix pause, seek back to the last committed offsets and process the batch again later.

Both sinks follow one failure rule, decided by :func:`crypto_live.aws.is_transient`: a
write AWS may take later (throttling, 5xx, a timeout, an unreachable endpoint) becomes
backpressure, paused for :func:`backpressure_backoff`'s growing delay however long it
lasts; any other refusal (the bucket or table deleted, access denied, the request
refused) raises :class:`~crypto_live.errors.DestinationError` and stops the process with
nothing committed past what was stored.

A run owns a temporary Quix state directory (:func:`state_directory`): the application is
stateless, but Quix insists on one, and it must not outlive the process.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quixstreams import Application
from quixstreams.context import message_context
from quixstreams.kafka import ConnectionConfig
from quixstreams.models import Topic, TopicConfig
from quixstreams.sinks import BatchingSink

from crypto_live import dead_letter
from crypto_live.backoff import Backoff, exponential
from crypto_live.event import Invalid, decode
from crypto_live.kafka import client_config, ensure_topics, topic_specs
from crypto_live.settings import KafkaSettings
from processors.telemetry import SinkTelemetry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checked:
    """One consumed message after validation: the event's fields, or its DLQ record."""

    event: dict[str, Any] | None = None
    dead_letter: dict[str, Any] | None = None


#: A sink's own check of a valid event: why it cannot store it, or None.
Reject = Callable[[dict[str, Any]], str | None]


def check_message(
    raw: bytes | None, *, stage: str, topic: str, partition: int, offset: int, reject: Reject | None = None
) -> Checked:
    """Validate one message value (pure): the event, or the dead-letter record saying why not.

    ``reject`` lets a sink dead-letter valid events its destination cannot hold.
    """
    if raw is None:
        return Checked(
            dead_letter=dead_letter.dead_letter(
                "message has no value", b"", stage=stage, topic=topic, partition=partition, offset=offset
            )
        )
    result = decode(raw)
    if isinstance(result, Invalid):
        reason = result.reason
    else:
        refused = reject(result.fields) if reject is not None else None
        if refused is None:
            return Checked(event=result.fields)
        reason = refused
    return Checked(
        dead_letter=dead_letter.dead_letter(reason, raw, stage=stage, topic=topic, partition=partition, offset=offset)
    )


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


@contextmanager
def state_directory(stage: str) -> Iterator[Path]:
    """A Quix state directory for one run of ``stage``, removed when the run ends however it ends."""
    with tempfile.TemporaryDirectory(prefix=f"crypto-live-{stage}-") as path:
        yield Path(path)


def build_application(
    kafka: KafkaSettings,
    plan: StreamPlan,
    sink: BatchingSink,
    *,
    state_dir: Path,
    on_dead_letter: Callable[[dict[str, Any]], None] | None = None,
    reject: Reject | None = None,
    telemetry: SinkTelemetry | None = None,
) -> Application:
    """An Application wired for ``plan``; topics are created first if missing.

    ``state_dir`` is Quix's state directory (see :func:`state_directory`); ``reject`` (see
    :func:`check_message`) sends valid events the sink cannot store to the DLQ;
    ``telemetry`` gets librdkafka's statistics on the poll loop and counts the messages.
    """
    ensure_topics(kafka)
    heartbeat_ms = max(100, min(3000, kafka.session_timeout_ms // 3))
    app = Application(
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

    def check(raw: bytes | None) -> Checked:
        ctx = message_context()
        if telemetry is not None:
            telemetry.counters.consumed += 1
        return check_message(
            raw, stage=plan.stage, topic=ctx.topic, partition=ctx.partition, offset=ctx.offset, reject=reject
        )

    def to_dead_letter(checked: Checked) -> bytes:
        assert checked.dead_letter is not None
        log.warning(
            "dead-lettered %s[%s]@%s: %s",
            checked.dead_letter["source"]["topic"],
            checked.dead_letter["source"]["partition"],
            checked.dead_letter["source"]["offset"],
            checked.dead_letter["reason"],
        )
        if on_dead_letter is not None:
            on_dead_letter(checked.dead_letter)
        if telemetry is not None:
            telemetry.counters.dead_letters += 1
        return dead_letter.encode(checked.dead_letter)

    checked = app.dataframe(source).apply(check)
    checked.filter(lambda c: c.dead_letter is not None).apply(to_dead_letter).to_topic(dlq)
    checked.filter(lambda c: c.event is not None).apply(lambda c: c.event).sink(sink)
    return app
