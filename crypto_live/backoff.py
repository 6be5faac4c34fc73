"""How long to wait before trying again: delay sequences as generators. Pure; no clock.

Like python-websockets' ``backoff()``, a policy is a generator of delays, so callers can
swap it (tests pass a fixed sequence) and one copy serves every retry in the project:

* :func:`exponential` -- ``base, base*factor, ...`` up to ``cap``, then ``cap`` forever;
* :func:`full_jitter` -- each delay drawn uniformly from ``[0, ceiling)``: many clients
  cut off at once spread their retries instead of retrying in step;
* :class:`Backoff` -- a sequence that restarts from the beginning on :meth:`~Backoff.reset`,
  called once things work again, so the next hiccup is retried quickly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator


def exponential(base: float, cap: float, factor: float = 2.0) -> Iterator[float]:
    """``base × factor^n`` for n = 0, 1, ..., never above ``cap``; infinite.

    Raises ValueError at once (not at the first ``next()``) for a non-positive base or cap
    or a factor below 1.
    """
    if base <= 0 or cap <= 0 or factor < 1:
        raise ValueError("base and cap must be positive and factor at least 1")
    return _growing(min(base, cap), cap, factor)


def _growing(delay: float, cap: float, factor: float) -> Iterator[float]:
    while True:
        yield delay
        delay = min(cap, delay * factor)


def full_jitter(ceilings: Iterator[float], draw: Callable[[], float] = random.random) -> Iterator[float]:
    """``draw() × ceiling`` for each ceiling (``draw`` uniform in [0, 1))."""
    for ceiling in ceilings:
        yield draw() * ceiling


class Backoff:
    """A restartable delay sequence.

    ``policy`` makes a fresh delay iterator; :meth:`next_delay` takes its next value and
    counts one more failure, :meth:`reset` starts over at the first delay.
    """

    def __init__(self, policy: Callable[[], Iterator[float]]):
        self._policy = policy
        self._delays = policy()
        self.failures = 0

    def next_delay(self) -> float:
        self.failures += 1
        return next(self._delays)

    def reset(self) -> None:
        if self.failures:
            self._delays = self._policy()
            self.failures = 0
