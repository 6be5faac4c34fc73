"""Metrics: EMF records built right (checked against the specification), the interval
arithmetic, the consumer lag read from librdkafka's statistics, and running sinks and
the producer writing records whose values add up to what they did."""

from __future__ import annotations

import signal
import time

import boto3
import pytest

from crypto_live.metrics import (
    PER_SECOND,
    Metric,
    MetricsReporter,
    Sample,
    consumer_lag,
    emf_record,
    interval_metrics,
)
from crypto_live.settings import KafkaSettings, load
from crypto_live.simulator import SimulatorOptions, SimulatorThread
from tests.factories import publish, ticker
from tests.helpers import cli_env, read_topic, wait_for
from tests.json_logs import JsonLogProcess, assert_emf, json_records, metrics_of

REGION = "ap-southeast-1"


# --------------------------------------------------------------------------- pure parts


def test_emf_record_follows_the_specification():
    metrics = [Metric("EventsPerSecond", 12.5, PER_SECOND), Metric("RowsWritten", 120), Metric("ConsumerLag", 0)]
    record = emf_record("s3-sink", metrics, 1_700_000_000_000)
    assert record["_aws"]["CloudWatchMetrics"] == [
        {
            "Namespace": "crypto-live",
            "Dimensions": [["Service"]],
            "Metrics": [
                {"Name": "EventsPerSecond", "Unit": "Count/Second"},
                {"Name": "RowsWritten", "Unit": "Count"},
                {"Name": "ConsumerLag", "Unit": "Count"},
            ],
        }
    ]
    assert record["Service"] == "s3-sink"
    assert {k: record[k] for k in ("EventsPerSecond", "RowsWritten", "ConsumerLag")} == {
        "EventsPerSecond": 12.5,
        "RowsWritten": 120,
        "ConsumerLag": 0,
    }


def test_the_emf_check_catches_what_cloudwatch_would_reject():
    good = emf_record("producer", [Metric("Reconnects", 1)], 0)
    good["_aws"]["Timestamp"] = int(time.time() * 1000)
    assert_emf(good)
    broken = [
        {**good, "Reconnects": "1"},  # a metric value that is not a number
        {k: v for k, v in good.items() if k != "Service"},  # a dimension without its value
        {**good, "_aws": {"CloudWatchMetrics": good["_aws"]["CloudWatchMetrics"]}},  # no Timestamp
    ]
    for record in broken:
        with pytest.raises(Exception):  # noqa: B017 - schema or assertion, either is a rejection
            assert_emf(record)


def test_emf_record_refuses_repeated_names_and_values_that_are_not_finite():
    with pytest.raises(ValueError, match="repeat"):
        emf_record("producer", [Metric("Reconnects", 1), Metric("Reconnects", 2)], 0)
    with pytest.raises(ValueError, match="finite"):
        emf_record("producer", [Metric("EventsPerSecond", float("nan"))], 0)


def test_interval_metrics_are_a_rate_deltas_and_current_gauges():
    before = Sample(100, {"RowsWritten": 50, "DeadLetters": 1}, {"ConsumerLag": 7})
    after = Sample(400, {"RowsWritten": 350, "DeadLetters": 1}, {"ConsumerLag": 3})
    assert interval_metrics(before, after, 10.0) == [
        Metric("EventsPerSecond", 30.0, PER_SECOND),
        Metric("RowsWritten", 300),
        Metric("DeadLetters", 0),
        Metric("ConsumerLag", 3),
    ]


def test_an_unknown_gauge_is_left_out_and_no_time_is_no_rate():
    names = [m.name for m in interval_metrics(Sample(0), Sample(5, {}, {"ConsumerLag": None}), 0.0)]
    assert names == ["EventsPerSecond"]
    assert interval_metrics(Sample(0), Sample(5), 0.0)[0].value == 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reporter_writes_once_per_interval_and_the_last_partial_one_on_close():
    clock, totals, written = Clock(), {"events": 0}, []
    reporter = MetricsReporter(
        "producer",
        10.0,
        lambda: Sample(totals["events"], {"EventsPublished": totals["events"]}),
        clock=clock,
        wall_clock=lambda: 1_700_000_000.0,
        emit=lambda record, text: written.append((record, text)),
    )
    for step in range(1, 26):  # 25 s, a tick per second, 10 events a second
        clock.now, totals["events"] = float(step), step * 10
        reporter.tick()
    assert len(written) == 2
    reporter.close()
    assert [record["EventsPublished"] for record, _ in written] == [100, 100, 50]
    assert [record["EventsPerSecond"] for record, _ in written] == [10.0, 10.0, 10.0]
    assert written[0][1] == "EventsPerSecond=10 EventsPublished=100"
    assert written[0][0]["_aws"]["Timestamp"] == 1_700_000_000_000


def partition(**fields):
    return {"desired": True, "hi_offset": -1, "lo_offset": -1, "committed_offset": -1001, **fields}


def test_consumer_lag_sums_assigned_partitions_from_librdkafka_statistics():
    stats = {
        "topics": {
            "ticks": {
                "partitions": {
                    "0": partition(hi_offset=500, lo_offset=0, committed_offset=480),  # 20 not committed
                    "1": partition(hi_offset=30, lo_offset=10),  # nothing committed yet: 20 retained
                    "2": partition(hi_offset=90, committed_offset=10, desired=False),  # not ours (revoked)
                    "3": partition(),  # no watermark known yet
                    "-1": partition(hi_offset=1000, lo_offset=0, desired=False),  # librdkafka's internal one
                }
            },
            "other": {"partitions": {"0": partition(hi_offset=9, lo_offset=0)}},
        }
    }
    assert consumer_lag(stats, "ticks") == 40
    assert consumer_lag(stats, "missing") is None
    assert consumer_lag({"topics": {"ticks": {"partitions": {"3": partition()}}}}, "ticks") is None


