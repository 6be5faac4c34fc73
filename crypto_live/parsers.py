"""Pure parsers for configuration strings.

Each parser takes the stripped raw string and returns the typed value, or raises
``ValueError`` whose message completes the sentence "expected …" — the caller adds the
variable name and the offending value.

All are pure except :func:`ca_bundle`, which reads the file it names: a wrong path is
reported at start-up, naming the variable, not by librdkafka at the first connection.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from crypto_live.binance import SYMBOL


def text(raw: str) -> str:
    return raw


def absolute_path(raw: str) -> str:
    """An absolute path: a relative one would depend on the working directory of whoever reads it."""
    if not os.path.isabs(raw) or "\0" in raw:
        raise ValueError("an absolute path")
    return os.path.normpath(raw)


def whole(minimum: int, maximum: int) -> Callable[[str], int]:
    """A whole number within [minimum, maximum]."""

    def parse(raw: str) -> int:
        expected = f"a whole number from {minimum} to {maximum}"
        if not re.fullmatch(r"[+-]?\d+", raw):
            raise ValueError(expected)
        value = int(raw)
        if not minimum <= value <= maximum:
            raise ValueError(expected)
        return value

    return parse


def seconds(raw: str) -> float:
    """A positive, finite number of seconds (fractions allowed)."""
    expected = "a positive number of seconds"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(expected) from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(expected)
    return value


def retention(raw: str) -> int:
    """Kafka retention (ms or bytes): -1 for unlimited, or a positive whole number."""
    expected = "-1 (unlimited) or a positive whole number"
    if not re.fullmatch(r"-?\d+", raw):
        raise ValueError(expected)
    value = int(raw)
    if value == 0 or value < -1:
        raise ValueError(expected)
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError("true or false")


def choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        lowered = raw.lower()
        if lowered not in options:
            raise ValueError("one of " + ", ".join(options))
        return lowered

    return parse


def keyword(*options: str) -> Callable[[str], str]:
    """One of ``options`` in any letter case, returned as ``options`` spells it."""
    by_upper = {option.upper(): option for option in options}

    def parse(raw: str) -> str:
        try:
            return by_upper[raw.upper()]
        except KeyError:
            raise ValueError("one of " + ", ".join(options)) from None

    return parse


def ca_bundle(raw: str) -> str:
    """The path of a readable PEM file holding at least one certificate."""
    expected = "the path of a readable PEM file of CA certificates"
    try:
        with open(raw, "rb") as bundle:
            head = bundle.read(1 << 20)
    except OSError:
        raise ValueError(expected) from None
    if b"-----BEGIN CERTIFICATE-----" not in head:
        raise ValueError(expected + " (this file holds no BEGIN CERTIFICATE block)")
    return raw


_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-\d{1,2}")


def aws_region(raw: str) -> str:
    if not _REGION.fullmatch(raw):
        raise ValueError("an AWS region code such as ap-southeast-1")
    return raw


_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def bootstrap_servers(raw: str) -> str:
    expected = "a comma-separated list of host:port"
    entries = [entry.strip() for entry in raw.split(",")]
    for entry in entries:
        host, sep, port = entry.rpartition(":")
        if not sep or not _HOST.fullmatch(host) or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(expected)
    return ",".join(entries)


_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def topic_name(raw: str) -> str:
    if not _TOPIC.fullmatch(raw) or raw in {".", ".."}:
        raise ValueError("a Kafka topic name: 1-249 of letters, digits, '.', '_', '-'")
    return raw


def group_id(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,255}", raw):
        raise ValueError("a consumer group id: 1-255 of letters, digits, '.', '_', '-'")
    return raw


def bucket_name(raw: str) -> str:
    """An S3 general-purpose bucket name (the naming rules AWS enforces)."""
    expected = "an S3 bucket name: 3-63 lowercase letters, digits, '.', '-', starting and ending with a letter or digit"
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", raw) or ".." in raw:
        raise ValueError(expected)
    if ".-" in raw or "-." in raw:
        raise ValueError(expected)
    try:
        ipaddress.IPv4Address(raw)
    except ValueError:
        pass
    else:
        raise ValueError(expected + ", not an IP address")
    if raw.startswith(("xn--", "sthree-")) or raw.endswith(("-s3alias", "--ol-s3", ".mrap")):
        raise ValueError(expected + ", without a reserved prefix or suffix")
    return raw


def s3_prefix(raw: str) -> str:
    """A key prefix; surrounding slashes are dropped, empty means the bucket's root."""
    prefix = raw.strip("/")
    segments = prefix.split("/") if prefix else []
    if any(segment in {"", ".", ".."} for segment in segments) or len(prefix) > 512:
        raise ValueError("a key prefix such as batch_jsonl or raw/binance (no empty, '.' or '..' parts)")
    if not re.fullmatch(r"[A-Za-z0-9!_.*'()/=-]*", prefix):
        raise ValueError("a key prefix of letters, digits and !_.*'()/=- only")
    return prefix


def table_name(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.-]{3,255}", raw):
        raise ValueError("a DynamoDB table name: 3-255 of letters, digits, '_', '.', '-'")
    return raw


def secret_name(raw: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9/_+=.@-]{1,512}", raw):
        raise ValueError("a Secrets Manager secret name or ARN: letters, digits and /_+=.@- only")
    return raw


def websocket_url(raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"ws", "wss"} or not parts.hostname:
        raise ValueError("a ws:// or wss:// URL with a host")
    try:
        _ = parts.port  # urlsplit checks the port only when asked
    except ValueError:
        raise ValueError("a ws:// or wss:// URL with a valid port") from None
    return raw


def symbols(raw: str) -> tuple[str, ...]:
    """Comma-separated trading symbols, upper-cased, duplicates dropped, order kept."""
    result: list[str] = []
    for item in raw.split(","):
        symbol = item.strip().upper()
        if not symbol:
            continue
        if not SYMBOL.fullmatch(symbol):
            raise ValueError("comma-separated symbols such as BTCUSDT,ETHUSDT")
        if symbol not in result:
            result.append(symbol)
    return tuple(result)


def redact_url(url: str) -> str:
    """Scheme, host and port of a URL: never its credentials, path, or query.

    Stream paths can carry API keys or listen keys; logs show only where we connect.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    return f"{parts.scheme}://{host}{port}/…" if parts.path or parts.query else f"{parts.scheme}://{host}{port}"


def mask(secret: str) -> str:
    """How a secret value is shown: a URL as :func:`redact_url` shows it, anything else as ``***``."""
    return redact_url(secret) if "://" in secret else "***"


def show(value: Any) -> str:
    """How `crypto-live config` prints a typed value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
