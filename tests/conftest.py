"""Shared fixtures: a real simulator on loopback and real staging tables (SQLite, and PostgreSQL and
SQL Server (Babelfish) when available), and the helpers more than one test module uses.

Test modules import from here and from the helper modules beside it (fake_sql_server, earlier_tool,
simulator_client, hostile, file_keyring, credential_manager), never from one another
(test_test_modules.py checks)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from api_pipeline.cli.main import main
from api_pipeline.errors import PipelineError
from api_pipeline.rehearsal.demo import check_convergence, load_children
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.settings.config import Settings, load_settings
from api_pipeline.settings.context import Context
from api_pipeline.store.db import Database
from api_pipeline.store.ledger import LedgerEntry
from api_pipeline.store.staging import StagingTable
from api_pipeline.store.write_back import RowUpdate
from fake_sql_server import FakePyodbc, Recorder, reveal

TABLE = "ssd_api_data_staging"

# DfE's OpenAPI document and the staging SQL's sample rows, which the project does not ship.
REFERENCE_ENV = "CSC_REFERENCE_DIR"


def reference_dir() -> Path:
    """Where the reference files are: CSC_REFERENCE_DIR, else a ``shared/reference`` folder two levels up."""
    text = os.environ.get(REFERENCE_ENV, "").strip()
    return Path(text) if text else Path(__file__).resolve().parents[2] / "shared" / "reference"


def reference_missing(what: str) -> str:
    """A skip reason that says what to fetch and where to point the tests at it."""
    return (
        f"{what} not found in {reference_dir()}. To run this test, put DfE's OpenAPI document "
        "dfe-csc-openapi-1.0.1.json (github.com/DFE-Digital/children-in-social-care-schemas) and the "
        "staging SQL's sample rows as samples/*.json (record0_*.json to record4_*.json, from "
        f"github.com/data-to-insight/dfe-csc-api-data-flows) in one folder and set {REFERENCE_ENV} to it"
    )


@pytest.fixture(autouse=True)
def _restore_log_propagation() -> Iterator[None]:
    """The CLI's logging setup stops the package logger propagating; later tests' caplog needs it back."""
    logger = logging.getLogger("api_pipeline")
    before = logger.propagate
    yield
    logger.propagate = before


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


# ---------------------------------------------------------------------------
# Staging tables on each database: SQLite always, PostgreSQL through pyodbc and psqlODBC
# when CSC_TEST_POSTGRES_ODBC names one (.ci/postgres.sh sets it up), and SQL Server's
# dialect through pyodbc and FreeTDS when CSC_TEST_SQLSERVER_ODBC names one: in CI,
# Babelfish for PostgreSQL, a T-SQL engine that speaks SQL Server's protocol
# (.ci/babelfish.sh builds and starts it; tests/test_babelfish.py says where it is not SQL Server).
# ---------------------------------------------------------------------------

POSTGRES_ENV = "CSC_TEST_POSTGRES_ODBC"
SQLSERVER_ENV = "CSC_TEST_SQLSERVER_ODBC"
# Every database a staging table can be on. Babelfish is slow to open a session and to read
# its catalogue (a run there takes about ten times as long as on PostgreSQL), so the `staging`
# fixture runs on it only in the modules that ask for it (`staging_on_every_database`), or in
# every module when CSC_TEST_SQLSERVER_EVERYWHERE is set (about five minutes more).
ALL_DATABASES = ["sqlite", "postgresql", "mssql"]
DATABASES = ALL_DATABASES if os.environ.get("CSC_TEST_SQLSERVER_EVERYWHERE") else ["sqlite", "postgresql"]


class Staging:
    """One test's staging table, and the council-SQL stand-ins the tests use on it."""

    def __init__(self, kind: str, connection_string: str, table: str = TABLE) -> None:
        self.kind = kind
        self.connection_string = connection_string
        self.table = table

    @classmethod
    def sqlite(cls, path: Path) -> Staging:
        return cls("sqlite", f"sqlite:///{path.as_posix()}")

    @property
    def env(self) -> dict[str, str]:
        return {"DB_CONNECTION_STRING": self.connection_string, "TABLE_NAME": self.table}

    def open(self) -> Database:
        return Database.connect(self.connection_string)

    def create(self) -> None:
        with self.open() as db:
            StagingTable(db, self.table).create_staging_table()

    def drop(self) -> None:
        """Drop the table and everything the tool made beside it (SQLite files go with tmp_path)."""
        if self.kind == "sqlite":
            return
        with self.open() as db, db.transaction():
            for suffix in ("", "_ledger", "_in_flight", "_in_doubt", "_run_lock"):
                db.execute(f"DROP TABLE IF EXISTS {self.table}{suffix}")

    def insert(self, records: list[dict], *, status: str = "Pending", state: str = "New") -> None:
        with self.open() as db:
            load_children(db, self.table, records)
            if status != "Pending" or state != "New":
                with db.transaction():
                    db.execute(f"UPDATE {self.table} SET submission_status = ?, row_state = ?", (status, state))

    def rows(self) -> list[dict]:
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
        with self.open() as db:
            found = [dict(zip(cols, r)) for r in db.query(f"SELECT {', '.join(cols)} FROM {self.table} ORDER BY id")]
        for row in found:  # BYTEA comes back as bytes or bytearray depending on the driver
            if row["previous_hash"] is not None:
                row["previous_hash"] = bytes(row["previous_hash"])
        return found

    def ledger(self) -> dict[str, dict]:
        with self.open() as db:
            sql = f"SELECT la_child_id, record_json, receipt, purged FROM {self.table}_ledger"
            return {
                r[0]: {"record": None if r[1] is None else json.loads(r[1]), "receipt": r[2], "purged": bool(r[3])}
                for r in db.query(sql)
            }

    def set_payload(self, la_child_id: str, record: dict, *, state: str = "Updated") -> None:
        """What the council's nightly SQL does on a material change."""
        with self.open() as db, db.transaction():
            db.execute(
                f"UPDATE {self.table} SET previous_json_payload = json_payload, json_payload = ?, "
                "submission_status = 'Pending', row_state = ? WHERE person_id = ?",
                (json.dumps(record, ensure_ascii=False), state, la_child_id),
            )

    def mark_deleted(self, la_child_id: str) -> None:
        with self.open() as db, db.transaction():
            db.execute(f"UPDATE {self.table} SET row_state = 'Deleted' WHERE person_id = ?", (la_child_id,))


