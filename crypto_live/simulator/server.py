"""Websocket shell around the pure market and protocol: a local fake Binance.

Entry points:

* ``SimulatorOptions`` - frozen configuration (host, port (0 = free port),
  symbols, interval between ticks in seconds, seed, faults, ping_interval,
  ping_timeout).  Build ``faults`` with ``FaultSchedule.parse(spec)``.  A bad
  port, symbol count or interval raises SettingsError naming the ``simulate`` flag.
* ``SimulatorServer(options)`` - ``async with`` it in tests; exposes the URL,
  the record of sent events and on-demand fault methods.
* ``SimulatorThread(options)`` - the same server on a daemon thread with its own
  event loop, for synchronous tests or producers running in other threads.
* ``serve_forever(options)`` - for the CLI: prints the URLs and serves until
  cancelled or SIGINT/SIGTERM; ``run(options)`` is its blocking wrapper.

The market ticks on one global clock; each connection gets the frames of its
own subscriptions through a private queue, so a slow reader never delays the
others.  An event is recorded in ``sent_events`` only after ``send()`` returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import signal
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from crypto_live.binance import ALL_MARKET_SPEEDS_MS, ALL_MARKET_STREAM, MINI_TICKER_UPDATE_MS, stream_name
from crypto_live.errors import HandshakeError, SettingsError

from . import market, protocol
from .faults import JUNK_FRAMES, Fault, FaultSchedule

T = TypeVar("T")

# Ticks a connection may fall behind before it is cut off as a slow consumer.
MAX_BACKLOG = 10_000
# How long a fault waits for an in-flight send, and a drop for the peer to
# read what was sent, before acting anyway.
FAULT_TIMEOUT = 2.0


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class SimulatorOptions:
    """Simulator configuration; ``port=0`` binds a free port."""

    host: str = "127.0.0.1"
    port: int = 0
    symbols: int = 20
    interval: float = 1.0  # seconds between market ticks; fractions for load tests
    seed: int | None = None  # None: pick one at random (see SimulatorServer.seed)
    faults: FaultSchedule = field(default_factory=FaultSchedule)
    ping_interval: float | None = 20.0  # Binance pings every 20 s ...
    ping_timeout: float | None = 60.0  # ... and drops clients silent for a minute

    def __post_init__(self) -> None:
        """Refuse a bad value, however the options were built: the one check of them.

        The SettingsError names the ``crypto-live simulate`` flag that sets the field
        (``--port``, ``--symbols``, ``--interval``), so the command reports it as is.
        """
        if not 0 <= self.port <= 65535:
            raise SettingsError("--port", str(self.port), "a port from 0 to 65535")
        if self.symbols < 1:
            raise SettingsError("--symbols", str(self.symbols), "a whole number >= 1")
        if not self.interval > 0:
            raise SettingsError("--interval", str(self.interval), "a positive number of seconds")


class _Client:
    """Shell-side state of one connection."""

    def __init__(self, ws: ServerConnection, session: protocol.Session) -> None:
        self.ws = ws
        self.session = session
        # Serialises sends so a fault never lands in the middle of a tick's frames.
        self.lock = asyncio.Lock()
        self.queue: asyncio.Queue[protocol.TickFrames] = asyncio.Queue(MAX_BACKLOG)
        self.dropped = False  # half-closed by a drop fault: never write to it again
        self.evicted = False  # fell MAX_BACKLOG ticks behind

    def writable(self) -> bool:
        """False once a drop fault half-closed the connection (it may happen at any await)."""
        return not self.dropped


class SimulatorServer:
    """A Binance-compatible miniTicker websocket server (async context manager)."""

    def __init__(
        self,
        options: SimulatorOptions | None = None,
        *,
        clock: Callable[[], int] = _wall_clock_ms,
    ) -> None:
        self.options = options or SimulatorOptions()
        self.seed = self.options.seed if self.options.seed is not None else random.SystemRandom().randrange(2**32)
        self._clock = clock
        self._market = market.initial_state(self.options.symbols, self.seed)
        self.symbols: tuple[str, ...] = self._market.names
        self._clients: set[_Client] = set()
        self._sent: list[dict[str, Any]] = []
        self._sent_lock = threading.Lock()  # readers may live on other threads
        self._changed = asyncio.Event()
        self._stall_until: float | None = None  # time.monotonic() deadline
        self._server: Server | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()  # keeps fire-and-forget tasks alive
        self.connections_accepted = 0

    # -- lifecycle -----------------------------------------------------------

    async def start(self) -> SimulatorServer:
        """Bind and start ticking; returns once the socket is listening."""
        opts = self.options
        self._server = await serve(
            self._handle,
            opts.host,
            opts.port,
            process_request=self._check_request,
            ping_interval=opts.ping_interval,
            ping_timeout=opts.ping_timeout,
            server_header=None,  # Binance does not advertise a server library
        )
        self._tasks = [asyncio.create_task(self._tick_loop(), name="simulator-ticks")]
        if opts.faults:
            self._tasks.append(asyncio.create_task(self._fault_loop(), name="simulator-faults"))
        return self

    async def stop(self) -> None:
        """Stop ticking, close every connection (1001) and the listening socket."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> SimulatorServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- addresses -------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("simulator is not running")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def base_url(self) -> str:
        return f"ws://{self.options.host}:{self.port}"

    def url(self, stream: str = ALL_MARKET_STREAM) -> str:
        """Raw-stream URL, e.g. ``ws://127.0.0.1:PORT/ws/!miniTicker@arr``."""
        return f"{self.base_url}/ws/{stream}"

    def combined_url(self, *streams: str) -> str:
        """Combined-stream URL, e.g. ``.../stream?streams=a/b``."""
        return f"{self.base_url}/stream?streams={'/'.join(streams)}"

    # -- observation -------------------------------------------------------------

    @property
    def sent_events(self) -> list[dict[str, Any]]:
        """Snapshot of every market event sent, in send order, once per connection."""
        with self._sent_lock:
            return list(self._sent)

    @property
    def sent_count(self) -> int:
        """``len(sent_events)`` without the copy."""
        return len(self._sent)

    def sent_keys(self) -> set[tuple[str, int]]:
        """The distinct ``(s, E)`` pairs sent so far (unique per market event)."""
        return {(e["s"], e["E"]) for e in self.sent_events}

    @property
    def open_connections(self) -> int:
        """Connections not yet closed, including dropped ones whose peer has not
        hung up yet (a peer that never reads stays half-open until server stop)."""
        return len(self._clients)

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; re-checked whenever events are sent or
        connections come and go.  Raises TimeoutError."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def wait_until_sent(self, count: int, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` events have been sent in total."""
        await self.wait_until(lambda: self.sent_count >= count, timeout)

    async def wait_for_connections(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``connections_accepted`` reaches ``count``."""
        await self.wait_until(lambda: self.connections_accepted >= count, timeout)

    # -- faults --------------------------------------------------------------

    async def drop_connections(self) -> int:
        """End every connection at the TCP level, without a websocket close frame.

        Bytes already sent are flushed first (TCP half-close: EOF follows the
        buffered bytes; never ``abort()``), so nothing recorded as sent is lost.
        Returns the number of connections dropped once their peers hung up, or
        after ``FAULT_TIMEOUT`` if some peer is not reading.
        """
        clients = list(self._clients)
        await asyncio.gather(*(self._under_lock(c, self._drop, force=True) for c in clients))
        return len(clients)

    async def server_shutdown(self, grace: float = 0.0) -> int:
        """Send ``{"e":"serverShutdown","E":ms}`` to every connection, keep
        streaming for ``grace`` seconds (Binance warns ahead), then close with
        1001.  New connections are still accepted.  The event is sent bare, also
        on combined streams: it belongs to no stream.  Returns the count."""
        clients = list(self._clients)
        event = protocol.encode(protocol.server_shutdown_event(self._clock()))

        async def notify(client: _Client) -> None:
            await client.ws.send(event)
            if grace <= 0:  # close while holding the lock: no data after the event
                await client.ws.close(protocol.GOING_AWAY, "Server shutdown")

        async def close(client: _Client) -> None:
            await client.ws.close(protocol.GOING_AWAY, "Server shutdown")

        await asyncio.gather(*(self._under_lock(c, notify) for c in clients))
        if grace > 0:
            await asyncio.sleep(grace)
            await asyncio.gather(*(self._under_lock(c, close) for c in clients))
        return len(clients)

    async def send_junk(self) -> int:
        """Send ``JUNK_FRAMES`` (non-JSON, then JSON that is no event) to everyone."""

        async def junk(client: _Client) -> None:
            for frame in JUNK_FRAMES:
                await client.ws.send(frame)

        clients = list(self._clients)
        await asyncio.gather(*(self._under_lock(c, junk) for c in clients))
        return len(clients)

    def stall(self, seconds: float | None = None) -> None:
        """Send no market data for ``seconds`` (None: until ``resume()``).

        Connections stay open and pings are still answered; ticks that fall in
        the stall are discarded, as a stale exchange stream would lose them."""
        self._stall_until = float("inf") if seconds is None else time.monotonic() + seconds

    def resume(self) -> None:
        """End a stall now."""
        self._stall_until = None

    @property
    def stalled(self) -> bool:
        return self._stall_until is not None and time.monotonic() < self._stall_until

    async def _under_lock(
        self,
        client: _Client,
        action: Callable[[_Client], Awaitable[None]],
        *,
        force: bool = False,
    ) -> None:
        """Run ``action`` between frames, never in the middle of a tick's frames.

        A send stuck on a reader that stopped reading must not block faults
        forever: after ``FAULT_TIMEOUT`` a ``force``d action runs anyway and
        any other action is skipped."""
        try:
            async with asyncio.timeout(FAULT_TIMEOUT):
                await client.lock.acquire()
        except TimeoutError:
            if force:
                await action(client)
            return
        try:
            if not client.dropped:
                await action(client)
        except ConnectionClosed:
            pass
        finally:
            client.lock.release()

    async def _drop(self, client: _Client) -> None:
        client.dropped = True
        transport = client.ws.transport
        if not transport.can_write_eof():  # TLS has no half-close
            transport.close()  # close(), not abort(): abort() would discard the buffer
            return
        # Half-close: the peer gets EOF, and no close frame, right after every
        # byte already buffered, however slowly it reads.  The socket closes
        # fully when the peer hangs up (websocket clients do on EOF), or at the
        # next keepalive ping or server stop.  Not close() here: with bytes
        # still buffered, asyncio (3.11) later fails the abort() that websockets
        # issues on teardown, and logs a traceback.
        transport.write_eof()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FAULT_TIMEOUT):
                await client.ws.wait_closed()

    async def _fire(self, fault: Fault) -> None:
        if fault.kind == "drop":
            await self.drop_connections()
        elif fault.kind == "shutdown":
            await self.server_shutdown()
        elif fault.kind == "junk":
            await self.send_junk()
        elif fault.kind == "stall":
            self.stall(fault.duration)

    # -- loops ------------------------------------------------------------------

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        try:
            protocol.parse_path(request.path)
        except HandshakeError as exc:
            return connection.respond(exc.status, exc.reason + "\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None, "websockets calls the handler after the handshake"
        client = _Client(ws, protocol.parse_path(request.path))
        self._clients.add(client)
        self.connections_accepted += 1
        self._changed.set()
        pump = asyncio.create_task(self._pump(client))
        try:
            async for message in ws:
                if not client.writable():  # half-closed: write nothing, wait for the peer to hang up
                    continue
                outcome = protocol.handle_message(client.session, message, time.monotonic())
                client.session = outcome.session
                if outcome.reply is not None:
                    async with client.lock:
                        if not client.writable():  # dropped while we waited for the lock
                            continue
                        await ws.send(protocol.encode(outcome.reply))
                if outcome.close is not None:
                    await ws.close(outcome.close.code, outcome.close.reason)
                    break
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            self._changed.set()
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)

    async def _pump(self, client: _Client) -> None:
        """Send queued ticks to one connection, recording events after each send."""
        ws = client.ws
        try:
            while True:
                tick = await client.queue.get()
                if self.stalled:
                    continue
                frames = tick.frames_for(client.session)
                if not frames:
                    continue
                async with client.lock:
                    seen: set[int] = set()  # an event on two streams counts once
                    for frame in frames:
                        if client.dropped:  # a forced drop may land between frames
                            return
                        await ws.send(frame.text)
                        fresh = [e for e in frame.events if id(e) not in seen]
                        seen.update(id(e) for e in fresh)
                        self._record(fresh)
        except ConnectionClosed:
            pass

    def _record(self, events: list[dict[str, Any]]) -> None:
        if events:
            with self._sent_lock:
                self._sent.extend(events)
            self._changed.set()

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.options.interval
        deadline = loop.time()
        # The slowest all-market stream (@3000ms) merges this tick with the ones before it.
        history: deque[Sequence[dict[str, Any]]] = deque(maxlen=max(ALL_MARKET_SPEEDS_MS) // MINI_TICKER_UPDATE_MS - 1)
        number = 0
        while True:
            # Fixed-rate schedule; when we fall behind, do not burst to catch up.
            deadline = max(deadline + interval, loop.time())
            await asyncio.sleep(deadline - loop.time())
            self._market, events = market.step(self._market, self._clock())
            if self.stalled:
                continue
            number += 1
            tick = protocol.TickFrames(events, number, tuple(history))
            history.append(events)
            for client in list(self._clients):
                if client.dropped:
                    continue
                if client.queue.full():
                    self._evict(client)
                else:
                    client.queue.put_nowait(tick)

    def _evict(self, client: _Client) -> None:
        # Binance cuts off consumers that cannot keep up; so do we.
        if not client.evicted:
            client.evicted = True
            task = asyncio.create_task(client.ws.close(protocol.POLICY_VIOLATION, "Slow consumer"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _fault_loop(self) -> None:
        loop = asyncio.get_running_loop()
        schedule = self.options.faults
        start = loop.time()
        since = float("-inf")
        while (at := schedule.next_time(since)) is not None:
            await asyncio.sleep(max(0.0, start + at - loop.time()))
            for fault in schedule.due(since, at):
                await self._fire(fault)
            since = at


class SimulatorThread:
    """``SimulatorServer`` on a daemon thread with its own loop; thread-safe API."""

    def __init__(self, options: SimulatorOptions | None = None) -> None:
        self.options = options or SimulatorOptions()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sim: SimulatorServer | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> SimulatorThread:
        """Start the thread; returns once the server is listening."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._run, name="simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("simulator did not start in time")
        if self._error is not None:
            raise RuntimeError("simulator failed to start") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and join the thread (idempotent)."""
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout)

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        try:
            self._loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - surfaced by start()
            self._error = exc
        finally:
            self._ready.set()
            self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        async with SimulatorServer(self.options) as sim:
            self._sim = sim
            self._ready.set()
            await self._stop.wait()

    @property
    def server(self) -> SimulatorServer:
        if self._sim is None:
            raise RuntimeError("simulator is not running")
        return self._sim

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 30.0) -> T:
        if self._loop is None:
            raise RuntimeError("simulator is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _sync(self, fn: Callable[[], object]) -> object:
        return fn()

    # Read-only properties are plain attribute reads or lock-protected copies.
    port = property(lambda self: self.server.port)
    base_url = property(lambda self: self.server.base_url)
    seed = property(lambda self: self.server.seed)
    symbols = property(lambda self: self.server.symbols)
    sent_events = property(lambda self: self.server.sent_events)
    sent_count = property(lambda self: self.server.sent_count)
    connections_accepted = property(lambda self: self.server.connections_accepted)

    def url(self, stream: str = ALL_MARKET_STREAM) -> str:
        return self.server.url(stream)

    def combined_url(self, *streams: str) -> str:
        return self.server.combined_url(*streams)

    def sent_keys(self) -> set[tuple[str, int]]:
        return self.server.sent_keys()

    def drop_connections(self) -> int:
        return self._call(self.server.drop_connections())

    def server_shutdown(self, grace: float = 0.0) -> int:
        return self._call(self.server.server_shutdown(grace))

    def send_junk(self) -> int:
        return self._call(self.server.send_junk())

    def stall(self, seconds: float | None = None) -> None:
        self._call(self._sync(functools.partial(self.server.stall, seconds)))

    def resume(self) -> None:
        self._call(self._sync(self.server.resume))

    def wait_until_sent(self, count: int, timeout: float = 5.0) -> None:
        self._call(self.server.wait_until_sent(count, timeout), None)

    def wait_for_connections(self, count: int, timeout: float = 5.0) -> None:
        self._call(self.server.wait_for_connections(count, timeout), None)


def _announce(line: str) -> None:
    print(line, flush=True)  # flushed: a parent process may be waiting for the URL


async def serve_forever(options: SimulatorOptions, *, announce: Callable[[str], None] = _announce) -> None:
    """Run a simulator until cancelled or SIGINT/SIGTERM, announcing its URLs."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Only possible on the main thread of a Unix loop; elsewhere rely on cancel.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        async with SimulatorServer(options) as sim:
            announce(
                f"Binance simulator on {sim.base_url} "
                f"(symbols={len(sim.symbols)}, interval={options.interval}s, seed={sim.seed}"
                + (f", faults={options.faults}" if options.faults else "")
                + ")"
            )
            announce(f"  all tickers: {sim.url()}")
            announce(f"  one symbol:  {sim.url(stream_name(sim.symbols[0]))}")
            announce(f"  combined:    {sim.combined_url(ALL_MARKET_STREAM)}")
            await stop.wait()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(options: SimulatorOptions) -> int:
    """Blocking wrapper around ``serve_forever`` for a CLI; returns an exit code."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(options))
    return 0