# --------------------------------------------------------------------------- running services


def sink_env(kafka_env: dict, aws_env: dict, unique: str, **extra: str) -> dict[str, str]:
    return cli_env(
        kafka_env,
        aws_env,
        {
            "LOG_FORMAT": "json",
            "LOG_LEVEL": "DEBUG",
            "METRICS_INTERVAL": "1",
            "MAX_BATCH_TIMEOUT": "1",
            # Any value does for the emulator; a distinctive one shows whether it leaks into a log.
            "AWS_SECRET_ACCESS_KEY": f"aws-secret-{unique}-Qx81",
            **extra,
        },
    )


def last_metrics_after(process: JsonLogProcess, condition) -> bool:
    metrics = metrics_of(process.records())
    return bool(metrics) and condition(metrics)


EVENTS, POISON = 150, [b"}{ not json", b"\xff"]


@pytest.mark.parametrize("stage", ["s3-sink", "dynamo-sink"])
def test_a_running_sink_writes_json_logs_and_metrics_that_add_up(kafka_env, aws_env, unique, stage):
    env = sink_env(kafka_env, aws_env, unique)
    if stage == "s3-sink":
        env["S3_BUCKET"] = bucket = f"metrics-{unique}"
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
    else:
        env.update({"DYNAMO_TABLE_NAME": f"metrics-{unique}", "DYNAMO_CREATE_TABLE": "true"})
    publish(load(KafkaSettings, env), [ticker(n) for n in range(EVENTS)] + POISON)

    sink = JsonLogProcess([stage], env)
    try:
        # Every row written, every message committed: a record says the lag is down to 0.
        wait_for(
            lambda: (
                not sink.alive
                or last_metrics_after(
                    sink,
                    lambda m: sum(r["RowsWritten"] for r in m) == EVENTS and m[-1].get("ConsumerLag") == 0,
                )
            ),
            60,
            0.2,
            "metrics showing every row written and no lag",
        )
        assert sink.stop(signal.SIGTERM) == 0, sink.output()[-3000:]
    finally:
        sink.kill()

    records = json_records(sink.output(), secrets=[env["AWS_SECRET_ACCESS_KEY"]])
    assert {record["service"] for record in records} == {stage}
    assert any(record["level"] == "DEBUG" for record in records)  # DEBUG lines are JSON too
    metrics = metrics_of(records)
    assert {record["Service"] for record in records if "_aws" in record} == {stage}
    expected = {"EventsPerSecond", "RowsWritten", "DeadLetters"} | ({"ObjectsWritten"} if stage == "s3-sink" else set())
    assert all(expected <= set(m) for m in metrics)
    assert sum(m["RowsWritten"] for m in metrics) == EVENTS
    assert sum(m["DeadLetters"] for m in metrics) == len(POISON)
    assert max(m["EventsPerSecond"] for m in metrics) > 0
    assert all(m["EventsPerSecond"] >= 0 and m.get("ConsumerLag", 0) >= 0 for m in metrics)
    assert max(m.get("ConsumerLag", 0) for m in metrics) <= EVENTS + len(POISON)
    if stage == "s3-sink":
        objects = boto3.client("s3", region_name=REGION).list_objects_v2(Bucket=bucket)["KeyCount"]
        assert sum(m["ObjectsWritten"] for m in metrics) == objects >= 1


def test_the_producer_writes_metrics_that_add_up(broker, kafka_env, unique):
    with SimulatorThread(SimulatorOptions(symbols=10, interval=0.05)) as sim:
        env = cli_env(
            kafka_env,
            {"BINANCE_WEBSOCKET_URL": sim.url(), "LOG_FORMAT": "json", "METRICS_INTERVAL": "0.5"},
        )
        producer = JsonLogProcess(["producer"], env)
        try:
            wait_for(
                lambda: (
                    not producer.alive
                    or last_metrics_after(producer, lambda m: sum(r["EventsPublished"] for r in m) >= 200)
                ),
                60,
                0.2,
                "metrics showing events published",
            )
            sim.send_junk()
            wait_for(
                lambda: last_metrics_after(producer, lambda m: sum(r["DeadLetters"] for r in m) >= 1),
                30,
                0.2,
                "a dead letter counted",
            )
            sim.drop_connections()
            wait_for(
                lambda: last_metrics_after(producer, lambda m: sum(r["Reconnects"] for r in m) >= 1),
                30,
                0.2,
                "a reconnect counted",
            )
            assert producer.stop(signal.SIGTERM) == 0, producer.output()[-3000:]
        finally:
            producer.kill()

    metrics = metrics_of(json_records(producer.output()))
    assert all({"EventsPerSecond", "EventsPublished", "DeadLetters", "Reconnects"} <= set(m) for m in metrics)
    published = len(read_topic(broker, kafka_env["KAFKA_TOPIC"]))
    assert sum(m["EventsPublished"] for m in metrics) == published
    dead_letters = len(read_topic(broker, f"{kafka_env['KAFKA_TOPIC']}.dlq"))
    assert sum(m["DeadLetters"] for m in metrics) == dead_letters >= 1
    assert max(m["EventsPerSecond"] for m in metrics) > 0
