"""Kafka clients repeat the same lines hundreds of times a minute while a broker is down
(measured in tests/test_faults_outage.py: 377 "brokers are down" lines from one sink in
60 s); the logs say it once per window, then how many were held back."""

from __future__ import annotations

import logging

from crypto_live.logs import RepeatLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def line(name: str, message: str, *args: object, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


def passed(limiter: RepeatLimiter, record: logging.LogRecord) -> str | None:
    return record.getMessage() if limiter.filter(record) else None


def test_a_kafka_client_line_repeated_with_other_numbers_passes_once_per_window_then_says_how_many_were_held():
    clock = Clock()
    limiter = RepeatLimiter(window=30, clock=clock)
    consumer = "quixstreams.kafka.consumer"
    first = passed(limiter, line(consumer, 'Kafka consumer error: %d/%d brokers are down code="-187"', 1, 1))
    held = [
        passed(limiter, line(consumer, f'Kafka consumer error: {n}/3 brokers are down code="-187"')) for n in range(5)
    ]
    other = passed(limiter, line(consumer, "Connect to ipv4#127.0.0.1:9092 failed: Connection refused"))
    clock.now += 31
    after = passed(limiter, line(consumer, 'Kafka consumer error: 2/2 brokers are down code="-187"'))

    assert first == 'Kafka consumer error: 1/1 brokers are down code="-187"'
    assert held == [None] * 5
    assert other is not None  # another kind of line is not held back by the first
    assert after == 'Kafka consumer error: 2/2 brokers are down code="-187" (5 more like it in the last 31 s)'


def test_the_services_own_lines_and_other_levels_are_never_held_back():
    limiter = RepeatLimiter(window=30, clock=Clock())
    own = [passed(limiter, line("processors.s3_sink", "wrote s3://b/k (5 rows)")) for _ in range(3)]
    levels = [
        passed(limiter, line("producer.librdkafka", "FAIL broker down", level=level))
        for level in (logging.WARNING, logging.ERROR)
    ]
    assert own == ["wrote s3://b/k (5 rows)"] * 3
    assert None not in levels
