"""The Binance 24-hour miniTicker event: its fields and a validator. Pure; no I/O.

Binance sends (https://developers.binance.com/docs/binance-spot-api-docs/web-socket-streams)::

    {"e": "24hrMiniTicker", "E": 1672515782136, "s": "BNBBTC",
     "c": "0.0025", "o": "0.0010", "h": "0.0025", "l": "0.0010",
     "v": "10000", "q": "18"}

Prices and volumes are decimal strings and stay strings end to end: nothing here turns
them into floats. :func:`validate` accepts an already parsed object; :func:`decode`
accepts raw bytes. Both return a :class:`MiniTicker` or an :class:`Invalid` carrying the
reason, so callers branch on the type instead of catching exceptions.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson

from crypto_live.binance import SYMBOL
from crypto_live.text import shorten

EVENT_TYPE = "24hrMiniTicker"

#: field -> meaning, in Binance's order.
FIELDS: dict[str, str] = {
    "e": "event type",
    "E": "event time (ms since the epoch)",
    "s": "symbol",
    "c": "close price",
    "o": "open price",
    "h": "high price",
    "l": "low price",
    "v": "total traded base asset volume",
    "q": "total traded quote asset volume",
}
DECIMAL_FIELDS = ("c", "o", "h", "l", "v", "q")

_DECIMAL_PATTERN = r"[0-9]+(?:\.[0-9]+)?"  # ASCII only: \d would match any Unicode digit (Arabic-Indic, full-width…)
_DECIMAL = re.compile(_DECIMAL_PATTERN)
# The six decimal fields joined by NUL, checked by one match. A NUL inside a field adds a
# separator, so the match fails and the field-by-field check names the culprit.
_DECIMALS_JOINED = re.compile(rf"{_DECIMAL_PATTERN}(?:\x00{_DECIMAL_PATTERN}){{{len(DECIMAL_FIELDS) - 1}}}")
_FIELD_NAMES = FIELDS.keys()
# Binance's own layout, compact and in its field order: bytes that match it are a valid
# event (the symbol as SYMBOL, the decimals as _DECIMAL, nothing else in between), so only
# the event time's range is left to check. Groups: the event time, the symbol.
_PLAIN_LAYOUT = re.compile(
    rb'\{"e":"%s","E":([0-9]{13}),"s":"(%s)",%s\}'
    % (
        EVENT_TYPE.encode(),
        SYMBOL.pattern.encode(),
        b",".join(b'"%s":"%s"' % (name.encode(), _DECIMAL_PATTERN.encode()) for name in DECIMAL_FIELDS),
    )
)
# Event times outside [2017-01-01, 2100-01-01) are not milliseconds from this exchange
# (seconds or microseconds would land outside), so they are rejected rather than stored.
_MIN_EVENT_MS = 1_483_228_800_000
_MAX_EVENT_MS = 4_102_444_800_000


@dataclass(frozen=True, slots=True)
class MiniTicker:
    """A valid event. ``fields`` is the event's JSON object exactly as received."""

    fields: dict[str, Any]

    @property
    def symbol(self) -> str:
        symbol: str = self.fields["s"]  # validate() checked it is a str
        return symbol

    @property
    def event_time(self) -> int:
        event_time: int = self.fields["E"]  # validate() checked it is an int
        return event_time

    def to_json(self) -> bytes:
        """The event's own JSON fields, compact, in the order they were received."""
        return orjson.dumps(self.fields)


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a payload is not a miniTicker event; ``reason`` is one human-readable line."""

    reason: str


def validate(obj: object) -> MiniTicker | Invalid:
    """Check a parsed JSON value against the miniTicker contract.

    Every field in :data:`FIELDS` must be present; ``e`` must be ``24hrMiniTicker``;
    ``E`` an integer millisecond time; ``s`` an upper-case symbol; the prices and
    volumes non-negative, finite decimal strings (``"0.00123000"``, not ``1.23e-3``,
    not a JSON number). Extra fields are kept, as Binance may add some.
    """
    if _plainly_valid(obj):
        return MiniTicker(obj)  # type: ignore[arg-type]  # _plainly_valid checked it is a dict
    return _explained(obj)


def _plainly_valid(obj: Any) -> bool:
    """The whole contract of :func:`validate` in one expression, for the common case: no
    reason to build, so a fraction of the cost. False sends the event to :func:`_explained`."""
    try:
        event_time = obj["E"]
        return bool(
            obj.keys() >= _FIELD_NAMES
            and obj["e"] == EVENT_TYPE
            and type(event_time) is int
            and _MIN_EVENT_MS <= event_time < _MAX_EVENT_MS
            and SYMBOL.fullmatch(obj["s"])
            and _DECIMALS_JOINED.fullmatch("\x00".join([obj[name] for name in DECIMAL_FIELDS]))
        )
    except (TypeError, KeyError, AttributeError):  # not a dict, a field missing, not a str
        return False


def _explained(obj: object) -> MiniTicker | Invalid:
    """:func:`validate`, field by field, saying what is wrong."""
    if not isinstance(obj, dict):
        return Invalid(f"expected a JSON object, got {_json_kind(obj)}")
    missing = [name for name in FIELDS if name not in obj]
    if missing:
        return Invalid("missing field" + ("s " if len(missing) > 1 else " ") + ", ".join(map(repr, missing)))
    if obj["e"] != EVENT_TYPE:
        return Invalid(f"field 'e' is {shorten(obj['e'])}, expected {EVENT_TYPE!r}")
    event_time = obj["E"]
    if type(event_time) is not int:
        return Invalid(f"field 'E' is {_json_kind(event_time)} {shorten(event_time)}, expected an integer")
    if not _MIN_EVENT_MS <= event_time < _MAX_EVENT_MS:
        return Invalid(f"field 'E' is {event_time}, not an event time in milliseconds")
    symbol = obj["s"]
    if not isinstance(symbol, str) or not SYMBOL.fullmatch(symbol):
        return Invalid(f"field 's' is {shorten(symbol)}, expected an upper-case symbol such as 'BTCUSDT'")
    for name in DECIMAL_FIELDS:
        value = obj[name]
        if not isinstance(value, str):
            kind = _json_kind(value)
            return Invalid(f"field {name!r} ({FIELDS[name]}) is {kind} {shorten(value)}, expected a decimal string")
        if not _DECIMAL.fullmatch(value):
            return Invalid(f"field {name!r} ({FIELDS[name]}) is {shorten(value)}, expected a finite decimal string")
    return MiniTicker(obj)


def plain_event_time(raw: bytes) -> int | None:
    """The event time of ``raw`` if it is a valid event in Binance's compact layout, which
    the bytes alone prove; None otherwise (not the layout, or not valid: :func:`decode` it).

    A third of the cost of parsing and validating, for what Binance sends (see the
    module docstring): the sinks check every event with it first.
    """
    match = _PLAIN_LAYOUT.fullmatch(raw)
    if match is None:
        return None
    event_time = int(match[1])
    return event_time if _MIN_EVENT_MS <= event_time < _MAX_EVENT_MS else None


#: Why a Kafka message without a value (a tombstone) is not an event.
NO_VALUE = "message has no value"


def decode(raw: bytes | str | None) -> MiniTicker | Invalid:
    """Parse one JSON-encoded event and validate it (None: a Kafka message without a value)."""
    if raw is None:
        return Invalid(NO_VALUE)
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Invalid(f"not JSON: {exc}")
    return validate(obj)


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a number"
    if isinstance(value, float):
        return "a number" if math.isfinite(value) else "a non-finite number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# An item in _PLAIN_LAYOUT, then the comma after it or the array's closing bracket at its
# end: matches that cover an array's bytes end to end tile it. Groups: the item, then
# _PLAIN_LAYOUT's (the event time, the symbol).
_PLAIN_ITEM = re.compile(rb"(%s)(?:,|\]\Z)" % _PLAIN_LAYOUT.pattern)


def plain_array_events(data: bytes, start: int = 0, end: int | None = None) -> list[tuple[bytes, bytes, int]] | None:
    """``(raw, symbol, event time)`` of every item of the JSON array ``data[start:end]`` when
    each is a valid event in Binance's compact layout (see :func:`plain_event_time`) and the
    items, joined by single commas, make up the whole array; None otherwise: parse it and
    :func:`validate` each item. ``raw`` is the item's bytes, ``symbol`` its ``s`` (ASCII).

    What ``!miniTicker@arr`` sends, proven valid by the bytes alone: no JSON parsed, no
    object built, and the events published as the bytes Binance sent.
    """
    end = len(data) if end is None else end
    if end - start < 2 or data[start] != ord("["):
        return None
    found: list[tuple[bytes, bytes, bytes]] = _PLAIN_ITEM.findall(data, start + 1, end)
    # Matches never overlap, so lengths that add up to the array's mean no byte was skipped.
    if not found or sum(map(len, map(itemgetter(0), found))) + len(found) + 1 != end - start:
        return None
    events = [(raw, symbol, int(event_time)) for raw, event_time, symbol in found]
    times = list(map(itemgetter(2), events))
    if min(times) < _MIN_EVENT_MS or max(times) >= _MAX_EVENT_MS:
        return None
    return events
