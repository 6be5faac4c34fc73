"""What Redpanda and Compose do with our compose files, which no Docker engine runs here.

Each rule comes from the source cited beside it. The redpanda-init script itself runs
against the test broker, with a stand-in for the three rpk commands it uses (rpk does not
install here): the topics come out as the services expect, and a second run changes nothing.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from confluent_kafka.admin import AdminClient, ConfigResource

from crypto_live.settings import KafkaSettings, load

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.simulate.yml")
REDPANDA_IMAGE = "redpandadata/redpanda:"


def compose(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def all_services() -> list[tuple[str, str, dict]]:
    return [(file, name, service) for file in COMPOSE_FILES for name, service in compose(file)["services"].items()]


def bind_mounts(service: dict) -> list[tuple[str, str, str]]:
    """(source, target, mode) of each host path a service mounts (short syntax)."""
    mounts = []
    for volume in service.get("volumes", []):
        source, target, *mode = volume.split(":")
        if source.startswith((".", "/")):
            mounts.append((source, target, mode[0] if mode else "rw"))
    return mounts


def test_nothing_is_bind_mounted_alone_where_rpk_rewrites_it():
    # rpk redpanda start rewrites /etc/redpanda/redpanda.yaml through a temp file in
    # /etc/redpanda renamed over it; a file bind-mounted alone makes that fail ("unable to
    # chown temp config file", "device or resource busy"): redpanda-data/redpanda #22764,
    # #15902, #6640.
    for file, name, service in all_services():
        if not service.get("image", "").startswith(REDPANDA_IMAGE):
            continue
        for source, target, mode in bind_mounts(service):
            if (ROOT / source).is_file():
                assert not target.startswith("/etc/redpanda/"), f"{file} {name}: {source} mounted at {target}"
                assert mode == "ro", f"{file} {name}: {source} is mounted writable"


def test_the_rule_sees_the_broker():
    assert [name for _, name, s in all_services() if s.get("image", "").startswith(REDPANDA_IMAGE)] == [
        "redpanda",
        "redpanda-init",
    ]


def test_the_broker_starts_from_a_copy_of_redpanda_yaml():
    redpanda = compose("docker-compose.yml")["services"]["redpanda"]
    script = redpanda["command"][0]
    (seed,) = [target for source, target, _ in bind_mounts(redpanda) if source == "./redpanda.yaml"]
    assert f"cp {seed} /etc/redpanda/redpanda.yaml" in script
    assert "exec rpk redpanda start" in script  # rpk is PID 1's program: it gets the stop signal


def test_each_image_is_built_once_and_never_pulled_by_the_services_that_reuse_it():
    # Services that build one tag in parallel race on it ("image ... already exists":
    # desec-io/desec-stack #1233, openradx/adit #279); a service naming a local image without
    # building it must not pull it (docker/compose #8805): pull_policy never.
    builds = Counter(service["image"] for _, _, service in all_services() if "build" in service)
    assert builds and set(builds.values()) == {1}, builds
    for file, name, service in all_services():
        if service.get("image") in builds and "build" not in service:
            assert service.get("pull_policy") == "never", f"{file} {name}"
    base = compose("docker-compose.yml")
    anchors = [s for s in base["services"].values() if s.get("image") in builds and "build" not in s]
    assert len(anchors) >= 3  # producer, s3-sink, dynamo-sink


#: Redpanda's broker (node) properties, the ones redpanda.yaml's `redpanda:` section may hold
#: (docs.redpanda.com, "Broker Configuration Properties"); a cluster property there is read only
#: on a cluster's first start without .bootstrap.yaml ("Cluster Configuration Properties").
BROKER_PROPERTIES = {
    "data_directory",
    "developer_mode",
    "node_id",
    "seed_servers",
    "empty_seed_starts_cluster",
    "rack",
    "kafka_api",
    "advertised_kafka_api",
    "kafka_api_tls",
    "rpc_server",
    "advertised_rpc_api",
    "rpc_server_tls",
    "admin",
    "admin_api_tls",
    "admin_api_doc_dir",
    "crash_loop_limit",
}
#: Cluster properties we need, and the value each must have.
CLUSTER_PROPERTIES = {"auto_create_topics_enabled": "false"}


def test_each_redpanda_property_is_set_where_it_holds():
    node = yaml.safe_load((ROOT / "redpanda.yaml").read_text())["redpanda"]
    assert set(node) <= BROKER_PROPERTIES, sorted(set(node) - BROKER_PROPERTIES)
    script = compose("docker-compose.yml")["services"]["redpanda-init"]["command"][0]
    for name, value in CLUSTER_PROPERTIES.items():
        # --mode dev-container sets auto_create_topics_enabled to true (rpk redpanda start --mode help).
        assert f"rpk cluster config set {name} {value}" in script


#: The three rpk commands redpanda-init uses, against a Kafka broker, for the test: topic
#: describe (exit 1 if missing), topic create (-p -r -c), cluster config set (recorded).
STAND_IN_RPK = """
import sys
from confluent_kafka.admin import AdminClient, NewTopic

