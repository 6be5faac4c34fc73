"""Drive the real simulator server with plain websocket clients on 127.0.0.1."""

import asyncio
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
from websockets.asyncio.client import connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosedError, ConnectionClosedOK, InvalidStatus
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.sync.client import connect as sync_connect
from websockets.uri import parse_uri

from crypto_live.errors import SettingsError
from crypto_live.simulator import (
    ALL_MARKET_STREAM,
    MAX_STREAMS_PER_CONNECTION,
    FaultSchedule,
    SimulatorOptions,
    SimulatorServer,
    SimulatorThread,
)
from crypto_live.simulator import server as server_module
from crypto_live.simulator.faults import JUNK_FRAMES
from tests.factories import key_of

FAST = SimulatorOptions(interval=0.02, seed=7)


def async_test(fn):
    """Run an async test body with asyncio.run and a hard deadline."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        async def bounded():
            async with asyncio.timeout(10):
                await fn(*args, **kwargs)

        asyncio.run(bounded())

    return wrapper


def client(url, **kwargs):
    # No client-side pings: only the server's keepalive is under test.
    kwargs.setdefault("open_timeout", 5)
    return connect(url, ping_interval=None, **kwargs)


async def recv_json(ws):
    return json.loads(await ws.recv())


async def reply_to(ws, request):
    """Send a control request and return its reply, skipping market data."""
    await ws.send(json.dumps(request))
    while True:
        message = await recv_json(ws)
        if isinstance(message, dict) and "id" in message and ("result" in message or "error" in message):
            return message


async def drain_until_closed(ws):
    """Collect every remaining message; return them with the close exception."""
    messages = []
    try:
        while True:
            messages.append(await ws.recv())
    except (ConnectionClosedError, ConnectionClosedOK) as exc:
        return messages, exc


def keys(events):
    return set(map(key_of, events))


# -- streams ------------------------------------------------------------------


@async_test
async def test_all_market_stream_sends_arrays_of_mini_tickers():
    async with SimulatorServer(FAST) as sim:
        assert sim.url() == f"ws://127.0.0.1:{sim.port}/ws/!miniTicker@arr"
        received = []
        async with client(sim.url()) as ws:
            for _ in range(3):
                frame = await recv_json(ws)
                assert isinstance(frame, list) and frame
                assert all(e["e"] == "24hrMiniTicker" and e["s"] in sim.symbols for e in frame)
                received.extend(frame)
        await sim.wait_until(lambda: keys(received) <= sim.sent_keys())
        assert sim.connections_accepted == 1


@async_test
async def test_single_symbol_stream_sends_one_object_per_change():
    async with SimulatorServer(FAST) as sim:
        async with client(sim.url("ethusdt@miniTicker")) as ws:
            events = [await recv_json(ws) for _ in range(4)]
        assert all(isinstance(e, dict) and e["s"] == "ETHUSDT" for e in events)
        times = [e["E"] for e in events]
        assert times == sorted(set(times))


@async_test
async def test_raw_multi_stream_path():
    async with SimulatorServer(FAST) as sim:
        url = f"{sim.base_url}/ws/btcusdt@miniTicker/ethusdt@miniTicker"
        async with client(url) as ws:
            symbols = {(await recv_json(ws))["s"] for _ in range(10)}
        assert symbols == {"BTCUSDT", "ETHUSDT"}


@async_test
async def test_combined_stream_wraps_payloads():
    async with SimulatorServer(FAST) as sim, client(sim.combined_url("btcusdt@miniTicker", ALL_MARKET_STREAM)) as ws:
        frames = [await recv_json(ws) for _ in range(6)]
    assert all(set(f) == {"stream", "data"} for f in frames)
    by_stream = {f["stream"]: f["data"] for f in frames}
    assert set(by_stream) == {"btcusdt@miniTicker", ALL_MARKET_STREAM}
    assert by_stream["btcusdt@miniTicker"]["s"] == "BTCUSDT"
    assert isinstance(by_stream[ALL_MARKET_STREAM], list)


@async_test
async def test_encoded_three_second_stream_in_microseconds_end_to_end():
    # Percent-encoded name, update speed and time unit, all parsed by the server itself.
    async with SimulatorServer(FAST) as sim:
        url = f"{sim.base_url}/stream?streams=%21miniTicker%40arr%403000ms&timeUnit=MICROSECOND"
        async with client(url) as ws:
            frame = await recv_json(ws)
        assert frame["stream"] == "!miniTicker@arr@3000ms"
        await sim.wait_until(lambda: sim.sent_count >= len(frame["data"]))  # recorded after the send
        sent = {e["s"]: e["E"] for e in sim.sent_events}
        assert {e["s"]: e["E"] for e in frame["data"]} == {s: t * 1000 for s, t in sent.items()}


@pytest.mark.parametrize(
    ("path", "status"), [("/nope", 400), ("/ws/btcusdt@trade", 400), ("/ws/!miniTicker@arr?timeUnit=ns", 400)]
)
@async_test
async def test_bad_paths_fail_the_handshake(path, status):
    async with SimulatorServer(FAST) as sim:
        with pytest.raises(InvalidStatus) as info:
            async with client(sim.base_url + path):
                pass
        assert info.value.response.status_code == status
        assert sim.connections_accepted == 0


@async_test
async def test_event_on_two_streams_of_one_connection_is_recorded_once():
    async with SimulatorServer(FAST) as sim:
        async with client(sim.combined_url("btcusdt@miniTicker", ALL_MARKET_STREAM)) as ws:
            frames = [await recv_json(ws) for _ in range(10)]
        btc = [f["data"] for f in frames if f["stream"] == "btcusdt@miniTicker"]
        await sim.wait_until(lambda: keys(btc) <= sim.sent_keys())
        events = sim.sent_events
        assert len(events) == len(keys(events))


@async_test
async def test_event_sent_on_two_connections_is_recorded_twice():
    async with SimulatorServer(FAST) as sim:
        async with client(sim.url()) as a, client(sim.url()) as b:
            for _ in range(3):
                await a.recv()
                await b.recv()
            await sim.wait_until(lambda: len(sim.sent_events) > len(sim.sent_keys()))
        counts = Counter((e["s"], e["E"]) for e in sim.sent_events)
        assert max(counts.values()) == 2


@async_test
async def test_seed_makes_the_market_reproducible():
    options = SimulatorOptions(interval=0.02, seed=123)
    runs = []
    for _ in range(2):
        fake_clock = functools.partial(next, iter(range(1_000, 10**9, 1_000)))
        async with SimulatorServer(options, clock=fake_clock) as sim:
            assert sim.seed == 123
            async with client(sim.url()) as ws:
                runs.append([await recv_json(ws) for _ in range(3)])
    assert runs[0] == runs[1]
    async with SimulatorServer(SimulatorOptions(interval=0.02)) as sim:
        assert isinstance(sim.seed, int)


@pytest.mark.parametrize(
    ("options", "culprit"),
    [
        ({"port": 70000}, "--port='70000'"),
        ({"port": -1}, "--port='-1'"),
        ({"symbols": 0}, "--symbols='0'"),
        ({"interval": 0.0}, "--interval='0.0'"),
        ({"interval": float("nan")}, "--interval='nan'"),
    ],
)
def test_options_built_in_code_refuse_bad_values_naming_the_option(options, culprit):
    with pytest.raises(SettingsError) as info:
        SimulatorOptions(**options)
    assert str(info.value).startswith(culprit)


# -- control messages ----------------------------------------------------------


@async_test
async def test_subscribe_list_unsubscribe():
    async with SimulatorServer(FAST) as sim, client(sim.base_url + "/ws") as ws:
        with pytest.raises(TimeoutError):  # nothing subscribed, nothing sent
            await asyncio.wait_for(ws.recv(), 0.1)
        sub = {"method": "SUBSCRIBE", "params": ["btcusdt@miniTicker"], "id": 1}
        assert await reply_to(ws, sub) == {"result": None, "id": 1}
        event = await recv_json(ws)
        assert event["s"] == "BTCUSDT"
        listing = await reply_to(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 2})
        assert listing == {"result": ["btcusdt@miniTicker"], "id": 2}
        unsub = {"method": "UNSUBSCRIBE", "params": ["btcusdt@miniTicker"], "id": 3}
        assert await reply_to(ws, unsub) == {"result": None, "id": 3}
        assert await reply_to(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 4}) == {"result": [], "id": 4}


@async_test
async def test_invalid_requests_get_error_replies_and_connection_survives():
    async with SimulatorServer(FAST) as sim, client(sim.base_url + "/ws") as ws:
        await ws.send("{oops")
        bad_json = await recv_json(ws)
        assert bad_json["error"]["code"] == 3
        unknown = await reply_to(ws, {"method": "PING", "id": 5})
        assert unknown["id"] == 5 and unknown["error"]["code"] == 2
        bad_stream = await reply_to(ws, {"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 6})
        assert bad_stream["error"]["code"] == 2
        assert await reply_to(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 7}) == {"result": [], "id": 7}


@async_test
async def test_set_property_combined_switches_to_envelopes():
    async with SimulatorServer(FAST) as sim, client(sim.url("btcusdt@miniTicker")) as ws:
        assert (await recv_json(ws))["s"] == "BTCUSDT"
        reply = await reply_to(ws, {"method": "SET_PROPERTY", "params": ["combined", True], "id": 1})
        assert reply == {"result": None, "id": 1}
        frame = await recv_json(ws)
        while "stream" not in frame:  # a tick queued before the switch
            frame = await recv_json(ws)
        assert frame["stream"] == "btcusdt@miniTicker" and frame["data"]["s"] == "BTCUSDT"


@async_test
async def test_five_messages_per_second_pass_the_sixth_disconnects():
    async with SimulatorServer(FAST) as sim:
        async with client(sim.base_url + "/ws") as ws:
            for i in range(5):
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
            replies = [await recv_json(ws) for _ in range(5)]
            assert [r["id"] for r in replies] == list(range(5))
            assert ws.state is State.OPEN
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 5}))
            messages, exc = await drain_until_closed(ws)
        assert messages == []
        assert isinstance(exc, ConnectionClosedError)
        assert exc.rcvd.code == 1008


@async_test
async def test_stream_limit_per_connection():
    async with SimulatorServer(SimulatorOptions(symbols=MAX_STREAMS_PER_CONNECTION + 5, interval=5.0, seed=1)) as sim:
        names = [f"{s.lower()}@miniTicker" for s in sim.symbols]
        async with client(sim.base_url + "/ws", max_size=None) as ws:
            first = {"method": "SUBSCRIBE", "params": names[: MAX_STREAMS_PER_CONNECTION - 1], "id": 1}
            assert await reply_to(ws, first) == {"result": None, "id": 1}
            last = {"method": "SUBSCRIBE", "params": [ALL_MARKET_STREAM], "id": 2}
            assert await reply_to(ws, last) == {"result": None, "id": 2}
            listing = await reply_to(ws, {"method": "LIST_SUBSCRIPTIONS", "id": 3})
            assert len(listing["result"]) == MAX_STREAMS_PER_CONNECTION
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": [names[MAX_STREAMS_PER_CONNECTION]], "id": 4}))
            messages, exc = await drain_until_closed(ws)
        assert messages == []
        assert exc.rcvd.code == 1008 and exc.rcvd.reason == "Too many streams"


# -- pings ---------------------------------------------------------------------


class RawClient:
    """A websocket client on the sans-I/O protocol that may refuse to answer pings."""

    def __init__(self, url, *, answer_pings, rcvbuf=None):
        self.uri = parse_uri(url)
        self.answer_pings = answer_pings
        self.rcvbuf = rcvbuf
        self.protocol = ClientProtocol(self.uri, max_size=None)
        self.pings = 0
        self.texts = []

    @property
    def data_frames(self):
        return len(self.texts)

    async def __aenter__(self):
        sock = socket.socket()
        if self.rcvbuf:  # before connect, so the TCP window starts small
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (self.uri.host, self.uri.port))
        self.reader, self.writer = await asyncio.open_connection(sock=sock)
        self.protocol.send_request(self.protocol.connect())
        self.flush(handshake=True)
        while self.protocol.state is State.CONNECTING:
            await self._read()
        assert self.protocol.state is State.OPEN, self.protocol.handshake_exc
        return self

    async def __aexit__(self, *exc_info):
        self.writer.close()

    def flush(self, handshake=False):
        for data in self.protocol.data_to_send():
            # A silent client swallows everything it would send, pongs included.
            if not (handshake or self.answer_pings):
                continue
            if data:
                self.writer.write(data)
            else:  # the protocol's signal to hang up (after the server's EOF)
                self.writer.close()

    async def _read(self):
        data = await self.reader.read(65536)
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode is Opcode.PING:
                self.pings += 1
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.texts.append(event.data.decode())
        self.flush()
        return data

    async def run_until(self, predicate):
        while not predicate():
            if not await self._read():
                return


@async_test
async def test_server_pings_and_a_ponging_client_survives():
    options = SimulatorOptions(interval=0.02, seed=1, ping_interval=0.05, ping_timeout=0.1)
    async with SimulatorServer(options) as sim, RawClient(sim.url(), answer_pings=True) as raw:
        await raw.run_until(lambda: raw.pings >= 6)  # > 3 ping timeouts
        frames_then = raw.data_frames
        await raw.run_until(lambda: raw.data_frames > frames_then)
        assert raw.protocol.state is State.OPEN
        assert sim.open_connections == 1


@async_test
async def test_client_that_never_pongs_is_dropped():
    options = SimulatorOptions(interval=0.02, seed=1, ping_interval=0.05, ping_timeout=0.1)
    async with SimulatorServer(options) as sim:
        async with RawClient(sim.url(), answer_pings=False) as raw:
            await raw.run_until(lambda: raw.protocol.state is State.CLOSED or raw.protocol.close_rcvd is not None)
            assert raw.pings >= 1
            assert raw.protocol.close_rcvd.code == 1011
            assert raw.protocol.close_rcvd.reason == "keepalive ping timeout"
        await sim.wait_until(lambda: sim.open_connections == 0)


# -- faults --------------------------------------------------------------------


@async_test
async def test_drop_closes_tcp_without_close_frame_after_flushing():
    async with SimulatorServer(SimulatorOptions(interval=0.005, seed=3)) as sim:
        async with client(sim.url()) as ws:
            messages = [await ws.recv()]
            await sim.wait_until_sent(sim.sent_count + 100)  # unread frames in flight
            assert await sim.drop_connections() == 1
            rest, exc = await drain_until_closed(ws)
        assert isinstance(exc, ConnectionClosedError)
        assert exc.rcvd is None and exc.sent is None
        received = [e for m in messages + rest for e in json.loads(m)]
        # Everything recorded as sent on this connection arrived, and nothing else.
        sent = sim.sent_events
        assert len(received) == len(sent) > 100
        assert keys(received) == keys(sent)
        # The simulator keeps listening: producers reconnect.
        async with client(sim.url()) as ws:
            await ws.recv()
        assert sim.connections_accepted == 2


@async_test
async def test_drop_of_a_backlogged_reader_still_delivers_everything_recorded(monkeypatch, caplog):
    monkeypatch.setattr(server_module, "FAULT_TIMEOUT", 0.2)
    options = SimulatorOptions(interval=0.002, symbols=200, seed=3)
    async with SimulatorServer(options) as sim:
        async with RawClient(sim.url(), answer_pings=True, rcvbuf=4096) as raw:
            # Read nothing until the server can no longer send (its buffers are full).
            progress = -1
            while sim.sent_count != progress:
                progress = sim.sent_count
                await asyncio.sleep(0.1)  # ~50 ticks: a sender that is not blocked moves on
            assert await sim.drop_connections() == 1  # gives up waiting: we are not reading
            # A request after the drop must go unanswered: any write now would end in abort().
            raw.protocol.send_text(b'{"method":"LIST_SUBSCRIPTIONS","id":1}')
            raw.flush()
            await raw.run_until(lambda: False)  # now read everything, up to EOF
            assert raw.protocol.close_rcvd is None  # EOF without a close frame
        await sim.wait_until(lambda: sim.open_connections == 0)
        received = [e for text in raw.texts for e in json.loads(text)]
        assert all(isinstance(e, dict) and e["e"] == "24hrMiniTicker" for e in received)  # no reply
        sent = sim.sent_events
        assert len(sent) > 1_000
        # All recorded events arrived; at most the frame in flight at drop time is extra.
        assert keys(sent) <= keys(received)
        assert len(received) - len(sent) <= len(sim.symbols)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


@async_test
async def test_server_shutdown_sends_event_then_closes_1001():
    async with SimulatorServer(FAST) as sim:
        async with client(sim.url()) as ws:
            await ws.recv()
            before = int(time.time() * 1000)
            assert await sim.server_shutdown() == 1
            messages, exc = await drain_until_closed(ws)
        assert isinstance(exc, ConnectionClosedOK)
        assert exc.rcvd.code == 1001
        last = json.loads(messages[-1])
        assert last["e"] == "serverShutdown" and last["E"] >= before
        assert set(last) == {"e", "E"}


@async_test
async def test_server_shutdown_with_grace_keeps_streaming_until_close():
    async with SimulatorServer(FAST) as sim:
        async with client(sim.url()) as ws:
            await ws.recv()
            shutdown = asyncio.create_task(sim.server_shutdown(grace=0.2))
            messages, exc = await drain_until_closed(ws)
            await shutdown
        decoded = [json.loads(m) for m in messages]
        notice = next(i for i, m in enumerate(decoded) if isinstance(m, dict) and m.get("e") == "serverShutdown")
        assert any(isinstance(m, list) for m in decoded[notice + 1 :])
        assert exc.rcvd.code == 1001


@async_test
async def test_junk_frames_then_normal_data():
    async with SimulatorServer(FAST) as sim, client(sim.url()) as ws:
        await ws.recv()
        assert await sim.send_junk() == 1
        seen = []
        while len(seen) < len(JUNK_FRAMES):
            message = await ws.recv()
            if message in JUNK_FRAMES:
                seen.append(message)
        assert seen == list(JUNK_FRAMES)
        assert isinstance(await recv_json(ws), list)  # the stream carries on


@async_test
async def test_stall_sends_nothing_but_keeps_answering_pings_until_resume():
    options = SimulatorOptions(interval=0.02, seed=2, ping_interval=0.05, ping_timeout=0.1)
    async with SimulatorServer(options) as sim, client(sim.url()) as ws:
        await ws.recv()
        sim.stall()
        assert sim.stalled
        await asyncio.sleep(0.05)  # let a frame already on the wire land
        while True:
            try:
                await asyncio.wait_for(ws.recv(), 0.01)
            except TimeoutError:
                break
        count = sim.sent_count
        with pytest.raises(TimeoutError):  # several ping timeouts, no data
            await asyncio.wait_for(ws.recv(), 0.4)
        assert sim.sent_count == count
        assert ws.state is State.OPEN and sim.open_connections == 1
        sim.resume()
        assert isinstance(await recv_json(ws), list)


@async_test
async def test_timed_stall_ends_by_itself():
    async with SimulatorServer(FAST) as sim, client(sim.url()) as ws:
        await ws.recv()
        sim.stall(0.3)
        started = time.monotonic()
        count = sim.sent_count
        await sim.wait_until_sent(count + 1 + len(sim.symbols))  # beyond any in-flight frame
        assert time.monotonic() - started >= 0.25
        assert not sim.stalled
        assert ws.state is State.OPEN


@async_test
async def test_scheduled_faults_fire_on_time():
    options = SimulatorOptions(interval=0.02, seed=5, faults=FaultSchedule.parse("junk@0.15,drop@0.3"))
    async with SimulatorServer(options) as sim:
        started = time.monotonic()
        async with client(sim.url()) as ws:
            messages, exc = await drain_until_closed(ws)
        assert 0.25 <= time.monotonic() - started < 2
        assert JUNK_FRAMES[0] in messages and JUNK_FRAMES[1] in messages
        assert exc.rcvd is None  # a drop, not a close


# -- thread wrapper and CLI entry ----------------------------------------------


def test_simulator_thread_serves_and_injects_faults_from_another_thread():
    with SimulatorThread(SimulatorOptions(interval=0.02, seed=9)) as sim:
        assert sim.url().startswith(f"ws://127.0.0.1:{sim.port}/ws/")
        with sync_connect(sim.url(), open_timeout=5) as ws:
            assert isinstance(json.loads(ws.recv(timeout=5)), list)
            sim.wait_until_sent(1)
            snapshot = sim.sent_events
            snapshot.clear()  # a copy: the record itself is untouched
            assert sim.sent_count > 0 and sim.sent_keys()
            sim.stall()
            sim.resume()
            assert sim.send_junk() == 1
            assert sim.drop_connections() == 1
            with pytest.raises(ConnectionClosedError):
                while True:
                    ws.recv(timeout=5)
        sim.wait_for_connections(1)
        assert sim.connections_accepted == 1
        port = sim.port
    with pytest.raises(OSError), sync_connect(f"ws://127.0.0.1:{port}/ws", open_timeout=1):
        pass


def test_simulator_thread_shutdown_from_another_thread():
    with SimulatorThread(SimulatorOptions(interval=0.02, seed=9)) as sim, sync_connect(sim.url(), open_timeout=5) as ws:
        ws.recv(timeout=5)
        assert sim.server_shutdown() == 1
        with pytest.raises(ConnectionClosedOK) as info:
            while True:
                ws.recv(timeout=5)
        assert info.value.rcvd.code == 1001


SERVE_SCRIPT = """
import asyncio
from crypto_live.simulator import SimulatorOptions, serve_forever
asyncio.run(serve_forever(SimulatorOptions(interval=0.05, seed=1)))
print("clean exit", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_forever_announces_url_and_stops_cleanly_on_signal(sig):
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        banner = proc.stdout.readline()
        assert "ws://127.0.0.1:" in banner
        url = proc.stdout.readline().split()[-1]
        with sync_connect(url, open_timeout=5) as ws:
            assert isinstance(json.loads(ws.recv(timeout=5)), list)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "clean exit" in out


@async_test
async def test_serve_forever_stops_on_cancel():
    from crypto_live.simulator import serve_forever

    lines = []
    announced = asyncio.Event()

    def announce(line):
        lines.append(line)
        announced.set()

    task = asyncio.create_task(serve_forever(SimulatorOptions(interval=0.05, seed=1), announce=announce))
    await announced.wait()
    url = lines[1].split()[-1]  # lines are announced synchronously, all at once
    async with client(url) as ws:
        await ws.recv()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(OSError):
        async with client(url, open_timeout=1):
            pass
