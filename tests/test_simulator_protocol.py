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

ALL_1S = "!miniTicker@arr@1000ms"  # python-binance's miniticker_socket()
ALL_3S = "!miniTicker@arr@3000ms"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        # Documented forms: raw, raw multi-stream, combined, bare /ws and /stream to SUBSCRIBE on.
        ("/ws/!miniTicker@arr", Session(streams=(ALL_MARKET_STREAM,))),
        ("/ws/btcusdt@miniTicker", Session(streams=("btcusdt@miniTicker",))),
        ("/ws/btcusdt@miniTicker/ethusdt@miniTicker", Session(streams=("btcusdt@miniTicker", "ethusdt@miniTicker"))),
        ("/ws/btcusdt@miniTicker/btcusdt@miniTicker", Session(streams=("btcusdt@miniTicker",))),
        ("/ws", Session()),
        ("/ws/", Session()),
        ("/stream", Session(combined=True)),
        ("/stream?streams=!miniTicker@arr", Session(streams=(ALL_MARKET_STREAM,), combined=True)),
        (
            "/stream?streams=btcusdt@miniTicker/!miniTicker@arr",
            Session(streams=("btcusdt@miniTicker", ALL_MARKET_STREAM), combined=True),
        ),
        ("/stream/?streams=!miniTicker@arr/", Session(streams=(ALL_MARKET_STREAM,), combined=True)),
        ("/ws/btcusdt@miniTicker/", Session(streams=("btcusdt@miniTicker",))),
        # URL-encoded (changelog 2025-12-02), as clients that quote '!', '@' or '/' send them.
        ("/ws/%21miniTicker@arr", Session(streams=(ALL_MARKET_STREAM,))),
        ("/ws/%21miniTicker%40arr", Session(streams=(ALL_MARKET_STREAM,))),
        (
            "/ws/btcusdt%40miniTicker%2Fethusdt%40miniTicker",
            Session(streams=("btcusdt@miniTicker", "ethusdt@miniTicker")),
        ),
        (
            "/stream?streams=%21miniTicker%40arr%2Fbtcusdt%40miniTicker",
            Session(streams=(ALL_MARKET_STREAM, "btcusdt@miniTicker"), combined=True),
        ),
        # Update speeds of the all-market stream.
        (f"/ws/{ALL_1S}", Session(streams=(ALL_1S,))),
        (f"/stream?streams={ALL_3S}", Session(streams=(ALL_3S,), combined=True)),
        ("/ws/!miniTicker@arr@5000ms", Session(streams=("!miniTicker@arr@5000ms",))),  # accepted, never fed
        # Symbols Binance accepts and never feeds: not traded, upper case.
        ("/ws/dogeusdt@miniTicker", Session(streams=("dogeusdt@miniTicker",))),
        ("/ws/BTCUSDT@miniTicker", Session(streams=("BTCUSDT@miniTicker",))),
        # timeUnit, in the four spellings Binance lists; other query parameters are ignored.
        ("/ws/!miniTicker@arr?timeUnit=MILLISECOND", Session(streams=(ALL_MARKET_STREAM,))),
        ("/ws/!miniTicker@arr?timeUnit=millisecond", Session(streams=(ALL_MARKET_STREAM,))),
        ("/ws/!miniTicker@arr?timeUnit=MICROSECOND", Session(streams=(ALL_MARKET_STREAM,), time_factor=1000)),
        ("/ws?timeUnit=microsecond", Session(time_factor=1000)),  # binance-connector's time_unit=
        (
            "/stream?streams=btcusdt@miniTicker&timeUnit=MICROSECOND",
            Session(streams=("btcusdt@miniTicker",), combined=True, time_factor=1000),
        ),
        ("/ws/btcusdt@miniTicker?foo=bar", Session(streams=("btcusdt@miniTicker",))),
    ],
)
def test_parse_path_accepts_every_form_binance_accepts(path, expected):
    assert parse_path(path) == expected


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/", "Invalid request path"),
        ("/api/v3/ticker", "Invalid request path"),
        ("/wss/!miniTicker@arr", "Invalid request path"),
        ("/ws/btcusdt@trade", "Invalid stream name: 'btcusdt@trade'"),
        ("/ws/btcusdt@miniticker", "Invalid stream name: 'btcusdt@miniticker'"),  # stream types are case-sensitive
        ("/ws/!miniTicker", "Invalid stream name: '!miniTicker'"),
        ("/ws/!miniTicker@arr@fast", "Invalid stream name: '!miniTicker@arr@fast'"),
        ("/ws/btc usdt@miniTicker", "Invalid stream name: 'btc usdt@miniTicker'"),
        ("/ws/btcusdt@miniTicker//ethusdt@miniTicker", "Invalid stream name: ''"),
        ("/stream?streams=btcusdt@miniTicker/nope", "Invalid stream name: 'nope'"),
        ("/ws/!miniTicker@arr?timeUnit=NANOSECOND", "Invalid timeUnit: 'NANOSECOND'"),
    ],
)
def test_parse_path_refuses_what_binance_refuses(path, reason):
    with pytest.raises(HandshakeError) as info:
        parse_path(path)
    assert info.value.status == 400
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize(
    ("name", "valid", "ticks"),
    [
        (ALL_MARKET_STREAM, True, 1),
        (ALL_1S, True, 1),
        (ALL_3S, True, 3),
        ("!miniTicker@arr@5000ms", True, None),
        ("btcusdt@miniTicker", True, None),
        ("BTCUSDT@miniTicker", True, None),
        ("币安人生usdt@miniTicker", True, None),  # symbols may be UTF-8 since 2025-12
        ("@miniTicker", False, None),
        ("btcusdt@miniTicker@1000ms", False, None),
        ("!ticker@arr", False, None),
        ("!miniTicker@arr@ms", False, None),
    ],
)
def test_stream_names(name, valid, ticks):
    assert protocol.is_valid_stream(name) is valid
    assert protocol.ticks_per_update(name) == ticks


