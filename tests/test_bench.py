"""`make bench`: the verdict logic alone, and a smoke run of `python -m bench --quick` end to end."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench import report
from bench.report import FAIL, NOT_MEASURED, PASS, Target, judge, verdicts

REPO = Path(__file__).resolve().parent.parent


def test_a_ratio_target_passes_at_its_factor_and_fails_below() -> None:
    target = Target("sink >= 1.5x stock", "ours", True, 1.5, "stock")
    at = judge(target, {"ours": 150.0, "stock": 100.0})
    below = judge(target, {"ours": 149.0, "stock": 100.0})
    assert (at.verdict, at.ratio, at.threshold) == (PASS, 1.5, 150.0)
    assert (below.verdict, below.ratio) == (FAIL, 1.49)


def test_a_limit_target_compares_with_reference_plus_offset() -> None:
    target = Target("p99 <= timeout + 1 s", "p99", False, 1.0, "timeout", 1.0)
    assert judge(target, {"p99": 3.0, "timeout": 2.0}).verdict == PASS
    assert judge(target, {"p99": 3.1, "timeout": 2.0}).verdict == FAIL
    assert judge(Target("rss", "rss", False, offset=150), {"rss": 151.0}).verdict == FAIL


@pytest.mark.parametrize(
    "results",
    [{}, {"ours": 500.0}, {"stock": 100.0}, {"ours": math.nan, "stock": 1.0}, {"ours": 5.0, "stock": 0.0},
     {"ours": NOT_MEASURED, "stock": 1.0}, {"ours": 5.0, "stock": None}],
)  # fmt: skip
def test_a_missing_figure_is_never_a_pass(results: dict[str, object]) -> None:
    verdict = judge(Target("sink >= 1.5x stock", "ours", True, 1.5, "stock"), results)
    assert verdict.verdict == NOT_MEASURED
    assert not report.failed([verdict])


def test_nothing_measured_means_no_pass_at_all() -> None:
    assert {v.verdict for v in verdicts({})} == {NOT_MEASURED}


#: What the smoke run leaves out by design: the Quix floor contenders (each a process
#: importing Quix); everything else it must measure.
NOT_IN_THE_SMOKE_RUN = {"quix_floor_events_per_s", "quix_floor_bytes_cpu_us_per_event"}
#: About a minute on a quiet 2-core machine; up to three times that beside the fault cases
#: that start with it (seen: over 170 s once in CI).
SMOKE_RUN_TIMEOUT = 300


@pytest.mark.long
@pytest.mark.timeout(SMOKE_RUN_TIMEOUT + 30)
def test_quick_run_writes_every_key_and_the_three_files(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SMOKE_RUN_TIMEOUT,
    )
    assert done.returncode in (0, 1), done.stdout + done.stderr  # 1: a target FAILed, which a smoke run may
    results = json.loads((tmp_path / "results.json").read_text())
    for key in report.ALL_KEYS:
        measured = isinstance(results[key], float)
        assert measured or (key in NOT_IN_THE_SMOKE_RUN and results[key] == NOT_MEASURED), (
            key,
            results[key],
            done.stdout + done.stderr,
        )
    assert results["informational"]["s3_sink_exactly_once"] == 1.0
    assert set(results["targets"]) == {t.name for t in report.TARGETS}
    assert all(t["verdict"] in (PASS, FAIL, NOT_MEASURED) for t in results["targets"].values())
    table = (tmp_path / "results.md").read_text()
    assert all(t.name in table for t in report.TARGETS)
    assert (tmp_path / "results.png").read_bytes().startswith(b"\x89PNG")
