"""Every setting is validated at start-up and a bad value is named in one line."""

from __future__ import annotations

import pytest

from crypto_live.settings import (
    SERVICES,
    DynamoSinkSettings,
    ProducerSettings,
    S3SinkSettings,
    SettingsError,
    load,
    variables,
)
from tests.helpers import cli_env, run_cli

# (variable, bad value, words the error must contain)
BAD_VALUES = [
    ("REGION", "Singapore", "AWS region"),
    ("REGION", "ap_southeast_1", "AWS region"),
    ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
    ("KAFKA_BOOTSTRAP_SERVERS", "broker:99999", "host:port"),
    ("KAFKA_BOOTSTRAP_SERVERS", "a:9092,,b:9092", "host:port"),
    ("KAFKA_TOPIC", "bad topic", "topic name"),
    ("KAFKA_TOPIC", "x" * 250, "topic name"),
    ("KAFKA_DLQ_TOPIC", "dlq/x", "topic name"),
    ("KAFKA_TOPIC_PARTITIONS", "0", "whole number"),
    ("KAFKA_TOPIC_PARTITIONS", "three", "whole number"),
    ("KAFKA_TOPIC_REPLICATION_FACTOR", "-1", "whole number"),
    ("KAFKA_TOPIC_RETENTION_MS", "0", "-1 (unlimited)"),
    ("KAFKA_TOPIC_RETENTION_MS", "-2", "-1 (unlimited)"),
    ("KAFKA_TOPIC_RETENTION_BYTES", "1GB", "-1 (unlimited)"),
    ("KAFKA_SESSION_TIMEOUT_MS", "10", "whole number"),
    ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT", "one of PLAINTEXT, SSL, SASL_SSL"),
    ("KAFKA_SASL_MECHANISM", "PLAIN", "one of SCRAM-SHA-512, AWS_MSK_IAM"),
    ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512", "no value when KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ("KAFKA_SASL_USERNAME", "pipeline", "no value unless KAFKA_SASL_MECHANISM=SCRAM-SHA-512"),
    ("KAFKA_SASL_PASSWORD", "hunter2", "no value unless KAFKA_SASL_MECHANISM=SCRAM-SHA-512"),
    ("KAFKA_SSL_CA_LOCATION", "/no/such/ca.pem", "readable PEM file"),
    ("BINANCE_WEBSOCKET_URL", "https://stream.binance.com/ws", "ws:// or wss://"),
    ("BINANCE_WEBSOCKET_URL", "wss://", "ws:// or wss://"),
    ("BINANCE_WEBSOCKET_URL", "wss://host:notaport/ws", "valid port"),
    ("BINANCE_WEBSOCKET_SECRET", "has space", "secret name"),
    ("BINANCE_SYMBOLS", "BTCUSDT,ETH USDT", "symbols"),
    ("PRODUCER_STALE_AFTER", "0", "positive number of seconds"),
    ("PRODUCER_STALE_AFTER", "nan", "positive number of seconds"),
    ("PRODUCER_MAX_CONNECTION_AGE", "-5", "positive number of seconds"),
    ("PRODUCER_RECONNECT_MAX_DELAY", "inf", "positive number of seconds"),
    ("PRODUCER_SHUTDOWN_TIMEOUT", "soon", "positive number of seconds"),
    ("PRODUCER_STATS_INTERVAL", "0", "positive number of seconds"),
    ("S3_BUCKET", "My_Bucket", "S3 bucket name"),
    ("S3_BUCKET", "ab", "S3 bucket name"),
    ("S3_BUCKET", "192.168.1.1", "not an IP address"),
    ("S3_BUCKET", "bucket..name", "S3 bucket name"),
    ("S3_BUCKET", "xn--bucket", "reserved prefix"),
    ("S3_JSONL_DIR_PATH", "raw//jsonl", "key prefix"),
    ("S3_JSONL_DIR_PATH", "../up", "key prefix"),
    ("S3_JSONL_DIR_PATH", "a b", "key prefix"),
    ("MAX_BATCH_SIZE", "ten", "whole number from 1"),
    ("MAX_BATCH_SIZE", "0", "whole number from 1"),
    ("MAX_BATCH_SIZE", "1.5", "whole number from 1"),
    ("MAX_BATCH_TIMEOUT", "0", "positive number of seconds"),
    ("MAX_BATCH_TIMEOUT", "ten", "positive number of seconds"),
    ("S3_COMPRESSION", "zip", "one of none, gzip"),
    ("S3_SINK_GROUP", "my group", "consumer group id"),
    ("DYNAMO_TABLE_NAME", "t", "DynamoDB table name"),
    ("DYNAMO_TABLE_NAME", "bad/table", "DynamoDB table name"),
    ("RETENTION_TTL_DAYS", "-3", "whole number from 1"),
    ("RETENTION_TTL_DAYS", "one", "whole number from 1"),
    ("DYNAMO_MAX_BATCH_SIZE", "0", "whole number from 1"),
    ("DYNAMO_MAX_BATCH_TIMEOUT", "-1", "positive number of seconds"),
    ("DYNAMO_CREATE_TABLE", "maybe", "true or false"),
    ("DYNAMO_SINK_GROUP", "a group", "consumer group id"),
    ("LOG_FORMAT", "xml", "one of text, json"),
    ("CRYPTO_LIVE_HEARTBEAT_DIR", "relative/dir", "an absolute path"),
    ("HEALTHCHECK_MAX_AGE", "0", "positive number of seconds"),
    ("METRICS_INTERVAL", "1m", "positive number of seconds"),
]


