"""Full, delta and purge payloads, canonical comparison and outlines (DESIGN §5).

Everything here works on plain ``dict``/``list`` records as ``json.loads`` gives them and is
written for the pipeline's hot path: one pass per record, ids matched through dicts, no
``deepcopy``. Every builder returns *new* containers (via :func:`normalise`), so callers may
keep or change their input freely; the outputs may share sub-objects with each other only
within one call's result.

The record's shape, as far as DfE's merge model cares, is declared once in :data:`STRUCTURE`:
which keys under a record or an episode are *blocks* (merged whole, purged with
``{"purge": true}``) and which are *id'd lists* (merged item by item by their id key).
Every other key is part of its parent *entity* (scalars and id-less lists such as
``care_worker_details``), which DfE replaces exactly when the entity is sent. The record's JSON
text, read and written exactly, is :mod:`api_pipeline.dfe.json_text`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final

import orjson

from api_pipeline.dfe.json_text import encode_record, loads_record

RECORD: Final = ""
"""The :data:`STRUCTURE` level of a whole child record."""

STRUCTURE: Final[Mapping[str, Mapping[str, str | None]]] = {
    # level -> {child collection key: id key of its items, or None for a block}.
    # A level is the record (RECORD) or the key of an id'd list whose items have child
    # collections of their own. Items of id'd lists that are not levels are leaf entities.
    RECORD: {
        "child_details": None,
        "health_and_wellbeing": None,
        "social_care_episodes": "social_care_episode_id",
    },
    "social_care_episodes": {
        "child_and_family_assessments": "child_and_family_assessment_id",
        "child_in_need_plans": "child_in_need_plan_id",
        "section_47_assessments": "section_47_assessment_id",
        "child_protection_plans": "child_protection_plan_id",
        "child_looked_after_placements": "child_looked_after_placement_id",
        "adoption": None,
        "care_leavers": None,
    },
}

ID_KEYS: Final[Mapping[str, str]] = {
    key: id_key for level in STRUCTURE.values() for key, id_key in level.items() if id_key is not None
}
"""Collection key -> id key of its items, for every id'd list (derived from STRUCTURE)."""

BLOCKS: Final[frozenset[str]] = frozenset(
    key for level in STRUCTURE.values() for key, id_key in level.items() if id_key is None
)
"""Keys of every block (derived from STRUCTURE)."""

ALWAYS_SENT: Final[frozenset[str]] = frozenset({"child_details"})
"""Record-level blocks every delta carries, changed or not (DESIGN §5)."""

PURGE: Final = "purge"
_PURGED_BLOCK: Final = {PURGE: True}

_SEPARATORS: Final = (",", ":")
_MISSING: Final = object()

Record = dict[str, Any]


# --------------------------------------------------------------------------------------
# normal form, canonical JSON, hashing


def normalise(record: dict) -> dict:
    """Return the form used for comparison, hashing and sending.

    Keys whose value is an empty list or object (after normalising what is inside) are
    dropped, as are empty objects inside lists: under DfE's merge model they carry no
    data, and DfE's schema forbids nothing-objects we would otherwise send. ``None`` is
    kept on purpose so validation sees and rejects it. Order is left alone.
    """
    return _pruned(record)


def clone(value: Any) -> Any:
    """Deep copy of JSON data (objects, lists, scalars): several times faster than ``copy.deepcopy``."""
    if isinstance(value, dict):
        return {key: clone(item) for key, item in value.items()}
    if isinstance(value, list):
        return [clone(item) for item in value]
    return value


def _may_hold_empty_container(text: str | bytes) -> bool:
    """Whether compact JSON text (as :func:`encode_record` writes it, and the ledger holds it)
    may hold an empty object or list. False means its parse is already in normal form, so the
    copy :func:`normalise` makes can be skipped; True may be a false alarm (``"[]"`` inside a
    string), and then :func:`normalise` simply finds nothing to drop."""
    if isinstance(text, bytes):
        return b"{}" in text or b"[]" in text
    return "{}" in text or "[]" in text


