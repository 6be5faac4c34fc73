"""docker-compose.yml cannot drift from the CLI: its commands and environments run here.

Each crypto-live service of the compose files is started with exactly its command and
environment, only the container host names swapped for the embedded stack's loopback
addresses, and must do its job: provision, simulate, produce, sink.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml

from crypto_live.embedded import EmbeddedAws, EmbeddedBroker, free_port
from crypto_live.settings import KafkaSettings, load
from tests.helpers import run_cli, start_cli, wait_for

ROOT = Path(__file__).resolve().parent.parent
APP_IMAGE = "crypto-live:local"


def _compose(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _merged_services() -> dict:
    """docker-compose.yml with docker-compose.simulate.yml on top (maps merge, lists replace)."""
    services = _compose("docker-compose.yml")["services"]
    for name, override in _compose("docker-compose.simulate.yml")["services"].items():
        base = services.setdefault(name, {})
        for key, value in override.items():
            base[key] = {**base.get(key, {}), **value} if isinstance(value, dict) else value
    return services


def test_every_app_service_is_stoppable_restartable_and_waits_for_its_dependencies():
    services = _compose("docker-compose.yml")["services"]
    for name in ("producer", "s3-sink", "dynamo-sink"):
        service = services[name]
        assert service["image"] == APP_IMAGE and service["command"] == [name]
        assert service["restart"] == "on-failure" and service["stop_signal"] == "SIGTERM"
        assert service["depends_on"] == {
            "redpanda-init": {"condition": "service_completed_successfully"},
            "aws-init": {"condition": "service_completed_successfully"},
        }
    assert services["redpanda-init"]["depends_on"]["redpanda"]["condition"] == "service_healthy"
    assert "rpk" in " ".join(services["redpanda"]["healthcheck"]["test"])
    assert "./redpanda.yaml:/etc/redpanda-seed/redpanda.yaml:ro" in services["redpanda"]["volumes"]


def test_redpanda_init_creates_the_topics_the_services_expect():
    services = _compose("docker-compose.yml")["services"]
    env = services["producer"]["environment"]
    kafka = load(KafkaSettings, env)
    script = services["redpanda-init"]["command"][0]
    assert f"for topic in {kafka.topic} {kafka.dlq_topic}" in script
    create = shlex.split(next(line for line in script.replace("\\\n", " ").splitlines() if "rpk topic create" in line))
    assert create[create.index("-p") + 1] == str(kafka.partitions)
    assert create[create.index("-r") + 1] == str(kafka.replication_factor)
    configs = {create[i + 1] for i, arg in enumerate(create) if arg == "-c"}
    assert {f"retention.ms={kafka.retention_ms}", f"retention.bytes={kafka.retention_bytes}"} <= configs


def _localize(value: str, broker: str, aws: str, simulator_port: int) -> str:
    return (
        value.replace("redpanda:9092", broker)
        .replace("http://aws:5000", aws)
        .replace("simulator:8765", f"127.0.0.1:{simulator_port}")
    )


@pytest.fixture
def private_stack():
    with EmbeddedBroker() as broker, EmbeddedAws() as aws:
        yield broker.bootstrap_servers, aws.endpoint_url


def test_compose_services_run_as_written_against_the_embedded_stack(private_stack, tmp_path, monkeypatch):
    broker, aws = private_stack
    services = _merged_services()
    port = free_port()

    def service_env(name: str) -> dict[str, str]:
        declared = services[name].get("environment", {})
        env = {key: _localize(str(value), broker, aws, port) for key, value in declared.items()}
        # A private heartbeat directory: other tests may run the same services meanwhile.
        return {
            "PATH": "/usr/bin:/bin",
            "KAFKA_SESSION_TIMEOUT_MS": "2000",
            "CRYPTO_LIVE_HEARTBEAT_DIR": str(tmp_path),
            **env,
        }

    def command(name: str) -> list[str]:
        argv = [_localize(arg, broker, aws, port) for arg in services[name]["command"]]
        return ["127.0.0.1" if arg == "0.0.0.0" else str(port) if arg == "8765" else arg for arg in argv]

    # aws-init: provisions bucket, table and secret exactly as compose runs it.
    init = run_cli(command("aws-init"), service_env("aws-init"))
    assert init.returncode == 0, init.stderr
    producer_env = service_env("producer")
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, producer_env[key])
    region = producer_env["REGION"]
    s3 = boto3.client("s3", region_name=region)
    dynamo = boto3.client("dynamodb", region_name=region)
    secret = boto3.client("secretsmanager", region_name=region).get_secret_value(
        SecretId=producer_env["BINANCE_WEBSOCKET_SECRET"]
    )["SecretString"]
    assert secret.startswith("wss://stream.binance.com")

    processes = {
        name: start_cli(command(name), service_env(name))
        for name in ("simulator", "producer", "s3-sink", "dynamo-sink")
    }
    try:
        bucket, table = producer_env["S3_BUCKET"], producer_env["DYNAMO_TABLE_NAME"]
        wait_for(
            lambda: s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) > 0,
            timeout=90,
            what="an S3 object from the compose-configured s3-sink",
        )
        wait_for(
            lambda: dynamo.scan(TableName=table, Select="COUNT")["Count"] > 0,
            timeout=60,
            what="DynamoDB rows from the compose-configured dynamo-sink",
        )
        for name, process in processes.items():
            assert process.poll() is None, f"{name} exited: {process.communicate()[1][-2000:]}"
        for name in ("producer", "s3-sink", "dynamo-sink"):
            check = services[name]["healthcheck"]["test"]
            assert check[0] == "CMD" and check[1] == "crypto-live", check
            health = run_cli(check[2:], service_env(name))
            assert health.returncode == 0, f"{name}'s compose healthcheck fails: {health.stderr}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(60) for name, process in processes.items()}
    assert codes == {"simulator": 0, "producer": 0, "s3-sink": 0, "dynamo-sink": 0}

    # The README's look at the emulator's S3 and DynamoDB, as written: it brings its own
    # region and credentials (none come from this environment), and finds what the sinks wrote.
    looked = run_readme_block("emulator() {", {"http://localhost:5000": aws}, home=tmp_path)
    assert looked.returncode == 0, looked.stderr
    assert "batch_jsonl/dt=" in looked.stdout and ".jsonl" in looked.stdout
    assert '"symbol"' in looked.stdout and '"BTCUSDT"' in looked.stdout


def run_readme_block(start: str, replace: dict[str, str], *, home: Path) -> subprocess.CompletedProcess:
    """Run the README's sh block that starts with ``start`` under bash, its addresses replaced,
    with the venv's ``aws`` first on PATH; no AWS variable or profile of the test run reaches it."""
    text = (ROOT / "README.md").read_text()
    block = text[text.index(f"```sh\n{start}") + len("```sh\n") :]
    block = block[: block.index("```")]
    for old, new in replace.items():
        block = block.replace(old, new)
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block], env=env, capture_output=True, text=True, timeout=120
    )