args = sys.argv[1:]
options = {args[i + 1].split("=", 1)[0]: args[i + 1].split("=", 1)[1] for i, a in enumerate(args) if a == "-X"}
if args[:3] == ["cluster", "config", "set"]:
    with open(RECORD, "a") as record:
        record.write(f"{args[3]}={args[4]} admin={options['admin.hosts']}\\n")
    sys.exit(0)
admin = AdminClient({"bootstrap.servers": options["brokers"]})
topic = args[2]
if args[:2] == ["topic", "describe"]:
    sys.exit(0 if topic in admin.list_topics(timeout=10).topics else 1)
if args[:2] == ["topic", "create"]:
    value = lambda flag: args[args.index(flag) + 1]
    config = dict(args[i + 1].split("=", 1) for i, a in enumerate(args) if a == "-c")
    new = NewTopic(topic, num_partitions=int(value("-p")), replication_factor=int(value("-r")), config=config)
    admin.create_topics([new])[topic].result(30)
    print(f"TOPIC STATUS\\n{topic} OK")
    sys.exit(0)
sys.exit(f"stand-in rpk: {args} is not one of the commands redpanda-init uses")
"""


@pytest.fixture
def rpk(tmp_path):
    record = tmp_path / "cluster-config"
    program = tmp_path / "bin" / "rpk"
    program.parent.mkdir()
    program.write_text(f"#!{sys.executable}\nRECORD = {str(record)!r}\n{STAND_IN_RPK}")
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    return program.parent, record


def run_redpanda_init(bin_dir: Path, broker: str) -> subprocess.CompletedProcess:
    script = compose("docker-compose.yml")["services"]["redpanda-init"]["command"][0]
    # Compose turns $$ into $; the broker is the test suite's instead of the compose network's.
    script = script.replace("$$", "$").replace("redpanda:9092", broker)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120)


def test_redpanda_init_creates_the_topics_as_the_services_expect_and_a_second_run_changes_nothing(
    rpk, broker, unique, monkeypatch
):
    bin_dir, record = rpk
    services = compose("docker-compose.yml")["services"]
    kafka = load(KafkaSettings, services["producer"]["environment"])
    # A topic pair of this test's own: the script's names with a suffix (the broker is shared).
    topics = {kafka.topic: f"{kafka.topic}-{unique}", kafka.dlq_topic: f"{kafka.dlq_topic}-{unique}"}
    original = services["redpanda-init"]["command"][0]
    loop = f"for topic in {kafka.topic} {kafka.dlq_topic}"
    assert loop in original
    script = original.replace(loop, f"for topic in {' '.join(topics.values())}")
    monkeypatch.setattr(
        "tests.test_compose_rules.compose",
        lambda file: {"services": {**services, "redpanda-init": {"command": [script]}}},
    )

    first = run_redpanda_init(bin_dir, broker)
    assert first.returncode == 0, first.stdout + first.stderr
    admin = AdminClient({"bootstrap.servers": broker})
    listed = admin.list_topics(timeout=10).topics
    for name in topics.values():
        assert len(listed[name].partitions) == kafka.partitions
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        config = {k: e.value for k, e in admin.describe_configs([resource])[resource].result(10).items()}
        assert (config["retention.ms"], config["retention.bytes"], config["cleanup.policy"]) == (
            str(kafka.retention_ms),
            str(kafka.retention_bytes),
            "delete",
        )
    assert record.read_text() == "auto_create_topics_enabled=false admin=redpanda:9644\n"

    second = run_redpanda_init(bin_dir, broker)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.split("\n")[:2] == [f"topic {name} exists" for name in topics.values()]
    assert "TOPIC STATUS" not in second.stdout
