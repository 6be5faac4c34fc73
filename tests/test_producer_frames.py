"""What the producer does with each kind of websocket frame (pure, no I/O)."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crypto_live.simulator import JUNK_FRAMES
from producer.frames import Frame, parse_frame, parse_json_frame, plain_frame_events
from tests.factories import ticker
from tests.mutations import mutations
from tests.properties import PROPERTY as BASE

PROPERTY = settings(BASE, max_examples=400)


def dumps(obj) -> bytes:
    return orjson.dumps(obj)


def fields(frame: Frame) -> list[dict]:
    """The frame's events as the JSON objects published."""
    return [orjson.loads(value) for value, _, _ in frame.events]


def symbols(frame: Frame) -> list[str]:
    return [key.decode() for _, key, _ in frame.events]


def test_single_raw_event_is_published_with_its_fields_exactly_as_sent():
    raw = (
        b'{"e":"24hrMiniTicker","E":1700000000000,"s":"BNBBTC","c":"0.0025","o":"0.0010",'
        b'"h":"0.0025","l":"0.0010","v":"10000","q":"18","x":"extra field kept"}'
    )
    frame = parse_frame(raw)
    assert frame.events == [(raw, b"BNBBTC", 1700000000000)]
    assert (frame.rejected, frame.answers, frame.not_json, frame.server_shutdown) == ([], [], False, False)


def test_all_market_array_gives_every_event_in_order():
    events = [ticker(1, symbol="BTCUSDT"), ticker(2, symbol="ETHUSDT"), ticker(3, symbol="BNBUSDT")]
    frame = parse_frame(dumps(events))
    assert symbols(frame) == ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    assert fields(frame) == events


@pytest.mark.parametrize("data", [ticker(), [ticker(), ticker(symbol="ETHUSDT")]], ids=["object", "array"])
def test_combined_stream_payload_is_unwrapped(data):
    frame = parse_frame(dumps({"stream": "!miniTicker@arr", "data": data}))
    expected = data if isinstance(data, list) else [data]
    assert fields(frame) == expected
    assert frame.rejected == []


def test_text_frames_are_accepted_like_bytes():
    assert fields(parse_frame(dumps(ticker()).decode())) == [ticker()]


def test_invalid_item_in_an_array_is_rejected_alone_with_its_position_and_bytes():
    bad = ticker(symbol="ETHUSDT", c=1.5)
    frame = parse_frame(dumps({"stream": "!miniTicker@arr", "data": [ticker(), bad, ticker(symbol="BNBUSDT")]}))
    assert symbols(frame) == ["BTCUSDT", "BNBUSDT"]
    [rejected] = frame.rejected
    assert rejected.reason.startswith("item 2 of 3 (stream '!miniTicker@arr'): field 'c'")
    assert orjson.loads(rejected.raw) == bad


def test_invalid_single_event_keeps_the_frame_bytes_exactly():
    raw = b'{"stream":"btcusdt@miniTicker","data":{"e":"24hrMiniTicker","E":1700000000000,"s":"BTCUSDT"}}'
    [rejected] = parse_frame(raw).rejected
    assert rejected.raw == raw
    assert "stream 'btcusdt@miniTicker'" in rejected.reason and "missing fields" in rejected.reason


def test_non_json_frame_is_rejected_as_such():
    frame = parse_frame(JUNK_FRAMES[0])
    assert frame.not_json and frame.events == []
    [rejected] = frame.rejected
    assert rejected.reason.startswith("not JSON") and rejected.raw == JUNK_FRAMES[0].encode()


def test_json_that_is_no_event_is_rejected_not_published():
    frame = parse_frame(JUNK_FRAMES[1])
    assert frame.events == [] and not frame.not_json
    assert "missing field" in frame.rejected[0].reason


@pytest.mark.parametrize("payload", [3, "text", None, True])
def test_scalar_payload_is_rejected(payload):
    [rejected] = parse_frame(dumps(payload)).rejected
    assert "expected a JSON object" in rejected.reason


@pytest.mark.parametrize(
    "answer",
    [
        {"result": None, "id": 1},
        {"result": ["btcusdt@miniTicker"], "id": "a1"},
        {"error": {"code": 2, "msg": "Invalid request"}, "id": 7},
    ],
)
def test_control_answers_are_counted_never_published_nor_dead_lettered(answer):
    frame = parse_frame(dumps(answer))
    assert frame.answers == [answer]
    assert frame.events == [] and frame.rejected == []


