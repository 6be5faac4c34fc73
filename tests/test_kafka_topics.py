"""Topic set-up: missing topics are created with explicit configs, existing ones left alone."""

from __future__ import annotations

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from crypto_live.errors import TopicSetupError
from crypto_live.kafka import ensure_topics, topic_specs
from crypto_live.settings import KafkaSettings, load


def _describe(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(10)
    return {name: entry.value for name, entry in configs.items()}


def test_topic_specs_carry_partitions_replication_and_retention():
    kafka = load(
        KafkaSettings, {"KAFKA_TOPIC": "ticks", "KAFKA_TOPIC_PARTITIONS": "6", "KAFKA_TOPIC_RETENTION_MS": "3600000"}
    )
    main, dlq = topic_specs(kafka)
    assert (main.name, dlq.name) == ("ticks", "ticks.dlq")
    assert main.partitions == dlq.partitions == 6
    assert main.config["retention.ms"] == "3600000" and main.config["retention.bytes"] == "-1"


def test_missing_topics_are_created_with_explicit_configs(kafka_env):
    kafka = load(KafkaSettings, {**kafka_env, "KAFKA_TOPIC_PARTITIONS": "2", "KAFKA_TOPIC_RETENTION_MS": "7200000"})
    assert sorted(ensure_topics(kafka)) == sorted([kafka.topic, kafka.dlq_topic])
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    topics = admin.list_topics(timeout=10).topics
    assert len(topics[kafka.topic].partitions) == 2
    config = _describe(kafka.bootstrap_servers, kafka.topic)
    assert config["retention.ms"] == "7200000" and config["retention.bytes"] == "-1"
    assert ensure_topics(kafka) == []  # second call: nothing to do


def test_existing_topic_is_left_alone(kafka_env):
    kafka = load(KafkaSettings, {**kafka_env, "KAFKA_TOPIC_PARTITIONS": "4"})
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap_servers})
    admin.create_topics([NewTopic(kafka.topic, 1, 1, config={"retention.ms": "60000", "retention.bytes": "-1"})])[
        kafka.topic
    ].result(10)
    assert ensure_topics(kafka) == [kafka.dlq_topic]
    assert len(admin.list_topics(timeout=10).topics[kafka.topic].partitions) == 1
    assert _describe(kafka.bootstrap_servers, kafka.topic)["retention.ms"] == "60000"


def test_unreachable_broker_is_a_clear_error_naming_it():
    kafka = load(KafkaSettings, {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"})
    with pytest.raises(TopicSetupError, match=r"Kafka at 127\.0\.0\.1:1 did not answer"):
        ensure_topics(kafka, timeout=1.5)
