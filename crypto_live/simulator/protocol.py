"""Pure Binance market-stream protocol: paths, control messages, limits, frames.

Nothing here does I/O; the server shell feeds in request paths, incoming text
frames and a monotonic ``now`` and gets back values telling it what to send.

Forms accepted, after Binance's "WebSocket Streams" spot docs (binance-spot-api-docs
web-socket-streams.md and CHANGELOG.md, 2026-07) and the clients that use them; the
names, speeds and limits themselves come from :mod:`crypto_live.binance`:

* Endpoints: Binance serves the same paths on stream.binance.com:9443 and :443 and on
  data-stream.binance.vision; the simulator serves them on its one host and port.
* ``/ws`` or ``/ws/`` (no stream: subscribe later), ``/ws/<stream>[/<stream>...]`` (raw
  payloads; python-binance and binance-connector open ``/ws/<stream>``), and
  ``/stream?streams=<a>[/<b>...]`` (payloads wrapped as ``{"stream": name, "data": payload}``;
  a single stream is fine, the connector's ``is_combined=True`` opens ``/stream`` bare).
  A trailing ``/`` is ignored; other query parameters are ignored.
* URL-encoded forms (changelog 2025-12-02: "supports URL-encoded urls"): the path and the
  ``streams`` value are percent-decoded before they are split, so ``%21miniTicker%40arr`` and
  ``a%2Fb`` mean ``!miniTicker@arr`` and ``a/b``.
* ``timeUnit`` = ``MILLISECOND``, ``millisecond``, ``MICROSECOND`` or ``microsecond``
  (changelog 2024-12-17) on either route; with microseconds the event time ``E`` is in us.
  Any other value is refused with 400 (the docs list only these four).
* Stream names (case-sensitive, as Binance's are):
  ``!miniTicker@arr`` and ``<symbol>@miniTicker`` (1000 ms); ``!miniTicker@arr@<speed>ms``,
  served at 1000 and 3000 ms (python-binance's ``miniticker_socket`` sends
  ``!miniTicker@arr@1000ms``).  Binance accepts, and then never feeds, names it does not
  trade: an unknown or upper-case symbol (``BTCUSDT@miniTicker``: "no error occurs and the
  stream is opened", binance-connector-java #24; Binance.Net #620) or another speed
  (``@5000ms``, python-binance #267).  So does the simulator: such a stream is listed, never fed.
* Refused: any other stream name (another stream type, wrong-case ``@miniticker``, a name with
  spaces or an empty ``//`` segment) with 400 at the handshake, and in ``SUBSCRIBE`` /
  ``UNSUBSCRIBE`` with Binance's ``{"code": 2, "msg": "Invalid request: invalid stream"}``
  (as reported by ccxt #19833); a path other than ``/ws...`` or ``/stream`` with 400
  ``Invalid request path`` (what stream.binance.com answers for ``/``); more than
  ``MAX_STREAMS_PER_CONNECTION`` streams with 400.  The handshake texts are ours: Binance
  documents no body.  The server answers the HTTP upgrade with ``HandshakeError.status``.
* ``handle_message`` answers ``SUBSCRIBE``, ``UNSUBSCRIBE``,
  ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY`` and ``GET_PROPERTY`` (``combined``)
  with ``{"result": ..., "id": ...}``, and malformed requests with
  ``{"error": {"code": 2 | 3, "msg": ...}, "id": ...}`` (code 3: invalid JSON).
* Limits: more than ``MAX_MESSAGES_PER_SECOND`` incoming messages in any
  one-second window, or subscribing past ``MAX_STREAMS_PER_CONNECTION``, yields a ``Close``
  (Binance disconnects; it does not answer with an error).
* One simulator tick stands for Binance's 1000 ms update: the ``@3000ms`` all-market stream gets a
  frame every third tick, with each symbol's latest event of those three ticks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from crypto_live.binance import (
    ALL_MARKET_SPEEDS_MS,
    ALL_MARKET_STREAM,
    MAX_MESSAGES_PER_SECOND,
    MAX_STREAMS_PER_CONNECTION,
    MINI_TICKER_UPDATE_MS,
    STREAM_SUFFIX,
    TIME_UNITS,
    stream_name,
)
from crypto_live.errors import HandshakeError

RATE_WINDOW = 1.0  # seconds: the window MAX_MESSAGES_PER_SECOND is counted over
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
POLICY_VIOLATION = 1008  # RFC 6455 close code for "you broke the rules"
GOING_AWAY = 1001  # RFC 6455 close code for a server going down
INVALID_STREAM = "Invalid request: invalid stream"  # Binance's SUBSCRIBE error text

# A symbol as a stream name may carry it: Binance lists symbols in any case and, since
# 2025-12, in UTF-8; it refuses none at connect time.  Only the separators are excluded.
_SYMBOL_STREAM = re.compile(r"[^\s@/!?&#]+" + re.escape(STREAM_SUFFIX))
_ALL_MARKET_AT_SPEED = re.compile(re.escape(ALL_MARKET_STREAM) + r"@([0-9]+)ms")


@dataclass(frozen=True, slots=True)
class Session:
    """Per-connection protocol state; replaced, never mutated."""

    streams: tuple[str, ...] = ()  # in subscription order, no duplicates
    combined: bool = False
    time_factor: int = 1  # timestamps in ms times this: 1000 for timeUnit=MICROSECOND
    recent: tuple[float, ...] = ()  # arrival times of messages inside the rate window


@dataclass(frozen=True, slots=True)
class Close:
    """The server must close the connection with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """What handling one incoming message produced."""

    session: Session
    reply: dict[str, Any] | None = None
    close: Close | None = None


