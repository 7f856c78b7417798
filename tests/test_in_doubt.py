"""Batches in doubt (DESIGN §7, issue 22): DfE took a batch, but the table never learnt it.

The answer is lost on the wire (DfE stored the batch, then every retry got a 500), or the
write-back of the answer fails. The council's SQL then changes those children again, back to
what the ledger says or onwards, before the next run. Each time, the next run must make DfE
hold exactly the table's data, whichever version DfE ended up with, and the run after that
must send nothing. Against the real simulator over loopback, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from api_pipeline.dfe.payload import clone, records_equal
from api_pipeline.errors import ExitCode, PipelineError
from api_pipeline.job.run_files import RunSummary
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.dfe_model import load_default_schema
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.staging import StagingTable
from conftest import Staging, end_session, insert, rows, set_payload, settings_for

CHILDREN = 30
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def no_wait(_seconds: float) -> None:
    """Retries wait for nothing in these tests."""


def grown(record: dict, tag: str) -> dict:
    """The record after a night that added parts: a new episode, a new item in every episode,
    an adoption block, and a changed detail. Every new id carries ``tag``."""
    out = clone(record)
    episodes = out["social_care_episodes"]
    for number, episode in enumerate(episodes):
        episode.setdefault("child_protection_plans", []).append(
            {"child_protection_plan_id": f"P{tag}{number}", "start_date": "2026-04-01", "purge": False}
        )
        episode["adoption"] = {"initial_decision_date": "2026-04-02"}
    extra = clone(episodes[0])
    extra["social_care_episode_id"] = f"E{tag}"
    episodes.append(extra)
    out["child_details"]["postcode"] = "ZZ9 9ZZ"
    return out


def onwards(record: dict, tag: str) -> dict:
    """A later night that changed the record again and no longer has what ``grown`` added."""
    out = clone(record)
    out["child_details"]["first_name"] = f"Name{tag}"
    return out


def lose_the_answer(sim: Simulator) -> None:
    """DfE stores the next batch but its answer never arrives; every retry then gets a 500."""
    sim.inject("lost_answer")
    sim.inject("500", times=10)


def children_posts(sim: Simulator) -> int:
    return sum(1 for e in sim.request_log() if e.path.endswith("/children"))


def converged(sim: Simulator, staging: Staging) -> list[str]:
    """Children whose record at DfE is not the table's (deleted children must be gone)."""
    held = sim.snapshot()
    wrong = []
    for row in staging.rows():
        record = json.loads(row["json_payload"])
        child = record["la_child_id"]
        if (row["row_state"] or "").lower() == "deleted":
            if child in held:
                wrong.append(child)
        elif not records_equal(held.get(child), record):
            wrong.append(child)
    return wrong


def in_doubt(staging: Staging) -> dict[str, dict]:
    """Children in doubt, with their outlines: in the in-doubt table, or in a batch left in flight."""
    with staging.open() as db:
        table = StagingTable(db, staging.table)
        found = {
            row[0]: json.loads(row[1]) for row in db.query(f"SELECT la_child_id, outline_json FROM {table.in_doubt}")
        }
        for batch in table.left_in_flight():
            found.update((c.la_child_id, json.loads(c.outline_json)) for c in batch.children)
        return found


def assert_settled(sim: Simulator, staging: Staging, settings) -> None:
    """The table and DfE agree, nothing is in doubt, and the next run sends nothing."""
    assert converged(sim, staging) == []
    assert in_doubt(staging) == {}
    sim.clear_log()
    again = execute_run(settings)
    assert children_posts(sim) == 0
    assert again.problems == 0 and again.outcomes["sent"] == 0
    assert converged(sim, staging) == []