def test_parse_path_enforces_stream_limit():
    names = [stream_name(s) for s in sorted(MANY)]
    assert len(parse_path("/ws/" + "/".join(names[:MAX_STREAMS_PER_CONNECTION])).streams) == MAX_STREAMS_PER_CONNECTION
    with pytest.raises(HandshakeError) as info:
        parse_path("/ws/" + "/".join(names[: MAX_STREAMS_PER_CONNECTION + 1]))
    assert info.value.status == 400


# -- control messages -------------------------------------------------------


def test_subscribe_unsubscribe_and_list(clock):
    session = Session()
    out = handle_message(session, request("SUBSCRIBE", ["btcusdt@miniTicker", ALL_MARKET_STREAM], 7), clock())
    assert out.reply == {"result": None, "id": 7}
    assert out.close is None
    assert out.session.streams == ("btcusdt@miniTicker", ALL_MARKET_STREAM)

    out = handle_message(out.session, request("LIST_SUBSCRIPTIONS", request_id=8), clock())
    assert out.reply == {"result": ["btcusdt@miniTicker", ALL_MARKET_STREAM], "id": 8}

    out = handle_message(out.session, request("UNSUBSCRIBE", ["btcusdt@miniTicker"], 9), clock())
    assert out.reply == {"result": None, "id": 9}
    assert out.session.streams == (ALL_MARKET_STREAM,)


@pytest.mark.parametrize(
    "params",
    [[ALL_MARKET_STREAM], [ALL_1S, ALL_3S], ["btcusdt@miniTicker"], ["BTCUSDT@miniTicker", "dogeusdt@miniTicker"]],
)
def test_subscribe_accepts_every_name_binance_accepts(clock, params):
    out = handle_message(Session(), request("SUBSCRIBE", params, 3), clock())
    assert out.reply == {"result": None, "id": 3}
    assert out.session.streams == tuple(params)


@pytest.mark.parametrize("params", [["btcusdt@trade"], ["!miniTicker@arr", "not asdfads"], [42], [""]])
def test_subscribe_refuses_other_names_with_binances_error(clock, params):
    out = handle_message(Session(), request("SUBSCRIBE", params, 4), clock())
    assert out.reply == {"error": {"code": 2, "msg": "Invalid request: invalid stream"}, "id": 4}
    assert out.session.streams == ()  # nothing of a refused request is applied


def test_subscribe_is_idempotent(clock):
    session = Session(streams=("btcusdt@miniTicker",))
    out = handle_message(session, request("SUBSCRIBE", ["btcusdt@miniTicker"]), clock())
    assert out.session.streams == ("btcusdt@miniTicker",)


