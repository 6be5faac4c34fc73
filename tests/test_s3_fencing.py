"""Exactly once against crash-replays AND zombie writers: the S3 sink's cut on a fake store.

A zombie is a writer frozen mid-batch past its session timeout: a new owner takes its
partition over from the committed offset and writes different cuts, then the zombie
resumes and finishes its old batch (its commit is refused). The fake store is S3 as the
sink uses it: create-only puts that answer with the existing object's extent and first
line when the key is taken, and a listing of a partition's hour.

A topic recreation deletes the topic and creates it again under the same name: its
offsets start again at 0 with other events, the group's committed offsets are gone (the
broker deletes them with the topic), and the bucket keeps every object. The running
owner keeps its memory of the old incarnation (a sink that ran through it) or loses it
(a sink stopped in between).
"""

from __future__ import annotations

import random
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import orjson
import pytest

from processors.s3_objects import (
    Extent,
    Layout,
    Mismatch,
    Progress,
    Row,
    S3Object,
    Standing,
    Stored,
    locate,
    resume_after,
    store_batch,
    store_rows,
    to_row,
)
from tests.factories import s3_row
from tests.test_s3_objects import HOUR_22, HOUR_MS, event, lines

Stream = list[dict | None]


@dataclass(frozen=True)
class Scheme:
    """How writers put objects: ``overwrite`` is the old scheme's plain put; ``lookup``
    whether a writer finds the object before its batch in the store (the listing);
    ``check`` whether it checks a found object's first line against the topic (without it,
    every object found is taken for this incarnation's)."""

    max_rows: int
    overwrite: bool = False
    lookup: bool = True
    check: bool = True


#: The scheme before create-only writes: one object per hour and batch, overwritten by a replay.
OVERWRITE = Scheme(max_rows=10**9, overwrite=True, lookup=False)


class Store:
    """The bucket, and the topic as it is now (``log``: the current incarnation's stream)."""

    def __init__(self, scheme: Scheme, log: Callable[[], Stream]):
        self.scheme = scheme
        self.layout = Layout("p", "t", 0, max_rows=scheme.max_rows)
        self.objects: dict[str, tuple[Extent, list[dict], bytes]] = {}
        self.log = log

    def create(self, obj: S3Object) -> Stored | None:
        if obj.key in self.objects and not self.scheme.overwrite:
            extent, _, first_line = self.objects[obj.key]
            return Stored(extent, first_line if self.scheme.check else obj.first_line)
        self.objects[obj.key] = (obj.extent, lines(obj), obj.first_line)
        return None

    def locate(self, hour: datetime, rows: list[Row], mismatch: Mismatch | None) -> Standing:
        """The sink's listing and incarnation check (processors.s3_sink.S3JsonlSink._locate)."""
        if not self.scheme.lookup:
            return Standing(0, -1)
        keys: dict[int, dict[int, str]] = {}
        for key in self.objects:
            if (named := self.layout.listed(hour, key)) is not None:
                keys.setdefault(named[0], {})[named[1]] = key

        def belongs(generation: int, offset: int) -> bool:
            if not self.scheme.check:
                return True
            stream = self.log()
            now = to_row(offset, orjson.dumps(stream[offset]) if offset < len(stream) and stream[offset] else None)
            return isinstance(now, tuple) and self.objects[keys[generation][offset]][2] == now[2]

        above = mismatch.generation if mismatch is not None else -1
        listing = {generation: list(offsets) for generation, offsets in keys.items()}
        generation, previous = locate(listing, rows[0][0], belongs, above=above)
        extent = self.objects[keys[generation][previous]][0] if previous is not None else None
        return resume_after(generation, extent)

    def events(self) -> Counter:
        return Counter(orjson.dumps(row) for _, rows, _ in self.objects.values() for row in rows)


class Crash(Exception):
    """The writer dies here (kill -9), or its write fails and Quix replays (backpressure)."""


