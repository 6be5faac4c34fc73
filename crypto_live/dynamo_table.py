"""The DynamoDB table the pipeline writes to: its one definition, and the check that a table fits it.

The table::

    partition key  symbol      (S)
    sort key       event_time  (N, the event's ``E`` in ms)
    billing        on demand
    TTL            on the ``ttl`` attribute (epoch seconds)

:func:`create_table_request` and :func:`table_problems` are two readings of the same
constants, so what crypto-live creates is exactly what it accepts. :func:`ensure_table`
is the one start-up routine both the DynamoDB sink and ``crypto-live provision`` run:
describe the table, create it when allowed, wait until it is ACTIVE, and say why it does
not fit (a :class:`~crypto_live.errors.TableSetupError` naming the table). It never
modifies a table it did not create.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import botocore.exceptions

from crypto_live.aws import error_text
from crypto_live.errors import TableSetupError

log = logging.getLogger(__name__)

PARTITION_KEY = ("symbol", "S")
SORT_KEY = ("event_time", "N")
TTL_ATTRIBUTE = "ttl"

# Statuses in which a table exists but will not take writes again.
_UNUSABLE_STATUSES = ("DELETING", "ARCHIVING", "ARCHIVED", "INACCESSIBLE_ENCRYPTION_CREDENTIALS")
# describe_table after create_table: every 2 s, for up to 3 minutes.
_ACTIVE_WAIT = {"Delay": 2, "MaxAttempts": 90}


def key_schema() -> list[dict[str, str]]:
    return [
        {"AttributeName": PARTITION_KEY[0], "KeyType": "HASH"},
        {"AttributeName": SORT_KEY[0], "KeyType": "RANGE"},
    ]


def create_table_request(table: str) -> dict[str, Any]:
    """create_table arguments for the pipeline's table, billed on demand (TTL is a separate call)."""
    return {
        "TableName": table,
        "KeySchema": key_schema(),
        "AttributeDefinitions": [
            {"AttributeName": name, "AttributeType": kind} for name, kind in (PARTITION_KEY, SORT_KEY)
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def expected_keys() -> str:
    return f"partition key {_key(*PARTITION_KEY)}, sort key {_key(*SORT_KEY)}"


def table_problems(table: Mapping[str, Any] | None) -> list[str]:
    """What keeps the sink from writing to a table, given describe_table's ``Table``.

    ``None`` stands for a table that does not exist. An empty list means it fits.
    """
    if table is None:
        return ["does not exist"]
    problems = []
    if table.get("TableStatus") in _UNUSABLE_STATUSES:
        problems.append(f"is {table['TableStatus']}")
    types = {d["AttributeName"]: d["AttributeType"] for d in table.get("AttributeDefinitions", [])}
    by_role = {k["KeyType"]: k["AttributeName"] for k in table.get("KeySchema", [])}
    for role, label, (name, kind) in (("HASH", "partition key", PARTITION_KEY), ("RANGE", "sort key", SORT_KEY)):
        actual = by_role.get(role)
        if actual is None:
            problems.append(f"has no {label}, expected {_key(name, kind)}")
        elif (actual, types.get(actual)) != (name, kind):
            problems.append(f"{label} is {_key(actual, types.get(actual, '?'))}, expected {_key(name, kind)}")
    return problems


def ttl_problem(description: Mapping[str, Any]) -> str | None:
    """Why rows would not expire, given describe_time_to_live's ``TimeToLiveDescription``."""
    status = description.get("TimeToLiveStatus", "DISABLED")
    attribute = description.get("AttributeName")
    if status in ("ENABLED", "ENABLING") and attribute == TTL_ATTRIBUTE:
        return None
    if status in ("ENABLED", "ENABLING"):
        return f"TTL is enabled on {attribute!r}, not {TTL_ATTRIBUTE!r}: rows will not expire"
    return f"TTL is {status.lower()}, not enabled on {TTL_ATTRIBUTE!r}: rows will not expire"


def table_label(client: Any, table: str) -> str:
    """How every message names the table: ``DynamoDB table 'name' (region r)``."""
    return f"DynamoDB table {table!r} (region {client.meta.region_name})"


# --------------------------------------------------------------------------- check or create


def ensure_table(client: Any, table: str, *, create: bool = False) -> None:
    """Check that ``table`` fits the definition, creating it first when missing and ``create`` is set.

    ``client`` is a boto3 DynamoDB client. A table this call creates gets TTL on ``ttl``; an
    existing one is left as it is, with a warning if its rows would never expire. Raises
    TableSetupError naming the table when it is missing, mis-keyed or cannot be read.
    """
    described = _describe(client, table)
    if described is None and create:
        described = _create(client, table)
    problems = table_problems(described)
    if problems:
        raise TableSetupError(_setup_message(client, table, problems))
    assert described is not None  # table_problems reports a missing table
    if described.get("TableStatus") == "CREATING":
        _wait_until_active(client, table)
    _warn_if_rows_never_expire(client, table)


def _setup_message(client: Any, table: str, problems: list[str]) -> str:
    message = f"{table_label(client, table)} " + "; ".join(problems)
    if problems == ["does not exist"]:
        return message + ": create it with the infrastructure code, or set DYNAMO_CREATE_TABLE=true for a local run"
    return message + f"; the sink needs {expected_keys()}"


@contextlib.contextmanager
def _setup_step(client: Any, table: str, operation: str) -> Iterator[None]:
    """Turn a control-plane failure into the one-line reason the table cannot be used."""
    try:
        yield
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        raise TableSetupError(f"{table_label(client, table)}: {operation} failed: {error_text(exc)}") from None


def _describe(client: Any, table: str) -> dict[str, Any] | None:
    with _setup_step(client, table, "DescribeTable"):
        try:
            described: dict[str, Any] = client.describe_table(TableName=table)["Table"]
        except client.exceptions.ResourceNotFoundException:
            return None
        return described


def _create(client: Any, table: str) -> dict[str, Any]:
    with _setup_step(client, table, "CreateTable"):
        try:
            client.create_table(**create_table_request(table))
        except client.exceptions.ResourceInUseException:
            return _wait_until_active(client, table)  # another process created it: check, don't modify
    described = _wait_until_active(client, table)
    with _setup_step(client, table, "UpdateTimeToLive"):
        client.update_time_to_live(
            TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE}
        )
    log.info("created %s: on-demand billing, TTL on %r", table_label(client, table), TTL_ATTRIBUTE)
    return described


def _wait_until_active(client: Any, table: str) -> dict[str, Any]:
    with _setup_step(client, table, "waiting for the table to become ACTIVE"):
        client.get_waiter("table_exists").wait(TableName=table, WaiterConfig=_ACTIVE_WAIT)
        described: dict[str, Any] = client.describe_table(TableName=table)["Table"]
        return described


def _warn_if_rows_never_expire(client: Any, table: str) -> None:
    try:
        description = client.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        # Reading TTL needs its own permission; writing works without it.
        log.debug("could not read the TTL setting of %s: %s", table, exc)
        return
    problem = ttl_problem(description)
    if problem:
        log.warning("%s: %s", table_label(client, table), problem)


def _key(name: str, kind: str) -> str:
    return f"{name!r} ({kind})"
