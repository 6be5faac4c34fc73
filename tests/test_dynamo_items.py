"""The DynamoDB row contract and batching, without any I/O."""

from __future__ import annotations

from decimal import Decimal

import pytest
from boto3.dynamodb.types import TypeDeserializer

from processors import dynamo_items as items
from tests.factories import ticker

# Binance's own decimal strings, leading and trailing zeros included, and one a float would round.
EVENT = ticker(
    symbol="BNBBTC",
    event_time=1700000000123,
    c="0.00250000",
    o="0.00000001",
    h="123456789.12345678",
    l="0.0010",
    v="10000",
    q="18",
)


def test_item_carries_binance_decimals_exactly_and_ttl_from_event_time():
    item = items.to_item(EVENT, ttl_days=3)
    assert item == {
        "symbol": {"S": "BNBBTC"},
        "event_time": {"N": "1700000000123"},
        "close": {"N": "0.00250000"},
        "open": {"N": "0.00000001"},
        "high": {"N": "123456789.12345678"},
        "low": {"N": "0.0010"},
        "base_volume": {"N": "10000"},
        "quote_volume": {"N": "18"},
        "event_type": {"S": "24hrMiniTicker"},
        "ttl": {"N": str(1700000000 + 3 * 86400)},
    }
    plain = {name: TypeDeserializer().deserialize(value) for name, value in item.items()}
    assert plain["open"] == Decimal("0.00000001") and plain["high"] == Decimal("123456789.12345678")


def test_ttl_truncates_milliseconds_and_adds_whole_days():
    assert items.ttl_seconds(1700000000999, 1) == 1700000000 + 86400
    assert items.ttl_seconds(1700000000000, 7) == 1700000000 + 7 * 86400


@pytest.mark.parametrize("text", ["0", "0.00000000", "0.00250000", "0001.5", "9" * 38, "0." + "0" * 100 + "1"])
def test_numbers_dynamodb_accepts_are_sent_as_received(text):
    assert items.dynamo_number(text) == text


def test_more_than_38_digits_of_trailing_zeros_are_trimmed_to_the_same_number():
    text = "1.5" + "0" * 40
    sent = items.dynamo_number(text)
    assert Decimal(sent) == Decimal(text) and len(Decimal(sent).as_tuple().digits) <= 38
    big = "12" + "0" * 100
    assert items.dynamo_number(big) == "1.2E+101" and Decimal("1.2E+101") == Decimal(big)
    assert items.dynamo_number("1" + "0" * 125) == "1E+125"


@pytest.mark.parametrize(
    "text, words",
    [
        ("1." + "1" * 38, "39 significant digits"),
        ("1" + "0" * 126, "outside DynamoDB's number range"),
        ("0." + "0" * 130 + "1", "outside DynamoDB's number range"),
    ],
)
def test_numbers_dynamodb_cannot_hold_are_refused(text, words):
    with pytest.raises(ValueError, match=words):
        items.dynamo_number(text)


def test_an_event_dynamodb_cannot_hold_is_refused_naming_the_field():
    too_precise = {**EVENT, "q": "1." + "2" * 40}
    with pytest.raises(
        ValueError, match=r"^field 'q' \(total traded quote asset volume\) '1\.222.* 41 significant digits"
    ):
        items.to_item(too_precise, 1)


def test_duplicate_keys_collapse_to_the_last_occurrence():
    first = items.to_item(EVENT, 1)
    other = items.to_item({**EVENT, "E": EVENT["E"] + 1}, 1)
    last = items.to_item({**EVENT, "c": "0.00260000"}, 1)
    assert items.last_per_key([first, other, last]) == [other, last]


def test_put_batches_hold_at_most_25_distinct_keys():
    rows = [items.to_item({**EVENT, "E": EVENT["E"] + i % 60}, 1) for i in range(120)]  # each key twice
    batches = items.put_batches(rows)
    assert [len(b) for b in batches] == [25, 25, 10]
    keys = [items.item_key(r["PutRequest"]["Item"]) for b in batches for r in b]
    assert len(keys) == len(set(keys)) == 60
    assert items.put_batches([]) == []


def rows_of(requests: list[list[dict]]) -> list[items.Item]:
    return [request["PutRequest"]["Item"] for chunk in requests for request in chunk]


def test_the_cutter_cuts_full_requests_as_rows_arrive_and_leaves_one_partial():
    cutter = items.RequestCutter()
    rows = [items.to_item(ticker(n, symbol=f"SYM{n % 3}"), 1) for n in range(60)]
    cut = [request for request in map(cutter.add, rows) if request is not None]
    assert [len(request) for request in cut] == [25, 25]  # at the 25th and the 50th row
    rest, late = cutter.finish()
    assert [len(request) for request in rest] == [10] and late == []
    assert rows_of(cut + rest) == rows
    assert cutter.finish() == ([], [])  # finished: the next checkpoint starts empty


def test_a_key_seen_again_after_its_request_was_cut_is_written_last_with_its_last_values():
    cutter = items.RequestCutter(size=2)
    first, second, third = (items.to_item(ticker(n), 1) for n in range(3))
    again = items.to_item(ticker(0, c="9.5"), 1)
    again_later = items.to_item(ticker(0, c="9.75"), 1)
    assert cutter.add(first) is None
    assert cutter.add(items.to_item(ticker(0, c="1.25"), 1)) is None  # replaces ``first`` in the open request
    assert cutter.add(second) is not None  # cut: keys 0 and 1
    assert cutter.add(again) is None and cutter.add(third) is None and cutter.add(again_later) is None
    rest, late = cutter.finish()
    assert rows_of(rest) == [third]
    assert rows_of(late) == [again_later]  # never in flight together with the request holding key 0
