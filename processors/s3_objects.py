"""What the S3 sink writes, and where each writer resumes: keys, bodies, the cut. No I/O.

A batch is the valid events of ONE topic-partition that a Quix checkpoint collected, as
rows ``(offset, event time, JSON line)`` in offset order (:func:`to_row`; poison messages
went to the DLQ and are in no object). The line is the event's bytes as read from the topic:
its bytes are checked, never parsed and re-encoded, so every number stays as written.
Its events are grouped by event-time hour, and each hour's events are cut into
objects of at most ``max_rows`` (MAX_BATCH_SIZE) rows::

    <prefix>/dt=2023-11-14/hour=22/<topic>-00002-00000000000000001234.jsonl[.gz]

``dt``/``hour`` come from the event's own time ``E`` in UTC (Hive-style, so Athena, Glue
and Spark prune by them). The file name is topic, partition and the offset of the object's
FIRST row. An object holds hour-h events of consecutive offsets, in offset order, one JSON
object per line, and records its *extent* in user metadata: ``first-offset``,
``last-offset``, ``rows``. It holds exactly the hour-h events of the partition whose
offsets lie in [first-offset, last-offset] (the Kafka log and the validity check do not
change, so every writer computes the same set for the same extent).

Why every event ends up in exactly one object, whatever the crashes, replays, cuts and
zombies (an instance frozen past its session timeout that resumes and writes its old batch
after a new owner of its partitions wrote different cuts):

1. Objects are create-only: every put carries ``If-None-Match: *``; S3 refuses it with
   412 PreconditionFailed when the key exists. No object is ever overwritten, so whatever
   is in S3 stays true; whoever creates a key first decides that object's extent.
2. For each (partition, hour) the objects form ONE chain: the first link starts at the
   hour's first event, and the link after an object [f, l] starts at the hour's first
   event after l. A writer only ever puts the key of the chain position it stands on:
   - it starts on the link after the one holding the hour's last event before its batch
     (:func:`resume_after`): its own memory of the previous batch, or, after a start, a
     rebalance or a gap, the object with the largest first offset below the batch's first
     event of the hour (listed in S3);
   - after a put is accepted it stands after that object's last offset; after a 412 it
     reads the existing object's extent and stands after ITS last offset
     (:func:`walk_hour`): it skips exactly what is stored, however it was cut.
   Two writers on the same position put the same key, so one of them gets the 412: the
   chain never forks, and its links are disjoint and consecutive. Every event a writer
   handles is in the link it wrote or found.
3. Where a writer starts is right because its batch starts at an offset C before which
   every valid event is already stored (Quix processes a batch from the committed offset,
   or right after the previous batch it wrote in full). So the hour's events before C are
   covered by links that already exist, the link holding the last of them has the largest
   first offset below C, and it may reach past C (a zombie wrote a longer cut): the writer
   then skips to its end. Links created later start after it, so listing cannot race.
4. Quix commits an offset only after the batch's objects were put or found; a writer that
   crashes or lost its partitions leaves links that the next writer finds (412) and skips.

So: after crash-replays every event is stored once, the replay skipping what the lost
attempt wrote; and a zombie that resumes after the new owner wrote different cuts gets
412 at the first key it shares with the new owner's chain and skips the rest of that link,
so it never stores an event twice, while the events it does store are ones nobody stored
(the chain is the same for every writer). Nothing is ever lost: an offset is committed
only after its event is in a link, and links are never overwritten.

**Topic incarnations.** All of the above trusts that an offset names one message forever.
It names one message per *incarnation* of the topic: a topic deleted and created again
under the same name (an operator changing its partitions, a dev broker restarted without
a volume, every ``crypto-live run`` on its embedded broker) starts its offsets again at 0,
and an object of the old incarnation may sit on the very key the new one needs. So:

5. An object's first line IS the message at its first offset, byte for byte (the line is
   the event's bytes as read). A writer takes an object for its own incarnation's only
   after comparing that line with the message at that offset now: the batch's own row when
   it holds the offset (a 412 at put time always does), else one read of the topic
   (:mod:`processors.topic_log`). No new metadata is needed, so objects written before
   this check existed are judged by it as well.
6. Each (partition, hour) has one chain per *generation*: generation 0 has the keys above,
   generation g >= 1 names its objects ``<topic>-<partition>-g<g>-<offset>`` in the same
   directories. A writer with no memory of an hour finds its generation with
   :func:`locate`: the newest generation whose object before the batch (else its first)
   starts with the message now at that offset; if none does, one above all generations
   seen. Every writer of one incarnation sees the same objects and the same log, so it
   decides alike, and 1-4 hold within each generation: a chain never mixes incarnations.
7. A key found taken by another message at put time (the writer went by its memory, or
   the object appeared after its listing) is never skipped: the hour is located again
   above that generation (:func:`store_rows`).

So every event of every incarnation is stored once. Limits: the broker must drop the
group's committed offsets with the topic (Tansu does, measured; Kafka removes the offsets
of deleted partitions), or a sink would resume the new incarnation at the old one's offset; two incarnations with
byte-identical events at the same offset are taken for one (real miniTicker events carry
their event time in ms); and an object whose first event retention already removed from
the topic is judged another incarnation's (the hour's events are then written again in a
new generation: doubled, never lost).

Objects of one batch are full (``max_rows`` rows) except each hour's last one; the sink's
checkpoint is sized so a busy partition fills several (see :mod:`processors.s3_sink`).
An object without the extent metadata (not written by this scheme) on a key the sink
needs is reported, never overwritten.
"""

