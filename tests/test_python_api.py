"""``from api_pipeline import run``: the Python API for notebooks (issue 28, part 4).

Each call is made in a fresh interpreter (``python -c``), as a notebook would make it, against the
real simulator on loopback and a real SQLite staging table: the counts, the exit code and the
files it returns; a second call that converges; a setting wrong as a result, not an exit; and what
the call must leave as it found it (``sys.argv``, never read; the signal handlers; the caller's
connection, open and usable; no secret in the result). A pyodbc connection is tried on
PostgreSQL through psqlODBC, in this process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from api_pipeline.rehearsal.demo import load_children
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from api_pipeline.store.staging import StagingTable
from conftest import TABLE, Staging, unique_table

CHILDREN = 12
PLANTED_SECRET = "planted-Secret-7Qx9-not-the-simulators"

# Run first in every fresh interpreter: sys.argv that fails the test if anything reads it, the
# caller's own signal handlers to be found again afterwards, and a report printed as JSON.
PRELUDE = textwrap.dedent(
    """
    import json, signal, sqlite3, sys
    from pathlib import Path

    class Tripwire(list):
        def _read(self, *args, **kwargs):
            raise AssertionError("sys.argv was read")
        __getitem__ = __iter__ = __len__ = __bool__ = __contains__ = __eq__ = _read

    argv = Tripwire()
    sys.argv = argv

    def callers_handler(signum, frame):
        pass

    watched = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    for signum in watched:
        signal.signal(signum, callers_handler)

    def described(result):
        return {
            "exit_code": result.exit_code, "meaning": result.meaning, "error": result.error,
            "counts": dict(result.counts), "rows_read": result.rows_read, "sent": result.sent,
            "summary_file": None if result.summary_file is None else str(result.summary_file),
            "log_file": None if result.log_file is None else str(result.log_file),
            "report_file": None if result.report_file is None else str(result.report_file),
            "repr": repr(result), "str": str(result),
        }

    def calling(**kwargs):
        from api_pipeline import run
        try:
            return described(run(**kwargs))
        except SystemExit as exc:
            return {"system_exit": repr(exc.code)}

    def left_as_found():
        return {
            "argv_same": sys.argv is argv,
            "handlers_same": all(signal.getsignal(s) is callers_handler for s in watched),
        }
    """
)


def in_a_fresh_interpreter(code: str, cwd: Path) -> dict[str, Any]:
    """Run PRELUDE + ``code`` in a new Python, with none of the settings in its environment; its
    last line of output is the JSON report, returned with its stderr under ``"stderr"``."""
    environ = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "SYSTEMROOT", "TMPDIR", "LANG")}
    environ["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    done = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    report["stderr"] = done.stderr
    return report


@pytest.fixture
def council(tmp_path: Path, simulator: Simulator) -> Path:
    """A council's folder: a SQLite staging table of synthetic children and a .env for the simulator."""
    with Database.open_sqlite(tmp_path / "staging.db") as db:
        StagingTable(db, TABLE).create_staging_table()
        load_children(db, TABLE, make_children(CHILDREN, seed=28))
    settings = simulator.settings_env() | {
        "DB_CONNECTION_STRING": "sqlite:///staging.db",
        "TABLE_NAME": TABLE,
        "MAX_RETRIES": "2",
        "HTTP_TIMEOUT": "10",
    }
    (tmp_path / ".env").write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
    return tmp_path


def test_run_with_an_env_file_sends_then_a_second_run_sends_nothing(council: Path, simulator: Simulator) -> None:
    report = in_a_fresh_interpreter(
        """
        first = calling(env_file=".env")
        second = calling(env_file=".env")
        print(json.dumps({"first": first, "second": second, **left_as_found()}))
        """,
        cwd=council,
    )
    first, second = report["first"], report["second"]
    assert first["exit_code"] == 0, first["error"]
    assert first["sent"] == CHILDREN and first["counts"]["sent"] == CHILDREN and first["rows_read"] == CHILDREN
    assert first["counts"]["invalid"] == first["counts"]["failed"] == first["counts"]["rejected"] == 0
    summary = json.loads(Path(first["summary_file"]).read_text())
    assert summary["outcomes"]["sent"] == CHILDREN and summary["exit_code"] == 0
    assert Path(first["log_file"]).parent == council / "logs" and Path(first["report_file"]).is_file()
    assert len(simulator.snapshot()) == CHILDREN
    # The second run finds nothing to send.
    assert second["exit_code"] == 0 and second["sent"] == 0, second
    assert second["summary_file"] != first["summary_file"]
    assert simulator.records_accepted == CHILDREN
    assert report["argv_same"] and report["handlers_same"]
    # Not a terminal: the log's lines are what shows under a notebook's cell.
    assert "started (partial mode)" in report["stderr"] and f"{CHILDREN} sent" in report["stderr"]


