"""What ECS on Fargate refuses or changes, and moto accepts: each rule with the page it comes from.

moto registers any task definition and cfn-lint checks only the schema, so the template once
deployed offline while real ECS would have refused it (tmpfs, CPU/memory pairs Fargate does
not offer). Each rule below encodes the AWS documentation, and every task definition is
checked against it for every value its parameters allow.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.cfn_template import FAKE_PARAMETERS, ROOT, Stack, load_template, parameter_values, resolve

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
TASK_DEFINITIONS = sorted(name for name, r in RESOURCES.items() if r["Type"] == "AWS::ECS::TaskDefinition")

#: https://docs.aws.amazon.com/AmazonECS/latest/developerguide/fargate-tasks-services.html
#: ("Task definition differences for Fargate" / "Task CPU and memory"): the CPU units a
#: Fargate task may have, and the memory (MiB) each takes.
FARGATE_SIZES = {
    256: {512, 1024, 2048},
    512: set(range(1024, 4097, 1024)),
    1024: set(range(2048, 8193, 1024)),
    2048: set(range(4096, 16385, 1024)),
    4096: set(range(8192, 30721, 1024)),
    8192: set(range(16384, 61441, 4096)),
    16384: set(range(32768, 122881, 8192)),
}

#: The same page: container and task parameters that are not valid on Fargate.
UNSUPPORTED_CONTAINER = {
    "DisableNetworking",
    "DnsSearchDomains",
    "DnsServers",
    "DockerSecurityOptions",
    "ExtraHosts",
    "Links",
    "Privileged",
}
UNSUPPORTED_TASK = {"IpcMode", "PlacementConstraints"}
#: https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_LinuxParameters.html: devices,
#: maxSwap, sharedMemorySize, swappiness and tmpfs are "not supported for tasks run on
#: AWS Fargate"; of capabilities, Fargate adds only SYS_PTRACE.
UNSUPPORTED_LINUX = {"Devices", "MaxSwap", "SharedMemorySize", "Swappiness", "Tmpfs"}
FARGATE_ADDABLE_CAPABILITIES = {"SYS_PTRACE"}

#: https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task_definition_parameters.html
#: (stopTimeout): at most 120 seconds on Fargate.
MAX_STOP_TIMEOUT = 120

#: https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_HealthCheck.html: the range
#: of each health-check field, in seconds (retries: a count).
HEALTH_CHECK_RANGES = {"Interval": (5, 300), "Timeout": (2, 120), "Retries": (1, 10), "StartPeriod": (0, 300)}

#: https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_LogConfiguration.html: the
#: log drivers a Fargate task may use.
FARGATE_LOG_DRIVERS = {"awslogs", "splunk", "awsfirelens"}

#: https://docs.aws.amazon.com/AmazonECS/latest/developerguide/bind-mounts.html: on Fargate a
#: bind mount has no host source path (task storage), and is owned by root, mode 0755,
#: unless the image declares the same path a VOLUME, owned by the container's user.
BIND_MOUNT_KEYS = {"Name"}


def stack_with(parameters: dict[str, str]) -> Stack:
    return Stack(
        parameter_values(TEMPLATE, {**FAKE_PARAMETERS, **parameters}),
        {},
        physical_ids={"Cluster": "cluster"},
        attributes={"TaskExecutionRole.Arn": "arn:aws:iam::123456789012:role/execution"},
    )


def size_parameter(definition: str) -> str:
    """The one parameter that sizes ``definition`` (its Cpu and Memory both come from it)."""
    properties = RESOURCES[definition]["Properties"]
    named = {
        ref
        for value in (properties["Cpu"], properties["Memory"])
        for ref in re.findall(r"'Ref': '([A-Za-z0-9]+)'", repr(value))
    }
    assert len(named) == 1, f"{definition}: Cpu and Memory come from {sorted(named)}, not one parameter"
    return named.pop()


def sized(definition: str) -> Iterator[tuple[str, int, int]]:
    """For every value the definition's size parameter allows: the value, the CPU and the memory it gives."""
    parameter = size_parameter(definition)
    for value in TEMPLATE["Parameters"][parameter]["AllowedValues"]:
        stack = stack_with({parameter: value})
        properties = RESOURCES[definition]["Properties"]
        yield value, int(resolve(properties["Cpu"], stack)), int(resolve(properties["Memory"], stack))


def containers(definition: str) -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = RESOURCES[definition]["Properties"]["ContainerDefinitions"]
    return containers


