"""`crypto-live producer` as a process: signals, exit status, start-up errors, and logs
that never show the websocket URL (it may carry credentials)."""

from __future__ import annotations

import signal
import subprocess

import boto3
import orjson
import pytest

from crypto_live.embedded import free_port
from crypto_live.simulator import SimulatorOptions, SimulatorThread
from tests.factories import assert_exactly_once
from tests.helpers import cli_env, run_cli, start_cli, wait_for
from tests.producer_helpers import published_keys


def secret_token(unique: str) -> str:
    return f"listenKey-{unique}-pZ7xQ"


def stop_with(proc: subprocess.Popen, sig: int, timeout: float = 40) -> tuple[str, str]:
    try:
        proc.send_signal(sig)
        return proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_flushes_everything_exits_zero_and_never_logs_the_url(broker, kafka_env, unique, sig):
    token = secret_token(unique)
    with SimulatorThread(SimulatorOptions(symbols=20, interval=0.05)) as sim:
        url = f"{sim.url()}?listenKey={token}"
        env = cli_env(kafka_env, {"BINANCE_WEBSOCKET_URL": url, "LOG_LEVEL": "DEBUG", "PRODUCER_STATS_INTERVAL": "0.5"})
        proc = start_cli(["producer"], env)
        wait_for(lambda: sim.sent_count >= 300 or proc.poll() is not None, what="events sent to the producer")
        sim.send_junk()  # invalid items are logged too
        out, err = stop_with(proc, sig)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped: every message read was delivered" in err
    assert "events/s" in err and "invalid item sent to the dead-letter topic" in err
    assert token not in err and token not in out
    assert_exactly_once(published_keys(broker, kafka_env["KAFKA_TOPIC"]), sim.sent_keys())


def test_url_from_secrets_manager_json_form_is_used_and_never_logged(broker, kafka_env, aws_env, unique):
    token = secret_token(unique)
    name = f"crypto-live/ws-{unique}"
    with SimulatorThread(SimulatorOptions(symbols=5, interval=0.05)) as sim:
        boto3.client("secretsmanager", region_name="ap-southeast-1").create_secret(
            Name=name, SecretString=orjson.dumps({"url": f"{sim.url()}?listenKey={token}"}).decode()
        )
        env = cli_env(kafka_env, aws_env, {"BINANCE_WEBSOCKET_SECRET": name, "LOG_LEVEL": "DEBUG"})
        env.pop("BINANCE_WEBSOCKET_URL", None)
        proc = start_cli(["producer"], env)
        wait_for(lambda: sim.sent_count >= 50 or proc.poll() is not None, what="events sent to the producer")
        out, err = stop_with(proc, signal.SIGTERM)
    assert proc.returncode == 0, err[-3000:]
    assert token not in err and token not in out
    assert_exactly_once(published_keys(broker, kafka_env["KAFKA_TOPIC"]), sim.sent_keys())


def test_missing_secret_is_one_clear_line_and_a_non_zero_exit(kafka_env, aws_env, unique):
    env = cli_env(kafka_env, aws_env, {"BINANCE_WEBSOCKET_SECRET": f"absent-{unique}"})
    env.pop("BINANCE_WEBSOCKET_URL", None)
    result = run_cli(["producer"], env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"crypto-live producer: secret 'absent-{unique}' not found in Secrets Manager (ap-southeast-1); "
        "create it or set BINANCE_WEBSOCKET_URL"
    )


def test_flush_that_cannot_complete_exits_non_zero_saying_how_many_were_not_delivered(kafka_env, unique):
    with SimulatorThread(SimulatorOptions(symbols=5, interval=0.05)) as sim:
        env = cli_env(
            kafka_env,
            {
                "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}",  # nothing listens there
                "BINANCE_WEBSOCKET_URL": sim.url(),
                "PRODUCER_SHUTDOWN_TIMEOUT": "2",
            },
        )
        proc = start_cli(["producer"], env)
        wait_for(lambda: sim.sent_count >= 50 or proc.poll() is not None, what="events sent to the producer")
        out, err = stop_with(proc, signal.SIGTERM)
        sent = sim.sent_count  # the connection is closed: final
    assert proc.returncode == 1
    assert f"crypto-live producer: {sent} messages were not delivered" in err


def test_symbols_with_a_url_that_has_no_stream_endpoint_is_a_configuration_error(kafka_env):
    env = cli_env(
        kafka_env, {"BINANCE_WEBSOCKET_URL": "ws://127.0.0.1:1/feed/listenKey-s3cr3t", "BINANCE_SYMBOLS": "BTCUSDT"}
    )
    result = run_cli(["producer"], env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "s3cr3t" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "crypto-live producer: configuration error: BINANCE_WEBSOCKET_URL='ws://127.0.0.1:1/…' is invalid: "
        "expected a URL whose path contains /ws or /stream, where BINANCE_SYMBOLS' streams are read"
    )
