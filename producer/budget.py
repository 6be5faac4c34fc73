"""Binance's connection-attempt limit, kept whatever the backoff says. Pure; no clock of its
own (callers pass ``now``).

A server that accepts, sends one frame and drops would reset the backoff on every
connection, so the backoff alone cannot keep a producer under the exchange's limit of
:data:`~crypto_live.binance.CONNECTION_ATTEMPTS_PER_WINDOW` attempts per
:data:`~crypto_live.binance.CONNECTION_WINDOW` seconds per IP: :class:`ConnectionBudget`
does, with a margin.
"""

from __future__ import annotations

from collections import deque

from crypto_live import binance

#: Attempts kept in reserve under Binance's limit: the exchange counts attempts when they
#: arrive, not when we start them, and other clients behind the same IP (a deploy that
#: overlaps the old task) count against the same limit.
ATTEMPT_MARGIN = 50
DEFAULT_ATTEMPT_LIMIT = binance.CONNECTION_ATTEMPTS_PER_WINDOW - ATTEMPT_MARGIN
DEFAULT_WINDOW = binance.CONNECTION_WINDOW


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
