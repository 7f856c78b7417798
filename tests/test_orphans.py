"""Children the table lost (issue 28, part 3): the ledger says DfE holds them, and no row produces them.

A row deleted outright (rather than marked deleted) or re-keyed (its person_id and la_child_id
changed) leaves its child at DfE for good. ``status`` names them; a plain ``run`` warns and
sends nothing for them; ``run --purge-orphans`` purges them, shown first by ``--dry-run``, and
refuses what looks like a table emptied by mistake unless confirmed. Against the real simulator
over loopback, on SQLite and PostgreSQL, through the command line.
"""

from __future__ import annotations

import json
from pathlib import Path

from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.staging import StagingTable
from conftest import MARKER, Staging, run_cli, staging_on_every_database

# On SQL Server's dialect too (Babelfish in CI): the orphan queries compare ids by a binary collation.
staging = staging_on_every_database()

CHILDREN = 8


def environ(sim: Simulator, staging: Staging, tmp_path: Path) -> dict[str, str]:
    return (
        dict(sim.settings_env())
        | staging.env
        | {"MAX_RETRIES": "1", "HTTP_TIMEOUT": "5", "LOG_DIR": str(tmp_path / "logs"), "BATCH_SIZE": "3"}
    )


def children_posts(sim: Simulator) -> list[dict]:
    """Every record the simulator was sent since its log was last cleared."""
    return [r for e in sim.request_log() if e.path.endswith("/children") for r in json.loads(e.body)]


def delete_outright(staging: Staging, person_id: str) -> None:
    """The council's SQL drops the row instead of marking it deleted."""
    with staging.open() as db, db.transaction():
        db.execute(f"DELETE FROM {staging.table} WHERE person_id = ?", (person_id,))


def re_key(staging: Staging, old: str, new: str) -> None:
    """The council's SQL gives the child a new id: its row's person_id and its record's la_child_id."""
    with staging.open() as db, db.transaction():
        (payload,) = next(iter(db.query(f"SELECT json_payload FROM {staging.table} WHERE person_id = ?", (old,))))
        record = json.loads(payload) | {"la_child_id": new}
        db.execute(
            f"UPDATE {staging.table} SET person_id = ?, json_payload = ?, submission_status = 'Pending', "
            "row_state = 'Updated' WHERE person_id = ?",
            (new, json.dumps(record), old),
        )


def last_log(tmp_path: Path) -> str:
    """The newest run's log file (run ids sort by their start time)."""
    return sorted((tmp_path / "logs").glob("*.log"))[-1].read_text(encoding="utf-8")


def status_json(env: dict[str, str], tmp_path: Path) -> dict:
    result = run_cli(["status", "--json"], environ=env, cwd=tmp_path)
    assert result.code == 0, result.err
    return json.loads(result.out)


def sent_children(count: int, **details: str) -> list[dict]:
    children = list(make_children(count))
    for child in children:
        child["child_details"].update(details)
    return children