def as_staging(target: Path | Staging) -> Staging:
    """The helpers below take a SQLite file (``db_path``) or a :class:`Staging`."""
    return target if isinstance(target, Staging) else Staging.sqlite(target)


def unique_table(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def server_odbc(name: str, setting: str, required: str, missing: str) -> str:
    """The ODBC string of the test server ``setting`` names, once it has answered; skips (or, with
    ``required`` set, fails) without one, saying why: ``missing`` when it is not set."""
    text = os.environ.get(setting, "").strip()
    problem = None
    if not text:
        problem = missing
    else:
        try:
            with Database.connect(text) as db:
                db.answers()
        except PipelineError as exc:
            problem = f"{name} from {setting} is not usable: {str(exc).splitlines()[0]}"
    if problem:
        if os.environ.get(required):
            pytest.fail(problem)
        pytest.skip(problem)
    return text


@pytest.fixture(scope="session")
def postgres_odbc() -> str:
    """The test server's ODBC string; skips (or, with CSC_TEST_POSTGRES_REQUIRED set, fails) without one."""
    return server_odbc(
        "PostgreSQL",
        POSTGRES_ENV,
        "CSC_TEST_POSTGRES_REQUIRED",
        f"PostgreSQL tests need {POSTGRES_ENV}, an ODBC connection string to a PostgreSQL test database "
        "(needs PostgreSQL, unixODBC and psqlODBC; as root, 'source .ci/postgres.sh' sets up all three)",
    )


@pytest.fixture(scope="session")
def sqlserver_odbc() -> str:
    """The T-SQL test server's ODBC string (Babelfish through FreeTDS in CI); skips (or, with
    CSC_TEST_SQLSERVER_REQUIRED set, fails) without one, saying why."""
    return server_odbc(
        "SQL Server",
        SQLSERVER_ENV,
        "CSC_TEST_SQLSERVER_REQUIRED",
        os.environ.get("CSC_TEST_SQLSERVER_SKIP_REASON", "").strip()
        or (
            f"SQL Server tests need {SQLSERVER_ENV}, an ODBC connection string to a SQL Server (or Babelfish) "
            "test database; as root, 'source .ci/babelfish.sh' builds Babelfish from ../shared/babelfish, "
            "starts it and sets it"
        ),
    )


@pytest.fixture
def sqlserver_table(sqlserver_odbc: str) -> Iterator[Staging]:
    """A fresh, uniquely named staging table on the T-SQL test server, dropped afterwards."""
    staging = Staging("mssql", sqlserver_odbc, unique_table("ms"))
    staging.create()
    try:
        yield staging
    finally:
        staging.drop()


@pytest.fixture
def postgres_table(postgres_odbc: str) -> Iterator[Staging]:
    """A fresh, uniquely named staging table on the PostgreSQL test server, dropped afterwards."""
    staging = Staging("postgresql", postgres_odbc, unique_table("pg"))
    staging.create()
    try:
        yield staging
    finally:
        staging.drop()


def make_staging(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Staging]:
    """A fresh staging table on the database ``request.param`` names, dropped afterwards."""
    if request.param == "sqlite":
        target = Staging.sqlite(tmp_path / "staging.db")
    elif request.param == "postgresql":
        target = Staging("postgresql", request.getfixturevalue("postgres_odbc"), unique_table("e2e"))
    else:
        target = Staging("mssql", request.getfixturevalue("sqlserver_odbc"), unique_table("e2e"))
    target.create()
    try:
        yield target
    finally:
        target.drop()


@pytest.fixture(params=DATABASES)
def staging(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Staging]:
    """The same test on SQLite and on PostgreSQL through pyodbc (and SQL Server's dialect, see
    :data:`DATABASES`): a fresh staging table on each."""
    yield from make_staging(request, tmp_path)


def staging_on_every_database() -> Any:
    """A module's own `staging` fixture that runs on SQL Server's dialect (Babelfish) too:
    ``staging = staging_on_every_database()`` at the top of a test module."""

    @pytest.fixture(params=ALL_DATABASES, name="staging")
    def every(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Staging]:
        yield from make_staging(request, tmp_path)

    return every


def db_env(target: Path | Staging) -> dict[str, str]:
    return as_staging(target).env


def settings_for(sim: Simulator, target: Path | Staging, **env: str) -> Settings:
    environ = dict(sim.settings_env()) | db_env(target) | {"MAX_RETRIES": "2", "HTTP_TIMEOUT": "10"} | env
    return load_settings(command="run", environ=environ)


def insert(target: Path | Staging, records: list[dict], *, status: str = "Pending", state: str = "New") -> None:
    as_staging(target).insert(records, status=status, state=state)


def rows(target: Path | Staging) -> list[dict]:
    return as_staging(target).rows()


def ledger(target: Path | Staging) -> dict[str, dict]:
    return as_staging(target).ledger()


def set_payload(target: Path | Staging, la_child_id: str, record: dict, *, state: str = "Updated") -> None:
    """What the council's nightly SQL does on a material change."""
    as_staging(target).set_payload(la_child_id, record, state=state)


def mark_deleted(target: Path | Staging, la_child_id: str) -> None:
    as_staging(target).mark_deleted(la_child_id)


class CliResult:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


def run_cli(argv: list[str], *, environ: dict[str, str] | None = None, cwd: Path) -> CliResult:
    out, err = io.StringIO(), io.StringIO()
    ctx = Context(environ=environ or {}, cwd=cwd, out=out, err=err, executable_dir=cwd / "no-exe-dir")
    code = main(argv, context=ctx)
    return CliResult(code, out.getvalue(), err.getvalue())


def canonical_json(record: dict) -> str:
    """Normalised, key-sorted, list-sorted compact JSON: equal data gives equal text (what
    ``payload.records_equal`` compares by), for assertions and their messages."""
    from api_pipeline.dfe.payload import _canon, normalise

    return _canon(normalise(record))


def record_hash(record: dict) -> bytes:
    """SHA-256 of :func:`canonical_json` (surrogatepass: a lone surrogate must hash, not crash)."""
    import hashlib

    return hashlib.sha256(canonical_json(record).encode("utf-8", "surrogatepass")).digest()


def encoded(records: Iterable[dict]) -> list[bytes]:
    """Records as the API client sends them (``ApiClient.send`` takes encoded records)."""
    from api_pipeline.dfe.json_text import encode_record

    return [encode_record(record) for record in records]


@contextlib.contextmanager
def aborted(kind: type[BaseException], match: str | None = None) -> Iterator[Any]:
    """``pytest.raises`` for an error that stops a batch: ``ApiClient.send`` raises it as
    ``BatchAborted`` (with the outcomes settled before it), whose message and exit code are its own."""
    from api_pipeline.errors import BatchAborted

    with pytest.raises(BatchAborted, match=match) as caught:
        yield caught
    assert isinstance(caught.value.error, kind), caught.value.error


def ctx() -> Context:
    """A command's context that writes to memory, for calling a command's work directly."""
    return Context(environ={}, cwd=Path.cwd(), out=io.StringIO(), err=io.StringIO(), executable_dir=Path.cwd())


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    """Every Database.connect in this test goes to the recording SQL Server stand-in (fake_sql_server)."""
    rec = Recorder()
    fake = FakePyodbc(rec)
    monkeypatch.setattr(Database, "connect", classmethod(lambda cls, cs: cls.open_odbc(reveal(cs), odbc=fake)))
    return rec


def sent_records(sim: Simulator) -> list[dict]:
    """Every record the simulator accepted, in the order it was sent."""
    return [
        r for e in sim.request_log() if e.path.endswith("/children") and e.status == 200 for r in json.loads(e.body)
    ]


def converged(staging: Staging, sim: Simulator) -> None:
    """DfE (the simulator) holds exactly what the table holds."""
    with staging.open() as db:
        result = check_convergence(db, staging.table, sim.snapshot())
    assert result.ok, f"{len(result.mismatched)} children differ at DfE, e.g. {result.mismatched[:5]}"


def acknowledged(staging: Staging) -> tuple[list[RowUpdate], list[LedgerEntry]]:
    """What write-back gets after DfE acknowledged every row of the table."""
    now = datetime(2026, 3, 1, 21, 4, 33)
    updates, ledger = [], []
    for row in staging.rows():
        digest = hashlib.sha256(row["json_payload"].encode()).digest()
        updates.append(
            RowUpdate(
                row["id"],
                "Sent",
                "receipt.json",
                row["json_payload"],
                now,
                mark_sent=True,
                previous_hash=digest,
                row_state="Unchanged",
            )
        )
        ledger.append(
            LedgerEntry(row["person_id"], None, row["id"], row["json_payload"], digest, "receipt.json", now, False)
        )
    return updates, ledger


def end_session(staging: Staging, db: Database) -> None:
    """The server ends ``db``'s session, as a restart or ``pg_terminate_backend`` by a DBA does (PostgreSQL)."""
    backend = db.scalar("SELECT pg_backend_pid()")
    with staging.open() as admin:
        assert str(admin.scalar("SELECT pg_terminate_backend(?, 5000)", (backend,))) in ("True", "1")


# Made-up personal details the leak tests put in records and then look for in everything the tool wrote.
MARKER = {
    "first_name": "Leakcheck",
    "surname": "Leaksurname",
    "date_of_birth": "2013-07-19",
    "postcode": "LK9 9ZZ",
    "unique_pupil_number": "LEAKUPN000001",
}