def _services_reading(variable: str) -> list[type]:
    return [cls for cls in SERVICES.values() if any(v.env == variable for v in variables(cls))]


def test_every_variable_has_a_bad_value_case():
    covered = {case[0] for case in BAD_VALUES} | {"PIPELINE_IAM_USER"}  # any string is a profile name
    declared = {v.env for cls in SERVICES.values() for v in variables(cls)}
    assert declared - covered == set()


@pytest.mark.parametrize(("variable", "value", "expected"), BAD_VALUES)
def test_bad_value_is_refused_naming_variable_value_and_expectation(variable, value, expected):
    services = _services_reading(variable)
    assert services, f"no service reads {variable}: this case would check nothing"
    for cls in services:
        with pytest.raises(SettingsError) as info:
            load(cls, {variable: value})
        message = str(info.value)
        assert message.startswith(f"{variable}=")
        assert "\n" not in message
        assert expected in message
        if variable not in {"BINANCE_WEBSOCKET_URL", "KAFKA_SASL_PASSWORD"}:  # secrets are shown masked
            assert repr(value) in message


def test_defaults_are_the_original_designs():
    s3 = load(S3SinkSettings, {})
    dynamo = load(DynamoSinkSettings, {})
    producer = load(ProducerSettings, {})
    assert s3.aws.profile == "" and s3.aws.region == "ap-southeast-1"
    assert (s3.max_batch_size, s3.max_batch_timeout) == (1000, 10)
    assert (s3.bucket, s3.prefix) == ("crypto-live-bucket", "batch_jsonl")
    assert producer.websocket_secret == "crypto-live.binance_ws"
    assert producer.websocket_url is None
    assert (dynamo.table, dynamo.retention_ttl_days) == ("crypto-live-miniticker", 1)
    assert s3.kafka.bootstrap_servers == "localhost:9092"
    assert (s3.kafka.topic, s3.kafka.dlq_topic) == ("binance.miniticker", "binance.miniticker.dlq")
    assert (s3.consumer_group, dynamo.consumer_group) == ("crypto-live-s3-sink", "crypto-live-dynamo-sink")
    assert dynamo.create_table is False


def test_values_are_parsed_to_their_types():
    s3 = load(
        S3SinkSettings,
        {
            "MAX_BATCH_SIZE": " 250 ",
            "MAX_BATCH_TIMEOUT": "0.5",
            "S3_JSONL_DIR_PATH": "/raw/binance/",
            "S3_COMPRESSION": "GZIP",
            "KAFKA_TOPIC": "ticks",
            "KAFKA_BOOTSTRAP_SERVERS": "a:1, b:2",
        },
    )
    assert s3.max_batch_size == 250 and s3.max_batch_timeout == 0.5
    assert s3.prefix == "raw/binance" and s3.compression == "gzip"
    assert s3.kafka.dlq_topic == "ticks.dlq"
    assert s3.kafka.bootstrap_servers == "a:1,b:2"
    producer = load(ProducerSettings, {"BINANCE_SYMBOLS": "btcusdt, ETHUSDT,btcusdt"})
    assert producer.symbols == ("BTCUSDT", "ETHUSDT")


def test_dynamo_batching_falls_back_to_the_shared_variables_and_can_be_overridden():
    inherited = load(DynamoSinkSettings, {"MAX_BATCH_SIZE": "50", "MAX_BATCH_TIMEOUT": "3"})
    assert (inherited.max_batch_size, inherited.max_batch_timeout) == (50, 3)
    own = load(DynamoSinkSettings, {"MAX_BATCH_SIZE": "50", "DYNAMO_MAX_BATCH_SIZE": "25"})
    assert own.max_batch_size == 25
    with pytest.raises(SettingsError, match=r"^MAX_BATCH_SIZE='ten'"):
        load(DynamoSinkSettings, {"MAX_BATCH_SIZE": "ten"})


