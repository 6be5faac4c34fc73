"""Real Binance client libraries, pointed at the simulator on 127.0.0.1, receive miniTicker events.

python-binance opens ``/ws/!miniTicker@arr@1000ms`` and ``/ws/<symbol>@miniTicker``;
binance-connector opens ``/ws`` (``/stream`` when combined) and sends ``SUBSCRIBE``.
binance-sdk-spot is not here: every release pins pydantic or websockets against constraints.txt.
Both packages install into the ``binance`` namespace, so each is imported from its own modules.
"""

import asyncio
import json
import queue

from binance.async_client import AsyncClient
from binance.websocket.spot.websocket_stream import SpotWebsocketStreamClient
from binance.ws.streams import BinanceSocketManager

from crypto_live.simulator import SimulatorOptions, SimulatorServer, SimulatorThread

FAST = SimulatorOptions(interval=0.02, seed=11)
TIMEOUT = 5.0


def is_mini_ticker(event, symbol=None):
    return event["e"] == "24hrMiniTicker" and (symbol is None or event["s"] == symbol)


async def python_binance_receives(open_socket):
    async with SimulatorServer(FAST) as sim:
        client = AsyncClient()  # no REST call: only the stream manager is used
        try:
            manager = BinanceSocketManager(client)
            manager.STREAM_URL = sim.base_url + "/"  # the library appends ws/<stream>
            async with open_socket(manager) as socket:
                return await asyncio.wait_for(socket.recv(), TIMEOUT)
        finally:
            await client.close_connection()


def test_python_binance_all_market_stream():
    message = asyncio.run(python_binance_receives(lambda m: m.miniticker_socket()))
    assert isinstance(message, list) and message
    assert all(is_mini_ticker(e) for e in message)


def test_python_binance_symbol_stream():
    message = asyncio.run(python_binance_receives(lambda m: m.symbol_miniticker_socket("ETHUSDT")))
    assert is_mini_ticker(message, "ETHUSDT")


def test_python_binance_multiplex_socket():
    streams = ["btcusdt@miniTicker", "!miniTicker@arr"]
    message = asyncio.run(python_binance_receives(lambda m: m.multiplex_socket(streams)))
    assert message["stream"] in streams


def connector_receives(subscribe, *, is_combined=False):
    """Frames a binance-connector client gets after ``subscribe(client)``, until one is market data."""
    frames: queue.Queue[dict] = queue.Queue()
    with SimulatorThread(FAST) as sim:
        client = SpotWebsocketStreamClient(
            stream_url=sim.base_url,
            on_message=lambda _ws, text: frames.put(json.loads(text)),
            is_combined=is_combined,
            time_unit="MICROSECOND",
        )
        try:
            subscribe(client)
            replies = []
            while True:
                frame = frames.get(timeout=TIMEOUT)
                if isinstance(frame, dict) and "result" in frame:
                    replies.append(frame)
                    continue
                return replies, frame
        finally:
            client.stop()
            # stop() ends the closing handshake but leaves the TCP connection open, which would
            # hold the simulator's shutdown for its 10 s close timeout; close it as a process exit would.
            client.socket_manager.ws.shutdown()


def test_binance_connector_all_market_stream():
    replies, frame = connector_receives(lambda c: c.mini_ticker(id=1))
    assert replies == [{"result": None, "id": 1}]
    assert isinstance(frame, list) and all(is_mini_ticker(e) for e in frame)
    assert all(e["E"] > 10**15 for e in frame)  # time_unit="MICROSECOND": event times in microseconds


def test_binance_connector_symbol_stream_combined():
    replies, frame = connector_receives(lambda c: c.mini_ticker(symbol="BTCUSDT", id=2), is_combined=True)
    assert replies == [{"result": None, "id": 2}]
    assert frame["stream"] == "btcusdt@miniTicker"
    assert is_mini_ticker(frame["data"], "BTCUSDT")
