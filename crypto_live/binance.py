"""Binance's spot market-stream protocol, as the producer and the simulator both need it.

One copy of the exchange's names and limits
(https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams):

* the all-market stream ``!miniTicker@arr`` and per-symbol ``<symbol>@miniTicker``;
* at most 1024 streams per connection, 5 incoming messages a second per connection,
  300 connection attempts per 5 minutes per IP, connections cut at 24 hours.
"""

from __future__ import annotations

import re

LIVE_URL = "wss://stream.binance.com:9443/ws/!miniTicker@arr"
ALL_MARKET_STREAM = "!miniTicker@arr"
STREAM_SUFFIX = "@miniTicker"

#: A trading symbol as events carry it: upper-case letters and digits.
SYMBOL = re.compile(r"[A-Z0-9]{2,32}")

#: "A single connection can listen to a maximum of 1024 streams."
MAX_STREAMS_PER_CONNECTION = 1024
#: Incoming messages (control frames, pings, pongs) a connection may send each second.
MAX_MESSAGES_PER_SECOND = 5
#: Connection attempts allowed per IP in CONNECTION_WINDOW seconds.
CONNECTION_ATTEMPTS_PER_WINDOW = 300
CONNECTION_WINDOW = 300.0
#: Binance closes every connection after 24 hours.
MAX_CONNECTION_AGE = 24 * 3600.0


def stream_name(symbol: str) -> str:
    """``BTCUSDT`` -> ``btcusdt@miniTicker`` (stream names are lower-case)."""
    return symbol.lower() + STREAM_SUFFIX
