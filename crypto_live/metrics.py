"""Service metrics as CloudWatch embedded metric format (EMF) records, one log line each.

Every METRICS_INTERVAL seconds a service writes one record. With LOG_FORMAT=json it is a
JSON line with a top-level ``_aws`` member (the log fields are kept next to it), from
which CloudWatch Logs extracts the metrics when the awslogs driver ships the container's
output: no agent, no ``cloudwatch:PutMetricData`` permission. With LOG_FORMAT=text the
same values are one ``metrics: ...`` log line.

Namespace ``crypto-live``, one dimension ``Service``:

=============  ==========================================================================
producer       EventsPerSecond, EventsPublished, DeadLetters, Reconnects
s3-sink        EventsPerSecond, ObjectsWritten, RowsWritten, DeadLetters, ConsumerLag
dynamo-sink    EventsPerSecond, RowsWritten, DeadLetters, ConsumerLag
=============  ==========================================================================

Counts are what happened during the interval (use the Sum statistic), EventsPerSecond is
the interval's average (events read by the producer, messages processed by a sink) and
ConsumerLag is the sink's lag when the record was written: messages on its assigned
partitions that it has not committed yet (left out until librdkafka knows it).

The pure parts (:func:`interval_metrics`, :func:`emf_record`, :func:`consumer_lag`) are
tested alone; :class:`MetricsReporter` only keeps time and writes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from crypto_live.logs import METRICS_LOGGER

NAMESPACE = "crypto-live"
DIMENSION = "Service"
COUNT = "Count"
PER_SECOND = "Count/Second"

log = logging.getLogger(METRICS_LOGGER)


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    unit: str = COUNT


@dataclass(frozen=True)
class Sample:
    """A service's running totals at one moment, and its current gauges.

    ``events`` drives EventsPerSecond; each of ``counts`` (by metric name) is reported as
    its increase over the interval; ``gauges`` as they are, None meaning unknown (left out).
    """

    events: int
    counts: Mapping[str, int] = field(default_factory=dict)
    gauges: Mapping[str, float | None] = field(default_factory=dict)


def interval_metrics(previous: Sample, current: Sample, elapsed: float) -> list[Metric]:
    """The metrics of the ``elapsed`` seconds from ``previous`` to ``current``."""
    rate = (current.events - previous.events) / elapsed if elapsed > 0 else 0.0
    metrics = [Metric("EventsPerSecond", round(rate, 3), PER_SECOND)]
    metrics += [Metric(name, total - previous.counts.get(name, 0)) for name, total in current.counts.items()]
    metrics += [Metric(name, value) for name, value in current.gauges.items() if value is not None]
    return metrics


def emf_record(
    service: str, metrics: Sequence[Metric], timestamp_ms: int, *, namespace: str = NAMESPACE
) -> dict[str, Any]:
    """An EMF document: ``_aws`` metadata naming each metric and its unit, the ``Service``
    dimension and every metric's value as top-level members."""
    values = [(metric.name, metric.value) for metric in metrics]
    if len({name for name, _ in values}) != len(values):
        raise ValueError(f"metric names repeat: {[name for name, _ in values]}")
    if not all(isinstance(value, int | float) and math.isfinite(value) for _, value in values):
        raise ValueError(f"metric values must be finite numbers: {values}")
    return {
        "_aws": {
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [
                {
                    "Namespace": namespace,
                    "Dimensions": [[DIMENSION]],
                    "Metrics": [{"Name": metric.name, "Unit": metric.unit} for metric in metrics],
                }
            ],
        },
        DIMENSION: service,
        **dict(values),
    }


def summary(metrics: Iterable[Metric]) -> str:
    """``EventsPerSecond=12.5 RowsWritten=120 ...``: the text form of a record."""
    return " ".join(f"{metric.name}={metric.value:g}" for metric in metrics)


def consumer_lag(stats: Mapping[str, Any], topic: str) -> int | None:
    """A consumer's lag on ``topic`` from librdkafka's statistics (the ``stats_cb`` JSON, parsed).

    Summed over the partitions assigned to it: the high watermark minus the committed
    offset, or minus the low watermark before anything was committed. None while no
    assigned partition has a known high watermark.
    """
    partitions = stats.get("topics", {}).get(topic, {}).get("partitions", {})
    total: int | None = None
    for number, partition in partitions.items():
        if number == "-1" or not partition.get("desired"):
            continue  # the internal unassigned partition, or one not (or no longer) ours
        high = partition.get("hi_offset", -1)
        committed = partition.get("committed_offset", -1)
        base = committed if committed >= 0 else partition.get("lo_offset", -1)
        if high < 0 or base < 0:
            continue
        total = (total or 0) + max(0, high - base)
    return total


def _log_record(record: dict[str, Any], text: str) -> None:
    log.info("metrics: %s", text, extra={"emf": record})


class MetricsReporter:
    """Writes a service's metrics record every ``interval`` seconds: call :meth:`tick`
    often from the service's loop, and :meth:`close` when it stops (the last interval)."""

    def __init__(
        self,
        service: str,
        interval: float,
        sample: Callable[[], Sample],
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        emit: Callable[[dict[str, Any], str], None] = _log_record,
    ):
        self.service = service
        self.interval = interval
        self._sample = sample
        self._clock = clock
        self._wall_clock = wall_clock
        self._emit = emit
        self._previous = sample()
        self._since = clock()

    def tick(self) -> None:
        if self._clock() - self._since >= self.interval:
            self._report()

    def close(self) -> None:
        if self._clock() > self._since:
            self._report()

    def _report(self) -> None:
        current, now = self._sample(), self._clock()
        metrics = interval_metrics(self._previous, current, now - self._since)
        self._previous, self._since = current, now
        record = emf_record(self.service, metrics, int(self._wall_clock() * 1000))
        self._emit(record, summary(metrics))
