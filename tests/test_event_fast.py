"""plain_array_events: an array of events proven valid by its bytes alone, or None.

It must never accept what validate() rejects, and must give each event's bytes, symbol
and event time exactly as parsing and validating would.
"""

from __future__ import annotations

import orjson
import pytest
from hypothesis import example, given, settings

from crypto_live.event import MiniTicker, decode, plain_array_events, plain_event_time
from tests.factories import ticker
from tests.mutations import mutations
from tests.properties import PROPERTY as BASE

PROPERTY = settings(BASE, max_examples=300)

EVENTS = [orjson.dumps(ticker(n, symbol=symbol)) for n, symbol in enumerate(["BTCUSDT", "ETHUSDT", "BNB0BTC"])]
ARRAY = b"[" + b",".join(EVENTS) + b"]"


def test_a_compact_array_of_valid_events_gives_each_event_bytes_symbol_and_time():
    assert plain_array_events(ARRAY) == [
        (raw, orjson.loads(raw)["s"].encode(), orjson.loads(raw)["E"]) for raw in EVENTS
    ]


def test_the_array_can_be_a_slice_of_larger_bytes():
    wrapped = b'{"stream":"x","data":' + ARRAY + b"}"
    assert plain_array_events(wrapped, len(b'{"stream":"x","data":'), len(wrapped) - 1) == plain_array_events(ARRAY)


@pytest.mark.parametrize(
    "array",
    [
        b"",
        b"[]",
        b"[" + EVENTS[0],  # not closed
        ARRAY + b" ",  # a byte after the array
        b" " + ARRAY,
        b"[" + EVENTS[0] + b", " + EVENTS[1] + b"]",  # white space: valid JSON, not the layout
        b"[" + EVENTS[0] + b",," + EVENTS[1] + b"]",
        b"[" + EVENTS[0] + b"," + EVENTS[1] + b",]",
        b"[" + EVENTS[0] + b"][" + EVENTS[1] + b"]",
        b"[" + EVENTS[0] + b"]," + EVENTS[1] + b"]",
        b"[" + EVENTS[0] + EVENTS[1] + b"]",  # no comma
        b"[[" + EVENTS[0] + b"]]",
        b"[" + EVENTS[0][:-1] + b',"x":1}]',  # an extra field: valid, but not the layout
        b"[" + orjson.dumps(ticker(event_time=1_483_228_799_999)) + b"]",  # just before 2017
        b"[" + orjson.dumps(ticker(event_time=4_102_444_800_000)) + b"]",  # 2100
        b"[" + EVENTS[0].replace(b'"E":1', b'"E":0') + b"]",  # a leading zero: not even JSON
        b"[" + orjson.dumps(ticker(symbol="btcusdt")) + b"]",
        b"[" + orjson.dumps(ticker(c="1.")) + b"]",
        b"[" + orjson.dumps(ticker(c=".5")) + b"]",
        b"[" + orjson.dumps(ticker(c="1e5")) + b"]",
        b"[" + orjson.dumps(ticker(c="-1")) + b"]",
    ],
)
def test_anything_else_is_left_to_the_parser(array):
    assert plain_array_events(array) is None


def test_the_event_time_bounds_are_those_of_validate():
    for event_time in (1_483_228_800_000, 4_102_444_799_999):
        raw = orjson.dumps(ticker(event_time=event_time))
        assert plain_array_events(b"[" + raw + b"]") == [(raw, b"BTCUSDT", event_time)]


#: A mutation the fast path accepts (a price digit changed): the branch the property checks.
STILL_VALID = ARRAY.replace(b'"o":"0.001', b'"o":"7.001')


def test_a_mutation_can_still_be_a_valid_array():
    assert STILL_VALID != ARRAY and plain_array_events(STILL_VALID) is not None


@PROPERTY
@example(STILL_VALID)
@given(mutations(ARRAY))
def test_an_accepted_array_is_valid_json_of_valid_events_with_the_same_bytes(mutated):
    found = plain_array_events(mutated)
    if found is None:
        return
    items = orjson.loads(mutated)
    assert isinstance(items, list) and len(items) == len(found)
    for item, (raw, symbol, event_time) in zip(items, found, strict=True):
        event = decode(raw)
        assert isinstance(event, MiniTicker) and event.fields == item
        assert event.to_json() == raw and (event.symbol.encode(), event.event_time) == (symbol, event_time)


@PROPERTY
@given(mutations(EVENTS[0]))
def test_an_item_is_accepted_exactly_when_plain_event_time_accepts_it(item):
    found = plain_array_events(b"[" + item + b"]")
    expected = plain_event_time(item)
    assert (found is None) == (expected is None)
    if found is not None:
        assert found == [(item, orjson.loads(item)["s"].encode(), expected)]
