"""How text reads: counts in sentences (``1 request``, ``3 children``), times taken, and text from outside
shown safely."""

from __future__ import annotations

import math

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


def duration(seconds: object, *, unknown: str = "not recorded", unit: str = "seconds") -> str:
    """``0.04 seconds``, ``12.5 seconds``, ``1 min 05 s``, ``1 h 06 min``: how long a run took, for people.

    As precise as is worth reading: two decimals under ten seconds (a run over a handful of
    records takes a fraction of a second, which ``0.0`` would hide), one under a minute, whole
    seconds after that. Shared by the console's end-of-run summary, the run report and ``status``.
    """
    if not isinstance(seconds, (int, float)) or isinstance(seconds, bool) or not 0 <= seconds < math.inf:
        return unknown
    if seconds < 0.01:
        return f"under 0.01 {unit}"
    if seconds < 10:
        return f"{seconds:.2f} {unit}"
    if seconds < 59.95:
        return f"{seconds:.1f} {unit}"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


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
