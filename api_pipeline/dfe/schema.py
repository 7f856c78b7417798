"""Validation of request records against DfE's schema (DESIGN §5).

The bundled schema (``data/csc_record.schema.json``) is the project's own file,
written from DfE's published OpenAPI document. ``PAYLOAD_SCHEMA`` may point at a
newer DfE ``openapi.json`` (``components.schemas.CSC``) or at a one-record JSON
Schema, so a council can follow a DfE change without a new release.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

from api_pipeline.errors import ConfigError
from api_pipeline.wording import plural, printable

# Values of these fields identify a child. No message shows a value of any field (see
# RecordValidator); these are the ones that matter most.
PERSONAL_FIELDS = frozenset(
    {
        "first_name",
        "surname",
        "date_of_birth",
        "expected_date_of_birth",
        "postcode",
        "unique_pupil_number",
        "former_unique_pupil_number",
    }
)
MAX_REASONS = 5
# An enumeration's allowed values are listed in a reason (DfE's code lists, never record data),
# the first this many of them, each cut to ALLOWED_VALUE_LENGTH characters.
MAX_ALLOWED_VALUES = 12
ALLOWED_VALUE_LENGTH = 40
# The form a value of each format takes, for the reason of one that is not.
FORMAT_SHAPES = {
    "date": "YYYY-MM-DD",
    "date-time": "YYYY-MM-DDThh:mm:ss with a time zone, e.g. 2026-03-01T21:04:33Z",
    "time": "hh:mm:ss with a time zone",
}


def load_bundled_schema() -> dict[str, Any]:
    text = resources.files("api_pipeline").joinpath("data/csc_record.schema.json").read_text(encoding="utf-8")
    return json.loads(text)


def load_schema(path: Path | None) -> dict[str, Any]:
    """The one-record schema: the bundled one, or the file ``PAYLOAD_SCHEMA`` names."""
    if path is None:
        return load_bundled_schema()
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"PAYLOAD_SCHEMA: cannot read {path}: {exc}") from None
    if isinstance(document, dict) and "components" in document:
        try:
            csc = document["components"]["schemas"]["CSC"]
        except (KeyError, TypeError):
            raise ConfigError(f"PAYLOAD_SCHEMA: {path} has no components.schemas.CSC") from None
        record = csc.get("items", csc) if isinstance(csc, dict) else None
        if not isinstance(record, dict):
            raise ConfigError(f"PAYLOAD_SCHEMA: {path}: components.schemas.CSC.items is not a schema")
        return record
    if isinstance(document, dict) and document.get("type") == "object":
        return document
    raise ConfigError(f"PAYLOAD_SCHEMA: {path} is neither an OpenAPI document nor a record JSON Schema")


def generalise_path(path: str) -> str:
    """``social_care_episodes[1].referral_source`` → ``social_care_episodes[].referral_source``, for counting."""
    return re.sub(r"\[\d+\]", "[]", path)


def format_path(parts: Any) -> str:
    """``['social_care_episodes', 1, 'referral_source']`` → ``social_care_episodes[1].referral_source``."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(record)"


def formats_of(schema: Any) -> frozenset[str]:
    """Every ``format`` the schema names, at any depth."""
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if isinstance(node.get("format"), str):
                found.add(node["format"])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(found)


def schema_keys(schema: Any) -> frozenset[str]:
    """Every property name the schema declares, at any depth: the keys a message may name."""
    found: set[str] = set()
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                found.update(key for key in properties if isinstance(key, str))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return frozenset(found)


UNKNOWN_KEY = "<key not in the schema>"

# ECMA-262's \s: the white space and line terminators JavaScript knows (Python's, under re.ASCII,
# are only the ASCII ones).
_ECMA_SPACE = "\\t\\n\\v\\f\\r \\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000\\ufeff"


def ecma_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled to match as JSON Schema says patterns match: as ECMA-262 regular
    expressions, which jsonschema-rs (and DfE's schema check) follow and Python's ``re`` does not.

    Three differences matter for a schema like DfE's: ``$`` matches only at the very end (Python's
    also matches before a final newline, so ``"C0000001\\n"`` passed ``^[A-Za-z0-9]+$``); ``\\d``
    and ``\\w`` are ASCII only; ``\\s`` is ECMA's set of spaces. ``\\S`` inside a character class
    keeps Python's (ASCII) meaning.
    """
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            pair = pattern[i : i + 2]
            if pair == "\\s":
                out.append(_ECMA_SPACE if in_class else f"[{_ECMA_SPACE}]")
            elif pair == "\\S" and not in_class:
                out.append(f"[^{_ECMA_SPACE}]")
            else:
                out.append(pair)
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            char = "\\Z"
        out.append(char)
        i += 1
    return re.compile("".join(out), re.ASCII)


def _ecma_pattern_keyword(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[Any]:
    """jsonschema's ``pattern`` keyword, matching as :func:`ecma_pattern` does."""
    from jsonschema.exceptions import ValidationError  # loaded with jsonschema (start-up)

    if validator.is_type(instance, "string") and not _compiled(pattern).search(instance):
        yield ValidationError(f"does not match {pattern!r}")


_compiled = functools.lru_cache(maxsize=256)(ecma_pattern)

DISAGREEMENT = (
    "the two schema checks disagree about this record, so it is not sent (DfE's may refuse it too); "
    "please report this to the tool's maintainers with the run's log"
)


