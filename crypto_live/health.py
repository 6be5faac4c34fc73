"""Liveness that means "the processing loop is working", not "the process exists".

Each service's processing loop calls :meth:`Heartbeat.beat` on every turn; the beat
refreshes the modification time of one file,
``$CRYPTO_LIVE_HEARTBEAT_DIR/crypto-live-<service>.heartbeat``, at most once a second
whatever the call rate. ``crypto-live healthcheck SERVICE`` (:func:`healthcheck_command`,
for a container's health check) exits 0 when that file is fresher than
HEALTHCHECK_MAX_AGE and 1, naming the file and its age, when it is older or missing.

Where the beats come from, so that a stuck loop stops them and no legitimate pause does:

* producer: the asyncio task serving Kafka's delivery reports, every 50 ms. A blocked
  event loop stops it; reconnect backoff (readers sleeping) does not.
* sinks: librdkafka's statistics callback, which ``consumer.poll()`` serves every half
  second on the Quix poll loop, also while idle or paused for backpressure (up to 30 s);
  and each completed S3 or DynamoDB request within a long flush, so a flush never goes
  longer than one request (about 40 s at most, with the sinks' client timeouts) between
  beats. See :mod:`processors.telemetry`.

The file is created when the loop starts and removed when the service stops: a stopped
service is not healthy. Only the modification time matters (``os.utime``, atomic).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from crypto_live.errors import SetupError, UnhealthyError
from crypto_live.settings import MonitoringSettings, load

log = logging.getLogger(__name__)

#: Seconds between two writes of the heartbeat file, however often the loop beats.
BEAT_INTERVAL = 1.0
#: Seconds between two warnings about a heartbeat that cannot be written.
WARN_INTERVAL = 60.0


def heartbeat_path(directory: str | Path, service: str) -> Path:
    return Path(directory) / f"crypto-live-{service}.heartbeat"


def staleness(now: float, mtime: float | None, max_age: float) -> str | None:
    """Why a heartbeat written at ``mtime`` (None: never) is not fresh at ``now``, or None when it is.

    A heartbeat from the future (the clock was set back) counts as fresh.
    """
    if mtime is None:
        return "missing: the service is not running, or its loop has not started yet"
    age = now - mtime
    if age > max_age:
        return f"{age:.1f} s old, over HEALTHCHECK_MAX_AGE={max_age:g} s: its processing loop is stuck"
    return None


def check(service: str, path: Path, max_age: float, *, now: float | None = None) -> float:
    """The age of ``service``'s heartbeat at ``path``; raise UnhealthyError when it is stale or missing."""
    try:
        mtime: float | None = path.stat().st_mtime
    except FileNotFoundError:
        mtime = None
    now = time.time() if now is None else now
    problem = staleness(now, mtime, max_age)
    if problem is not None or mtime is None:
        raise UnhealthyError(f"{service} heartbeat {path} is {problem}")
    return max(0.0, now - mtime)


def healthcheck_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    """`crypto-live healthcheck SERVICE`: 0 when its heartbeat is fresh (raises UnhealthyError otherwise)."""
    settings = load(MonitoringSettings, environ)
    path = heartbeat_path(settings.heartbeat_dir, args.service)
    age = check(args.service, path, settings.max_age)
    print(f"{args.service} is healthy: heartbeat {path} is {age:.1f} s old")
    return 0


class Heartbeat:
    """The heartbeat file of one service; :meth:`beat` from its processing loop.

    Use as a context manager around the loop: entering creates the file (a SetupError
    naming CRYPTO_LIVE_HEARTBEAT_DIR when it cannot), leaving removes it.
    """

    def __init__(self, path: Path, *, interval: float = BEAT_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self._interval = interval
        self._clock = clock
        self._last = float("-inf")
        self._last_warning = float("-inf")

    @classmethod
    def for_service(cls, service: str, monitoring: MonitoringSettings) -> Heartbeat:
        return cls(heartbeat_path(monitoring.heartbeat_dir, service))

    def start(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
        except OSError as exc:
            raise SetupError(
                f"cannot write the heartbeat file {self.path} ({exc.strerror or exc}): "
                "set CRYPTO_LIVE_HEARTBEAT_DIR to a writable directory"
            ) from None
        self._last = self._clock()

    def beat(self) -> None:
        """Refresh the file unless it was refreshed less than a second ago; never raises."""
        now = self._clock()
        if now - self._last < self._interval:
            return
        self._last = now
        try:
            try:
                os.utime(self.path)
            except FileNotFoundError:  # removed behind our back (a temp-directory cleaner)
                self.path.touch()
        except OSError as exc:
            if now - self._last_warning >= WARN_INTERVAL:
                self._last_warning = now
                log.warning("cannot refresh the heartbeat file %s: %s", self.path, exc)

    def stop(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the heartbeat file %s: %s", self.path, exc)

    def __enter__(self) -> Heartbeat:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
