"""Shared test data and the checks built on it: events, batches, messages on a topic, offsets.

Every test that needs a miniTicker event, a Quix sink batch, messages produced the way the
producer produces them, a group's committed offsets or an exactly-once verdict takes it
from here, so that one definition of each is tested everywhere.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition
from quixstreams.sinks import SinkBatch

from crypto_live.kafka import ensure_topics
from crypto_live.settings import KafkaSettings
from processors.topic_log import ABSENT

#: 2023-11-14T22:13:20Z: a fixed event time so tests are reproducible.
BASE_TIME_MS = 1_700_000_000_000


def ticker(n: int = 0, *, symbol: str = "BTCUSDT", event_time: int | None = None, **fields: Any) -> dict[str, Any]:
    """A valid miniTicker event; ``n`` makes its key (s, E) and its prices unique.

    ``event_time`` defaults to BASE_TIME_MS + n seconds; ``fields`` override any field
    (an invalid value makes an invalid event on purpose).
    """
    return {
        "e": "24hrMiniTicker",
        "E": BASE_TIME_MS + n * 1000 if event_time is None else event_time,
        "s": symbol,
        "c": f"{n}.00250000",
        "o": "0.00100000",
        "h": f"{n}.5",
        "l": "0.001",
        "v": f"{n}",
        "q": "18.00000000",
        **fields,
    }


def key_of(event: Mapping[str, Any]) -> tuple[str, int]:
    """An event's identity: (symbol, event time)."""
    return event["s"], event["E"]


def sink_batch(
    events: Iterable[Mapping[str, Any]], *, topic: str = "miniticker", partition: int = 0, first_offset: int = 0
) -> SinkBatch:
    """A Quix SinkBatch of ``events`` at consecutive offsets, as the sinks get them from Kafka:
    the JSON bytes, keyed and timestamped like the producer's."""
    batch = SinkBatch(topic=topic, partition=partition)
    for offset, event in enumerate(events, start=first_offset):
        value = orjson.dumps(event)
        batch.append(value=value, key=event["s"].encode(), timestamp=event["E"], headers=[], offset=offset)
    return batch


def topic_log(events: Sequence[Mapping[str, Any]], *, first_offset: int = 0) -> Callable[[str, int, int], Any]:
    """What the S3 sink's incarnation check reads of the topic (processors.topic_log), for a
    partition that now holds ``events`` at consecutive offsets from ``first_offset``."""

    def read(topic: str, partition: int, offset: int) -> Any:
        index = offset - first_offset
        return orjson.dumps(events[index]) if 0 <= index < len(events) else ABSENT

    return read


def s3_row(offset: int, event: Mapping[str, Any]) -> tuple[int, int, bytes]:
    """The S3 sink's row of ``event`` read at ``offset`` (see processors.s3_objects.to_row)."""
    return offset, event["E"], orjson.dumps(event)


def produce(
    bootstrap: str,
    topic: str,
    values: Iterable[Mapping[str, Any] | bytes],
    *,
    partition_of: Callable[[Mapping[str, Any]], int] | None = None,
) -> None:
    """Publish like the producer does: key = symbol, timestamp = E, value = the JSON.

    Raw ``bytes`` values are poison messages: key ``junk``, partition 0.
    """
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        if isinstance(value, bytes):
            producer.produce(topic, key=b"junk", value=value, partition=0)
            continue
        extra = {} if partition_of is None else {"partition": partition_of(value)}
        producer.produce(topic, key=value["s"].encode(), value=orjson.dumps(value), timestamp=value["E"], **extra)
    assert producer.flush(10) == 0, "the test broker did not take every message"


def publish(
    kafka: KafkaSettings,
    values: Iterable[Mapping[str, Any] | bytes],
    *,
    partition_of: Callable[[Mapping[str, Any]], int] | None = None,
) -> None:
    """:func:`produce` to ``kafka.topic`` after creating the topics as the services do, so
    the topic has the configured partition count rather than the broker's default."""
    ensure_topics(kafka)
    produce(kafka.bootstrap_servers, kafka.topic, values, partition_of=partition_of)


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The offset ``group`` committed on each of ``partitions`` partitions (negative: none yet).

    Progress is measured from commits, never from watermarks: Tansu's trail the last batch.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        wanted = [TopicPartition(topic, p) for p in range(partitions)]
        return [tp.offset for tp in consumer.committed(wanted, timeout=10)]
    finally:
        consumer.close()


def assert_exactly_once(stored: Iterable[tuple[str, int]], sent: Iterable[tuple[str, int]]) -> None:
    """Every sent event key is stored once: none missing, none twice, nothing else."""
    counts = Counter(stored)
    expected = set(sent)
    assert expected, "nothing was sent: the check would prove nothing"
    doubled = {key: n for key, n in counts.items() if n > 1}
    missing = expected - counts.keys()
    unexpected = counts.keys() - expected
    assert not doubled, f"{len(doubled)} events stored more than once, e.g. {next(iter(doubled))}"
    assert not missing, f"{len(missing)} of {len(expected)} events missing, e.g. {next(iter(missing))}"
    assert not unexpected, f"{len(unexpected)} events stored that were never sent, e.g. {next(iter(unexpected))}"


def run_app_until(app: Any, scenario: Callable[[], None]) -> None:
    """Run a Quix ``app`` in this (the main) thread while ``scenario`` runs in another; stop
    the app when the scenario returns or fails, and re-raise its failure here."""
    failure: list[BaseException] = []

    def drive() -> None:
        try:
            scenario()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failure.append(exc)
        finally:
            app.stop()

    watchdog = threading.Thread(target=drive, daemon=True)
    watchdog.start()
    app.run()
    watchdog.join()
    if failure:
        raise failure[0]


def run_service(service: Callable[[], int], scenario: Callable[[threading.Event], None], *, grace: float = 30.0) -> int:
    """Run ``service`` (a sink's ``run(settings)``) in this, the main thread, where Quix
    handles signals, while ``scenario(stopped)`` runs in another; ``stopped`` is set once
    the service returned or raised. Returns what the service returns, raises what it raises.

    A scenario that fails stops the service with SIGTERM, as a user would, and its failure
    is re-raised here: a test fails instead of waiting for a service that will not stop.
    """
    stopped = threading.Event()
    failure: list[BaseException] = []

    def drive() -> None:
        try:
            scenario(stopped)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            failure.append(exc)
            # Only Quix's handler, installed by app.run(), stops the service; the default would end pytest.
            if not stopped.is_set() and signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
                os.kill(os.getpid(), signal.SIGTERM)

    watchdog = threading.Thread(target=drive, daemon=True)
    watchdog.start()
    try:
        return service()
    finally:
        stopped.set()
        watchdog.join(grace)
        if failure:
            raise failure[0]
