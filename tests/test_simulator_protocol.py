"""Unit tests for the pure Binance stream protocol."""

import json

import pytest

from crypto_live.binance import ALL_MARKET_STREAM, MAX_MESSAGES_PER_SECOND, MAX_STREAMS_PER_CONNECTION, stream_name
from crypto_live.errors import HandshakeError
from crypto_live.simulator import protocol
from crypto_live.simulator.market import symbol_names
from crypto_live.simulator.protocol import (
    Close,
    Session,
    TickFrames,
    handle_message,
    parse_path,
)

SYMBOLS = frozenset({"BTCUSDT", "ETHUSDT", "BNBUSDT"})
MANY = frozenset(symbol_names(MAX_STREAMS_PER_CONNECTION + 10))


def request(method, params=None, request_id=1):
    message = {"method": method, "id": request_id}
    if params is not None:
        message["params"] = params
    return json.dumps(message)


class Clock:
    """Messages one second apart, so the rate limit never interferes by accident."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


@pytest.fixture
def clock():
    return Clock()


# -- paths ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "streams", "combined"),
    [
        ("/ws/!miniTicker@arr", (ALL_MARKET_STREAM,), False),
        ("/ws/%21miniTicker@arr", (ALL_MARKET_STREAM,), False),
        ("/ws/btcusdt@miniTicker", ("btcusdt@miniTicker",), False),
        ("/ws/btcusdt@miniTicker/ethusdt@miniTicker", ("btcusdt@miniTicker", "ethusdt@miniTicker"), False),
        ("/ws/btcusdt@miniTicker/btcusdt@miniTicker", ("btcusdt@miniTicker",), False),
        ("/stream?streams=btcusdt@miniTicker/!miniTicker@arr", ("btcusdt@miniTicker", ALL_MARKET_STREAM), True),
        ("/ws", (), False),
        ("/ws/", (), False),
        ("/stream", (), True),
        ("/ws/!miniTicker@arr?timeUnit=MILLISECOND", (ALL_MARKET_STREAM,), False),
    ],
)
def test_parse_path_accepts_binance_forms(path, streams, combined):
    assert parse_path(path, SYMBOLS) == Session(streams=streams, combined=combined)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/", 404),
        ("/api/v3/ticker", 404),
        ("/wss/!miniTicker@arr", 404),
        ("/ws/BTCUSDT@miniTicker", 400),  # stream names use lowercase symbols
        ("/ws/btcusdt@trade", 400),
        ("/ws/dogeusdt@miniTicker", 400),  # not simulated
        ("/ws/btcusdt@miniTicker//ethusdt@miniTicker", 400),
        ("/stream?streams=btcusdt@miniTicker/nope", 400),
    ],
)
def test_parse_path_rejects_unknown_paths_and_streams(path, status):
    with pytest.raises(HandshakeError) as info:
        parse_path(path, SYMBOLS)
    assert info.value.status == status


def test_parse_path_enforces_stream_limit():
    names = [stream_name(s) for s in sorted(MANY)]
    assert (
        len(parse_path("/ws/" + "/".join(names[:MAX_STREAMS_PER_CONNECTION]), MANY).streams)
        == MAX_STREAMS_PER_CONNECTION
    )
    with pytest.raises(HandshakeError) as info:
        parse_path("/ws/" + "/".join(names[: MAX_STREAMS_PER_CONNECTION + 1]), MANY)
    assert info.value.status == 400


# -- control messages -------------------------------------------------------


def test_subscribe_unsubscribe_and_list(clock):
    session = Session()
    out = handle_message(session, request("SUBSCRIBE", ["btcusdt@miniTicker", ALL_MARKET_STREAM], 7), clock(), SYMBOLS)
    assert out.reply == {"result": None, "id": 7}
    assert out.close is None
    assert out.session.streams == ("btcusdt@miniTicker", ALL_MARKET_STREAM)

    out = handle_message(out.session, request("LIST_SUBSCRIPTIONS", request_id=8), clock(), SYMBOLS)
    assert out.reply == {"result": ["btcusdt@miniTicker", ALL_MARKET_STREAM], "id": 8}

    out = handle_message(out.session, request("UNSUBSCRIBE", ["btcusdt@miniTicker"], 9), clock(), SYMBOLS)
    assert out.reply == {"result": None, "id": 9}
    assert out.session.streams == (ALL_MARKET_STREAM,)


def test_subscribe_is_idempotent(clock):
    session = Session(streams=("btcusdt@miniTicker",))
    out = handle_message(session, request("SUBSCRIBE", ["btcusdt@miniTicker"]), clock(), SYMBOLS)
    assert out.session.streams == ("btcusdt@miniTicker",)


@pytest.mark.parametrize("request_id", [0, 2**63 - 1, -5, "abc123", None])
def test_accepted_ids_are_echoed(clock, request_id):
    out = handle_message(Session(), request("LIST_SUBSCRIPTIONS", request_id=request_id), clock(), SYMBOLS)
    assert out.reply == {"result": [], "id": request_id}


def test_properties(clock):
    out = handle_message(Session(), request("GET_PROPERTY", ["combined"], 1), clock(), SYMBOLS)
    assert out.reply == {"result": False, "id": 1}
    out = handle_message(out.session, request("SET_PROPERTY", ["combined", True], 2), clock(), SYMBOLS)
    assert out.reply == {"result": None, "id": 2}
    assert out.session.combined is True
    out = handle_message(out.session, request("SET_PROPERTY", ["combined", "yes"], 3), clock(), SYMBOLS)
    assert out.reply["error"]["code"] == 1
    out = handle_message(out.session, request("GET_PROPERTY", ["colour"], 4), clock(), SYMBOLS)
    assert out.reply == {"error": {"code": 0, "msg": "Unknown property"}, "id": 4}


@pytest.mark.parametrize(
    ("message", "code", "msg_part", "reply_id"),
    [
        ("{not json", 3, "Invalid JSON", None),
        ("[1, 2]", 2, "Invalid request", None),
        ('{"method": "SUBSCRIBE", "params": []}', 2, "request ID", None),
        ('{"method": "SUBSCRIBE", "params": [], "id": true}', 2, "request ID", None),
        ('{"method": "SUBSCRIBE", "params": [], "id": 1.5}', 2, "request ID", None),
        ('{"method": "SUBSCRIBE", "params": [], "id": "' + "x" * 37 + '"}', 2, "request ID", None),
        ('{"params": [], "id": 4}', 2, "missing field `method`", 4),
        ('{"method": "SUBSCRIB", "id": 5}', 2, "unknown variant `SUBSCRIB`", 5),
        ('{"method": "SUBSCRIBE", "params": "btcusdt@miniTicker", "id": 6}', 2, "params", 6),
        ('{"method": "SUBSCRIBE", "params": ["btcusdt@trade"], "id": 7}', 2, "invalid stream", 7),
        ('{"method": "SUBSCRIBE", "params": [42], "id": 8}', 2, "invalid stream", 8),
        ('{"method": "LIST_SUBSCRIPTIONS", "params": ["x"], "id": 9}', 2, "too many parameters", 9),
    ],
)
def test_invalid_requests_get_binance_errors(clock, message, code, msg_part, reply_id):
    session = Session(streams=(ALL_MARKET_STREAM,))
    out = handle_message(session, message, clock(), SYMBOLS)
    assert out.close is None
    assert set(out.reply) == {"error", "id"}
    assert out.reply["id"] == reply_id
    assert out.reply["error"]["code"] == code
    assert msg_part in out.reply["error"]["msg"]
    assert out.session.streams == session.streams  # errors change nothing


def test_bytes_messages_are_parsed_too(clock):
    out = handle_message(Session(), request("LIST_SUBSCRIPTIONS").encode(), clock(), SYMBOLS)
    assert out.reply == {"result": [], "id": 1}


def test_subscribing_past_the_stream_limit_closes(clock):
    names = [stream_name(s) for s in sorted(MANY)]
    out = handle_message(Session(), request("SUBSCRIBE", names[:MAX_STREAMS_PER_CONNECTION]), clock(), MANY)
    assert len(out.session.streams) == MAX_STREAMS_PER_CONNECTION and out.close is None
    again = handle_message(out.session, request("SUBSCRIBE", names[:10]), clock(), MANY)
    assert again.close is None  # already-subscribed streams do not count twice
    over = handle_message(out.session, request("SUBSCRIBE", [names[MAX_STREAMS_PER_CONNECTION]]), clock(), MANY)
    assert over.close == Close(protocol.POLICY_VIOLATION, "Too many streams")
    assert over.reply is None


# -- rate limit -------------------------------------------------------------


def test_admit_is_a_sliding_one_second_window():
    recent = ()
    for now in (0.0, 0.1, 0.2, 0.3, 0.4):
        recent, ok = protocol.admit(recent, now)
        assert ok
    assert protocol.admit(recent, 0.5)[1] is False
    assert protocol.admit(recent, 1.05)[1] is True  # the message at 0.0 left the window


def test_sixth_message_within_a_second_closes_even_if_invalid():
    session = Session()
    for i in range(MAX_MESSAGES_PER_SECOND):
        out = handle_message(session, "garbage", 10.0 + i / 10, SYMBOLS)
        assert out.close is None and out.reply["error"]["code"] == 3
        session = out.session
    out = handle_message(session, request("LIST_SUBSCRIPTIONS"), 10.9, SYMBOLS)
    assert out.close == Close(protocol.POLICY_VIOLATION, "Too many requests")
    assert out.reply is None


# -- frames -----------------------------------------------------------------

BTC = {"e": "24hrMiniTicker", "E": 5, "s": "BTCUSDT", "c": "1.00000000"}
ETH = {"e": "24hrMiniTicker", "E": 6, "s": "ETHUSDT", "c": "2.00000000"}


def test_all_market_stream_gets_an_array_of_changed_tickers():
    frames = TickFrames([BTC, ETH]).frames_for(Session(streams=(ALL_MARKET_STREAM,)))
    assert len(frames) == 1
    assert json.loads(frames[0].text) == [BTC, ETH]
    assert frames[0].events == (BTC, ETH)
    assert " " not in frames[0].text  # compact, like Binance


def test_symbol_stream_gets_the_single_object_or_nothing():
    tick = TickFrames([ETH])
    assert tick.frames_for(Session(streams=("btcusdt@miniTicker",))) == ()
    (frame,) = tick.frames_for(Session(streams=("ethusdt@miniTicker",)))
    assert json.loads(frame.text) == ETH
    assert frame.events == (ETH,)


def test_combined_frames_are_wrapped_in_subscription_order():
    session = Session(streams=("ethusdt@miniTicker", ALL_MARKET_STREAM, "btcusdt@miniTicker"), combined=True)
    frames = TickFrames([BTC, ETH]).frames_for(session)
    assert [json.loads(f.text) for f in frames] == [
        {"stream": "ethusdt@miniTicker", "data": ETH},
        {"stream": ALL_MARKET_STREAM, "data": [BTC, ETH]},
        {"stream": "btcusdt@miniTicker", "data": BTC},
    ]


def test_frames_are_rendered_once_per_stream_and_mode():
    tick = TickFrames([BTC])
    assert tick.frame("btcusdt@miniTicker", False) is tick.frame("btcusdt@miniTicker", False)
    assert tick.frame("btcusdt@miniTicker", True) != tick.frame("btcusdt@miniTicker", False)


def test_empty_tick_has_no_frames():
    assert TickFrames([]).frames_for(Session(streams=(ALL_MARKET_STREAM,))) == ()


def test_server_shutdown_event():
    assert protocol.server_shutdown_event(123) == {"e": "serverShutdown", "E": 123}
