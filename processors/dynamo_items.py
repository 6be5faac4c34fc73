"""The DynamoDB table contract and everything about writing to it that needs no I/O.

One row per event, in the low-level client's typed form::

    {"symbol": {"S": "BTCUSDT"}, "event_time": {"N": "1700000000123"},
     "close": {"N": "0.00250000"}, "open": …, "high": …, "low": …,
     "base_volume": {"N": …}, "quote_volume": {"N": …},
     "event_type": {"S": "24hrMiniTicker"}, "ttl": {"N": "1700086400"}}

Key: partition ``symbol`` (S), sort ``event_time`` (N, the event's ``E`` in ms).
Prices and volumes travel as Binance's own decimal strings, never through float.
``ttl`` = ``E // 1000 + days × 86400``: it derives from the event, not the clock, so
writing the same event twice writes the same row (replays are no-ops).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

from crypto_live.event import DECIMAL_FIELDS, FIELDS

PARTITION_KEY = ("symbol", "S")
SORT_KEY = ("event_time", "N")
TTL_ATTRIBUTE = "ttl"
#: event field -> attribute holding it as a DynamoDB Number.
NUMBER_ATTRIBUTES = {"c": "close", "o": "open", "h": "high", "l": "low", "v": "base_volume", "q": "quote_volume"}
SECONDS_PER_DAY = 86_400
#: BatchWriteItem accepts at most this many requests.
MAX_BATCH_WRITE = 25

# DynamoDB numbers: at most 38 significant digits, magnitude 1E-130 <= |x| < 1E+126.
_MAX_DIGITS = 38
_MIN_ADJUSTED_EXPONENT = -130
_MAX_ADJUSTED_EXPONENT = 125

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


def item_problem(fields: Mapping[str, Any]) -> str | None:
    """Why a valid event cannot become a row (a number DynamoDB cannot hold), or None."""
    for name in DECIMAL_FIELDS:
        try:
            dynamo_number(fields[name])
        except ValueError as exc:
            return f"field {name!r} ({FIELDS[name]}) {_short(fields[name])} {exc}"
    return None


def to_item(fields: Mapping[str, Any], ttl_days: int) -> Item:
    """The row for one valid event (``MiniTicker.fields``); ValueError if ``item_problem``."""
    event_time = fields["E"]
    item: Item = {
        PARTITION_KEY[0]: {"S": fields["s"]},
        SORT_KEY[0]: {"N": str(event_time)},
    }
    for name, attribute in NUMBER_ATTRIBUTES.items():
        item[attribute] = {"N": dynamo_number(fields[name])}
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


def backoff_ceiling(attempt: int, *, base: float, cap: float) -> float:
    """``base × 2^attempt`` seconds, capped at ``cap`` (attempt counts from 0)."""
    return min(cap, base * 2 ** min(attempt, 62))


def backoff_delay(attempt: int, *, base: float, cap: float, jitter: float) -> float:
    """Full-jitter delay before retry ``attempt``: ``jitter`` (uniform in [0, 1)) × ceiling.

    Spreading retries over the whole interval keeps competing writers from retrying in step.
    """
    return jitter * backoff_ceiling(attempt, base=base, cap=cap)


# --------------------------------------------------------------------------- table


def key_schema() -> list[dict[str, str]]:
    return [
        {"AttributeName": PARTITION_KEY[0], "KeyType": "HASH"},
        {"AttributeName": SORT_KEY[0], "KeyType": "RANGE"},
    ]


def create_table_request(table: str) -> dict[str, Any]:
    """create_table arguments for the contract's table, billed on demand."""
    return {
        "TableName": table,
        "KeySchema": key_schema(),
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": kind} for name, kind in (PARTITION_KEY, SORT_KEY)
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def expected_keys() -> str:
    return f"partition key {_key(*PARTITION_KEY)}, sort key {_key(*SORT_KEY)}"


_UNUSABLE_STATUSES = ("DELETING", "ARCHIVING", "ARCHIVED", "INACCESSIBLE_ENCRYPTION_CREDENTIALS")


def table_problems(table: Mapping[str, Any] | None) -> list[str]:
    """What keeps the sink from writing to a table, given describe_table's ``Table``.

    ``None`` stands for a table that does not exist. An empty list means it fits.
    """
    if table is None:
        return ["does not exist"]
    problems = []
    if table.get("TableStatus") in _UNUSABLE_STATUSES:
        problems.append(f"is {table['TableStatus']}")
    types = {d["AttributeName"]: d["AttributeType"] for d in table.get("AttributeDefinitions", [])}
    by_role = {k["KeyType"]: k["AttributeName"] for k in table.get("KeySchema", [])}
    for role, label, (name, kind) in (("HASH", "partition key", PARTITION_KEY), ("RANGE", "sort key", SORT_KEY)):
        actual = by_role.get(role)
        if actual is None:
            problems.append(f"has no {label}, expected {_key(name, kind)}")
        elif (actual, types.get(actual)) != (name, kind):
            problems.append(f"{label} is {_key(actual, types.get(actual, '?'))}, expected {_key(name, kind)}")
    return problems


def ttl_problem(description: Mapping[str, Any]) -> str | None:
    """Why rows would not expire, given describe_time_to_live's ``TimeToLiveDescription``."""
    status = description.get("TimeToLiveStatus", "DISABLED")
    attribute = description.get("AttributeName")
    if status in ("ENABLED", "ENABLING") and attribute == TTL_ATTRIBUTE:
        return None
    if status in ("ENABLED", "ENABLING"):
        return f"TTL is enabled on {attribute!r}, not {TTL_ATTRIBUTE!r}: rows will not expire"
    return f"TTL is {status.lower()}, not enabled on {TTL_ATTRIBUTE!r}: rows will not expire"


def _key(name: str, kind: str) -> str:
    return f"{name!r} ({kind})"


def _short(value: object, limit: int = 50) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
