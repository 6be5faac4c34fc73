"""Shared fixtures: a real Kafka-protocol broker and moto's server, on free loopback ports.

Set KAFKA_BOOTSTRAP_SERVERS to run the suite against an external broker (for example
Redpanda from docker-compose.yml) instead of the embedded Tansu; set AWS_ENDPOINT_URL to
use an already running AWS emulator instead of starting moto.
"""

from __future__ import annotations

import os
import uuid
import warnings

import pytest

from crypto_live.embedded import EmbeddedAws, EmbeddedBroker, emulator_environment
from crypto_live.logs import silence_authlib_httpx_warning
from tests import figures

# quixstreams pulls in authlib, which warns about its own dependency when imported: import
# it once here, with that warning off, so it does not show in every run's summary.
with warnings.catch_warnings():
    silence_authlib_httpx_warning()
    import quixstreams  # noqa: F401

# The suite configures services through the environment; never let the developer's own
# AWS profile or a real account leak into a test.
for _name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "PIPELINE_IAM_USER", "AWS_SESSION_TOKEN"):
    os.environ.pop(_name, None)

#: Tansu holds a group's first assignment for session.timeout.ms / 2; keep it short.
TEST_SESSION_TIMEOUT_MS = "2000"


@pytest.fixture(scope="session")
def broker():
    """Bootstrap servers of a running broker (external if KAFKA_BOOTSTRAP_SERVERS is set)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    with EmbeddedBroker() as embedded:
        yield embedded.bootstrap_servers


@pytest.fixture(scope="session")
def aws_endpoint():
    """Endpoint of moto's server (external if AWS_ENDPOINT_URL is set), exported for boto3."""
    external = os.environ.get("AWS_ENDPOINT_URL")
    mp = pytest.MonkeyPatch()
    if external:
        mp.setenv("AWS_ACCESS_KEY_ID", os.environ.get("AWS_ACCESS_KEY_ID", "testing"))
        mp.setenv("AWS_SECRET_ACCESS_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))
        yield external
        mp.undo()
        return
    with EmbeddedAws() as aws:
        for key, value in emulator_environment(aws.endpoint_url).items():
            mp.setenv(key, value)
        yield aws.endpoint_url
    mp.undo()


@pytest.fixture
def unique():
    """A short unique suffix so tests sharing a broker or emulator never see each other's data."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def kafka_env(broker, unique):
    """Environment for a service on its own topic pair and consumer groups."""
    return {
        "KAFKA_BOOTSTRAP_SERVERS": broker,
        "KAFKA_TOPIC": f"miniticker-{unique}",
        "KAFKA_SESSION_TIMEOUT_MS": TEST_SESSION_TIMEOUT_MS,
        "S3_SINK_GROUP": f"s3-sink-{unique}",
        "DYNAMO_SINK_GROUP": f"dynamo-sink-{unique}",
    }


@pytest.fixture
def aws_env(aws_endpoint):
    return {**emulator_environment(aws_endpoint), "REGION": "ap-southeast-1"}


# --------------------------------------------------------------------------- fault figures


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):  # the controller (or a run without xdist)
        figures.reset()


def pytest_terminal_summary(terminalreporter):
    lines = figures.table()
    if lines:
        terminalreporter.section(f"fault figures ({figures.FIGURES_PATH})")
        for line in lines:
            terminalreporter.write_line(line)


def pytest_collection_modifyitems(items):
    """Long cases first, so that pytest-xdist's workers do not end the run waiting on one."""
    items.sort(key=lambda item: item.get_closest_marker("long") is None)
