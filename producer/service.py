"""`crypto-live producer`: Binance miniTicker websocket -> KAFKA_TOPIC, losing nothing read.

One asyncio event loop runs everything:

* one :class:`Reader` per :class:`~producer.source.ConnectionPlan`, reconnecting
  forever under a shared :class:`~producer.budget.ConnectionBudget`. When to leave a
  connection (stale stream, maximum age, serverShutdown, stop) and how long to wait
  before the next one (backoff, at once, or the cap after an HTTP 4xx refusal) is
  decided by the pure :class:`~producer.lifecycle.Lifecycle`; the reader only does the
  I/O. websockets answers the server's pings and sends its own (keepalive is its job).
  Leaving is always a close handshake during which the frames already on their way are
  still read, so whatever the server sent before its close frame is published;
* the :class:`~producer.publisher.Publisher` (delivery reports via ``poll(0)`` from a
  task: the loop never blocks on Kafka, so pongs always leave in time) and the
  :class:`~producer.topics.TopicKeeper` (topics created in the background: a broker
  that is down at start-up does not stop reading);
* a stats line every PRODUCER_STATS_INTERVAL seconds;
* on every turn of the delivery-report task (every 50 ms): the heartbeat
  (:mod:`crypto_live.health`; a blocked event loop stops it) and, every METRICS_INTERVAL
  seconds, a metrics record (:mod:`crypto_live.metrics`).

SIGINT/SIGTERM: stop reading (close handshakes, frames in transit still read), flush
for what is left of PRODUCER_SHUTDOWN_TIMEOUT, exit 0 — or raise
:class:`~crypto_live.errors.DeliveryError` saying how many messages were not delivered
(:class:`~crypto_live.errors.ServiceError` when an internal task crashed). Logs name the
websocket by host (and stream count) only: the URL path and query may carry credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from crypto_live import logs
from crypto_live.errors import DeliveryError, ServiceError
from crypto_live.health import Heartbeat
from crypto_live.metrics import MetricsReporter, Sample
from crypto_live.settings import ProducerSettings

from .budget import ConnectionBudget
from .frames import Frame, parse_frame
from .lifecycle import Cause, Leaving, Lifecycle
from .publisher import Publisher
from .source import CONTROL_MESSAGES_PER_SECOND, ConnectionPlan, plan_connections, resolve_url
from .stats import Stats, stats_line
from .topics import TopicKeeper

log = logging.getLogger("producer")

OPEN_TIMEOUT = 10.0
CLOSE_TIMEOUT = 3.0  # the close handshake, during which frames in transit are still read
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0
MAX_FRAME_BYTES = 16 * 2**20  # the all-market array is a few hundred kB
INVALID_WARNINGS = 5  # invalid items logged at WARNING before switching to DEBUG

# websockets logs request lines and frames at DEBUG; those carry the URL's path.
_WEBSOCKET_LOG = logging.getLogger("producer.websocket")
_WEBSOCKET_LOG.setLevel(logging.INFO)


def run(settings: ProducerSettings) -> int:
    """Entry point of `crypto-live producer`; returns the exit status."""
    url = resolve_url(settings)
    logs.register_secret(url)  # it may come from Secrets Manager: never in a log line either
    plans = plan_connections(url, settings.symbols)
    return asyncio.run(ProducerService(settings, plans).main())


class ProducerService:
    """The running producer. :meth:`main` runs until :meth:`request_stop` (or a signal)."""

    def __init__(
        self, settings: ProducerSettings, plans: list[ConnectionPlan], *, budget: ConnectionBudget | None = None
    ):
        self.settings = settings
        self.plans = plans
        self.stats = Stats()
        self.budget = budget or ConnectionBudget()
        self._loop: asyncio.AbstractEventLoop | None = None  # set once main() runs
        self._stop = asyncio.Event()  # bound to main()'s loop when first awaited there
        self._readers: list[Reader] = []
        self._invalid_logged = 0
        self._stop_requested = False
        self._publisher: Publisher | None = None
        self.heartbeat = Heartbeat.for_service("producer", settings.monitoring)
        self._metrics: MetricsReporter | None = None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("the producer is not running")
        return self._publisher

    def request_stop(self) -> None:
        """Stop reading, flush and return from :meth:`main`; callable from any thread."""
        self._stop_requested = True  # seen by main() if it has not started yet
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._begin_stop)

    def _begin_stop(self) -> None:
        if self._stop.is_set():
            log.info("already stopping: flushing for at most %g s", self.settings.shutdown_timeout)
            return
        log.info("stopping: closing %d connection(s), then flushing", len(self._readers))
        self._stop.set()
        for reader in self._readers:
            reader.stop()

    async def main(self, *, install_signal_handlers: bool = True) -> int:
        loop = self._loop = asyncio.get_running_loop()
        started = loop.time()
        if install_signal_handlers:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._begin_stop)
        keeper = TopicKeeper(self.settings.kafka, self._topics_recreated)
        publisher = self._publisher = Publisher(
            self.settings.kafka, self.stats, on_brokers_down=keeper.check_soon, on_poll=self._pulse
        )
        self._readers = [Reader(plan, self) for plan in self.plans]
        log.info(
            "producer starting: %s -> topic %s (dead letters: %s) at %s",
            ", ".join(plan.label for plan in self.plans),
            self.settings.kafka.topic,
            self.settings.kafka.dlq_topic,
            self.settings.kafka.bootstrap_servers,
        )
        self.heartbeat.start()
        self._metrics = MetricsReporter("producer", self.settings.monitoring.metrics_interval, self._sample)
        background = [
            asyncio.create_task(keeper.run(), name="topic-keeper"),
            asyncio.create_task(publisher.serve(), name="delivery-reports"),
            asyncio.create_task(self._report(), name="stats"),
        ]
        readers = [asyncio.create_task(r.run(), name=f"reader-{i}") for i, r in enumerate(self._readers)]
        if self._stop_requested:
            self._begin_stop()
        crashed = await self._wait_for_stop(background + readers)
        deadline = loop.time() + self.settings.shutdown_timeout
        try:
            await self._stop_readers(readers)
            for task in background[1:]:  # the keeper stays: a broker back empty mid-flush needs it
                task.cancel()
            left = await publisher.flush(max(0.0, deadline - loop.time()))
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self._metrics.close()
            self.heartbeat.stop()
        log.info("final stats: %s", stats_line(Stats(), self.stats, loop.time() - started, left))
        undelivered = self.stats.undelivered()
        if undelivered:
            raise DeliveryError(
                f"{undelivered} messages were not delivered to Kafka at {self.settings.kafka.bootstrap_servers} "
                f"(PRODUCER_SHUTDOWN_TIMEOUT={self.settings.shutdown_timeout:g} s)"
            )
        if crashed:
            raise ServiceError(f"stopped after an internal error: {crashed}")
        log.info("stopped: every message read was delivered")
        return 0

    def _pulse(self) -> None:
        """Each turn of the delivery-report loop (on the event loop): heartbeat, and metrics when due."""
        self.heartbeat.beat()
        if self._metrics is not None:
            self._metrics.tick()

    def _sample(self) -> Sample:
        stats = self.stats
        return Sample(
            stats.events,
            {"EventsPublished": stats.published, "DeadLetters": stats.invalid, "Reconnects": stats.reconnects},
        )

    async def _wait_for_stop(self, tasks: list[asyncio.Task[None]]) -> str | None:
        """Wait for a stop request; a task that ends by itself is a bug: stop then too."""
        stop = asyncio.create_task(self._stop.wait())
        waiting: list[asyncio.Task[Any]] = [stop, *tasks]
        done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        crashed = None
        for task in done - {stop}:
            if task.exception() is None and self.stopping:
                continue  # a reader that saw the stop request first
            crashed = f"{task.get_name()}: {task.exception() or 'ended'}"
            log.error("%s; stopping", crashed, exc_info=task.exception())
        if not self.stopping:
            self._begin_stop()
        stop.cancel()
        return crashed

    async def _stop_readers(self, readers: list[asyncio.Task[None]]) -> None:
        budget = min(CLOSE_TIMEOUT + 1.0, self.settings.shutdown_timeout / 2)
        _, pending = await asyncio.wait(readers, timeout=budget) if readers else (set(), set())
        for task in pending:  # e.g. waiting on a full local queue
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)

    async def _topics_recreated(self, created: list[str]) -> None:
        # The broker lost its state: it does not know librdkafka's producer id either.
        await self.publisher.rebuild(f"topics {', '.join(created)} had to be created again")

    async def handle(self, raw: bytes) -> Frame:
        """Publish one frame's events and dead-letter its invalid items."""
        frame = parse_frame(raw)
        stats, publisher = self.stats, self.publisher
        stats.events += len(frame.events)
        await publisher.publish(frame.events)
        if frame.not_json:
            stats.not_json += 1
        for item in frame.rejected:
            stats.invalid += 1
            self._log_invalid(item.reason)
            await publisher.dead_letter(item.reason, item.raw)
        for answer in frame.answers:
            stats.answers += 1
            if answer.get("error") is not None:
                log.warning("control message %s refused: %s", answer.get("id"), answer["error"])
        return frame

    def _log_invalid(self, reason: str) -> None:
        self._invalid_logged += 1
        level = logging.WARNING if self._invalid_logged <= INVALID_WARNINGS else logging.DEBUG
        suffix = " (further ones are logged at DEBUG)" if self._invalid_logged == INVALID_WARNINGS else ""
        log.log(level, "invalid item sent to the dead-letter topic: %s%s", reason, suffix)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True when a stop was requested meanwhile."""
        if seconds > 0 and not self.stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._stop.wait()
        return self.stopping

    async def _report(self) -> None:
        loop = asyncio.get_running_loop()
        previous, since = self.stats.snapshot(), loop.time()
        while True:
            await asyncio.sleep(self.settings.stats_interval)
            current, now = self.stats.snapshot(), loop.time()
            log.info("stats: %s", stats_line(previous, current, now - since, self.publisher.in_flight))
            previous, since = current, now


class Reader:
    """Reads one planned connection, forever: connect, read, leave, wait, repeat.

    The I/O shell around a :class:`~producer.lifecycle.Lifecycle`, which decides when to
    leave a connection and how long to wait before the next one.
    """

    def __init__(self, plan: ConnectionPlan, service: ProducerService):
        self.plan = plan
        self.service = service
        settings = service.settings
        self.lifecycle = Lifecycle(
            stale_after=settings.stale_after,
            max_age=settings.max_connection_age,
            reconnect_cap=settings.reconnect_max_delay,
        )
        self._ws: ClientConnection | None = None
        self._closing: asyncio.Task[None] | None = None

    def stop(self) -> None:
        """Leave the current connection, if any, and never connect again."""
        self._leave(self.lifecycle.stop_requested())

    async def run(self) -> None:
        service, loop = self.service, asyncio.get_running_loop()
        while not service.stopping:
            wait = service.budget.wait_time(loop.time())
            if wait > 0:
                log.warning(
                    "%d connection attempts in %.0f s: waiting %.0f s to stay under Binance's limit",
                    service.budget.used(loop.time()),
                    service.budget.window,
                    wait,
                )
                if await service.sleep(wait):
                    break
            service.budget.record(loop.time())
            leaving = await self._connect_and_read()
            delay = self.lifecycle.reconnect_delay(leaving)
            if delay is None:
                break
            service.stats.reconnects += 1
            if leaving.cause is Cause.REFUSED:
                log.error("%s: %s; retrying in %.1f s", self.plan.label, leaving.why, delay)
            else:
                log.warning("%s: %s; reconnecting in %.1f s", self.plan.label, leaving.why, delay)
            if await service.sleep(delay):
                break

    async def _connect_and_read(self) -> Leaving:
        try:
            async with connect(
                self.plan.url,
                open_timeout=OPEN_TIMEOUT,
                close_timeout=CLOSE_TIMEOUT,
                ping_interval=PING_INTERVAL,
                ping_timeout=PING_TIMEOUT,
                max_size=MAX_FRAME_BYTES,
                logger=_WEBSOCKET_LOG,
            ) as ws:
                self._ws, self._closing = ws, None
                self.service.stats.connections += 1
                log.info("connected to %s", self.plan.label)
                subscribing = asyncio.create_task(self._subscribe(ws)) if self.plan.subscribe else None
                try:
                    return await self._read(ws)
                finally:
                    self._ws = None
                    if subscribing is not None:
                        subscribing.cancel()
        except InvalidStatus as exc:
            return self.lifecycle.failed(self._redact(str(exc)), exc.response.status_code)
        except (OSError, TimeoutError, WebSocketException) as exc:
            return self.lifecycle.failed(self._redact(f"{type(exc).__name__}: {exc}"))

    async def _subscribe(self, ws: ClientConnection) -> None:
        """Send the SUBSCRIBE frames, paced under Binance's control-message limit."""
        for frame in self.plan.subscribe:
            await ws.send(frame, text=True)
            await asyncio.sleep(1.0 / CONTROL_MESSAGES_PER_SECOND)

    async def _read(self, ws: ClientConnection) -> Leaving:
        loop, lifecycle = asyncio.get_running_loop(), self.lifecycle
        self._leave(lifecycle.opened(loop.time()))
        while True:
            try:
                async with asyncio.timeout_at(lifecycle.deadline):
                    raw = await ws.recv(decode=False)
            except TimeoutError:
                self._leave(lifecycle.timed_out(loop.time()))
                continue
            except ConnectionClosed as exc:
                return lifecycle.closed(self._redact(str(exc)))
            frame = await self.service.handle(raw)
            self._leave(
                lifecycle.frame(loop.time(), had_events=bool(frame.events), server_shutdown=frame.server_shutdown)
            )

    def _leave(self, leaving: Leaving | None) -> None:
        """Carry out a decision to leave the connection: count it, start the close handshake."""
        if leaving is None:
            return
        if leaving.cause is Cause.STALE:
            self.service.stats.stale += 1
        elif leaving.cause is Cause.SERVER_SHUTDOWN:
            self.service.stats.server_shutdowns += 1
        if self._ws is not None and self._closing is None:
            self._closing = asyncio.create_task(self._ws.close())

    def _redact(self, text: str) -> str:
        """``text`` without the URL's path or query (exception messages may quote them)."""
        parts = urlsplit(self.plan.url)
        for secret in (self.plan.url, parts.query, parts.path):
            if len(secret) > 1:
                text = text.replace(secret, "…")
        return text
