"""Figures the fault suite records for RELIABILITY.md: one JSON line per case and store.

Each fault test calls :func:`record` with what it measured (trials, events, lost,
doubled, recovery time, memory). The lines go to ``FIGURES_PATH`` (every pytest-xdist
worker appends to the same file), and the run ends with them as a table in the terminal
summary, which is where RELIABILITY.md's figures are copied from.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson

FIGURES_PATH = Path(os.environ.get("CRYPTO_LIVE_FIGURES", ".crypto-live/fault-figures.jsonl"))
COLUMNS = ("case", "store", "trials", "events", "lost", "doubled", "recovery_s", "peak_rss_mb", "detail")


def record(case: str, **figures: Any) -> None:
    """Append one case's figures (numbers rounded to 0.1)."""
    row = {"case": case, **{k: round(v, 1) if isinstance(v, float) else v for k, v in figures.items()}}
    FIGURES_PATH.parent.mkdir(parents=True, exist_ok=True)
    with FIGURES_PATH.open("ab") as out:  # one short append per line: workers never interleave
        out.write(orjson.dumps(row) + b"\n")


def record_verdict(case: str, verdict: Any, *, store: str | None = None, **figures: Any) -> None:
    """Record a :class:`tests.pipeline.Verdict` (events, lost, doubled) with the case's other
    figures; ``store`` names the store when the verdict's own name is not the one to show."""
    record(
        case,
        store=store or verdict.store,
        events=verdict.events,
        lost=verdict.lost,
        doubled=verdict.doubled,
        **figures,
    )


def reset() -> None:
    FIGURES_PATH.unlink(missing_ok=True)


def table() -> list[str]:
    """The recorded figures as a Markdown table, one row per record, sorted by case."""
    if not FIGURES_PATH.exists():
        return []
    rows = sorted((orjson.loads(line) for line in FIGURES_PATH.read_bytes().splitlines()), key=lambda r: r["case"])
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row.get(column, "")) for column in COLUMNS) + " |" for row in rows]
    return lines