@pytest.mark.parametrize("request_id", [0, 2**63 - 1, -5, "abc123", None])
def test_accepted_ids_are_echoed(clock, request_id):
    out = handle_message(Session(), request("LIST_SUBSCRIPTIONS", request_id=request_id), clock())
    assert out.reply == {"result": [], "id": request_id}


def test_properties(clock):
    out = handle_message(Session(), request("GET_PROPERTY", ["combined"], 1), clock())
    assert out.reply == {"result": False, "id": 1}
    out = handle_message(out.session, request("SET_PROPERTY", ["combined", True], 2), clock())
    assert out.reply == {"result": None, "id": 2}
    assert out.session.combined is True
    out = handle_message(out.session, request("SET_PROPERTY", ["combined", "yes"], 3), clock())
    assert out.reply["error"]["code"] == 1
    out = handle_message(out.session, request("GET_PROPERTY", ["colour"], 4), clock())
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
    out = handle_message(session, message, clock())
    assert out.close is None
    assert set(out.reply) == {"error", "id"}
    assert out.reply["id"] == reply_id
    assert out.reply["error"]["code"] == code
    assert msg_part in out.reply["error"]["msg"]
    assert out.session.streams == session.streams  # errors change nothing


def test_bytes_messages_are_parsed_too(clock):
    out = handle_message(Session(), request("LIST_SUBSCRIPTIONS").encode(), clock())
    assert out.reply == {"result": [], "id": 1}


def test_subscribing_past_the_stream_limit_closes(clock):
    names = [stream_name(s) for s in sorted(MANY)]
    out = handle_message(Session(), request("SUBSCRIBE", names[:MAX_STREAMS_PER_CONNECTION]), clock())
    assert len(out.session.streams) == MAX_STREAMS_PER_CONNECTION and out.close is None
    again = handle_message(out.session, request("SUBSCRIBE", names[:10]), clock())
    assert again.close is None  # already-subscribed streams do not count twice
    over = handle_message(out.session, request("SUBSCRIBE", [names[MAX_STREAMS_PER_CONNECTION]]), clock())
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
        out = handle_message(session, "garbage", 10.0 + i / 10)
        assert out.close is None and out.reply["error"]["code"] == 3
        session = out.session
    out = handle_message(session, request("LIST_SUBSCRIPTIONS"), 10.9)
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


def test_one_second_all_market_stream_is_the_plain_one():
    session = Session(streams=(ALL_1S,), combined=True)
    (frame,) = TickFrames([BTC, ETH]).frames_for(session)
    assert json.loads(frame.text) == {"stream": ALL_1S, "data": [BTC, ETH]}


def test_three_second_all_market_stream_sends_each_symbols_latest_every_third_tick():
    btc_2 = {**BTC, "E": 7}
    ticks = [[BTC], [ETH], [btc_2], [ETH]]
    history: list[list[dict]] = []
    sent = []
    for number, events in enumerate(ticks, start=1):
        sent.append(TickFrames(events, number, history[-2:]).frames_for(Session(streams=(ALL_3S,))))
        history.append(events)
    assert [len(frames) for frames in sent] == [0, 0, 1, 0]
    assert json.loads(sent[2][0].text) == [btc_2, ETH]  # BTC's older event of the window is superseded
    assert sent[2][0].events == (btc_2, ETH)


def test_streams_binance_never_feeds_get_nothing():
    tick = TickFrames([BTC, ETH])
    session = Session(streams=("BTCUSDT@miniTicker", "dogeusdt@miniTicker", "!miniTicker@arr@5000ms"))
    assert tick.frames_for(session) == ()


def test_microsecond_time_unit_scales_event_time_only_on_the_wire():
    session = Session(streams=(ALL_MARKET_STREAM, "btcusdt@miniTicker"), time_factor=1000)
    frames = TickFrames([BTC]).frames_for(session)
    assert [json.loads(f.text) for f in frames] == [[{**BTC, "E": 5000}], {**BTC, "E": 5000}]
    assert frames[0].events == (BTC,)  # what the simulator records stays in milliseconds
    assert BTC["E"] == 5


def test_empty_tick_has_no_frames():
    assert TickFrames([]).frames_for(Session(streams=(ALL_MARKET_STREAM,))) == ()


def test_server_shutdown_event():
    assert protocol.server_shutdown_event(123) == {"e": "serverShutdown", "E": 123}
