"""Switch-over: a council that sent its table with the earlier tools moves to this one (DESIGN §4, end).

DfE already holds the children the earlier tool sent; the table carries that tool's statuses
and ``previous_json_payload`` as the council's nightly SQL leaves it; there is no ledger yet.
After one run of this tool, DfE must hold exactly the table's data, and a second run sends
nothing. Every test runs on SQLite and on PostgreSQL (``staging`` fixture).
"""

from __future__ import annotations

import copy
import json
import random

import pytest

from api_pipeline.dfe.payload import STRUCTURE, normalise
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.demo import apply_nightly_changes, load_children
from api_pipeline.rehearsal.synthetic import make_children
from conftest import Staging, converged, ledger, rows, sent_records, settings_for
from earlier_tool import hand_over, send_as_earlier_tool


def removed_parts(previous: dict, current: dict) -> list[str]:
    """Id'd items and blocks that ``previous`` has and ``current`` lacks: what needs a purge."""
    found: list[str] = []

    def visit(old: dict, new: dict, level: str, path: str) -> None:
        for key, id_key in STRUCTURE[level].items():
            if key not in old:
                continue
            if id_key is None:
                if key not in new:
                    found.append(f"{path}{key}")
                continue
            now = {i.get(id_key): i for i in new.get(key, []) if isinstance(i, dict)}
            for item in old[key]:
                ident = item.get(id_key)
                if ident not in now:
                    found.append(f"{path}{key}[{ident}]")
                elif key in STRUCTURE:
                    visit(item, now[ident], key, f"{path}{key}[{ident}].")

    visit(normalise(previous), normalise(current), "", "")
    return found


def load_children_into(staging: Staging, records: list[dict]) -> None:
    with staging.open() as db:
        load_children(db, staging.table, records)


@pytest.mark.parametrize("mode", ["partial", "full"])
def test_first_run_after_the_earlier_tool_leaves_dfe_holding_exactly_the_table(simulator, staging, mode):
    night = hand_over(simulator, staging, children=120, seed=41)
    with staging.open() as db:
        before = {
            p: (json.loads(prev), json.loads(cur))
            for p, prev, cur in db.query(
                f"SELECT person_id, previous_json_payload, json_payload FROM {staging.table} "
                "WHERE previous_json_payload IS NOT NULL"
            )
        }
    needing_purges = {c for c in night["updated"] if removed_parts(*before[c])}
    assert len(needing_purges) >= 3, "the night must remove items, blocks and episodes"
    settings = settings_for(simulator, staging, USE_PARTIAL_PAYLOAD="true" if mode == "partial" else "false")
    simulator.clear_log()

    summary = execute_run(settings)

    assert summary.problems == 0
    converged(staging, simulator)
    sent_ids = {r["la_child_id"] for r in sent_records(simulator)}
    # Only what changed is sent; children the earlier tool sent and nobody changed are adopted.
    assert sent_ids == set(night["updated"]) | set(night["deleted"]) | set(night["new"])
    assert summary.outcomes["adopted"] == 120 - len(set(night["updated"])) - len(night["deleted"])
    assert set(ledger(staging)) == {r["person_id"] for r in rows(staging)}
    simulator.clear_log()
    again = execute_run(settings)
    assert again.requests == 0 and again.rows_read == 0
    assert simulator.request_log() == []


def test_a_changed_child_is_sent_whole_with_purges_from_previous_json_payload(simulator, staging):
    hand_over(simulator, staging, children=40, seed=43)
    with staging.open() as db:
        pairs = {
            p: (json.loads(prev), json.loads(cur))
            for p, prev, cur, state in db.query(
                f"SELECT person_id, previous_json_payload, json_payload, row_state FROM {staging.table} "
                "WHERE previous_json_payload IS NOT NULL"
            )
            if state == "Updated"
        }
    simulator.clear_log()
    execute_run(settings_for(simulator, staging, USE_PARTIAL_PAYLOAD="true"))
    sent = {r["la_child_id"]: r for r in sent_records(simulator)}
    for child, (previous, current) in pairs.items():
        body = sent[child]
        # The whole current record (partial mode too: DfE's copy is not known exactly) ...
        assert body["child_details"] == current["child_details"]
        held = {e["social_care_episode_id"] for e in current.get("social_care_episodes", [])}
        got = {e["social_care_episode_id"] for e in body.get("social_care_episodes", []) if not e.get("purge")}
        assert got == held
        # ... plus a purge for every id'd item and block the previous record had and this one lacks.
        assert len(removed_parts(previous, current)) == _count_purges(body)


def _count_purges(record: dict) -> int:
    count = 0

    def visit(node: object) -> None:
        nonlocal count
        if isinstance(node, dict):
            if node.get("purge") is True:
                count += 1
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    for key, value in record.items():
        if key != "purge":
            visit(value)
    return count


