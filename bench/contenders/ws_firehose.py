"""A websocket server that pushes Binance ``!miniTicker@arr`` frames as fast as they are read.

    python -m bench.contenders.ws_firehose PORT EVENTS [PER_FRAME]

Every connection gets EVENTS events (bench.stack.market_events, 400 symbols) in frames of
PER_FRAME (400, as Binance's all-market stream), then stays open and quiet. ``send``
waits while the socket's write buffer is full: the reader sets the pace.
"""

from __future__ import annotations

import asyncio
import sys

from websockets.asyncio.server import ServerConnection, serve

from bench.stack import market_events


def frames(events: list[bytes], per_frame: int) -> list[bytes]:
    """JSON arrays of ``per_frame`` events, each event's bytes as they are."""
    return [b"[" + b",".join(events[i : i + per_frame]) + b"]" for i in range(0, len(events), per_frame)]


async def main(port: int, count: int, per_frame: int) -> None:
    payloads = frames(market_events(count, 400), per_frame)

    async def push(ws: ServerConnection) -> None:
        for payload in payloads:
            await ws.send(payload.decode())  # a text frame, as Binance sends
        await ws.wait_closed()

    async with serve(push, "127.0.0.1", port, max_size=None, ping_interval=None):
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 400))
