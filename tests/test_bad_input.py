"""Bad input: whatever arrives, nothing raises, every item is classified, junk is
dead-lettered and never stored, and the services keep running.

Property tests (hypothesis, derandomized so CI is reproducible) drive the pure parts —
the producer's frame parser, the event validator, the sinks' per-message check and the
DynamoDB row builder — with malformed input of every shape; flood tests push thousands
of malformed frames and messages through the real producer and both sinks.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import boto3
import orjson
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from websockets.asyncio.server import ServerConnection, serve

from crypto_live.dead_letter import original_bytes
from crypto_live.dynamo_table import create_table_request
from crypto_live.event import DECIMAL_FIELDS, FIELDS, Invalid, MiniTicker, decode, plain_event_time, validate
from crypto_live.settings import DynamoSinkSettings, ProducerSettings, S3SinkSettings, load
from processors import dynamo_sink, s3_sink
from processors.dynamo_items import NUMBER_ATTRIBUTES, to_item
from processors.s3_objects import to_row
from processors.stream import DeadLetters, state_directory
from producer.frames import SERVER_SHUTDOWN, parse_frame
from producer.inprocess import ProducerThread
from producer.publisher import DLQ_MAX_RAW_BYTES
from tests.factories import BASE_TIME_MS, assert_exactly_once, key_of, publish, run_app_until, ticker
from tests.helpers import read_topic, wait_for
from tests.properties import PROPERTY

ASCII_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?")
ASCII_SYMBOL = re.compile(r"[A-Z0-9]{2,32}")
MIN_EVENT_MS, MAX_EVENT_MS = 1_483_228_800_000, 4_102_444_800_000


# --------------------------------------------------------------------------- strategies

#: Strings a careless reader might take for a decimal: none is one of Binance's decimal strings.
NEAR_DECIMALS = (
    "",
    "NaN",
    "nan",
    "Infinity",
    "-1",
    "+1",
    "1.",
    ".5",
    "1e5",
    "1E-3",
    " 1",
    "1 ",
    "1\n",
    "1_000",
    "1,5",
    "0x1F",
    "١٢٣",  # Arabic-Indic digits: Unicode, not ASCII
    "１２",  # full-width digits
    "৫.৫",  # Bengali digits
    "1.2.3",
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(NEAR_DECIMALS),
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=15,
)

#: JSON number literals orjson reads but a JSON value cannot hold: 400-digit integers, ±1e400, -0.
HUGE_NUMBERS = ("9" * 400, "-" + "9" * 400, "1e400", "-1e400", "1" + "0" * 30, "-0", "0.0000000000000000000000001")


def symbols() -> st.SearchStrategy[str]:
    return st.from_regex(ASCII_SYMBOL, fullmatch=True)


def decimal_strings() -> st.SearchStrategy[str]:
    """ASCII decimal strings, leading and trailing zeros included: "0.00250000", "007", "18"."""
    digits = st.integers(min_value=0, max_value=10**40).map(str)
    zeros = st.sampled_from(["", "0", "00000000"])
    fraction = st.none() | st.tuples(zeros, digits, zeros).map("".join)
    return st.tuples(zeros, digits, fraction).map(lambda t: t[0] + t[1] + ("" if t[2] is None else "." + t[2]))


@st.composite
def valid_events(draw: st.DrawFn) -> dict[str, Any]:
    """Any event the contract allows: any symbol, event time and decimal strings, extra fields kept."""
    event = ticker(
        symbol=draw(symbols()),
        event_time=draw(st.integers(min_value=MIN_EVENT_MS, max_value=MAX_EVENT_MS - 1)),
        **{name: draw(decimal_strings()) for name in DECIMAL_FIELDS},
    )
    extra = draw(st.dictionaries(st.text(max_size=5).filter(lambda k: k not in FIELDS), json_values, max_size=2))
    return {**event, **extra}


def wrong_values(name: str) -> st.SearchStrategy[Any]:
    """Values field ``name`` must not hold."""
    integers = st.integers(min_value=-(2**63), max_value=2**64 - 1)  # what orjson can write
    other_types = st.one_of(st.none(), st.booleans(), st.floats(), st.lists(scalars, max_size=3), st.just({}))
    if name == "e":
        return st.one_of(other_types, integers, st.text().filter(lambda t: t != "24hrMiniTicker"))
    if name == "E":
        out_of_range = st.integers(-(2**63), MIN_EVENT_MS - 1) | st.integers(MAX_EVENT_MS, 2**64 - 1)
        return st.one_of(other_types, st.text(), out_of_range, st.just(float(BASE_TIME_MS)))
    if name == "s":
        return st.one_of(other_types, integers, st.text().filter(lambda t: not ASCII_SYMBOL.fullmatch(t)))
    not_decimal = st.text().filter(lambda t: not ASCII_DECIMAL.fullmatch(t))
    return st.one_of(other_types, integers, st.sampled_from(NEAR_DECIMALS), not_decimal)


@st.composite
def broken_events(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """A valid event with one field given a wrong value or removed: (that field, the event)."""
    event = draw(valid_events())
    name = draw(st.sampled_from(list(FIELDS)))
    if draw(st.booleans()):
        del event[name]
    else:
        event[name] = draw(wrong_values(name))
    return name, event


def junk_items() -> st.SearchStrategy[Any]:
    """Array items that are not events and not serverShutdown."""
    not_shutdown = json_values.filter(lambda v: not (isinstance(v, dict) and v.get("e") == SERVER_SHUTDOWN))
    return st.one_of(not_shutdown, broken_events().map(lambda pair: pair[1]))


#: An array item tagged with what the parser must make of it.
tagged_items = st.one_of(
    valid_events().map(lambda e: ("event", e)),
    junk_items().map(lambda j: ("rejected", j)),
    st.just(("shutdown", {"e": SERVER_SHUTDOWN, "E": BASE_TIME_MS})),
)


def assert_one_line(reason: str) -> None:
    assert reason.strip() and "\n" not in reason and "\r" not in reason, f"not a one-line reason: {reason!r}"


# --------------------------------------------------------------------------- parse_frame


@PROPERTY
@given(st.binary(max_size=300) | st.text(max_size=200).map(str.encode))
def test_any_bytes_or_text_parse_without_raising_and_all_of_a_non_json_frame_is_rejected(raw: bytes) -> None:
    frame = parse_frame(raw)
    try:
        orjson.loads(raw)
    except orjson.JSONDecodeError:
        assert frame.not_json and not frame.events and not frame.answers and not frame.server_shutdown
        [rejected] = frame.rejected
        assert rejected.raw == raw and rejected.reason.startswith("not JSON")
        assert_one_line(rejected.reason)
    else:
        assert not frame.not_json
        assert all(r.raw for r in frame.rejected)


@PROPERTY
@given(st.text(max_size=50))
def test_a_text_frame_is_parsed_from_its_utf8_bytes(text: str) -> None:
    assert parse_frame(text) == parse_frame(text.encode())


@PROPERTY
@given(st.lists(tagged_items, max_size=8), st.none() | st.text(max_size=30))
def test_every_item_of_an_array_is_classified_exactly_once(tagged: list[tuple[str, Any]], stream: str | None) -> None:
    items = [item for _, item in tagged]
    payload: Any = items if stream is None else {"stream": stream, "data": items}
    frame = parse_frame(orjson.dumps(payload))

    kinds = Counter(kind for kind, _ in tagged)
    assert len(frame.events) + len(frame.rejected) + kinds["shutdown"] == len(items)
    published = [orjson.loads(value) for value, _, _ in frame.events]
    assert published == [item for kind, item in tagged if kind == "event"]  # unchanged, in order
    assert [r.raw for r in frame.rejected] == [orjson.dumps(item) for kind, item in tagged if kind == "rejected"]
    assert frame.server_shutdown == (kinds["shutdown"] > 0)
    assert not frame.answers and not frame.not_json
    positions = [i for i, (kind, _) in enumerate(tagged, start=1) if kind == "rejected"]
    for position, rejected in zip(positions, frame.rejected, strict=True):
        assert rejected.reason.startswith(f"item {position} of {len(items)}")
        assert_one_line(rejected.reason)


@PROPERTY
@given(tagged_items, st.none() | st.text(max_size=30))
def test_a_single_item_frame_is_classified_and_rejected_as_the_bytes_received(
    tagged: tuple[str, Any], stream: str | None
) -> None:
    kind, item = tagged
    assume(not isinstance(item, list))  # an array is many items: the test above
    payload: Any = item if stream is None else {"stream": stream, "data": item}
    raw = orjson.dumps(payload, option=orjson.OPT_INDENT_2)  # not orjson's compact form: kept as received
    frame = parse_frame(raw)
    if kind == "event":
        assert [orjson.loads(value) for value, _, _ in frame.events] == [item] and not frame.rejected
    elif kind == "shutdown":
        assert frame.server_shutdown and not frame.events and not frame.rejected
    elif not (stream is None and isinstance(item, dict) and "id" in item and ("result" in item or "error" in item)):
        [rejected] = frame.rejected
        assert rejected.raw == raw and not frame.events and not frame.server_shutdown
        assert_one_line(rejected.reason)


@PROPERTY
@given(st.dictionaries(st.text(max_size=5), json_values, max_size=3), json_values, st.booleans())
def test_answers_to_control_messages_are_answers_only(extra: dict[str, Any], value: Any, is_error: bool) -> None:
    answer = {**extra, ("error" if is_error else "result"): value, "id": 7}
    answer.pop("e", None)
    frame = parse_frame(orjson.dumps(answer))
    assert frame.answers == [answer] and not frame.events and not frame.rejected and not frame.server_shutdown


@PROPERTY
@given(
    st.lists(st.sampled_from(HUGE_NUMBERS) | scalars.map(lambda v: orjson.dumps(v).decode()), min_size=1, max_size=6),
    st.sampled_from(["array", "field", "price"]),
)
def test_huge_number_literals_are_counted_and_rejected_never_raised(literals: list[str], where: str) -> None:
    if where == "array":
        text = "[" + ",".join(literals) + "]"
    else:
        base = orjson.dumps(ticker(1, c="__")).decode()
        field = '"E":' if where == "field" else '"c":'
        text = base.replace('"E":1700000001000', field + literals[0]) if where == "field" else base
        text = text.replace('"c":"__"', '"c":' + literals[0]) if where == "price" else text
    raw = text.encode()
    frame = parse_frame(raw)
    assert not frame.events
    if frame.not_json:
        assert [r.raw for r in frame.rejected] == [raw]
    else:
        assert len(frame.rejected) == (len(literals) if where == "array" else 1)
    for rejected in frame.rejected:
        assert rejected.raw
        assert_one_line(rejected.reason)


@pytest.mark.parametrize(
    "raw",
    [b"[" * 5000, b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000, b"\xff\xfe\x00", b"", b" "],
)
def test_deep_nesting_binary_and_empty_frames_are_rejected_whole(raw: bytes) -> None:
    frame = parse_frame(raw)
    assert not frame.events and [r.raw for r in frame.rejected] == [raw]
    assert_one_line(frame.rejected[0].reason)


# --------------------------------------------------------------------------- validate / decode


def assert_contract(event: MiniTicker) -> None:
    fields = event.fields
    assert fields["e"] == "24hrMiniTicker"
    assert type(fields["E"]) is int and MIN_EVENT_MS <= fields["E"] < MAX_EVENT_MS
    assert isinstance(fields["s"], str) and ASCII_SYMBOL.fullmatch(fields["s"])
    for name in DECIMAL_FIELDS:
        assert isinstance(fields[name], str) and ASCII_DECIMAL.fullmatch(fields[name]), (name, fields[name])


@PROPERTY
@given(json_values | valid_events() | broken_events().map(lambda pair: pair[1]))
def test_validate_never_raises_and_what_it_accepts_meets_the_contract(value: Any) -> None:
    result = validate(value)
    if isinstance(result, MiniTicker):
        assert_contract(result)
        assert result.fields is value  # kept exactly as received
    else:
        assert isinstance(result, Invalid)
        assert_one_line(result.reason)


@PROPERTY
@given(st.binary(max_size=300) | json_values.map(orjson.dumps) | valid_events().map(orjson.dumps))
def test_decode_never_raises_on_bytes(raw: bytes) -> None:
    result = decode(raw)
    if isinstance(result, MiniTicker):
        assert_contract(result)
        assert result.to_json() == orjson.dumps(orjson.loads(raw))
    else:
        assert_one_line(result.reason)


@PROPERTY
@given(valid_events())
def test_every_contract_event_is_valid(event: dict[str, Any]) -> None:
    assert validate(event) == MiniTicker(event)


@settings(PROPERTY, max_examples=120)
@given(broken_events())
def test_one_wrong_or_missing_field_is_invalid_and_the_reason_names_it(broken: tuple[str, dict[str, Any]]) -> None:
    name, event = broken
    result = validate(event)
    assert isinstance(result, Invalid), f"field {name!r} = {event.get(name)!r} was accepted"
    assert f"'{name}'" in result.reason
    assert_one_line(result.reason)


@pytest.mark.parametrize("value", ["١٢٣", "１２.５", "৫", "1.٣"])
def test_prices_in_non_ascii_digits_are_not_decimal_strings(value: str) -> None:
    # Python's \d matches every Unicode digit; Binance's decimal strings are ASCII only.
    result = validate(ticker(1, c=value))
    assert isinstance(result, Invalid) and "'c'" in result.reason


# --------------------------------------------------------------------------- the sinks' checks

raw_messages = st.one_of(
    st.none(),
    st.binary(max_size=200),
    json_values.map(orjson.dumps),
    valid_events().map(orjson.dumps),
    valid_events().map(lambda event: orjson.dumps(event, option=orjson.OPT_INDENT_2)),  # valid, over lines
    broken_events().map(lambda pair: orjson.dumps(pair[1])),
)


@PROPERTY
@given(raw_messages, st.integers(min_value=0, max_value=2**62))
def test_a_message_becomes_a_row_of_its_own_bytes_or_says_why_it_is_not_an_event(
    raw: bytes | None, offset: int
) -> None:
    row = to_row(offset, raw)
    decoded = decode(raw)
    if isinstance(row, Invalid):
        assert isinstance(decoded, Invalid) and row.reason == decoded.reason
        assert_one_line(row.reason)
        return
    assert raw is not None and isinstance(decoded, MiniTicker)
    row_offset, event_time, line = row
    assert (row_offset, event_time) == (offset, decoded.event_time)
    assert b"\n" not in line and b"\r" not in line  # one JSONL line
    assert line == raw.replace(b"\n", b" ").replace(b"\r", b" ")  # the bytes read, numbers as written
    assert orjson.loads(line) == decoded.fields


@PROPERTY
@given(st.one_of(valid_events(), broken_events().map(lambda pair: pair[1])), st.data())
def test_the_byte_check_of_binances_layout_accepts_only_what_validate_accepts(
    event: dict[str, Any], data: st.DataObject
) -> None:
    raw = orjson.dumps(event)
    if data.draw(st.booleans(), label="mutate one byte"):
        at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1), label="at")
        raw = raw[:at] + bytes([data.draw(st.integers(min_value=0, max_value=255), label="byte")]) + raw[at + 1 :]
    event_time = plain_event_time(raw)
    decoded = decode(raw)
    if event_time is not None:
        assert isinstance(decoded, MiniTicker) and decoded.event_time == event_time
    elif list(event) == list(FIELDS) and isinstance(decoded, MiniTicker) and orjson.dumps(decoded.fields) == raw:
        pytest.fail(f"a valid event in Binance's layout missed the byte check: {raw!r}")


@PROPERTY
@given(raw_messages, st.integers(min_value=0, max_value=2**31), st.integers(min_value=0, max_value=2**62))
def test_a_dead_letter_names_its_source_and_keeps_the_original_bytes(
    raw: bytes | None, partition: int, offset: int
) -> None:
    dead_letters = DeadLetters("a-sink")
    dead_letters.reject("why", raw, topic="miniticker", partition=partition, offset=offset, key=b"k", timestamp=1)
    (record,) = dead_letters.records
    assert record["stage"] == "a-sink"
    assert record["source"] == {"topic": "miniticker", "partition": partition, "offset": offset}
    assert original_bytes(orjson.loads(orjson.dumps(record))) == (raw if raw is not None else b"")


# --------------------------------------------------------------------------- DynamoDB rows


@st.composite
def extreme_decimals(draw: st.DrawFn) -> str:
    """Decimal strings at DynamoDB's edges: 40+ digits, far below 1E-130, far above 1E+125."""
    digits = draw(st.from_regex(r"[0-9]{1,60}", fullmatch=True))
    shape = draw(st.sampled_from(["plain", "tiny", "huge", "trailing", "fraction"]))
    zeros = "0" * draw(st.integers(min_value=0, max_value=200))
    if shape == "tiny":
        return "0." + zeros + digits
    if shape == "huge":
        return digits + zeros
    if shape == "trailing":
        return digits[:1] + "." + digits + zeros
    if shape == "fraction":
        return digits + "." + draw(st.from_regex(r"[0-9]{1,60}", fullmatch=True))
    return digits