class Writer:
    """One sink instance's view of the partition: what it remembers between batches.

    With ``parts``, a batch is stored as the sink stores it while reading: in parts cut at
    random, only full objects until the last part, each part's leftover rows carried into
    the next (processors.s3_sink.S3JsonlSink._store)."""

    def __init__(self, store: Store, parts: random.Random | None = None):
        self.store = store
        self.progress = Progress()
        self.parts = parts

    def write(self, batch: list[tuple[int, dict]], create: Callable[[S3Object], Stored | None] | None = None) -> None:
        rows = [s3_row(offset, event) for offset, event in batch]
        create = create or self.store.create
        if self.parts is None:
            self.progress = store_batch(rows, self.store.layout, self.progress, create, self.store.locate)
            return
        cuts = sorted(self.parts.sample(range(1, len(rows)), k=max(0, min(len(rows) - 1, self.parts.randint(0, 3)))))
        left: list = []
        for start, end in zip([0, *cuts], [*cuts, len(rows)], strict=True):
            self.progress, left = store_rows(
                left + rows[start:end],
                self.store.layout,
                self.progress,
                create,
                self.store.locate,
                full_only=end < len(rows),
            )


def batch_of(stream: Stream, start: int, end: int) -> list[tuple[int, dict]]:
    """The valid events among offsets [start, end): poison messages (None) never reach the sink."""
    return [(offset, e) for offset in range(start, end) if (e := stream[offset]) is not None]


def failing_after(store: Store, puts: int) -> Callable[[S3Object], Stored | None]:
    calls = [0]

    def create(obj: S3Object) -> Stored | None:
        if calls[0] == puts:
            raise Crash
        calls[0] += 1
        return store.create(obj)

    return create


class Partition:
    """One partition's committed offset and its current owner; batches cut at random."""

    def __init__(self, stream: Stream, scheme: Scheme, max_batch: int, rng: random.Random, in_parts: bool = False):
        self.stream, self.max_batch, self.rng = stream, max_batch, rng
        self.store = Store(scheme, log=lambda: self.stream)
        self.incarnations = [stream]  # every stream the topic held, the current one last
        self.committed = 0
        self.in_parts = in_parts
        self.owner = self.writer()

    def writer(self) -> Writer:
        return Writer(self.store, parts=self.rng if self.in_parts else None)

    def next_batch(self) -> tuple[int, list[tuple[int, dict]]]:
        end = min(len(self.stream), self.committed + self.rng.randint(1, self.max_batch))
        return end, batch_of(self.stream, self.committed, end)

    def step(self) -> None:
        """The owner writes one batch from the committed offset: it commits, or it dies part-way
        (a new process starts from the committed offset) or backs off (it replays, remembering)."""
        end, batch = self.next_batch()
        roll = self.rng.random()
        if roll < 0.4:
            try:
                self.owner.write(batch, failing_after(self.store, self.rng.randint(0, 3)))
            except Crash:
                if roll < 0.25:
                    self.owner = self.writer()  # kill -9: memory gone
                return  # nothing committed
        else:
            self.owner.write(batch)
        self.committed = end

    def zombie(self) -> None:
        """The owner freezes mid-batch; a new owner takes over from the committed offset and
        writes a few batches; the zombie resumes, finishes its old batch, and is fenced
        from committing. It may later own the partition again, remembering what it saw."""
        zombie = self.owner
        _, batch = self.next_batch()
        frozen, resume = threading.Event(), threading.Event()
        freeze_at = self.rng.randint(0, 3)  # puts before the pause; past the last: frozen before the commit
        calls = [0]

        def create(obj: S3Object) -> Stored | None:
            if calls[0] == freeze_at:
                frozen.set()
                resume.wait()
            calls[0] += 1
            return self.store.create(obj)

        def run() -> None:
            try:
                zombie.write(batch, create)
            finally:
                frozen.set()

        thread = threading.Thread(target=run)
        thread.start()
        frozen.wait()
        self.owner = self.writer()
        for _ in range(self.rng.randint(0, 3)):
            if self.committed < len(self.stream):
                self.step()
        resume.set()
        thread.join()
        if self.rng.random() < 0.5:
            self.owner = zombie

    def recreate(self) -> None:
        """The topic, read to its end, is deleted and created again: offsets from 0 with other
        events, no committed offset; the owner ran through it (memory kept) or was stopped
        (gone). (Events deleted with a topic before any sink read them are lost to every store.)"""
        self.stream = random_stream(self.rng, self.rng.randint(1, 80), incarnation=len(self.incarnations))
        self.incarnations.append(self.stream)
        self.committed = 0
        if self.rng.random() < 0.5:
            self.owner = self.writer()

    def run(self, zombies: bool, recreations: int = 0) -> Store:
        while self.committed < len(self.stream) or recreations:
            if self.committed >= len(self.stream):  # stored and committed: the old topic may go
                recreations -= 1
                self.recreate()
            elif zombies and self.rng.random() < 0.3:
                self.zombie()
            else:
                self.step()
        return self.store


