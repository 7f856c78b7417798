"""Tests for synthetic and synthetic_changes: schema-valid, plausible, deterministic, awkward names included."""

from __future__ import annotations

import copy
import json
import random
import re
from datetime import date
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator

from api_pipeline.dfe.payload import STRUCTURE, build_delta, build_full
from api_pipeline.rehearsal.synthetic import TODAY, make_child, make_children
from api_pipeline.rehearsal.synthetic_changes import mutate

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "api_pipeline" / "data" / "csc_record.schema.json").read_text("utf-8"))
VALIDATOR = Draft7Validator(SCHEMA, format_checker=Draft7Validator.FORMAT_CHECKER)
EPISODE_LISTS = {k: v for k, v in STRUCTURE["social_care_episodes"].items() if v is not None}


def errors(record: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(record)]


def names(record: dict) -> list[str]:
    details = record.get("child_details", {})
    return [details[k] for k in ("first_name", "surname") if k in details]


def test_generated_children_are_schema_valid() -> None:
    for record in make_children(500, seed=3):
        assert errors(record) == [], record["la_child_id"]


def test_mutated_children_stay_schema_valid_over_many_rounds() -> None:
    rng = random.Random(9)
    for record in make_children(300, seed=4):
        current = record
        for _ in range(5):
            current = mutate(rng, current)
            assert errors(current) == [], current["la_child_id"]


def test_ids_and_identity_follow_the_index() -> None:
    rng = random.Random(1)
    record = make_child(rng, 123)
    assert record["la_child_id"] == "C0000123"
    assert record["mis_child_id"] == "MIS-0000123"
    assert [r["la_child_id"] for r in make_children(3)] == ["C0000001", "C0000002", "C0000003"]


def test_generation_is_deterministic_per_seed() -> None:
    assert list(make_children(50, seed=7)) == list(make_children(50, seed=7))
    assert list(make_children(50, seed=7)) != list(make_children(50, seed=8))
    first = [mutate(random.Random(5), r) for r in make_children(50, seed=7)]
    again = [mutate(random.Random(5), r) for r in make_children(50, seed=7)]
    assert first == again


def test_mutate_returns_a_new_record_and_leaves_the_input_alone() -> None:
    rng = random.Random(2)
    changed = 0
    for record in make_children(200, seed=5):
        before = copy.deepcopy(record)
        new = mutate(rng, record)
        assert record == before
        assert new is not record
        changed += new != record
    assert changed > 180  # nearly every mutation is a real change


def test_awkward_names_appear_across_a_few_hundred_children() -> None:
    all_names = [n for r in make_children(300, seed=1) for n in names(r)]
    assert any("'" in n for n in all_names)
    assert any(not n.isascii() for n in all_names)
    plain = sum(n.isascii() and "'" not in n for n in all_names)
    assert plain > 0.8 * len(all_names)  # mostly plain


def test_ids_are_unique_within_every_list() -> None:
    rng = random.Random(3)
    for record in make_children(300, seed=6):
        for current in (record, mutate(rng, record)):
            episodes = current.get("social_care_episodes", [])
            ids = [e["social_care_episode_id"] for e in episodes]
            assert len(ids) == len(set(ids))
            for ep in episodes:
                for key, id_key in EPISODE_LISTS.items():
                    item_ids = [i[id_key] for i in ep.get(key, [])]
                    assert len(item_ids) == len(set(item_ids)), (current["la_child_id"], key)


def test_records_are_realistic() -> None:
    counts: dict[str, int] = {}
    for record in make_children(400, seed=8):
        episodes = record["social_care_episodes"]
        assert 1 <= len(episodes) <= 4
        assert re.fullmatch(r"C\d{7}", record["la_child_id"])
        for ep in episodes:
            for key in (*EPISODE_LISTS, "adoption", "care_leavers", "care_worker_details"):
                counts[key] = counts.get(key, 0) + (key in ep)
            for worker in ep["care_worker_details"]:
                assert re.fullmatch(r"[A-Za-z0-9]{1,12}", worker["worker_id"])
        if "purge" in record:
            counts["purge"] = counts.get("purge", 0) + 1
        counts["health_and_wellbeing"] = counts.get("health_and_wellbeing", 0) + ("health_and_wellbeing" in record)
    for key in (
        *EPISODE_LISTS,
        "adoption",
        "care_leavers",
        "care_worker_details",
        "purge",
        "health_and_wellbeing",
    ):
        assert counts.get(key, 0) > 5, key


