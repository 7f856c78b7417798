"""Property tests for the delta engine (DESIGN §5, STYLE 18).

For random records and random edits, what DfE holds after applying our payload under the §5
merge model (the simulator's ``apply_record``) equals the new record. Two sources of records:
the synthetic generator (realistic, big) and a small direct strategy whose tiny alphabets make
old and new overlap often and shrink to readable counterexamples.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft7Validator

from api_pipeline.dfe.payload import (
    STRUCTURE,
    build_delta,
    build_full,
    build_purge,
    normalise,
    outline,
    outline_union,
    records_equal,
    request_for,
    request_in_doubt,
)
from api_pipeline.rehearsal.dfe_model import apply_record
from api_pipeline.rehearsal.synthetic import make_child
from api_pipeline.rehearsal.synthetic_changes import mutate
from conftest import canonical_json

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "api_pipeline" / "data" / "csc_record.schema.json").read_text("utf-8"))
VALIDATOR = Draft7Validator(SCHEMA, format_checker=Draft7Validator.FORMAT_CHECKER)

PROPERTY_SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------
# strategies


@st.composite
def synthetic_pairs(draw: st.DrawFn) -> tuple[dict, dict]:
    """A realistic child and the same child after one to three nights of LA changes."""
    seed = draw(st.integers(0, 2**32 - 1))
    index = draw(st.integers(1, 9_999_999))
    old = make_child(random.Random(seed), index)
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    new = old
    for _ in range(draw(st.integers(1, 3))):
        new = mutate(rng, new)
    return old, new


IDS = st.sampled_from(["a", "b", "c"])
DATES = st.sampled_from(["2020-01-01", "2021-06-30", "2024-02-29"])
FLAG = st.just(False)


def _items(id_key: str, dates: tuple[str, ...], **extra: st.SearchStrategy[Any]) -> st.SearchStrategy[list]:
    item = st.fixed_dictionaries(
        {id_key: IDS},
        optional={**dict.fromkeys(dates, DATES), "purge": FLAG, **extra},
    )
    return st.lists(item, max_size=3, unique_by=lambda i: i[id_key])


PLAN_DATES = ("start_date", "end_date")

EPISODE = st.fixed_dictionaries(
    {"social_care_episode_id": IDS},
    optional={
        "referral_date": DATES,
        "referral_source": st.sampled_from(["1A", "2B"]),
        "closure_date": DATES,
        "referral_no_further_action_flag": st.booleans(),
        "care_worker_details": st.lists(
            st.fixed_dictionaries(
                {},
                optional={"worker_id": st.sampled_from(["W1", "W2"]), "start_date": DATES, "end_date": DATES},
            ),
            max_size=3,
        ),
        "child_and_family_assessments": _items(
            "child_and_family_assessment_id",
            ("start_date", "authorisation_date"),
            factors=st.lists(st.sampled_from(["1C", "4A", "21"]), unique=True, max_size=3),
        ),
        "child_in_need_plans": _items("child_in_need_plan_id", PLAN_DATES),
        "section_47_assessments": _items(
            "section_47_assessment_id",
            ("start_date", "icpc_date", "end_date"),
            icpc_required_flag=st.booleans(),
        ),
        "child_protection_plans": _items("child_protection_plan_id", PLAN_DATES),
        "child_looked_after_placements": _items(
            "child_looked_after_placement_id", PLAN_DATES, placement_type=st.sampled_from(["K1", "U4"])
        ),
        "adoption": st.fixed_dictionaries({}, optional={"initial_decision_date": DATES, "purge": FLAG}),
        "care_leavers": st.fixed_dictionaries(
            {}, optional={"contact_date": DATES, "activity": st.sampled_from(["F2", "G4"]), "purge": FLAG}
        ),
        "purge": FLAG,
    },
)

SMALL_RECORD = st.fixed_dictionaries(
    {"la_child_id": st.just("C1")},
    optional={
        "mis_child_id": st.sampled_from(["M1", "M2"]),
        "purge": FLAG,
        "child_details": st.fixed_dictionaries(
            {},
            optional={
                "first_name": st.sampled_from(["Ann", "Zoë", ""]),
                "surname": st.sampled_from(["O'Brien", "Nguyễn"]),
                "date_of_birth": DATES,
                "expected_date_of_birth": DATES,
                "disabilities": st.lists(st.sampled_from(["VIS", "HAND", "MOB"]), unique=True, max_size=3),
                "purge": FLAG,
            },
        ),
        "health_and_wellbeing": st.fixed_dictionaries(
            {},
            optional={
                "sdq_assessments": st.lists(
                    st.fixed_dictionaries({}, optional={"date": DATES, "score": st.integers(0, 2)}),
                    max_size=3,
                ),
                "purge": FLAG,
            },
        ),
        "social_care_episodes": st.lists(EPISODE, max_size=3, unique_by=lambda e: e["social_care_episode_id"]),
    },
)


@st.composite
def small_pairs(draw: st.DrawFn) -> tuple[dict, dict]:
    """Two small records for one child: independent, or the second an edit of the first."""
    old = draw(SMALL_RECORD)
    fresh = draw(SMALL_RECORD)
    if draw(st.booleans()):
        return old, fresh
    return old, _blend(draw, old, fresh, level="")


def _blend(draw: st.DrawFn, old: dict, fresh: dict, level: str | None) -> dict:
    """``old`` with each key kept, dropped, or taken from ``fresh``; id'd lists blended per id."""
    children = STRUCTURE.get(level, {}) if level is not None else {}
    out: dict[str, Any] = {}
    for key in dict.fromkeys([*old, *fresh]):
        id_key = children.get(key)
        if id_key is not None and key in old and key in fresh:
            out[key] = _blend_list(draw, old[key], fresh[key], id_key, key if key in STRUCTURE else None)
            continue
        if level == "" and key == "la_child_id":
            out[key] = old[key]  # required: every record names its child
            continue
        choice = draw(st.sampled_from(["keep", "keep", "drop", "fresh"]))
        if choice == "keep" and key in old:
            out[key] = old[key]
        elif choice == "fresh" and key in fresh:
            out[key] = fresh[key]
    return out