def dynamo_can_hold(text: str) -> bool:
    """DynamoDB's number limits, computed from the digits: 38 significant, 1E-130 <= |x| < 1E+126."""
    whole, _, fraction = text.partition(".")
    significant = (whole + fraction).strip("0")
    if not significant:
        return True  # zero
    return len(significant) <= 38 and -130 <= Decimal(text).adjusted() <= 125


@settings(PROPERTY, max_examples=120)
@given(valid_events(), st.sampled_from(DECIMAL_FIELDS), extreme_decimals())
def test_a_row_holds_exactly_the_events_numbers_or_names_the_field_it_cannot(
    event: dict[str, Any], name: str, value: str
) -> None:
    event = {**event, name: value, **{other: "1.5" for other in DECIMAL_FIELDS if other != name}}
    assert isinstance(validate(event), MiniTicker)
    try:
        row = to_item(event, 2)
    except ValueError as exc:
        problem = str(exc)
        assert not dynamo_can_hold(value)
        assert problem.startswith(f"field {name!r}")
        assert_one_line(problem)
    else:
        assert dynamo_can_hold(value)
        for field, attribute in NUMBER_ATTRIBUTES.items():
            stored = row[attribute]["N"]
            assert Decimal(stored) == Decimal(event[field])  # exact: Decimal equality never rounds
            whole, _, fraction = stored.lower().split("e")[0].partition(".")
            assert len((whole + fraction).strip("0")) <= 38


