"""Each service as the ECS task runs it: UID 10001, nothing writable but the scratch directory.

The task definitions give every container a read-only root filesystem and one writable
bind-mount volume, ``/scratch``, where TMPDIR (Quix's state directory) and the heartbeat
go (tests/test_fargate_rules.py checks the template and the image say so). Here each
service runs as UID 10001 in a working directory it cannot write, with HOME there too, and
TMPDIR and CRYPTO_LIVE_HEARTBEAT_DIR set as the template sets them, on a scratch directory
of its own: it starts, its heartbeat passes `crypto-live healthcheck`, and SIGTERM stops it
with exit 0. A write anywhere else fails with EACCES, so the service would not start or
would not stop cleanly.

The child keeps CAP_DAC_READ_SEARCH, which lets it read (never write) any file: this
machine's Python lives under /root (mode 0700); the image's lives in /opt.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from crypto_live.health import heartbeat_path
from crypto_live.simulator import SimulatorOptions, SimulatorThread
from tests.cfn_template import load_template
from tests.helpers import cli_env, wait_for

TASK_UID = 10001
REGION = "ap-southeast-1"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to run as UID 10001"
)


def as_task_user(argv: list[str]) -> list[str]:
    return [
        "setpriv",
        f"--reuid={TASK_UID}",
        f"--regid={TASK_UID}",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        *argv,
    ]


def template_scratch(service: str) -> dict[str, str]:
    """TMPDIR and CRYPTO_LIVE_HEARTBEAT_DIR as the service's task definition sets them."""
    for resource in load_template()["Resources"].values():
        if resource["Type"] != "AWS::ECS::TaskDefinition":
            continue
        (container,) = resource["Properties"]["ContainerDefinitions"]
        if container["Name"] == service:
            env = {e["Name"]: e["Value"] for e in container["Environment"]}
            return {name: env[name] for name in ("TMPDIR", "CRYPTO_LIVE_HEARTBEAT_DIR")}
    raise AssertionError(f"no task definition runs {service}")


@pytest.fixture
def task_dirs(tmp_path):
    """A working directory UID 10001 cannot write, and a scratch directory it owns."""
    tmp_path.chmod(0o755)
    work, scratch = tmp_path / "work", tmp_path / "scratch"
    work.mkdir(mode=0o555)
    scratch.mkdir(mode=0o755)
    os.chown(scratch, TASK_UID, TASK_UID)
    yield work, scratch
    work.chmod(0o755)


@pytest.mark.parametrize("service", ["producer", "s3-sink", "dynamo-sink"])
def test_each_service_runs_as_uid_10001_writing_only_its_scratch_directory(
    service, kafka_env, aws_env, unique, task_dirs
):
    work, scratch = task_dirs
    scratch_env = template_scratch(service)
    assert set(scratch_env.values()) == {"/scratch"}  # one directory, mounted there on ECS
    bucket = f"task-user-{unique}"
    boto3.client("s3", region_name=REGION).create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": REGION}
    )
    env = cli_env(
        kafka_env,
        aws_env,
        {
            "S3_BUCKET": bucket,
            "DYNAMO_TABLE_NAME": f"task-user-{unique}",
            "DYNAMO_CREATE_TABLE": "true",
            "HOME": str(work),
            "PYTHONDONTWRITEBYTECODE": "1",  # as the image sets it
            **{name: str(scratch) for name in scratch_env},
        },
    )
    with SimulatorThread(SimulatorOptions(symbols=5, interval=0.1)) as sim:
        env["BINANCE_WEBSOCKET_URL"] = sim.url()
        child = subprocess.Popen(
            as_task_user([sys.executable, "-m", "crypto_live", service]),
            cwd=work,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            beat = heartbeat_path(scratch, service)
            wait_for(lambda: child.poll() is not None or beat.exists(), 90, what=f"{service}'s heartbeat")
            assert child.poll() is None, child.communicate()[0][-3000:]
            health = subprocess.run(
                as_task_user([sys.executable, "-m", "crypto_live", "healthcheck", service]),
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert health.returncode == 0, health.stdout + health.stderr
            assert beat.stat().st_uid == TASK_UID
            child.send_signal(signal.SIGTERM)
            output, _ = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert child.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert not any(Path(work).iterdir())  # nothing could be written, and nothing was