@pytest.mark.parametrize("definition", TASK_DEFINITIONS)
def test_every_allowed_size_is_a_cpu_and_memory_pair_fargate_offers(definition):
    sizes = list(sized(definition))
    assert sizes, definition
    for value, cpu, memory in sizes:
        assert cpu in FARGATE_SIZES, f"{definition}: {value} gives CPU {cpu}, which Fargate does not offer"
        assert memory in FARGATE_SIZES[cpu], f"{definition}: {value}: Fargate's {cpu} CPU takes no {memory} MiB"
    # Every pair up to the largest CPU offered is there to choose.
    largest = max(cpu for _, cpu, _ in sizes)
    offered = {(cpu, memory) for _, cpu, memory in sizes}
    assert offered == {(c, m) for c, ms in FARGATE_SIZES.items() if c <= largest for m in ms}


def test_a_cpu_and_memory_pair_fargate_refuses_cannot_be_chosen():
    # The pairs the issue found accepted by the template and refused by ECS ("Invalid 'cpu' setting").
    for definition in TASK_DEFINITIONS:
        allowed = TEMPLATE["Parameters"][size_parameter(definition)]["AllowedValues"]
        for refused in ("256/4096", "1024/512", "2048/2048"):
            assert refused not in allowed


@pytest.mark.parametrize("definition", TASK_DEFINITIONS)
def test_no_parameter_fargate_does_not_support(definition):
    properties = RESOURCES[definition]["Properties"]
    assert properties["RequiresCompatibilities"] == ["FARGATE"] and properties["NetworkMode"] == "awsvpc"
    assert not UNSUPPORTED_TASK & properties.keys()
    assert properties.get("PidMode", "task") == "task"
    for volume in properties.get("Volumes", []):
        assert set(volume) <= BIND_MOUNT_KEYS, f"{definition}: volume {volume} is not a Fargate bind mount"
    for container in containers(definition):
        assert not UNSUPPORTED_CONTAINER & container.keys(), container["Name"]
        linux = container.get("LinuxParameters", {})
        assert not UNSUPPORTED_LINUX & linux.keys(), f"{container['Name']}: {sorted(UNSUPPORTED_LINUX & linux.keys())}"
        added = set(linux.get("Capabilities", {}).get("Add", []))
        assert added <= FARGATE_ADDABLE_CAPABILITIES, container["Name"]


@pytest.mark.parametrize("definition", TASK_DEFINITIONS)
def test_stop_timeout_health_check_and_log_driver_are_within_fargates_ranges(definition):
    for container in containers(definition):
        name = container["Name"]
        assert 0 < container["StopTimeout"] <= MAX_STOP_TIMEOUT, name
        for field, (low, high) in HEALTH_CHECK_RANGES.items():
            assert low <= container["HealthCheck"][field] <= high, f"{name}: HealthCheck {field}"
        assert container["LogConfiguration"]["LogDriver"] in FARGATE_LOG_DRIVERS, name


def _dockerfile_final_stage() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    steps = [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]
    last = max(i for i, step in enumerate(steps) if step[0] == "FROM")
    return [(op, args) for op, args in steps[last:]]


@pytest.mark.parametrize("definition", TASK_DEFINITIONS)
def test_the_only_writable_path_is_a_volume_the_image_gives_its_user(definition):
    steps = _dockerfile_final_stage()
    user = [args for op, args in steps if op == "USER"][-1].strip()
    volumes = [path for op, args in steps if op == "VOLUME" for path in re.findall(r'"([^"]+)"', args)]
    runs = " ".join(args for op, args in steps if op == "RUN")
    for container in containers(definition):
        assert container["ReadonlyRootFilesystem"] is True
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        for mount in container["MountPoints"]:
            path = mount["ContainerPath"]
            # Declared a VOLUME at the same path, created and given to the image's user first.
            assert path in volumes, f"{path} is not a VOLUME of the image"
            assert f"mkdir {path}" in runs and f"chown {user}:{user} {path}" in runs
            assert mount["ReadOnly"] is False
        writable = {mount["ContainerPath"] for mount in container["MountPoints"]}
        assert {env["TMPDIR"], env["CRYPTO_LIVE_HEARTBEAT_DIR"]} <= writable


def test_lag_per_task_can_be_computed_because_container_insights_is_on():
    # RunningTaskCount is a Container Insights metric (ECS/ContainerInsights), published only
    # for clusters with it enabled:
    # https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/Container-Insights-metrics-ECS.html
    settings = RESOURCES["Cluster"]["Properties"]["ClusterSettings"]
    assert {"Name": "containerInsights", "Value": "enabled"} in settings


def test_the_template_can_be_deployed_without_an_s3_bucket():
    # https://docs.aws.amazon.com/AWSCloudFormation/latest/UserGuide/cloudformation-limits.html:
    # a template body passed in the request is at most 51,200 bytes (larger ones go through S3,
    # which `aws cloudformation deploy` then needs as --s3-bucket; moto does not enforce it).
    assert len((ROOT / "deploy" / "crypto-live.yaml").read_bytes()) <= 51_200
