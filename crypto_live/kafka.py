"""Kafka connection settings and topic set-up shared by the producer and the sinks.

:func:`client_config` is the one connection configuration: every client of the bus (the
producer's Producer, the sinks' Quix Applications, every AdminClient, the Observer's
consumers) is built from it, so KAFKA_SECURITY_PROTOCOL and the SASL settings reach all
of them alike.

With MSK IAM, librdkafka asks ``oauth_cb`` for a token through the client's poll queue
(confluent-kafka runs no background thread for it): a client that does not poll anyway
must call ``poll(0)`` once before it waits on the broker, and now and then while it lives.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from crypto_live import msk_iam
from crypto_live.errors import TopicSetupError
from crypto_live.settings import MSK_IAM, SCRAM, KafkaSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TopicSpec:
    """A topic as crypto-live creates it when missing. Configs are always explicit:
    brokers differ in defaults, and some (Tansu) only report configs a topic was
    created with, which Quix Streams reads back."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str]


def topic_specs(kafka: KafkaSettings) -> list[TopicSpec]:
    """The event topic and its dead-letter topic."""
    config = {
        "retention.ms": str(kafka.retention_ms),
        "retention.bytes": str(kafka.retention_bytes),
        "cleanup.policy": "delete",
    }
    return [
        TopicSpec(kafka.topic, kafka.partitions, kafka.replication_factor, config),
        TopicSpec(kafka.dlq_topic, kafka.partitions, kafka.replication_factor, dict(config)),
    ]


def client_config(kafka: KafkaSettings) -> dict[str, Any]:
    """librdkafka's connection settings, common to every client of the bus.

    MSK IAM is SASL_SSL with OAUTHBEARER tokens from :func:`crypto_live.msk_iam.oauth_callback`;
    an unknown PIPELINE_IAM_USER profile raises SettingsError here, before any connection.
    """
    config: dict[str, Any] = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "security.protocol": kafka.security_protocol,
    }
    if kafka.ssl_ca_location is not None:
        config["ssl.ca.location"] = kafka.ssl_ca_location
    if kafka.sasl_mechanism == SCRAM:
        config.update(
            {"sasl.mechanism": SCRAM, "sasl.username": kafka.sasl_username, "sasl.password": kafka.sasl_password}
        )
    elif kafka.sasl_mechanism == MSK_IAM:
        config.update({"sasl.mechanism": "OAUTHBEARER", "oauth_cb": msk_iam.oauth_callback(kafka.aws)})
    return config


def ensure_topics(kafka: KafkaSettings, *, timeout: float = 60.0) -> list[str]:
    """Create whichever of the event and dead-letter topics are missing.

    Existing topics are left exactly as they are. Waits up to ``timeout`` seconds for
    the brokers to answer (a broker still starting is not an error) and returns the
    names of the topics it created.
    """
    # librdkafka writes to stderr unless given a logger: through Python logging its lines
    # follow LOG_FORMAT like every other line.
    admin = AdminClient({**client_config(kafka), "logger": logging.getLogger("crypto_live.kafka.librdkafka")})
    deadline = time.monotonic() + timeout
    specs = topic_specs(kafka)
    while True:
        admin.poll(0)  # serves oauth_cb (MSK IAM): the admin client cannot connect before it has a token
        try:
            existing = set(admin.list_topics(timeout=min(5.0, max(0.1, deadline - time.monotonic()))).topics)
            break
        except KafkaException as exc:
            if time.monotonic() >= deadline:
                raise TopicSetupError(
                    f"Kafka at {kafka.bootstrap_servers} did not answer within {timeout:.0f} s: {exc}"
                ) from None
            time.sleep(0.5)
    missing = [spec for spec in specs if spec.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication_factor, config=s.config)
            for s in missing
        ],
        operation_timeout=max(1.0, deadline - time.monotonic()),
    )
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
            log.info("created topic %s", name)
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue  # another service created it first
            raise TopicSetupError(f"could not create topic {name!r}: {error.str()}") from None
    return created
