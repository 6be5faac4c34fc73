"""The shared sink application: valid events reach the sink, anything else the DLQ."""

from __future__ import annotations

import threading

import orjson
from confluent_kafka import Producer
from quixstreams.sinks import BatchingSink, SinkBatch

from crypto_live.dead_letter import original_bytes
from crypto_live.kafka import ensure_topics
from crypto_live.settings import KafkaSettings, load
from processors.stream import StreamPlan, build_application, check_message
from tests.helpers import read_topic

EVENT = {
    "e": "24hrMiniTicker",
    "E": 1700000000000,
    "s": "BTCUSDT",
    "c": "1.0",
    "o": "1.0",
    "h": "1.0",
    "l": "1.0",
    "v": "2",
    "q": "2",
}


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
    def __init__(self, done: threading.Event, expected: int):
        super().__init__()
        self.rows: list[tuple[int, dict]] = []
        self._done, self._expected = done, expected

    def write(self, batch: SinkBatch):
        self.rows.extend((item.offset, item.value) for item in batch)
        if len(self.rows) >= self._expected:
            self._done.set()


def test_valid_events_reach_the_sink_and_poison_messages_the_dlq(kafka_env):
    kafka = load(KafkaSettings, kafka_env)
    ensure_topics(kafka)
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers})
    poison = [b"}{not json", orjson.dumps({**EVENT, "c": "NaN"}), b"\xff\xfe"]
    good = [orjson.dumps({**EVENT, "E": EVENT["E"] + i}) for i in range(20)]
    for value in good[:10] + poison + good[10:]:
        producer.produce(kafka.topic, key=b"BTCUSDT", value=value, partition=0)
    assert producer.flush(10) == 0

    done = threading.Event()
    sink = CollectingSink(done, expected=len(good))
    app = build_application(kafka, StreamPlan("test", kafka_env["S3_SINK_GROUP"], 5, 0.5), sink)
    watchdog = threading.Thread(target=lambda: (done.wait(30), app.stop()), daemon=True)
    watchdog.start()
    app.run()

    assert [row for _, row in sink.rows] == [orjson.loads(v) for v in good]
    dead = [orjson.loads(m.value()) for m in read_topic(kafka.bootstrap_servers, kafka.dlq_topic, expected=3)]
    assert [original_bytes(d) for d in dead] == poison
    assert [d["source"]["offset"] for d in dead] == [10, 11, 12]
    assert "field 'c' (close price) is 'NaN'" in dead[1]["reason"]