def _pruned(value: Any) -> Any:
    """``value`` (an object or a list) with every empty object and list inside it dropped,
    innermost first, so an object left empty by that goes too.

    Written out for objects and lists alike, with no call for a leaf: a record has thousands
    of leaves, and this runs for every record that holds an empty container."""
    if type(value) is dict:
        out = {}
        for key, item in value.items():
            if type(item) is dict or type(item) is list:
                item = _pruned(item)
                if not item:
                    continue
            out[key] = item
        return out
    kept = []
    for item in value:
        if type(item) is dict or type(item) is list:
            item = _pruned(item)
            if not item:
                continue
        kept.append(item)
    return kept


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=_SEPARATORS, ensure_ascii=False)


def _sorted(value: Any, key: str | None = None) -> Any:
    """Copy of a normalised value with every list in a fixed order (list order never counts)."""
    if type(value) is dict:
        return {k: _sorted(v, k) for k, v in value.items()}
    if type(value) is not list:
        return value
    items = [_sorted(v) for v in value]
    if len(items) < 2:
        return items
    id_key = ID_KEYS.get(key) if key is not None else None
    if id_key is not None:
        ids = [v.get(id_key) if type(v) is dict else None for v in items]
        by_id: dict[str, Any] = {i: v for i, v in zip(ids, items, strict=True) if type(i) is str}
        if len(by_id) == len(items):
            # Usual case: distinct string ids are a total order on their own.
            return [by_id[i] for i in sorted(by_id)]
        # Malformed or duplicate ids: order by (id, whole item) so the result is still fixed.
        keyed = [(_dumps(i), _dumps(v), v) for i, v in zip(ids, items, strict=True)]
        keyed.sort(key=lambda t: (t[0], t[1]))
        return [v for _, _, v in keyed]
    keyed2 = [(_dumps(v), v) for v in items]
    keyed2.sort(key=lambda t: t[0])
    return [v for _, v in keyed2]


def _canon(value: Any, key: str | None = None) -> str:
    """Canonical JSON of an already normalised value."""
    return _dumps(_sorted(value, key))


