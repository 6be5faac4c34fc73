"""Object keys, bodies and the crash-replay argument of the S3 sink, without any I/O."""

from __future__ import annotations

import gzip
import random
from collections import Counter
from collections.abc import Callable

import orjson
import pytest

from processors.s3_objects import (
    GZIP_CONTENT_TYPE,
    JSONL_CONTENT_TYPE,
    S3Object,
    batch_objects,
    event_hour,
    object_key,
)

HOUR_MS = 3_600_000
#: 2023-11-14T22:00:00Z
HOUR_22 = 1_700_000_000_000 - 1_700_000_000_000 % HOUR_MS


def event(event_time: int, symbol: str = "BTCUSDT", close: str = "0.00250000") -> dict:
    return {
        "e": "24hrMiniTicker",
        "E": event_time,
        "s": symbol,
        "c": close,
        "o": "0.0010",
        "h": "0.0025",
        "l": "0.0010",
        "v": "10000",
        "q": "18",
    }


def lines(obj: S3Object) -> list[dict]:
    body = gzip.decompress(obj.body) if obj.key.endswith(".gz") else obj.body
    assert body.endswith(b"\n")
    return [orjson.loads(line) for line in body.splitlines()]


def test_key_is_hive_hour_of_the_event_time_then_topic_partition_and_first_offset():
    hour = event_hour(HOUR_22 + 59 * 60_000)
    assert object_key("batch_jsonl", hour, "binance.miniticker", 2, 1234, "none") == (
        "batch_jsonl/dt=2023-11-14/hour=22/binance.miniticker-00002-00000000000000001234.jsonl"
    )
    assert object_key("a/b", hour, "t", 0, 0, "gzip") == (
        "a/b/dt=2023-11-14/hour=22/t-00000-00000000000000000000.jsonl.gz"
    )
    assert object_key("", hour, "t", 0, 7, "none") == "dt=2023-11-14/hour=22/t-00000-00000000000000000007.jsonl"


def test_event_hour_is_utc_and_exact_at_the_boundary():
    assert event_hour(HOUR_22 - 1).hour == 21
    assert event_hour(HOUR_22).hour == 22
    assert event_hour(HOUR_22 + HOUR_MS - 1).hour == 22
    midnight = HOUR_22 + 2 * HOUR_MS
    assert (f"{event_hour(midnight - 1):%Y-%m-%d %H}", f"{event_hour(midnight):%Y-%m-%d %H}") == (
        "2023-11-14 23",
        "2023-11-15 00",
    )


def test_body_holds_each_events_own_fields_one_per_line():
    events = [event(HOUR_22 + i, close=f"0.00{i}500000") for i in range(3)]
    [obj] = batch_objects(list(enumerate(events, start=40)), prefix="p", topic="t", partition=1)
    assert obj.body == b"".join(orjson.dumps(e) + b"\n" for e in events)
    assert lines(obj) == events  # decimal strings stay strings, field order kept
    assert (obj.rows, obj.first_offset, obj.content_type) == (3, 40, JSONL_CONTENT_TYPE)
    assert obj.key.endswith("/t-00001-00000000000000000040.jsonl")


def test_a_batch_spanning_an_hour_becomes_one_object_per_hour():
    # A late event of hour 22 arrives after hour 23 began: it still goes to hour 22.
    times = [
        HOUR_22 + HOUR_MS - 2,
        HOUR_22 + HOUR_MS - 1,
        HOUR_22 + HOUR_MS,
        HOUR_22 + HOUR_MS - 3,
        HOUR_22 + HOUR_MS + 5,
    ]
    items = [(offset, event(t)) for offset, t in zip([10, 11, 13, 14, 15], times, strict=True)]
    first, second = batch_objects(items, prefix="p", topic="t", partition=0)
    assert first.key == "p/dt=2023-11-14/hour=22/t-00000-00000000000000000010.jsonl"
    assert [e["E"] for e in lines(first)] == [times[0], times[1], times[3]]
    assert second.key == "p/dt=2023-11-14/hour=23/t-00000-00000000000000000013.jsonl"
    assert [e["E"] for e in lines(second)] == [times[2], times[4]]


def test_gzip_objects_are_byte_identical_when_written_again():
    items = [(i, event(HOUR_22 + i)) for i in range(50)]
    [once] = batch_objects(items, prefix="p", topic="t", partition=0, compression="gzip")
    [again] = batch_objects(items, prefix="p", topic="t", partition=0, compression="gzip")
    [plain] = batch_objects(items, prefix="p", topic="t", partition=0)
    assert once.body == again.body
    assert gzip.decompress(once.body) == plain.body
    assert (once.key, once.content_type) == (plain.key + ".gz", GZIP_CONTENT_TYPE)


