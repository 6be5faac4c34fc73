"""deploy/crypto-live.yaml: linted, scanned, deployed into moto, and held to the code's contract.

* cfn-lint finds nothing (informational checks included); checkov fails nothing, and each
  check it skips is skipped in the template with a comment saying why.
* The stack deploys into moto's CloudFormation to CREATE_COMPLETE; every variable its task
  definitions set is one the service reads, with a value it accepts; and each sink's own
  start-up check passes against the bucket and table the stack created.
* What moto does not model is checked against the code that depends on it: TTL on the
  attribute the rows carry, the Athena table over the keys the S3 sink writes, the
  sink-count rules, stop timeouts that fit the services' own shutdown bounds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from cfnlint.api import ManualArgs, lint, lint_file

from crypto_live import aws, dynamo_table, event
from crypto_live.cli import build_parser
from crypto_live.settings import SERVICES as SETTINGS_OF
from crypto_live.settings import DynamoSinkSettings, LogSettings, MonitoringSettings, S3SinkSettings, load, variables
from processors import dynamo_sink, s3_sink
from processors.s3_objects import Layout, by_hour, event_hour, make_object
from producer import service as producer_service
from tests.cfn_template import (
    FAKE_PARAMETERS,
    ROOT,
    SERVICES,
    TEMPLATE,
    Stack,
    container_environments,
    deploy,
    evaluate_rule,
    load_template,
    parameter_values,
    resolve,
)
from tests.factories import s3_row, ticker

REGION = "ap-southeast-1"
LINT_REGIONS = ["ap-southeast-1", "us-east-1", "eu-west-1"]
TASK_DEFINITIONS = {
    "producer": "ProducerTaskDefinition",
    "s3-sink": "S3SinkTaskDefinition",
    "dynamo-sink": "DynamoSinkTaskDefinition",
}
SERVICE_RESOURCES = {"producer": "ProducerService", "s3-sink": "S3SinkService", "dynamo-sink": "DynamoSinkService"}


def _container(template: dict[str, Any], service: str) -> dict[str, Any]:
    (container,) = template["Resources"][TASK_DEFINITIONS[service]]["Properties"]["ContainerDefinitions"]
    return dict(container)


# --------------------------------------------------------------------------- linters


def test_template_is_cfn_lint_clean_informational_checks_included():
    matches = lint_file(TEMPLATE, config=ManualArgs(regions=LINT_REGIONS, include_checks=["I"]))
    assert not matches, "\n".join(str(m) for m in matches)
    # The same run does see a broken resource: a clean result is not an empty run.
    broken = "Resources:\n  Bucket:\n    Type: AWS::S3::Bucket\n    Properties:\n      Versioning: true\n"
    assert lint(broken, config=ManualArgs(regions=LINT_REGIONS))


def _checkov() -> str:
    """checkov lives in an environment of its own (`make checkov`): its pins conflict with ours."""
    for candidate in (os.environ.get("CHECKOV"), str(ROOT / ".venv-checkov" / "bin" / "checkov")):
        if candidate and Path(candidate).exists():
            return candidate
    found = shutil.which("checkov")
    if found is None:
        pytest.fail("checkov is not installed: run `make checkov` (or set CHECKOV to its path)")
    return found


def _skips_in_template(template: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(check id, resource) -> comment, for every checkov skip the template declares."""
    skips = {}
    for name, resource in template["Resources"].items():
        for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
            skips[(skip["id"], f"{resource['Type']}.{name}")] = skip.get("comment", "")
    return skips


