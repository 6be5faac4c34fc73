"""Small text helpers for messages. Pure."""

from __future__ import annotations


def shorten(value: object, limit: int = 40) -> str:
    """``repr(value)``, cut to ``limit`` characters with an ellipsis: a bad value in a message
    must stay one readable line however large it is."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