@dataclass(frozen=True, slots=True)
class Frame:
    """One outgoing text frame and the market events it carries."""

    text: str
    events: tuple[dict[str, Any], ...] = field(default=())


def encode(obj: Any) -> str:
    """Compact JSON as Binance sends it (no spaces)."""
    return orjson.dumps(obj).decode()


def is_valid_stream(name: str) -> bool:
    """Whether Binance accepts ``name`` as a miniTicker stream (fed or not, see the module doc)."""
    return (
        name == ALL_MARKET_STREAM
        or _ALL_MARKET_AT_SPEED.fullmatch(name) is not None
        or _SYMBOL_STREAM.fullmatch(name) is not None
    )


def ticks_per_update(name: str) -> int | None:
    """How many market ticks (1000 ms each) apart the all-market stream ``name`` is fed; else None."""
    if name == ALL_MARKET_STREAM:
        return 1
    match = _ALL_MARKET_AT_SPEED.fullmatch(name)
    if match is None or int(match[1]) not in ALL_MARKET_SPEEDS_MS:
        return None
    return int(match[1]) // MINI_TICKER_UPDATE_MS


def _dedupe(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def parse_path(path: str) -> Session:
    """The initial session for an upgrade request to ``path`` (may include a query)."""
    parts = urlsplit(path)
    query = parse_qs(parts.query, keep_blank_values=True)
    route = unquote(parts.path).rstrip("/") or "/"
    if route == "/ws":
        names: list[str] = []
        combined = False
    elif route.startswith("/ws/"):
        names = route[len("/ws/") :].split("/")
        combined = False
    elif route == "/stream":
        value = query.get("streams", [""])[-1]
        names = [n for n in value.split("/") if n] if value else []
        combined = True
    else:
        raise HandshakeError(400, "Invalid request path")
    for name in names:
        if not is_valid_stream(name):
            raise HandshakeError(400, f"Invalid stream name: {name!r}")
    streams = _dedupe(names)
    if len(streams) > MAX_STREAMS_PER_CONNECTION:
        raise HandshakeError(400, f"Too many streams: {len(streams)} > {MAX_STREAMS_PER_CONNECTION}")
    unit = query.get("timeUnit", ["MILLISECOND"])[-1]
    if unit not in TIME_UNITS:
        raise HandshakeError(400, f"Invalid timeUnit: {unit!r} (expected one of {', '.join(TIME_UNITS)})")
    return Session(streams=streams, combined=combined, time_factor=TIME_UNITS[unit])


def admit(recent: tuple[float, ...], now: float) -> tuple[tuple[float, ...], bool]:
    """Sliding-window rate limit: record a message at ``now``; False if over the limit."""
    kept = tuple(t for t in recent if now - t < RATE_WINDOW) + (now,)
    return kept, len(kept) <= MAX_MESSAGES_PER_SECOND


def error(code: int, msg: str, request_id: Any = None) -> dict[str, Any]:
    """A Binance-style error reply."""
    return {"error": {"code": code, "msg": msg}, "id": request_id}


def _valid_id(value: Any) -> bool:
    # Binance accepts a 64-bit signed int, an alphanumeric string of <= 36 chars, or null.
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, str) and len(value) <= 36 and value.isascii() and value.isalnum()


def _decode(message: str | bytes) -> tuple[Any, dict[str, Any] | None]:
    """Parse JSON; on failure return a code-3 error shaped like Binance's."""
    try:
        return orjson.loads(message), None
    except orjson.JSONDecodeError as exc:
        where = f"at line {exc.lineno} column {exc.colno}"
        return None, error(3, f"Invalid JSON: expected value {where}")


def handle_message(session: Session, message: str | bytes, now: float) -> Outcome:
    """Apply one incoming websocket message received at monotonic time ``now``."""
    recent, allowed = admit(session.recent, now)
    session = replace(session, recent=recent)
    if not allowed:
        return Outcome(session, close=Close(POLICY_VIOLATION, "Too many requests"))
    request, bad_json = _decode(message)
    if bad_json is not None:
        return Outcome(session, reply=bad_json)
    if not isinstance(request, dict):
        return Outcome(session, reply=error(2, "Invalid request: expected a JSON object"))
    request_id = request.get("id")
    if "id" not in request or not _valid_id(request_id):
        msg = "Invalid request: request ID must be an unsigned integer"
        return Outcome(session, reply=error(2, msg, request_id if _valid_id(request_id) else None))
    method = request.get("method")
    if "method" not in request:
        return Outcome(session, reply=error(2, "Invalid request: missing field `method`", request_id))
    if method not in METHODS:
        expected = ", ".join(f"`{m}`" for m in METHODS)
        msg = f"Invalid request: unknown variant `{method}`, expected one of {expected}"
        return Outcome(session, reply=error(2, msg, request_id))
    params = request.get("params", [])
    if not isinstance(params, list):
        return Outcome(session, reply=error(2, "Invalid request: params must be an array", request_id))
    if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
        return _change_streams(session, method, params, request_id)
    if method == "LIST_SUBSCRIPTIONS":
        if params:
            return Outcome(session, reply=error(2, "Invalid request: too many parameters", request_id))
        return Outcome(session, reply={"result": list(session.streams), "id": request_id})
    return _property(session, method, params, request_id)