def random_stream(rng: random.Random, length: int, incarnation: int = 0) -> Stream:
    """Events around an hour boundary, a few late ones and a few poison messages (None);
    each ``incarnation`` of the topic has events of its own (another close price)."""
    close = f"{incarnation + 1}.0"
    stream: Stream = []
    clock = HOUR_22 + HOUR_MS - length * 50
    for _ in range(length):
        clock += rng.randint(0, 150)
        roll = rng.random()
        if roll < 0.08:
            stream.append(None)
        elif roll < 0.2:
            stream.append(event(clock - rng.randint(0, 3_000), symbol="LATEUSDT", close=close))
        else:
            stream.append(event(clock, close=close))
    return stream


def expected(*streams: Stream) -> Counter:
    return Counter(orjson.dumps(e) for stream in streams for e in stream if e is not None)


def simulate(
    seed: int, *, zombies: bool, scheme: Scheme | None = None, in_parts: bool = False, recreations: int = 0
) -> tuple[Store, Stream]:
    """Run one partition to its end; the store, and every event the topic ever held."""
    rng = random.Random(seed)
    stream = random_stream(rng, rng.randint(1, 80))
    scheme = scheme or Scheme(max_rows=rng.randint(1, 6))
    partition = Partition(stream, scheme, max_batch=rng.randint(1, 15), rng=rng, in_parts=in_parts)
    store = partition.run(zombies, recreations)
    return store, [e for incarnation in partition.incarnations for e in incarnation]


def assert_one_chain_per_hour(store: Store) -> None:
    """Objects of an hour's chain (one per generation) have disjoint extents, each of at most max_rows rows."""
    by_hour: dict[tuple[str, int], list[Extent]] = {}
    for key, (extent, rows, _) in store.objects.items():
        assert extent.rows == len(rows) <= store.scheme.max_rows
        directory, name = key.rsplit("/", 1)
        generation = re.search(r"-(g[0-9]+-)?[0-9]{20}\.", name)
        assert generation is not None, key
        by_hour.setdefault((directory, generation[1] or ""), []).append(extent)
    for extents in by_hour.values():
        extents.sort(key=lambda e: e.first_offset)
        assert all(a.last_offset < b.first_offset for a, b in zip(extents, extents[1:], strict=False))


@pytest.mark.parametrize("in_parts", [False, True], ids=["whole batches", "batches stored in parts"])
def test_every_event_is_stored_exactly_once_whatever_the_crashes_and_cuts(in_parts):
    for seed in range(300):
        store, stream = simulate(seed, zombies=False, in_parts=in_parts)
        assert store.events() == expected(stream), f"seed {seed}"
        assert_one_chain_per_hour(store)


@pytest.mark.parametrize("in_parts", [False, True], ids=["whole batches", "batches stored in parts"])
def test_every_event_is_stored_exactly_once_whatever_the_zombies(in_parts):
    for seed in range(300):
        store, stream = simulate(seed, zombies=True, in_parts=in_parts)
        assert store.events() == expected(stream), f"seed {seed}"
        assert_one_chain_per_hour(store)


