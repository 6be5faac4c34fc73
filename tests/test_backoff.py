"""Reconnect timing: the shared jittered exponential backoff as the producer uses it, and
the producer's budget under Binance's connection limit (pure)."""

from __future__ import annotations

import itertools
import random

import pytest

from crypto_live import binance
from crypto_live.backoff import Backoff, exponential, full_jitter
from producer.budget import ConnectionBudget


def nth(iterator, n: int) -> float:
    """The ``n``-th value (from 0) of ``iterator``."""
    return next(itertools.islice(iterator, n, None))


def jittered(base: float, cap: float, draw) -> Backoff:
    return Backoff(lambda: full_jitter(exponential(base, cap), draw=draw))


def test_full_jitter_scales_the_draw_by_the_capped_exponential():
    assert nth(full_jitter(exponential(0.5, 60), draw=lambda: 0.999), 0) == pytest.approx(0.4995)
    assert nth(full_jitter(exponential(0.5, 60), draw=lambda: 0.5), 3) == pytest.approx(2.0)
    assert nth(full_jitter(exponential(0.5, 60), draw=lambda: 0.5), 10) == pytest.approx(30.0)  # capped at 60
    assert nth(full_jitter(exponential(0.5, 60), draw=lambda: 0.999), 10_000) == pytest.approx(59.94)  # no overflow
    assert nth(full_jitter(exponential(0.5, 60), draw=lambda: 0.0), 5) == 0.0


def test_delays_grow_until_the_cap_and_never_exceed_it():
    backoff = jittered(0.5, 8.0, draw=lambda: 0.999999)
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays[:5] == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0], rel=1e-5)
    assert all(d <= 8.0 for d in delays)
    assert backoff.failures == 8


def test_delays_are_spread_by_jitter():
    backoff = jittered(1, 60, draw=random.Random(7).random)
    delays = []
    for _ in range(200):
        backoff.reset()
        for _ in range(4):
            delay = backoff.next_delay()
        delays.append(delay)
    assert all(0 <= d < 8 for d in delays)
    assert len({round(d, 3) for d in delays}) > 150  # not one synchronised value


def test_reset_after_data_flows_starts_small_again():
    backoff = jittered(0.5, 60, draw=lambda: 0.99)
    for _ in range(10):
        backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() < 0.5


@pytest.mark.parametrize("base, cap, factor", [(0, 1, 2), (1, 0, 2), (-1, 5, 2), (1, 5, 0.5)])
def test_backoff_rejects_non_positive_bounds(base, cap, factor):
    with pytest.raises(ValueError):
        exponential(base, cap, factor)  # refused on the call, before any delay is drawn


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
        in_window = sum(1 for t in attempts[i:] if t < start + binance.CONNECTION_WINDOW)
        assert in_window < binance.CONNECTION_ATTEMPTS_PER_WINDOW


@pytest.mark.parametrize("limit, window", [(0, 300), (10, 0)])
def test_budget_rejects_nonsense(limit, window):
    with pytest.raises(ValueError):
        ConnectionBudget(limit=limit, window=window)
