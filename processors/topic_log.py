"""Read one message of a topic at a given offset, without joining a group or committing.

The S3 sink asks what the topic holds NOW at an offset where a stored object's first
event came from (:func:`processors.s3_objects.locate`): the same bytes mean the object
belongs to this incarnation of the topic, other bytes or no message mean another one
wrote it (the topic was deleted and created again, its offsets starting again at 0).

The answer is one of three, and only two are answers:

- the message's value (``bytes``, or ``None`` for a message without a value);
- :data:`ABSENT`: the log holds no message at that offset now (it ends before it, or
  retention removed it): librdkafka says so (end of partition at that offset, offset out
  of range), or the fetch's own high watermark, which every fetch response carries,
  says the log ends at or before it (Tansu answers a fetch past the end with no records
  and no error);
- anything else -- no broker answer within ``timeout`` -- raises
  :class:`TopicReadError`, which the sink turns into backpressure: it is asked again.

A consumer is built for each read: reads are rare (a writer's first batch of an hour on a
partition), and a fresh consumer's cached watermarks can only come from this read's own
fetches.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

from confluent_kafka import Consumer, KafkaError, TopicPartition

from crypto_live.errors import CryptoLiveError


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: No message at that offset in the topic now.
ABSENT: Final = _Absent()

#: What :meth:`TopicLog.read` answers: a message's value (None: a message without one), or ABSENT.
Read = bytes | None | _Absent

#: librdkafka's word that the offset lies outside the log.
_OUTSIDE = frozenset({KafkaError._PARTITION_EOF, KafkaError.OFFSET_OUT_OF_RANGE, KafkaError._AUTO_OFFSET_RESET})


class TopicReadError(CryptoLiveError):
    """The broker did not say within the time given what a partition holds at an offset
    (it is down or slow): ask again later."""


class TopicLog:
    """Reads single messages with ``config`` (:func:`crypto_live.kafka.client_config`).

    ``group`` is the reading service's own consumer group: librdkafka looks its coordinator
    up (FindCoordinator, authorized by MSK IAM as the DescribeGroup the service already has)
    but never joins it or commits to it -- partitions are assigned, not subscribed."""

    def __init__(self, config: dict[str, Any], group: str, *, timeout: float = 10.0):
        self._config = {
            **config,
            "group.id": group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "error",
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 100,
            "logger": logging.getLogger("processors.topic_log.librdkafka"),
        }
        self._timeout = timeout

    def read(self, topic: str, partition: int, offset: int) -> Read:
        """The value of the message at ``topic[partition]@offset``, or ABSENT; raise
        TopicReadError when the broker does not tell within the timeout."""
        consumer = Consumer(self._config)
        try:
            return self._read(consumer, TopicPartition(topic, partition, offset))
        finally:
            consumer.close()

    def _read(self, consumer: Consumer, where: TopicPartition) -> Read:
        consumer.assign([where])
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is not None:
                error = message.error()
                if error is None:
                    if message.offset() == where.offset:
                        value: bytes | None = message.value()
                        return value
                    return ABSENT  # the log resumed past it: compacted or deleted
                if error.code() in _OUTSIDE:
                    return ABSENT
                if error.fatal():
                    raise TopicReadError(f"cannot read {where.topic}[{where.partition}]: {error.str()}")
                continue
            low, high = consumer.get_watermark_offsets(where, cached=True)
            if high >= 0 and not low <= where.offset < high:
                return ABSENT
        raise TopicReadError(
            f"Kafka did not answer what {where.topic}[{where.partition}] holds at offset {where.offset} "
            f"within {self._timeout:.0f} s"
        )