def test_rows_the_earlier_tool_sent_are_adopted_without_sending(simulator, staging):
    load_children_into(staging, list(make_children(30, seed=45)))
    with staging.open() as db:
        send_as_earlier_tool(simulator, db, staging.table)
    simulator.clear_log()
    summary = execute_run(settings_for(simulator, staging))
    assert summary.requests == 0 and simulator.request_log() == []
    assert summary.outcomes["adopted"] == 30
    entries = ledger(staging)
    assert len(entries) == 30
    for row in rows(staging):
        assert entries[row["person_id"]]["record"] == normalise(json.loads(row["json_payload"]))
        assert entries[row["person_id"]]["receipt"] == row["api_response"]
        assert row["submission_status"] == "sent"  # the row itself is left as the earlier tool wrote it


def test_an_adopted_rows_note_is_kept_as_its_receipt_with_control_characters_escaped(simulator, staging):
    """The earlier tool's api_response becomes the ledger's receipt and goes back to api_response
    when the child is next unchanged: an escape sequence or line break in it is stored escaped."""
    load_children_into(staging, list(make_children(2, seed=46)))
    with staging.open() as db:
        send_as_earlier_tool(simulator, db, staging.table)
        with db.transaction():
            db.execute(f"UPDATE {staging.table} SET api_response = ?", ("ok\x1b[2J\n18:00:00 INFO forged",))
    execute_run(settings_for(simulator, staging))
    for entry in ledger(staging).values():
        assert entry["receipt"] == "ok\\x1b[2J\\n18:00:00 INFO forged"


# ---------------------------------------------------------------------------
# Tables as councils really have them (issue 14 item 4, issue 15 item 3)
# ---------------------------------------------------------------------------


def _set(staging: Staging, row_id: int, **columns: object) -> None:
    assignments = ", ".join(f"{name} = ?" for name in columns)
    with staging.open() as db, db.transaction():
        db.execute(f"UPDATE {staging.table} SET {assignments} WHERE id = ?", (*columns.values(), row_id))


