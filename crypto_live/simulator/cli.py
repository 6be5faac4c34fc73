"""`crypto-live simulate`: turn command-line options into SimulatorOptions and serve."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from crypto_live.errors import SettingsError

from .faults import FaultSchedule
from .server import SimulatorOptions, run


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    """Validate the options; a bad one is a SettingsError naming the flag."""
    if not 0 <= args.port <= 65535:
        raise SettingsError("--port", str(args.port), "a port from 0 to 65535")
    if args.symbols < 1:
        raise SettingsError("--symbols", str(args.symbols), "a whole number >= 1")
    interval = args.interval
    if args.rate is not None:
        if not args.rate > 0:
            raise SettingsError("--rate", str(args.rate), "a positive number of events per second")
        interval = args.symbols / args.rate
    if not interval > 0:
        raise SettingsError("--interval", str(args.interval), "a positive number of seconds")
    try:
        faults = FaultSchedule.parse(args.faults)
    except ValueError as exc:
        raise SettingsError("--faults", args.faults, str(exc)) from None
    return SimulatorOptions(
        host=args.host, port=args.port, symbols=args.symbols, interval=interval, seed=args.seed, faults=faults
    )


def simulate_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return run(options_from_args(args))
