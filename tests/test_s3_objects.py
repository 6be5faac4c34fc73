"""Object keys, bodies and the cut of the S3 sink, without any I/O.

The exactly-once argument (crash-replays and zombie writers) is checked in
tests/test_s3_fencing.py against a fake store.
"""

from __future__ import annotations

import gzip

import orjson
import pytest

from processors.s3_objects import (
    GZIP_CONTENT_TYPE,
    JSONL_CONTENT_TYPE,
    Extent,
    ForeignObjectError,
    IncarnationMismatch,
    Layout,
    Progress,
    Row,
    S3Object,
    Standing,
    Stored,
    event_hour,
    locate,
    object_key,
    store_batch,
    walk_hour,
)
from tests.factories import s3_row

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
    [obj] = batch_objects([s3_row(offset, e) for offset, e in enumerate(events, start=40)], partition=1)
    assert obj.body == b"".join(orjson.dumps(e) + b"\n" for e in events)
    assert lines(obj) == events  # decimal strings stay strings, field order kept
    assert (obj.extent, obj.content_type) == (Extent(40, 42, 3), JSONL_CONTENT_TYPE)
    assert obj.extent.metadata() == {"first-offset": "40", "last-offset": "42", "rows": "3"}
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
    items = [s3_row(offset, event(t)) for offset, t in zip([10, 11, 13, 14, 15], times, strict=True)]
    first, second = batch_objects(items)
    assert first.key == "p/dt=2023-11-14/hour=22/t-00000-00000000000000000010.jsonl"
    assert [e["E"] for e in lines(first)] == [times[0], times[1], times[3]]
    assert second.key == "p/dt=2023-11-14/hour=23/t-00000-00000000000000000013.jsonl"
    assert [e["E"] for e in lines(second)] == [times[2], times[4]]


def test_gzip_objects_are_byte_identical_when_written_again():
    items = [s3_row(i, event(HOUR_22 + i)) for i in range(50)]
    [once] = batch_objects(items, compression="gzip")
    [again] = batch_objects(items, compression="gzip")
    [plain] = batch_objects(items)
    assert once.body == again.body
    assert gzip.decompress(once.body) == plain.body
    assert (once.key, once.content_type) == (plain.key + ".gz", GZIP_CONTENT_TYPE)


def test_unknown_compression_is_named():
    with pytest.raises(ValueError, match="'zip' is not one of none, gzip"):
        Layout(prefix="", topic="t", partition=0, max_rows=10, compression="zip")


def batch_objects(items: list[Row], max_rows: int = 1000, **layout) -> list[S3Object]:
    """The objects a writer creates for ``items`` on an empty store."""
    created: list[S3Object] = []

    def create(obj: S3Object) -> None:
        created.append(obj)

    layout = {"prefix": "p", "topic": "t", "partition": 0, **layout}
    store_batch(items, Layout(max_rows=max_rows, **layout), Progress(), create, lambda *_: Standing(0, -1))
    return created


def test_a_batch_is_cut_into_full_objects_per_hour_and_the_rest_last():
    times = [HOUR_22 + HOUR_MS - 7 + i for i in range(12)]  # 7 events of hour 22, then 5 of hour 23
    items = [s3_row(100 + i, event(t)) for i, t in enumerate(times)]
    objects = batch_objects(items, max_rows=3)
    assert [(obj.hour.hour, obj.extent) for obj in objects] == [
        (22, Extent(100, 102, 3)),
        (22, Extent(103, 105, 3)),
        (22, Extent(106, 106, 1)),
        (23, Extent(107, 109, 3)),
        (23, Extent(110, 111, 2)),
    ]
    assert [Layout("p", "t", 0, 3).listed(obj.hour, obj.key) for obj in objects] == [
        (0, offset) for offset in (100, 103, 106, 107, 110)
    ]
    assert [row for obj in objects for row in lines(obj)] == [orjson.loads(line) for *_, line in items]


def test_a_taken_key_is_skipped_through_the_existing_objects_last_offset():
    hour = event_hour(HOUR_22)
    layout = Layout("p", "t", 0, max_rows=3)
    rows = [s3_row(offset, event(HOUR_22 + offset)) for offset in range(10, 20)]
    taken = {layout.key(hour, 10): Stored(Extent(10, 14, 5), rows[0][2])}  # another writer's longer cut
    created: list[Extent] = []

    def create(obj: S3Object) -> Stored | None:
        if obj.key in taken:
            return taken[obj.key]
        created.append(obj.extent)
        return None

    assert walk_hour(layout, hour, rows, Standing(0, -1), create) == Standing(0, 19)
    assert created == [Extent(15, 17, 3), Extent(18, 19, 2)]
    # Standing inside the batch already (the object before it reached past its start):
    created.clear()
    assert walk_hour(layout, hour, rows, Standing(0, 16), create) == Standing(0, 19)
    assert created == [Extent(17, 19, 3)]