# --------------------------------------------------------------------------- floods through the services

FLOOD_JUNK = 2000
FLOOD_EVENTS = 300
#: Event numbers of junk that looks like an event (ticker(n)), far from the valid ones: a stored junk key shows.
JUNK_BASE = 100_000


def junk_frames(count: int, seed: int = 13) -> Iterator[tuple[bytes | str, str]]:
    """``count`` malformed frames of every kind, reproducibly: (frame, its kind).

    Kinds: binary, truncated JSON, wrong types, huge numbers, deep nesting, non-ASCII
    digits, JSON that is no event, an array of junk (counted per item: the frame's kind
    says how many).
    """
    rng = random.Random(seed)
    for i in range(count):
        n = JUNK_BASE + i
        kind = i % 9
        if kind == 0:
            yield bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64))), "binary"
        elif kind == 1:
            text = orjson.dumps(ticker(n))
            yield text[: rng.randrange(1, len(text))], "truncated"
        elif kind == 2:
            name = rng.choice(list(FIELDS))
            wrong = rng.choice([None, True, 1.5, [], {}, "x", -1])
            yield orjson.dumps(ticker(n, **{name: wrong})).decode(), "wrong type"
        elif kind == 3:
            base = orjson.dumps(ticker(n, c="__")).decode()
            yield base.replace('"c":"__"', '"c":' + rng.choice(HUGE_NUMBERS)), "huge number"
        elif kind == 4:
            yield "[" * rng.randrange(1025, 3000), "deep nesting"
        elif kind == 5:
            yield orjson.dumps(ticker(n, v="١٢٣")), "non-ASCII digits"
        elif kind == 6:
            yield orjson.dumps({"stream": "btcusdt@miniTicker", "data": rng.choice([None, 1, "x", {}])}), "not an event"
        elif kind == 7:
            yield orjson.dumps([ticker(n, E="late"), 12, None]), "array of 3"
        else:
            yield "", "empty"


