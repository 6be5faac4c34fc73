"""Kafka connection security: the settings are checked at start-up, naming the variable
at fault, and the one connection configuration reaches every Kafka client crypto-live
builds. Offline: the clients are recorded where they are constructed, never connected
(tests/test_msk_iam.py signs in to a real TLS listener)."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import pytest
import quixstreams.models.topics.admin
from quixstreams.sinks import BatchingSink, SinkBatch

import crypto_live.kafka
import crypto_live.observer
import processors.stream
import producer.publisher
from crypto_live.cli import _env_epilog
from crypto_live.kafka import ensure_topics
from crypto_live.observer import Observer
from crypto_live.settings import (
    SERVICES,
    DynamoSinkSettings,
    KafkaSettings,
    ProducerSettings,
    S3SinkSettings,
    SettingsError,
    describe,
    load,
)
from processors import dynamo_sink, s3_sink
from producer.publisher import Publisher
from producer.stats import Stats
from tests.helpers import cli_env, run_cli
from tests.sasl_listener import self_signed_certificate

SCRAM_ENV = {
    "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "KAFKA_SASL_USERNAME": "pipeline",
    "KAFKA_SASL_PASSWORD": "pa55-word-x",
}
MSK_IAM_ENV = {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "AWS_MSK_IAM", "REGION": "eu-west-1"}


@pytest.fixture
def ca_file(tmp_path) -> Path:
    return self_signed_certificate(tmp_path)[0]


@pytest.fixture
def fake_aws(tmp_path, monkeypatch):
    """Fake environment credentials, and none of the developer's own AWS set-up."""
    (tmp_path / "aws-config").write_text("")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFAKEEXAMPLE00001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fake/secret")


# ------------------------------------------------------------------ settings