def test_a_taken_key_whose_first_line_is_another_message_is_never_skipped():
    # The topic was created again: offset 10 now names another event than the object's first.
    hour = event_hour(HOUR_22)
    layout = Layout("p", "t", 0, max_rows=3)
    rows = [s3_row(offset, event(HOUR_22 + offset)) for offset in range(10, 13)]
    older = s3_row(10, event(HOUR_22 - 5))[2]
    with pytest.raises(IncarnationMismatch) as raised:
        walk_hour(layout, hour, rows, Standing(0, -1), lambda obj: Stored(Extent(10, 40, 31), older))
    assert (raised.value.mismatch.stored, raised.value.mismatch.current) == (older, rows[0][2])
    assert raised.value.mismatch.key == layout.key(hour, 10)


def test_generations_have_keys_of_their_own_in_the_same_hive_directories():
    hour = event_hour(HOUR_22)
    layout = Layout("batch_jsonl", "binance.miniticker", 2, max_rows=3)
    assert layout.key(hour, 1234, 0) == object_key("batch_jsonl", hour, "binance.miniticker", 2, 1234, "none")
    assert layout.key(hour, 1234, 3) == (
        "batch_jsonl/dt=2023-11-14/hour=22/binance.miniticker-00002-g3-00000000000000001234.jsonl"
    )
    assert layout.listed(hour, layout.key(hour, 1234, 3)) == (3, 1234)
    assert layout.listed(hour, layout.key(hour, 7, 0) + ".gz") == (0, 7)
    # A topic whose name starts like ours ("binance.miniticker-00002") is not ours:
    other = Layout("batch_jsonl", "binance.miniticker-00002", 5, max_rows=3)
    assert layout.listed(hour, other.key(hour, 9)) is None
    assert layout.listed(hour, layout.hour_prefix(hour) + "g0-00000000000000000001.jsonl") is None


def test_locate_takes_the_newest_generation_that_belongs_else_a_new_one_above_all():
    listing = {0: [0, 100, 200], 1: [0, 50], 2: [0]}
    asked: list[tuple[int, int]] = []

    def belongs_if(ours: int | None):
        def belongs(generation: int, offset: int) -> bool:
            asked.append((generation, offset))
            return generation == ours

        return belongs

    assert locate(listing, 120, belongs_if(1)) == (1, 50)
    assert asked == [(2, 0), (1, 50)]  # newest first; each by the object before the batch
    asked.clear()
    assert locate(listing, 120, belongs_if(None)) == (3, None)
    assert asked == [(2, 0), (1, 50), (0, 100)]
    asked.clear()
    assert locate({0: [300, 400]}, 120, belongs_if(None)) == (1, None)
    assert asked == [(0, 300)]  # nothing before the batch: the chain's first object
    assert locate({}, 120, belongs_if(None)) == (0, None)
    # Above a generation found to be another incarnation's, only newer ones are tried.
    asked.clear()
    assert locate(listing, 120, belongs_if(0), above=1) == (3, None)
    assert asked == [(2, 0)]
    assert locate({}, 120, belongs_if(None), above=4) == (5, None)


def test_an_extent_that_does_not_fit_the_key_is_refused():
    hour = event_hour(HOUR_22)
    layout = Layout("p", "t", 0, max_rows=3)
    rows = [s3_row(offset, event(HOUR_22 + offset)) for offset in range(10, 13)]
    with pytest.raises(ForeignObjectError, match="records extent"):
        walk_hour(layout, hour, rows, Standing(0, -1), lambda obj: Stored(Extent(9, 20, 12), rows[0][2]))
    with pytest.raises(ValueError, match="expected metadata first-offset"):
        Extent.from_metadata({"first-offset": "3"})
    assert Extent.from_metadata({"first-offset": "3", "last-offset": "9", "rows": "4"}) == Extent(3, 9, 4)


def test_progress_is_used_only_for_the_batch_right_after_it():
    hour = event_hour(HOUR_22)
    progress = Progress().after(41, {hour: Standing(1, 45)})
    assert progress.known(hour, 42) == Standing(1, 45)
    assert progress.known(hour, 43) is None  # a gap: a rebalance may lie in between
    assert progress.known(event_hour(HOUR_22 + HOUR_MS), 42) is None


def test_a_key_of_another_incarnation_met_at_put_time_moves_the_hour_to_a_newer_generation():
    # The listing saw nothing (another incarnation's object appeared after it, or the writer
    # went by its memory): the put finds the key taken by another message; the hour is
    # located again above that generation, and nothing is skipped.
    hour = event_hour(HOUR_22)
    layout = Layout("p", "t", 0, max_rows=3)
    rows = [s3_row(offset, event(HOUR_22 + offset)) for offset in range(6)]
    older = s3_row(0, event(HOUR_22 - 5))[2]
    asked: list[object] = []
    created: list[str] = []

    def create(obj: S3Object) -> Stored | None:
        if obj.key == layout.key(hour, 0):
            return Stored(Extent(0, 9, 10), older)
        created.append(obj.key)
        return None

    def relocate(at_hour, hour_rows, mismatch):
        asked.append(mismatch)
        return Standing(0, -1) if mismatch is None else Standing(mismatch.generation + 1, -1)

    progress = store_batch(rows, layout, Progress(), create, relocate)
    assert created == [layout.key(hour, 0, 1), layout.key(hour, 3, 1)]
    assert asked[0] is None and asked[1].key == layout.key(hour, 0) and asked[1].stored == older
    assert progress.stored_through == {hour: Standing(1, 5)}
