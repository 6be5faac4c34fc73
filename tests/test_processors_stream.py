"""The shared sink application: valid events reach the sink, anything else the DLQ."""

from __future__ import annotations

import orjson
from quixstreams.sinks import BatchingSink, SinkBatch

from crypto_live.dead_letter import original_bytes
from crypto_live.settings import KafkaSettings, load
from processors.stream import StreamPlan, build_application, check_message, state_directory
from tests.factories import publish, run_app_until, ticker
from tests.helpers import read_topic, wait_for

EVENT = ticker()


def test_check_message_keeps_event_fields_or_names_the_source():
    assert check_message(orjson.dumps(EVENT), stage="s", topic="t", partition=1, offset=7).event == EVENT
    checked = check_message(b"nope", stage="s3-sink", topic="t", partition=1, offset=7)
    assert checked.event is None
    assert checked.dead_letter["source"] == {"topic": "t", "partition": 1, "offset": 7}
    assert checked.dead_letter["reason"].startswith("not JSON")
    assert check_message(None, stage="s", topic="t", partition=0, offset=0).dead_letter["reason"] == (
        "message has no value"
    )


class CollectingSink(BatchingSink):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int, dict]] = []

    def write(self, batch: SinkBatch):
        self.rows.extend((item.offset, item.value) for item in batch)


def test_valid_events_reach_the_sink_and_poison_messages_the_dlq(kafka_env):
    kafka = load(KafkaSettings, kafka_env)
    poison = [b"}{not json", orjson.dumps(ticker(c="NaN")), b"\xff\xfe"]
    good = [ticker(i) for i in range(20)]
    # Poison goes to partition 0: so does everything, so that the DLQ offsets below are known.
    publish(kafka, good[:10] + poison + good[10:], partition_of=lambda _: 0)

    sink = CollectingSink()
    with state_directory("test") as state_dir:
        app = build_application(
            kafka, StreamPlan("test", kafka_env["S3_SINK_GROUP"], 5, 0.5), sink, state_dir=state_dir
        )
        run_app_until(app, lambda: wait_for(lambda: len(sink.rows) >= len(good), 30, what="every valid event"))

    assert [row for _, row in sink.rows] == good
    dead = [orjson.loads(m.value()) for m in read_topic(kafka.bootstrap_servers, kafka.dlq_topic, expected=3)]
    assert [original_bytes(d) for d in dead] == poison
    assert [d["source"]["offset"] for d in dead] == [10, 11, 12]
    assert "field 'c' (close price) is 'NaN'" in dead[1]["reason"]
