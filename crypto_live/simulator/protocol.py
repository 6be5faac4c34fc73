"""Pure Binance market-stream protocol: paths, control messages, limits, frames.

Nothing here does I/O; the server shell feeds in request paths, incoming text
frames and a monotonic ``now`` and gets back values telling it what to send.

Contracts (after Binance's "WebSocket Streams" spot docs; the names and limits
themselves come from :mod:`crypto_live.binance`, shared with the producer):

* ``parse_path`` accepts ``/ws``, ``/ws/<stream>[/<stream>...]`` (raw payloads)
  and ``/stream?streams=<a>/<b>`` (payloads wrapped as
  ``{"stream": name, "data": payload}``).  A bad path raises ``HandshakeError``
  with status 404, a bad stream name or more than ``MAX_STREAMS_PER_CONNECTION`` streams raises
  it with 400; the server answers the HTTP upgrade with that status.
* Supported streams: ``!miniTicker@arr`` and ``<lowercase symbol>@miniTicker``.
* ``handle_message`` answers ``SUBSCRIBE``, ``UNSUBSCRIBE``,
  ``LIST_SUBSCRIPTIONS``, ``SET_PROPERTY`` and ``GET_PROPERTY`` (``combined``)
  with ``{"result": ..., "id": ...}``, and malformed requests with
  ``{"error": {"code": 2 | 3, "msg": ...}, "id": ...}`` (code 3: invalid JSON).
* Limits: more than ``MAX_MESSAGES_PER_SECOND`` incoming messages in any
  one-second window, or subscribing past ``MAX_STREAMS_PER_CONNECTION``, yields a ``Close``
  (Binance disconnects; it does not answer with an error).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from crypto_live.binance import (
    ALL_MARKET_STREAM,
    MAX_MESSAGES_PER_SECOND,
    MAX_STREAMS_PER_CONNECTION,
    STREAM_SUFFIX,
    stream_name,
)
from crypto_live.errors import HandshakeError

RATE_WINDOW = 1.0  # seconds: the window MAX_MESSAGES_PER_SECOND is counted over
METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
POLICY_VIOLATION = 1008  # RFC 6455 close code for "you broke the rules"
GOING_AWAY = 1001  # RFC 6455 close code for a server going down


@dataclass(frozen=True, slots=True)
class Session:
    """Per-connection protocol state; replaced, never mutated."""

    streams: tuple[str, ...] = ()  # in subscription order, no duplicates
    combined: bool = False
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


def is_valid_stream(name: str, symbols: Set[str]) -> bool:
    """Whether ``name`` is a stream this simulator serves; ``symbols`` are uppercase."""
    if name == ALL_MARKET_STREAM:
        return True
    if not name.endswith(STREAM_SUFFIX):
        return False
    symbol = name[: -len(STREAM_SUFFIX)]
    # Binance stream names use lowercase symbols only.
    return symbol == symbol.lower() and symbol.upper() in symbols


def _dedupe(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def parse_path(path: str, symbols: Set[str]) -> Session:
    """The initial session for an upgrade request to ``path`` (may include a query)."""
    parts = urlsplit(path)
    route = parts.path.rstrip("/") or "/"
    if route == "/ws":
        names: list[str] = []
        combined = False
    elif route.startswith("/ws/"):
        names = [unquote(n) for n in route[len("/ws/") :].split("/")]
        combined = False
    elif route == "/stream":
        values = parse_qs(parts.query, keep_blank_values=True).get("streams", [""])
        names = [n for n in values[-1].split("/") if n] if values[-1] else []
        combined = True
    else:
        raise HandshakeError(404, f"Not Found: {parts.path}")
    for name in names:
        if not is_valid_stream(name, symbols):
            raise HandshakeError(400, f"Invalid stream name: {name!r}")
    streams = _dedupe(names)
    if len(streams) > MAX_STREAMS_PER_CONNECTION:
        raise HandshakeError(400, f"Too many streams: {len(streams)} > {MAX_STREAMS_PER_CONNECTION}")
    return Session(streams=streams, combined=combined)


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


def handle_message(session: Session, message: str | bytes, now: float, symbols: Set[str]) -> Outcome:
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
        return _change_streams(session, method, params, request_id, symbols)
    if method == "LIST_SUBSCRIPTIONS":
        if params:
            return Outcome(session, reply=error(2, "Invalid request: too many parameters", request_id))
        return Outcome(session, reply={"result": list(session.streams), "id": request_id})
    return _property(session, method, params, request_id)


def _change_streams(session: Session, method: str, params: list[Any], request_id: Any, symbols: Set[str]) -> Outcome:
    for name in params:
        if not isinstance(name, str) or not is_valid_stream(name, symbols):
            msg = f"Invalid request: invalid stream name {orjson.dumps(name).decode()}"
            return Outcome(session, reply=error(2, msg, request_id))
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

    Rendering is memoised per (stream, combined) so N connections on the same
    stream cost one JSON encoding.  Events are not copied; do not mutate them.
    """

    def __init__(self, events: Sequence[dict[str, Any]]) -> None:
        self.events = tuple(events)
        self._by_stream = {stream_name(e["s"]): e for e in self.events}
        self._cache: dict[tuple[str, bool], Frame | None] = {}

    def frame(self, stream: str, combined: bool) -> Frame | None:
        """The frame for one stream, or None when the tick has nothing for it."""
        key = (stream, combined)
        if key not in self._cache:
            self._cache[key] = self._render(stream, combined)
        return self._cache[key]

    def frames_for(self, session: Session) -> tuple[Frame, ...]:
        """Frames for a connection's subscriptions, in subscription order."""
        frames = (self.frame(s, session.combined) for s in session.streams)
        return tuple(f for f in frames if f is not None)

    def _render(self, stream: str, combined: bool) -> Frame | None:
        if stream == ALL_MARKET_STREAM:
            if not self.events:
                return None
            payload: Any = list(self.events)
            carried = self.events
        else:
            event = self._by_stream.get(stream)
            if event is None:
                return None
            payload, carried = event, (event,)
        if combined:
            payload = {"stream": stream, "data": payload}
        return Frame(encode(payload), carried)