def _blend_list(draw: st.DrawFn, old: list, fresh: list, id_key: str, level: str | None) -> list:
    old_by_id = {item[id_key]: item for item in old}
    fresh_by_id = {item[id_key]: item for item in fresh}
    out = []
    for ident in dict.fromkeys([*old_by_id, *fresh_by_id]):
        choice = draw(st.sampled_from(["keep", "keep", "drop", "fresh", "blend"]))
        if choice == "blend" and ident in old_by_id and ident in fresh_by_id:
            merged = _blend(draw, old_by_id[ident], fresh_by_id[ident], level)
            out.append({id_key: ident, **merged})
        elif choice == "fresh" and ident in fresh_by_id:
            out.append(fresh_by_id[ident])
        elif choice in ("keep", "blend") and ident in old_by_id:
            out.append(old_by_id[ident])
    return out


PAIRS = st.one_of(synthetic_pairs(), small_pairs())


# --------------------------------------------------------------------------------------
# helpers


def held_by_dfe(record: dict) -> dict:
    """What DfE holds after receiving ``record`` for a child it did not know."""
    held = apply_record(None, json.loads(json.dumps(build_full(record, None))))
    assert held is not None
    assert records_equal(held, record)
    return held


def after(held: dict, sent: dict | None) -> dict | None:
    # Round-trip through JSON: the simulator receives bytes, never our objects.
    return held if sent is None else apply_record(held, json.loads(json.dumps(sent)))


def schema_errors(record: dict) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in VALIDATOR.iter_errors(record)]


# --------------------------------------------------------------------------------------
# properties


@PROPERTY_SETTINGS
@given(PAIRS)
def test_delta_converges(pair: tuple[dict, dict]) -> None:
    old, new = pair
    delta = build_delta(new, old)
    if delta is None:
        assert records_equal(old, new)
        return
    assert not records_equal(old, new)
    result = after(held_by_dfe(old), delta)
    assert records_equal(result, new), (canonical_json(result or {}), canonical_json(new))


@PROPERTY_SETTINGS
@given(PAIRS)
def test_full_converges(pair: tuple[dict, dict]) -> None:
    old, new = pair
    result = after(held_by_dfe(old), build_full(new, old))
    assert records_equal(result, new), (canonical_json(result or {}), canonical_json(new))


@PROPERTY_SETTINGS
@given(PAIRS)
def test_payloads_are_schema_valid_and_delta_is_never_bigger(pair: tuple[dict, dict]) -> None:
    old, new = pair
    assert schema_errors(normalise(old)) == []
    assert schema_errors(normalise(new)) == []
    full = build_full(new, old)
    assert schema_errors(full) == []
    delta = build_delta(new, old)
    if delta is not None:
        assert schema_errors(delta) == []
        assert len(canonical_json(delta)) <= len(canonical_json(full))


