"""The schema: bundled vs DfE's official document, product vs simulator, messages, override."""

from __future__ import annotations

import copy
import json
import random

import pytest

from api_pipeline.dfe.schema import RecordValidator, load_bundled_schema, load_schema
from api_pipeline.errors import ConfigError
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal import dfe_model as sim_module
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.rehearsal.synthetic_changes import mutate
from conftest import db_env, insert, reference_dir, reference_missing, rows, run_cli, set_payload, settings_for

SHARED = reference_dir()
OFFICIAL = SHARED / "dfe-csc-openapi-1.0.1.json"


def corruptions(record: dict) -> list[dict]:
    """The mistakes councils' SQL has made, one per copy."""
    out = []

    def edit(fn):
        copy_ = copy.deepcopy(record)
        fn(copy_)
        out.append(copy_)

    edit(lambda r: r["child_details"].__setitem__("uasc_flag", "true"))
    edit(lambda r: r["child_details"].__setitem__("sex", "Male"))
    edit(lambda r: r["child_details"].__setitem__("postcode", None))
    edit(lambda r: r["child_details"].__setitem__("date_of_birth", "2024-02-30"))
    edit(lambda r: r["child_details"].__setitem__("date_of_birth", "14/06/2022"))
    edit(lambda r: r["child_details"].__setitem__("unique_pupil_number", "A12"))
    edit(lambda r: r["child_details"].__setitem__("disabilities", ["HAND", "HAND"]))
    edit(lambda r: r.__setitem__("la_child_id", "C" * 21))
    edit(lambda r: r.__setitem__("la_child_id", "has space"))
    edit(lambda r: r.__setitem__("extra_key", 1))
    edit(lambda r: r.__setitem__("health_and_wellbeing", {"sdq_assessments": [{"date": "2024-01-01", "score": "12"}]}))
    if record.get("social_care_episodes"):
        edit(lambda r: r["social_care_episodes"][0].__setitem__("referral_source", "ABC"))
        edit(lambda r: r["social_care_episodes"][0].pop("social_care_episode_id"))
        edit(
            lambda r: r["social_care_episodes"][0].__setitem__(
                "care_worker_details", [{"worker_id": "W1", "purge": True}]
            )
        )
        edit(lambda r: r["social_care_episodes"][0].__setitem__("adoption", {"placed_date": "2024-02-30"}))
    return out


def corpus() -> list[dict]:
    rng = random.Random(8)
    records = []
    for child in make_children(60, seed=8):
        records.append(child)
        records.append(mutate(rng, child))
        records.extend(corruptions(child))
    if SHARED.is_dir():
        records.extend(json.loads(p.read_text(encoding="utf-8")) for p in sorted((SHARED / "samples").glob("*.json")))
    records += [{"la_child_id": "A1", "purge": True}, {"la_child_id": "A1", "child_details": {"purge": True}}, {}, []]
    return records


def test_bundled_schema_matches_dfe_official_document():
    if not OFFICIAL.is_file():
        pytest.skip(reference_missing("DfE's OpenAPI document"))
    bundled = RecordValidator(load_bundled_schema())
    official = RecordValidator(load_schema(OFFICIAL))
    records = corpus()
    verdicts = [(not bundled.errors(r), not official.errors(r)) for r in records]
    assert all(a == b for a, b in verdicts)
    assert sum(a for a, _ in verdicts) > 100 and sum(not a for a, _ in verdicts) > 500
    for sample in sorted((SHARED / "samples").glob("*.json")):
        assert bundled.errors(json.loads(sample.read_text(encoding="utf-8"))) == [], sample.name


def test_simulator_and_product_agree():
    product = RecordValidator(load_bundled_schema())
    simulator = sim_module.SimulatedDfeValidator(sim_module.load_default_schema())
    for record in corpus():
        assert (not product.errors(record)) == (not simulator.errors(record)), record


@pytest.mark.parametrize(
    "text,ok",
    [("2024-02-29", True), ("2024-02-30", False), ("2023-02-29", False), ("2024-13-01", False), ("2024-1-5", False)],
)
def test_date_format_is_checked(text, ok):
    validator = RecordValidator(load_bundled_schema())
    assert (validator.errors({"la_child_id": "A1", "child_details": {"date_of_birth": text}}) == []) is ok


def test_messages_name_the_field_never_personal_values():
    validator = RecordValidator(load_bundled_schema())
    record = {
        "la_child_id": "A1",
        "child_details": {
            "date_of_birth": "2011-02-31",
            "postcode": "SW1A 1AA EXTRA",
            "unique_pupil_number": "Z99",
            "first_name": 7,
        },
        "social_care_episodes": [
            {"social_care_episode_id": "E1"},
            {"social_care_episode_id": "E2", "referral_source": "ABC"},
        ],
    }
    text = "; ".join(validator.errors(record))
    for value in ("2011-02-31", "SW1A", "Z99"):
        assert value not in text
    assert "child_details.date_of_birth" in text and "child_details.postcode" in text
    assert "social_care_episodes[1].referral_source: a value is longer than 2 characters" in text
    assert "ABC" not in text


