"""Reconnect timing: jittered exponential backoff and Binance's connection budget (pure)."""

from __future__ import annotations

import random

import pytest

from producer.backoff import BINANCE_ATTEMPTS_PER_WINDOW, Backoff, ConnectionBudget, full_jitter


def test_full_jitter_scales_the_draw_by_the_capped_exponential():
    assert full_jitter(0, 0.5, 60, 0.999) == pytest.approx(0.4995)
    assert full_jitter(3, 0.5, 60, 0.5) == pytest.approx(2.0)
    assert full_jitter(10, 0.5, 60, 0.5) == pytest.approx(30.0)  # capped at 60
    assert full_jitter(10_000, 0.5, 60, 0.999) == pytest.approx(59.94)  # no overflow
    assert full_jitter(5, 0.5, 60, 0.0) == 0.0


def test_delays_grow_until_the_cap_and_never_exceed_it():
    backoff = Backoff(base=0.5, cap=8.0, draw=lambda: 0.999999)
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays[:5] == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0], rel=1e-5)
    assert all(d <= 8.0 for d in delays)
    assert backoff.failures == 8


def test_delays_are_spread_by_jitter():
    backoff = Backoff(base=1, cap=60, draw=random.Random(7).random)
    delays = []
    for _ in range(200):
        backoff.reset()
        for _ in range(4):
            delay = backoff.next_delay()
        delays.append(delay)
    assert all(0 <= d < 8 for d in delays)
    assert len({round(d, 3) for d in delays}) > 150  # not one synchronised value


def test_reset_after_data_flows_starts_small_again():
    backoff = Backoff(base=0.5, cap=60, draw=lambda: 0.99)
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.next_delay() < 0.5


@pytest.mark.parametrize("base, cap", [(0, 1), (1, 0), (-1, 5)])
def test_backoff_rejects_non_positive_bounds(base, cap):
    with pytest.raises(ValueError):
        Backoff(base=base, cap=cap)


def test_budget_allows_the_limit_then_waits_for_the_oldest_attempt_to_leave_the_window():
    budget = ConnectionBudget(limit=3, window=10.0)
    for t in (0.0, 1.0, 2.0):
        assert budget.wait_time(t) == 0.0
        budget.record(t)
    assert budget.wait_time(5.0) == pytest.approx(5.0)  # attempt at t=0 leaves at t=10
    assert budget.wait_time(10.0) == 0.0
    assert budget.used(10.0) == 2


def test_default_budget_keeps_any_five_minutes_under_binances_limit():
    """Even a server that drops every connection at once (backoff always reset)
    sees fewer than 300 attempts in any 5-minute window."""
    budget = ConnectionBudget()
    now, attempts = 0.0, []
    while now < 1800:
        now += budget.wait_time(now)
        budget.record(now)
        attempts.append(now)
        now += 0.01  # connect, get dropped, reconnect immediately
    for i, start in enumerate(attempts):
        in_window = sum(1 for t in attempts[i:] if t < start + 300)
        assert in_window < BINANCE_ATTEMPTS_PER_WINDOW


@pytest.mark.parametrize("limit, window", [(0, 300), (10, 0)])
def test_budget_rejects_nonsense(limit, window):
    with pytest.raises(ValueError):
        ConnectionBudget(limit=limit, window=window)
