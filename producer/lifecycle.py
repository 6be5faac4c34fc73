"""When a reader leaves its websocket connection, and how soon it connects again. Pure: no
I/O, no clock of its own (the shell passes ``now``, read from one monotonic clock).

In the sans-I/O style of python-websockets (and of the simulator's
:mod:`crypto_live.simulator.protocol`), :class:`Lifecycle` is told what happened and
answers what to do; :class:`~producer.service.Reader` does the I/O. Inputs:

* :meth:`~Lifecycle.opened` -- the handshake succeeded;
* :meth:`~Lifecycle.frame` -- a frame was read: did it carry events, or serverShutdown?
* :meth:`~Lifecycle.timed_out` -- the receive :attr:`~Lifecycle.deadline` passed;
* :meth:`~Lifecycle.stop_requested` -- the producer is stopping (at any time);
* :meth:`~Lifecycle.closed` -- the connection is closed, whoever closed it;
* :meth:`~Lifecycle.failed` -- connecting failed (with the HTTP status, if one came back).

Outputs:

* :attr:`~Lifecycle.deadline` -- when to stop waiting for the next frame (None: no limit,
  the connection is already being closed);
* a :class:`Leaving`, returned by the input that decided it, when the connection must be
  closed now. The shell starts the close handshake, during which the frames already on
  their way are still read and published. Only the first reason counts: later ones
  return None, and :meth:`~Lifecycle.closed` reports the first;
* :meth:`~Lifecycle.reconnect_delay` -- seconds to wait before the next attempt, or None
  when the producer is stopping.

Rules:

* liveness is judged by events alone: control answers and pings do not show that the
  market data flows, so ``stale_after`` seconds without an event leave the connection
  (stale), and the reconnect backs off;
* a connection is left after ``max_age`` seconds (before Binance's 24 h cut) and on
  serverShutdown; both reconnect at once, since nothing is wrong;
* a connection that carried events resets the backoff, so the next hiccup retries fast;
* a handshake refused with HTTP 4xx is not a dropped socket: a wrong URL or stream name
  stays wrong, and a rate limit lasts, so the next attempt waits the whole cap. Network
  errors and 5xx answers back off from the start as usual;
* a stop request wins over every other reason: nothing reconnects.
"""

from __future__ import annotations

import enum
import http
from dataclasses import dataclass

from crypto_live.backoff import Backoff, exponential, full_jitter

#: The first reconnect waits up to this many seconds (full jitter), doubling to the cap.
BACKOFF_BASE = 0.5

#: 4xx answers that mean "too many attempts from this IP", not a wrong URL.
RATE_LIMITED = {
    429: "too many requests from this IP",
    418: "this IP is banned for a while after ignoring HTTP 429",
}


class Cause(enum.Enum):
    """Why a connection ended."""

    STOP = "the producer is stopping"
    STALE = "no events for too long"
    MAX_AGE = "the connection reached its maximum age"
    SERVER_SHUTDOWN = "the server announced it is shutting down"
    CLOSED = "the server or the network closed the connection"
    UNREACHABLE = "connecting failed: a network error, a timeout or an HTTP 5xx answer"
    REFUSED = "the exchange answered the handshake with HTTP 4xx"


#: Reasons that reconnect at once rather than back off.
IMMEDIATE = frozenset({Cause.MAX_AGE, Cause.SERVER_SHUTDOWN})


@dataclass(frozen=True, slots=True)
class Leaving:
    """Why a connection ended (``why`` is for the log: it never holds the URL's path)."""

    why: str
    cause: Cause

    @property
    def immediate(self) -> bool:
        """Reconnect at once rather than back off."""
        return self.cause in IMMEDIATE


