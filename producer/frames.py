"""What one websocket frame from Binance holds. Pure; no I/O.

A market-stream frame is one of:

* a raw payload: an event object ``{"e": "24hrMiniTicker", ...}`` or an array of them
  (``!miniTicker@arr``);
* a combined-stream payload ``{"stream": "<name>", "data": <raw payload>}``;
* an answer to a control message: ``{"result": ..., "id": ...}`` or
  ``{"error": {"code": ..., "msg": ...}, "id": ...}``;
* ``{"e": "serverShutdown", "E": ...}``: the server is about to close; reconnect now;
* anything else, including text that is not JSON.

:func:`parse_frame` sorts a frame's items into valid events (published), rejected
items (dead-lettered with the reason and their bytes), control answers (counted,
errors logged) and the serverShutdown signal. It never raises on bad input.

An array of events in Binance's compact layout (what ``!miniTicker@arr`` sends, raw or
in the combined-stream wrapper) is proven valid by its bytes alone
(:func:`~crypto_live.event.plain_array_events`) and its events published as those
bytes; any other frame is parsed and each item validated, which gives every rejected
item its reason. Both ways give the same events, as the tests check.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from crypto_live.event import MiniTicker, plain_array_events, validate

SERVER_SHUTDOWN = "serverShutdown"

#: A valid event as its Kafka message: (value, key, timestamp) = (the event's JSON bytes,
#: its symbol in UTF-8, its event time E in ms).
Event = tuple[bytes, bytes, int]

# The combined-stream wrapper, compact, its stream name a JSON string without escapes
# (printable ASCII but quote and backslash): its "data" runs from the match's end to the
# closing brace.
_PLAIN_COMBINED = re.compile(rb'\{"stream":"[\x20\x21\x23-\x5b\x5d-\x7e]*","data":')


@dataclass(frozen=True, slots=True)
class Rejected:
    """An item that is not a valid event: ``raw`` is what goes to the dead-letter topic.

    When the item is the whole frame, ``raw`` is the frame's bytes exactly as received;
    an item taken out of an array is its JSON re-encoded compactly (field order and
    string values kept), and ``reason`` says which item of how many it was.
    """

    reason: str
    raw: bytes


@dataclass(frozen=True, slots=True)
class Frame:
    """Everything one frame carried, sorted by what the producer does with it."""

    events: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    answers: list[dict[str, Any]] = field(default_factory=list)
    not_json: bool = False
    server_shutdown: bool = False


def parse_frame(raw: bytes | str) -> Frame:
    """Parse one websocket text (or binary) frame; see the module docstring."""
    # surrogatepass: text holding a lone surrogate becomes bytes that are not UTF-8, which
    # the JSON parser then rejects, instead of raising here.
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    plain = plain_frame_events(data)
    return Frame(events=plain) if plain is not None else parse_json_frame(data)


def parse_json_frame(data: bytes) -> Frame:
    """:func:`parse_frame` the slow way, for any frame: parse the JSON, then validate each
    item, which says why each rejected one is not a valid event."""
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        return Frame(rejected=[Rejected(f"not JSON: {exc}", data)], not_json=True)
    if is_answer(payload):
        return Frame(answers=[payload])
    stream = None
    if isinstance(payload, dict) and "stream" in payload and "data" in payload:
        stream, payload = payload["stream"], payload["data"]
    where = f" (stream {stream!r})" if isinstance(stream, str) else ""
    # An array's items are rejected alone (re-encoded, with their position); a single
    # object keeps the frame's own bytes.
    items, whole = (payload, None) if isinstance(payload, list) else ([payload], data)
    events: list[Event] = []
    rejected: list[Rejected] = []
    shutdown = False
    for position, item in enumerate(items, start=1):
        result = validate(item)
        if isinstance(result, MiniTicker):
            events.append((result.to_json(), result.symbol.encode(), result.event_time))
        elif isinstance(item, dict) and item.get("e") == SERVER_SHUTDOWN:
            shutdown = True  # never a valid event, hence checked only for the invalid ones
        else:
            if whole is None:
                prefix, raw_item = f"item {position} of {len(items)}{where}: ", orjson.dumps(item)
            else:
                prefix, raw_item = (f"{where.strip()}: " if where else ""), whole
            rejected.append(Rejected(prefix + result.reason, raw_item))
    return Frame(events=events, rejected=rejected, server_shutdown=shutdown)


def plain_frame_events(data: bytes) -> list[Event] | None:
    """The events of a frame that is an array of valid events in Binance's compact layout,
    raw or in the compact combined-stream wrapper; None for any other frame (then
    :func:`parse_frame` parses it)."""
    start, end = 0, len(data)
    wrapper = _PLAIN_COMBINED.match(data)
    if wrapper is not None:
        if not data.endswith(b"}"):
            return None
        start, end = wrapper.end(), end - 1
    return plain_array_events(data, start, end)


def is_answer(obj: object) -> bool:
    """Whether ``obj`` is a reply to a SUBSCRIBE/UNSUBSCRIBE/... control message."""
    return isinstance(obj, dict) and "id" in obj and ("result" in obj or "error" in obj) and "e" not in obj
