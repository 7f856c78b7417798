"""DfE's side of the contract, as the simulator plays it: how DfE merges what it is sent into
what it holds (DESIGN §5), and how it checks a record against its schema.

Standard library only, and deliberately not the pipeline's own code: the validator here is a
second, independent reading of the schema (the pipeline's is ``schema.RecordValidator``), and
the merge works from the record's declared structure (``payload.STRUCTURE``), so the end-to-end
tests compare the pipeline against the model rather than against itself.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from importlib import resources
from typing import Any

from api_pipeline.dfe.payload import RECORD, STRUCTURE, clone
from api_pipeline.dfe.schema import ecma_pattern

# ---------------------------------------------------------------------------
# The merge model (DESIGN §5)
# ---------------------------------------------------------------------------

# Child collections of an entity: name -> id key for id'd lists, None for blocks. The record's
# structure is declared once, in payload.STRUCTURE: the simulator merges by the same model the
# pipeline builds deltas for, so a change to the model is one change to both.
_RECORD_CHILDREN: dict[str, str | None] = dict(STRUCTURE[RECORD])
# Items of these id'd lists have child collections of their own; items of the others do not.
_ITEM_CHILDREN: dict[str, dict[str, str | None]] = {
    level: dict(children) for level, children in STRUCTURE.items() if level != RECORD
}


def apply_record(held: dict | None, sent: dict, *, share: bool = False) -> dict | None:
    """Apply one sent record to what DfE holds for that child, as DfE does.

    Returns the new held record, or None when the record is purged. Neither argument is
    modified. The result shares nothing with them, unless ``share``: then it may share
    parts with both, which is safe for a store that never changes a record in place and
    hands out only copies (the simulator's own store), and much cheaper.
    """
    if sent.get("purge") is True:
        return None
    return _merge_entity(held or {}, sent, _RECORD_CHILDREN, _share if share else clone)


def _share(value: Any) -> Any:
    return value


def _merge_entity(held: dict, sent: dict, children: dict[str, str | None], copy: Callable[[Any], Any]) -> dict:
    """Sent entity keys replace held ones wholly; child collections merge by their own rules."""
    if copy is _share:
        merged = {key: value for key, value in sent.items() if key not in children}
    else:
        merged = {key: copy(value) for key, value in sent.items() if key not in children}
    for key, id_key in children.items():
        if key not in sent:
            if key in held:
                merged[key] = copy(held[key])
        elif id_key is None:
            block = sent[key]
            if not (isinstance(block, dict) and block.get("purge") is True):
                merged[key] = copy(block)
        else:
            items = _merge_list(held.get(key) or [], sent[key], id_key, _ITEM_CHILDREN.get(key, {}), copy)
            if items:
                merged[key] = items
    return merged


def _merge_list(
    held: list, sent: list, id_key: str, item_children: dict[str, str | None], copy: Callable[[Any], Any]
) -> list:
    """Merge an id'd list item by item: purge removes, known ids merge, new ids append."""
    by_id: dict[Any, dict] = {item.get(id_key): item for item in held}
    fresh: set[Any] = set()
    for item in sent:
        item_id = item.get(id_key)
        if item.get("purge") is True:
            by_id.pop(item_id, None)
            fresh.discard(item_id)
        else:
            by_id[item_id] = _merge_entity(by_id.get(item_id, {}), item, item_children, copy)
            fresh.add(item_id)
    return [item if item_id in fresh else copy(item) for item_id, item in by_id.items()]


# ---------------------------------------------------------------------------
# Schema validation: the JSON Schema subset DfE's document uses
# ---------------------------------------------------------------------------

_STRICT_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_MAX_ERRORS_PER_RECORD = 20


_PY_TYPES: dict[str, type | tuple[type, ...]] = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
}
_TYPE_NAMES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}
_Path = tuple[str | int, ...]  # ("social_care_episodes", 0, "referral_source"); rendered only when reporting


def _is_type(value: Any, expected: str | list[str]) -> bool:
    if isinstance(expected, list):
        return any(_is_type(value, name) for name in expected)
    if type(value) is bool:
        return expected == "boolean"
    if expected == "integer" and type(value) is float:
        return value.is_integer()
    wanted = _PY_TYPES.get(expected)
    return wanted is not None and isinstance(value, wanted)