@pytest.mark.parametrize(
    "payload",
    [
        {"e": "serverShutdown", "E": 1_700_000_000_000},
        {"stream": "!miniTicker@arr", "data": {"e": "serverShutdown", "E": 1_700_000_000_000}},
    ],
    ids=["raw", "combined"],
)
def test_server_shutdown_is_a_signal_not_an_invalid_event(payload):
    frame = parse_frame(dumps(payload))
    assert frame.server_shutdown
    assert frame.events == [] and frame.rejected == []


def test_empty_array_holds_nothing():
    frame = parse_frame(b"[]")
    assert (frame.events, frame.rejected, frame.answers, frame.server_shutdown) == ([], [], [], False)


def test_stream_name_with_braces_does_not_break_reasons():
    [rejected] = parse_frame(dumps({"stream": "{0}", "data": [1]})).rejected
    assert rejected.reason.startswith("item 1 of 1 (stream '{0}'):")


def test_text_with_a_lone_surrogate_is_rejected_as_not_json_instead_of_raising():
    frame = parse_frame('{"e": "24hrMiniTicker", "s": "\ud800"}')
    assert frame.not_json and not frame.events
    assert frame.rejected[0].reason.startswith("not JSON")


# ------------------------------------------------- the fast path agrees with the parser

#: What !miniTicker@arr sends: the fast path's frames, raw and in the combined wrapper.
PLAIN_ARRAY = dumps([ticker(1, symbol="BTCUSDT"), ticker(2, symbol="ETHUSDT"), ticker(3, symbol="1000SATSUSDT")])
PLAIN_FRAMES = [PLAIN_ARRAY, b'{"stream":"!miniTicker@arr","data":' + PLAIN_ARRAY + b"}"]


@pytest.mark.parametrize("raw", PLAIN_FRAMES, ids=["raw", "combined"])
def test_an_array_in_binance_layout_is_published_as_its_own_bytes_without_parsing(raw):
    assert plain_frame_events(raw) is not None
    frame = parse_frame(raw)
    assert frame == parse_json_frame(raw)
    assert [value for value, _, _ in frame.events] == [dumps(item) for item in orjson.loads(PLAIN_ARRAY)]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"stream":"a\\"b","data":' + PLAIN_ARRAY + b"}",  # an escape in the stream name
        b'{"stream":"\xc3\xa9","data":' + PLAIN_ARRAY + b"}",  # not ASCII
        b'{"stream":"x","data":' + PLAIN_ARRAY + b',"id":1}',  # another key
        b'{"data":' + PLAIN_ARRAY + b',"stream":"x"}',  # other order
        b'{"stream":"x","data":' + PLAIN_ARRAY + b"}}",
        b'{"stream":"x","data":' + PLAIN_ARRAY,
        b'{"stream":"x","data":' + dumps(ticker()) + b"}",  # one event, not an array
        b'{"stream":1,"data":' + PLAIN_ARRAY + b"}",
        PLAIN_ARRAY.replace(b'"c":"1.0025', b'"c":"1.00x5'),
        PLAIN_ARRAY.replace(b'"s":"ETHUSDT"', b'"s":"ethusdt"'),
        PLAIN_ARRAY.replace(b"},{", b"}, {", 1),
        dumps({"stream": "x", "data": [ticker(), {"e": "serverShutdown", "E": 1_700_000_000_000}]}),
    ],
)
def test_near_misses_take_the_parser_and_give_what_it_gives(raw):
    assert plain_frame_events(raw) is None
    assert parse_frame(raw) == parse_json_frame(raw)


@PROPERTY
@example(PLAIN_FRAMES[1].replace(b"!miniTicker@arr", b"!miniTicker@arr "))  # still plain: same events
@given(st.sampled_from(PLAIN_FRAMES).flatmap(mutations))
def test_any_mutated_frame_gives_what_the_parser_gives(raw):
    # Same events (bytes, keys, timestamps), rejected items (reasons, bytes), answers and signals.
    assert parse_frame(raw) == parse_json_frame(raw)