def _dates(value: Any, path: str = "") -> list[tuple[str, date]]:
    out: list[tuple[str, date]] = []
    if isinstance(value, dict):
        for key, child in value.items():
            if isinstance(child, str) and re.fullmatch(r"\d{4}-\d{2}-\d{2}", child):
                out.append((f"{path}/{key}", date.fromisoformat(child)))
            else:
                out.extend(_dates(child, f"{path}/{key}"))
    elif isinstance(value, list):
        for child in value:
            out.extend(_dates(child, path))
    return out


def test_generated_dates_are_plausible() -> None:
    for record in make_children(400, seed=9):
        for path, day in _dates(record):
            if not path.endswith("expected_date_of_birth"):
                assert day <= TODAY, (record["la_child_id"], path)
            assert day.year >= 2000, (record["la_child_id"], path)
        dob = record["child_details"].get("date_of_birth")
        for ep in record["social_care_episodes"]:
            referral = ep["referral_date"]
            if dob:
                assert referral >= dob
            assert ep.get("closure_date", referral) >= referral
            for key in EPISODE_LISTS:
                for item in ep.get(key, []):
                    assert item["start_date"] >= referral
                    assert item.get("end_date", item["start_date"]) >= item["start_date"]
            for worker in ep["care_worker_details"]:
                assert worker.get("end_date", worker["start_date"]) >= worker["start_date"]


def test_mutations_cover_every_kind_of_change() -> None:
    rng = random.Random(4)
    seen: set[str] = set()
    for old in make_children(1500, seed=10):
        new = mutate(rng, old)
        delta = build_delta(new, old)
        if delta is None:
            continue
        if delta.get("health_and_wellbeing") == {"purge": True}:
            seen.add("health purged")
        old_eps = {e["social_care_episode_id"] for e in old["social_care_episodes"]}
        for ep in delta.get("social_care_episodes", []):
            if ep.get("purge") is True:
                seen.add("episode removed")
            elif ep["social_care_episode_id"] not in old_eps:
                seen.add("episode added")
            for block in ("adoption", "care_leavers"):
                if ep.get(block) == {"purge": True}:
                    seen.add(f"{block} purged")
            for key in EPISODE_LISTS:
                for item in ep.get(key, []):
                    seen.add(f"{key} purged" if item.get("purge") is True else f"{key} sent")
        if "expected_date_of_birth" in old["child_details"] and "expected_date_of_birth" not in new.get(
            "child_details", {}
        ):
            seen.add("expected_date_of_birth dropped")
        old_workers = sum(len(e["care_worker_details"]) for e in old["social_care_episodes"])
        new_workers = sum(len(e.get("care_worker_details", [])) for e in new.get("social_care_episodes", []))
        if new_workers != old_workers:
            seen.add("care workers changed")
    expected = {
        "health purged",
        "episode removed",
        "episode added",
        "adoption purged",
        "care_leavers purged",
        "expected_date_of_birth dropped",
        "care workers changed",
    }
    expected |= {f"{key} purged" for key in EPISODE_LISTS} | {f"{key} sent" for key in EPISODE_LISTS}
    assert expected <= seen, expected - seen


def test_generated_records_need_no_normalising() -> None:
    # The generator writes what LAs' SQL writes: no empty lists or blocks.
    rng = random.Random(6)
    for record in make_children(200, seed=12):
        new = mutate(rng, record)
        assert build_full(record, None) == record
        assert build_full(new, None) == new
