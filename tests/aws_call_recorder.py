"""Run crypto-live with every AWS API call it makes written down.

    python -m tests.aws_call_recorder CALLS.json SUBCOMMAND [ARGS...]

runs ``crypto-live SUBCOMMAND ARGS`` in this process with botocore's one entry point for
API calls (``BaseClient._make_api_call``: plain calls, waiters and paginators all pass
through it) wrapped, and writes the calls to CALLS.json when the command returns,
whatever its exit status: a list of ``{"service", "operation", "region", "resources"}``
where resources are the names the call was about (bucket or bucket/key, table names,
secret id).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import botocore.client

from crypto_live.cli import main


def resources(service: str, params: dict[str, Any]) -> list[str]:
    """What an API call is about, by name, for the parameters crypto-live sends."""
    if service == "s3" and "Bucket" in params:
        return [f"{params['Bucket']}/{params['Key']}" if "Key" in params else params["Bucket"]]
    if service == "dynamodb":
        if "TableName" in params:
            return [params["TableName"]]
        return sorted(params.get("RequestItems", {}))
    if service == "secretsmanager" and "SecretId" in params:
        return [params["SecretId"]]
    return []


def record(out: Path, argv: list[str]) -> int:
    calls: list[dict[str, Any]] = []
    original = botocore.client.BaseClient._make_api_call

    def recording(client: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
        service = client.meta.service_model.service_name
        calls.append(
            {
                "service": service,
                "operation": operation_name,
                "region": client.meta.region_name,
                "resources": resources(service, api_params),
            }
        )
        return original(client, operation_name, api_params)

    botocore.client.BaseClient._make_api_call = recording
    try:
        return main(argv)
    finally:
        out.write_text(json.dumps(calls))


if __name__ == "__main__":
    sys.exit(record(Path(sys.argv[1]), sys.argv[2:]))
