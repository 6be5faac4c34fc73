"""deploy/crypto-live.yaml for tests: load it, deploy it into moto, resolve its intrinsic functions.

moto's CloudFormation creates the stack's S3, DynamoDB, Logs, IAM and ECS resources but
not its Secrets Manager secret, bucket policy or Glue catalog (it reports them created and
resolves a ``Ref`` to them to nothing). Tests therefore read those from the template,
resolved here against the deployed stack's parameters and physical ids
(:func:`resolve`), and read everything moto does create from moto.
"""

from __future__ import annotations

import fnmatch
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "deploy" / "crypto-live.yaml"

#: Parameters without a default, as a test deploys them: ids that look real, nothing that exists.
FAKE_PARAMETERS = {
    "SubnetIds": "subnet-0123456789abcdef0,subnet-0123456789abcdef1",
    "SecurityGroupIds": "sg-0123456789abcdef0",
    "MskClusterArn": "arn:aws:kafka:ap-southeast-1:123456789012:cluster/crypto-live/0a1b2c3d-4e5f-6789-abcd-ef01-3",
    "MskBootstrapBrokers": "b-1.cryptolive.abc123.c3.kafka.ap-southeast-1.amazonaws.com:9098",
    "ImageRepository": "123456789012.dkr.ecr.ap-southeast-1.amazonaws.com/crypto-live",
    "ImageTag": "test",
}

#: The container of each service, as the template names them (= the crypto-live subcommand).
SERVICES = ("producer", "s3-sink", "dynamo-sink")


def load_template(path: Path = TEMPLATE) -> dict[str, Any]:
    """The template as dicts and lists, short-form tags (!Ref, !Sub...) as their long forms."""
    template: dict[str, Any] = cfn_yaml.loads(path.read_text(), str(path))
    return template


def parameter_values(template: Mapping[str, Any], given: Mapping[str, str]) -> dict[str, str]:
    """Every parameter's value: ``given`` over the defaults."""
    values = {name: str(spec["Default"]) for name, spec in template["Parameters"].items() if "Default" in spec}
    values.update(given)
    missing = set(template["Parameters"]) - values.keys()
    assert not missing, f"no value for parameters {sorted(missing)}"
    return values


@dataclass
class Stack:
    """What the template's intrinsic functions resolve against."""

    parameters: dict[str, str]
    parameter_types: dict[str, str]
    physical_ids: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)  # "Logical.Attribute" -> value
    name: str = "crypto-live-test"
    region: str = "ap-southeast-1"
    account: str = "123456789012"

    def ref(self, name: str) -> Any:
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::StackName": self.name,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
        }
        if name in pseudo:
            return pseudo[name]
        if name in self.parameters:
            value = self.parameters[name]
            return value.split(",") if self.parameter_types.get(name, "").startswith("List<") else value
        if name in self.physical_ids:
            return self.physical_ids[name]
        raise KeyError(f"cannot resolve Ref {name}: not a parameter and no physical id known")

    def get_att(self, name: str) -> str:
        if name not in self.attributes:
            raise KeyError(f"cannot resolve GetAtt {name}: no value known")
        return self.attributes[name]


