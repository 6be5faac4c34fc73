"""Hypothesis strategies for near-miss bytes: valid input with a few bytes changed."""

from __future__ import annotations

from hypothesis import strategies as st

#: Bytes that make or break JSON and Binance's event layout.
ALPHABET = b'0123456789.,"[]{}: eEsAZaz-+\\\x00\xff'


def _apply(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    for kind, at, new in edits:
        at %= len(data) + 1
        if kind == "replace":
            data = data[:at] + new + data[at + 1 :]
        elif kind == "insert":
            data = data[:at] + new + data[at:]
        else:
            data = data[:at] + data[at + 1 :]
    return data


def mutations(data: bytes, max_edits: int = 3) -> st.SearchStrategy[bytes]:
    """``data`` with one to ``max_edits`` bytes replaced, inserted or deleted."""
    edit = st.tuples(
        st.sampled_from(["replace", "insert", "delete"]),
        st.integers(0, len(data)),
        st.sampled_from([bytes([b]) for b in ALPHABET]),
    )
    return st.lists(edit, min_size=1, max_size=max_edits).map(lambda edits: _apply(data, edits))
