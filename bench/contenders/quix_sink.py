"""A Quix Streams app as a user writes it from Quix's documentation: the contenders of the S3 sink.

    python -m bench.contenders.quix_sink s3filesink|discard-json|discard-bytes

- ``s3filesink``: Quix's own ``S3FileSink``, format json (one JSONL object per partition
  per checkpoint), into S3_BUCKET;
- ``discard-json`` / ``discard-bytes``: a sink that writes nothing, behind the json or the
  bytes deserializer: the floor, what Quix itself costs per event.

Read from the environment: KAFKA_BOOTSTRAP_SERVERS, KAFKA_TOPIC, GROUP, S3_BUCKET,
AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, COMMIT_EVERY, COMMIT_INTERVAL,
KAFKA_SESSION_TIMEOUT_MS. Runs until SIGTERM.
"""

from __future__ import annotations

import os
import sys
import tempfile
from typing import Literal

from quixstreams import Application
from quixstreams.sinks import BatchingSink, SinkBatch


class DiscardSink(BatchingSink):
    """Takes every batch and writes it nowhere."""

    def write(self, batch: SinkBatch) -> None:
        pass


def main(kind: str) -> None:
    env = os.environ
    app = Application(
        broker_address=env["KAFKA_BOOTSTRAP_SERVERS"],
        consumer_group=env["GROUP"],
        auto_offset_reset="earliest",
        commit_every=int(env["COMMIT_EVERY"]),
        commit_interval=float(env["COMMIT_INTERVAL"]),
        processing_guarantee="at-least-once",
        auto_create_topics=False,
        use_changelog_topics=False,
        state_dir=tempfile.mkdtemp(prefix="quix-contender-"),
        # The same session as crypto-live's sinks get in the bench (Tansu holds a first
        # assignment for half of it).
        consumer_extra_config={
            "session.timeout.ms": int(env["KAFKA_SESSION_TIMEOUT_MS"]),
            "heartbeat.interval.ms": int(env["KAFKA_SESSION_TIMEOUT_MS"]) // 3,
        },
    )
    if kind == "s3filesink":
        from quixstreams.sinks.community.file.s3 import S3FileSink

        sink: BatchingSink = S3FileSink(
            bucket=env["S3_BUCKET"],
            endpoint_url=env["AWS_ENDPOINT_URL"],
            region_name=env["AWS_DEFAULT_REGION"],
            format="json",
        )
        deserializer: Literal["json", "bytes"] = "json"
    elif kind == "discard-json":
        sink, deserializer = DiscardSink(), "json"
    elif kind == "discard-bytes":
        sink, deserializer = DiscardSink(), "bytes"
    else:
        raise SystemExit(f"unknown contender {kind!r}: s3filesink, discard-json or discard-bytes")
    topic = app.topic(env["KAFKA_TOPIC"], key_deserializer="bytes", value_deserializer=deserializer)
    app.dataframe(topic).sink(sink)
    app.run()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