class Lifecycle:
    """One reader's connections, one after another; see the module docstring.

    ``backoff`` defaults to exponential delays from :data:`BACKOFF_BASE` up to
    ``reconnect_cap`` with full jitter; tests pass a fixed sequence.
    """

    def __init__(
        self, *, stale_after: float, max_age: float, reconnect_cap: float, backoff: Backoff | None = None
    ) -> None:
        self.stale_after = stale_after
        self.max_age = max_age
        self.reconnect_cap = reconnect_cap
        self.backoff = (
            backoff if backoff is not None else Backoff(lambda: full_jitter(exponential(BACKOFF_BASE, reconnect_cap)))
        )
        self.stopping = False
        self._open = False
        self._opened_at = 0.0
        self._last_events = 0.0
        self._leaving: Leaving | None = None

    @property
    def deadline(self) -> float | None:
        """When to give up waiting for the next frame; None while no limit applies."""
        if not self._open or self._leaving is not None:
            return None
        return min(self._last_events + self.stale_after, self._opened_at + self.max_age)

    def opened(self, now: float) -> Leaving | None:
        """A connection was established at ``now``. Leaves it at once if a stop came first."""
        self._open = True
        self._opened_at = self._last_events = now
        self._leaving = None
        return self._leave("stopping", Cause.STOP) if self.stopping else None

    def frame(self, now: float, *, had_events: bool, server_shutdown: bool = False) -> Leaving | None:
        """A frame was read at ``now``."""
        if had_events:
            self._last_events = now
            self.backoff.reset()
        return self._leave("serverShutdown received", Cause.SERVER_SHUTDOWN) if server_shutdown else None

    def timed_out(self, now: float) -> Leaving | None:
        """The receive deadline passed; None if ``now`` is not past it after all."""
        if not self._open or self._leaving is not None:
            return None
        if now >= self._opened_at + self.max_age:
            return self._leave(f"connection is {self.max_age:g} s old", Cause.MAX_AGE)
        if now >= self._last_events + self.stale_after:
            return self._leave(f"no data for {self.stale_after:g} s (stale stream)", Cause.STALE)
        return None

    def stop_requested(self) -> Leaving | None:
        """The producer is stopping: leave the open connection (if any), never reconnect."""
        self.stopping = True
        return self._leave("stopping", Cause.STOP) if self._open else None

    def closed(self, why: str) -> Leaving:
        """The connection is closed; ``why`` (the close code and reason) is used only when
        nothing had been decided before, i.e. when the other side closed it."""
        leaving = self._leaving or Leaving(f"connection closed: {why}", Cause.CLOSED)
        self._open = False
        self._leaving = None
        return leaving

    def failed(self, why: str, status: int | None = None) -> Leaving:
        """Connecting failed: ``why`` describes the error (already redacted), ``status`` is
        the HTTP status of a refused handshake."""
        if status is None or not 400 <= status < 500:
            return Leaving(why, Cause.UNREACHABLE)
        if status in RATE_LIMITED:
            return Leaving(
                f"the exchange refused the connection: HTTP {status} ({RATE_LIMITED[status]})", Cause.REFUSED
            )
        why = f"the exchange refused the connection: {_status_line(status)}"
        return Leaving(f"{why}; check BINANCE_WEBSOCKET_URL / BINANCE_SYMBOLS", Cause.REFUSED)

    def reconnect_delay(self, leaving: Leaving) -> float | None:
        """Seconds to wait before connecting again after ``leaving``; None: do not."""
        if self.stopping:
            return None
        if leaving.immediate:
            return 0.0
        if leaving.cause is Cause.REFUSED:
            return self.reconnect_cap
        return self.backoff.next_delay()

    def _leave(self, why: str, cause: Cause) -> Leaving | None:
        if self._leaving is not None:
            return None
        self._leaving = Leaving(why, cause)
        return self._leaving


def _status_line(status: int) -> str:
    """``HTTP 400 Bad Request``: the standard phrase, since the server's own text may quote
    the requested path (and with it whatever secret the URL carries)."""
    try:
        return f"HTTP {status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return f"HTTP {status}"