def _format_check(checker: Any, name: str) -> Callable[[str], bool]:
    """The reference's own check of format ``name``, as a plain function that remembers its last
    answers: a record holds some twenty dates, and a table few distinct ones (16,384 is 45 years
    of days), so most are answered from memory (jsonschema-rs then takes 7 µs a record, not 18)."""
    func, raises = checker.checkers[name]

    @functools.lru_cache(maxsize=16_384)
    def check(value: str) -> bool:
        try:
            return bool(func(value))
        except raises:
            return False

    return check


class RecordValidator:
    """Validates one record at a time and explains failures without any value from the record.

    A message names the field's path and the rule, and says "a value" where a validator
    would quote the data; a key the schema does not declare (which could itself be data) is
    counted, not named. ``jsonschema-rs`` answers "is it valid?" (about 150 times faster than
    the reference implementation on this schema: see benchmarks/bench_validators.py). The
    reference ``jsonschema`` explains the records that fail, which are few. Without
    ``jsonschema-rs`` the reference does both.

    The two must judge alike, so each is given the other's rules where they differ: the
    reference matches patterns as ECMA-262 does (:func:`ecma_pattern`, as jsonschema-rs does),
    and jsonschema-rs checks formats with the reference's own format checker (it took
    ``0000-01-01`` for a date). Should they still disagree about a record, it is invalid
    (:data:`DISAGREEMENT`): a record is sent only when both would pass it.
    """

    def __init__(self, schema: dict[str, Any], *, fast: bool = True) -> None:
        """``fast=False``: the reference alone (what runs without jsonschema-rs)."""
        from jsonschema import Draft7Validator, validators  # start-up: only for commands that validate

        Draft7Validator.check_schema(schema)
        reference = validators.extend(Draft7Validator, {"pattern": _ecma_pattern_keyword})
        checker = Draft7Validator.FORMAT_CHECKER
        self._validator = reference(schema, format_checker=checker)
        self._is_valid = self._validator.is_valid
        self._keys = schema_keys(schema)
        if not fast:
            return
        try:
            import jsonschema_rs  # optional fast path; loaded with jsonschema (start-up)
        except ImportError:
            return
        formats = {name: _format_check(checker, name) for name in formats_of(schema) if name in checker.checkers}
        quick = jsonschema_rs.Draft7Validator(schema, validate_formats=True, formats=formats)
        self._is_valid = quick.is_valid

    @classmethod
    def from_settings(cls, payload_schema: Path | None) -> RecordValidator:
        return cls(load_schema(payload_schema))

    def errors(self, record: Any) -> list[str]:
        """Short, human reasons, one per problem (at most MAX_REASONS); empty when valid."""
        return [f"{path}: {message}" for path, message in self.problems(record)]

    def problems(self, record: Any) -> list[tuple[str, str]]:
        """``(json path, reason)`` per problem (at most MAX_REASONS); empty when valid."""
        try:
            if self._is_valid(record):
                return []
        except (ValueError, TypeError, OverflowError):  # jsonschema-rs on text or numbers Rust cannot hold
            pass
        found = sorted(self._validator.iter_errors(record), key=lambda e: [str(p) for p in e.absolute_path])
        if not found:
            return [(format_path(()), DISAGREEMENT)]
        return [(self._path(error.absolute_path), self._explain(error)) for error in found[:MAX_REASONS]]

    def _path(self, parts: Any) -> str:
        """The path with any key the schema does not declare replaced: a stray key may be data."""
        return format_path(p if isinstance(p, int) or p in self._keys else UNKNOWN_KEY for p in parts)

    @staticmethod
    def _explain(error: Any) -> str:
        kind = error.validator
        limit = error.validator_value
        if kind == "maxLength":
            return f"a value is longer than {plural(limit, 'character')}"
        if kind == "minLength":
            return f"a value is shorter than {plural(limit, 'character')}"
        if kind == "pattern":
            return f"a value has characters that are not allowed (pattern {printable(str(limit))})"
        if kind == "type":
            got = "null" if error.instance is None else type(error.instance).__name__
            return f"expected {limit}, got {got}"
        if kind == "format":
            shape = f" ({FORMAT_SHAPES[limit]})" if limit in FORMAT_SHAPES else ""
            return f"a value is not a valid {limit}{shape}"
        if kind == "additionalProperties":
            extra = len(set(error.instance) - set(error.schema.get("properties", {})))
            return f"{extra} key(s) not allowed by the schema (not named here: a stray key may be data)"
        if kind == "required":
            missing = [name for name in error.validator_value if isinstance(name, str) and name not in error.instance]
            return f"required key missing: {', '.join(missing)}" if missing else "a required key is missing"
        if kind == "enum":
            return f"a value is not one of those allowed: {_allowed(limit)}"
        if kind == "const":
            return f"a value is not the one allowed: {_allowed([limit])}"
        if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            return f"a value is out of range ({kind} {limit})"
        if kind == "maxItems":
            return f"more than {limit} items"
        if kind == "uniqueItems":
            return "items are not unique"
        return f"fails '{kind}' check"


def _allowed(values: Any) -> str:
    """The schema's allowed values, as JSON (quoted, control characters escaped), the first
    :data:`MAX_ALLOWED_VALUES` of a longer list; from the schema, never from the record."""
    if not isinstance(values, list):
        return "(the schema's list)"
    shown = []
    for value in values[:MAX_ALLOWED_VALUES]:
        text = printable(json.dumps(value, ensure_ascii=False))
        shown.append(text if len(text) <= ALLOWED_VALUE_LENGTH else text[: ALLOWED_VALUE_LENGTH - 1] + "…")
    more = len(values) - len(shown)
    return ", ".join(shown) + (f" and {more} more (see the schema)" if more > 0 else "")