def test_empty_s3_prefix_means_bucket_root_and_empty_profile_means_default_chain():
    s3 = load(S3SinkSettings, {"S3_JSONL_DIR_PATH": "", "PIPELINE_IAM_USER": ""})
    assert s3.prefix == "" and s3.aws.profile == ""


def test_secret_url_is_never_echoed_whole_in_errors():
    with pytest.raises(SettingsError) as info:
        load(ProducerSettings, {"BINANCE_WEBSOCKET_URL": "wss://stream.example:notaport/ws/key-abc123"})
    assert "key-abc123" not in str(info.value)


# ---- through the real command: exit status 2, one line, no traceback


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MAX_BATCH_SIZE", "ten"),
        ("MAX_BATCH_TIMEOUT", "0"),
        ("RETENTION_TTL_DAYS", "-3"),
        ("S3_BUCKET", "Not_A_Bucket"),
    ],
)
def test_config_command_refuses_bad_values_without_traceback(variable, value):
    result = run_cli(["config"], cli_env({variable: value}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{variable}={value!r}" in lines[0]
    assert "Traceback" not in result.stderr


def test_config_command_prints_effective_values_with_secrets_masked():
    url = "wss://user:hunter2@stream.example.com:9443/ws/listenkey123"
    result = run_cli(["config"], cli_env({"BINANCE_WEBSOCKET_URL": url, "MAX_BATCH_SIZE": "42"}))
    assert result.returncode == 0, result.stderr
    assert "MAX_BATCH_SIZE=42\n" in result.stdout
    assert "S3_BUCKET=crypto-live-bucket  # default" in result.stdout
    assert "RETENTION_TTL_DAYS=1  # default" in result.stdout
    assert "BINANCE_WEBSOCKET_URL=wss://stream.example.com:9443/…" in result.stdout
    assert "hunter2" not in result.stdout and "listenkey123" not in result.stdout


def test_config_command_labels_where_each_value_came_from():
    env = cli_env({"MAX_BATCH_SIZE": "42", "KAFKA_TOPIC": "ticks"})
    for unset in ("DYNAMO_MAX_BATCH_SIZE", "DYNAMO_MAX_BATCH_TIMEOUT", "MAX_BATCH_TIMEOUT", "KAFKA_DLQ_TOPIC"):
        env.pop(unset, None)
    result = run_cli(["config", "dynamo-sink"], env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "KAFKA_TOPIC=ticks" in lines  # set: no label
    assert "DYNAMO_MAX_BATCH_SIZE=42  # from MAX_BATCH_SIZE" in lines  # the fallback variable named
    assert "KAFKA_DLQ_TOPIC=ticks.dlq  # derived" in lines  # computed from KAFKA_TOPIC
    assert "DYNAMO_MAX_BATCH_TIMEOUT=10  # default" in lines  # neither it nor its fallback set


@pytest.mark.parametrize("command", ["producer", "s3-sink", "dynamo-sink", "run", "simulate", "config", "provision"])
def test_every_subcommand_help_lists_its_environment_variables(command):
    result = run_cli([command, "--help"], cli_env())
    assert result.returncode == 0
    assert "environment variables" in result.stdout
    if command in SERVICES:
        specs = variables(SERVICES[command])
        assert specs, f"{command} declares no variables: this check would prove nothing"
        for spec in specs:
            assert spec.env in result.stdout


def test_service_refuses_bad_setting_before_connecting_anywhere():
    # The broker address points nowhere: the command must fail on the setting, at once.
    result = run_cli(
        ["s3-sink"], cli_env({"MAX_BATCH_SIZE": "ten", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}), timeout=20
    )
    assert result.returncode == 2
    assert "MAX_BATCH_SIZE='ten'" in result.stderr and "Traceback" not in result.stderr


def test_run_help_also_lists_the_variables_run_itself_reads():
    result = run_cli(["run", "--help"], cli_env())
    for name in ("AWS_ENDPOINT_URL", "CRYPTO_LIVE_LOG_DIR", "LOG_LEVEL"):
        assert name in result.stdout


@pytest.mark.parametrize("command", ["s3-sink", "dynamo-sink"])
def test_sink_start_up_error_is_one_line_with_no_dependency_warnings(command):
    # Nothing listens on port 1: the AWS check fails, and that failure is all the user sees.
    env = cli_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "AWS_ENDPOINT_URL": "http://127.0.0.1:1"})
    result = run_cli([command], env, timeout=60)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"crypto-live {command}: ")
