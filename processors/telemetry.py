"""A sink's heartbeat and metrics, driven by its Quix poll loop.

librdkafka's statistics callback is served by ``consumer.poll()``, which Quix's loop
calls on every turn (one poll timeout, at most 1 s, apart; also while partitions are
paused for backpressure). So :meth:`SinkTelemetry.on_statistics` runs on the loop
itself, every :data:`STATISTICS_INTERVAL_MS` milliseconds: it beats the heartbeat, keeps
the consumer lag the statistics report and writes a metrics record when one is due.
Within a long flush the sink calls :meth:`SinkTelemetry.progress` after each completed
request, so a slow but working destination keeps the heartbeat fresh. A loop that is
stuck anywhere (a call that never returns, a deadlock) stops both, and
``crypto-live healthcheck`` fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import orjson

from crypto_live.health import Heartbeat
from crypto_live.metrics import MetricsReporter, Sample, consumer_lag
from crypto_live.settings import MonitoringSettings

log = logging.getLogger(__name__)

#: librdkafka's statistics.interval.ms for the sinks' consumers: twice the heartbeat's
#: cadence, so the file is refreshed every 1-1.5 s (a beat is skipped when the last write
#: was under a second ago).
STATISTICS_INTERVAL_MS = 500


@dataclass
class StreamCounters:
    """Messages the stream processed and dead-lettered since start-up (replays count again)."""

    consumed: int = 0
    dead_letters: int = 0


class SinkTelemetry:
    """The heartbeat and metrics of sink ``stage`` consuming ``topic``.

    ``written`` returns the sink's own running totals by metric name (ObjectsWritten,
    RowsWritten). Use it as a context manager around ``app.run()``: the heartbeat file
    exists while the loop runs, and the last metrics record is written when it ends.
    """

    def __init__(
        self, stage: str, topic: str, monitoring: MonitoringSettings, written: Callable[[], Mapping[str, int]]
    ):
        self.counters = StreamCounters()
        self.heartbeat = Heartbeat.for_service(stage, monitoring)
        self._topic = topic
        self._written = written
        self._lag: int | None = None
        self._stage = stage
        self._interval = monitoring.metrics_interval
        self._metrics: MetricsReporter | None = None  # from the loop's start

    def consumer_config(self) -> dict[str, Any]:
        """librdkafka settings for the sink's consumer (Quix passes ``stats_cb`` through)."""
        return {"statistics.interval.ms": STATISTICS_INTERVAL_MS, "stats_cb": self.on_statistics}

    def on_statistics(self, stats_json: str) -> None:
        """librdkafka's statistics, served by ``consumer.poll()`` on the Quix loop."""
        self.heartbeat.beat()
        try:
            # orjson: librdkafka's statistics are tens of kB twice a second, on the poll loop.
            self._lag = consumer_lag(orjson.loads(stats_json), self._topic)
        except (ValueError, TypeError, AttributeError) as exc:
            log.debug("unreadable librdkafka statistics: %s", exc)
        if self._metrics is not None:
            self._metrics.tick()

    def progress(self) -> None:
        """A request of a flush completed: the loop is working, if slowly."""
        self.heartbeat.beat()

    def _sample(self) -> Sample:
        counts = {**self._written(), "DeadLetters": self.counters.dead_letters}
        return Sample(self.counters.consumed, counts, {"ConsumerLag": self._lag})

    def __enter__(self) -> SinkTelemetry:
        self.heartbeat.start()
        self._metrics = MetricsReporter(self._stage, self._interval, self._sample)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self._metrics is not None:
            self._metrics.close()
        self.heartbeat.stop()