# (environment, variable at fault, words the error must contain); "{ca}" is a real CA bundle.
BAD_COMBINATIONS = [
    ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SASL_MECHANISM", "SCRAM-SHA-512 or AWS_MSK_IAM when"),
    ({"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": " "}, "KAFKA_SASL_MECHANISM", "SASL_SSL"),
    ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_MECHANISM": "AWS_MSK_IAM"}, "KAFKA_SASL_MECHANISM", "=SSL"),
    ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL", "one of PLAINTEXT, SSL, SASL_SSL"),
    ({**MSK_IAM_ENV, "KAFKA_SASL_MECHANISM": "PLAIN"}, "KAFKA_SASL_MECHANISM", "SCRAM-SHA-512, AWS_MSK_IAM"),
    ({**SCRAM_ENV, "KAFKA_SASL_USERNAME": ""}, "KAFKA_SASL_USERNAME", "a value when KAFKA_SASL_MECHANISM=SCRAM"),
    ({**SCRAM_ENV, "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD", "a value when KAFKA_SASL_MECHANISM=SCRAM"),
    ({**MSK_IAM_ENV, "KAFKA_SASL_USERNAME": "pipeline"}, "KAFKA_SASL_USERNAME", "MSK IAM signs with AWS"),
    ({**MSK_IAM_ENV, "KAFKA_SASL_PASSWORD": "pa55-word-x"}, "KAFKA_SASL_PASSWORD", "MSK IAM signs with AWS"),
    ({"KAFKA_SASL_PASSWORD": "pa55-word-x"}, "KAFKA_SASL_PASSWORD", "no value unless KAFKA_SASL_MECHANISM"),
    ({"KAFKA_SSL_CA_LOCATION": "{ca}"}, "KAFKA_SSL_CA_LOCATION", "no value when KAFKA_SECURITY_PROTOCOL=PLAINTEXT"),
    ({**MSK_IAM_ENV, "KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"}, "KAFKA_SSL_CA_LOCATION", "readable PEM file"),
    ({**MSK_IAM_ENV, "KAFKA_SSL_CA_LOCATION": "{dir}"}, "KAFKA_SSL_CA_LOCATION", "readable PEM file"),
    ({**MSK_IAM_ENV, "KAFKA_SSL_CA_LOCATION": "{key}"}, "KAFKA_SSL_CA_LOCATION", "no BEGIN CERTIFICATE"),
    ({**MSK_IAM_ENV, "REGION": "Ireland"}, "REGION", "AWS region"),
]


@pytest.mark.parametrize(("environ", "variable", "expected"), BAD_COMBINATIONS)
def test_bad_security_settings_are_refused_naming_the_variable_at_fault(environ, variable, expected, ca_file):
    paths = {"ca": str(ca_file), "dir": str(ca_file.parent), "key": str(ca_file.parent / "listener-key.pem")}
    environ = {name: value.format(**paths) for name, value in environ.items()}
    for cls in SERVICES.values():
        with pytest.raises(SettingsError) as info:
            load(cls, environ)
        message = str(info.value)
        assert message.startswith(f"{variable}="), message
        assert expected in message and "\n" not in message
        assert "pa55-word-x" not in message


def test_valid_security_settings_load_in_any_letter_case(ca_file):
    ssl = load(KafkaSettings, {"KAFKA_SECURITY_PROTOCOL": "ssl", "KAFKA_SSL_CA_LOCATION": str(ca_file)})
    assert (ssl.security_protocol, ssl.sasl_mechanism, ssl.ssl_ca_location) == ("SSL", None, str(ca_file))
    scram = load(KafkaSettings, SCRAM_ENV)
    assert (scram.sasl_mechanism, scram.sasl_username) == ("SCRAM-SHA-512", "pipeline")
    assert scram.sasl_password == "pa55-word-x"
    iam = load(ProducerSettings, {**MSK_IAM_ENV, "KAFKA_SASL_MECHANISM": "aws_msk_iam", "PIPELINE_IAM_USER": "ops"})
    assert (iam.kafka.security_protocol, iam.kafka.sasl_mechanism) == ("SASL_SSL", "AWS_MSK_IAM")
    assert iam.kafka.aws == iam.aws and iam.kafka.aws.profile == "ops" and iam.kafka.aws.region == "eu-west-1"
    assert load(KafkaSettings, {}).security_protocol == "PLAINTEXT"  # local brokers stay as they were
    assert "pa55-word-x" not in repr(scram)


def test_config_masks_the_password_and_lists_each_variable_once():
    rows = list(describe(load(S3SinkSettings, SCRAM_ENV), SCRAM_ENV))
    names = [name for name, _, _ in rows]
    assert len(names) == len(set(names)) and "REGION" in names and "PIPELINE_IAM_USER" in names
    assert ("KAFKA_SASL_PASSWORD", "***", "env") in rows
    epilog = _env_epilog([ProducerSettings])
    assert epilog.count("\n  REGION ") == 1 and epilog.count("\n  KAFKA_SASL_PASSWORD ") == 1


def test_a_bad_combination_stops_the_command_with_exit_status_2():
    result = run_cli(["config"], cli_env({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "crypto-live config: configuration error: KAFKA_SASL_MECHANISM='' is invalid: "
        "expected SCRAM-SHA-512 or AWS_MSK_IAM when KAFKA_SECURITY_PROTOCOL=SASL_SSL"
    )
    shown = run_cli(["config", "producer"], cli_env(SCRAM_ENV))
    assert shown.returncode == 0, shown.stderr
    assert "KAFKA_SASL_PASSWORD=***\n" in shown.stdout and "pa55-word-x" not in shown.stdout


# ------------------------------------------------------------------ every client

SECURITY_KEYS = ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.location", "oauth_cb")


def security_of(config: dict[str, Any]) -> dict[str, Any]:
    """The security settings a librdkafka configuration carries; an oauth_cb is replaced
    by the host its token is signed for (it is called, as librdkafka would)."""
    found = {key: config[key] for key in SECURITY_KEYS if key in config}
    found["security.protocol"] = str(found.get("security.protocol", "")).lower()  # Quix lower-cases it
    if "oauth_cb" in found:
        token, _ = found["oauth_cb"]("")
        found["oauth_cb"] = urlsplit(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()).hostname
    return found


def expected_security(setup: str, ca: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(environment, what every client's configuration must carry) of a security set-up."""
    return {
        "plaintext": ({}, {"security.protocol": "plaintext"}),
        "ssl": (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": ca},
            {"security.protocol": "ssl", "ssl.ca.location": ca},
        ),
        "scram": (
            SCRAM_ENV,
            {
                "security.protocol": "sasl_ssl",
                "sasl.mechanism": "SCRAM-SHA-512",
                "sasl.username": "pipeline",
                "sasl.password": "pa55-word-x",
            },
        ),
        "msk-iam": (
            {**MSK_IAM_ENV, "KAFKA_SSL_CA_LOCATION": ca},
            {
                "security.protocol": "sasl_ssl",
                "sasl.mechanism": "OAUTHBEARER",
                "ssl.ca.location": ca,
                "oauth_cb": "kafka.eu-west-1.amazonaws.com",
            },
        ),
    }[setup]


class _Recorded(Exception):
    """Raised by a recording client to stop a build once its configuration is known."""


class _Sink(BatchingSink):
    def write(self, batch: SinkBatch) -> None:
        pass


@pytest.fixture
def recorded_clients(monkeypatch) -> dict[str, dict[str, Any]]:
    """Every Kafka client's configuration, by client, as it is constructed."""
    configs: dict[str, dict[str, Any]] = {}

    def record_producer(config: dict[str, Any]) -> object:
        configs["producer"] = config
        return object()

    class TopicAdmin:  # ensure_topics' admin: both topics exist already
        def __init__(self, config: dict[str, Any]):
            configs["topic admin"] = config

        def poll(self, timeout: float) -> int:
            return 0

        def list_topics(self, timeout: float) -> SimpleNamespace:
            return SimpleNamespace(topics={"binance.miniticker": None, "binance.miniticker.dlq": None})

    def quix_admin(config: dict[str, Any]) -> None:
        configs["quix admin"] = config
        raise _Recorded  # the application is built up to its first topic look-up

    class Application(processors.stream.SinkApplication):
        def __init__(self, **kwargs: Any):
            super().__init__(**kwargs)
            configs["quix consumer"] = self._consumer._consumer_config
            configs["quix producer"] = self._producer._producer._producer_config

    def observer_consumer(config: dict[str, Any]) -> object:
        configs[f"observer {config['group.id']}"] = config
        return object()

    monkeypatch.setattr(producer.publisher, "Producer", record_producer)
    monkeypatch.setattr(crypto_live.kafka, "AdminClient", TopicAdmin)
    monkeypatch.setattr(quixstreams.models.topics.admin, "AdminClient", quix_admin)
    monkeypatch.setattr(processors.stream, "SinkApplication", Application)
    monkeypatch.setattr(crypto_live.observer, "Consumer", observer_consumer)
    return configs


@pytest.mark.parametrize("setup", ["plaintext", "ssl", "scram", "msk-iam"])
def test_every_kafka_client_carries_the_chosen_security(setup, ca_file, fake_aws, recorded_clients, tmp_path):
    environ, expected = expected_security(setup, str(ca_file))
    seen: dict[str, dict[str, Any]] = {}

    async def start_publisher() -> None:
        Publisher(load(ProducerSettings, environ).kafka, Stats())

    asyncio.run(start_publisher())
    seen["producer"] = recorded_clients.pop("producer")
    assert ensure_topics(load(KafkaSettings, environ)) == []  # the producer's TopicKeeper, provisioning
    seen["topic admin"] = recorded_clients.pop("topic admin")

    for name, module, cls in (("s3-sink", s3_sink, S3SinkSettings), ("dynamo-sink", dynamo_sink, DynamoSinkSettings)):
        with pytest.raises(_Recorded):
            module.application(load(cls, environ), _Sink(), tmp_path)
        for client in ("topic admin", "quix consumer", "quix producer", "quix admin"):
            seen[f"{name} {client}"] = recorded_clients.pop(client)

    Observer(load(S3SinkSettings, environ), load(DynamoSinkSettings, environ))
    seen["observer s3"] = recorded_clients.pop("observer crypto-live-s3-sink")
    seen["observer dynamo"] = recorded_clients.pop("observer crypto-live-dynamo-sink")

    assert recorded_clients == {}  # no client was built that this test does not check
    assert {client: security_of(config) for client, config in seen.items()} == dict.fromkeys(seen, expected)