@PROPERTY_SETTINGS
@given(PAIRS)
def test_purge_deletes_and_a_returning_child_is_sent_whole(pair: tuple[dict, dict]) -> None:
    old, new = pair
    held = held_by_dfe(old)
    assert after(held, build_purge(old["la_child_id"], old.get("mis_child_id"))) is None
    # After a purge the ledger gives no baseline: the child comes back whole.
    returned = apply_record(None, json.loads(json.dumps(build_delta(new, None))))
    assert records_equal(returned, new)


@PROPERTY_SETTINGS
@given(PAIRS)
def test_delta_is_order_blind(pair: tuple[dict, dict]) -> None:
    old, new = pair
    shuffled = json.loads(json.dumps(new))
    for ep in shuffled.get("social_care_episodes", []):
        for value in ep.values():
            if isinstance(value, list):
                value.reverse()
    shuffled.get("social_care_episodes", []).reverse()
    assert build_delta(shuffled, new) is None
    assert (build_delta(shuffled, old) is None) == (build_delta(new, old) is None)


@st.composite
def nights_in_doubt(draw: st.DrawFn) -> tuple[dict, list[dict]]:
    """What DfE acknowledged for a child (the ledger), then one to three records for it, each
    sent in a batch whose answer was lost: each a blend of the one before and a fresh one."""
    ledger, first = draw(PAIRS)
    later = [first]
    for _ in range(draw(st.integers(0, 2))):
        later.append(_blend(draw, later[-1], draw(SMALL_RECORD), level=""))
    return ledger, later


@PROPERTY_SETTINGS
@given(nights_in_doubt(), st.booleans(), st.booleans())
def test_a_child_in_doubt_converges_whichever_version_dfe_holds(
    case: tuple[dict, list[dict]], partial: bool, purged_before: bool
) -> None:
    """DESIGN §7: after batches whose answers were lost, DfE holds the ledger's record or what
    any of them made of it; the request built from the ledger and the in-flight outline makes
    DfE hold the table's current record from every one of those, and the outline stays small."""
    ledger_record, versions = case
    held = None if purged_before else normalise(ledger_record)
    possible: list[dict | None] = [None if held is None else held_by_dfe(held)]
    pending: dict | None = None  # the in-flight table's outline: None until a batch is lost
    for current in versions:
        current = normalise(current)
        if pending is None:
            sent = request_for(current, held, delta=partial)
        else:
            sent = request_in_doubt(current, held, pending)
        if sent is None:  # nothing to send: DfE holds the current record already
            assert pending is None and records_equal(held, current)
            continue
        # The answer is lost: DfE holds any of the earlier possibilities, or what this request made of one.
        landed = [after(version or {}, sent) for version in possible]
        assert all(records_equal(version, current) for version in landed)
        possible += landed
        pending = outline_union(pending or {}, outline(sent))
    final = normalise(versions[-1])
    if pending is not None:
        settled = request_in_doubt(final, held, pending)
        for version in possible:
            assert records_equal(after(version or {}, settled), final), canonical_json(version or {})


# Small JSON values whose lists are often only reordered and whose strings hold "[" too, so
# every path of the equality test is taken: equal texts, lengths that differ, no lists at all,
# the same bytes in another order.
LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from([1.0, 0.5]), st.sampled_from(["a", "[", "a["])
)
VALUES = st.recursive(
    LEAVES,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["x", "y", "z"]), inner, max_size=3),
    max_leaves=12,
)
RECORDS = st.dictionaries(st.sampled_from(["x", "y", "z"]), VALUES, min_size=1, max_size=3)


def shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        return {k: shuffled(v, rng) for k, v in value.items()}
    if isinstance(value, list):
        items = [shuffled(v, rng) for v in value]
        rng.shuffle(items)
        return items
    return value


@PROPERTY_SETTINGS
@given(RECORDS, RECORDS, st.randoms(use_true_random=False))
def test_records_equal_is_equality_of_canonical_json(a: dict, b: dict, rng: random.Random) -> None:
    assert records_equal(a, b) == (canonical_json(a) == canonical_json(b))
    reordered = shuffled(a, rng)
    assert records_equal(a, reordered)
    assert records_equal(reordered, b) == (canonical_json(a) == canonical_json(b))