@pytest.mark.parametrize("direction", ["back", "onwards"])
@pytest.mark.parametrize("mode", ["partial", "full"])
def test_a_lost_answer_then_the_councils_change_still_converges(staging: Staging, direction: str, mode: str) -> None:
    children = list(make_children(CHILDREN, seed=221))
    staging.insert(children)
    with Simulator() as sim:
        settings = settings_for(sim, staging, USE_PARTIAL_PAYLOAD="true" if mode == "partial" else "false")
        first = execute_run(settings)
        assert first.outcomes["sent"] == CHILDREN

        # The council's SQL adds parts to every child; DfE takes the batch, the answer is lost.
        second = {c["la_child_id"]: grown(c, "2") for c in children}
        for child, record in second.items():
            staging.set_payload(child, record)
        lose_the_answer(sim)
        with pytest.raises(PipelineError) as stopped:
            execute_run(settings, sleep=no_wait)
        assert stopped.value.exit_code == ExitCode.API
        held = sim.snapshot()
        assert all(records_equal(held[child], record) for child, record in second.items())
        assert {row["submission_status"] for row in staging.rows()} == {"Pending"}
        assert set(in_doubt(staging)) == set(second)  # every child of the batch is in doubt
        sim.clear_faults()

        # Before the next run, the council's SQL changes them again.
        for child in children:
            later = child if direction == "back" else onwards(child, "3")
            staging.set_payload(child["la_child_id"], later)
        third = execute_run(settings)
        assert third.outcomes["sent"] == CHILDREN and third.outcomes["unchanged"] == 0
        assert third.resent_in_doubt == CHILDREN
        assert_settled(sim, staging, settings)


def test_a_child_purged_then_back_then_deleted_while_in_doubt_is_purged(staging: Staging) -> None:
    children = list(make_children(6, seed=222))
    staging.insert(children)
    gone = children[0]["la_child_id"]
    with Simulator() as sim:
        settings = settings_for(sim, staging)
        execute_run(settings)
        staging.mark_deleted(gone)
        assert execute_run(settings).outcomes["purged"] == 1
        assert staging.ledger()[gone]["purged"]

        # The child comes back; DfE takes it whole, but the answer is lost.
        staging.set_payload(gone, grown(children[0], "2"))
        lose_the_answer(sim)
        with pytest.raises(PipelineError):
            execute_run(settings, sleep=no_wait)
        assert gone in sim.snapshot()
        sim.clear_faults()

        # Deleted again: the ledger says DfE purged it, but DfE may hold it since.
        staging.mark_deleted(gone)
        purged = execute_run(settings)
        assert purged.outcomes["purged"] == 1 and gone not in sim.snapshot()
        assert_settled(sim, staging, settings)


def test_a_lost_purge_then_the_child_back_as_the_ledger_has_it_is_sent(staging: Staging) -> None:
    children = list(make_children(6, seed=223))
    staging.insert(children)
    child = children[1]["la_child_id"]
    with Simulator() as sim:
        settings = settings_for(sim, staging)
        execute_run(settings)
        staging.mark_deleted(child)
        lose_the_answer(sim)
        with pytest.raises(PipelineError):
            execute_run(settings, sleep=no_wait)
        assert child not in sim.snapshot()  # DfE purged it; the ledger still has its record
        sim.clear_faults()

        # The council restores the child exactly as the ledger has it.
        staging.set_payload(child, children[1])
        back = execute_run(settings)
        assert back.outcomes["sent"] == 1 and back.outcomes["unchanged"] == 0
        assert_settled(sim, staging, settings)


def test_a_first_send_in_doubt_purges_what_it_may_have_added(staging: Staging) -> None:
    """No ledger entry yet: DfE holds nothing or the lost batch's record."""
    children = list(make_children(8, seed=224))
    first = [grown(c, "1") for c in children]
    staging.insert(first)
    with Simulator() as sim:
        settings = settings_for(sim, staging)
        lose_the_answer(sim)
        with pytest.raises(PipelineError):
            execute_run(settings, sleep=no_wait)
        assert len(sim.snapshot()) == len(children)
        assert staging.ledger() == {}
        sim.clear_faults()

        # Two nights of changes: previous_json_payload (the earlier tools' baseline) is not what
        # was sent, and the record now lacks the parts the lost batch carried.
        for record in children:
            staging.set_payload(record["la_child_id"], grown(record, "x"))
            staging.set_payload(record["la_child_id"], record)
        assert execute_run(settings).outcomes["sent"] == len(children)
        assert_settled(sim, staging, settings)


