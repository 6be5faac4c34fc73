"""The DynamoDB rows: one per event, and everything about writing them that needs no I/O.

One row per event, in the low-level client's typed form::

    {"symbol": {"S": "BTCUSDT"}, "event_time": {"N": "1700000000123"},
     "close": {"N": "0.00250000"}, "open": …, "high": …, "low": …,
     "base_volume": {"N": …}, "quote_volume": {"N": …},
     "event_type": {"S": "24hrMiniTicker"}, "ttl": {"N": "1700086400"}}

Key: partition ``symbol`` (S), sort ``event_time`` (N, the event's ``E`` in ms); the table
itself is defined in :mod:`crypto_live.dynamo_table`.
Prices and volumes travel as Binance's own decimal strings, never through float.
``ttl`` = ``E // 1000 + days × 86400``: it derives from the event, not the clock, so
writing the same event twice writes the same row (replays are no-ops).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from crypto_live.dynamo_table import PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE
from crypto_live.event import FIELDS
from crypto_live.text import shorten

#: event field -> attribute holding it as a DynamoDB Number.
NUMBER_ATTRIBUTES = {"c": "close", "o": "open", "h": "high", "l": "low", "v": "base_volume", "q": "quote_volume"}
SECONDS_PER_DAY = 86_400
#: BatchWriteItem accepts at most this many requests.
MAX_BATCH_WRITE = 25

# DynamoDB numbers: at most 38 significant digits, magnitude 1E-130 <= |x| < 1E+126.
_MAX_DIGITS = 38
_MIN_ADJUSTED_EXPONENT = -130
_MAX_ADJUSTED_EXPONENT = 125

#: A plain decimal such as Binance sends ("0.00250000", "18"). One of at most 38 characters
#: has at most 38 digits and lies between 1E-37 and 1E+38: DynamoDB holds it as written.
_PLAIN_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
_MAX_PLAIN_LENGTH = 38

Item = dict[str, dict[str, str]]


def ttl_seconds(event_time_ms: int, days: int) -> int:
    """Epoch second the row expires: event time (s) + ``days`` days."""
    return event_time_ms // 1000 + days * SECONDS_PER_DAY


def dynamo_number(text: str) -> str:
    """``text`` as a DynamoDB N value denoting exactly the same number.

    Binance's string is kept as it is (DynamoDB accepts leading zeros and trailing zeros
    such as ``"0.00250000"``). Only when its digits, trailing zeros included, exceed 38
    are the trailing zeros dropped — DynamoDB trims them itself, so the stored number is
    the same. Raises ValueError when no DynamoDB number equals ``text``.
    """
    if len(text) <= _MAX_PLAIN_LENGTH and _PLAIN_DECIMAL.fullmatch(text):
        return text  # the common case, without building a Decimal (twice per field and event)
    try:
        value = Decimal(text)  # exact: constructing a Decimal never rounds
    except InvalidOperation:
        raise ValueError("is not a decimal number") from None
    if not value.is_finite():
        raise ValueError("is not a finite number")
    if value.is_zero():
        return text
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    significant = len(digits)
    while digits[significant - 1] == 0:
        significant -= 1
    if significant > _MAX_DIGITS:
        raise ValueError(f"has {significant} significant digits; DynamoDB numbers hold at most {_MAX_DIGITS}")
    if not _MIN_ADJUSTED_EXPONENT <= value.adjusted() <= _MAX_ADJUSTED_EXPONENT:
        raise ValueError("is outside DynamoDB's number range (1E-130 to 9.99…E+125)")
    if len(digits) <= _MAX_DIGITS:
        return text
    return str(Decimal((sign, digits[:significant], exponent + len(digits) - significant)))


def to_item(fields: Mapping[str, Any], ttl_days: int) -> Item:
    """The row for one valid event (``MiniTicker.fields``); ValueError saying why if it cannot be one."""
    event_time = fields["E"]
    item: Item = {
        PARTITION_KEY[0]: {"S": fields["s"]},
        SORT_KEY[0]: {"N": str(event_time)},
    }
    for name, attribute in NUMBER_ATTRIBUTES.items():
        try:
            item[attribute] = {"N": dynamo_number(fields[name])}
        except ValueError as exc:
            raise ValueError(f"field {name!r} ({FIELDS[name]}) {shorten(fields[name], 50)} {exc}") from None
    item["event_type"] = {"S": fields["e"]}
    item[TTL_ATTRIBUTE] = {"N": str(ttl_seconds(event_time, ttl_days))}
    return item


def item_key(item: Item) -> tuple[str, str]:
    return item[PARTITION_KEY[0]]["S"], item[SORT_KEY[0]]["N"]


def last_per_key(items: Iterable[Item]) -> list[Item]:
    """One item per (symbol, event_time): the last one given, as a later write would win.

    DynamoDB rejects a BatchWriteItem naming the same key twice.
    """
    by_key: dict[tuple[str, str], Item] = {}
    for item in items:
        key = item_key(item)
        by_key.pop(key, None)  # re-insert so the order follows the surviving occurrence
        by_key[key] = item
    return list(by_key.values())


def put_batches(items: Iterable[Item], size: int = MAX_BATCH_WRITE) -> list[list[dict[str, Any]]]:
    """Duplicate-free PutRequest lists of at most ``size`` for BatchWriteItem."""
    requests = [{"PutRequest": {"Item": item}} for item in last_per_key(items)]
    return [requests[start : start + size] for start in range(0, len(requests), size)]


@dataclass
class RequestCutter:
    """Cuts the rows of one checkpoint into full BatchWriteItem requests as they arrive.

    A request is cut as soon as it holds ``size`` distinct keys, whichever partitions the
    rows came from, so it can be written while the checkpoint is still being read; only
    :meth:`finish` leaves a partial one. A key seen again in the open request replaces its
    row there (the last one wins). A key seen again after its request was cut cannot go in
    a request that may be written at the same time as that one: it waits in ``late``, which
    :meth:`finish` returns to be written after every cut request completed.
    """

    size: int = MAX_BATCH_WRITE
    _open: dict[tuple[str, str], Item] = field(default_factory=dict)
    _cut: set[tuple[str, str]] = field(default_factory=set)
    _late: dict[tuple[str, str], Item] = field(default_factory=dict)

    def add(self, item: Item) -> list[dict[str, Any]] | None:
        """Take one row; the request it completes, if it completes one."""
        key = item_key(item)
        if key in self._cut:
            self._late[key] = item
            return None
        self._open[key] = item
        if len(self._open) < self.size:
            return None
        self._cut.update(self._open)
        request = [{"PutRequest": {"Item": row}} for row in self._open.values()]
        self._open = {}
        return request

    def finish(self) -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Any]]]]:
        """The requests left: (the partial one, if any; then those of the late rows, written after)."""
        rest = put_batches(self._open.values(), self.size)
        late = put_batches(self._late.values(), self.size)
        self._open, self._cut, self._late = {}, set(), {}
        return rest, late