def test_orphans_are_shown_warned_of_and_purged_only_when_asked(staging, simulator, tmp_path):
    env = environ(simulator, staging, tmp_path)
    staging.insert(sent_children(CHILDREN, **{k: MARKER[k] for k in ("first_name", "surname")}))
    first = run_cli(["run"], environ=env, cwd=tmp_path)
    assert first.code == 0, first.err
    assert len(simulator.snapshot()) == CHILDREN
    assert status_json(env, tmp_path)["ledger"]["orphans"] == {"count": 0, "examples": []}

    delete_outright(staging, "C0000003")
    re_key(staging, "C0000005", "C9000005")

    # status names them, with ids only.
    shown = status_json(env, tmp_path)["ledger"]["orphans"]
    assert shown == {"count": 2, "examples": ["C0000003", "C0000005"]}
    text = run_cli(["status"], environ=env, cwd=tmp_path)
    assert "Orphans: 2 children the ledger says DfE holds with no row left" in text.out
    assert "C0000003, C0000005." in text.out and "--purge-orphans" in text.out
    assert MARKER["first_name"] not in text.out + json.dumps(shown)

    # A plain run sends the re-keyed child under its new id, and only warns of the orphans.
    simulator.clear_log()
    plain = run_cli(["run"], environ=env, cwd=tmp_path)
    assert plain.code == 0, plain.err
    assert [r["la_child_id"] for r in children_posts(simulator)] == ["C9000005"]
    log = last_log(tmp_path)
    assert "2 children the ledger says DfE holds have no row left in the staging table" in log
    assert "C0000003, C0000005. DfE keeps them until purged: run with --purge-orphans" in log
    assert "orphans (the ledger says DfE holds them, no row left): 2, not purged" in log
    assert MARKER["first_name"] not in log
    held = simulator.snapshot()
    assert {"C0000003", "C0000005", "C9000005"} <= set(held)

    # --dry-run shows the purges, and sends nothing.
    simulator.clear_log()
    review = tmp_path / "review"
    dry = run_cli(["run", "--purge-orphans", "--dry-run", str(review)], environ=env, cwd=tmp_path)
    assert dry.code == 0, dry.err
    assert children_posts(simulator) == []
    (batch,) = review.glob("batch_*orphans*.json")
    assert json.loads(batch.read_text()) == [
        {"la_child_id": "C0000003", "mis_child_id": "MIS-0000003", "purge": True},  # as a deleted row's purge
        {"la_child_id": "C0000005", "mis_child_id": "MIS-0000005", "purge": True},
    ]
    assert set(simulator.snapshot()) == set(held)
    assert status_json(env, tmp_path)["ledger"]["orphans"]["count"] == 2

    # --purge-orphans purges them at DfE, and the ledger agrees.
    simulator.clear_log()
    purged = run_cli(["run", "--purge-orphans"], environ=env, cwd=tmp_path)
    assert purged.code == 0, purged.err
    assert sorted(r["la_child_id"] for r in children_posts(simulator)) == ["C0000003", "C0000005"]
    now = simulator.snapshot()
    live = {f"C{n:07d}" for n in range(1, CHILDREN + 1)} - {"C0000003", "C0000005"} | {"C9000005"}
    assert set(now) == live  # the re-keyed child: DfE holds its new id only
    ledger = staging.ledger()
    assert ledger["C0000003"]["purged"] and ledger["C0000005"]["purged"]
    assert not ledger["C9000005"]["purged"]
    assert status_json(env, tmp_path)["ledger"]["orphans"] == {"count": 0, "examples": []}
    assert all(row["person_id"] != "C0000003" for row in staging.rows())  # no row was written for them

    # The next run sends nothing.
    simulator.clear_log()
    again = run_cli(["run", "--purge-orphans"], environ=env, cwd=tmp_path)
    assert again.code == 0, again.err
    assert children_posts(simulator) == []