from __future__ import annotations

import bisect
import gzip
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from crypto_live.errors import CryptoLiveError, DestinationError
from crypto_live.event import Invalid, decode, plain_event_time

JSONL_CONTENT_TYPE = "application/x-ndjson"
# A .jsonl.gz object IS a gzip file: readers (aws s3 cp, Athena, Spark, pandas) go by the
# .gz suffix. Declaring it as x-ndjson with Content-Encoding: gzip instead would make
# HTTP clients (browsers, curl --compressed, requests) decompress it on download, leaving
# plain text in a file still named .jsonl.gz.
GZIP_CONTENT_TYPE = "application/gzip"
COMPRESSIONS = ("none", "gzip")
#: The user metadata (x-amz-meta-*) holding an object's extent.
FIRST_OFFSET, LAST_OFFSET, ROWS = "first-offset", "last-offset", "rows"
#: How many hours a writer remembers per partition (a later late event is looked up in S3).
REMEMBERED_HOURS = 48

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

#: One valid event of a batch: its offset, its event time ``E`` (ms), its JSON line (no newline).
Row = tuple[int, int, bytes]


@dataclass(frozen=True)
class Extent:
    """The offsets of an object's first and last rows, and how many rows it holds."""

    first_offset: int
    last_offset: int
    rows: int

    def metadata(self) -> dict[str, str]:
        return {FIRST_OFFSET: str(self.first_offset), LAST_OFFSET: str(self.last_offset), ROWS: str(self.rows)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, str]) -> Extent:
        """The extent an object's metadata records; ValueError saying what is missing or wrong."""
        try:
            extent = cls(int(metadata[FIRST_OFFSET]), int(metadata[LAST_OFFSET]), int(metadata[ROWS]))
        except (KeyError, ValueError):
            raise ValueError(
                f"expected metadata {FIRST_OFFSET}, {LAST_OFFSET} and {ROWS} as integers, got {dict(metadata)}"
            ) from None
        if not 0 <= extent.first_offset <= extent.last_offset or extent.rows < 1:
            raise ValueError(f"expected an extent with first <= last offset and rows >= 1, got {extent}")
        return extent


@dataclass(frozen=True)
class S3Object:
    """One object to put: ``rows`` events of ``hour``, from ``first_offset`` to ``last_offset``."""

    key: str
    body: bytes
    content_type: str
    hour: datetime
    extent: Extent
    #: The first row's line: what a writer that finds the key taken compares with the object there.
    first_line: bytes

    @property
    def rows(self) -> int:
        return self.extent.rows

    @property
    def first_offset(self) -> int:
        return self.extent.first_offset


@dataclass(frozen=True)
class Layout:
    """Where and how one partition's objects are written."""

    prefix: str
    topic: str
    partition: int
    max_rows: int
    compression: str = "none"

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSIONS:
            raise ValueError(f"compression {self.compression!r} is not one of {', '.join(COMPRESSIONS)}")
        if self.max_rows < 1:
            raise ValueError(f"max_rows {self.max_rows} is not a positive number")

    def key(self, hour: datetime, first_offset: int, generation: int = 0) -> str:
        return object_key(self.prefix, hour, self.topic, self.partition, first_offset, self.compression, generation)

    def hour_prefix(self, hour: datetime) -> str:
        """The common start of this partition's keys in ``hour`` (either compression, every generation)."""
        return object_key(self.prefix, hour, self.topic, self.partition, 0, "none").rsplit("-", 1)[0] + "-"

    def listed(self, hour: datetime, key: str) -> tuple[int, int] | None:
        """The (generation, first offset) a listed key of ``hour`` names, or None for a key that
        is not one of this partition's objects (another topic whose name starts like ours)."""
        prefix = self.hour_prefix(hour)
        match = _NAME.fullmatch(key[len(prefix) :]) if key.startswith(prefix) else None
        if match is None:
            return None
        return int(match["generation"] or 0), int(match["offset"])


