"""How text reads: counts in sentences (``1 request``, ``3 children``), and text from outside shown safely."""

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


def printable(text: str) -> str:
    """``text`` with each character that acts rather than shows written as an escape: ``\\n``, ``\\x1b``, ``\\u202e``.

    For whatever the tool prints, logs or stores that came from the staging table or from DfE's
    answers: a newline there could forge a log line ("18:00:00 INFO all records sent"), an escape
    sequence clear the console or retitle its window, a bidi override show text reversed. The
    characters are those ``str.isprintable`` rejects, escaped as ``repr`` escapes them: C0 controls
    and DEL, C1 controls, Unicode format characters (the bidi embeddings, overrides and isolates
    U+202A-U+202E and U+2066-U+2069, zero-width characters, the byte-order mark), line and
    paragraph separators, spaces other than the plain one, lone surrogates, private-use and
    unassigned code points. Everything else, a backslash too, is left as it is, so the tool's own
    text reads unchanged.
    """
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else repr(char)[1:-1] for char in text)