def test_a_deleted_row_marked_deleted_is_no_orphan(staging, simulator, tmp_path):
    """A row kept and marked deleted is purged the usual way; no row that still names a child is an orphan,
    nor one whose person_id is empty while its record names the child."""
    env = environ(simulator, staging, tmp_path)
    staging.insert(list(make_children(3)))
    assert run_cli(["run"], environ=env, cwd=tmp_path).code == 0
    staging.mark_deleted("C0000001")
    with staging.open() as db, db.transaction():
        db.execute(f"UPDATE {staging.table} SET person_id = NULL WHERE person_id = ?", ("C0000002",))
    assert status_json(env, tmp_path)["ledger"]["orphans"]["count"] == 0
    result = run_cli(["run", "--purge-orphans"], environ=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert set(simulator.snapshot()) == {"C0000002", "C0000003"}


def test_purge_orphans_refuses_a_table_emptied_by_mistake_unless_confirmed(staging, simulator, tmp_path):
    env = environ(simulator, staging, tmp_path) | {"BATCH_SIZE": "100"}
    staging.insert(list(make_children(30)))
    assert run_cli(["run"], environ=env, cwd=tmp_path).code == 0
    with staging.open() as db, db.transaction():
        db.execute(f"DELETE FROM {staging.table}")  # a truncate by mistake
    simulator.clear_log()
    refused = run_cli(["run", "--purge-orphans"], environ=env, cwd=tmp_path)
    assert refused.code == 2
    assert "30 of the 30 children the ledger says DfE holds have no row" in refused.err
    assert "No orphan was purged" in refused.err and "--purge-many-orphans" in refused.err
    assert children_posts(simulator) == [] and len(simulator.snapshot()) == 30
    alone = run_cli(["run", "--purge-many-orphans"], environ=env, cwd=tmp_path)
    assert alone.code == 2 and "give both" in alone.err
    confirmed = run_cli(["run", "--purge-orphans", "--purge-many-orphans"], environ=env, cwd=tmp_path)
    assert confirmed.code == 0, confirmed.err
    assert simulator.snapshot() == {}


def test_a_purge_whose_answer_is_lost_is_in_doubt_and_converges_next_run(staging, simulator, tmp_path):
    """DfE takes the orphans' purge batch, and its answer never arrives: the children stay orphans,
    in doubt, and the next run with --purge-orphans purges them again and settles the ledger."""
    env = environ(simulator, staging, tmp_path)
    staging.insert(list(make_children(4)))
    assert run_cli(["run"], environ=env, cwd=tmp_path).code == 0
    delete_outright(staging, "C0000002")
    simulator.inject("lost_answer")
    simulator.inject("500", times=10)
    lost = run_cli(["run", "--purge-orphans"], environ=env, cwd=tmp_path)
    assert lost.code != 0
    assert "C0000002" not in simulator.snapshot()  # DfE did purge it
    assert not staging.ledger()["C0000002"]["purged"]  # but the table never learnt so
    with staging.open() as db:
        table = StagingTable(db, staging.table)
        doubt = {row[0] for row in db.query(f"SELECT la_child_id FROM {table.in_doubt}")}
        doubt |= {c.la_child_id for batch in table.left_in_flight() for c in batch.children}
    assert doubt == {"C0000002"}
    assert status_json(env, tmp_path)["ledger"]["orphans"] == {"count": 1, "examples": ["C0000002"]}

    simulator.clear_faults()
    simulator.clear_log()
    settled = run_cli(["run", "--purge-orphans"], environ=env, cwd=tmp_path)
    assert settled.code == 0, settled.err
    assert [r["la_child_id"] for r in children_posts(simulator)] == ["C0000002"]
    assert staging.ledger()["C0000002"]["purged"]
    with staging.open() as db:
        assert db.scalar(f"SELECT COUNT(*) FROM {StagingTable(db, staging.table).in_doubt}") == 0
    assert status_json(env, tmp_path)["ledger"]["orphans"]["count"] == 0
    simulator.clear_log()
    assert run_cli(["run", "--purge-orphans"], environ=env, cwd=tmp_path).code == 0
    assert children_posts(simulator) == []


def test_the_guard_docs_give_is_the_guard_the_code_keeps():
    from api_pipeline.job.orphans import MASS_FLOOR, MASS_SHARE, too_many

    text = " ".join((Path(__file__).parent.parent / "docs" / "how-it-works.md").read_text(encoding="utf-8").split())
    assert f"more than {MASS_SHARE:.0%} of the children the ledger says DfE holds (and more than {MASS_FLOOR})" in text
    assert not too_many(MASS_FLOOR, 0) and too_many(MASS_FLOOR + 1, 0)
    assert not too_many(MASS_FLOOR + 1, (MASS_FLOOR + 1) * 10) and too_many(MASS_FLOOR + 2, (MASS_FLOOR + 1) * 10)
