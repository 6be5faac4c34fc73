"""The compose files and the Dockerfile pass the linters that run offline."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = ["docker-compose.yml", "docker-compose.simulate.yml"]


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return found


@pytest.mark.parametrize("compose_file", COMPOSE_FILES)
def test_compose_file_validates_against_the_compose_spec(compose_file):
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(ROOT / compose_file)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_spec_check_would_catch_a_broken_file(tmp_path):
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  producer:\n    restart: sometimes\n    ports: 8080\n")
    result = subprocess.run(
        [_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0


def test_dockerfile_passes_hadolint():
    result = subprocess.run([_tool("hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    joined = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def test_image_is_multi_stage_and_installs_the_tested_versions():
    steps = _instructions()
    bases = [args for op, args in steps if op == "FROM"]
    assert len(bases) == 2 and all("slim" in base for base in bases), bases
    assert any(op == "RUN" and "--constraint constraints.txt" in args for op, args in steps)
    final_stage = steps[[i for i, (op, _) in enumerate(steps) if op == "FROM"][-1] :]
    assert [op for op, _ in final_stage if op == "COPY"] == ["COPY"]  # only the built environment
    assert "--from=build" in next(args for op, args in final_stage if op == "COPY")


def test_image_runs_as_a_non_root_user_with_an_exec_form_entrypoint():
    steps = _instructions()
    user = [args for op, args in steps if op == "USER"][-1]
    assert user not in {"0", "root"}
    assert [args for op, args in steps if op == "ENTRYPOINT"] == ['["crypto-live"]']  # SIGTERM reaches Python


def test_image_bakes_in_no_credentials():
    env = " ".join(args for op, args in _instructions() if op in {"ENV", "ARG"})
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "KAFKA_SASL_PASSWORD"):
        assert name not in env