def _same(a: Any, b: Any) -> bool:
    """Canonical equality of two normalised values, cheaply whether or not they are alike.

    Key-sorted compact JSON from orjson that matches byte for byte means canonically equal
    (list order aside, the same text; and unlike Python's ``==``, ``1``, ``1.0`` and ``true``
    differ). Texts that differ can still be equal only if some list is in another order, and
    then they hold the same bytes in another order: as long, with as many ``[``. Only such
    pairs (rare: a changed item usually changes its text's length) need the canonical forms.
    """
    try:
        ta = orjson.dumps(a, option=orjson.OPT_SORT_KEYS)
        tb = orjson.dumps(b, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # e.g. an integer over 64 bits: the canonical forms decide
        return _canon(a) == _canon(b)
    if ta == tb:
        return True
    if len(ta) != len(tb) or b"[" not in ta or ta.count(b"[") != tb.count(b"["):
        return False
    return _canon(a) == _canon(b)


def records_equal(a: dict | None, b: dict | None) -> bool:
    """Canonical equality; ``None`` (no record) equals only ``None``."""
    if a is None or b is None:
        return a is b
    return _same(normalise(a), normalise(b))


# --------------------------------------------------------------------------------------
# building payloads


def _item_id(item: Any, id_key: str) -> Any:
    """Hashable identity of an id'd item; malformed ids still get one, so nothing crashes."""
    if type(item) is not dict:
        return (_MISSING, _dumps(item))
    ident = item.get(id_key, _MISSING)
    if type(ident) is str:
        return ident
    return (_MISSING, _dumps(ident) if ident is not _MISSING else "")


def _index(items: Any, id_key: str) -> dict[Any, dict]:
    """id -> item for the well-formed items of a (normalised) baseline list."""
    if type(items) is not list:
        return {}
    out: dict[Any, dict] = {}
    for item in items:
        if type(item) is dict and type(item.get(id_key)) is str:
            out[item[id_key]] = item
    return out


def _purge_item(id_key: str, ident: str) -> dict:
    return {id_key: ident, PURGE: True}


def _full_node(cur: dict, base: dict | None, level: str) -> dict:
    """``cur`` (normalised) plus purges for whatever ``base`` holds below it that ``cur`` lacks."""
    if base is None:
        return cur
    out = dict(cur)
    for key, id_key in STRUCTURE[level].items():
        held = base.get(key, _MISSING)
        if held is _MISSING:
            continue
        now = cur.get(key, _MISSING)
        if id_key is None:
            if now is _MISSING:
                out[key] = dict(_PURGED_BLOCK)
            continue
        held_by_id = _index(held, id_key)
        if not held_by_id:
            continue
        if now is _MISSING:
            items: list = []
        elif type(now) is not list:
            continue  # malformed: sent as it is, validation rejects it
        else:
            items = list(now)
        sub = key if key in STRUCTURE else None
        seen = set()
        for pos, item in enumerate(items):
            ident = _item_id(item, id_key)
            seen.add(ident)
            if sub is not None:
                held_item = held_by_id.get(ident) if type(ident) is str else None
                if held_item is not None and type(item) is dict:
                    items[pos] = _full_node(item, held_item, sub)
        items.extend(_purge_item(id_key, ident) for ident in held_by_id if ident not in seen)
        if items:
            out[key] = items
    return out


def build_full(current: dict, baseline: dict | None) -> dict:
    """The whole current record, plus purges for what DfE holds (``baseline``) but we no longer have.

    ``baseline`` is the record DfE last acknowledged per the ledger, or ``None`` when DfE
    holds nothing (new child, or one that returns after a purge: it is sent whole).
    """
    return _full_of_normal(normalise(current), None if baseline is None else normalise(baseline))


def _full_of_normal(cur: dict, base: dict | None) -> dict:
    """:func:`build_full` for records already in normal form (the result may share ``cur``'s parts)."""
    if base is None:
        return cur
    return _full_node(cur, base, RECORD)


def _delta_node(cur: dict, base: dict, level: str, always: frozenset[str] = frozenset()) -> dict | None:
    """Delta of one container (the record or an episode), or ``None`` if nothing in it changed.

    The container's own entity keys are sent whole whenever anything is sent (DfE replaces
    them exactly); each child collection adds only its changed or removed parts. Blocks named
    in ``always`` are sent whenever anything is sent, changed or not. Each part of the record
    is put in canonical form at most once per side, and only until a change is found.
    """
    children = STRUCTURE[level]
    out: dict[str, Any] = {}
    entity_now: dict[str, Any] = {}
    changed = False
    for key, now in cur.items():
        if key not in children:
            out[key] = entity_now[key] = now
            continue
        id_key = children[key]
        held = base.get(key, _MISSING)
        if id_key is None:
            if key in always:
                out[key] = now
                if not changed:
                    changed = held is _MISSING or not _same(now, held)
            elif held is _MISSING or not _same(now, held):
                out[key] = now
                changed = True
        elif type(now) is not list:
            out[key] = now  # malformed: sent as it is, validation rejects it
            changed = True
        else:
            items = _delta_list(now, held, id_key, key)
            if items:
                out[key] = items
                changed = True
    for key, id_key in children.items():
        if key in cur or key not in base:
            continue
        if id_key is None:
            out[key] = dict(_PURGED_BLOCK)
            changed = True
        else:
            items = _delta_list([], base[key], id_key, key)
            if items:
                out[key] = items
                changed = True
    if not changed:
        entity_held = {k: v for k, v in base.items() if k not in children}
        changed = not _same(entity_now, entity_held)
    return out if changed else None


def _delta_list(now: list, held: Any, id_key: str, key: str) -> list:
    held_by_id = _index(held, id_key)
    sub = key if key in STRUCTURE else None
    out = []
    seen = set()
    for item in now:
        ident = _item_id(item, id_key)
        seen.add(ident)
        held_item = held_by_id.get(ident) if type(ident) is str else None
        if held_item is None or type(item) is not dict:
            out.append(item)  # new (or malformed): whole
        elif sub is not None:
            node = _delta_node(item, held_item, sub)
            if node is not None:
                out.append(node)
        elif not _same(item, held_item):
            out.append(item)
    out.extend(_purge_item(id_key, ident) for ident in held_by_id if ident not in seen)
    return out


def build_delta(current: dict, baseline: dict | None) -> dict | None:
    """Entity-level delta of ``current`` against what DfE holds (``baseline``); ``None`` if equal.

    ``la_child_id``, ``mis_child_id`` and the other record scalars, and ``child_details``, are
    always sent; every other entity only when it (or, for an episode, something under it)
    changed. Removals become purges. With no baseline this is :func:`build_full`.
    """
    return _delta_of_normal(normalise(current), None if baseline is None else normalise(baseline))


def _delta_of_normal(cur: dict, base: dict | None) -> dict | None:
    """:func:`build_delta` for records already in normal form (the result may share ``cur``'s parts)."""
    if base is None:
        return cur
    return _delta_node(cur, base, RECORD, ALWAYS_SENT)


def normal_form(record: dict) -> tuple[dict, bytes]:
    """The record as DfE will hold it (normal form: :func:`normalise`) and its compact UTF-8 JSON.

    What is validated, sent whole and kept in the ledger. Cheap when the record has no empty
    object or list to drop (almost every record): then it is encoded once and not copied.
    Raises ValueError for what JSON cannot carry (see :func:`encode_record`).
    """
    encoded = encode_record(record)
    if not _may_hold_empty_container(encoded):
        return record, encoded
    record = normalise(record)
    return record, encode_record(record)


def load_normal(text: str | bytes) -> Any:
    """Parse JSON that :func:`normal_form` wrote (the ledger's record) and put it in normal form,
    which it usually is already (then no copy is made). Raises ValueError, as :func:`loads_record`."""
    value = loads_record(text)
    if type(value) is dict and _may_hold_empty_container(text):
        return normalise(value)
    return value


def request_for(current: dict, held: dict | None, *, delta: bool) -> dict | None:
    """The record to send for ``current`` when DfE holds ``held`` (both in normal form; None: nothing).

    ``delta``: the entity-level delta (:func:`build_delta`), None when nothing changed; otherwise
    the whole record with purges (:func:`build_full`). The result may share ``current``'s parts,
    and is ``current`` itself when DfE holds nothing.
    """
    return _delta_of_normal(current, held) if delta else _full_of_normal(current, held)


# --------------------------------------------------------------------------------------
# outlines: what a child's record may leave DfE holding, as far as purges care

# Per level: (collection key, id key or None for a block, whether its items have collections).
_PARTS: Final[Mapping[str, tuple[tuple[str, str | None, bool], ...]]] = {
    level: tuple((key, id_key, key in STRUCTURE) for key, id_key in children.items())
    for level, children in STRUCTURE.items()
}


def outline(record: Any) -> dict:
    """The parts of ``record`` a purge can name, and nothing else (DESIGN §7, batches in doubt).

    Level by level: a block present is ``1``; an id'd list is the list of its items' ids, or,
    for a list whose items have collections of their own (episodes), an object from each id to
    that item's outline. Of a request: what DfE holds from it once it lands, beyond what DfE
    held before (purged items and blocks are left out; a child purge outlines to ``{}``). Of a
    whole record: what DfE holds. Ids and structure only: no value of the record.
    """
    if type(record) is not dict or record.get(PURGE) is True:
        return {}
    return _outline(record, RECORD)


def _outline(node: dict, level: str) -> dict:
    out: dict[str, Any] = {}
    for key, id_key, nested in _PARTS[level]:
        held = node.get(key)
        if held is None:
            continue
        if id_key is None:
            if type(held) is not dict or held.get(PURGE) is not True:
                out[key] = 1
        elif type(held) is list:
            if nested:
                items = {
                    ident: _outline(item, key)
                    for item in held
                    if type(item) is dict and type(ident := item.get(id_key)) is str and item.get(PURGE) is not True
                }
            else:
                items = [  # type: ignore[assignment]
                    ident
                    for item in held
                    if type(item) is dict and type(ident := item.get(id_key)) is str and item.get(PURGE) is not True
                ]
            if items:
                out[key] = items
    return out


def outline_union(a: dict, b: dict) -> dict:
    """Every part either outline names, as one outline."""
    return _union(a, b, RECORD)


def _union(a: dict, b: dict, level: str) -> dict:
    out = dict(a)
    for key, id_key, nested in _PARTS[level]:
        if key not in b:
            continue
        if id_key is None or key not in a:
            out[key] = b[key]
        elif nested:
            merged = dict(a[key])
            for ident, part in b[key].items():
                merged[ident] = _union(merged[ident], part, key) if ident in merged else part
            out[key] = merged
        else:
            out[key] = list(dict.fromkeys([*a[key], *b[key]]))
    return out


def load_outline(text: str | bytes) -> dict | None:
    """An outline as :func:`outline` writes it, from JSON; only its well-formed parts (a table's
    text may be anything). None when the text is not a JSON object at all."""
    try:
        value = loads_record(text)
    except (ValueError, RecursionError):
        return None
    return _clean(value, RECORD) if type(value) is dict else None


def _clean(node: dict, level: str) -> dict:
    out: dict[str, Any] = {}
    for key, id_key, nested in _PARTS[level]:
        part = node.get(key)
        if part is None:
            continue
        if id_key is None:
            out[key] = 1
        elif nested and type(part) is dict:
            out[key] = {ident: _clean(sub, key) if type(sub) is dict else {} for ident, sub in part.items()}
        elif not nested and type(part) is list:
            out[key] = [ident for ident in part if type(ident) is str]
    return out


def _as_held(node: dict, level: str) -> dict:
    """An outline in the shape of a record (an id'd list of items, each with its id), for the builders."""
    out: dict[str, Any] = {}
    for key, id_key, nested in _PARTS[level]:
        part = node.get(key)
        if part is None:
            continue
        if id_key is None:
            out[key] = {}
        elif nested:
            out[key] = [{id_key: ident, **_as_held(sub, key)} for ident, sub in part.items()]
        else:
            out[key] = [{id_key: ident} for ident in part]
    return out


def request_in_doubt(current: dict, held: dict | None, doubt: dict) -> dict:
    """The record to send for ``current`` (normal form) when DfE holds ``held`` (the ledger's
    record, or None) or what the outline ``doubt`` adds to it: the whole record, with a purge
    for every part either may hold and ``current`` lacks. Right whichever DfE holds."""
    possible = outline_union(outline(held) if held is not None else {}, doubt)
    return _full_node(current, _as_held(possible, RECORD), RECORD)


def build_purge(la_child_id: str, mis_child_id: str | None = None) -> dict:
    """The record that makes DfE delete a child (``mis_child_id`` only when known)."""
    out: dict[str, Any] = {"la_child_id": la_child_id}
    if mis_child_id:
        out["mis_child_id"] = mis_child_id
    out[PURGE] = True
    return out


_ID_LISTS: Final[Mapping[str, tuple[tuple[str, str], ...]]] = {
    level: tuple((key, id_key) for key, id_key in children.items() if id_key is not None)
    for level, children in STRUCTURE.items()
}


def duplicate_ids(record: dict) -> list[str]:
    """Paths of id'd lists in which an id appears twice.

    The schema allows it, but DfE merges items by id, so such a record could never
    be held as written: it is treated as invalid instead of being sent. Almost every
    record has none, so a quick check runs first and paths are only worked out for
    a record that fails it.
    """
    if type(record) is not dict or not _has_duplicate_ids(record, RECORD):
        return []
    found: list[str] = []

    def visit(node: dict, level: str, path: str) -> None:
        for key, id_key in _ID_LISTS[level]:
            items = node.get(key)
            if type(items) is not list:
                continue
            seen: set[Any] = set()
            for index, item in enumerate(items):
                if type(item) is not dict:
                    continue
                ident = item.get(id_key)
                if ident is not None and ident in seen:
                    found.append(f"{path}{key}[{index}].{id_key}")
                seen.add(ident)
                if key in STRUCTURE:
                    visit(item, key, f"{path}{key}[{index}].")

    visit(record, RECORD, "")
    return found


def _has_duplicate_ids(node: dict, level: str) -> bool:
    for key, id_key in _ID_LISTS[level]:
        items = node.get(key)
        if not items or type(items) is not list:
            continue
        ids = [item.get(id_key) for item in items if type(item) is dict]
        if len(ids) > 1:
            present = [i for i in ids if i is not None]
            if len(set(present)) < len(present):
                return True
        if key in STRUCTURE:
            for item in items:
                if type(item) is dict and _has_duplicate_ids(item, key):
                    return True
    return False
