"""A local Binance spot market-stream simulator (miniTicker only).

Pure core: ``market`` (seeded random walk -> miniTicker events), ``protocol``
(paths, control messages, limits, frames) and ``faults`` (fault schedules).
Imperative shell: ``server`` (websockets server, thread wrapper, CLI entry).
Binance's stream names and limits come from :mod:`crypto_live.binance`, the one copy
the producer reads too; they are re-exported here for the simulator's users.
"""

from crypto_live.binance import ALL_MARKET_STREAM, MAX_MESSAGES_PER_SECOND, MAX_STREAMS_PER_CONNECTION, stream_name

from .faults import JUNK_FRAMES, Fault, FaultSchedule
from .server import SimulatorOptions, SimulatorServer, SimulatorThread, run, serve_forever

__all__ = [
    "ALL_MARKET_STREAM",
    "JUNK_FRAMES",
    "MAX_MESSAGES_PER_SECOND",
    "MAX_STREAMS_PER_CONNECTION",
    "Fault",
    "FaultSchedule",
    "SimulatorOptions",
    "SimulatorServer",
    "SimulatorThread",
    "run",
    "serve_forever",
    "stream_name",
]
