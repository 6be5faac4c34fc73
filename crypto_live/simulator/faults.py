"""Pure fault schedule: when the simulator misbehaves, parsed from a short spec.

Grammar (whitespace around tokens is ignored; times are seconds since start,
decimals allowed)::

    spec   := "" | fault ("," fault)*
    fault  := kind "@" when ["for" seconds]
    kind   := "drop" | "shutdown" | "junk" | "stall"
    when   := seconds | "every" seconds        # every N: at N, 2N, 3N, ...

``for`` is required for ``stall`` (how long no data flows) and forbidden for
the others.  Example: ``"drop@5,shutdown@12,junk@every3,stall@20for8"``.

What each kind means is the server's business (see ``server.py``):
``drop`` closes TCP without a close frame, ``shutdown`` sends Binance's
``serverShutdown`` event then closes with 1001, ``junk`` sends ``JUNK_FRAMES``,
``stall`` keeps connections open (pings answered) but sends no market data.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

KINDS = ("drop", "shutdown", "junk", "stall")

# A frame that is not JSON at all, and one that is JSON but not a market event.
JUNK_FRAMES: tuple[str, ...] = ("}{not json", '{"junk":true,"note":"valid JSON, not an event"}')

_NUMBER = r"\d+(?:\.\d*)?|\.\d+"
_TOKEN = re.compile(rf"(?P<kind>[a-z]+)@(?P<every>every)?(?P<time>{_NUMBER})(?:for(?P<duration>{_NUMBER}))?")


@dataclass(frozen=True, slots=True)
class Fault:
    """One scheduled fault: at ``at`` seconds, or every ``at`` seconds if ``repeat``."""

    kind: str
    at: float
    repeat: bool = False
    duration: float | None = None  # stall only

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {KINDS}")
        if self.at < 0 or (self.repeat and self.at <= 0):
            raise ValueError(f"fault time must be positive for repeats, >= 0 otherwise: {self.at}")
        if (self.kind == "stall") != (self.duration is not None):
            raise ValueError("stall needs a duration ('for N'); other faults take none")
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"stall duration must be positive: {self.duration}")

    def times_between(self, since: float, until: float) -> list[float]:
        """Occurrence times t with ``since < t <= until``."""
        if not self.repeat:
            return [self.at] if since < self.at <= until else []
        first = math.floor(max(since, 0.0) / self.at) + 1
        last = math.floor(until / self.at)
        times = [k * self.at for k in range(first, last + 1)]
        return [t for t in times if since < t <= until]

    def next_after(self, after: float) -> float | None:
        """The first occurrence strictly after ``after``, or None."""
        if not self.repeat:
            return self.at if self.at > after else None
        k = math.floor(max(after, 0.0) / self.at) + 1
        while k * self.at <= after:  # float rounding guard
            k += 1
        return k * self.at

    def __str__(self) -> str:
        when = f"every{self.at:g}" if self.repeat else f"{self.at:g}"
        duration = f"for{self.duration:g}" if self.duration is not None else ""
        return f"{self.kind}@{when}{duration}"


@dataclass(frozen=True, slots=True)
class FaultSchedule:
    """An immutable set of faults; empty (and falsy) by default."""

    faults: tuple[Fault, ...] = ()

    @classmethod
    def parse(cls, spec: str | None) -> FaultSchedule:
        """Parse a spec (see module docstring); ValueError names the bad token."""
        faults = []
        for raw in (spec or "").split(","):
            token = raw.strip()
            if not token and not (spec or "").strip():
                continue
            match = _TOKEN.fullmatch(token)
            if match is None:
                raise ValueError(f"bad fault token {token!r}: expected kind@[every]N[forN]")
            duration = match["duration"]
            try:
                faults.append(
                    Fault(
                        kind=match["kind"],
                        at=float(match["time"]),
                        repeat=match["every"] is not None,
                        duration=float(duration) if duration is not None else None,
                    )
                )
            except ValueError as exc:
                raise ValueError(f"bad fault token {token!r}: {exc}") from None
        return cls(tuple(faults))

    def due(self, since: float, until: float) -> tuple[Fault, ...]:
        """Faults occurring in ``(since, until]``, in time order (spec order on ties)."""
        hits = [(t, i, f) for i, f in enumerate(self.faults) for t in f.times_between(since, until)]
        return tuple(f for _, _, f in sorted(hits, key=lambda hit: hit[:2]))

    def next_time(self, after: float) -> float | None:
        """When the next fault after ``after`` occurs, or None if none ever will."""
        times = [t for f in self.faults if (t := f.next_after(after)) is not None]
        return min(times, default=None)

    def __bool__(self) -> bool:
        return bool(self.faults)

    def __str__(self) -> str:
        return ",".join(str(f) for f in self.faults)
