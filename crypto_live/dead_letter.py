"""The dead-letter record: what crypto-live writes to KAFKA_DLQ_TOPIC. Pure; no I/O.

Both the producer (frames that are not valid events) and the sinks (messages that are
not valid events) use this one format, so a single tool can read the DLQ::

    {"reason": "field 'c' (close price) is 'NaN', expected a finite decimal string",
     "stage": "s3-sink",
     "source": {"topic": "binance.miniticker", "partition": 0, "offset": 41},
     "raw": "{\\"e\\":\\"24hrMiniTicker\\", …}", "raw_encoding": "utf-8"}

``raw`` holds the original bytes: as text when they are valid UTF-8, otherwise base64
with ``raw_encoding`` "base64". ``source`` is null for frames read from the websocket.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson


def dead_letter(
    reason: str,
    raw: bytes | str,
    *,
    stage: str,
    topic: str | None = None,
    partition: int | None = None,
    offset: int | None = None,
) -> dict[str, Any]:
    """Build the DLQ record for ``raw``, rejected by ``stage`` for ``reason``."""
    if isinstance(raw, str):
        text, encoding = raw, "utf-8"
    else:
        try:
            text, encoding = raw.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    source = None if topic is None else {"topic": topic, "partition": partition, "offset": offset}
    return {"reason": reason, "stage": stage, "source": source, "raw": text, "raw_encoding": encoding}


def encode(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record)


def original_bytes(record: dict[str, Any]) -> bytes:
    """The rejected payload exactly as it was received (for replays and tests)."""
    raw: str = record["raw"]
    if record["raw_encoding"] == "base64":
        return base64.b64decode(raw)
    return raw.encode("utf-8")
