"""`crypto-live dynamo-sink` against the test broker and moto: rows, replays, DLQ, start-up, stops."""

from __future__ import annotations

import signal
import tempfile
import threading
from collections.abc import Callable
from decimal import Decimal

import boto3
import orjson
import pytest
from boto3.dynamodb.types import TypeDeserializer

from crypto_live.dead_letter import original_bytes
from crypto_live.dynamo_table import create_table_request
from crypto_live.errors import DestinationError
from crypto_live.settings import DynamoSinkSettings, KafkaSettings, load
from processors.dynamo_items import ttl_seconds
from processors.dynamo_sink import STAGE, DynamoTableSink, application, run, table_sink
from processors.stream import state_directory
from tests.factories import committed, key_of, produce, publish, run_app_until, run_service, sink_batch, ticker
from tests.helpers import cli_env, read_topic, run_cli, start_cli, wait_for

TTL_DAYS = 2
#: Prices as Binance sends them that a float would not carry exactly: the rows must.
EXACT = {"o": "0.00000001", "h": "123456789.12345678", "l": "0.00250000", "q": "18"}


@pytest.fixture
def dynamodb(aws_endpoint):
    return boto3.client("dynamodb", region_name="ap-southeast-1")


@pytest.fixture
def table(dynamodb, unique):
    name = f"tickers-{unique}"
    dynamodb.create_table(**create_table_request(name))
    return name


@pytest.fixture
def env(kafka_env, aws_env, table):
    return {
        **kafka_env,
        **aws_env,
        "DYNAMO_TABLE_NAME": table,
        "RETENTION_TTL_DAYS": str(TTL_DAYS),
        "DYNAMO_MAX_BATCH_TIMEOUT": "0.5",
    }


def scan(dynamodb, name: str) -> dict[tuple[str, int], dict]:
    """Every row as plain Python values (numbers as Decimal), by (symbol, event_time)."""
    rows = {}
    for page in dynamodb.get_paginator("scan").paginate(TableName=name, ConsistentRead=True):
        for item in page["Items"]:
            row = {k: TypeDeserializer().deserialize(v) for k, v in item.items()}
            rows[(row["symbol"], int(row["event_time"]))] = row
    return rows


def run_until(settings: DynamoSinkSettings, sink: DynamoTableSink, condition: Callable[[], object], what: str) -> None:
    """Run the sink's application here until ``condition`` holds (30 s at most), then stop it."""
    with state_directory(STAGE) as state_dir:
        run_app_until(application(settings, sink, state_dir), lambda: wait_for(condition, 30, interval=0.1, what=what))


def writer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("dynamo-sink-writer") and t.is_alive()}


def test_one_exact_row_per_event_poison_dead_lettered_and_a_replay_changes_nothing(env, dynamodb, table):
    settings = load(DynamoSinkSettings, env)
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.topic
    before_poison = [ticker(n, symbol=s, **EXACT) for n in range(10) for s in ("BTCUSDT", "ETHUSDT")]
    after_poison = [ticker(n, symbol=s, **EXACT) for n in range(10, 20) for s in ("BTCUSDT", "BNBBTC")]
    poison = [
        b"}{not json",
        orjson.dumps(ticker(99, c="NaN")),
        orjson.dumps(ticker(98, q="1." + "2" * 40)),
    ]
    # Everything is in the topic before the group exists: a new group starts from the earliest offset.
    produce(bootstrap, topic, before_poison + [before_poison[0]] + poison + after_poison)
    valid = before_poison + after_poison

    with table_sink(settings) as sink:
        run_until(settings, sink, lambda: len(scan(dynamodb, table)) == len(valid), what="every row")

    rows = scan(dynamodb, table)
    assert set(rows) == {(e["s"], e["E"]) for e in valid}
    for e in valid:
        assert rows[(e["s"], e["E"])] == {
            "symbol": e["s"],
            "event_time": Decimal(e["E"]),
            "event_type": "24hrMiniTicker",
            "close": Decimal(e["c"]),
            "open": Decimal("0.00000001"),
            "high": Decimal("123456789.12345678"),
            "low": Decimal("0.00250000"),
            "base_volume": Decimal(e["v"]),
            "quote_volume": Decimal("18"),
            "ttl": Decimal(ttl_seconds(e["E"], TTL_DAYS)),
        }
    dead = [orjson.loads(m.value()) for m in read_topic(bootstrap, settings.kafka.dlq_topic, expected=3)]
    assert sorted(original_bytes(d) for d in dead) == sorted(poison)
    assert {d["stage"] for d in dead} == {"dynamo-sink"}
    reasons = " | ".join(d["reason"] for d in dead)
    assert "not JSON" in reasons and "'NaN'" in reasons and "41 significant digits" in reasons

    # Replay the whole topic with a second group: same rows, nothing else.
    replay = load(DynamoSinkSettings, {**env, "DYNAMO_SINK_GROUP": f"{settings.consumer_group}-replay"})
    with table_sink(replay) as replay_sink:
        run_until(replay, replay_sink, lambda: replay_sink.rows_written >= len(valid), what="replay")
    assert scan(dynamodb, table) == rows


