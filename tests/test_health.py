"""Liveness: the heartbeat, the staleness decision, `crypto-live healthcheck`, and stuck loops failing it.

A heartbeat must mean "the processing loop is working": the tests block a loop while the
process and its other threads (librdkafka's, the event loop's neighbours) keep running,
and check that the healthcheck fails then, and passes again once the loop moves.
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from pathlib import Path

import boto3
import pytest
from quixstreams.sinks import BatchingSink, SinkBackpressureError, SinkBatch

from crypto_live import cli, health
from crypto_live.errors import SetupError, UnhealthyError
from crypto_live.health import Heartbeat, heartbeat_path, staleness
from crypto_live.settings import KafkaSettings, MonitoringSettings, ProducerSettings, load
from crypto_live.simulator import SimulatorOptions, SimulatorThread
from processors.stream import StreamPlan, build_application, state_directory
from processors.telemetry import SinkTelemetry
from producer.inprocess import ProducerThread
from tests.factories import publish, run_app_until, ticker
from tests.helpers import cli_env, run_cli, start_cli, wait_for
from tests.json_logs import clean_logging  # noqa: F401 - a fixture

#: Short enough for the tests to see a stuck loop quickly; well above the 1-1.5 s between beats.
MAX_AGE = 3.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def monitoring(directory: Path) -> MonitoringSettings:
    return load(MonitoringSettings, {"CRYPTO_LIVE_HEARTBEAT_DIR": str(directory), "HEALTHCHECK_MAX_AGE": str(MAX_AGE)})


def healthy(service: str, directory: Path) -> bool:
    try:
        health.check(service, heartbeat_path(directory, service), MAX_AGE)
    except UnhealthyError:
        return False
    return True


# --------------------------------------------------------------------------- the decision


def test_staleness_is_none_while_the_heartbeat_is_at_most_max_age_old():
    assert staleness(now=100.0, mtime=95.0, max_age=10.0) is None
    assert staleness(now=100.0, mtime=90.0, max_age=10.0) is None  # exactly max age: still fresh
    assert staleness(now=100.0, mtime=130.0, max_age=10.0) is None  # the clock was set back


def test_staleness_says_how_old_and_what_the_limit_is():
    assert staleness(now=100.0, mtime=87.5, max_age=10.0) == (
        "12.5 s old, over HEALTHCHECK_MAX_AGE=10 s: its processing loop is stuck"
    )
    missing = staleness(now=100.0, mtime=None, max_age=10.0)
    assert missing is not None and missing.startswith("missing: the service is not running")


# --------------------------------------------------------------------------- the file


def test_heartbeat_writes_at_most_once_a_second_whatever_the_call_rate(tmp_path, monkeypatch):
    writes = []
    real_utime = os.utime
    monkeypatch.setattr(health.os, "utime", lambda path, *a, **kw: (writes.append(path), real_utime(path, *a, **kw)))
    clock = Clock()
    heartbeat = Heartbeat(tmp_path / "hb", clock=clock)
    heartbeat.start()
    for _ in range(1000):  # 1000 beats over 10 simulated seconds
        clock.now += 0.01
        heartbeat.beat()
    assert 9 <= len(writes) <= 10


def test_heartbeat_refreshes_the_file_and_recreates_it_when_removed(tmp_path):
    clock = Clock()
    path = tmp_path / "dir" / "crypto-live-producer.heartbeat"
    with Heartbeat(path, clock=clock) as heartbeat:
        assert path.exists()  # created at start, directory included
        os.utime(path, (0, 0))
        clock.now += 1.0
        heartbeat.beat()
        assert time.time() - path.stat().st_mtime < 5
        path.unlink()  # a temp-directory cleaner
        clock.now += 1.0
        heartbeat.beat()
        assert path.exists()
    assert not path.exists()  # a stopped service is not healthy


def test_heartbeat_that_cannot_be_written_stops_the_start_naming_the_variable(tmp_path):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(SetupError, match="CRYPTO_LIVE_HEARTBEAT_DIR") as info:
        Heartbeat(not_a_directory / "crypto-live-s3-sink.heartbeat").start()
    assert str(not_a_directory) in str(info.value)


# --------------------------------------------------------------------------- the command


def healthcheck(capsys, directory: Path, service: str = "s3-sink", **env: str) -> tuple[int, str, str]:
    environ = {"CRYPTO_LIVE_HEARTBEAT_DIR": str(directory), **env}
    code = cli.main(["healthcheck", service], environ=environ)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.usefixtures("clean_logging")
def test_healthcheck_passes_on_a_fresh_heartbeat(tmp_path, capsys):
    heartbeat_path(tmp_path, "s3-sink").touch()
    code, out, err = healthcheck(capsys, tmp_path)
    assert (code, err) == (0, "")
    assert out.startswith(f"s3-sink is healthy: heartbeat {tmp_path}/crypto-live-s3-sink.heartbeat is ")


@pytest.mark.usefixtures("clean_logging")
def test_healthcheck_fails_with_one_line_naming_the_file_and_its_age(tmp_path, capsys):
    path = heartbeat_path(tmp_path, "dynamo-sink")
    path.touch()
    old = time.time() - 75
    os.utime(path, (old, old))
    code, out, err = healthcheck(capsys, tmp_path, "dynamo-sink")
    assert code == 1 and out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"crypto-live healthcheck: dynamo-sink heartbeat {path} is 75.")
    assert "s old, over HEALTHCHECK_MAX_AGE=60 s: its processing loop is stuck" in err


@pytest.mark.usefixtures("clean_logging")
def test_healthcheck_fails_when_the_service_never_beat(tmp_path, capsys):
    code, _, err = healthcheck(capsys, tmp_path, "producer")
    assert code == 1
    assert err == (
        f"crypto-live healthcheck: producer heartbeat {tmp_path}/crypto-live-producer.heartbeat is missing: "
        "the service is not running, or its loop has not started yet\n"
    )


@pytest.mark.usefixtures("clean_logging")
def test_healthcheck_respects_healthcheck_max_age(tmp_path, capsys):
    path = heartbeat_path(tmp_path, "s3-sink")
    path.touch()
    old = time.time() - 20
    os.utime(path, (old, old))
    assert healthcheck(capsys, tmp_path, HEALTHCHECK_MAX_AGE="30")[0] == 0
    assert healthcheck(capsys, tmp_path, HEALTHCHECK_MAX_AGE="10")[0] == 1


@pytest.mark.parametrize(
    ("variable", "value"), [("HEALTHCHECK_MAX_AGE", "soon"), ("CRYPTO_LIVE_HEARTBEAT_DIR", "relative/dir")]
)
@pytest.mark.usefixtures("clean_logging")
def test_healthcheck_refuses_a_bad_setting_naming_it(tmp_path, capsys, variable, value):
    code, _, err = healthcheck(capsys, tmp_path, **{variable: value})
    assert code == 2
    assert err.startswith(f"crypto-live healthcheck: configuration error: {variable}={value!r} is invalid")


# --------------------------------------------------------------------------- stuck loops


def test_a_stopped_sink_process_fails_the_healthcheck_and_passes_again_when_it_continues(
    kafka_env, aws_env, unique, tmp_path
):
    bucket = f"health-{unique}"
    boto3.client("s3", region_name="ap-southeast-1").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "ap-southeast-1"}
    )
    env = cli_env(
        kafka_env,
        aws_env,
        {"S3_BUCKET": bucket, "CRYPTO_LIVE_HEARTBEAT_DIR": str(tmp_path), "HEALTHCHECK_MAX_AGE": str(MAX_AGE)},
    )

    def check() -> tuple[int, str]:
        result = run_cli(["healthcheck", "s3-sink"], env, timeout=20)
        return result.returncode, result.stderr

    sink = start_cli(["s3-sink"], env)
    try:
        wait_for(lambda: check()[0] == 0 or sink.poll() is not None, 60, 0.2, "a fresh heartbeat")
        assert sink.poll() is None, sink.communicate()[1][-3000:]
        # Idle (nothing to consume) is not stuck: it stays healthy past the maximum age.
        idle_until = time.monotonic() + MAX_AGE + 1
        while time.monotonic() < idle_until:
            assert check()[0] == 0

        sink.send_signal(signal.SIGSTOP)
        code, err = wait_for(lambda: (r := check())[0] == 1 and r, MAX_AGE + 10, 0.2, "a stale heartbeat")
        path = heartbeat_path(tmp_path, "s3-sink")
        assert f"s3-sink heartbeat {path} is " in err and f"over HEALTHCHECK_MAX_AGE={MAX_AGE:g} s" in err

        sink.send_signal(signal.SIGCONT)
        wait_for(lambda: check()[0] == 0, 20, 0.2, "a fresh heartbeat after SIGCONT")

        sink.send_signal(signal.SIGTERM)
        assert sink.wait(30) == 0
        assert "is missing" in check()[1]  # a stopped service is not healthy
    finally:
        if sink.poll() is None:
            sink.send_signal(signal.SIGCONT)
            sink.kill()
        sink.communicate()


def test_a_blocked_producer_event_loop_stops_its_heartbeat(broker, kafka_env, tmp_path):
    env = {
        **kafka_env,
        "CRYPTO_LIVE_HEARTBEAT_DIR": str(tmp_path),
        "PRODUCER_STALE_AFTER": "30",  # the blocked loop must not end the connection
    }
    with SimulatorThread(SimulatorOptions(symbols=5, interval=0.05)) as sim:
        env["BINANCE_WEBSOCKET_URL"] = sim.url()
        with ProducerThread(load(ProducerSettings, env)) as producer:
            wait_for(lambda: producer.stats.published >= 20, what="events published")
            assert healthy("producer", tmp_path)
            released = threading.Event()
            # The event loop runs this and nothing else until released; librdkafka's threads carry on.
            producer.service._loop.call_soon_threadsafe(released.wait, 30)
            try:
                wait_for(lambda: not healthy("producer", tmp_path), MAX_AGE + 5, what="a stale heartbeat")
            finally:
                released.set()
            wait_for(lambda: healthy("producer", tmp_path), 10, what="a fresh heartbeat once the loop runs")
            assert producer.stop() == 0
    assert not heartbeat_path(tmp_path, "producer").exists()


class GatedSink(BatchingSink):
    """Asks for backpressure on its first batch, then blocks in write() until released."""

    def __init__(self, pause: float) -> None:
        super().__init__()
        self.pause = pause
        self.writes = 0
        self.blocked = threading.Event()
        self.release = threading.Event()

    def write(self, batch: SinkBatch) -> None:
        self.writes += 1
        if self.writes == 1:
            raise SinkBackpressureError(retry_after=self.pause)
        self.blocked.set()
        self.release.wait(60)


def test_a_sink_loop_stuck_in_a_write_fails_while_a_backpressure_pause_does_not(kafka_env, tmp_path):
    kafka = load(KafkaSettings, kafka_env)
    publish(kafka, [ticker(n) for n in range(10)])
    sink = GatedSink(pause=MAX_AGE + 2)
    telemetry = SinkTelemetry("s3-sink", kafka.topic, monitoring(tmp_path), written=lambda: {})

    def scenario() -> None:
        wait_for(lambda: sink.writes >= 1, 30, what="the first batch")
        # Paused for longer than the maximum age: the poll loop keeps turning, the heartbeat stays fresh.
        paused_until = time.monotonic() + MAX_AGE + 1
        while time.monotonic() < paused_until:
            assert healthy("s3-sink", tmp_path), "a backpressure pause let the heartbeat go stale"
            time.sleep(0.2)
        wait_for(sink.blocked.is_set, 30, what="the replayed batch's write")
        try:
            wait_for(lambda: not healthy("s3-sink", tmp_path), MAX_AGE + 5, what="a stale heartbeat")
        finally:
            sink.release.set()
        wait_for(lambda: healthy("s3-sink", tmp_path), 10, what="a fresh heartbeat after the write returned")

    with state_directory("health") as state_dir:
        app = build_application(
            kafka,
            StreamPlan("s3-sink", kafka_env["S3_SINK_GROUP"], 5, 0.5),
            sink,
            state_dir=state_dir,
            telemetry=telemetry,
        )
        with telemetry:
            run_app_until(app, scenario)


def test_defaults_are_the_temp_directory_a_minute_and_a_minute():
    settings = load(MonitoringSettings, {})
    assert (settings.heartbeat_dir, settings.max_age, settings.metrics_interval) == (tempfile.gettempdir(), 60, 60)