def _render(path: _Path) -> str:
    text = "".join(f"[{part}]" if isinstance(part, int) else f".{str(part)[:64]}" for part in path)
    return text.lstrip(".") or "<record>"


class SimulatedDfeValidator:
    """DfE's check of one record, as the simulator plays it: a draft-07 schema, naming fields but
    never echoing values. Named apart from the pipeline's ``schema.RecordValidator``, which it checks.

    The simulator must not depend on third-party packages, so this covers just the keywords
    the CSC schema uses; unknown keywords are ignored. ``null`` is never accepted.
    """

    def __init__(self, schema: dict) -> None:
        if schema.get("type") == "array" and isinstance(schema.get("items"), dict):
            schema = schema["items"]  # DfE's CSC schema wraps the record in the request array
        self.schema = schema
        self._patterns: dict[str, re.Pattern[str]] = {}

    def errors(self, record: Any) -> list[str]:
        """Return ``"path: problem"`` lines, empty when the record is valid."""
        found: list[tuple[_Path, str]] = []
        self._check(self.schema, record, (), found)
        return [f"{_render(path)}: {problem}" for path, problem in found[:_MAX_ERRORS_PER_RECORD]]

    def _check(self, schema: dict, value: Any, path: _Path, found: list[tuple[_Path, str]]) -> None:
        if value is None:
            found.append((path, "null is not allowed"))
            return
        expected = schema.get("type")
        if expected is not None and not _is_type(value, expected):
            wanted = " or ".join(expected) if isinstance(expected, list) else expected
            found.append((path, f"expected {wanted}, got {_TYPE_NAMES.get(type(value), 'other')}"))
        elif isinstance(value, str):
            self._check_string(schema, value, path, found)
        elif isinstance(value, dict):
            self._check_object(schema, value, path, found)
        elif isinstance(value, list):
            self._check_array(schema, value, path, found)

    def _check_string(self, schema: dict, value: str, path: _Path, found: list[tuple[_Path, str]]) -> None:
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            found.append((path, f"longer than {schema['maxLength']} characters"))
        if "minLength" in schema and len(value) < schema["minLength"]:
            found.append((path, f"shorter than {schema['minLength']} characters"))
        pattern = schema.get("pattern")
        if pattern is not None:
            compiled = self._patterns.get(pattern)
            if compiled is None:
                compiled = self._patterns[pattern] = ecma_pattern(pattern)  # as JSON Schema matches patterns
            if not compiled.search(value):
                found.append((path, f"does not match pattern {pattern}"))
        if schema.get("format") == "date" and not _is_strict_date(value):
            found.append((path, "not a valid date (YYYY-MM-DD)"))

    def _check_object(self, schema: dict, value: dict, path: _Path, found: list[tuple[_Path, str]]) -> None:
        for name in schema.get("required", ()):
            if name not in value:
                found.append(((*path, name), "required but missing"))
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                self._check(properties[key], item, (*path, key), found)
            elif additional is False:
                found.append(((*path, key), "not allowed here"))
            elif isinstance(additional, dict):
                self._check(additional, item, (*path, key), found)

    def _check_array(self, schema: dict, value: list, path: _Path, found: list[tuple[_Path, str]]) -> None:
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            found.append((path, f"more than {schema['maxItems']} items"))
        if schema.get("uniqueItems") and len({json.dumps(item, sort_keys=True) for item in value}) != len(value):
            found.append((path, "items are not unique"))
        items = schema.get("items")
        if isinstance(items, dict):
            for index, item in enumerate(value):
                self._check(items, item, (*path, index), found)


def _is_strict_date(text: str) -> bool:
    if not _STRICT_DATE.fullmatch(text):
        return False
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def load_default_schema() -> dict:
    """The project's bundled one-record schema (read from package data, so it works frozen)."""
    source = resources.files("api_pipeline").joinpath("data/csc_record.schema.json")
    return json.loads(source.read_text(encoding="utf-8"))