def test_duplicate_keys_in_one_batch_become_one_row_with_the_last_values(env, dynamodb, table):
    # moto, like DynamoDB, refuses a BatchWriteItem naming the same item twice.
    same = ticker(1)
    with table_sink(load(DynamoSinkSettings, env)) as sink:
        sink.setup()
        sink.write(sink_batch([same, ticker(2), same, ticker(1, c="7.5")]))
    rows = scan(dynamodb, table)
    assert len(rows) == 2
    assert rows[key_of(same)]["close"] == Decimal("7.5")


def test_create_switch_makes_an_on_demand_table_with_ttl_on_ttl(kafka_env, aws_env, dynamodb, unique):
    name = f"created-{unique}"
    settings = load(
        DynamoSinkSettings, {**kafka_env, **aws_env, "DYNAMO_TABLE_NAME": name, "DYNAMO_CREATE_TABLE": "true"}
    )
    with table_sink(settings) as sink:
        sink.setup()
    described = dynamodb.describe_table(TableName=name)["Table"]
    assert described["KeySchema"] == [
        {"AttributeName": "symbol", "KeyType": "HASH"},
        {"AttributeName": "event_time", "KeyType": "RANGE"},
    ]
    assert sorted((d["AttributeName"], d["AttributeType"]) for d in described["AttributeDefinitions"]) == [
        ("event_time", "N"),
        ("symbol", "S"),
    ]
    assert described["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
    assert described["TableStatus"] == "ACTIVE"
    ttl = dynamodb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "ttl")


@pytest.mark.parametrize(
    "schema, words",
    [
        (None, "does not exist: create it with the infrastructure code, or set DYNAMO_CREATE_TABLE=true"),
        (
            [("id", "HASH", "S")],
            "partition key is 'id' (S), expected 'symbol' (S); has no sort key, expected 'event_time' (N)",
        ),
        (
            [("symbol", "HASH", "S"), ("event_time", "RANGE", "S")],
            "sort key is 'event_time' (S), expected 'event_time' (N)",
        ),
    ],
)
def test_a_missing_or_mis_keyed_table_is_refused_in_one_line(kafka_env, aws_env, dynamodb, unique, schema, words):
    name = f"wrong-{unique}"
    if schema:
        dynamodb.create_table(
            TableName=name,
            BillingMode="PAY_PER_REQUEST",
            KeySchema=[{"AttributeName": n, "KeyType": role} for n, role, _ in schema],
            AttributeDefinitions=[{"AttributeName": n, "AttributeType": kind} for n, _, kind in schema],
        )
    result = run_cli(["dynamo-sink"], cli_env(kafka_env, aws_env, {"DYNAMO_TABLE_NAME": name}))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"crypto-live dynamo-sink: DynamoDB table {name!r} (region ap-southeast-1) ")
    assert words in last_line
    assert (name in dynamodb.list_tables()["TableNames"]) == bool(schema)  # never created without the switch


