"""docs/deploy.md: every command marked as runnable offline runs, in order, and does what it says.

The guide marks fenced ``sh`` blocks with an HTML comment on the line before them:
``<!-- settings -->`` (the placeholders, set once at the top), ``<!-- runs offline -->``
and ``<!-- runs offline: exit N -->``. The settings block is not run: this test supplies
the same variables from the environment, pointing them at the test stack (moto through
AWS_ENDPOINT_URL, the test broker over PLAINTEXT). The runnable blocks then run with
bash, in the guide's order and in one shell (later blocks use the names earlier ones
set), with the venv's ``aws`` and ``crypto-live`` first on PATH; a block expecting a
non-zero exit runs on its own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
import botocore.exceptions
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from crypto_live.embedded import emulator_environment
from tests.cfn_template import FAKE_PARAMETERS, ROOT

GUIDE = ROOT / "docs" / "deploy.md"
REGION = "ap-southeast-1"
MARKER = re.compile(r"<!-- (settings|runs offline(?:: exit (\d+))?) -->")
BLOCK_START = "@@guide-block "


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    marker: str | None  # "settings", "runs offline" or None
    exit_status: int
    text: str


def guide_blocks(text: str) -> list[Block]:
    """Every fenced sh block of the guide, with the marker on the line before it (if any)."""
    lines = text.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        if lines[index].strip() == "```sh":
            start = index
            end = lines.index("```", start + 1)
            match = MARKER.fullmatch(lines[start - 1].strip()) if start else None
            blocks.append(
                Block(
                    line=start + 1,
                    marker=match.group(1).split(":")[0] if match else None,
                    exit_status=int(match.group(2)) if match and match.group(2) else 0,
                    text="\n".join(lines[start + 1 : end]),
                )
            )
            index = end
        index += 1
    return blocks


def assigned_names(block: Block) -> set[str]:
    """Shell variables a block assigns (``NAME=``, ``export A=... B=...``, ``read -r A B``)."""
    assigned = set(re.findall(r"(?:^|\s)([A-Z][A-Z0-9_]*)=", block.text, flags=re.MULTILINE))
    for names in re.findall(r"\bread -r ([A-Z][A-Z0-9_ ]*)", block.text):
        assigned.update(names.split())
    return assigned


BLOCKS = guide_blocks(GUIDE.read_text())
RUNNABLE = [b for b in BLOCKS if b.marker == "runs offline"]


@pytest.fixture(scope="module")
def guide_env(aws_endpoint, broker, tmp_path_factory):
    """The settings block's variables, for the test stack; nothing of the developer's own AWS set-up."""
    unique = os.urandom(4).hex()
    home = tmp_path_factory.mktemp("guide")
    settings = {
        "REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "ACCOUNT": "123456789012",  # moto's account
        "STACK": f"guide-{unique}",
        "REPOSITORY": "crypto-live",
        "IMAGE_TAG": f"guide-{unique}",
        "CLUSTER_ARN": FAKE_PARAMETERS["MskClusterArn"],
        "BROKERS": broker,
        "TOPIC": f"guide-{unique}",
        "SUBNETS": FAKE_PARAMETERS["SubnetIds"],
        "SECURITY_GROUPS": FAKE_PARAMETERS["SecurityGroupIds"],
        "ATHENA_RESULTS": f"s3://guide-athena-{unique}/results/",
        # The test broker is plaintext; the guide's SASL_SSL / AWS_MSK_IAM are for MSK.
        "KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "",
    }
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "KAFKA_"))}
    return {
        **inherited,
        **emulator_environment(aws_endpoint),
        **settings,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "AWS_CONFIG_FILE": str(home / "aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "aws-credentials"),
        "CRYPTO_LIVE_HEARTBEAT_DIR": str(home),  # empty: no service runs here
        "HOME": str(home),
        "GUIDE_ENVIRONMENT_FILE": str(home / "environment"),
    }


#: Run right after the block that names the bucket: object versions and a delete marker,
#: so that the tear-down has a versioned bucket to empty, as it will in production (moto's
#: CloudFormation does not apply the template's VersioningConfiguration: turned on here).
SEED_BUCKET = """
python - "$BUCKET" <<'EOF'
import sys, boto3
s3, bucket, key = boto3.client("s3"), sys.argv[1], "batch_jsonl/dt=2026-12-01/hour=22/t-00000-1.jsonl"
s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
for body in (b"first", b"second"):
    s3.put_object(Bucket=bucket, Key=key, Body=body)
