"""What the S3 sink writes for one batch: keys, bodies, headers. Pure; no I/O.

A batch is the events of ONE topic-partition that a Quix checkpoint collected, as
``(offset, event fields)`` in offset order. It becomes one object per event-time hour::

    <prefix>/dt=2023-11-14/hour=22/<topic>-00002-00000000000000001234.jsonl[.gz]

``dt``/``hour`` come from the event's own time ``E`` in UTC (Hive-style, so Athena, Glue
and Spark prune by them). The file name is a pure function of topic, partition and the
offset of the object's FIRST row; the row's hour fixes the directory. An object holds
every event of its hour in the batch, in offset order, one JSON object per line.

Why a replay after a crash can never leave an event twice or lose one, however the
replayed batches are cut (by count, by time, across hours):

1. Quix commits a partition's offset only after the batch's objects are in S3, and a
   restart (or a backpressure replay) resumes exactly at the last committed offset C.
   So the batches that end up committed tile the partition's offsets without overlap,
   and an abandoned attempt A always started at some committed boundary C.
2. Say A wrote the object whose first row is the event at offset f, of hour h: A holds
   no hour-h event in [C, f). The committed batch B that finally holds f started at or
   after C, so B has no hour-h event before f either — B writes the SAME key, later
   than A did, with exactly B's hour-h events. Every abandoned object is overwritten.
3. Two committed batches never share a key (f lies in exactly one of them), and no
   later attempt reaches back before its committed start. So S3 ends with the
   committed batches' objects: every event exactly once.

This needs each object to hold *all* of its hour's events in the batch. Splitting a
larger batch into N-row chunks named by their first offset breaks step 2: a replay cut
elsewhere shifts every chunk start, and the old chunks are never overwritten. The sink
therefore keeps each batch at most MAX_BATCH_SIZE events (see :mod:`processors.s3_sink`).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

JSONL_CONTENT_TYPE = "application/x-ndjson"
# A .jsonl.gz object IS a gzip file: readers (aws s3 cp, Athena, Spark, pandas) go by the
# .gz suffix. Declaring it as x-ndjson with Content-Encoding: gzip instead would make
# HTTP clients (browsers, curl --compressed, requests) decompress it on download, leaving
# plain text in a file still named .jsonl.gz.
GZIP_CONTENT_TYPE = "application/gzip"
COMPRESSIONS = ("none", "gzip")

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class S3Object:
    """One object to put: ``rows`` events, ``first_offset`` the offset of its first row."""

    key: str
    body: bytes
    content_type: str
    rows: int
    first_offset: int


def event_hour(event_time_ms: int) -> datetime:
    """The UTC hour holding ``event_time_ms`` (exact integer arithmetic, no float rounding)."""
    moment = _EPOCH + timedelta(milliseconds=event_time_ms)
    return moment.replace(minute=0, second=0, microsecond=0)


def hour_path(hour: datetime) -> str:
    """Hive-style partition directories of ``hour``: ``dt=YYYY-MM-DD/hour=HH``."""
    return f"dt={hour:%Y-%m-%d}/hour={hour:%H}"


def object_key(prefix: str, hour: datetime, topic: str, partition: int, first_offset: int, compression: str) -> str:
    """The key of the object of ``topic[partition]`` whose first row is at ``first_offset``.

    An empty ``prefix`` puts the partitions at the bucket root (no leading slash).
    Zero-padded numbers make keys sort in partition and offset order.
    """
    suffix = ".jsonl.gz" if compression == "gzip" else ".jsonl"
    name = f"{topic}-{partition:05d}-{first_offset:020d}{suffix}"
    return "/".join(part for part in (prefix, hour_path(hour), name) if part)


def jsonl_body(events: Iterable[Mapping[str, Any]]) -> bytes:
    """One compact JSON object per event, each line ending in a newline."""
    return b"".join(orjson.dumps(event, option=orjson.OPT_APPEND_NEWLINE) for event in events)


def gzip_body(data: bytes) -> bytes:
    """Gzip without a timestamp or file name, so writing the same rows again gives the same bytes."""
    return gzip.compress(data, compresslevel=6, mtime=0)


def batch_objects(
    items: Iterable[tuple[int, Mapping[str, Any]]],
    *,
    prefix: str,
    topic: str,
    partition: int,
    compression: str = "none",
) -> list[S3Object]:
    """The objects for one partition's batch of ``(offset, event fields)``: one per event hour.

    ``items`` come in ascending offset order, as a Quix SinkBatch holds them; rows keep
    that order and objects come in the order of their first offsets.
    """
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")
    by_hour: dict[datetime, list[tuple[int, Mapping[str, Any]]]] = {}
    for offset, event in items:
        by_hour.setdefault(event_hour(event["E"]), []).append((offset, event))
    objects = []
    for hour, rows in by_hour.items():  # dicts keep insertion order: first offsets ascend
        body = jsonl_body(event for _, event in rows)
        first_offset = rows[0][0]
        objects.append(
            S3Object(
                key=object_key(prefix, hour, topic, partition, first_offset, compression),
                body=gzip_body(body) if compression == "gzip" else body,
                content_type=GZIP_CONTENT_TYPE if compression == "gzip" else JSONL_CONTENT_TYPE,
                rows=len(rows),
                first_offset=first_offset,
            )
        )
    return objects
