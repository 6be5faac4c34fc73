"""The Kafka side of the producer: a librdkafka producer that never drops a message.

Messages on KAFKA_TOPIC: key = the symbol (UTF-8), value = the event's JSON fields
exactly as Binance sent them, Kafka timestamp = the event time ``E``.

Dead-letter messages on KAFKA_DLQ_TOPIC: no key, timestamp = when the frame was read,
value = the JSON record of :mod:`crypto_live.dead_letter` with ``stage`` "producer"
and ``source`` null::

    {"reason": "item 2 of 3: missing field 'c'", "stage": "producer", "source": null,
     "raw": "{\\"e\\":\\"24hrMiniTicker\\",...}", "raw_encoding": "utf-8"}

plus a header ``crypto-live-reason`` carrying the reason, so a consumer can filter
without parsing the value.

How nothing is lost:

* librdkafka idempotence, acks=all, no local message timeout: a message is retried
  until the broker acknowledges it; the shutdown flush is what bounds the wait.
* The local queue is bounded (:data:`QUEUE_MAX_MESSAGES`, :data:`QUEUE_MAX_KBYTES`).
  When it is full, :meth:`Publisher.publish` waits (``await``) instead of dropping:
  reading pauses, which is the only backpressure a websocket has.
* Delivery reports are served by ``poll(0)`` from an asyncio task, never by a blocking
  call on the event loop. A message refused for a reason that may pass (the topic
  missing for a while) is produced again; any other refusal is counted and logged.
* A broker that came back empty (its topics had to be created again) does not know
  the producer id librdkafka holds, and librdkafka would retry forever:
  :meth:`Publisher.rebuild` purges the old producer, builds a new one and produces the
  purged messages again, in order.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from crypto_live.dead_letter import dead_letter, encode
from crypto_live.kafka import client_config
from crypto_live.settings import KafkaSettings

from .frames import Event
from .stats import Stats

log = logging.getLogger(__name__)

QUEUE_MAX_MESSAGES = 500_000
QUEUE_MAX_KBYTES = 256 * 1024  # 256 MiB: ~2 minutes of the whole Binance spot market
PRODUCER_CONFIG: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 20,
    "compression.type": "lz4",
    # Topics are created only by ensure_topics, with explicit configs; a metadata
    # request must never create one with the broker's defaults.
    "allow.auto.create.topics": False,
    "message.timeout.ms": 0,  # never expire a message locally
    # librdkafka's default backs off to 10 s between reconnects: after an outage the
    # backlog would wait that long for a broker that is already back.
    "reconnect.backoff.max.ms": 1000,
    "queue.buffering.max.messages": QUEUE_MAX_MESSAGES,
    "queue.buffering.max.kbytes": QUEUE_MAX_KBYTES,
}
DLQ_REASON_HEADER = "crypto-live-reason"
DLQ_MAX_RAW_BYTES = 512 * 1024  # base64 of binary frames grows by 4/3: stays under 1 MB
RESEND_INTERVAL = 1.0  # seconds between rounds of producing refused messages again
POLL_INTERVAL = 0.05  # seconds between poll(0) calls serving delivery reports
QUEUE_FULL_WAIT = 0.05  # seconds to wait before producing again into a full queue
REBUILD_DRAIN_TIMEOUT = 10.0

# Refusals that can pass: produce the message again instead of counting it lost.
_RESEND = {
    KafkaError._PURGE_QUEUE,
    KafkaError._PURGE_INFLIGHT,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._MSG_TIMED_OUT,
}

Headers = list[tuple[str, bytes]] | None
Pending = tuple[str, bytes | None, bytes, int | None, Headers]


class Publisher:
    """Publishes events and dead letters; call :meth:`serve` as a task while it is used."""

    def __init__(
        self,
        kafka: KafkaSettings,
        stats: Stats,
        *,
        on_brokers_down: Callable[[], None] = lambda: None,
        on_poll: Callable[[], None] = lambda: None,
        config: dict[str, Any] | None = None,
    ):
        self.kafka = kafka
        self.stats = stats
        self._on_brokers_down = on_brokers_down
        self._on_poll = on_poll  # every turn of serve(): the service's heartbeat and metrics
        self._config = {**client_config(kafka), **PRODUCER_CONFIG, **(config or {})}
        self._loop = asyncio.get_running_loop()
        self._open = asyncio.Event()  # cleared while the producer is being rebuilt
        self._open.set()
        self._lock = asyncio.Lock()  # one poller of the librdkafka handle at a time
        self._resend: list[Pending] = []
        self._brokers_down = False
        self._background: asyncio.Task[None] | None = None
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        return Producer(
            {
                **self._config,
                "error_cb": self._on_error,
                "on_delivery": self._on_event_delivery,
                "logger": logging.getLogger("producer.librdkafka"),
            }
        )

    @property
    def in_flight(self) -> int:
        """Messages not yet acknowledged: in librdkafka's queue or waiting to be resent."""
        return len(self._producer) + len(self._resend)

    async def publish(self, events: Sequence[Event]) -> None:
        """Queue events for KAFKA_TOPIC, in order; waits while the local queue is full."""
        done = 0
        while done < len(events):
            done = self._produce_events(events, done)
            if done < len(events):
                # Refused (full queue, unknown topic...) or the producer is being rebuilt:
                # this one takes the slow path, which waits or keeps it for the next resend.
                value, key, timestamp = events[done]
                await self._produce((self.kafka.topic, key, value, timestamp, None))
                done += 1

    def _produce_events(self, events: Sequence[Event], start: int) -> int:
        """Produce ``events[start:]`` without awaiting until one is refused; returns how many
        of ``events`` are queued. The hot path: one frame's events in a plain loop, acknowledged
        through the producer-wide delivery callback (no per-message closure)."""
        if not self._open.is_set():
            return start
        produce, topic = self._producer.produce, self.kafka.topic
        index = start
        try:
            for value, key, timestamp in itertools.islice(events, start, None):
                produce(topic, value, key, timestamp=timestamp)
                index += 1
        except (BufferError, KafkaException):
            return index
        return len(events)

    async def dead_letter(self, reason: str, raw: bytes) -> None:
        """Queue one dead-letter record for KAFKA_DLQ_TOPIC.

        Raw bytes beyond :data:`DLQ_MAX_RAW_BYTES` are cut (the reason says so): a
        frame of many megabytes would otherwise be refused by the broker whole.
        """
        if len(raw) > DLQ_MAX_RAW_BYTES:
            reason = f"{reason} [raw truncated to {DLQ_MAX_RAW_BYTES} of {len(raw)} bytes]"
            raw = raw[:DLQ_MAX_RAW_BYTES]
        value = encode(dead_letter(reason, raw, stage="producer"))
        headers = [(DLQ_REASON_HEADER, reason.encode())]
        await self._produce((self.kafka.dlq_topic, None, value, None, headers))

    async def _produce(self, message: Pending) -> None:
        topic, key, value, timestamp, headers = message
        while True:
            if not self._open.is_set():
                await self._open.wait()
            # Events are acknowledged through the producer-wide callback; a dead letter carries
            # its headers in its own, as librdkafka does not report them back for a refusal.
            own_report = (
                None if topic == self.kafka.topic else functools.partial(self._on_dead_letter_delivery, headers)
            )
            try:
                self._producer.produce(
                    topic, value, key, on_delivery=own_report, timestamp=timestamp or 0, headers=headers
                )
                return
            except BufferError:
                # Full local queue: wait for acknowledgements instead of dropping.
                self.stats.queue_full += 1
                await asyncio.sleep(QUEUE_FULL_WAIT)
            except KafkaException as exc:
                error: KafkaError = exc.args[0]
                if error.code() in _RESEND or error.retriable():
                    # The topic is not known yet (a broker back empty, before the keeper has
                    # created it again): produce it again with the next resend round.
                    self._resend.append(message)
                    return
                # Refused for good, e.g. larger than message.max.bytes.
                self.stats.delivery_failures += 1
                log.error("message for topic %s (key %r, %d bytes) refused: %s", topic, key, len(value), exc)
                return

    def _on_event_delivery(self, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's report for a message on KAFKA_TOPIC (called inside ``poll``)."""
        if err is None:
            if self._brokers_down:
                self._acknowledged_again()
            self.stats.published += 1
            return
        # librdkafka no longer holds a refused message's timestamp (it reports -1): an
        # event's is its event time, read back from the value.
        value = msg.value() or b"{}"
        self._refused(err, msg, orjson.loads(value).get("E"), None)

    def _on_dead_letter_delivery(self, headers: Headers, err: KafkaError | None, msg: Message) -> None:
        """librdkafka's report for a dead-letter record (their timestamp is when produced)."""
        if err is None:
            if self._brokers_down:
                self._acknowledged_again()
            self.stats.dead_lettered += 1
            return
        self._refused(err, msg, None, headers)

    def _acknowledged_again(self) -> None:
        self._brokers_down = False
        log.info("Kafka acknowledges messages again")

    def _refused(self, err: KafkaError, msg: Message, timestamp: int | None, headers: Headers) -> None:
        if err.code() in _RESEND or err.retriable():
            self._resend.append((msg.topic() or "", msg.key(), msg.value() or b"", timestamp, headers))
            return
        self.stats.delivery_failures += 1
        log.error("message for topic %s (key %r) was not delivered: %s", msg.topic(), msg.key(), err.str())

    def _on_error(self, err: KafkaError) -> None:
        code = err.code()
        if err.fatal():
            log.error("Kafka producer hit a fatal error (%s): rebuilding it", err.str())
            self._loop.call_soon_threadsafe(self._rebuild_soon, f"fatal error: {err.str()}")
        elif code == KafkaError._ALL_BROKERS_DOWN:
            if not self._brokers_down:
                log.warning("Kafka brokers unreachable (%s); buffering until they are back", err.str())
            self._brokers_down = True
            self._loop.call_soon_threadsafe(self._on_brokers_down)
        else:
            log.debug("Kafka producer: %s", err.str())

    def _rebuild_soon(self, why: str) -> None:
        self._background = self._loop.create_task(self.rebuild(why))  # keep a reference

    async def serve(self) -> None:
        """Serve delivery reports and resend refused messages, forever (cancel to stop)."""
        next_resend = 0.0
        while True:
            async with self._lock:
                self._producer.poll(0)
            self._on_poll()
            if self._resend and time.monotonic() >= next_resend:
                # Paced: a topic that stays missing must not turn into a busy loop.
                next_resend = time.monotonic() + RESEND_INTERVAL
                await self._resend_pending()
            await asyncio.sleep(POLL_INTERVAL)

    async def _resend_pending(self) -> None:
        while self._resend and self._open.is_set():
            pending, self._resend = self._resend, []
            for message in pending:
                await self._produce(message)
            self.stats.resent += len(pending)
            log.info("produced %d messages again that the broker had not stored", len(pending))

    async def rebuild(self, why: str) -> None:
        """Replace the librdkafka producer; every message it still held is produced again."""
        async with self._lock:
            self._open.clear()
            try:
                retired = [self._producer]  # the worker thread drops the last reference
                self._producer = self._new_producer()
                retired[0].purge(in_queue=True, in_flight=True)
                left = await asyncio.to_thread(_drain, retired, REBUILD_DRAIN_TIMEOUT)
                if left:
                    self.stats.delivery_failures += left
                    log.error("%d messages could not be taken back from the old Kafka producer", left)
                self.stats.producer_resets += 1
                self._brokers_down = False
                log.warning("Kafka producer rebuilt (%s); producing %d messages again", why, len(self._resend))
            finally:
                self._open.set()
        await self._resend_pending()

    async def flush(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every message to be acknowledged.

        Returns how many were not (0 when all were). Blocking flushes run in a worker
        thread, in short steps, so the event loop stays free meanwhile.
        """
        deadline = time.monotonic() + timeout
        while True:
            await self._resend_pending()
            left = deadline - time.monotonic()
            if left <= 0:
                break
            async with self._lock:
                await asyncio.to_thread(self._producer.flush, min(0.5, left))
            if not self.in_flight:
                return 0
        return self.in_flight


def _drain(retired: list[Producer], timeout: float) -> int:
    """Serve a purged producer's delivery reports, then destroy it (which can block
    while its broker threads wind down, hence here and not on the event loop).
    Returns how many messages it still held."""
    producer = retired.pop()
    deadline = time.monotonic() + timeout
    while len(producer) and time.monotonic() < deadline:
        producer.poll(0.05)
    return len(producer)