s3.delete_object(Bucket=bucket, Key=key)
EOF
"""


def run_in_order(blocks: list[Block], env: dict[str, str]) -> tuple[dict[int, str], dict[str, str]]:
    """The blocks as one bash script, stopping at the first failure (named in the assertion).

    Returns each block's stdout by line and the environment the script ended with (``set
    -a`` exports every variable the blocks set), for the blocks that follow.
    """
    environment = env["GUIDE_ENVIRONMENT_FILE"]
    parts = ["set -euo pipefail -o allexport", "trap 'echo \"docs/deploy.md:$GUIDE_BLOCK failed\" >&2' ERR"]
    for block in blocks:
        parts += [f"GUIDE_BLOCK={block.line}", f"echo '{BLOCK_START}{block.line}'", block.text]
        if "ArchiveBucket" in block.text:
            parts.append(SEED_BUCKET)
    parts.append(f"env -0 > '{environment}'")
    result = subprocess.run(
        ["bash", "-c", "\n".join(parts)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"{result.stderr[-3000:]}\n--- stdout\n{result.stdout[-2000:]}"
    outputs: dict[int, str] = {}
    for line in result.stdout.splitlines(keepends=True):
        if line.startswith(BLOCK_START):
            current = int(line.removeprefix(BLOCK_START))
            outputs[current] = ""
        else:
            outputs[current] += line
    entries = Path(environment).read_text().split("\0")
    return outputs, dict(entry.split("=", 1) for entry in entries if "=" in entry)


def run_at_once(blocks: list[Block], env: dict[str, str]) -> dict[int, str]:
    """Blocks that only read, each in its own bash, all at the same time; stdout by line."""
    children = {
        block.line: subprocess.Popen(
            ["bash", "-c", "set -euo pipefail\n" + block.text],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for block in blocks
    }
    outputs = {}
    for line, child in children.items():
        stdout, stderr = child.communicate(timeout=120)
        assert child.returncode == 0, f"docs/deploy.md:{line} failed (exit {child.returncode}):\n{stderr[-3000:]}"
        outputs[line] = stdout
    return outputs


def _block(fragment: str) -> Block:
    (found,) = [b for b in RUNNABLE if fragment in b.text]
    return found


def test_the_guide_marks_the_commands_it_promises_as_tested():
    assert [b.marker for b in BLOCKS].count("settings") == 1 and BLOCKS[0].marker == "settings"
    runnable = "\n".join(b.text for b in RUNNABLE)
    for command in (
        "crypto-live provision --kafka",
        "aws cloudformation deploy",
        "aws ecs describe-services",
        "services[].events",
        "aws s3api list-objects-v2",
        "aws dynamodb scan",
        "aws logs filter-log-events",
        "aws logs start-query",
        "aws cloudwatch list-metrics",
        "SumOffsetLag",
        "aws athena start-query-execution",
        "crypto-live healthcheck",
        "aws cloudformation delete-stack",
        "aws s3api delete-bucket",
        "aws dynamodb delete-table",
    ):
        assert command in runnable, f"no runnable block runs {command!r}"


def test_the_settings_block_and_the_test_set_the_same_placeholders(guide_env):
    (settings,) = [b for b in BLOCKS if b.marker == "settings"]
    names = assigned_names(settings)
    assert names <= guide_env.keys(), f"the test does not supply {sorted(names - guide_env.keys())}"
    assert {"REGION", "STACK", "ACCOUNT", "BROKERS", "CLUSTER_ARN", "KAFKA_SECURITY_PROTOCOL"} <= names
    # Every variable a runnable block reads is set by the settings block or by an earlier block.
    defined = names | {n for b in RUNNABLE for n in assigned_names(b)}
    used = {n for b in RUNNABLE for n in re.findall(r"\$\{?([A-Z][A-Z0-9_]*)", b.text)}
    assert used <= defined, f"runnable blocks read {sorted(used - defined)}, which nothing in the guide sets"


def test_the_guide_runs_against_the_test_stack_from_topics_to_tear_down(guide_env, broker):
    # In the guide's order: up to the block naming the stack's resources; then the blocks that
    # only watch and query, at once (each AWS CLI call is a second of start-up); then the tear-down.
    steps = [b for b in RUNNABLE if b.exit_status == 0]
    named = steps.index(_block("ArchiveBucket")) + 1
    teardown = steps.index(_block("delete-stack"))
    outputs, env = run_in_order(steps[:named], guide_env)
    outputs.update(run_at_once(steps[named:teardown], env))
    outputs.update(run_in_order(steps[teardown:], env)[0])
    topic, stack = guide_env["TOPIC"], guide_env["STACK"]

    # 2. Both topics, with the partitions and configs the guide states.
    assert f"created {topic}, {topic}.dlq" in outputs[_block("provision --kafka").line]
    admin = AdminClient({"bootstrap.servers": broker})
    topics = admin.list_topics(timeout=10).topics
    for name in (topic, f"{topic}.dlq"):
        assert len(topics[name].partitions) == 3
        resource = ConfigResource(ConfigResource.Type.TOPIC, name)
        config = {k: e.value for k, e in admin.describe_configs([resource])[resource].result(10).items()}
        assert (config["retention.ms"], config["retention.bytes"], config["cleanup.policy"]) == (
            "604800000",
            "-1",
            "delete",
        )

    # 3. The stack was created, and the names read from it are real.
    assert outputs[_block("aws cloudformation deploy").line].strip().endswith("CREATE_COMPLETE")
    names = outputs[_block("ArchiveBucket").line]
    assert re.fullmatch(r"cluster \S+, bucket \S+, table \S+\n", names), names
    services = outputs[_block("desired: desiredCount").line]
    for logical in ("ProducerService", "S3SinkService", "DynamoSinkService"):
        assert f"{stack}-{logical}-" in services
    # The first checks after a deploy run; moto runs no task, so there is no object nor row.
    first = outputs[_block("services[].events").line].split("\n")
    assert "None" in first and "null" in first, first
    assert outputs[_block("describe-log-groups").line].split() == [
        f"/ecs/{stack}/dynamo-sink",
        "30",
        f"/ecs/{stack}/producer",
        "30",
        f"/ecs/{stack}/s3-sink",
        "30",
    ]

    # 7. The stack is gone; so are the retained bucket and table, deleted by hand.
    bucket = names.split()[3].rstrip(",")
    table = names.split()[5]
    cloudformation = boto3.client("cloudformation", region_name=REGION)
    with pytest.raises(botocore.exceptions.ClientError, match="does not exist"):
        cloudformation.describe_stacks(StackName=stack)
    with pytest.raises(botocore.exceptions.ClientError, match="404|Not Found"):
        boto3.client("s3", region_name=REGION).head_bucket(Bucket=bucket)
    with pytest.raises(botocore.exceptions.ClientError, match="ResourceNotFound"):
        boto3.client("dynamodb", region_name=REGION).describe_table(TableName=table)
    assert outputs[_block("aws s3api delete-bucket").line].split()[0] == "3"  # 2 versions + 1 delete marker


@pytest.mark.parametrize("block", [b for b in RUNNABLE if b.exit_status], ids=lambda b: f"line{b.line}")
def test_blocks_that_fail_on_purpose_fail_as_the_guide_says(block, guide_env):
    result = subprocess.run(["bash", "-c", block.text], cwd=ROOT, env=guide_env, capture_output=True, text=True)
    assert result.returncode == block.exit_status, result.stderr
    assert "missing: the service is not running" in result.stderr


def test_the_guide_is_linked_from_both_readmes():
    assert "](docs/deploy.md)" in (ROOT / "README.md").read_text()
    assert "](../docs/deploy.md)" in (ROOT / "deploy" / "README.md").read_text()
