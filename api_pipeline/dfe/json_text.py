"""A record's JSON text: read exactly, written exactly, framed as a request body (DESIGN §5, §6).

The staging table holds each record as JSON text that councils' SQL writes; DfE reads the
bytes the tool sends. Between the two nothing may change what the record says: integers of
any size stay exact, ``NaN`` is refused, a key written twice or a number no request can carry
is found before the record is sent (:func:`unclear_part`), and nesting too deep to walk is
caught before parsing (:func:`nesting_exceeds`). The record's *shape* (what DfE merges, and
the payloads built from it) is :mod:`api_pipeline.dfe.payload`'s.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from typing import Any, Final

import orjson

MAX_NESTING: Final = 64
"""Deepest nesting of objects and arrays a record may have. DfE's record nests six deep (record,
episodes, an episode, its items, an item, its care workers); anything near Python's stack limit
would crash the parser or the code that walks the record, for one row, every night."""

# A JSON string, escapes included: each alternative starts with a different character, so
# matching never backtracks more than once per character (linear time on any input).
_JSON_STRING: Final = re.compile(r'"(?:[^"\\]|\\.)*"', re.S)
_NOT_BRACKET: Final = re.compile(r"[^\[\]{}]+")
_DEPTH_STEP: Final = {"[": 1, "{": 1, "]": -1, "}": -1}


def nesting_exceeds(text: str, limit: int) -> bool:
    """Whether JSON ``text`` nests objects and arrays more than ``limit`` deep, judged without parsing.

    A record with no more than ``limit`` brackets opened in all cannot nest deeper: that is
    almost every record, answered by two counts. Otherwise strings are taken out (a bracket
    inside one is not structure) and the depth is counted.
    """
    if text.count("{") + text.count("[") <= limit:
        return False
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    depth = deepest = 0
    for char in brackets:
        depth += _DEPTH_STEP[char]
        if depth > deepest:
            deepest = depth
            if deepest > limit:
                return True
    return False


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_DECODER: Final = json.JSONDecoder(parse_constant=_refuse_constant)


# Every digit as "0", so that one byte search finds a run of 19 or more digits.
_DIGITS_AS_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
_NINETEEN_DIGITS: Final = b"0" * 19


def loads_record(text: str | bytes) -> Any:
    """Parse JSON as the staging table holds it, exactly: integers stay exact (any size);
    ``NaN`` and ``Infinity``, which Python's parser would accept but are not JSON, are refused
    (``json.JSONDecodeError`` is a ``ValueError``, so one ``except ValueError`` catches both).

    ``orjson`` parses, twice as fast as the standard library, whenever its answer is the same:
    it would turn an integer beyond 64 bits into a float, so a text with a run of 19 or more
    digits anywhere (an integer that might not fit; rare, and then usually a string) goes to
    the standard library, as does any text orjson refuses (a lone surrogate, a syntax error),
    so that the error, with its line and column, is the one the standard library gives.
    """
    try:
        data = text if isinstance(text, bytes) else text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8, so not orjson's to parse
        return _DECODER.decode(text)  # type: ignore[arg-type]
    if _NINETEEN_DIGITS not in data.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return _DECODER.decode(data.decode("utf-8") if isinstance(text, bytes) else text)


DUPLICATE_KEY: Final = "duplicate key"
NUMBER_TOO_LARGE: Final = "number too large"
# The integers orjson, and so a request, can carry exactly; beyond them the record cannot be sent as it is.
_SMALLEST_INT: Final = -(2**63)
_LARGEST_INT: Final = 2**64 - 1
# A colon may be written \u003a or \u003A: any escape starting so sends a record the slow way (rare).
_MAYBE_ESCAPED_COLON: Final = "\\u003"


def unclear_part(text: str, record: Any) -> tuple[str, tuple[str | int, ...]] | None:
    """Where ``record``, which :func:`loads_record` parsed from ``text``, would not mean the same to
    every reader: ``(DUPLICATE_KEY, path)`` for the first key that appears twice in one object (this
    parser keeps the last, SQL Server's ``JSON_VALUE`` reads the first), ``(NUMBER_TOO_LARGE, path)``
    for the first number no request can carry exactly (an integer beyond 64 bits, or one beyond a
    double's range, read as infinity); None for almost every record.

    Cheap whenever nothing is amiss, so every record can be checked. In JSON text every key is
    followed by exactly one ``:`` outside strings, and the parsed record's strings all come from
    the text's; so, with no ``\\u003a`` escape in the text (a colon written another way), as many
    colons in the record written out again as in the text means no key was lost to a duplicate
    (a lost key takes at least its own colon with it).
    Only when the counts differ (a duplicate, or a value that is dropped or escaped) is the text
    parsed again, keeping every key, to find the path; only when writing out fails or writes a
    ``null`` (what orjson makes of infinity) are the numbers looked at.
    """
    try:
        encoded: bytes | None = orjson.dumps(record)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits, or a lone surrogate
        encoded = None
    if encoded is None or text.count(":") != encoded.count(b":") or _MAYBE_ESCAPED_COLON in text:
        path = _duplicate_key_path(text)
        if path is not None:
            return DUPLICATE_KEY, path
    if encoded is None or (b"null" in encoded and _has_non_finite(record)):
        path = _too_large_number_path(record, ())
        if path is not None:
            return NUMBER_TOO_LARGE, path
    return None


class _Object(dict):
    """An object as the duplicate-key parse builds it: it remembers the path (from itself) of the
    first key that appears twice in it or below it."""

    __slots__ = ("duplicate",)

    def __init__(self) -> None:
        super().__init__()
        self.duplicate: tuple[str | int, ...] | None = None


def _keep_pairs(pairs: list[tuple[str, Any]]) -> _Object:
    found = _Object()
    for key, value in pairs:
        if found.duplicate is None:
            if key in found:
                found.duplicate = (key,)
            else:
                below = _duplicate_in(value)
                if below is not None:
                    found.duplicate = (key, *below)
        found[key] = value
    return found


def _duplicate_in(value: Any) -> tuple[str | int, ...] | None:
    if type(value) is _Object:
        return value.duplicate
    if type(value) is list:
        for index, item in enumerate(value):
            below = _duplicate_in(item)
            if below is not None:
                return (index, *below)
    return None


_PAIRS_DECODER: Final = json.JSONDecoder(object_pairs_hook=_keep_pairs, parse_constant=_refuse_constant)


def _duplicate_key_path(text: str) -> tuple[str | int, ...] | None:
    """The path of the first key that appears twice in one object of ``text``: a parse that keeps every key."""
    try:
        return _duplicate_in(_PAIRS_DECODER.decode(text))
    except (ValueError, RecursionError):  # loads_record parsed it: cannot happen, and then nothing to name
        return None


def _too_large_number_path(value: Any, path: tuple[str | int, ...]) -> tuple[str | int, ...] | None:
    """The path of the first number in ``value`` that no request can carry exactly."""
    kind = type(value)
    if kind is dict:
        for key, item in value.items():
            found = _too_large_number_path(item, (*path, key))
            if found is not None:
                return found
    elif kind is list:
        for index, item in enumerate(value):
            found = _too_large_number_path(item, (*path, index))
            if found is not None:
                return found
    elif kind is int:
        return None if _SMALLEST_INT <= value <= _LARGEST_INT else path
    elif kind is float:
        return None if math.isfinite(value) else path
    return None


def encode_record(record: Any) -> bytes:
    """One record as compact UTF-8 JSON, exactly as the data says (``Zoë`` stays ``Zoë``).

    Serialised by ``orjson``, five times faster than the standard library on these records
    and the same bytes for everything :func:`loads_record` produces (strings, integers,
    booleans, nulls), floats aside, which DfE's schema has none of. What JSON cannot carry
    (a lone surrogate, an integer over 64 bits, NaN) raises ``ValueError``, never silently
    changes: orjson writes NaN as ``null``, so it is looked for first.
    """
    try:
        out = orjson.dumps(record)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"cannot be encoded as JSON: {exc}") from None
    if b"null" in out and _has_non_finite(record):  # rare: a record with a null in it
        raise ValueError("cannot be encoded as JSON: NaN and Infinity are not JSON values")
    return out


def _has_non_finite(value: Any) -> bool:
    if type(value) is float:
        return not math.isfinite(value)
    if type(value) is dict:
        return any(_has_non_finite(v) for v in value.values())
    if type(value) is list:
        return any(_has_non_finite(v) for v in value)
    return False


def frame_body(encoded: Iterable[bytes]) -> bytes:
    """The exact POST body: a JSON array of records already encoded by :func:`encode_record`."""
    return b"[" + b",".join(encoded) + b"]"