def test_run_with_a_sqlite_connection_leaves_it_open_and_as_it_was(council: Path, simulator: Simulator) -> None:
    settings = simulator.settings_env() | {"TABLE_NAME": TABLE, "MAX_RETRIES": "2", "LOG_DIR": "run-logs"}
    report = in_a_fresh_interpreter(
        f"""
        conn = sqlite3.connect("staging.db", check_same_thread=False)
        before = (conn.isolation_level, conn.text_factory is str)
        first = calling(env={settings!r}, connection=conn, http_timeout=10)
        second = calling(env={settings!r}, connection=conn)
        sent = conn.execute("SELECT COUNT(*) FROM {TABLE} WHERE submission_status = 'Sent'").fetchone()[0]
        conn.execute("CREATE TABLE mine (x INTEGER)")
        conn.execute("INSERT INTO mine VALUES (1)")
        conn.commit()
        after = (conn.isolation_level, conn.text_factory is str)
        print(json.dumps({{"first": first, "second": second, "sent": sent, "same": before == after,
                          "in_transaction": conn.in_transaction, **left_as_found()}}))
        conn.close()
        """,
        cwd=council,
    )
    first, second = report["first"], report["second"]
    assert first["exit_code"] == 0, first["error"]
    assert first["sent"] == CHILDREN and report["sent"] == CHILDREN
    assert Path(first["summary_file"]).parent == council / "run-logs"
    assert second["exit_code"] == 0 and second["sent"] == 0
    assert report["same"] and not report["in_transaction"]
    assert report["argv_same"] and report["handlers_same"]
    with sqlite3.connect(council / "staging.db") as check:
        assert check.execute("SELECT x FROM mine").fetchall() == [(1,)]  # the caller's own commit landed


def test_a_connection_tied_to_its_thread_is_refused_with_the_way_out(council: Path, simulator: Simulator) -> None:
    report = in_a_fresh_interpreter(
        f"""
        conn = sqlite3.connect("staging.db")
        result = calling(env={simulator.settings_env()!r}, connection=conn, TABLE_NAME="{TABLE}")
        usable = conn.execute("SELECT COUNT(*) FROM {TABLE}").fetchone()[0]
        print(json.dumps({{"result": result, "usable": usable, **left_as_found()}}))
        """,
        cwd=council,
    )
    result = report["result"]
    assert result["exit_code"] == 2 and "check_same_thread=False" in result["error"]
    assert result["summary_file"] is None and report["usable"] == CHILDREN
    assert report["argv_same"] and report["handlers_same"]
    assert simulator.records_accepted == 0


def test_a_setting_wrong_is_a_result_with_exit_code_2_not_an_exit(council: Path, simulator: Simulator) -> None:
    report = in_a_fresh_interpreter(
        """
        wrong_value = calling(env_file=".env", BATCH_SIZE="lots")
        misspelt = calling(env_file=".env", bach_size=50)
        no_file = calling(env_file="missing.env")
        print(json.dumps({"wrong_value": wrong_value, "misspelt": misspelt, "no_file": no_file, **left_as_found()}))
        """,
        cwd=council,
    )
    for name in ("wrong_value", "misspelt", "no_file"):
        assert "system_exit" not in report[name]
        assert report[name]["exit_code"] == 2 and report[name]["summary_file"] is None, report[name]
    assert "BATCH_SIZE" in report["wrong_value"]["error"]
    assert "bach_size is not a setting: did you mean BATCH_SIZE?" in report["misspelt"]["error"]
    assert "missing.env" in report["no_file"]["error"]
    assert report["argv_same"] and report["handlers_same"]
    assert simulator.records_accepted == 0


def test_no_secret_is_in_the_result(council: Path, simulator: Simulator) -> None:
    report = in_a_fresh_interpreter(
        f"""
        refused = calling(env_file=".env", CLIENT_SECRET="{PLANTED_SECRET}")
        sent = calling(env_file=".env")
        print(json.dumps({{"refused": refused, "sent": sent}}))
        """,
        cwd=council,
    )
    refused, sent = report["refused"], report["sent"]
    assert refused["exit_code"] == 4, refused  # the token was refused
    assert sent["exit_code"] == 0
    for result in (refused, sent):
        for secret in (PLANTED_SECRET, simulator.client_secret, simulator.supplier_key):
            assert secret not in result["repr"] and secret not in result["str"] and secret not in str(result["error"])
    assert PLANTED_SECRET not in report["stderr"] and simulator.client_secret not in report["stderr"]


def test_progress_true_draws_the_bar_where_no_terminal_is(council: Path) -> None:
    report = in_a_fresh_interpreter(
        """
        print(json.dumps({"result": calling(env_file=".env", progress=True)}))
        """,
        cwd=council,
    )
    assert report["result"]["exit_code"] == 0
    assert "sending: 100%" in report["stderr"] and f"{CHILDREN}/{CHILDREN} records" in report["stderr"]


def test_import_api_pipeline_does_no_work(tmp_path: Path) -> None:
    report = in_a_fresh_interpreter(
        """
        import api_pipeline
        loaded = sorted(name for name in sys.modules if name.startswith("api_pipeline"))
        run = api_pipeline.run
        try:
            api_pipeline.no_such_thing
            missing = "found"
        except AttributeError:
            missing = "AttributeError"
        print(json.dumps({"loaded": loaded, "run": run.__module__, "missing": missing}))
        """,
        cwd=tmp_path,
    )
    assert report["loaded"] == ["api_pipeline", "api_pipeline.about"]  # the package and its name and version
    assert report["run"] == "api_pipeline.library" and report["missing"] == "AttributeError"


