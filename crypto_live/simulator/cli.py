"""`crypto-live simulate`: turn command-line options into SimulatorOptions and serve."""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping

from crypto_live.errors import SettingsError

from .faults import FaultSchedule
from .server import SimulatorOptions, run


def options_from_args(args: argparse.Namespace) -> SimulatorOptions:
    """The options the command line asks for; a bad one is a SettingsError naming its flag.

    Only what SimulatorOptions cannot see is checked here (``--rate``, which sets the
    interval, and the ``--faults`` spec); SimulatorOptions checks its own fields.
    """
    interval = args.interval
    if args.rate is not None:
        if not (math.isfinite(args.rate) and args.rate > 0):
            raise SettingsError("--rate", str(args.rate), "a positive number of events per second")
        interval = args.symbols / args.rate  # a bad --symbols is SimulatorOptions' to name: it checks it first
    try:
        faults = FaultSchedule.parse(args.faults)
    except ValueError as exc:
        raise SettingsError("--faults", args.faults, str(exc)) from None
    return SimulatorOptions(
        host=args.host, port=args.port, symbols=args.symbols, interval=interval, seed=args.seed, faults=faults
    )


def simulate_command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    return run(options_from_args(args))
