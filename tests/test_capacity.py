"""The capacity rule: each service holds the whole market, 2,000 events/s, at <= 70 % of its
default Fargate task, computed from `make bench`'s CPU per event (bench/results.json).

Speed is measured only by `make bench`; this test reads the figures the last run recorded and
holds the template's defaults to them, so a slower service or a smaller default fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cfn_template import load_template

ROOT = Path(__file__).resolve().parent.parent
MARKET_EVENTS_PER_S = 2_000
MAX_SHARE = 0.70

#: Each service's CPU-per-event figure in results.json, and the parameter sizing its task.
SIZED = {
    "producer": ("producer_cpu_us_per_event", "ProducerTaskSize"),
    "s3-sink": ("s3_sink_cpu_us_per_event", "S3SinkTaskSize"),
    "dynamo-sink": ("dynamo_sink_cpu_us_per_event", "DynamoSinkTaskSize"),
}


def vcpu_needed(cpu_us_per_event: float, events_per_s: float = MARKET_EVENTS_PER_S) -> float:
    return cpu_us_per_event * 1e-6 * events_per_s


@pytest.mark.parametrize("service", sorted(SIZED))
def test_each_default_task_holds_the_whole_market_at_70_percent_of_its_cpu(service):
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    assert results["quick"] is False, "bench/results.json must come from a full make bench"
    key, parameter = SIZED[service]
    cpu_us = results[key]
    assert isinstance(cpu_us, float) and cpu_us > 0, (key, cpu_us)
    default = load_template()["Parameters"][parameter]["Default"]
    vcpu = int(default.split("/")[0]) / 1024
    share = vcpu_needed(cpu_us) / vcpu
    assert share <= MAX_SHARE, f"{service}: {cpu_us:.1f} us/event x 2,000/s = {share:.0%} of {default}"


def test_the_rule_would_refuse_the_old_dynamodb_default():
    results = json.loads((ROOT / "bench" / "results.json").read_text())
    assert vcpu_needed(results["dynamo_sink_cpu_us_per_event"]) / 0.25 > MAX_SHARE  # 256 CPU units
