"""Shared fixtures: a real simulator on loopback and real SQLite staging tables."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_pipeline.cli import Context, main
from api_pipeline.config import Settings, load_settings
from api_pipeline.db import Database, StagingTable
from api_pipeline.demo import load_children
from api_pipeline.simulator import Simulator

TABLE = "ssd_api_data_staging"


@pytest.fixture
def simulator() -> Iterator[Simulator]:
    with Simulator() as sim:
        yield sim


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "staging.db"
    with Database.open_sqlite(path) as db:
        StagingTable(db, TABLE).create_staging_table()
    return path


def db_env(db_path: Path) -> dict[str, str]:
    return {"DB_CONNECTION_STRING": f"sqlite:///{db_path.as_posix()}", "TABLE_NAME": TABLE}


def settings_for(sim: Simulator, db_path: Path, **env: str) -> Settings:
    environ = dict(sim.settings_env()) | db_env(db_path) | {"MAX_RETRIES": "2", "HTTP_TIMEOUT": "10"} | env
    return load_settings(command="run", environ=environ)


def insert(db_path: Path, records: list[dict], *, status: str = "Pending", state: str = "New") -> None:
    with Database.open_sqlite(db_path) as db:
        load_children(db, TABLE, records)
        if status != "Pending" or state != "New":
            with db.transaction():
                db.execute(f"UPDATE {TABLE} SET submission_status = ?, row_state = ?", (status, state))


def rows(db_path: Path) -> list[dict]:
    with Database.open_sqlite(db_path) as db:
        cols = [
            "id",
            "person_id",
            "json_payload",
            "previous_json_payload",
            "submission_status",
            "submission_timestamp",
            "api_response",
            "row_state",
            "previous_hash",
            "partial_json_payload",
        ]
        return [dict(zip(cols, r)) for r in db.query(f"SELECT {', '.join(cols)} FROM {TABLE} ORDER BY id")]


def ledger(db_path: Path) -> dict[str, dict]:
    with Database.open_sqlite(db_path) as db:
        sql = f"SELECT la_child_id, record_json, receipt, purged FROM {TABLE}_ledger"
        return {
            r[0]: {"record": None if r[1] is None else json.loads(r[1]), "receipt": r[2], "purged": bool(r[3])}
            for r in db.query(sql)
        }


def set_payload(db_path: Path, la_child_id: str, record: dict, *, state: str = "Updated") -> None:
    """What the council's nightly SQL does on a material change."""
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute(
            f"UPDATE {TABLE} SET previous_json_payload = json_payload, json_payload = ?, "
            "submission_status = 'Pending', row_state = ? WHERE person_id = ?",
            (json.dumps(record, ensure_ascii=False), state, la_child_id),
        )


def mark_deleted(db_path: Path, la_child_id: str) -> None:
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute(f"UPDATE {TABLE} SET row_state = 'Deleted' WHERE person_id = ?", (la_child_id,))


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


def run_cli(argv: list[str], *, environ: dict[str, str] | None = None, cwd: Path) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(environ=environ or {}, cwd=cwd, out=out, err=err, executable_dir=cwd / "no-exe-dir")
    code = main(argv, context=ctx)
    return CliResult(code, out.getvalue(), err.getvalue())
