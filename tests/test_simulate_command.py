"""`crypto-live simulate` as a user starts it: options validated, URL announced, clean stop."""

from __future__ import annotations

import signal

import orjson
import pytest
from websockets.sync.client import connect

from crypto_live.embedded import free_port
from tests.helpers import cli_env, run_cli, start_cli


@pytest.mark.parametrize(
    ("args", "culprit"),
    [
        (["--faults", "explode@3"], "--faults='explode@3'"),
        (["--rate", "0"], "--rate='0.0'"),
        (["--rate", "inf"], "--rate='inf'"),
        (["--symbols", "0"], "--symbols='0'"),
        (["--symbols", "0", "--rate", "50"], "--symbols='0'"),
        (["--port", "70000"], "--port='70000'"),
        (["--interval", "0"], "--interval='0.0'"),
    ],
)
def test_bad_option_is_named_without_traceback(args, culprit):
    result = run_cli(["simulate", *args], cli_env())
    assert result.returncode == 2
    assert culprit in result.stderr and "Traceback" not in result.stderr


def test_simulate_serves_binance_frames_and_stops_on_sigterm():
    port = free_port()
    process = start_cli(["simulate", "--port", str(port), "--symbols", "5", "--rate", "50", "--seed", "7"], cli_env())
    try:
        first_line = process.stdout.readline()
        assert f"ws://127.0.0.1:{port}" in first_line
        with connect(f"ws://127.0.0.1:{port}/ws/!miniTicker@arr", open_timeout=10) as ws:
            frame = orjson.loads(ws.recv(timeout=10))
        assert isinstance(frame, list) and frame
        assert {event["e"] for event in frame} == {"24hrMiniTicker"}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
