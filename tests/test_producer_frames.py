"""What the producer does with each kind of websocket frame (pure, no I/O)."""

from __future__ import annotations

import orjson
import pytest

from crypto_live.simulator import JUNK_FRAMES
from producer.frames import parse_frame
from tests.factories import ticker


def dumps(obj) -> bytes:
    return orjson.dumps(obj)


def test_single_raw_event_is_published_with_its_fields_exactly_as_sent():
    raw = (
        b'{"e":"24hrMiniTicker","E":1700000000000,"s":"BNBBTC","c":"0.0025","o":"0.0010",'
        b'"h":"0.0025","l":"0.0010","v":"10000","q":"18","x":"extra field kept"}'
    )
    frame = parse_frame(raw)
    assert [e.to_json() for e in frame.events] == [raw]
    assert (frame.rejected, frame.answers, frame.not_json, frame.server_shutdown) == ([], [], False, False)


def test_all_market_array_gives_every_event_in_order():
    events = [ticker(1, symbol="BTCUSDT"), ticker(2, symbol="ETHUSDT"), ticker(3, symbol="BNBUSDT")]
    frame = parse_frame(dumps(events))
    assert [e.symbol for e in frame.events] == ["BTCUSDT", "ETHUSDT", "BNBUSDT"]
    assert [e.fields for e in frame.events] == events


@pytest.mark.parametrize("data", [ticker(), [ticker(), ticker(symbol="ETHUSDT")]], ids=["object", "array"])
def test_combined_stream_payload_is_unwrapped(data):
    frame = parse_frame(dumps({"stream": "!miniTicker@arr", "data": data}))
    expected = data if isinstance(data, list) else [data]
    assert [e.fields for e in frame.events] == expected
    assert frame.rejected == []


def test_text_frames_are_accepted_like_bytes():
    assert parse_frame(dumps(ticker()).decode()).events[0].fields == ticker()


def test_invalid_item_in_an_array_is_rejected_alone_with_its_position_and_bytes():
    bad = ticker(symbol="ETHUSDT", c=1.5)
    frame = parse_frame(dumps({"stream": "!miniTicker@arr", "data": [ticker(), bad, ticker(symbol="BNBUSDT")]}))
    assert [e.symbol for e in frame.events] == ["BTCUSDT", "BNBUSDT"]
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