def test_payload_schema_override_takes_dfe_document(tmp_path):
    if not OFFICIAL.is_file():
        pytest.skip(reference_missing("DfE's OpenAPI document"))
    document = json.loads(OFFICIAL.read_text(encoding="utf-8"))
    episode = document["components"]["schemas"]["CSC"]["items"]["properties"]["social_care_episodes"]["items"]
    episode["properties"]["referral_source"]["maxLength"] = 1  # a stricter future DfE version
    newer = tmp_path / "openapi.json"
    newer.write_text(json.dumps(document), encoding="utf-8")
    record = {"la_child_id": "A1", "social_care_episodes": [{"social_care_episode_id": "E", "referral_source": "1C"}]}
    assert RecordValidator(load_bundled_schema()).errors(record) == []
    assert RecordValidator(load_schema(newer)).errors(record)


def test_payload_schema_errors_are_config_errors(tmp_path):
    bad = tmp_path / "x.json"
    bad.write_text("{nope", encoding="utf-8")
    with pytest.raises(ConfigError):
        load_schema(bad)
    bad.write_text('{"components": {}}', encoding="utf-8")
    with pytest.raises(ConfigError):
        load_schema(bad)


def test_validate_command(db_path, tmp_path, simulator):
    children = list(make_children(8, seed=41))
    children[1]["child_details"]["sex"] = "Female"
    children[5]["child_details"]["sex"] = "Male"
    children[6]["social_care_episodes"][0]["referral_source"] = "ABC"
    insert(db_path, children)
    before = rows(db_path)
    result = run_cli(["validate"], environ=db_env(db_path), cwd=tmp_path)
    assert result.code == 1
    assert "checked 8 rows: 5 would be sent" in result.out
    assert "schema: child_details.sex" in result.out and "2, 6" in result.out
    assert "schema: social_care_episodes[].referral_source" in result.out
    assert rows(db_path) == before  # changes nothing
    assert simulator.request_log() == []
    clean = [c for i, c in enumerate(children) if i not in (1, 5, 6)]
    other = tmp_path / "clean.db"
    from api_pipeline.store.db import Database
    from api_pipeline.store.staging import StagingTable

    with Database.open_sqlite(other) as db:
        StagingTable(db, "ssd_api_data_staging").create_staging_table()
    insert(other, clean)
    assert run_cli(["validate", "--all"], environ=db_env(other), cwd=tmp_path).code == 0


def _counts_add_up(line: str) -> None:
    """``checked N rows: a x, b y, …``: every row checked is counted once."""
    head, counts = line.split(": ", 1)
    checked = int(head.split()[1])
    assert sum(int(part.split()[0]) for part in counts.split(", ")) == checked, line


def test_validate_after_a_run_lists_the_rows_it_held_back(staging, tmp_path, simulator):
    """A run marks a row invalid and leaves it until the council's SQL sets it back to pending:
    validate still checks it, lists it by field and exits 1, until the data is fixed."""
    children = list(make_children(5, seed=42))
    children[3]["child_details"]["sex"] = "Female"
    insert(staging, children)
    execute_run(settings_for(simulator, staging))
    (held,) = [r for r in rows(staging) if r["submission_status"] == "Invalid"]
    result = run_cli(["validate"], environ=db_env(staging), cwd=tmp_path)
    assert result.code == 1
    assert "checked 1 row: 0 would be sent, 0 already up to date, 1 invalid, 0 skipped" in result.out
    assert f"schema: child_details.sex       1  {held['id']}" in result.out
    _counts_add_up(result.out.splitlines()[0])
    # --all checks the sent rows too.
    everything = run_cli(["validate", "--all"], environ=db_env(staging), cwd=tmp_path)
    assert everything.code == 1 and "checked 5 rows: 0 would be sent, 4 already up to date, 1 invalid" in everything.out
    _counts_add_up(everything.out.splitlines()[0])
    # The data fixed, but the status left as it is: it passes, and validate says what a run needs.
    children[3]["child_details"]["sex"] = "F"
    with staging.open() as db, db.transaction():
        db.execute(f"UPDATE {staging.table} SET json_payload = ? WHERE id = ?", (json.dumps(children[3]), held["id"]))
    result = run_cli(["validate"], environ=db_env(staging), cwd=tmp_path)
    assert result.code == 0
    assert "1 held back as invalid but passing now (sent once your SQL sets them back to Pending)" in result.out
    _counts_add_up(result.out.splitlines()[0])
    # As the council's SQL fixes it: the data changed and the status set back to Pending.
    set_payload(staging, children[3]["la_child_id"], children[3])
    result = run_cli(["validate"], environ=db_env(staging), cwd=tmp_path)
    assert result.code == 0 and result.out.splitlines()[0] == (
        "checked 1 row: 1 would be sent, 0 already up to date, 0 invalid, 0 skipped"
    )
    assert execute_run(settings_for(simulator, staging)).outcomes["sent"] == 1
