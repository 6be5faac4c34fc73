"""The pipeline's progress as seen from outside: the bus and the stores, never the services.

Used by `crypto-live run` (its status line and summary) and by `make bench`. Committed
offsets, not watermarks, tell how far each sink got: some brokers (Tansu) report a high
watermark that trails the last record batch.
"""

from __future__ import annotations

import gzip
import logging
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from crypto_live import aws
from crypto_live.kafka import client_config
from crypto_live.settings import DynamoSinkSettings, S3SinkSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    at: float
    events_in: int
    dead_letters: int
    s3_objects: int
    dynamo_rows: int
    lag: dict[str, int]


def format_status(now: Snapshot, before: Snapshot | None) -> str:
    """One compact status line (pure)."""
    rate = 0.0
    if before is not None and now.at > before.at:
        rate = (now.events_in - before.events_in) / (now.at - before.at)
    lag = " ".join(f"{name} {value:,}" for name, value in now.lag.items())
    return (
        f"events in {now.events_in:,} ({rate:,.0f}/s) | S3 objects {now.s3_objects:,} | "
        f"DynamoDB rows {now.dynamo_rows:,} | dead letters {now.dead_letters:,} | lag {lag}"
    )


class Observer:
    """Reads the pipeline's progress from the bus and the stores, never from the services."""

    def __init__(self, s3: S3SinkSettings, dynamo: DynamoSinkSettings):
        self._s3_settings, self._dynamo_settings = s3, dynamo
        self._kafka = s3.kafka
        self._consumers = {
            name: Consumer(
                {**client_config(self._kafka), "group.id": group, "enable.auto.commit": False, "logger": log}
            )
            for name, group in (("s3", s3.consumer_group), ("dynamo", dynamo.consumer_group))
        }
        self._s3 = aws.client(s3.aws, "s3")
        self._dynamo = aws.client(dynamo.aws, "dynamodb")

    def _serve_callbacks(self) -> None:
        # These consumers never consume, so nothing else polls them: serve oauth_cb (MSK
        # IAM tokens, at start and before they expire) before each use.
        for consumer in self._consumers.values():
            consumer.poll(0)

    def _end_offsets(self, topic: str) -> dict[int, int]:
        self._serve_callbacks()
        consumer = self._consumers["s3"]
        partitions = consumer.list_topics(topic, timeout=5).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in partitions}

    def committed(self) -> dict[str, dict[int, int]]:
        """Each sink group's committed offset per partition of the event topic."""
        partitions = list(self._end_offsets(self._kafka.topic))  # serves callbacks too
        return {
            name: {
                tp.partition: max(tp.offset, 0)
                for tp in consumer.committed([TopicPartition(self._kafka.topic, p) for p in partitions], timeout=5)
            }
            for name, consumer in self._consumers.items()
        }

    def progress(self) -> tuple[int, dict[str, int]]:
        """(events in the topic, lag per sink group).

        Some brokers (Tansu) report a high watermark that trails the last record batch,
        so a partition's end is taken as the furthest of its watermark and every commit.
        """
        ends = self._end_offsets(self._kafka.topic)
        committed = self.committed()
        for offsets in committed.values():
            for partition, offset in offsets.items():
                ends[partition] = max(ends[partition], offset)
        lag = {name: sum(ends[p] - offsets[p] for p in ends) for name, offsets in committed.items()}
        return sum(ends.values()), lag

    def s3_keys(self) -> list[str]:
        prefix = f"{self._s3_settings.prefix}/" if self._s3_settings.prefix else ""
        keys: list[str] = []
        for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self._s3_settings.bucket, Prefix=prefix):
            keys.extend(obj["Key"] for obj in page.get("Contents", []))
        return keys

    def s3_rows(self) -> int:
        """Events held in S3: the lines of every object (gzip bodies decompressed)."""
        total = 0
        for key in self.s3_keys():
            body = self._s3.get_object(Bucket=self._s3_settings.bucket, Key=key)["Body"].read()
            total += (gzip.decompress(body) if key.endswith(".gz") else body).count(b"\n")
        return total

    def dynamo_rows(self) -> int:
        total = 0
        kwargs: dict[str, Any] = {"TableName": self._dynamo_settings.table, "Select": "COUNT"}
        while True:
            page = self._dynamo.scan(**kwargs)
            total += int(page["Count"])
            if "LastEvaluatedKey" not in page:
                return total
            kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def snapshot(self) -> Snapshot:
        events_in, lag = self.progress()
        return Snapshot(
            at=time.monotonic(),
            events_in=events_in,
            dead_letters=sum(self._end_offsets(self._kafka.dlq_topic).values()),
            s3_objects=len(self.s3_keys()),
            dynamo_rows=self.dynamo_rows(),
            lag=lag,
        )

    def close(self) -> None:
        for consumer in self._consumers.values():
            consumer.close()