def test_only_what_dfe_may_hold_stays_in_doubt(staging: Staging) -> None:
    """A receipt or a rejection settles a child; a batch never sent leaves nothing behind."""
    children = list(make_children(12, seed=225))
    children[3]["child_details"]["first_name"] = "Bartholomew-Christopher"
    # DfE's check is stricter than the published schema here: it refuses that one child.
    schema = load_default_schema()
    schema["properties"]["child_details"]["properties"]["first_name"]["maxLength"] = 20
    staging.insert(children)
    with Simulator(schema=schema) as sim:
        settings = settings_for(sim, staging, BATCH_SIZE="4")
        first = execute_run(settings)
        assert first.outcomes["sent"] == 11 and first.outcomes["rejected"] == 1
        assert in_doubt(staging) == {}

        # Two batches: the first is lost, the second never goes (the run stops first).
        for record in children[:8]:
            night = grown(record, "2")
            night["child_details"]["first_name"] = "Ann"
            staging.set_payload(record["la_child_id"], night)
        lose_the_answer(sim)
        with pytest.raises(PipelineError):
            execute_run(settings, sleep=no_wait)
        assert set(in_doubt(staging)) == {c["la_child_id"] for c in children[:4]}
        sim.clear_faults()
        execute_run(settings)
        assert_settled(sim, staging, settings)


def test_the_outline_names_only_ids_and_blocks(staging: Staging) -> None:
    """What the in-flight table holds is no child's data: ids and which blocks exist."""
    children = list(make_children(3, seed=226))
    staging.insert(children)
    with Simulator() as sim:
        settings = settings_for(sim, staging)
        lose_the_answer(sim)
        with pytest.raises(PipelineError):
            execute_run(settings, sleep=no_wait)
        entries = in_doubt(staging)
    record = children[0]
    outline = entries[record["la_child_id"]]
    text = json.dumps(outline)
    assert record["child_details"]["first_name"] not in text and record["child_details"]["date_of_birth"] not in text
    assert outline["child_details"] == 1
    episode = record["social_care_episodes"][0]
    assert episode["social_care_episode_id"] in outline["social_care_episodes"]


@pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")
def test_a_run_killed_while_dfe_answers_leaves_its_batch_in_doubt(staging: Staging, tmp_path) -> None:
    """The process stopped between DfE storing the batch and the write-back: the next run finds
    the batch's record left in flight, and its children in doubt."""
    children = list(make_children(20, seed=227))
    staging.insert(children)
    with Simulator() as sim:
        settings = settings_for(sim, staging)
        execute_run(settings)
        for record in children:
            staging.set_payload(record["la_child_id"], grown(record, "2"))
        sim.latency = 60.0  # DfE stores the batch at once, and answers a minute later
        stored = sim.records_accepted
        env = os.environ | sim.settings_env() | staging.env | {"LOG_DIR": str(tmp_path / "logs")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
        run = subprocess.Popen(
            [sys.executable, "-m", "api_pipeline", "-q", "run"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while sim.records_accepted < stored + len(children):
                assert run.poll() is None and time.monotonic() < deadline, "the run never got its batch to DfE"
                time.sleep(0.05)
        finally:
            run.send_signal(signal.SIGKILL)
            run.wait(timeout=30)
        sim.latency = 0.0
        assert set(in_doubt(staging)) == {c["la_child_id"] for c in children}

        for record in children:  # back to what the ledger says
            staging.set_payload(record["la_child_id"], record)
        checked = execute_run(settings, validate_only=True)  # reads, moves nothing: still in doubt
        assert checked.outcomes["valid"] == len(children) and checked.outcomes["unchanged"] == 0
        assert set(in_doubt(staging)) == {c["la_child_id"] for c in children}
        again = execute_run(settings)
        assert again.outcomes["sent"] == len(children) and again.resent_in_doubt == len(children)
        assert_settled(sim, staging, settings)


def test_counts_after_the_database_is_lost_say_what_was_recorded(postgres_table, monkeypatch, caplog) -> None:
    """Issue 22.5: sent counts only what the table recorded; what DfE acknowledged but the table
    could not record is counted in doubt; the rows left are unknown when the database is gone."""

    children = list(make_children(60, seed=228))
    postgres_table.insert(children)
    real = StagingTable.write_back
    outcomes_written = [0]

    def lose_the_session_first(self: StagingTable, updates, ledger, **doubt) -> int:
        if ledger:  # a batch's outcomes: the first loss is reconnected, the second stops the run
            outcomes_written[0] += 1
            if outcomes_written[0] in (1, 2):
                end_session(postgres_table, self.db)
        return real(self, updates, ledger, **doubt)

    with Simulator() as sim:
        settings = settings_for(sim, postgres_table, BATCH_SIZE="10")
        execute_run(settings)
        for record in children:  # the next night adds parts to every child
            postgres_table.set_payload(record["la_child_id"], grown(record, "2"))
        monkeypatch.setattr(StagingTable, "write_back", lose_the_session_first)
        summary = RunSummary(run_id="lost", mode="partial")
        with pytest.raises(PipelineError) as stopped:
            execute_run(settings, summary=summary)
        monkeypatch.undo()
        assert stopped.value.exit_code == ExitCode.DATABASE
        marked = [row["person_id"] for row in postgres_table.rows() if row["submission_status"] == "Sent"]
        held = sim.snapshot()
        grown_at_dfe = [child for child, record in held.items() if record["child_details"].get("postcode") == "ZZ9 9ZZ"]
        assert summary.outcomes["sent"] == len(marked) == 10  # the first batch, written after reconnecting
        assert summary.outcomes["in_doubt"] == len(grown_at_dfe) - len(marked) >= 10  # the second at least
        assert summary.not_reached_unknown
        lines = "\n".join(summary.lines())
        assert f"{len(marked)} sent," in lines and "not reached (stopped early): unknown" in lines
        assert f"{summary.outcomes['in_doubt']} acknowledged by DfE but not recorded (in doubt)" in lines

        # The council's SQL changes every child back before the next run.
        for record in children:
            postgres_table.set_payload(record["la_child_id"], record)
        again = execute_run(settings)
        assert again.resent_in_doubt == summary.outcomes["in_doubt"]
        # Sent: those the table recorded (their ledger has the grown record) and those in doubt;
        # the rest never left the ledger's version, which they are back to.
        assert again.outcomes["sent"] == len(marked) + summary.outcomes["in_doubt"]
        assert again.outcomes["unchanged"] == len(children) - again.outcomes["sent"]
        assert_settled(sim, postgres_table, settings)


def without_first_item(record: dict) -> dict:
    """The record after a night that closed the first assessment of its first episode."""
    out = clone(record)
    episode = out["social_care_episodes"][0]
    for key in ("child_and_family_assessments", "section_47_assessments", "child_protection_plans"):
        if episode.get(key):
            episode[key] = episode[key][1:] or None
            if episode[key] is None:
                del episode[key]
            break
    out["child_details"]["postcode"] = "ZZ9 9ZZ"
    return out


def test_resend_all_after_restoring_an_older_copy_of_the_tables(db_path, tmp_path) -> None:
    """An older copy of the table and ledger put back: the ledger no longer says what DfE holds,
    and a normal run leaves DfE wrong; run --resend-all sends every child whole against it."""
    import sqlite3

    children = list(make_children(10, seed=229))
    insert(db_path, children)
    backup = tmp_path / "backup.db"
    with Simulator() as sim:
        settings = settings_for(sim, db_path)
        execute_run(settings)
        with sqlite3.connect(db_path) as live, sqlite3.connect(backup) as copy:
            live.backup(copy)  # the night's backup
        for record in children:
            set_payload(db_path, record["la_child_id"], without_first_item(record))
        assert execute_run(settings).outcomes["sent"] == len(children)

        with sqlite3.connect(backup) as copy, sqlite3.connect(db_path) as live:
            copy.backup(live)  # restored: the ledger says DfE holds the first night's records
        # The council's SQL then runs: half the children are as the copy has them, half changed again.
        for record in children[5:]:
            set_payload(db_path, record["la_child_id"], onwards(record, "3"))
        execute_run(settings)
        assert len(converged(sim, Staging.sqlite(db_path))) == len(children)  # every child wrong at DfE

        resent = execute_run(settings, resend_all=True)
        assert resent.outcomes["sent"] == len(children) and resent.resent_in_doubt == len(children)
        assert_settled(sim, Staging.sqlite(db_path), settings)


def test_a_batch_never_sent_still_has_its_notes_written(db_path) -> None:
    """The first batch fails for good while the second waits its turn: the second is never sent
    and leaves nothing in flight, but what was found reading its rows is still written."""
    children = list(make_children(10, seed=230))
    children[7]["child_details"]["sex"] = "not a sex"  # fails DfE's schema here: never sent
    insert(db_path, children)
    with Simulator(latency=0.3) as sim:
        sim.inject("503", times=10)
        settings = settings_for(sim, db_path, BATCH_SIZE="5", MAX_RETRIES="1")
        with pytest.raises(PipelineError) as stopped:
            execute_run(settings, sleep=no_wait)
        assert stopped.value.exit_code == ExitCode.API
        statuses = {row["person_id"]: row["submission_status"] for row in rows(db_path)}
        assert statuses[children[7]["la_child_id"]] == "Invalid"
        assert set(in_doubt(Staging.sqlite(db_path))) == {c["la_child_id"] for c in children[:5]}
        assert sim.snapshot() == {}


def test_a_batch_that_cannot_be_recorded_is_not_sent(staging: Staging) -> None:
    """The record goes first: when the in-flight table refuses it (here a trigger, as a full disk
    or a missing permission would), nothing reaches DfE and the run stops with exit 3."""
    children = list(make_children(10, seed=231))
    staging.insert(children)
    with staging.open() as db:
        table = StagingTable(db, staging.table)
        table.create_ledger()
        if staging.kind == "sqlite":
            refuse = (
                f"CREATE TRIGGER no_records BEFORE INSERT ON {table.in_flight} "
                "BEGIN SELECT RAISE(ABORT, 'no room for the record (test)'); END",
            )
        elif staging.kind == "mssql":
            refuse = (
                f"CREATE TRIGGER no_records ON {table.in_flight} INSTEAD OF INSERT AS "
                "THROW 50000, 'no room for the record (test)', 1",
            )
        else:
            refuse = (
                f"CREATE FUNCTION {staging.table}_no_records() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'no room for the record (test)'; END $$ LANGUAGE plpgsql",
                f"CREATE TRIGGER no_records BEFORE INSERT ON {table.in_flight} "
                f"FOR EACH ROW EXECUTE FUNCTION {staging.table}_no_records()",
            )
        with db.transaction():
            for statement in refuse:
                db.execute(statement)
    with Simulator() as sim:
        settings = settings_for(sim, staging)
        with pytest.raises(PipelineError) as stopped:
            execute_run(settings)
        assert stopped.value.exit_code == ExitCode.DATABASE
        assert "no room for the record" in str(stopped.value)
        assert children_posts(sim) == 0 and sim.snapshot() == {}
        assert {row["submission_status"] for row in staging.rows()} == {"Pending"}
        with staging.open() as db, db.transaction():
            if staging.kind in ("sqlite", "mssql"):
                db.execute("DROP TRIGGER no_records")
            else:
                db.execute(f"DROP TRIGGER no_records ON {table.in_flight}")
                db.execute(f"DROP FUNCTION {staging.table}_no_records()")
        execute_run(settings)
        assert_settled(sim, staging, settings)