def _change_streams(session: Session, method: str, params: list[Any], request_id: Any) -> Outcome:
    if not all(isinstance(name, str) and is_valid_stream(name) for name in params):
        return Outcome(session, reply=error(2, INVALID_STREAM, request_id))
    if method == "SUBSCRIBE":
        streams = _dedupe((*session.streams, *params))
        if len(streams) > MAX_STREAMS_PER_CONNECTION:
            return Outcome(session, close=Close(POLICY_VIOLATION, "Too many streams"))
    else:
        removed = set(params)
        streams = tuple(s for s in session.streams if s not in removed)
    return Outcome(replace(session, streams=streams), reply={"result": None, "id": request_id})


def _property(session: Session, method: str, params: list[Any], request_id: Any) -> Outcome:
    expected_len = 2 if method == "SET_PROPERTY" else 1
    if len(params) > expected_len:
        return Outcome(session, reply=error(2, "Invalid request: too many parameters", request_id))
    if not params or not isinstance(params[0], str):
        msg = "Invalid request: property name must be a string"
        return Outcome(session, reply=error(2, msg, request_id))
    if params[0] != "combined":
        return Outcome(session, reply=error(0, "Unknown property", request_id))
    if method == "GET_PROPERTY":
        return Outcome(session, reply={"result": session.combined, "id": request_id})
    value = params[1] if len(params) == 2 else None
    if not isinstance(value, bool):
        msg = "Invalid value type: expected Boolean"
        return Outcome(session, reply=error(1, msg, request_id))
    return Outcome(replace(session, combined=value), reply={"result": None, "id": request_id})


def server_shutdown_event(now_ms: int) -> dict[str, Any]:
    """The event Binance sends before it disconnects everyone for maintenance."""
    return {"e": "serverShutdown", "E": now_ms}


class TickFrames:
    """The frames of one market tick, rendered lazily and shared by all connections.

    ``history`` holds the events of the ticks before this one, oldest first (the
    ``@3000ms`` stream needs the last two); ``number`` counts ticks from 1.  Rendering is
    memoised per (stream, combined, time factor) so N connections on the same stream cost
    one JSON encoding.  ``Frame.events`` are the market's events, in milliseconds whatever
    the connection's time unit; they are not copied: do not mutate them.
    """

    def __init__(
        self,
        events: Sequence[dict[str, Any]],
        number: int = 1,
        history: Sequence[Sequence[dict[str, Any]]] = (),
    ) -> None:
        self.events = tuple(events)
        self.number = number
        self.history = tuple(tuple(tick) for tick in history)
        self._by_stream = {stream_name(e["s"]): e for e in self.events}
        self._cache: dict[tuple[str, bool, int], Frame | None] = {}

    def frame(self, stream: str, combined: bool, time_factor: int = 1) -> Frame | None:
        """The frame for one stream, or None when the tick has nothing for it."""
        key = (stream, combined, time_factor)
        if key not in self._cache:
            self._cache[key] = self._render(stream, combined, time_factor)
        return self._cache[key]

    def frames_for(self, session: Session) -> tuple[Frame, ...]:
        """Frames for a connection's subscriptions, in subscription order."""
        frames = (self.frame(s, session.combined, session.time_factor) for s in session.streams)
        return tuple(f for f in frames if f is not None)

    def _all_market(self, ticks: int) -> tuple[dict[str, Any], ...]:
        """Each symbol's latest event over the last ``ticks`` ticks, on every ``ticks``-th tick."""
        if ticks == 1:
            return self.events
        if self.number % ticks:
            return ()
        window = (*self.history[-(ticks - 1) :], self.events)
        return tuple({e["s"]: e for tick in window for e in tick}.values())

    def _render(self, stream: str, combined: bool, time_factor: int) -> Frame | None:
        ticks = ticks_per_update(stream)
        if ticks is not None:
            carried = self._all_market(ticks)
            if not carried:
                return None
            payload: Any = [_in_unit(e, time_factor) for e in carried]
        else:
            event = self._by_stream.get(stream)
            if event is None:
                return None
            payload, carried = _in_unit(event, time_factor), (event,)
        if combined:
            payload = {"stream": stream, "data": payload}
        return Frame(encode(payload), carried)


def _in_unit(event: dict[str, Any], time_factor: int) -> dict[str, Any]:
    # miniTicker events carry one timestamp, the event time ``E``.
    return event if time_factor == 1 else {**event, "E": event["E"] * time_factor}
