"""The producer's counters and the periodic log line made from them. Pure; no I/O."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class Stats:
    """Running totals since start-up. Mutated by the service's single event loop
    (and by delivery callbacks, which run inside ``poll`` on that same loop)."""

    events: int = 0  # valid events read from the websocket
    published: int = 0  # events the broker acknowledged on KAFKA_TOPIC
    invalid: int = 0  # items sent to the dead-letter topic (non-JSON frames included)
    not_json: int = 0  # frames that were not JSON at all
    dead_lettered: int = 0  # dead-letter records the broker acknowledged
    answers: int = 0  # answers to control messages (never published)
    connections: int = 0  # websocket connections opened
    reconnects: int = 0  # connections lost or dropped on purpose, then reopened
    server_shutdowns: int = 0
    stale: int = 0  # connections dropped by the stale-stream watchdog
    delivery_failures: int = 0  # messages the broker finally refused (lost unless resent)
    resent: int = 0  # messages produced again after the producer was rebuilt
    producer_resets: int = 0  # librdkafka producers rebuilt (broker lost its state)
    queue_full: int = 0  # times produce() found the local queue full and waited

    def snapshot(self) -> Stats:
        return dataclasses.replace(self)

    def undelivered(self) -> int:
        """Messages read (events and dead letters) that no broker acknowledged."""
        return max(0, self.events + self.invalid - self.published - self.dead_lettered)


def stats_line(previous: Stats, current: Stats, elapsed: float, in_flight: int) -> str:
    """One log line: the rate since ``previous`` and the totals of ``current``."""
    rate = (current.events - previous.events) / elapsed if elapsed > 0 else 0.0
    return (
        f"{rate:.1f} events/s; read {current.events}, published {current.published}, "
        f"in flight {in_flight}; invalid->DLQ {current.invalid} (non-JSON {current.not_json}, "
        f"acknowledged {current.dead_lettered}); control answers {current.answers}; "
        f"reconnects {current.reconnects} (serverShutdown {current.server_shutdowns}, stale {current.stale}); "
        f"delivery failures {current.delivery_failures}; resent {current.resent}; "
        f"local queue full {current.queue_full}"
    )
