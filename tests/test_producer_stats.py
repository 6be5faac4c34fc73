"""The producer's counters and its periodic log line (pure)."""

from __future__ import annotations

from producer.stats import Stats, stats_line


def test_undelivered_counts_events_and_dead_letters_read_but_never_acknowledged():
    stats = Stats(events=100, invalid=3, published=95, dead_lettered=2)
    assert stats.undelivered() == 6
    assert Stats(events=5, published=5).undelivered() == 0


def test_stats_line_reports_rate_since_last_line_and_every_kind_of_count():
    before = Stats(events=100)
    now = Stats(
        events=400,
        published=390,
        invalid=4,
        not_json=1,
        dead_lettered=4,
        answers=2,
        reconnects=3,
        server_shutdowns=1,
        stale=1,
        delivery_failures=0,
        resent=7,
    )
    line = stats_line(before, now, 10.0, in_flight=10)
    assert line.startswith("30.0 events/s; read 400, published 390, in flight 10;")
    for part in (
        "invalid->DLQ 4 (non-JSON 1",
        "control answers 2",
        "reconnects 3 (serverShutdown 1, stale 1)",
        "delivery failures 0",
        "resent 7",
    ):
        assert part in line
    assert stats_line(before, now, 0.0, 0).startswith("0.0 events/s")