def test_unknown_compression_is_named():
    with pytest.raises(ValueError, match="'zip' is not one of none, gzip"):
        batch_objects([], prefix="", topic="t", partition=0, compression="zip")


# --------------------------------------------------------------------------- crash replays

Writer = Callable[[list[tuple[int, dict]]], list[S3Object]]


def hour_objects(batch: list[tuple[int, dict]]) -> list[S3Object]:
    return batch_objects(batch, prefix="p", topic="t", partition=0)


def put(store: dict[str, list[dict]], objects: list[S3Object]) -> None:
    for obj in objects:
        store[obj.key] = lines(obj)


def stored_events(store: dict[str, list[dict]]) -> Counter:
    return Counter(orjson.dumps(row) for rows in store.values() for row in rows)


def expected_events(stream: list[dict | None]) -> Counter:
    return Counter(orjson.dumps(e) for e in stream if e is not None)


def batch_of(stream: list[dict | None], start: int, end: int) -> list[tuple[int, dict]]:
    """The valid events among offsets [start, end): poison messages (None) never reach the sink."""
    return [(offset, stream[offset]) for offset in range(start, end) if stream[offset] is not None]


def test_an_abandoned_batch_is_overwritten_by_a_replay_cut_differently():
    # Offsets 0-9; offset 4 is poison; offset 7 is a late event of hour 22 after hour 23 began.
    stream: list[dict | None] = [event(HOUR_22 + HOUR_MS - 10 + i) for i in range(10)]
    stream[4] = None
    stream[7] = event(HOUR_22 + 5, symbol="ETHUSDT")
    store: dict[str, list[dict]] = {}

    put(store, hour_objects(batch_of(stream, 0, 10)))  # written, then kill -9 before the commit
    for start, end in [(0, 3), (3, 8), (8, 10)]:  # after the restart: smaller batches
        put(store, hour_objects(batch_of(stream, start, end)))
    assert stored_events(store) == expected_events(stream)

    store.clear()
    put(store, hour_objects(batch_of(stream, 0, 3)))  # a small batch written, not committed
    put(store, hour_objects(batch_of(stream, 0, 6)[:1]))  # its replay dies after one object
    put(store, hour_objects(batch_of(stream, 0, 10)))  # then one big batch commits everything
    assert stored_events(store) == expected_events(stream)


def replay_with_crashes(
    stream: list[dict | None], writer: Writer, max_batch: int, rng: random.Random
) -> dict[str, list[dict]]:
    """Run a sink over ``stream`` that crashes at random points and resumes at the committed offset.

    Each attempt cuts a batch of a random length (count or time trigger) from the committed
    offset, writes its objects in order, and may die before any object or before the commit.
    """
    store: dict[str, list[dict]] = {}
    committed = 0
    while committed < len(stream):
        end = min(len(stream), committed + rng.randint(1, max_batch))
        objects = writer(batch_of(stream, committed, end))
        assert all(obj.rows <= max_batch for obj in objects)
        if rng.random() < 0.4:  # crash: some objects were written, the offset is not committed
            put(store, objects[: rng.randint(0, len(objects))])
            continue
        put(store, objects)
        committed = end
    return store


def random_stream(rng: random.Random, length: int) -> list[dict | None]:
    """Events around an hour boundary, a few late ones and a few poison messages (None)."""
    stream: list[dict | None] = []
    clock = HOUR_22 + HOUR_MS - length * 50
    for _ in range(length):
        clock += rng.randint(0, 150)
        roll = rng.random()
        if roll < 0.08:
            stream.append(None)
        elif roll < 0.2:
            stream.append(event(clock - rng.randint(0, 3_000), symbol="LATEUSDT"))
        else:
            stream.append(event(clock))
    return stream


def test_every_event_is_stored_exactly_once_whatever_the_crashes_and_cuts():
    for seed in range(300):
        rng = random.Random(seed)
        stream = random_stream(rng, rng.randint(1, 60))
        store = replay_with_crashes(stream, hour_objects, max_batch=rng.randint(1, 12), rng=rng)
        assert stored_events(store) == expected_events(stream), f"seed {seed}"


def test_the_replay_check_catches_a_naming_that_is_not_crash_safe():
    """Chunking a batch into fixed-size objects named by their first offset loses idempotence."""

    def chunked(batch: list[tuple[int, dict]]) -> list[S3Object]:
        return [obj for i in range(0, len(batch), 3) for obj in hour_objects(batch[i : i + 3])]

    outcomes = set()
    for seed in range(50):
        rng = random.Random(seed)
        stream = random_stream(rng, 40)
        outcomes.add(stored_events(replay_with_crashes(stream, chunked, 12, rng)) == expected_events(stream))
    assert False in outcomes