def test_a_batch_stored_in_parts_gives_the_objects_it_gives_stored_whole():
    for seed in range(200):
        rng = random.Random(seed)
        stream = [e for e in random_stream(rng, rng.randint(1, 80)) if e is not None]
        scheme = Scheme(max_rows=rng.randint(1, 6))
        whole, in_parts = Store(scheme, lambda stream=stream: stream), Store(scheme, lambda stream=stream: stream)
        Writer(whole).write(list(enumerate(stream)))
        Writer(in_parts, parts=rng).write(list(enumerate(stream)))
        assert in_parts.objects == whole.objects, f"seed {seed}"


def test_batches_are_cut_into_full_objects():
    store, stream = simulate(7, zombies=True, scheme=Scheme(max_rows=4))
    sizes = Counter(extent.rows for extent, _, _ in store.objects.values())
    assert sizes[4] * 4 > sum(expected(stream).values()) / 2, sizes


def outcomes(zombies: bool, scheme: Scheme) -> set[bool]:
    """For 100 random runs: whether each stored every event exactly once."""
    runs = (simulate(seed, zombies=zombies, scheme=scheme) for seed in range(100))
    return {store.events() == expected(stream) for store, stream in runs}


def test_the_overwrite_scheme_survives_crashes_but_not_zombies():
    assert outcomes(zombies=False, scheme=OVERWRITE) == {True}
    assert False in outcomes(zombies=True, scheme=OVERWRITE)


def test_without_finding_the_object_before_its_batch_a_writer_stores_events_twice():
    # A link reaching past the committed offset (a zombie's, or a failed attempt's longer
    # cut) must be found when a writer starts: the key of its first event is free.
    assert False in outcomes(zombies=True, scheme=Scheme(max_rows=3, lookup=False))
    assert False in outcomes(zombies=False, scheme=Scheme(max_rows=3, lookup=False))


def test_a_writer_back_on_its_partition_after_others_wrote_looks_the_chain_up_again():
    stream: Stream = [event(HOUR_22 + n) for n in range(12)]
    store = Store(Scheme(max_rows=10), log=lambda: stream)
    w, zombie, owner = Writer(store), Writer(store), Writer(store)
    w.write(batch_of(stream, 0, 3))  # w owns the partition, commits 3, then loses it
    zombie.write(batch_of(stream, 3, 9))  # an instance frozen on [3, 9) wrote its cut: [3..8]
    owner.write(batch_of(stream, 3, 5))  # the owner's batch [3, 5) finds it, commits 5
    w.write(batch_of(stream, 5, 12))  # w back from 5: its memory (through 2) is no guide
    assert store.events() == expected(stream)
    assert_one_chain_per_hour(store)


@pytest.mark.parametrize("zombies", [False, True], ids=["crashes", "crashes and zombies"])
@pytest.mark.parametrize("in_parts", [False, True], ids=["whole batches", "batches stored in parts"])
def test_every_event_of_every_incarnation_of_the_topic_is_stored_exactly_once(zombies, in_parts):
    recreated = 0
    for seed in range(300):
        store, events = simulate(seed, zombies=zombies, in_parts=in_parts, recreations=1 + seed % 2)
        assert store.events() == expected(events), f"seed {seed}"
        assert_one_chain_per_hour(store)
        recreated += any("-g" in key for key in store.objects)
    assert recreated > 250  # most runs put a later incarnation's objects beside the first one's


def test_without_the_incarnation_check_a_recreated_topic_loses_events():
    # The check is what keeps them: a writer that takes every object found for its own
    # incarnation's (the scheme before it) skips the new events at the offsets the old one wrote.
    for check, lossy in ((True, 0), (False, 90)):
        lost = 0
        for seed in range(100):
            rng = random.Random(seed)
            first, second = random_stream(rng, 40), random_stream(rng, 40, incarnation=1)
            store = Store(Scheme(max_rows=rng.randint(1, 6), check=check), log=lambda first=first: first)
            Writer(store).write(batch_of(first, 0, len(first)))
            store.log = lambda second=second: second
            Writer(store).write(batch_of(second, 0, len(second)))
            lost += sum((expected(first, second) - store.events()).values()) > 0
        assert lost >= lossy if lossy else lost == 0, (check, lost)
