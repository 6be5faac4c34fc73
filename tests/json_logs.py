"""Checks on what a LOG_FORMAT=json process writes: every line one JSON object, no secret,
and metrics records that follow CloudWatch's embedded metric format (EMF) specification."""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

import jsonschema
import pytest

from crypto_live import logs
from tests.helpers import CliProcess

#: The EMF document structure (CloudWatch_Embedded_Metric_Format_Specification), as a schema.
EMF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["_aws"],
    "properties": {
        "_aws": {
            "type": "object",
            "required": ["Timestamp", "CloudWatchMetrics"],
            "properties": {
                "Timestamp": {"type": "integer", "minimum": 0},
                "LogGroupName": {"type": "string", "minLength": 1},
                "CloudWatchMetrics": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["Namespace", "Dimensions", "Metrics"],
                        "properties": {
                            "Namespace": {"type": "string", "minLength": 1, "maxLength": 1024},
                            "Dimensions": {
                                "type": "array",
                                "items": {
                                    "type": "array",
                                    "maxItems": 30,
                                    "items": {"type": "string", "minLength": 1, "maxLength": 250},
                                },
                            },
                            "Metrics": {
                                "type": "array",
                                "maxItems": 100,
                                "items": {
                                    "type": "object",
                                    "required": ["Name"],
                                    "properties": {
                                        "Name": {"type": "string", "minLength": 1, "maxLength": 1024},
                                        "Unit": {
                                            "enum": [
                                                "Seconds",
                                                "Microseconds",
                                                "Milliseconds",
                                                "Bytes",
                                                "Kilobytes",
                                                "Megabytes",
                                                "Gigabytes",
                                                "Terabytes",
                                                "Bits",
                                                "Kilobits",
                                                "Megabits",
                                                "Gigabits",
                                                "Terabits",
                                                "Percent",
                                                "Count",
                                                "Bytes/Second",
                                                "Kilobytes/Second",
                                                "Megabytes/Second",
                                                "Gigabytes/Second",
                                                "Terabytes/Second",
                                                "Bits/Second",
                                                "Kilobits/Second",
                                                "Megabits/Second",
                                                "Gigabits/Second",
                                                "Terabits/Second",
                                                "Count/Second",
                                                "None",
                                            ]
                                        },
                                        "StorageResolution": {"enum": [1, 60]},
                                    },
                                },
                            },
                        },
                    },
                },
            },
        }
    },
}


def assert_emf(record: dict[str, Any]) -> dict[str, float]:
    """Fail unless ``record`` is an EMF document CloudWatch would extract every metric from;
    return its metric values by name."""
    jsonschema.validate(record, EMF_SCHEMA)
    timestamp = record["_aws"]["Timestamp"]
    assert abs(timestamp / 1000 - time.time()) < 3600, f"Timestamp {timestamp} is not epoch milliseconds of now"
    values: dict[str, float] = {}
    for directive in record["_aws"]["CloudWatchMetrics"]:
        for dimension_set in directive["Dimensions"]:
            for key in dimension_set:
                assert isinstance(record.get(key), str) and record[key], f"dimension {key} has no string value"
        names = [metric["Name"] for metric in directive["Metrics"]]
        assert len(names) == len(set(names)), f"metric names repeat: {names}"
        for name in names:
            value = record.get(name)
            assert isinstance(value, int | float) and not isinstance(value, bool), f"{name}={value!r} is not a number"
            assert math.isfinite(value), f"{name}={value!r}"
            values[name] = value
    return values


def json_records(output: str, *, secrets: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Every line of ``output`` parsed; fails on a line that is not one JSON object or shows a secret."""
    secrets = [secret for secret in secrets if secret]
    records = []
    for number, line in enumerate(output.splitlines(), start=1):
        for secret in secrets:
            assert secret not in line, f"line {number} shows a secret: {line[:400]}"
        try:
            record = json.loads(line)
        except ValueError:
            raise AssertionError(f"line {number} is not JSON: {line[:400]!r}") from None
        assert isinstance(record, dict), f"line {number} is not a JSON object: {line[:400]!r}"
        for field in ("timestamp", "level", "logger", "message", "service"):
            assert field in record, f"line {number} has no {field!r}: {line[:400]}"
        records.append(record)
    assert records, "no output at all: the checks would prove nothing"
    return records


def metrics_of(records: Iterable[dict[str, Any]]) -> list[dict[str, float]]:
    """The metric values of every EMF record among ``records``, each checked against the spec."""
    return [assert_emf(record) for record in records if "_aws" in record]


class JsonLogProcess(CliProcess):
    """A `crypto-live COMMAND` child whose output lines are JSON log records."""

    def records(self) -> list[dict[str, Any]]:
        """The complete lines so far, parsed (a line being written is left for later)."""
        complete = [line for line in list(self.lines) if line.endswith("\n")]
        return [json.loads(line) for line in complete]


@pytest.fixture
def clean_logging(monkeypatch):
    """Undo what logs.configure and register_secret change in this process."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    for name in ("_secrets", "_format", "_service", "_handler"):
        monkeypatch.setattr(logs, name, getattr(logs, name))
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    yield
    root.setLevel(level)
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
    logging.captureWarnings(False)