def event_hour(event_time_ms: int) -> datetime:
    """The UTC hour holding ``event_time_ms`` (exact integer arithmetic, no float rounding)."""
    moment = _EPOCH + timedelta(milliseconds=event_time_ms)
    return moment.replace(minute=0, second=0, microsecond=0)


def hour_path(hour: datetime) -> str:
    """Hive-style partition directories of ``hour``: ``dt=YYYY-MM-DD/hour=HH``."""
    return f"dt={hour:%Y-%m-%d}/hour={hour:%H}"


def object_key(
    prefix: str,
    hour: datetime,
    topic: str,
    partition: int,
    first_offset: int,
    compression: str,
    generation: int = 0,
) -> str:
    """The key of the object of ``topic[partition]`` whose first row is at ``first_offset``.

    An empty ``prefix`` puts the partitions at the bucket root (no leading slash).
    Zero-padded numbers make keys sort in partition and offset order. Generation 0 (the
    first incarnation of the topic the bucket saw, and every object written before
    generations existed) has no generation in its name; generation g >= 1 reads
    ``<topic>-<partition>-g<g>-<offset>``: another incarnation of the topic, whose offsets
    started again at 0, in the same ``dt``/``hour`` directories (see :func:`locate`).
    """
    suffix = ".jsonl.gz" if compression == "gzip" else ".jsonl"
    incarnation = f"g{generation}-" if generation else ""
    name = f"{topic}-{partition:05d}-{incarnation}{first_offset:020d}{suffix}"
    return "/".join(part for part in (prefix, hour_path(hour), name) if part)


#: What follows a partition's hour prefix in one of its keys (see :func:`object_key`).
_NAME = re.compile(r"(?:g(?P<generation>[1-9][0-9]*)-)?(?P<offset>[0-9]{20})\.jsonl(?:\.gz)?")


def to_row(offset: int, raw: bytes | None) -> Row | Invalid:
    """The row of the message at ``offset`` whose value is ``raw``, or why it is not a valid event.

    The line is ``raw`` itself: Binance's compact layout is proven valid by its bytes
    (:func:`~crypto_live.event.plain_event_time`); anything else is parsed and validated.
    A valid event spread over several lines (JSON allows newlines between tokens, never
    inside a string) has them turned into spaces, so it stays one line, unchanged as JSON.
    """
    if raw is not None and (event_time := plain_event_time(raw)) is not None:
        return (offset, event_time, raw)
    result = decode(raw)
    if isinstance(result, Invalid):
        return result
    assert raw is not None  # decode(None) is Invalid
    return (offset, result.event_time, raw.translate(_NEWLINES_TO_SPACES))


_NEWLINES_TO_SPACES = bytes.maketrans(b"\r\n", b"  ")


def jsonl_body(lines: Iterable[bytes]) -> bytes:
    """One JSON object per line, each line ending in a newline."""
    body = b"\n".join(lines)
    return body + b"\n" if body else body


def gzip_body(data: bytes) -> bytes:
    """Gzip without a timestamp or file name, so writing the same rows again gives the same bytes."""
    return gzip.compress(data, compresslevel=6, mtime=0)


HOUR_MS = 3_600_000


def by_hour(items: Iterable[Row]) -> dict[datetime, list[Row]]:
    """A batch's rows grouped by event hour; hours in the order of their first offsets."""
    # Grouped by the integer hour number: a datetime per event was a tenth of the sink's time.
    hours: dict[int, list[Row]] = {}
    for row in items:
        hour = row[1] // HOUR_MS
        rows = hours.get(hour)
        if rows is None:
            hours[hour] = [row]
        else:
            rows.append(row)
    return {event_hour(hour * HOUR_MS): rows for hour, rows in hours.items()}


def make_object(layout: Layout, hour: datetime, rows: Sequence[Row], generation: int = 0) -> S3Object:
    """The object of ``rows`` (one hour's, consecutive, in offset order) in the chain of ``generation``."""
    body = jsonl_body([line for _, _, line in rows])
    gzipped = layout.compression == "gzip"
    return S3Object(
        key=layout.key(hour, rows[0][0], generation),
        body=gzip_body(body) if gzipped else body,
        content_type=GZIP_CONTENT_TYPE if gzipped else JSONL_CONTENT_TYPE,
        hour=hour,
        extent=Extent(rows[0][0], rows[-1][0], len(rows)),
        first_line=rows[0][2],
    )


