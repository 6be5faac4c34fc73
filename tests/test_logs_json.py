"""LOG_FORMAT=json: every line every service writes is one JSON object, and no secret
appears in any of them — in normal runs at DEBUG, and when a service fails at start-up."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys

import boto3
import orjson
import pytest

from crypto_live import cli, logs
from crypto_live.simulator import SimulatorOptions, SimulatorThread
from tests.factories import assert_exactly_once
from tests.helpers import cli_env, run_cli, wait_for
from tests.json_logs import JsonLogProcess, clean_logging, json_records  # noqa: F401 - a fixture
from tests.producer_helpers import published_keys

REGION = "ap-southeast-1"


def token(unique: str) -> str:
    return f"listenKey-{unique}-Jv3nQ"


# --------------------------------------------------------------------------- the format


@pytest.mark.usefixtures("clean_logging")
def test_json_lines_hold_a_whole_record_with_its_traceback_on_one_line(capsys):
    logs.configure("INFO", "json", service="s3-sink")
    log = logging.getLogger("processors.s3_sink")
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.exception("write failed for %s", "key\nwith newline")
    log.debug("not at INFO")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    record = orjson.loads(lines[0])
    assert record["level"] == "ERROR" and record["logger"] == "processors.s3_sink"
    assert record["service"] == "s3-sink"
    assert record["message"] == "write failed for key\nwith newline"
    assert record["exception"].startswith("Traceback") and "ValueError: bad\nthing" in record["exception"]
    assert record["timestamp"].endswith("Z") and "T" in record["timestamp"]


@pytest.mark.usefixtures("clean_logging")
def test_text_stays_the_default_format(capsys):
    logs.configure("INFO")
    logging.getLogger("producer").info("connected to %s", "wss://host/…")
    line = capsys.readouterr().err
    assert line.endswith(" INFO producer: connected to wss://host/…\n") and not line.startswith("{")


def test_the_cli_refuses_a_bad_log_format_naming_it_before_doing_anything():
    result = run_cli(["s3-sink"], cli_env({"LOG_FORMAT": "yaml", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}), timeout=20)
    assert result.returncode == 2
    assert result.stderr == (
        "crypto-live s3-sink: configuration error: LOG_FORMAT='yaml' is invalid: expected one of text, json\n"
    )


@pytest.mark.usefixtures("clean_logging")
def test_the_final_error_line_is_json_in_json_mode(capsys, tmp_path):
    code = cli.main(["healthcheck", "producer"], environ={"LOG_FORMAT": "json", "CRYPTO_LIVE_HEARTBEAT_DIR": "/nope"})
    assert code == 1
    (line,) = capsys.readouterr().err.splitlines()
    record = orjson.loads(line)
    assert record["level"] == "ERROR" and record["exit_status"] == 1 and record["service"] == "healthcheck"
    assert record["message"].startswith("crypto-live healthcheck: producer heartbeat /nope/")


def test_uncaught_exceptions_and_warnings_are_json_objects_too():
    program = (
        "import threading, warnings\n"
        "from crypto_live import logs\n"
        "logs.configure('INFO', 'json', service='test')\n"
        "warnings.warn('careful\\nnow')\n"
        "thread = threading.Thread(target=lambda: 1 / 0, name='worker')\n"
        "thread.start(); thread.join()\n"
        "raise RuntimeError('boom')\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    records = json_records(result.stdout + result.stderr)
    assert [record["logger"] for record in records] == ["py.warnings", "crypto-live", "crypto-live"]
    assert "careful\nnow" in records[0]["message"]
    assert records[1]["message"] == "uncaught exception in thread worker"
    assert "ZeroDivisionError" in records[1]["exception"]
    assert records[2]["level"] == "CRITICAL" and "RuntimeError: boom" in records[2]["exception"]


# --------------------------------------------------------------------------- secrets


def test_secret_fragments_of_a_url_cover_its_path_query_values_and_password():
    url = "wss://user:pa55word@stream.example.com:9443/ws/!miniTicker@arr?listenKey=abc%2Fdef&x=1"
    fragments = logs.secret_fragments(url)
    assert {
        url,
        "/ws/!miniTicker@arr?listenKey=abc%2Fdef&x=1",
        "/ws/!miniTicker@arr",
        "listenKey=abc%2Fdef&x=1",
        "abc/def",  # a query value, decoded
        "pa55word",
    } <= fragments
    assert "x=1" not in fragments and "1" not in fragments  # too short: would garble every line
    assert "stream.example.com" not in fragments  # logs may name the host
    assert logs.secret_fragments("hunter2") == {"hunter2"}


@pytest.mark.usefixtures("clean_logging")
def test_registered_secrets_never_reach_a_line_whatever_carries_them(capsys):
    logs.configure("DEBUG", "json", service="producer")
    logs.register_secret("wss://stream.example.com/ws/feed?listenKey=Sup3rSecretKey")
    log = logging.getLogger("producer")
    log.info("opening wss://stream.example.com/ws/feed?listenKey=Sup3rSecretKey")
    log.warning("key %s refused", "Sup3rSecretKey")
    try:
        raise OSError("handshake for /ws/feed?listenKey=Sup3rSecretKey failed")
    except OSError:
        log.exception("could not connect")
    records = json_records(capsys.readouterr().err, secrets=["Sup3rSecretKey", "/ws/feed"])
    assert [r["message"] for r in records[:2]] == ["opening [redacted]", "key [redacted] refused"]
    assert "[redacted]" in records[2]["exception"]


@pytest.mark.usefixtures("clean_logging")
def test_the_cli_registers_secret_settings_and_aws_credentials_before_a_service_runs(monkeypatch, capsys):
    def service(settings) -> int:  # a service that logs what it must not
        logging.getLogger("producer").warning("reading %s with key %s", settings.websocket_url, "AwsSecretKey9")
        return 0

    monkeypatch.setattr(cli, "_import", lambda target: service)
    environ = {
        "LOG_FORMAT": "json",
        "BINANCE_WEBSOCKET_URL": "wss://stream.example.com/ws/feed?listenKey=EnvSecret77",
        "AWS_SECRET_ACCESS_KEY": "AwsSecretKey9",
    }
    assert cli.main(["producer"], environ=environ) == 0
    (record,) = json_records(capsys.readouterr().err, secrets=["EnvSecret77", "AwsSecretKey9", "/ws/feed"])
    assert record["message"] == "reading [redacted] with key [redacted]"


# --------------------------------------------------------------------------- services


def test_producer_at_debug_writes_only_json_and_never_the_url_from_the_environment(broker, kafka_env, unique):
    secret = token(unique)
    with SimulatorThread(SimulatorOptions(symbols=10, interval=0.05)) as sim:
        env = cli_env(
            kafka_env,
            {
                "BINANCE_WEBSOCKET_URL": f"{sim.url()}?listenKey={secret}",
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "DEBUG",
                "PRODUCER_STATS_INTERVAL": "0.5",
                "METRICS_INTERVAL": "0.5",
            },
        )
        producer = JsonLogProcess(["producer"], env)
        try:
            wait_for(lambda: sim.sent_count >= 300 or not producer.alive, what="events sent to the producer")
            sim.send_junk()
            sim.drop_connections()  # reconnects are logged (and would name the URL if anything did)
            wait_for(lambda: sim.sent_count >= 600 or not producer.alive, what="events after reconnecting")
            assert producer.stop(signal.SIGTERM) == 0, producer.output()[-3000:]
        finally:
            producer.kill()
    records = json_records(producer.output(), secrets=[secret])
    messages = " ".join(record["message"] for record in records)
    assert "invalid item sent to the dead-letter topic" in messages and "reconnecting" in messages
    assert {record["service"] for record in records} == {"producer"}
    assert_exactly_once(published_keys(broker, kafka_env["KAFKA_TOPIC"]), sim.sent_keys())


def test_producer_never_logs_the_url_it_reads_from_secrets_manager(broker, kafka_env, aws_env, unique):
    secret, name = token(unique), f"crypto-live/json-{unique}"
    with SimulatorThread(SimulatorOptions(symbols=5, interval=0.05)) as sim:
        boto3.client("secretsmanager", region_name=REGION).create_secret(
            Name=name, SecretString=orjson.dumps({"url": f"{sim.url()}?listenKey={secret}"}).decode()
        )
        env = cli_env(
            kafka_env,
            aws_env,
            {
                "BINANCE_WEBSOCKET_SECRET": name,
                "LOG_FORMAT": "json",
                "LOG_LEVEL": "DEBUG",
                "METRICS_INTERVAL": "0.5",
                "AWS_SECRET_ACCESS_KEY": f"aws-secret-{unique}-Hk2",
            },
        )
        env.pop("BINANCE_WEBSOCKET_URL", None)
        producer = JsonLogProcess(["producer"], env)
        try:
            wait_for(lambda: sim.sent_count >= 200 or not producer.alive, what="events sent to the producer")
            assert producer.stop(signal.SIGTERM) == 0, producer.output()[-3000:]
        finally:
            producer.kill()
    json_records(producer.output(), secrets=[secret, env["AWS_SECRET_ACCESS_KEY"]])


def failure_cases(unique: str) -> list[tuple[str, dict[str, str], int, str]]:
    secret = token(unique)
    return [
        # The URL has no /ws or /stream path to derive the symbols' streams from: a bad setting.
        (
            "producer",
            {"BINANCE_WEBSOCKET_URL": f"ws://127.0.0.1:1/feed?listenKey={secret}", "BINANCE_SYMBOLS": "BTCUSDT"},
            2,
            "BINANCE_WEBSOCKET_URL",
        ),
        # Not a websocket URL at all: refused while the settings are read, shown masked.
        ("producer", {"BINANCE_WEBSOCKET_URL": f"https://127.0.0.1:1/ws?listenKey={secret}"}, 2, "ws:// or wss://"),
        ("producer", {"BINANCE_WEBSOCKET_SECRET": f"crypto-live/missing-{unique}"}, 1, "not found in Secrets Manager"),
        ("s3-sink", {"S3_BUCKET": f"missing-{unique}"}, 1, "does not exist"),
        ("dynamo-sink", {"DYNAMO_TABLE_NAME": f"missing-{unique}"}, 1, "does not exist"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_a_service_failing_at_start_up_at_debug_writes_only_json_and_no_secret(kafka_env, aws_env, unique, case):
    command, settings, status, reason = failure_cases(unique)[case]
    env = cli_env(
        kafka_env,
        aws_env,
        {"LOG_FORMAT": "json", "LOG_LEVEL": "DEBUG", "AWS_SECRET_ACCESS_KEY": f"aws-secret-{unique}-Hk2"},
        settings,
    )
    if "BINANCE_WEBSOCKET_SECRET" in settings:
        env.pop("BINANCE_WEBSOCKET_URL", None)
    result = run_cli([command], env, timeout=60)
    assert result.returncode == status, result.stderr[-3000:]
    records = json_records(result.stdout + result.stderr, secrets=[token(unique), env["AWS_SECRET_ACCESS_KEY"]])
    final = records[-1]
    assert final["level"] == "ERROR" and final["exit_status"] == status and final["service"] == command
    assert final["message"].startswith(f"crypto-live {command}: ") and reason in final["message"]
