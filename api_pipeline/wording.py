"""Counts in sentences: ``1 request``, ``2 requests``, ``1 child``, ``3 children``."""

from __future__ import annotations

_IRREGULAR = {
    "child": "children",
    "synthetic child": "synthetic children",
    "batch": "batches",
    "was": "were",
    "is": "are",
}


def plural(count: int, word: str, many: str | None = None) -> str:
    """``count`` and ``word``, the word in the plural unless the count is exactly one."""
    if count == 1:
        return f"{count} {word}"
    return f"{count} {many or _IRREGULAR.get(word) or word + 's'}"
