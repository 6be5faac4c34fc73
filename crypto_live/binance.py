"""Binance's spot market-stream protocol, as the producer and the simulator both need it.

One copy of the exchange's names and limits
(https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams):

* the all-market stream ``!miniTicker@arr`` and per-symbol ``<symbol>@miniTicker``, both
  updated every 1000 ms; the all-market stream also at ``!miniTicker@arr@<speed>ms``;
* ``timeUnit=MILLISECOND|MICROSECOND`` (either case) in the URL selects the unit of timestamps;
* at most 1024 streams per connection, 5 incoming messages a second per connection,
  300 connection attempts per 5 minutes per IP, connections cut at 24 hours.
"""

from __future__ import annotations

import re

LIVE_URL = "wss://stream.binance.com:9443/ws/!miniTicker@arr"
ALL_MARKET_STREAM = "!miniTicker@arr"
STREAM_SUFFIX = "@miniTicker"

#: Update speeds the all-market stream is served at as ``!miniTicker@arr@<speed>ms``.  Not in
#: Binance's docs, but python-binance's ``miniticker_socket(update_time=1000)`` asks for one and
#: much public code for ``@3000ms``; other speeds connect and get nothing (python-binance #267).
ALL_MARKET_SPEEDS_MS = (1000, 3000)
#: The documented update speed of both miniTicker streams.
MINI_TICKER_UPDATE_MS = 1000

#: ``timeUnit`` URL values (changelog 2024-12-17) -> factor from milliseconds.
TIME_UNITS = {"MILLISECOND": 1, "millisecond": 1, "MICROSECOND": 1000, "microsecond": 1000}

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
