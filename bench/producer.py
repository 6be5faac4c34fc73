"""`crypto-live producer` against raw confluent-kafka produce of the same events.

1. A websocket server (bench/contenders/ws_firehose.py) pushes N events in 400-event
   ``!miniTicker@arr`` frames as fast as the producer reads them; the producer validates
   each event and publishes it.
2. bench/contenders/raw_produce.py produces the same N events, already serialized, with
   the producer's delivery settings (producer.publisher.PRODUCER_CONFIG).

Each writes to a topic of its own; the rate is what reaches that topic, read by a
consumer from the first message to the N-th (start-up and connection left out).
"""

from __future__ import annotations

import socket
import sys
import time

from bench.stack import Child, Stack, prefill, wait_until

FULL_EVENTS, QUICK_EVENTS = 200_000, 20_000
PARTITIONS = 3


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class ArrivalClock:
    """Counts the messages reaching a topic, from a consumer that is already fetching
    before the writer starts (else the first read would hold everything and time nothing)."""

    def __init__(self, stack: Stack, topic: str):
        from confluent_kafka import Consumer, TopicPartition

        self.topic = topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": stack.bootstrap,
                "group.id": stack.name("count"),
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 10,  # arrivals are timed by the read: no fetch may sit on them
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + 1.0  # connect and send the first fetches
        while time.monotonic() < deadline:
            self._consumer.consume(1000, timeout=0.1)

    def rate(self, expected: int, writer: Child, *, limit: float = 300) -> float:
        """Events/s from the read that passes the first fifth of ``expected`` to the read of
        the last (NaN if they do not all arrive, or arrive in one read); closes the consumer.

        The first fifth is left out: a writer reads its source while its connection to the
        broker is still being set up, and delivers that backlog in one burst.
        """
        started, first, count = time.monotonic(), None, 0
        last_fresh = started
        try:
            while count < expected and time.monotonic() - started < limit:
                fresh = sum(1 for message in self._consumer.consume(1000, timeout=0.05) if message.error() is None)
                if fresh:
                    count, last_fresh = count + fresh, time.monotonic()
                    if first is None and count >= expected // 5:
                        first = (time.monotonic(), count)
                elif not writer.running() and time.monotonic() - last_fresh > 5:
                    break  # the writer is gone and nothing more is coming
        finally:
            self._consumer.close()
        if first is None or count < expected or count == first[1]:  # never, or all in one read
            print(f"  {count:,} of {expected:,} events reached {self.topic} (log: {writer.log})", flush=True)
            return float("nan")
        return (count - first[1]) / (time.monotonic() - first[0])


def measure(stack: Stack, *, quick: bool = False) -> dict[str, float]:
    from crypto_live.embedded import free_port

    n = QUICK_EVENTS if quick else FULL_EVENTS
    results: dict[str, float] = {}
    print(f"producer: {n:,} events in 400-event frames ...", flush=True)

    port = free_port()
    firehose = stack.start(
        [sys.executable, "-m", "bench.contenders.ws_firehose", str(port), str(n)], "ws-firehose.log", stack.env()
    )
    try:
        wait_until(lambda: _port_open(port), 30, "the websocket server")
        topic = stack.name("producer-topic")
        prefill(stack, topic, [], PARTITIONS)
        clock = ArrivalClock(stack, topic)
        env = stack.env(
            KAFKA_TOPIC=topic,
            BINANCE_WEBSOCKET_URL=f"ws://127.0.0.1:{port}/ws/!miniTicker@arr",
            LOG_LEVEL="WARNING",
        )
        producer = stack.start([sys.executable, "-m", "crypto_live", "producer"], "producer.log", env)
        try:
            results["producer_events_per_s"] = clock.rate(n, producer)
            results["producer_bench_rss_mb"] = producer.peak_rss_mb()
            # The whole process's CPU over the events: an upper bound, start-up (~1.5 s of imports) included.
            results["producer_cpu_us_per_event"] = producer.cpu_seconds() / n * 1e6
        finally:
            producer.stop()
    finally:
        firehose.stop()
    print(f"  crypto-live producer: {results['producer_events_per_s']:,.0f} events/s", flush=True)

    topic = stack.name("raw-topic")
    prefill(stack, topic, [], PARTITIONS)
    clock = ArrivalClock(stack, topic)
    raw = stack.start(
        [sys.executable, "-m", "bench.contenders.raw_produce", topic, str(n)], "raw-produce.log", stack.env()
    )
    try:
        results["raw_produce_events_per_s"] = clock.rate(n, raw)
    finally:
        raw.stop()
    print(f"  raw confluent-kafka produce: {results['raw_produce_events_per_s']:,.0f} events/s", flush=True)
    return results
