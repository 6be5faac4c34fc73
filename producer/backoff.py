"""When to try connecting again. Pure; no I/O, no clock of its own (callers pass ``now``).

* :class:`Backoff` — exponential backoff with full jitter: the n-th consecutive failure
  waits a uniformly random time in ``[0, min(cap, base * 2**n))``. Jitter spreads the
  reconnects of many producers cut off at once; the cap bounds the wait;
  :meth:`Backoff.reset` is called once data flows again, so the next hiccup retries fast.
* :class:`ConnectionBudget` — a sliding window that keeps connection attempts under
  Binance's limit of 300 per 5 minutes per IP, whatever the backoff says (a server that
  accepts, sends one frame and drops would otherwise reset the backoff forever).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable

#: Binance allows 300 connection attempts per 5 minutes per IP; keep a margin under it.
BINANCE_ATTEMPTS_PER_WINDOW = 300
DEFAULT_ATTEMPT_LIMIT = 250
DEFAULT_WINDOW = 300.0


def full_jitter(failures: int, base: float, cap: float, draw: float) -> float:
    """The wait after ``failures`` consecutive failures, for a uniform ``draw`` in [0, 1)."""
    exponent = min(failures, 62)  # 2**62 * base is past any cap; avoids float overflow
    return draw * min(cap, base * 2**exponent)


class Backoff:
    """Exponential backoff with full jitter, capped; ``reset()`` when data flows again."""

    def __init__(self, base: float = 0.5, cap: float = 60.0, draw: Callable[[], float] = random.random):
        if base <= 0 or cap <= 0:
            raise ValueError("base and cap must be positive")
        self.base = base
        self.cap = cap
        self._draw = draw
        self.failures = 0

    def next_delay(self) -> float:
        """The wait before the next attempt; each call counts one more failure."""
        delay = full_jitter(self.failures, self.base, self.cap, self._draw())
        self.failures += 1
        return delay

    def reset(self) -> None:
        self.failures = 0


class ConnectionBudget:
    """At most ``limit`` connection attempts in any ``window`` seconds.

    Shared by every connection of one producer, since Binance counts per IP.
    """

    def __init__(self, limit: int = DEFAULT_ATTEMPT_LIMIT, window: float = DEFAULT_WINDOW):
        if limit < 1 or window <= 0:
            raise ValueError("limit must be >= 1 and window positive")
        self.limit = limit
        self.window = window
        self._attempts: deque[float] = deque()

    def wait_time(self, now: float) -> float:
        """Seconds to wait from ``now`` before an attempt fits in the budget (0 = go)."""
        self._forget(now)
        if len(self._attempts) < self.limit:
            return 0.0
        return self._attempts[0] + self.window - now

    def record(self, now: float) -> None:
        """Count an attempt made at ``now``."""
        self._forget(now)
        self._attempts.append(now)

    def used(self, now: float) -> int:
        """Attempts counted in the window ending at ``now``."""
        self._forget(now)
        return len(self._attempts)

    def _forget(self, now: float) -> None:
        while self._attempts and self._attempts[0] <= now - self.window:
            self._attempts.popleft()
