"""A local Binance spot market-stream simulator (miniTicker only).

Pure core: ``market`` (seeded random walk -> miniTicker events), ``protocol``
(paths, control messages, limits, frames) and ``faults`` (fault schedules).
Imperative shell: ``server`` (websockets server, thread wrapper, CLI entry).
"""

from .faults import JUNK_FRAMES, Fault, FaultSchedule
from .protocol import ALL_MARKET_STREAM, MAX_MESSAGES_PER_SECOND, MAX_STREAMS, stream_name
from .server import SimulatorOptions, SimulatorServer, SimulatorThread, run, serve_forever

__all__ = [
    "ALL_MARKET_STREAM",
    "JUNK_FRAMES",
    "MAX_MESSAGES_PER_SECOND",
    "MAX_STREAMS",
    "Fault",
    "FaultSchedule",
    "SimulatorOptions",
    "SimulatorServer",
    "SimulatorThread",
    "run",
    "serve_forever",
    "stream_name",
]