def junk_item_count(kind: str) -> int:
    return 3 if kind == "array of 3" else 1


def not_json(frame: bytes | str) -> bool:
    try:
        orjson.loads(frame)
    except orjson.JSONDecodeError:
        return True
    return False


class FloodServer:
    """A websocket server that sends ``frames`` once, to its first client, then stays quiet."""

    def __init__(self, frames: list[bytes | str]):
        self.frames = frames
        self.sent = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stopped: asyncio.Future[None] | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._serve(),), daemon=True)
        self.port = 0

    async def _serve(self) -> None:
        self._stopped = self._loop.create_future()
        async with serve(self._handle, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stopped

    async def _handle(self, ws: ServerConnection) -> None:
        if not self.sent.is_set():
            for frame in self.frames:
                await ws.send(frame)  # str: a text frame; bytes: a binary frame
            self.sent.set()
        await ws.wait_closed()

    def __enter__(self) -> FloodServer:
        self._thread.start()
        assert self._ready.wait(10), "the flood server did not start"
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._stopped is not None
        self._loop.call_soon_threadsafe(self._stopped.set_result, None)
        self._thread.join(10)


def test_a_flood_of_malformed_frames_is_counted_and_dead_lettered_and_only_the_events_are_published(broker, kafka_env):
    junk = list(junk_frames(FLOOD_JUNK))
    oversized = b"\x00\xff" * (600 * 1024)  # 1.2 MB of binary: over 1 MB, under MAX_FRAME_BYTES
    answer = orjson.dumps({"result": None, "id": 1}).decode()
    events = [ticker(n, symbol=("BTCUSDT", "ETHUSDT")[n % 2]) for n in range(FLOOD_EVENTS)]
    frames: list[bytes | str] = [oversized, answer]
    stride = FLOOD_JUNK // FLOOD_EVENTS
    for i, event in enumerate(events):  # events interleaved with the junk, then the rest of the junk
        frames.extend(frame for frame, _ in junk[i * stride : (i + 1) * stride])
        frames.append(orjson.dumps(event).decode() if i % 2 else orjson.dumps([event]))
    frames.extend(frame for frame, _ in junk[len(events) * stride :])
    frames.append(orjson.dumps(events[:0]))  # an empty array: nothing at all
    invalid = 1 + sum(junk_item_count(kind) for _, kind in junk)
    non_json = 1 + sum(not_json(frame) for frame, _ in junk)

    with FloodServer(frames) as server:
        settings = load(
            ProducerSettings,
            {**kafka_env, "BINANCE_WEBSOCKET_URL": f"ws://127.0.0.1:{server.port}/ws", "PRODUCER_STATS_INTERVAL": "1"},
        )
        with ProducerThread(settings) as producer:
            stats = producer.stats
            wait_for(
                lambda: stats.published + stats.dead_lettered >= FLOOD_EVENTS + invalid,
                timeout=60,
                interval=0.1,
                what="every event published and every junk item dead-lettered",
            )
            assert stats.connections == 1 and stats.reconnects == 0  # junk never ends a connection
            assert producer.stop() == 0

    assert (stats.events, stats.published) == (FLOOD_EVENTS, FLOOD_EVENTS)
    assert (stats.invalid, stats.not_json, stats.dead_lettered, stats.answers) == (invalid, non_json, invalid, 1)
    published = [orjson.loads(m.value()) for m in read_topic(broker, settings.kafka.topic, expected=FLOOD_EVENTS)]
    assert sorted(published, key=key_of) == sorted(events, key=key_of)  # exactly the events, each once, unchanged
    dead = [orjson.loads(m.value()) for m in read_topic(broker, settings.kafka.dlq_topic, expected=invalid)]
    assert len(dead) == invalid and {d["stage"] for d in dead} == {"producer"}
    whole_frames = Counter(
        frame.encode() if isinstance(frame, str) else frame for frame, kind in junk if kind != "array of 3"
    )
    dead_raw = Counter(original_bytes(d) for d in dead)
    assert whole_frames - dead_raw == Counter(), "a junk frame is missing from the DLQ"
    assert dead_raw[oversized[:DLQ_MAX_RAW_BYTES]] == 1


SINK_ENV = {"KAFKA_TOPIC_PARTITIONS": "1"}


def sink_junk(count: int) -> list[bytes]:
    """Poison messages for the sinks: the junk frames as message values (arrays included: a
    message must be one event)."""
    return [frame.encode() if isinstance(frame, str) else frame for frame, _ in junk_frames(count, seed=31)]


def interleave(junk: list[bytes], events: list[dict[str, Any]]) -> list[dict[str, Any] | bytes]:
    stride = len(junk) // len(events)
    values: list[dict[str, Any] | bytes] = []
    for i, event in enumerate(events):
        values.extend(junk[i * stride : (i + 1) * stride])
        values.append(event)
    values.extend(junk[len(events) * stride :])
    return values


def dead_letters(bootstrap: str, topic: str, stage: str, expected: int) -> list[dict[str, Any]]:
    records = [orjson.loads(m.value()) for m in read_topic(bootstrap, topic, expected=expected, timeout=60)]
    return [r for r in records if r["stage"] == stage]


@pytest.fixture
def flooded_topic(kafka_env) -> tuple[list[bytes], list[dict[str, Any]], list[dict[str, Any]]]:
    """The topic, loaded before any sink runs: junk interleaved with events, plus events
    only DynamoDB refuses. Returns (junk, events, too precise for DynamoDB)."""
    junk = sink_junk(FLOOD_JUNK)
    events = [ticker(n, symbol=("BTCUSDT", "BNBBTC", "ETHUSDT")[n % 3]) for n in range(FLOOD_EVENTS)]
    too_precise = [ticker(n, symbol="XRPUSDT", q="1." + "7" * 40) for n in range(10)]
    kafka = load(DynamoSinkSettings, {**kafka_env, **SINK_ENV, "DYNAMO_TABLE_NAME": "unused"}).kafka
    publish(kafka, interleave(junk, events) + too_precise)
    return junk, events, too_precise


def run_sink_until(app_of: Callable[[Any], Any], stage: str, scenario: Callable[[], None]) -> None:
    """Run a sink's app in this thread while ``scenario`` runs in another; stop it after."""
    with state_directory(stage) as state_dir:
        run_app_until(app_of(state_dir), scenario)


def test_a_flood_of_malformed_messages_is_dead_lettered_by_both_sinks_and_only_the_events_are_stored(
    kafka_env, aws_env, unique, flooded_topic
):
    junk, events, too_precise = flooded_topic
    bootstrap, region = kafka_env["KAFKA_BOOTSTRAP_SERVERS"], aws_env["REGION"]
    s3 = boto3.client("s3", region_name=region)
    dynamodb = boto3.client("dynamodb", region_name=region)
    bucket, table = f"bad-input-{unique}", f"bad-input-{unique}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    dynamodb.create_table(**create_table_request(table))
    env = {**kafka_env, **aws_env, **SINK_ENV}

    s3_settings = load(
        S3SinkSettings, {**env, "S3_BUCKET": bucket, "MAX_BATCH_SIZE": "1000", "MAX_BATCH_TIMEOUT": "0.5"}
    )
    dlq = s3_settings.kafka.dlq_topic
    s3_events = events + too_precise  # S3 holds any decimal string
    s3_writer = s3_sink.jsonl_sink(s3_settings)
    s3_dead: list[dict[str, Any]] = []

    def s3_rows() -> list[dict[str, Any]]:
        rows = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for entry in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=entry["Key"])["Body"].read()
                rows.extend(orjson.loads(line) for line in body.splitlines())
        return rows

    def s3_scenario() -> None:
        wait_for(lambda: len(s3_rows()) >= len(s3_events), 60, interval=0.2, what="every event in S3")
        s3_dead.extend(dead_letters(bootstrap, dlq, s3_sink.STAGE, expected=len(junk)))

    run_sink_until(lambda state_dir: s3_sink.application(s3_settings, s3_writer, state_dir), s3_sink.STAGE, s3_scenario)
    rows = s3_rows()
    assert_exactly_once([key_of(row) for row in rows], [key_of(e) for e in s3_events])
    assert sorted(rows, key=key_of) == sorted(s3_events, key=key_of)  # none of the junk, every event unchanged
    assert sorted(original_bytes(d) for d in s3_dead) == sorted(junk)
    assert all(d["source"]["topic"] == s3_settings.kafka.topic for d in s3_dead)

    dynamo_settings = load(DynamoSinkSettings, {**env, "DYNAMO_TABLE_NAME": table, "DYNAMO_MAX_BATCH_TIMEOUT": "0.5"})
    dynamo_dead: list[dict[str, Any]] = []

    def row_keys() -> list[tuple[str, int]]:
        pages = dynamodb.get_paginator("scan").paginate(TableName=table, ConsistentRead=True)
        return [(i["symbol"]["S"], int(i["event_time"]["N"])) for page in pages for i in page["Items"]]

    def dynamo_scenario() -> None:
        wait_for(lambda: len(row_keys()) >= len(events), 60, interval=0.2, what="every event in DynamoDB")
        expected = 2 * len(junk) + len(too_precise)
        dynamo_dead.extend(dead_letters(bootstrap, dlq, dynamo_sink.STAGE, expected=expected))

    with dynamo_sink.table_sink(dynamo_settings) as dynamo_writer:
        run_sink_until(
            lambda state_dir: dynamo_sink.application(dynamo_settings, dynamo_writer, state_dir),
            dynamo_sink.STAGE,
            dynamo_scenario,
        )
    assert_exactly_once(row_keys(), [key_of(e) for e in events])
    assert sorted(original_bytes(d) for d in dynamo_dead) == sorted(junk + [orjson.dumps(e) for e in too_precise])