def test_checkov_fails_no_check_and_every_skip_is_justified_in_the_template():
    result = subprocess.run(
        [_checkov(), "--file", str(TEMPLATE), "--framework", "cloudformation", "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        # Offline: no guideline download from the vendor's platform.
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(result.stdout)
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert not failed, "\n".join(failed)
    assert result.returncode == 0, result.stderr[-2000:]
    assert report["summary"]["passed"] > 40 and report["summary"]["parsing_errors"] == 0, report["summary"]
    skipped = {(c["check_id"], c["resource"]) for c in report["results"]["skipped_checks"]}
    declared = _skips_in_template(load_template())
    # Every skip applies (none is stale) and says why in a sentence, not a word.
    assert skipped == set(declared)
    short = {key: comment for key, comment in declared.items() if len(comment.split()) < 8}
    assert not short, f"skips without a real justification: {short}"


# --------------------------------------------------------------------------- deployed into moto


@pytest.fixture(scope="module")
def deployed(aws_endpoint):
    name = f"crypto-live-deploy-{uuid.uuid4().hex[:8]}"
    stack = deploy(boto3.client("cloudformation", region_name=REGION), name, {})
    environments = container_environments(boto3.client("ecs", region_name=REGION), stack)
    return stack, environments


#: Variables the Python runtime reads, not a settings object: TMPDIR places tempfile's
#: directories (Quix's state directory) on the task's scratch volume.
RUNTIME_VARIABLES = {"TMPDIR"}


def test_every_variable_a_task_definition_sets_is_read_by_its_service_and_accepted(deployed):
    _, environments = deployed
    assert set(environments) == set(SERVICES)
    for service, env in environments.items():
        settings_class = SETTINGS_OF[service]
        specs = [v for cls in (settings_class, LogSettings, MonitoringSettings) for v in variables(cls)]
        read = {v.env for v in specs} | {v.fallback for v in specs if v.fallback} | RUNTIME_VARIABLES
        assert set(env) <= read, f"{service} ignores {sorted(set(env) - read)}"
        load(settings_class, env)  # raises SettingsError naming any value the service refuses
        assert load(LogSettings, env).format == "json"
        assert env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and env["KAFKA_SASL_MECHANISM"] == "AWS_MSK_IAM"


def test_the_s3_sink_start_up_check_passes_against_the_stacks_bucket(deployed):
    stack, environments = deployed
    settings = load(S3SinkSettings, environments["s3-sink"])
    assert settings.bucket == stack.outputs["BucketName"]
    sink = s3_sink.jsonl_sink(settings)
    sink.setup()  # HeadBucket: raises BucketSetupError naming the bucket if it is missing or refused
    assert f"s3://{settings.bucket}/{settings.prefix}/" == stack.outputs["JsonlLocation"]


@pytest.fixture(scope="module")
def deployed_provisioned(aws_endpoint):
    name = f"crypto-live-provisioned-{uuid.uuid4().hex[:8]}"
    stack = deploy(boto3.client("cloudformation", region_name=REGION), name, {"TableBillingMode": "provisioned"})
    environments = container_environments(boto3.client("ecs", region_name=REGION), stack)
    return stack, environments


@pytest.mark.parametrize(("mode", "billing"), [("on-demand", "PAY_PER_REQUEST"), ("provisioned", "PROVISIONED")])
def test_the_dynamo_sink_start_up_check_passes_against_the_stacks_table_in_either_billing_mode(mode, billing, request):
    stack, environments = request.getfixturevalue("deployed" if mode == "on-demand" else "deployed_provisioned")
    settings = load(DynamoSinkSettings, environments["dynamo-sink"])
    assert settings.table == stack.outputs["TableName"] and settings.create_table is False
    described = boto3.client("dynamodb", region_name=REGION).describe_table(TableName=settings.table)["Table"]
    assert described.get("BillingModeSummary", {}).get("BillingMode", "PAY_PER_REQUEST") == billing
    with dynamo_sink.table_sink(settings) as sink:
        sink.setup()  # raises TableSetupError if the table is missing or its keys are not the sink's


def test_provisioned_writes_follow_the_load_between_their_bounds():
    # moto's CloudFormation creates no Application Auto Scaling resources: read them here.
    resources = load_template()["Resources"]
    table = resources["EventsTable"]["Properties"]
    assert table["ProvisionedThroughput"]["Fn::If"][0] == "ProvisionedTable"
    assert table["ProvisionedThroughput"]["Fn::If"][1]["WriteCapacityUnits"] == {"Ref": "TableMinWriteCapacity"}
    target, policy = resources["TableWriteScalableTarget"], resources["TableWriteScaling"]
    assert target["Condition"] == policy["Condition"] == "ProvisionedTable"
    stack = Stack(parameter_values(load_template(), FAKE_PARAMETERS), {}, physical_ids={"EventsTable": "events"})
    assert resolve(target["Properties"]["ResourceId"], stack) == "table/events"
    assert target["Properties"]["ScalableDimension"] == "dynamodb:table:WriteCapacityUnits"
    assert (target["Properties"]["MinCapacity"], target["Properties"]["MaxCapacity"]) == (
        {"Ref": "TableMinWriteCapacity"},
        {"Ref": "TableMaxWriteCapacity"},
    )
    tracking = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    assert tracking["PredefinedMetricSpecification"] == {"PredefinedMetricType": "DynamoDBWriteCapacityUtilization"}
    assert tracking["TargetValue"] == {"Ref": "TableTargetWriteUtilization"}
    # Throttled writes are what a provisioned table answers past its capacity: the sink waits them out.
    assert aws.is_transient(
        botocore.exceptions.ClientError(
            {"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "throttled"}}, "BatchWriteItem"
        )
    )


def test_the_table_expires_rows_on_the_attribute_the_sink_writes_and_is_billed_on_demand_by_default():
    # moto ignores TimeToLiveSpecification and point-in-time recovery: read them from the template.
    template = load_template()
    table = template["Resources"]["EventsTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": dynamo_table.TTL_ATTRIBUTE, "Enabled": True}
    assert template["Parameters"]["TableBillingMode"]["Default"] == "on-demand"
    on_demand = dynamo_table.create_table_request("t")["BillingMode"]
    assert table["BillingMode"] == {"Fn::If": ["ProvisionedTable", "PROVISIONED", on_demand]}
    assert table["KeySchema"] == dynamo_table.key_schema()
    assert table["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}


# --------------------------------------------------------------------------- Athena


def _athena_table(bucket: str = "archive-bucket") -> tuple[dict[str, Any], dict[str, str]]:
    template = load_template()
    parameters = parameter_values(template, FAKE_PARAMETERS)
    stack = Stack(parameters, {}, physical_ids={"ArchiveBucket": bucket})
    table_input = resolve(template["Resources"]["MiniTickerTable"]["Properties"]["TableInput"], stack)
    return table_input, parameters


def test_athena_columns_are_the_event_fields_each_mapped_case_sensitively():
    table, _ = _athena_table()
    storage = table["StorageDescriptor"]
    serde = storage["SerdeInfo"]
    assert serde["SerializationLibrary"] == "org.openx.data.jsonserde.JsonSerDe"
    # e and E differ only in case: the SerDe must not fold keys, and columns map by name.
    assert serde["Parameters"]["case.insensitive"] == "false"
    mapping = {k.removeprefix("mapping."): v for k, v in serde["Parameters"].items() if k.startswith("mapping.")}
    columns = {c["Name"]: c["Type"] for c in storage["Columns"]}
    assert set(mapping) == set(columns)
    assert sorted(mapping.values()) == sorted(event.FIELDS)
    by_field = {field: columns[column] for column, field in mapping.items()}
    assert by_field["E"] == "bigint"
    # Prices and volumes stay the decimal strings Binance sent, as everywhere in the pipeline.
    assert {by_field[f] for f in event.DECIMAL_FIELDS} == {"string"}
    assert {c.lower() for c in columns}.isdisjoint({p["Name"] for p in table["PartitionKeys"]})


def test_partition_projection_finds_every_object_the_s3_sink_writes_without_a_crawler():
    table, parameters = _athena_table("archive-bucket")
    props = table["Parameters"]
    assert props["projection.enabled"] == "true"
    assert [p["Name"] for p in table["PartitionKeys"]] == ["dt", "hour"]
    assert table["StorageDescriptor"]["Location"] == f"s3://archive-bucket/{parameters['S3Prefix']}/"
    # Events from the first valid day on, up to today; every hour of a day, written as the keys write it.
    first_day = datetime.strptime(props["projection.dt.range"].split(",")[0], "%Y-%m-%d").replace(tzinfo=UTC)
    first_ms = int(first_day.timestamp() * 1000)
    assert isinstance(event.validate(ticker(event_time=first_ms)), event.MiniTicker)
    assert isinstance(event.validate(ticker(event_time=first_ms - 1)), event.Invalid)
    assert props["projection.dt.range"].endswith(",NOW") and props["projection.dt.format"] == "yyyy-MM-dd"
    assert (props["projection.hour.type"], props["projection.hour.range"], props["projection.hour.digits"]) == (
        "integer",
        "0,23",
        "2",
    )
    events = [ticker(i, event_time=first_ms + i * 3_600_000 + 59_000) for i in range(30)]
    for compression in ("none", "gzip"):
        layout = Layout(parameters["S3Prefix"], "t", 0, max_rows=1000, compression=compression)
        objects = [
            make_object(layout, hour, rows)
            for hour, rows in by_hour([s3_row(offset, e) for offset, e in enumerate(events)]).items()
        ]
        assert len(objects) == 30
        for obj in objects:
            hour = event_hour(events[obj.first_offset]["E"])
            location = (
                props["storage.location.template"]
                .replace("${dt}", hour.strftime("%Y-%m-%d"))
                .replace("${hour}", f"{hour.hour:0{int(props['projection.hour.digits'])}d}")
            )
            url = f"s3://archive-bucket/{obj.key}"
            assert url.startswith(location) and "/" not in url.removeprefix(location), (url, location)


# --------------------------------------------------------------------------- ECS settings


def test_sink_count_rules_allow_exactly_counts_up_to_the_partition_count():
    template = load_template()
    rules = template["Rules"]
    for sink in ("S3SinkCount", "DynamoSinkCount"):
        spec = template["Parameters"][sink]
        for partitions in range(1, 14):
            for count in range(spec["MinValue"], spec["MaxValue"] + 1):
                parameters = {"S3SinkCount": "1", "DynamoSinkCount": "1", "TopicPartitions": str(partitions)}
                parameters[sink] = str(count)
                passed = all(
                    evaluate_rule(assertion["Assert"], parameters)
                    for rule in rules.values()
                    if "RuleCondition" not in rule or evaluate_rule(rule["RuleCondition"], parameters)
                    for assertion in rule["Assertions"]
                )
                assert passed == (count <= partitions), f"{sink}={count}, TopicPartitions={partitions}"


def test_the_producer_never_overlaps_itself_and_the_sinks_may():
    resources = load_template()["Resources"]
    producer = resources["ProducerService"]["Properties"]
    assert producer["DesiredCount"] == 1
    assert producer["DeploymentConfiguration"]["MaximumPercent"] == 100
    assert producer["DeploymentConfiguration"]["MinimumHealthyPercent"] == 0
    for sink, count in (("S3SinkService", "S3SinkCount"), ("DynamoSinkService", "DynamoSinkCount")):
        properties = resources[sink]["Properties"]
        # Without autoscaling the count is the parameter's; with it, absent, so that an update
        # keeps the count autoscaling set (CloudFormation, AWS::ECS::Service DesiredCount).
        assert properties["DesiredCount"] == {"Fn::If": ["AutoscaleSinks", {"Ref": "AWS::NoValue"}, {"Ref": count}]}
        assert properties["DeploymentConfiguration"]["MaximumPercent"] == 200
    for name in SERVICE_RESOURCES.values():
        properties = resources[name]["Properties"]
        assert properties["DeploymentConfiguration"]["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
        assert properties["LaunchType"] == "FARGATE"
        assert properties["NetworkConfiguration"]["AwsvpcConfiguration"]["AssignPublicIp"] == "DISABLED"


def test_each_container_runs_its_subcommand_with_its_heartbeat_as_health_check():
    template = load_template()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["crypto-live"]' in dockerfile  # so the command is the subcommand alone
    parser = build_parser()
    for service in SERVICES:
        container = _container(template, service)
        assert container["Name"] == service and container["Command"] == [service]
        assert parser.parse_args([service]).command == service
        health = container["HealthCheck"]["Command"]
        assert health == ["CMD", "crypto-live", "healthcheck", service]
        assert parser.parse_args(health[2:]).command == "healthcheck"
        # The heartbeat file and Quix's state directory (TMPDIR) live on the scratch volume,
        # the one writable path beside a read-only root filesystem.
        assert container["ReadonlyRootFilesystem"] is True
        assert "Tmpfs" not in container["LinuxParameters"]  # Fargate has none
        definition = template["Resources"][TASK_DEFINITIONS[service]]["Properties"]
        assert definition["Volumes"] == [{"Name": "scratch"}]
        assert container["MountPoints"] == [{"SourceVolume": "scratch", "ContainerPath": "/scratch", "ReadOnly": False}]
        env = {e["Name"]: e["Value"] for e in container["Environment"]}
        assert env["TMPDIR"] == env["CRYPTO_LIVE_HEARTBEAT_DIR"] == "/scratch"
        log = container["LogConfiguration"]
        assert log["LogDriver"] == "awslogs"
        log_group = TASK_DEFINITIONS[service].replace("TaskDefinition", "LogGroup")
        assert log["Options"]["awslogs-group"] == {"Ref": log_group}


def test_stop_timeouts_fit_each_services_clean_shutdown():
    template = load_template()
    producer = _container(template, "producer")
    env = {e["Name"]: e["Value"] for e in producer["Environment"] if isinstance(e["Value"], str)}
    flush = float(env["PRODUCER_SHUTDOWN_TIMEOUT"])
    assert flush + producer_service.CLOSE_TIMEOUT < producer["StopTimeout"] <= 120
    # The slowest S3 write a SIGTERM may have to wait for: the write budget, then one put
    # with all its attempts; the commit follows.
    slowest_write = s3_sink.WRITE_BUDGET + aws.SINK_REQUEST_MAX_SECONDS
    for sink in ("s3-sink", "dynamo-sink"):
        assert slowest_write < _container(template, sink)["StopTimeout"] <= 120


def test_optional_lag_autoscaling_keeps_each_sink_between_its_count_and_the_partition_count():
    template = load_template()
    assert template["Parameters"]["SinkAutoscaling"]["Default"] == "disabled"
    parameters = parameter_values(template, FAKE_PARAMETERS)
    stack = Stack(
        parameters,
        {},
        physical_ids={"Cluster": "cluster", "ArchiveBucket": "bucket", "EventsTable": "table"},
        attributes={"S3SinkService.Name": "s3-service", "DynamoSinkService.Name": "dynamo-service"},
    )
    for sink, service, container in (
        ("S3Sink", "s3-service", "s3-sink"),
        ("DynamoSink", "dynamo-service", "dynamo-sink"),
    ):
        target = template["Resources"][f"{sink}ScalableTarget"]
        policy = template["Resources"][f"{sink}LagScaling"]
        assert target["Condition"] == policy["Condition"] == "AutoscaleSinks"
        assert target["Properties"]["MinCapacity"] == {"Ref": f"{sink}Count"}
        assert target["Properties"]["MaxCapacity"] == {"Ref": "TopicPartitions"}
        assert resolve(target["Properties"]["ResourceId"], stack) == f"service/cluster/{service}"
        spec = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
        metrics = {m["Id"]: m for m in spec["Metrics"]}
        # The one series tracked is the lag per running task: it halves when the tasks double.
        assert [m["Id"] for m in spec["Metrics"] if m["ReturnData"]] == ["lag_per_task"]
        assert metrics["lag_per_task"]["Expression"] == "lag / IF(tasks < 1, 1, tasks)"
        tasks = metrics["tasks"]["MetricStat"]["Metric"]
        assert (tasks["Namespace"], tasks["MetricName"]) == ("ECS/ContainerInsights", "RunningTaskCount")
        assert {d["Name"]: resolve(d["Value"], stack) for d in tasks["Dimensions"]} == {
            "ClusterName": "cluster",
            "ServiceName": service,
        }
        metric = metrics["lag"]["MetricStat"]["Metric"]
        dimensions = {d["Name"]: resolve(d["Value"], stack) for d in metric["Dimensions"]}
        env = {e["Name"]: resolve(e["Value"], stack) for e in _container(template, container)["Environment"]}
        # The lag of the group this sink consumes as, on the topic it reads, in this cluster.
        assert dimensions == {
            "Cluster Name": "crypto-live",
            "Consumer Group": env["S3_SINK_GROUP" if sink == "S3Sink" else "DYNAMO_SINK_GROUP"],
            "Topic": env["KAFKA_TOPIC"],
        }
        assert (metric["Namespace"], metric["MetricName"]) == ("AWS/Kafka", "SumOffsetLag")
