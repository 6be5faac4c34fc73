"""Helpers shared by the producer's tests."""

from __future__ import annotations

import orjson

from tests.factories import key_of
from tests.helpers import read_topic


def published_keys(bootstrap: str, topic: str) -> list[tuple[str, int]]:
    """The (s, E) key of every event on ``topic``, duplicates kept."""
    return [key_of(orjson.loads(message.value())) for message in read_topic(bootstrap, topic)]
