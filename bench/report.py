"""Verdicts and the three result files of `make bench`: results.json, results.md, results.png.

Verdicts come from ratios only: a figure against its contender measured in the same run,
or against a configured limit (latency, memory). An absolute rate never fails a run (the
machines are shared and noisy), and a figure that was not measured is "not measured",
never PASS. :func:`verdicts` and :func:`markdown` are pure.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

NOT_MEASURED = "not measured"
PASS, FAIL = "PASS", "FAIL"

#: Every key results.json holds, by the measurement that produces it.
KEYS: dict[str, tuple[str, ...]] = {
    "s3": (
        "s3_sink_events_per_s",
        "s3_sink_cpu_us_per_event",
        "stock_s3filesink_events_per_s",
        "quix_floor_events_per_s",
        "quix_floor_bytes_cpu_us_per_event",
    ),
    "producer": ("producer_events_per_s", "raw_produce_events_per_s", "producer_cpu_us_per_event"),
    "dynamo": (
        "dynamo_sink_events_per_s",
        "dynamo_baseline_events_per_s",
        "dynamo_requests_per_1000_events",
        "dynamo_sink_cpu_us_per_event",
        "dynamo_boto3_loop_cpu_us_per_event",
        "dynamo_wire_floor_cpu_us_per_event",
    ),
    "latency": (
        "s3_latency_p50_s",
        "s3_latency_p99_s",
        "dynamo_latency_p99_s",
        "dynamo_latency_p99_at_500_s",
        "max_batch_timeout_s",
    ),
    "memory": ("producer_rss_mb", "s3_sink_rss_mb", "dynamo_sink_rss_mb"),
}
ALL_KEYS = tuple(key for keys in KEYS.values() for key in keys)
RSS_LIMIT_MB = 150.0


@dataclass(frozen=True)
class Target:
    """``key`` at least (or at most) ``factor`` x ``reference`` + ``offset``; with no
    reference, against ``offset`` alone (a configured limit)."""

    name: str
    key: str
    at_least: bool
    factor: float = 1.0
    reference: str | None = None
    offset: float = 0.0
    contender: str = ""  # what the reference is, for the chart


TARGETS: tuple[Target, ...] = (
    Target("S3 sink CPU/event <= 1.5x Quix floor (bytes)", "s3_sink_cpu_us_per_event", False, 1.5,
           "quix_floor_bytes_cpu_us_per_event", contender="Quix floor (bytes)"),
    Target("S3 sink >= 0.8x Quix floor (json)", "s3_sink_events_per_s", True, 0.8, "quix_floor_events_per_s",
           contender="Quix floor (json)"),
    Target("S3 objects hold every event exactly once", "s3_sink_exactly_once", True, offset=1.0),
    Target("DynamoDB sink >= 0.8x BatchWriteItem loop", "dynamo_sink_events_per_s", True, 0.8,
           "dynamo_baseline_events_per_s", contender="BatchWriteItem loop"),
    Target("DynamoDB sink CPU/event <= 1.25x wire floor", "dynamo_sink_cpu_us_per_event", False, 1.25,
           "dynamo_wire_floor_cpu_us_per_event", contender="orjson + SigV4 + urllib3"),
    Target("DynamoDB requests <= 40 per 1000 events", "dynamo_requests_per_1000_events", False, offset=40.0),
    Target("producer >= 0.5x raw produce", "producer_events_per_s", True, 0.5, "raw_produce_events_per_s",
           contender="raw confluent-kafka"),
    Target("S3 latency p99 <= MAX_BATCH_TIMEOUT + 1 s", "s3_latency_p99_s", False, 1.0, "max_batch_timeout_s", 1.0),
    Target("DynamoDB latency p99 at 500 events/s <= DYNAMO_MAX_BATCH_TIMEOUT + 1 s", "dynamo_latency_p99_at_500_s",
           False, 1.0, "dynamo_max_batch_timeout_s", 1.0),
    Target("producer peak RSS <= 150 MB", "producer_rss_mb", False, offset=RSS_LIMIT_MB),
    Target("S3 sink peak RSS <= 150 MB", "s3_sink_rss_mb", False, offset=RSS_LIMIT_MB),
    Target("DynamoDB sink peak RSS <= 150 MB", "dynamo_sink_rss_mb", False, offset=RSS_LIMIT_MB),
)  # fmt: skip


def figure(results: dict[str, object], key: str | None) -> float | None:
    """``results[key]`` as a number, or None when it is missing, not a number, or NaN."""
    if key is None:
        return None
    value = results.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Verdict:
    target: Target
    verdict: str  # PASS, FAIL or NOT_MEASURED
    value: float | None
    threshold: float | None
    ratio: float | None  # value / reference, for targets against a contender


def judge(target: Target, results: dict[str, object]) -> Verdict:
    value = figure(results, target.key)
    reference = figure(results, target.reference) if target.reference else 0.0
    if value is None or reference is None or (target.reference and target.factor and reference <= 0):
        return Verdict(target, NOT_MEASURED, value, None, None)
    threshold = target.factor * reference + target.offset if target.reference else target.offset
    passed = value >= threshold if target.at_least else value <= threshold
    ratio = value / reference if target.reference and not target.offset else None
    return Verdict(target, PASS if passed else FAIL, value, threshold, ratio)


def verdicts(results: dict[str, object], targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    return [judge(target, results) for target in targets]


def failed(judged: list[Verdict]) -> bool:
    return any(v.verdict == FAIL for v in judged)


def _number(value: float | None) -> str:
    if value is None:
        return NOT_MEASURED
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def as_json(results: dict[str, object], judged: list[Verdict], meta: dict[str, object]) -> dict[str, object]:
    """Every expected key (a number or "not measured"), the extra figures, and the verdicts."""
    out: dict[str, object] = {**meta}
    for key in ALL_KEYS:
        out[key] = figure(results, key) if figure(results, key) is not None else NOT_MEASURED
    out["informational"] = {
        k: (figure(results, k) if figure(results, k) is not None else NOT_MEASURED)
        for k in sorted(results)
        if k not in ALL_KEYS
    }
    out["targets"] = {
        v.target.name: {
            "verdict": v.verdict,
            "key": v.target.key,
            "value": v.value if v.value is not None else NOT_MEASURED,
            "threshold": v.threshold if v.threshold is not None else NOT_MEASURED,
            **({"ratio": v.ratio} if v.ratio is not None else {}),
        }
        for v in judged
    }
    return out


def markdown(judged: list[Verdict]) -> str:
    """The targets table: measured figure, what it had to reach, same-run ratio, verdict."""
    lines = ["| target | measured | threshold | ratio | verdict |", "|---|---|---|---|---|"]
    for v in judged:
        ratio = f"{v.ratio:.2f}x" if v.ratio is not None else ""
        lines.append(f"| {v.target.name} | {_number(v.value)} | {_number(v.threshold)} | {ratio} | {v.verdict} |")
    return "\n".join(lines) + "\n"


#: Informational figures worth a line in results.md (results.json has every one).
EXPLAINED = {
    "quix_floor_bytes_events_per_s": "Quix floor with the bytes deserializer, events/s",
    "s3_sink_cpu_us_per_event": "crypto-live s3-sink, CPU µs per event",
    "stock_s3filesink_cpu_us_per_event": "S3FileSink, CPU µs per event",
    "quix_floor_cpu_us_per_event": "Quix floor (json), CPU µs per event",
    "quix_floor_bytes_cpu_us_per_event": "Quix floor (bytes), CPU µs per event",
    "s3_sink_bench_rss_mb": "s3-sink peak RSS draining the 200,000-event backlog, MB",
    "dynamo_sink_cpu_us_per_event": "dynamo-sink, CPU µs per event (botocore included)",
    "dynamo_sink_backlog_at_close_events": "dynamo-sink backlog at 2,000 events/s when the window closed, events",
    "s3_latency_p99_at_500_s": "S3 latency p99 at 500 events/s, s",
    "dynamo_latency_p99_at_500_s": "DynamoDB latency p99 at 500 events/s (a rate moto keeps up with), s",
    "dynamo_sink_backlog_at_close_at_500_events": "dynamo-sink backlog at 500 events/s when the window closed, events",
}


def figures_markdown(results: dict[str, object]) -> str:
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| `{key}` | {_number(figure(results, key))} |" for key in ALL_KEYS]
    lines += ["", "| informational | value |", "|---|---|"]
    lines += [f"| {text} (`{key}`) | {_number(figure(results, key))} |" for key, text in EXPLAINED.items()]
    return "\n".join(lines) + "\n"


def chart(judged: list[Verdict], path: Path) -> None:
    """Bars: each throughput against its contender (ratio), with the ratio it must reach."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [v for v in judged if v.target.contender]
    labels = [f"{v.target.key.removesuffix('_events_per_s')}\nvs {v.target.contender}" for v in rows]
    ratios = [v.ratio if v.ratio is not None else 0.0 for v in rows]
    colours = {PASS: "tab:green", FAIL: "tab:red", NOT_MEASURED: "lightgrey"}
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars = ax.bar(range(len(rows)), ratios, color=[colours[v.verdict] for v in rows])
    for index, v in enumerate(rows):
        ax.hlines(v.target.factor, index - 0.4, index + 0.4, colors="black", linestyles="dashed")
        text = f"{v.ratio:.2f}x" if v.ratio is not None else NOT_MEASURED
        ax.annotate(text, (bars[index].get_x() + bars[index].get_width() / 2, ratios[index]), ha="center", va="bottom")
    ax.axhline(1.0, color="grey", linewidth=0.5)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel("events/s ratio, same run (dashed: target)")
    ax.set_title("make bench: throughput against each contender")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(out: Path, results: dict[str, object], meta: dict[str, object]) -> list[Verdict]:
    """results.json, results.md and results.png into ``out``; the verdicts."""
    judged = verdicts(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(as_json(results, judged, meta), indent=2) + "\n")
    (out / "results.md").write_text(
        "# make bench results\n\n" + markdown(judged) + "\n" + figures_markdown(results) + "\n![chart](results.png)\n"
    )
    chart(judged, out / "results.png")
    return judged
