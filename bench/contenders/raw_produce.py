"""Raw confluent-kafka produce: the producer's contender.

    python -m bench.contenders.raw_produce TOPIC EVENTS

Produces EVENTS events (bench.stack.market_events, 400 symbols), serialized before the
clock starts, keyed by symbol with timestamp E, with the producer's own delivery
settings (producer.publisher.PRODUCER_CONFIG: idempotence, acks, lz4, linger, queue
bounds), then flushes. No validation, no websocket: what librdkafka alone costs.
"""

from __future__ import annotations

import os
import sys

import orjson
from confluent_kafka import Producer

from bench.stack import market_events
from producer.publisher import PRODUCER_CONFIG


def main(topic: str, count: int) -> None:
    events = [
        (raw, event["s"].encode(), event["E"]) for raw in market_events(count, 400) for event in [orjson.loads(raw)]
    ]
    producer = Producer({**PRODUCER_CONFIG, "bootstrap.servers": os.environ["KAFKA_BOOTSTRAP_SERVERS"]})
    for value, key, timestamp in events:
        while True:
            try:
                producer.produce(topic, value, key=key, timestamp=timestamp)
                break
            except BufferError:
                producer.poll(0.05)  # the local queue is full: wait for deliveries, as the producer does
        producer.poll(0)
    producer.flush()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