def test_a_row_whose_person_id_is_not_its_la_child_id_is_sent_under_its_la_child_id(simulator, staging, caplog):
    children = list(make_children(6, seed=51))
    load_children_into(staging, children)
    ids = {r["person_id"]: r["id"] for r in rows(staging)}
    # Two rows carry the council's own person ids rather than the child's la_child_id.
    _set(staging, ids[children[1]["la_child_id"]], person_id="P-0001")
    _set(staging, ids[children[4]["la_child_id"]], person_id="P-0004")
    settings = settings_for(simulator, staging)
    with caplog.at_level("WARNING", logger="api_pipeline"):
        summary = execute_run(settings)
    assert summary.outcomes["sent"] == 6 and summary.problems == 0
    assert set(simulator.snapshot()) == {c["la_child_id"] for c in children}
    assert set(ledger(staging)) == {c["la_child_id"] for c in children}
    warnings = [r.getMessage() for r in caplog.records if "differs from their record's la_child_id" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("2 rows")
    # Found in the ledger from then on: nothing resent, and a change goes as a delta.
    simulator.clear_log()
    assert execute_run(settings).requests == 0
    changed = copy.deepcopy(children[1])
    changed["child_details"]["first_name"] = "Changed"
    with staging.open() as db, db.transaction():
        db.execute(
            f"UPDATE {staging.table} SET previous_json_payload = json_payload, json_payload = ?, "
            "submission_status = 'Pending', row_state = 'Updated' WHERE person_id = 'P-0001'",
            (json.dumps(changed),),
        )
    execute_run(settings)
    (body,) = sent_records(simulator)
    assert body["la_child_id"] == children[1]["la_child_id"]
    assert "social_care_episodes" not in body  # a delta against the ledger, not the whole record
    converged(staging, simulator)
    # Deleted: purged under its la_child_id, once.
    _set(staging, ids[children[4]["la_child_id"]], row_state="Deleted")
    execute_run(settings)
    assert children[4]["la_child_id"] not in simulator.snapshot()
    simulator.clear_log()
    assert execute_run(settings).requests == 0


@pytest.mark.parametrize(
    "how",
    ["null person_ids", "trailing space", "two other person_ids", "other person_id and a matching row"],
)
def test_every_row_of_a_duplicated_child_is_held_back(simulator, staging, how):
    children = list(make_children(8, seed=53))
    twin = copy.deepcopy(children[3])
    twin["child_details"]["first_name"] = "Twin"
    load_children_into(staging, children + [twin])
    child = children[3]["la_child_id"]
    first, second = sorted(r["id"] for r in rows(staging) if r["person_id"] == child)
    if how == "null person_ids":
        _set(staging, first, person_id=None)
        _set(staging, second, person_id=None)
    elif how == "trailing space":
        _set(staging, second, person_id=child + " ")
    elif how == "two other person_ids":
        _set(staging, first, person_id="P-A")
        _set(staging, second, person_id="P-B")
    else:
        _set(staging, first, person_id="P-A")
    summary = execute_run(settings_for(simulator, staging))
    assert child not in simulator.snapshot()
    assert summary.outcomes["sent"] == 7 and summary.outcomes["skipped"] == 2
    assert summary.invalid_reasons["duplicate child"] == 2
    held = [r for r in rows(staging) if r["id"] in (first, second)]
    assert [r["submission_status"] for r in held] == ["Pending", "Pending"]
    assert all("the same child" in r["api_response"] for r in held)
    assert child not in ledger(staging)
    # Fixed by the council: the child is sent once.
    with staging.open() as db, db.transaction():
        db.execute(f"DELETE FROM {staging.table} WHERE id = ?", (second,))
    _set(staging, first, person_id=child)
    execute_run(settings_for(simulator, staging))
    converged(staging, simulator)


def test_a_row_naming_another_rows_child_after_it_is_held_back(simulator, staging):
    """Read in id order: a row whose person_id is another id, after the child's own row, is only known
    to be that child once its record is read. The child's own row has gone by then; this one is held
    back, on this run and every later one, and DfE keeps the child's own row."""
    children = list(make_children(3, seed=54))
    twin = copy.deepcopy(children[1])
    twin["child_details"]["first_name"] = "Twin"
    load_children_into(staging, children + [twin])
    twin_id = max(r["id"] for r in rows(staging))
    _set(staging, twin_id, person_id="P-B")
    settings = settings_for(simulator, staging)
    for _ in range(2):
        summary = execute_run(settings)
        assert summary.outcomes["skipped"] == 1 and summary.invalid_reasons["duplicate child"] == 1
        assert simulator.snapshot()[children[1]["la_child_id"]]["child_details"] == children[1]["child_details"]


def test_a_twin_arriving_after_its_child_was_sent_is_held_back(simulator, staging):
    """The ledger names the row that sent each child: a second row for it is a duplicate."""
    children = list(make_children(4, seed=55))
    load_children_into(staging, children)
    settings = settings_for(simulator, staging)
    execute_run(settings)
    twin = copy.deepcopy(children[0])
    twin["child_details"]["first_name"] = "Twin"
    load_children_into(staging, [twin])
    twin_id = max(r["id"] for r in rows(staging))
    _set(staging, twin_id, person_id=None)
    held_before = simulator.snapshot()[children[0]["la_child_id"]]
    summary = execute_run(settings)
    assert summary.outcomes["skipped"] == 1 and summary.outcomes["sent"] == 0
    assert simulator.snapshot()[children[0]["la_child_id"]] == held_before


def test_a_skipped_row_keeps_dfes_last_answer(simulator, staging):
    children = list(make_children(3, seed=57))
    load_children_into(staging, children + [copy.deepcopy(children[0])])
    refused = "rejected by DfE: [0] child_details.postcode: does not match"
    first = min(r["id"] for r in rows(staging) if r["person_id"] == children[0]["la_child_id"])
    _set(staging, first, submission_status="Error", api_response=refused)
    execute_run(settings_for(simulator, staging))
    by_id = {r["id"]: r for r in rows(staging)}
    assert by_id[first]["api_response"] == refused  # kept: it says why DfE refused the record
    second = max(r["id"] for r in rows(staging) if r["person_id"] == children[0]["la_child_id"])
    assert by_id[second]["api_response"].startswith("not sent: another row")  # nothing to keep: the reason


def test_a_successful_send_copies_current_hash_to_previous_hash(simulator, staging):
    children = list(make_children(3, seed=59))
    load_children_into(staging, children)
    with staging.open() as db:
        hashes = {p: bytes(h) for p, h in db.query(f"SELECT person_id, current_hash FROM {staging.table}")}
    assert all(len(h) == 32 for h in hashes.values())
    execute_run(settings_for(simulator, staging))
    for row in rows(staging):
        assert row["previous_hash"] == hashes[row["person_id"]]


@pytest.mark.parametrize("json_type", ["JSONB", "JSON"])
def test_postgresql_json_payload_columns_as_the_earlier_builder_makes_them(
    postgres_odbc, simulator, tmp_path, json_type
):
    """The earlier PostgreSQL builder's DDL: JSON payload columns, BIGSERIAL id, TIMESTAMPTZ."""
    from conftest import run_cli, unique_table

    staging = Staging("postgresql", postgres_odbc, unique_table("pgjson"))
    with staging.open() as db, db.transaction():
        db.execute(
            f"CREATE TABLE {staging.table} (id BIGSERIAL PRIMARY KEY, person_id VARCHAR(48), "
            f"previous_json_payload {json_type}, json_payload {json_type} NOT NULL, "
            f"partial_json_payload {json_type}, current_hash BYTEA, previous_hash BYTEA, "
            "submission_status VARCHAR(50) DEFAULT 'Pending', submission_timestamp TIMESTAMPTZ DEFAULT now(), "
            "api_response TEXT, row_state VARCHAR(10) DEFAULT 'New', last_updated TIMESTAMPTZ DEFAULT now())"
        )
    try:
        checked = run_cli(["test-schema"], environ=staging.env, cwd=tmp_path)
        assert checked.code == 0, checked.out + checked.err
        children = list(make_children(20, seed=61))
        load_children_into(staging, children)
        settings = settings_for(simulator, staging)
        first = execute_run(settings)
        assert first.outcomes["sent"] == 20 and first.problems == 0
        with staging.open() as db:
            night = apply_nightly_changes(db, staging.table, random.Random(3), update_fraction=0.3, delete_fraction=0.1)
        second = execute_run(settings)
        assert second.problems == 0
        assert second.outcomes["sent"] == len(night.updated) and second.outcomes["purged"] == len(night.deleted)
        converged(staging, simulator)
        simulator.clear_log()
        assert execute_run(settings).requests == 0
    finally:
        staging.drop()


def test_status_and_test_schema_say_what_the_next_run_does_for_children_without_a_ledger_entry(
    simulator, staging, tmp_path
):
    from conftest import run_cli

    night = hand_over(simulator, staging, children=40, seed=63)
    env = staging.env | {"LOG_DIR": str(tmp_path / "logs")}
    updated, deleted, new = len(set(night["updated"])), len(night["deleted"]), len(night["new"])
    adopt = 40 - updated - deleted
    assert deleted == 1
    expected = [
        f"  {adopt} rows: recorded as already held by DfE (sent by the earlier tool), not sent again",
        f"  {updated} rows: sent whole, with purges for what previous_json_payload has and the record now lacks",
        f"  {new} rows: sent whole",
        "  1 row: purged (deleted children)",
    ]
    status = run_cli(["status"], environ=env, cwd=tmp_path)
    assert status.code == 0, status.err
    assert f"Rows whose child has no ledger entry yet: {40 + new}. The next run:" in status.out
    for line in expected:
        assert line in status.out.splitlines()
    schema = run_cli(["test-schema"], environ=env, cwd=tmp_path)
    assert schema.code == 0, schema.out + schema.err
    assert f"rows whose child has no ledger entry yet: {40 + new}; the next run:" in schema.out
    assert all(line in schema.out.splitlines() for line in expected)
    as_json = json.loads(run_cli(["status", "--json"], environ=env, cwd=tmp_path).out)
    assert as_json["ledger"]["rows_without_entry"] == {
        "adopt": adopt,
        "changed_since_sent": 0,
        "with_purges": updated,
        "whole": new,
        "purge": deleted,
    }
    # After one run every child has its entry, and both say nothing more about it.
    execute_run(settings_for(simulator, staging))
    assert "no ledger entry" not in run_cli(["status"], environ=env, cwd=tmp_path).out
    assert "no ledger entry" not in run_cli(["test-schema"], environ=env, cwd=tmp_path).out


def test_a_run_stopped_early_counts_the_rows_kept_for_the_second_look(simulator, db_path, tmp_path):
    from conftest import insert, run_cli

    insert(db_path, list(make_children(30, seed=65)))
    staging = Staging.sqlite(db_path)
    for row in rows(staging)[:5]:
        _set(staging, row["id"], person_id=f"P-{row['id']}")  # read first, kept to be sent after the others
    log_dir = tmp_path / "logs"
    environ = simulator.settings_env() | staging.env | {"BATCH_SIZE": "10", "MAX_RUNTIME": "1s"}
    simulator.latency = 1.2  # MAX_RUNTIME passes while the second batch waits for the first
    try:
        assert run_cli(["run", "--log-dir", str(log_dir)], environ=environ, cwd=tmp_path).code == 1
    finally:
        simulator.latency = 0.0
    (summary_file,) = log_dir.glob("*.summary.json")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    o = summary["outcomes"]
    assert summary["stopped_early"] is True
    assert o["not_reached"] >= 5 and o["sent"] + o.get("failed", 0) + o["not_reached"] == 30, o
    # The rows kept for the second look were not reached, so they are not among the rows read either:
    # what became of the rows read adds up to them.
    assert summary["rows_read"] == o["sent"] + o.get("failed", 0) and summary["rows_read"] + o["not_reached"] == 30
