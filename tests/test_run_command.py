"""`crypto-live run --simulate` end to end: every event lands in S3 and DynamoDB exactly once."""

from __future__ import annotations

import re
import signal
from collections import Counter

import boto3
import orjson
import pytest

from crypto_live.local import SourceChoice, choose_source
from crypto_live.observer import Snapshot, format_status
from tests import figures
from tests.factories import assert_exactly_once, key_of
from tests.helpers import cli_env, run_cli, start_cli, wait_for


def test_source_choice_prefers_the_given_url_then_simulate_then_live_with_fallback():
    never = lambda url: pytest.fail("must not probe the live endpoint")  # noqa: E731
    given = choose_source({"BINANCE_WEBSOCKET_URL": "ws://127.0.0.1:1/ws/x"}, True, never)
    assert given == SourceChoice("env", "ws://127.0.0.1:1/ws/x", given.note)
    assert choose_source({}, True, never).url is None
    live = choose_source({}, False, lambda url: True)
    assert live.kind == "live" and live.url.startswith("wss://stream.binance.com")
    fallback = choose_source({}, False, lambda url: False)
    assert fallback.kind == "simulator" and fallback.url is None
    assert "cannot be reached" in fallback.note and "falling back" in fallback.note


def test_status_line_shows_rate_and_every_counter():
    before = Snapshot(at=10.0, events_in=1000, dead_letters=0, s3_objects=1, dynamo_rows=900, lag={"s3": 5})
    now = Snapshot(at=12.0, events_in=3000, dead_letters=2, s3_objects=3, dynamo_rows=2900, lag={"s3": 10, "dynamo": 0})
    assert format_status(now, before) == (
        "events in 3,000 (1,000/s) | S3 objects 3 | DynamoDB rows 2,900 | dead letters 2 | lag s3 10 dynamo 0"
    )


def _s3_events(bucket: str) -> list[tuple[str, int]]:
    s3 = boto3.client("s3", region_name="ap-southeast-1")
    events = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            events.extend(key_of(orjson.loads(line)) for line in body.splitlines())
    return events


def _dynamo_keys(table: str) -> list[tuple[str, int]]:
    dynamo = boto3.client("dynamodb", region_name="ap-southeast-1")
    keys, kwargs = [], {"TableName": table}
    while True:
        page = dynamo.scan(**kwargs)
        keys.extend((item["symbol"]["S"], int(item["event_time"]["N"])) for item in page["Items"])
        if "LastEvaluatedKey" not in page:
            return keys
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _dynamo_count(table: str) -> int:
    try:
        return boto3.client("dynamodb", region_name="ap-southeast-1").scan(TableName=table, Select="COUNT")["Count"]
    except Exception:  # noqa: BLE001 - the table is created by the command under test
        return 0


def run_env(aws_env: dict, unique: str, tmp_path) -> dict[str, str]:
    env = cli_env(
        aws_env,
        {
            "S3_BUCKET": f"run-{unique}",
            "DYNAMO_TABLE_NAME": f"run-{unique}",
            "KAFKA_TOPIC": f"run-{unique}",
            "BINANCE_WEBSOCKET_SECRET": f"run-{unique}",
            "MAX_BATCH_SIZE": "100",
            "MAX_BATCH_TIMEOUT": "1",
            "CRYPTO_LIVE_LOG_DIR": str(tmp_path),
            "PRODUCER_STATS_INTERVAL": "5",
        },
    )
    env.pop("KAFKA_BOOTSTRAP_SERVERS", None)  # run starts its own broker
    return env


def run_until(env: dict[str, str], rows: int) -> tuple[int, str]:
    """One `crypto-live run --simulate` until DynamoDB holds ``rows`` rows, then Ctrl-C: the
    events it took in, by its summary line, and its output."""
    table = env["DYNAMO_TABLE_NAME"]
    process = start_cli(["run", "--simulate", "--symbols", "40"], env)
    try:
        wait_for(lambda: _dynamo_count(table) >= rows, timeout=90, what="rows flowing into DynamoDB")
    finally:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=180)
    assert process.returncode == 0, stdout + stderr
    summary = re.search(
        r"^events in ([\d,]+) \| S3 objects ([\d,]+) \| DynamoDB rows ([\d,]+) \| "
        r"dead letters 0 \| lag s3 0 dynamo 0$",
        stdout,
        re.MULTILINE,
    )
    assert summary, stdout
    return int(summary.group(1).replace(",", "")), stdout


def test_run_simulate_lands_every_event_once_and_stops_cleanly_on_sigint(aws_env, unique, tmp_path):
    env = run_env(aws_env, unique, tmp_path)
    bucket, table = env["S3_BUCKET"], env["DYNAMO_TABLE_NAME"]
    events_in, stdout = run_until(env, 300)
    assert f"s3://{bucket}/batch_jsonl" in stdout and f"--table-name {table}" in stdout

    in_s3 = _s3_events(bucket)
    duplicates = [key for key, count in Counter(in_s3).items() if count > 1]
    assert duplicates == []
    assert len(in_s3) == events_in  # every event of the topic, once
    assert_exactly_once(_dynamo_keys(table), in_s3)  # DynamoDB holds the same events, each once


@pytest.mark.long
def test_two_runs_against_one_aws_endpoint_land_both_runs_events_once(aws_env, unique, tmp_path):
    """Each run starts a new embedded broker: the topic's offsets start again at 0 in an hour
    the first run wrote. The second run's events go beside the first's, none skipped."""
    env = run_env(aws_env, unique, tmp_path)
    bucket, table = env["S3_BUCKET"], env["DYNAMO_TABLE_NAME"]
    first, _ = run_until(env, 200)
    second, _ = run_until(env, _dynamo_count(table) + 200)
    assert "was created again" in (tmp_path / "s3-sink.log").read_text()  # the one warning

    in_s3 = _s3_events(bucket)
    doubled = sum(count - 1 for count in Counter(in_s3).values())
    lost = first + second - (len(in_s3) - doubled)
    figures.record(
        "two `crypto-live run --simulate` against one AWS endpoint: S3",
        events=first + second,
        lost=lost,
        doubled=doubled,
        first_run=first,
    )
    assert [key for key, count in Counter(in_s3).items() if count > 1] == []
    assert len(in_s3) == first + second  # both runs' events, each once
    assert_exactly_once(_dynamo_keys(table), in_s3)


def test_a_bad_simulator_option_is_refused_before_anything_starts():
    result = run_cli(["run", "--simulate", "--symbols", "0"], cli_env(), timeout=20)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "--symbols='0' is invalid" in result.stderr
    assert "started" not in result.stdout