def test_sigterm_writes_the_open_batch_commits_exits_0_and_leaves_no_state_directory(
    kafka_env, aws_env, dynamodb, unique, tmp_path
):
    name = f"sigterm-{unique}"
    env = cli_env(
        kafka_env,
        aws_env,
        {
            "DYNAMO_TABLE_NAME": name,
            "DYNAMO_CREATE_TABLE": "true",
            "KAFKA_TOPIC_PARTITIONS": "1",
            # Batches close every 10 events; the last 5 only close on shutdown.
            "DYNAMO_MAX_BATCH_SIZE": "10",
            "DYNAMO_MAX_BATCH_TIMEOUT": "300",
            "TMPDIR": str(tmp_path),  # where the run's Quix state directory goes
        },
    )
    bootstrap, topic, group = (
        kafka_env["KAFKA_BOOTSTRAP_SERVERS"],
        kafka_env["KAFKA_TOPIC"],
        kafka_env["DYNAMO_SINK_GROUP"],
    )
    publish(load(KafkaSettings, env), [ticker(n) for n in range(25)])
    process = start_cli(["dynamo-sink"], env)
    try:
        wait_for(
            lambda: (
                process.poll() is not None
                or (
                    name in dynamodb.list_tables()["TableNames"]
                    and len(scan(dynamodb, name)) == 20
                    and committed(bootstrap, group, topic, 1) == [20]
                )
            ),
            30,
            interval=0.2,
            what="two full batches written and committed",
        )
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert list(tmp_path.glob(f"crypto-live-{STAGE}-*")), "the run keeps its state elsewhere: nothing to check"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    assert len(scan(dynamodb, name)) == 25
    assert committed(bootstrap, group, topic, 1) == [25]  # a restart re-consumes nothing
    assert not list(tmp_path.glob("crypto-live-*"))


def test_a_table_deleted_mid_run_stops_the_sink_naming_it_and_nothing_past_the_stored_rows_is_committed(
    env, dynamodb, table, tmp_path, monkeypatch
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the run's Quix state directory goes
    settings = load(DynamoSinkSettings, {**env, "KAFKA_TOPIC_PARTITIONS": "1", "DYNAMO_MAX_BATCH_SIZE": "30"})
    kafka, group = settings.kafka, settings.consumer_group
    stored = [ticker(n) for n in range(60)]  # two batches of 30 rows: two requests each, so the writer pool runs
    publish(kafka, stored)
    before = writer_threads()
    seen: dict[str, object] = {}

    def scenario(stopped: threading.Event) -> None:
        wait_for(
            lambda: committed(kafka.bootstrap_servers, group, kafka.topic, 1) == [60], 30, interval=0.1, what="60 rows"
        )
        assert len(scan(dynamodb, table)) == 60
        seen["writers"] = writer_threads() - before
        seen["state"] = list(tmp_path.glob(f"crypto-live-{STAGE}-*"))
        dynamodb.delete_table(TableName=table)
        publish(kafka, [ticker(n) for n in range(60, 70)])
        assert stopped.wait(60), "the sink kept running without its table"

    with pytest.raises(DestinationError) as raised:
        run_service(lambda: run(settings), scenario)

    assert str(raised.value).startswith(f"DynamoDB table {table!r} (region ap-southeast-1): BatchWriteItem failed: ")
    assert "ResourceNotFoundException" in str(raised.value) and "\n" not in str(raised.value)
    assert committed(kafka.bootstrap_servers, group, kafka.topic, 1) == [60]  # a restart retries the 10 unstored
    # The run cleaned up after itself: its writer threads and its Quix state directory are gone.
    assert seen["writers"] and seen["state"], "the run used no writer threads or state directory: nothing to check"
    assert not writer_threads() - before
    assert not list(tmp_path.glob("crypto-live-*"))
