"""Each task role grants exactly what its service calls: recorded, not assumed.

The stack is deployed into moto; each service then runs as deployed (its task
definition's command and environment, only the broker and AWS endpoint swapped for local
ones and SASL left out, which Tansu does not speak), one after the other, through a full
cycle: the producer reads the secret and publishes; each sink checks its destination,
writes a batch, dead-letters a poison message, commits and stops on SIGTERM. Every AWS API
call is recorded inside the process (tests/aws_call_recorder.py) and every Kafka request
on the wire (tests/kafka_recorder.py). The recorded calls, mapped to IAM actions, must
equal the role's grants: nothing called that is not granted, nothing granted that is not
called. Topics are created up front, as the deploy guide does, so no service sends
CreateTopics and no role may create topics.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import boto3
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from crypto_live.embedded import EmbeddedBroker, free_port
from crypto_live.kafka import ensure_topics
from crypto_live.settings import KafkaSettings, load
from crypto_live.simulator import SimulatorOptions, SimulatorThread
from tests.cfn_template import (
    ROOT,
    SERVICES,
    Stack,
    allows,
    as_list,
    container_environments,
    deploy,
    granted,
    iam_policy_documents,
    load_template,
    resolve,
    role_policies,
    statements,
)
from tests.factories import ticker
from tests.helpers import wait_for
from tests.kafka_recorder import KafkaRequestLog

REGION = "ap-southeast-1"
ACCOUNT = "123456789012"  # moto's account
OBSERVER = "iam-test-observer"  # client.id of this test's own Kafka clients, left out of the records

TASK_ROLES = {"producer": "ProducerTaskRole", "s3-sink": "S3SinkTaskRole", "dynamo-sink": "DynamoSinkTaskRole"}
GROUP_VARIABLES = {"s3-sink": "S3_SINK_GROUP", "dynamo-sink": "DYNAMO_SINK_GROUP"}

#: The IAM action that authorizes an S3 operation (its name differs for these).
S3_ACTIONS = {
    "HeadBucket": "s3:ListBucket",
    "ListObjectsV2": "s3:ListBucket",
    "HeadObject": "s3:GetObject",
    "GetObject": "s3:GetObject",
    "PutObject": "s3:PutObject",
}

#: The kafka-cluster actions that authorize each Kafka API, as MSK maps them onto Kafka's
#: ACL operations (Kafka's "operations and resources on protocols" table): Connect for any
#: connection (ApiVersions, and the SASL handshake that MSK IAM adds), DESCRIBE topic =
#: DescribeTopic, WRITE topic = WriteData, IDEMPOTENT_WRITE cluster = WriteDataIdempotently,
#: READ topic = ReadData, READ group = AlterGroup, DESCRIBE group = DescribeGroup,
#: DESCRIBE_CONFIGS topic = DescribeTopicDynamicConfiguration, CREATE = CreateTopic.
KAFKA_ACTIONS = {
    "ApiVersions": {"Connect"},
    "SaslHandshake": {"Connect"},
    "SaslAuthenticate": {"Connect"},
    "Metadata": {"DescribeTopic"},
    "ListOffsets": {"DescribeTopic"},
    "OffsetForLeaderEpoch": {"DescribeTopic"},
    "Produce": {"WriteData"},
    "InitProducerId": {"WriteDataIdempotently"},
    "Fetch": {"ReadData"},
    "FindCoordinator": {"DescribeGroup"},
    "JoinGroup": {"AlterGroup"},
    "SyncGroup": {"AlterGroup"},
    "Heartbeat": {"AlterGroup"},
    "LeaveGroup": {"AlterGroup"},
    "OffsetCommit": {"AlterGroup", "ReadData"},
    "OffsetFetch": {"DescribeGroup", "DescribeTopic"},
    "DescribeGroups": {"DescribeGroup"},
    "DescribeConfigs": {"DescribeTopicDynamicConfiguration"},
    "DescribeCluster": {"DescribeCluster"},
    "CreateTopics": {"CreateTopic"},
    # KIP-714 client metrics: librdkafka asks only brokers that offer them. No MSK action
    # covers them and a refusal only turns the push off, so they need no grant.
    "GetTelemetrySubscriptions": set(),
    "PushTelemetry": set(),
}
CLUSTER_ACTIONS = {"Connect", "DescribeCluster", "WriteDataIdempotently"}
GROUP_ACTIONS = {"AlterGroup", "DescribeGroup"}


def aws_action(service: str, operation: str) -> str:
    if service == "s3":
        assert operation in S3_ACTIONS, f"s3 {operation}: add the IAM action that authorizes it to S3_ACTIONS"
        return S3_ACTIONS[operation]
    assert service in ("dynamodb", "secretsmanager"), f"{service} {operation}: a service the roles do not cover"
    return f"{service}:{operation}"


def kafka_actions(api: str) -> set[str]:
    assert api in KAFKA_ACTIONS, f"Kafka {api}: add the kafka-cluster actions that authorize it to KAFKA_ACTIONS"
    return {f"kafka-cluster:{action}" for action in KAFKA_ACTIONS[api]}


# --------------------------------------------------------------------------- static


def test_no_policy_in_the_template_grants_a_wildcard_action():
    template = load_template()
    documents = list(iam_policy_documents(template))
    assert len(documents) == 4  # the execution role and one task role per service
    for resource, document in documents:
        for statement in statements(document):
            assert statement["Effect"] == "Allow", f"{resource}: {statement}"
            for action in as_list(statement["Action"]):
                assert "*" not in action and "?" not in action, f"{resource} grants {action}"


def test_only_the_execution_role_has_a_resource_wildcard_and_only_where_iam_allows_no_other():
    template = load_template()
    for resource, document in iam_policy_documents(template):
        for statement in statements(document):
            if "*" in as_list(statement["Resource"]):
                assert resource == "TaskExecutionRole", f"{resource}: {statement}"
                # GetAuthorizationToken has no resource type: "*" is the only resource it takes.
                assert as_list(statement["Action"]) == ["ecr:GetAuthorizationToken"]


# --------------------------------------------------------------------------- recorded


@pytest.fixture(scope="module")
def recording_broker() -> Iterator[tuple[str, KafkaRequestLog]]:
    """A Tansu of its own whose advertised listener is the request log in front of it."""
    port = free_port()
    with KafkaRequestLog(port) as log, EmbeddedBroker(port, advertised_port=log.port):
        yield f"127.0.0.1:{log.port}", log


def _local(environment: Mapping[str, str], bootstrap: str, aws_env: Mapping[str, str], tmp: Path) -> dict[str, str]:
    """A deployed container environment, run here: the broker and AWS endpoint are local,
    SASL is off (Tansu has none), batches close after 1 s; everything else as deployed."""
    env = {key: value for key, value in environment.items() if key != "KAFKA_SASL_MECHANISM"}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        KAFKA_SECURITY_PROTOCOL="PLAINTEXT",
        KAFKA_SESSION_TIMEOUT_MS="2000",
        MAX_BATCH_TIMEOUT="1",
        CRYPTO_LIVE_HEARTBEAT_DIR=str(tmp),
        PATH="/usr/bin:/bin",
        **aws_env,
    )
    return env


def _observer(bootstrap: str, **config: Any) -> dict[str, Any]:
    return {"bootstrap.servers": bootstrap, "client.id": OBSERVER, **config}


def _count_messages(bootstrap: str, topic: str, partitions: int, wanted: int, timeout: float = 30.0) -> list[Any]:
    consumer = Consumer(_observer(bootstrap, **{"group.id": f"{OBSERVER}-{time.monotonic_ns()}"}))
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(messages) < wanted:
            assert time.monotonic() < deadline, f"timed out waiting for {wanted} messages on {topic}"
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                messages.append(message)
        return messages
    finally:
        consumer.close()


def _run_recorded(service: str, env: Mapping[str, str], tmp: Path, done: Any) -> list[dict[str, Any]]:
    """Run ``crypto-live SERVICE`` with its AWS calls recorded until ``done()``, then SIGTERM it."""
    calls_file = tmp / f"{service}-calls.json"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.aws_call_recorder", str(calls_file), service],
        cwd=ROOT,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: process.poll() is not None or done(), timeout=60, interval=0.1, what=f"{service} to do its job"
        )
        assert process.poll() is None, f"{service} exited early: {process.communicate()[1][-3000:]}"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, f"{service} exited with {process.returncode}: {stderr[-3000:]}"
    calls: list[dict[str, Any]] = json.loads(calls_file.read_text())
    return calls


@pytest.fixture(scope="module")
def recorded(recording_broker, aws_endpoint, tmp_path_factory):
    """Deploy the stack, then run each service as deployed; returns what each called and the stack."""
    bootstrap, request_log = recording_broker
    tmp = tmp_path_factory.mktemp("iam")
    aws_env = {"AWS_ENDPOINT_URL": aws_endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    s3 = boto3.client("s3", region_name=REGION)
    dynamodb = boto3.client("dynamodb", region_name=REGION)
    secrets = boto3.client("secretsmanager", region_name=REGION)
    with SimulatorThread(SimulatorOptions(symbols=5, interval=0.05)) as simulator:
        deployed = deploy(
            boto3.client("cloudformation", region_name=REGION),
            f"crypto-live-iam-{uuid.uuid4().hex[:8]}",
            {"WebsocketUrl": simulator.url()},
        )
        template = load_template()
        # moto's CloudFormation does not create Secrets Manager secrets: create the
        # template's own, resolved, so the producer reads what the stack would hold.
        secret_spec = resolve(
            template["Resources"]["WebsocketSecret"]["Properties"], Stack(deployed.parameters, {}, name=deployed.name)
        )
        secret_arn = secrets.create_secret(Name=secret_spec["Name"], SecretString=secret_spec["SecretString"])["ARN"]
        environments = container_environments(boto3.client("ecs", region_name=REGION), deployed)
        envs = {name: _local(environments[name], bootstrap, aws_env, tmp) for name in SERVICES}

        # The guide creates the topics before the first deploy; so does this test.
        kafka = load(
            KafkaSettings, envs["producer"] | {"KAFKA_TOPIC_PARTITIONS": deployed.parameters["TopicPartitions"]}
        )
        assert sorted(ensure_topics(kafka)) == sorted([kafka.topic, kafka.dlq_topic])
        request_log.take()
        partitions = kafka.partitions

        kafka_calls: dict[str, set[str]] = {}
        aws_calls: dict[str, list[dict[str, Any]]] = {}
        aws_calls["producer"] = _run_recorded(
            "producer",
            envs["producer"],
            tmp,
            lambda: bool(_count_messages(bootstrap, kafka.topic, partitions, 1)),
        )
        kafka_calls["producer"] = request_log.take(ignore_clients=[OBSERVER])

        # A message that is no event: each sink dead-letters it, so its producer path runs too.
        poison = Producer(_observer(bootstrap))
        poison.produce(kafka.topic, value=b"not an event", partition=0)
        poison.produce(kafka.topic, value=orjson.dumps(ticker(1)), key=b"BTCUSDT", partition=1)
        assert poison.flush(10) == 0

        bucket, prefix = environments["s3-sink"]["S3_BUCKET"], environments["s3-sink"]["S3_JSONL_DIR_PATH"]
        aws_calls["s3-sink"] = _run_recorded(
            "s3-sink",
            envs["s3-sink"],
            tmp,
            lambda: (
                s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/").get("KeyCount", 0) > 0
                and len(_count_messages(bootstrap, kafka.dlq_topic, partitions, 1)) >= 1
            ),
        )
        kafka_calls["s3-sink"] = request_log.take(ignore_clients=[OBSERVER])
        # A restart, as every deployment does: its first batch on a partition finds the
        # object before it in the event's hour (ticker(1)'s, written by the run above).
        stored_keys = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["KeyCount"]
        poison.produce(kafka.topic, value=orjson.dumps(ticker(2)), key=b"BTCUSDT", partition=1)
        assert poison.flush(10) == 0
        aws_calls["s3-sink"] += _run_recorded(
            "s3-sink",
            envs["s3-sink"],
            tmp,
            lambda: s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")["KeyCount"] > stored_keys,
        )
        kafka_calls["s3-sink"] |= request_log.take(ignore_clients=[OBSERVER])

        table = environments["dynamo-sink"]["DYNAMO_TABLE_NAME"]
        aws_calls["dynamo-sink"] = _run_recorded(
            "dynamo-sink",
            envs["dynamo-sink"],
            tmp,
            lambda: (
                dynamodb.scan(TableName=table, Select="COUNT")["Count"] > 0
                and len(_count_messages(bootstrap, kafka.dlq_topic, partitions, 2)) >= 2
            ),
        )
        kafka_calls["dynamo-sink"] = request_log.take(ignore_clients=[OBSERVER])

    table_arn = dynamodb.describe_table(TableName=table)["Table"]["TableArn"]
    stack = Stack(
        deployed.parameters,
        {name: spec["Type"] for name, spec in template["Parameters"].items()},
        physical_ids={**deployed.physical_ids, "WebsocketSecret": secret_arn},
        attributes={"ArchiveBucket.Arn": f"arn:aws:s3:::{bucket}", "EventsTable.Arn": table_arn},
        name=deployed.name,
    )
    policies = {service: resolve(role_policies(template, TASK_ROLES[service]), stack) for service in SERVICES}
    return {
        "aws": aws_calls,
        "kafka": kafka_calls,
        "policies": policies,
        "environments": environments,
        "parameters": deployed.parameters,
        "secret_arn": secret_arn,
    }


def _arn(call_service: str, name: str, recorded: Mapping[str, Any]) -> str:
    if call_service == "s3":
        return f"arn:aws:s3:::{name}"
    if call_service == "dynamodb":
        return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{name}"
    assert name in (recorded["environments"]["producer"]["BINANCE_WEBSOCKET_SECRET"], recorded["secret_arn"])
    return str(recorded["secret_arn"])


@pytest.mark.parametrize("service", SERVICES)
def test_the_task_role_grants_exactly_the_aws_calls_its_service_makes(recorded, service):
    calls = recorded["aws"][service]
    policies = recorded["policies"][service]
    called = {
        (aws_action(c["service"], c["operation"]), _arn(c["service"], r, recorded))
        for c in calls
        for r in c["resources"] or ["(no resource named)"]  # matches no grant: the test fails
    }
    assert called, f"{service} made no AWS call: the recording proves nothing"
    refused = sorted(pair for pair in called if not allows(policies, *pair))
    assert not refused, f"{service} calls what its role does not grant: {refused}"
    aws_granted = {a for a in granted(policies) if not a.startswith("kafka-cluster:")}
    never_called = aws_granted - {action for action, _ in called}
    assert not never_called, f"{service}'s role grants actions it never calls: {sorted(never_called)}"
    # Provisioning (crypto-live provision, DYNAMO_CREATE_TABLE=true) creates tables, buckets
    # and secrets; the deployed configuration never does.
    assert not {a for a, _ in called if ":Create" in a or ":UpdateTimeToLive" in a}


@pytest.mark.parametrize("service", SERVICES)
def test_the_task_role_grants_exactly_the_kafka_actions_its_service_needs(recorded, service):
    apis = recorded["kafka"][service]
    assert {"ApiVersions", "Metadata"} <= apis, f"{service}'s Kafka requests were not recorded: {apis}"
    needed = set().union(*(kafka_actions(api) for api in apis))
    policies = recorded["policies"][service]
    kafka_granted = {a for a in granted(policies) if a.startswith("kafka-cluster:")}
    assert needed == kafka_granted, (
        f"{service} sends {sorted(apis)}: it needs {sorted(needed)}, its role grants {sorted(kafka_granted)}"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_kafka_grants_name_only_the_cluster_topics_and_group_the_service_uses(recorded, service):
    env = recorded["environments"][service]
    cluster = recorded["parameters"]["MskClusterArn"]

    def arn(kind: str, name: str) -> str:
        return cluster.replace(":cluster/", f":{kind}/", 1) + f"/{name}"

    topic, dlq = arn("topic", env["KAFKA_TOPIC"]), arn("topic", env["KAFKA_DLQ_TOPIC"])
    group = arn("group", env[GROUP_VARIABLES[service]]) if service in GROUP_VARIABLES else None
    # The producer writes events and dead letters; a sink reads events and writes dead letters.
    writes = [topic, dlq] if service == "producer" else [dlq]
    reads = [] if service == "producer" else [topic]
    expected = {("kafka-cluster:DescribeTopic", t) for t in (topic, dlq)}
    if service != "producer":  # Quix reads the configs of the topics it uses
        expected |= {("kafka-cluster:DescribeTopicDynamicConfiguration", t) for t in (topic, dlq)}
    expected |= {("kafka-cluster:WriteData", t) for t in writes} | {("kafka-cluster:ReadData", t) for t in reads}
    expected |= {(f"kafka-cluster:{a}", cluster) for a in ("Connect", "WriteDataIdempotently")}
    if group is not None:
        expected |= {(f"kafka-cluster:{a}", group) for a in GROUP_ACTIONS}
    actual = {
        (action, resource)
        for policy in recorded["policies"][service]
        for statement in statements(policy)
        for action in as_list(statement["Action"])
        if action.startswith("kafka-cluster:")
        for resource in as_list(statement["Resource"])
    }
    assert actual == expected
    for action, resource in actual:
        short = action.split(":", 1)[1]
        kind = "cluster" if short in CLUSTER_ACTIONS else "group" if short in GROUP_ACTIONS else "topic"
        assert f":{kind}/" in resource, f"{action} granted on {resource}, which is no {kind}"