def resolve(value: Any, stack: Stack) -> Any:
    """``value`` with Ref, Fn::Sub, Fn::GetAtt, Fn::Select, Fn::Split and Fn::Join worked out."""
    if isinstance(value, list):
        return [resolve(item, stack) for item in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((key, arg),) = value.items()
        if key == "Ref":
            return stack.ref(arg)
        if key == "Fn::GetAtt":
            return stack.get_att(arg if isinstance(arg, str) else ".".join(arg))
        if key == "Fn::Sub":
            text, names = (arg, {}) if isinstance(arg, str) else (arg[0], resolve(arg[1], stack))
            return _substitute(text, names, stack)
        if key == "Fn::Select":
            return resolve(arg[1], stack)[int(resolve(arg[0], stack))]
        if key == "Fn::Split":
            return resolve(arg[1], stack).split(arg[0])
        if key == "Fn::Join":
            return arg[0].join(resolve(arg[1], stack))
    return {key: resolve(item, stack) for key, item in value.items()}


def _substitute(text: str, names: Mapping[str, Any], stack: Stack) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        if name in names:
            return str(names[name])
        return str(stack.get_att(name) if "." in name else stack.ref(name))

    return re.sub(r"\$\{([^}]+)\}", one, text)


def evaluate_rule(expression: Any, parameters: Mapping[str, str]) -> Any:
    """A Rules assertion's value for ``parameters`` (the rule functions the template uses)."""
    if not isinstance(expression, dict):
        return [evaluate_rule(e, parameters) for e in expression] if isinstance(expression, list) else expression
    ((key, arg),) = expression.items()
    if key == "Ref":
        return parameters[arg]
    values = evaluate_rule(arg, parameters)
    functions = {
        "Fn::Equals": lambda: str(values[0]) == str(values[1]),
        "Fn::Not": lambda: not values[0],
        "Fn::Or": lambda: any(values),
        "Fn::And": lambda: all(values),
        "Fn::Contains": lambda: str(values[1]) in [str(v) for v in values[0]],
    }
    if key not in functions:
        raise NotImplementedError(f"rule function {key}")
    return functions[key]()


# --------------------------------------------------------------------------- IAM


def statements(policy: Mapping[str, Any]) -> list[dict[str, Any]]:
    found = policy["Statement"]
    return list(found) if isinstance(found, list) else [found]


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def role_policies(template: Mapping[str, Any], role: str) -> list[dict[str, Any]]:
    """The policy documents of an AWS::IAM::Role, as written (unresolved)."""
    return [policy["PolicyDocument"] for policy in template["Resources"][role]["Properties"].get("Policies", [])]


def iam_policy_documents(template: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(resource, policy document) for every identity policy in the template."""
    for name, resource in template["Resources"].items():
        if resource["Type"] == "AWS::IAM::Role":
            for document in role_policies(template, name):
                yield name, document
        elif resource["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
            yield name, resource["Properties"]["PolicyDocument"]


def granted(policies: list[dict[str, Any]]) -> set[str]:
    """Every action the policies allow."""
    return {
        action
        for policy in policies
        for statement in statements(policy)
        if statement["Effect"] == "Allow"
        for action in as_list(statement["Action"])
    }


def allows(policies: list[dict[str, Any]], action: str, resource: str) -> bool:
    """Whether a resolved statement allows ``action`` on ``resource`` (IAM's * and ? wildcards)."""
    return any(
        statement["Effect"] == "Allow"
        and action in as_list(statement["Action"])
        and any(fnmatch.fnmatchcase(resource, pattern) for pattern in as_list(statement["Resource"]))
        for policy in policies
        for statement in statements(policy)
    )


# --------------------------------------------------------------------------- moto


@dataclass(frozen=True)
class DeployedStack:
    name: str
    outputs: dict[str, str]
    physical_ids: dict[str, str]
    parameters: dict[str, str]


def deploy(cloudformation: Any, name: str, parameters: Mapping[str, str], timeout: float = 60.0) -> DeployedStack:
    """Create the stack from the template and wait until it is complete (fails with the events otherwise)."""
    template = load_template()
    values = parameter_values(template, {**FAKE_PARAMETERS, **parameters})
    cloudformation.create_stack(
        StackName=name,
        TemplateBody=TEMPLATE.read_text(),
        Parameters=[{"ParameterKey": key, "ParameterValue": value} for key, value in parameters.items()]
        + [
            {"ParameterKey": key, "ParameterValue": value}
            for key, value in FAKE_PARAMETERS.items()
            if key not in parameters
        ],
        Capabilities=["CAPABILITY_IAM"],
    )
    deadline = time.monotonic() + timeout
    while True:
        stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if stack["StackStatus"] != "CREATE_COMPLETE":
        events = cloudformation.describe_stack_events(StackName=name)["StackEvents"]
        reasons = [
            f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
            for e in events
            if "FAILED" in e["ResourceStatus"]
        ]
        raise AssertionError(f"stack {name} is {stack['StackStatus']}: {reasons}")
    resources = cloudformation.list_stack_resources(StackName=name)["StackResourceSummaries"]
    return DeployedStack(
        name=name,
        outputs={o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])},
        physical_ids={r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources if r["LogicalResourceId"]},
        parameters=values,
    )


def container_environments(ecs: Any, deployed: DeployedStack) -> dict[str, dict[str, str]]:
    """Each service's container environment as ECS holds it, by container name."""
    environments = {}
    for logical in ("ProducerTaskDefinition", "S3SinkTaskDefinition", "DynamoSinkTaskDefinition"):
        definition = ecs.describe_task_definition(taskDefinition=deployed.physical_ids[logical])["taskDefinition"]
        (container,) = definition["containerDefinitions"]
        environments[container["name"]] = {e["name"]: e["value"] for e in container.get("environment", [])}
    return environments
