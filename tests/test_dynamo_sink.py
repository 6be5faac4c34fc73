"""`crypto-live dynamo-sink` against the test broker and moto: rows, replays, DLQ, start-up, SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import boto3
import orjson
import pytest
from boto3.dynamodb.types import TypeDeserializer
from confluent_kafka import Consumer, Producer, TopicPartition
from quixstreams.sinks import SinkBatch

from crypto_live.dead_letter import original_bytes
from crypto_live.kafka import ensure_topics
from crypto_live.settings import DynamoSinkSettings, KafkaSettings, load
from processors.dynamo_items import create_table_request, ttl_seconds
from processors.dynamo_sink import application, table_sink
from tests.helpers import cli_env, read_topic, wait_for

# The installed `crypto-live` command, as users run it. (`python -m crypto_live.cli`
# runs cli.py as __main__, whose CommandError is not the one services raise.)
CRYPTO_LIVE = str(Path(sys.executable).with_name("crypto-live"))
TTL_DAYS = 2


def event(symbol: str, n: int, **fields: str) -> dict:
    return {
        "e": "24hrMiniTicker",
        "E": 1700000000000 + n * 1000,
        "s": symbol,
        "c": f"{n}.10000000",
        "o": "0.00000001",
        "h": "123456789.12345678",
        "l": "0.00250000",
        "v": f"{n}",
        "q": "18",
        **fields,
    }


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


def produce(bootstrap: str, topic: str, values: list[bytes | dict], partition: int | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        key = value["s"].encode() if isinstance(value, dict) else b"junk"
        timestamp = value["E"] if isinstance(value, dict) else 0
        extra = {} if partition is None else {"partition": partition}
        producer.produce(
            topic,
            key=key,
            value=value if isinstance(value, bytes) else orjson.dumps(value),
            timestamp=timestamp,
            **extra,
        )
    assert producer.flush(10) == 0


def scan(dynamodb, name: str) -> dict[tuple[str, int], dict]:
    """Every row as plain Python values (numbers as Decimal), by (symbol, event_time)."""
    rows = {}
    for page in dynamodb.get_paginator("scan").paginate(TableName=name, ConsistentRead=True):
        for item in page["Items"]:
            row = {k: TypeDeserializer().deserialize(v) for k, v in item.items()}
            rows[(row["symbol"], int(row["event_time"]))] = row
    return rows


def run_until(app, condition, timeout: float = 30, what: str = "") -> None:
    """Run ``app`` in this (the main) thread until ``condition`` holds, then stop it."""
    failure: list[AssertionError] = []

    def watch():
        try:
            wait_for(condition, timeout, interval=0.1, what=what)
        except AssertionError as exc:
            failure.append(exc)
        finally:
            app.stop()

    watchdog = threading.Thread(target=watch, daemon=True)
    watchdog.start()
    app.run()
    watchdog.join()
    if failure:
        raise failure[0]


def test_one_exact_row_per_event_poison_dead_lettered_and_a_replay_changes_nothing(env, dynamodb, table):
    settings = load(DynamoSinkSettings, env)
    bootstrap, topic = settings.kafka.bootstrap_servers, settings.kafka.topic
    before_poison = [event(s, n) for n in range(10) for s in ("BTCUSDT", "ETHUSDT")]
    after_poison = [event(s, n) for n in range(10, 20) for s in ("BTCUSDT", "BNBBTC")]
    poison = [
        b"}{not json",
        orjson.dumps({**event("BTCUSDT", 99), "c": "NaN"}),
        orjson.dumps(event("BTCUSDT", 98, q="1." + "2" * 40)),
    ]
    # Everything is in the topic before the group exists: a new group starts from the earliest offset.
    produce(bootstrap, topic, before_poison + [before_poison[0]] + poison + after_poison)
    valid = before_poison + after_poison

    sink = table_sink(settings)
    run_until(application(settings, sink), lambda: len(scan(dynamodb, table)) == len(valid), what="every row")

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
    replay_sink = table_sink(replay)
    run_until(application(replay, replay_sink), lambda: replay_sink.rows_written >= len(valid), what="replay")
    assert scan(dynamodb, table) == rows


def test_duplicate_keys_in_one_batch_become_one_row_with_the_last_values(env, dynamodb, table):
    # moto, like DynamoDB, refuses a BatchWriteItem naming the same item twice.
    sink = table_sink(load(DynamoSinkSettings, env))
    sink.setup()
    batch = SinkBatch(topic="miniticker", partition=0)
    same = event("BTCUSDT", 1)
    for offset, fields in enumerate([same, event("BTCUSDT", 2), same, {**same, "c": "7.5"}]):
        batch.append(value=fields, key=b"BTCUSDT", timestamp=fields["E"], headers=[], offset=offset)
    sink.write(batch)
    rows = scan(dynamodb, table)
    assert len(rows) == 2
    assert rows[("BTCUSDT", same["E"])]["close"] == Decimal("7.5")


def test_create_switch_makes_an_on_demand_table_with_ttl_on_ttl(kafka_env, aws_env, dynamodb, unique):
    name = f"created-{unique}"
    sink = table_sink(
        load(DynamoSinkSettings, {**kafka_env, **aws_env, "DYNAMO_TABLE_NAME": name, "DYNAMO_CREATE_TABLE": "true"})
    )
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
    result = subprocess.run(
        [CRYPTO_LIVE, "dynamo-sink"],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(kafka_env, aws_env, {"DYNAMO_TABLE_NAME": name}),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"crypto-live dynamo-sink: DynamoDB table {name!r} (region ap-southeast-1) ")
    assert words in last_line
    assert (name in dynamodb.list_tables()["TableNames"]) == bool(schema)  # never created without the switch


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        (position,) = consumer.committed([TopicPartition(topic, 0)], timeout=10)
        return position.offset
    finally:
        consumer.close()


def test_sigterm_writes_the_open_batch_commits_and_exits_0(kafka_env, aws_env, dynamodb, unique):
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
        },
    )
    bootstrap, topic, group = (
        kafka_env["KAFKA_BOOTSTRAP_SERVERS"],
        kafka_env["KAFKA_TOPIC"],
        kafka_env["DYNAMO_SINK_GROUP"],
    )
    ensure_topics(load(KafkaSettings, env))
    produce(bootstrap, topic, [event("BTCUSDT", n) for n in range(25)], partition=0)
    process = subprocess.Popen(
        [CRYPTO_LIVE, "dynamo-sink"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(
            lambda: (
                process.poll() is not None
                or (
                    name in dynamodb.list_tables()["TableNames"]
                    and len(scan(dynamodb, name)) == 20
                    and committed(bootstrap, group, topic) == 20
                )
            ),
            30,
            interval=0.2,
            what="two full batches written and committed",
        )
        assert process.poll() is None, process.communicate()[1][-3000:]
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr[-3000:]
    assert len(scan(dynamodb, name)) == 25
    assert committed(bootstrap, group, topic) == 25  # a restart re-consumes nothing