def test_a_pyodbc_connection_to_postgresql_is_used_and_given_back(
    postgres_odbc: str, simulator: Simulator, tmp_path: Path
) -> None:
    import pyodbc

    from api_pipeline import run

    staging = Staging("postgresql", postgres_odbc, unique_table("api"))
    staging.create()
    try:
        staging.insert(list(make_children(CHILDREN, seed=29)))
        conn = pyodbc.connect(postgres_odbc, autocommit=True)
        try:
            settings = simulator.settings_env() | {"TABLE_NAME": staging.table, "LOG_DIR": str(tmp_path)}
            result = run(env=settings, connection=conn, MAX_RETRIES=2)
            assert result.exit_code == 0, result.error
            assert result.sent == CHILDREN and result.summary_file is not None
            assert "a connection given to the run" in result.log_file.read_text()
            assert conn.autocommit is True  # put back as it was given
            cursor = conn.cursor()
            cursor.execute(f"SELECT COUNT(*) FROM {staging.table} WHERE submission_status = 'Sent'")
            assert cursor.fetchone()[0] == CHILDREN
            again = run(env=settings, connection=conn)
            assert again.exit_code == 0 and again.sent == 0
        finally:
            conn.close()
    finally:
        staging.drop()


def test_interrupting_the_kernel_stops_the_run_as_ctrl_c_stops_the_command(council: Path) -> None:
    """A notebook's *Interrupt* is SIGINT: the batch in flight is written back, the result says 130,
    the run's files are written, and the caller's handler is back afterwards."""
    with Simulator(latency=0.3) as slow:
        env = (council / ".env").read_text()
        for name, value in slow.settings_env().items():
            env += f"{name}={value}\n"  # the later line wins in a .env file
        (council / ".env").write_text(env)
        report = in_a_fresh_interpreter(
            """
            import os, threading, time
            threading.Timer(1.0, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
            result = calling(env_file=".env", BATCH_SIZE=2)
            print(json.dumps({"result": result, **left_as_found()}))
            """,
            cwd=council,
        )
        accepted = slow.records_accepted
    result = report["result"]
    assert result["exit_code"] == 130 and result["error"].startswith("stopped by Ctrl+C"), result
    assert 0 < result["sent"] < CHILDREN and result["sent"] == accepted  # what DfE took was written back
    assert json.loads(Path(result["summary_file"]).read_text())["exit_code"] == 130
    assert report["argv_same"] and report["handlers_same"]


def test_check_raises_run_failed_for_a_failed_run_only(council: Path) -> None:
    report = in_a_fresh_interpreter(
        """
        from api_pipeline import RunFailed, run
        ok = run(env_file=".env")
        same = ok.check() is ok
        try:
            run(env_file=".env", BATCH_SIZE="lots").check()
            raised = None
        except RunFailed as exc:
            raised = [exc.exit_code, exc.result.exit_code, str(exc)]
        print(json.dumps({"same": same, "raised": raised}))
        """,
        cwd=council,
    )
    assert report["same"]
    assert report["raised"][:2] == [2, 2] and "exit code 2" in report["raised"][2]


def test_purge_orphans_from_python_purges_a_child_whose_row_was_deleted(council: Path, simulator: Simulator) -> None:
    """``run(purge_orphans=True)`` does what ``run --purge-orphans`` does, and the confirmation alone is refused."""
    report = in_a_fresh_interpreter(
        f"""
        first = calling(env_file=".env")
        conn = sqlite3.connect("staging.db")
        gone = conn.execute("SELECT person_id FROM {TABLE} ORDER BY id LIMIT 1").fetchone()[0]
        conn.execute("DELETE FROM {TABLE} WHERE person_id = ?", (gone,))
        conn.commit()
        conn.close()
        alone = calling(env_file=".env", purge_many_orphans=True)
        warned = calling(env_file=".env")
        purged = calling(env_file=".env", purge_orphans=True)
        print(json.dumps({{"gone": gone, "first": first, "alone": alone, "warned": warned, "purged": purged}}))
        """,
        cwd=council,
    )
    gone = report["gone"]
    assert report["first"]["exit_code"] == 0
    assert report["alone"]["exit_code"] == 2 and "purge_orphans" in report["alone"]["error"]
    warned = json.loads(Path(report["warned"]["summary_file"]).read_text())
    assert report["warned"]["exit_code"] == 0 and warned["orphans"] == 1 and warned["orphans_purged"] == 0
    assert report["purged"]["exit_code"] == 0, report["purged"]["error"]
    assert gone not in simulator.snapshot() and len(simulator.snapshot()) == CHILDREN - 1
    summary = json.loads(Path(report["purged"]["summary_file"]).read_text())
    assert summary["orphans_purged"] == 1