def _offset(row: Row) -> int:
    return row[0]


def unstored(rows: Sequence[Row], stored_through: int) -> Sequence[Row]:
    """The rows after offset ``stored_through`` (``rows`` are in offset order)."""
    return rows[bisect.bisect_right(rows, stored_through, key=_offset) :]


def next_object(
    layout: Layout,
    hour: datetime,
    rows: Sequence[Row],
    stored_through: int,
    *,
    full_only: bool = False,
    generation: int = 0,
) -> S3Object | None:
    """The next link of the hour's chain of ``generation``: up to ``max_rows`` of ``rows``
    after offset ``stored_through``; None when every row is stored (or, ``full_only``, when
    fewer than ``max_rows`` are left)."""
    rest = unstored(rows, stored_through)[: layout.max_rows]
    if not rest or (full_only and len(rest) < layout.max_rows):
        return None
    return make_object(layout, hour, rest, generation)


class ForeignObjectError(DestinationError):
    """A key the sink needs holds an object whose extent does not fit the chain: it was not
    written by this scheme, and is never overwritten."""


@dataclass(frozen=True)
class Stored:
    """What a writer reads back of an object it found: its extent and its first line (the
    bytes of the message at its first offset, in the incarnation of the topic that wrote it)."""

    extent: Extent
    first_line: bytes


class Standing(NamedTuple):
    """Where a writer stands on one hour's chain: the chain's generation, and the offset
    through which it is stored (-1: nothing yet)."""

    generation: int
    through: int


@dataclass(frozen=True)
class Mismatch:
    """A taken key whose object starts with another message than the one now at its first
    offset: the chain of ``generation`` belongs to another incarnation of the topic."""

    generation: int
    key: str
    stored: bytes
    current: bytes


class IncarnationMismatch(CryptoLiveError):
    """Raised by :func:`walk_hour` when a taken key holds another incarnation's object
    (handled by :func:`store_rows`: the hour's chain is located again)."""

    def __init__(self, mismatch: Mismatch):
        super().__init__(f"{mismatch.key} starts with another message than the one now at its first offset")
        self.mismatch = mismatch


#: Create an object unless its key exists: None when created, else what the existing object holds.
Create = Callable[[S3Object], Stored | None]


def walk_hour(
    layout: Layout,
    hour: datetime,
    rows: Sequence[Row],
    standing: Standing,
    create: Create,
    *,
    full_only: bool = False,
) -> Standing:
    """Store one hour's ``rows`` of a batch along the hour's chain of ``standing.generation``,
    starting after offset ``standing.through``; return where the chain now stands.

    A key that is taken (``create`` returns what it holds) means its rows are stored: the
    walk continues after that object's last offset, however long it is -- once its first
    line proves it the same message as the batch's row at that offset. Any other first line
    raises :class:`IncarnationMismatch`: the key is another incarnation's, and skipping it
    would lose this incarnation's rows. ``full_only`` stops before a last object of fewer
    than ``max_rows`` rows.
    """
    generation, stored_through = standing
    while (
        obj := next_object(layout, hour, rows, stored_through, full_only=full_only, generation=generation)
    ) is not None:
        existing = create(obj)
        if existing is None:
            stored_through = obj.extent.last_offset
            continue
        extent = existing.extent
        if extent.first_offset != obj.first_offset or extent.last_offset < obj.first_offset:
            raise ForeignObjectError(f"{obj.key} records extent {extent}, not one starting at {obj.first_offset}")
        if existing.first_line != obj.first_line:
            raise IncarnationMismatch(Mismatch(generation, obj.key, existing.first_line, obj.first_line))
        stored_through = extent.last_offset
    return Standing(generation, stored_through)


def resume_after(generation: int, previous: Extent | None) -> Standing:
    """Where a writer stands on an hour's chain of ``generation`` given the object holding the
    hour's last event before its batch (the one with the largest first offset below the
    batch's first event of the hour): after its last offset, which may lie inside the batch."""
    return Standing(generation, previous.last_offset if previous is not None else -1)


def locate(
    listing: Mapping[int, Sequence[int]],
    first_offset: int,
    belongs: Callable[[int, int], bool],
    *,
    above: int = -1,
) -> tuple[int, int | None]:
    """Which generation of an hour's chains is this incarnation's, for a batch whose first
    row of the hour is at ``first_offset``; and the first offset of that chain's object
    before the batch (None: none, or a new generation).

    ``listing`` maps each generation above ``above`` found in S3 to the first offsets of its
    objects. Generations are tried newest first; ``belongs(generation, offset)`` says whether
    the object at ``offset`` starts with the message now at that offset (it reads S3 and,
    unless the batch holds that offset, the topic). The object tried is the one before the
    batch, the one a writer would resume after; else the chain's first. None belongs: a new
    generation, one above every generation seen, so no key of another incarnation is ever
    taken for this one's.

    Every writer of one incarnation decides alike, from the same objects and the same log:
    two that start a generation at once put the same keys, and the chain never forks.
    """
    seen = [generation for generation in listing if generation > above]
    for generation in sorted(seen, reverse=True):
        offsets = sorted(listing[generation])
        before = bisect.bisect_left(offsets, first_offset)
        previous = offsets[before - 1] if before else None
        if belongs(generation, previous if previous is not None else offsets[0]):
            return generation, previous
    return max([above, *listing], default=-1) + 1, None


@dataclass
class Progress:
    """What a writer knows of one partition's chains after a batch it stored in full:
    ``stored_through[hour]`` for the hours it saw, valid for a batch that starts right
    after ``last_offset`` (a replay of a failed batch, or the next one)."""

    last_offset: int = -2
    stored_through: dict[datetime, Standing] = field(default_factory=dict)

    def known(self, hour: datetime, first_offset: int) -> Standing | None:
        """Where the hour's chain stands for a batch starting at ``first_offset``, if known.

        Known only when no valid event lies between what the writer saw and the batch (a
        rebalance or a poison message in between makes the writer look it up in S3)."""
        if first_offset != self.last_offset + 1:
            return None
        return self.stored_through.get(hour)

    def after(self, last_offset: int, stored: Mapping[datetime, Standing]) -> Progress:
        """The progress after a batch ending at ``last_offset`` stored ``stored`` (hour -> standing)."""
        hours = {**self.stored_through, **stored}
        kept = sorted(hours)[-REMEMBERED_HOURS:]
        return Progress(last_offset, {hour: hours[hour] for hour in kept})


#: Where a writer stands on an hour's chain it has no memory of, for the hour's rows of its
#: batch (I/O: a listing, and the check of :func:`locate`). With a :class:`Mismatch`, the
#: chain of its generation was found to be another incarnation's: look above it.
Locate = Callable[[datetime, Sequence[Row], Mismatch | None], Standing]

#: How often one hour's walk may find its chain another incarnation's before the writer
#: stops: each time it moves to a newer generation, so only writers racing with another
#: incarnation's could get here.
MAX_RELOCATIONS = 3


def store_batch(items: Sequence[Row], layout: Layout, progress: Progress, create: Create, locate: Locate) -> Progress:
    """Store one partition's batch (``items`` in offset order); return the progress after it.

    Raises whatever ``create``/``locate`` raise, leaving ``progress`` as it was: a replay
    from the same start uses it again.
    """
    progress, left = store_rows(items, layout, progress, create, locate, full_only=False)
    assert not left
    return progress


def store_rows(
    items: Sequence[Row],
    layout: Layout,
    progress: Progress,
    create: Create,
    locate: Locate,
    *,
    full_only: bool,
) -> tuple[Progress, list[Row]]:
    """:func:`store_batch`, or, ``full_only``, only the full objects of ``items``: a part of
    a batch whose rest is still being read. Returns the progress, and the rows left
    unstored (each hour's last rows, fewer than ``max_rows``), to store with the rows read
    next: the progress is that of a batch ending right before the first of them.
    """
    if not items:
        return progress, []
    contiguous = items[0][0] == progress.last_offset + 1
    base = progress if contiguous else Progress()
    stored: dict[datetime, Standing] = {}
    left: list[Row] = []
    for hour, rows in by_hour(items).items():
        standing = base.known(hour, items[0][0]) or locate(hour, rows, None)
        for _ in range(MAX_RELOCATIONS):
            try:
                stored[hour] = walk_hour(layout, hour, rows, standing, create, full_only=full_only)
                break
            except IncarnationMismatch as exc:
                standing = locate(hour, rows, exc.mismatch)
        else:
            raise DestinationError(
                f"{layout.topic}[{layout.partition}] hour {hour_path(hour)}: every generation tried holds another "
                f"incarnation's objects where this one's go ({MAX_RELOCATIONS} tries)"
            )
        left += unstored(rows, stored[hour].through)
    left.sort(key=_offset)
    return base.after(left[0][0] - 1 if left else items[-1][0], stored), left
