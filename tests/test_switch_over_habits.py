"""Switching over from the earlier tool is boring (issue 14, items 2 and 3).

A council's scheduled task runs plain ``csc_api_pipeline.exe`` (or ``python -m api_pipeline``)
with no command; its ``.env`` (or ``env.txt``) is the earlier tool's, with ``DEBUG``,
``USER_SERVER``/``USER_DATABASE``, quoted values and inline comments; its sender took
``DB_USER``/``DB_PASSWORD`` and ``-Phase deltas``. All of it keeps working.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api_pipeline.cli.console import Launch, _family, is_quiet, launch_facts, should_wait, wait_if_double_clicked
from api_pipeline.rehearsal.synthetic import make_children
from conftest import db_env, insert, run_cli
from earlier_tool import earlier_env_example

REPO = Path(__file__).resolve().parents[1]


def python_m(args: list[str], cwd: Path, **extra_env: str) -> subprocess.CompletedProcess:
    """``python -m api_pipeline ...`` in ``cwd`` with none of the tool's settings in the environment."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSC_", "DB_", "SQL_", "API_", "LA_"))}
    environ.update(extra_env)
    return subprocess.run(
        [sys.executable, "-m", "api_pipeline", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------------------
# 14.2: the seed's invocations work unchanged
# ---------------------------------------------------------------------------


def test_plain_python_m_api_pipeline_in_a_folder_with_a_env_sends_the_pending_rows(simulator, tmp_path):
    (tmp_path / ".env").write_text(
        "".join(f"{k}={v}\n" for k, v in simulator.settings_env().items())
        + "DB_CONNECTION_STRING=sqlite:///staging.db\n",
        encoding="utf-8",
    )
    assert run_cli(["init-db"], cwd=tmp_path).code == 0
    insert(tmp_path / "staging.db", list(make_children(7, seed=1)))
    result = python_m([], tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(simulator.snapshot()) == 7
    assert "error:" not in result.stderr  # the note is an INFO line, in the log too
    (log_file,) = (tmp_path / "logs").glob("*.log")
    assert "no command was given: running 'run', as the earlier tool did" in log_file.read_text(encoding="utf-8")


def test_help_still_prints_help(tmp_path):
    result = python_m(["--help"], tmp_path)
    assert result.returncode == 0 and result.stdout.startswith("usage: ") and "exit codes:" in result.stdout
    assert not (tmp_path / "logs").exists()


def test_no_command_with_global_options_means_run_with_them(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(2, seed=2)))
    environ = dict(simulator.settings_env()) | db_env(db_path)
    result = run_cli(["--log-dir", str(tmp_path / "elsewhere"), "-v"], environ=environ, cwd=tmp_path)
    assert result.code == 0, result.err
    assert list((tmp_path / "elsewhere").glob("*.summary.json")) and len(simulator.snapshot()) == 2


# The double-click wait: a pure decision on the facts, and glue that fails safe.

DOUBLE_CLICK = Launch(
    frozen_on_windows=True, console_to_itself=True, stdin_is_console=True, launcher="explorer.exe", quiet=False
)


def test_a_double_click_in_explorer_waits_for_enter():
    assert should_wait(DOUBLE_CLICK)
    assert should_wait(Launch(**{**DOUBLE_CLICK.__dict__, "launcher": "EXPLORER.EXE"}))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"launcher": "svchost.exe"}, "Task Scheduler (its service starts the task)"),
        ({"launcher": "taskeng.exe"}, "Task Scheduler on older Windows"),
        ({"launcher": "cmd.exe", "console_to_itself": False}, "typed in a Command Prompt"),
        ({"launcher": "powershell.exe", "console_to_itself": False}, "typed in PowerShell"),
        ({"launcher": "explorer.exe", "console_to_itself": False}, "a console shared with another program"),
        ({"stdin_is_console": False}, "input from a file, a pipe or NUL (wine's smoke test)"),
        ({"frozen_on_windows": False}, "python -m api_pipeline, or not Windows"),
        ({"quiet": True}, "-q, --quiet or --json"),
        ({"launcher": ""}, "the parent has gone, or could not be read"),
        ({"launcher": "start.exe"}, "wine's start.exe"),
    ],
)
def test_anything_but_a_double_click_never_waits(change, why):
    assert not should_wait(Launch(**{**DOUBLE_CLICK.__dict__, **change})), why


def test_the_one_file_exes_own_parent_is_skipped_when_looking_for_explorer():
    processes = {
        4000: (3000, "csc_api_pipeline.exe"),  # Python, in the one-file exe's child
        3000: (1000, "csc_api_pipeline.exe"),  # the one-file bootloader
        1000: (900, "explorer.exe"),
        900: (4, "userinit.exe"),
    }
    assert _family(4000, "csc_api_pipeline.exe", processes) == ({4000, 3000}, "explorer.exe")
    scheduled = {4000: (3000, "csc_api_pipeline.exe"), 3000: (700, "svchost.exe"), 700: (600, "services.exe")}
    assert _family(4000, "csc_api_pipeline.exe", scheduled) == ({4000}, "svchost.exe")
    assert _family(4000, "csc_api_pipeline.exe", {4000: (3000, "csc_api_pipeline.exe")})[1] == ""  # parent gone
    looped = {4000: (3000, "csc_api_pipeline.exe"), 3000: (4000, "csc_api_pipeline.exe")}
    assert _family(4000, "csc_api_pipeline.exe", looped)[1] == ""  # reused ids: no answer, no wait


@pytest.mark.parametrize(
    ("argv", "quiet"),
    [
        ([], False),
        (["run"], False),
        (["-q"], True),
        (["run", "--quiet"], True),
        (["-vq"], True),
        (["status", "--json"], True),
    ],
)
def test_quiet_is_read_from_the_command_line(argv, quiet):
    assert is_quiet(argv) is quiet


def test_here_the_facts_never_say_wait(monkeypatch):
    assert launch_facts([]) == Launch()  # not frozen: python, pytest
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert not should_wait(launch_facts([]))  # frozen, but not Windows


def test_waiting_prints_the_prompt_and_reads_a_line_and_never_raises(capsys):
    lines: list[str] = []
    assert wait_if_double_clicked([], facts=lambda argv: DOUBLE_CLICK, read=lambda: lines.append("read"))
    assert lines == ["read"] and "Press Enter to close this window." in capsys.readouterr().out

    def closed() -> str:
        raise EOFError

    assert wait_if_double_clicked([], facts=lambda argv: DOUBLE_CLICK, read=closed)

    def broken(argv):
        raise OSError("no snapshot")

    assert not wait_if_double_clicked([], facts=broken, read=lambda: pytest.fail("must not wait"))
    assert not wait_if_double_clicked([], read=lambda: pytest.fail("must not wait"))  # the real facts, here


def test_the_exe_smoke_test_under_wine_cannot_trigger_the_wait():
    """Every run of the exe in packaging/smoke_test_exe.sh has stdin from /dev/null or a pipe: never a console."""
    script = (REPO / "packaging" / "smoke_test_exe.sh").read_text(encoding="utf-8")
    assert script.count('"$RUN_EXE"') == 3  # no other way in: run_exe_raw's two, and the killed simulator
    (killed,) = [line for line in script.splitlines() if '"$RUN_EXE" simulate-api' in line]
    assert "</dev/null" in killed
    calls = [line.strip() for line in script.splitlines() if "run_exe_raw " in line and "()" not in line]
    assert len(calls) == 2
    assert all(
        "</dev/null" in line or line.startswith("OUT=$(printf '%s' \"$STDIN_TEXT\" | run_exe_raw") for line in calls
    )


def test_the_exe_waits_only_through_its_launcher():
    launcher = (REPO / "api_pipeline" / "cli" / "entry_point.py").read_text(encoding="utf-8")
    assert "wait_if_double_clicked(sys.argv[1:])" in launcher
    main = (REPO / "api_pipeline" / "__main__.py").read_text(encoding="utf-8")
    assert "wait_if_double_clicked" not in main


# ---------------------------------------------------------------------------
# 14.3: the seed's and the earlier tool's settings work
# ---------------------------------------------------------------------------


def test_debug_true_gives_what_v_gives_on_the_console_and_in_the_log(simulator, db_path, tmp_path, capfd):
    insert(db_path, list(make_children(2, seed=3)))
    environ = dict(simulator.settings_env()) | db_env(db_path)
    quiet_logs, debug_logs, v_logs = tmp_path / "plain", tmp_path / "debug", tmp_path / "v"
    assert run_cli(["run", "--log-dir", str(quiet_logs)], environ=environ, cwd=tmp_path).code == 0
    plain_console = capfd.readouterr().err
    insert(db_path, [dict(c, la_child_id=f"D{n}") for n, c in enumerate(make_children(2, seed=4))])
    debug_env = environ | {"DEBUG": "true"}
    assert run_cli(["run", "--log-dir", str(debug_logs)], environ=debug_env, cwd=tmp_path).code == 0
    debug_console = capfd.readouterr().err
    insert(db_path, [dict(c, la_child_id=f"V{n}") for n, c in enumerate(make_children(2, seed=5))])
    assert run_cli(["run", "-v", "--log-dir", str(v_logs)], environ=environ, cwd=tmp_path).code == 0
    v_console = capfd.readouterr().err

    def log_of(folder: Path) -> str:
        (path,) = folder.glob("*.log")
        return path.read_text(encoding="utf-8")

    assert " DEBUG " not in log_of(quiet_logs) and "DEBUG" not in plain_console
    for log_text, console in ((log_of(debug_logs), debug_console), (log_of(v_logs), v_console)):
        assert " DEBUG api_pipeline.dfe.api batch " in log_text
        assert "DEBUG   batch " in console


def test_env_txt_is_read_where_env_is_missing_with_a_note_in_the_log(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(3, seed=6)))
    folder = tmp_path / "CSC"
    folder.mkdir()
    values = dict(simulator.settings_env()) | db_env(db_path)
    (folder / "env.txt").write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    result = run_cli(["run"], cwd=folder)
    assert result.code == 0, result.err
    (log_file,) = (folder / "logs").glob("*.log")
    text = log_file.read_text(encoding="utf-8")
    assert f"settings: from {folder / 'env.txt'}, the earlier tool's env.txt, as there is no .env beside it" in text
    (folder / ".env").write_text("LA_CODE=not-a-code\n", encoding="utf-8")  # .env wins when both are there
    assert run_cli(["run"], cwd=folder).code == 2


class FakeOdbc:
    """Stands in for pyodbc where no SQL Server can run: records the connection string, then refuses."""

    class Error(Exception):
        pass

    def __init__(self) -> None:
        self.strings: list[str] = []

    def drivers(self) -> list[str]:
        return ["ODBC Driver 17 for SQL Server"]

    def connect(self, text: str, autocommit: bool = True):
        self.strings.append(text)
        raise self.Error(
            "08001", "[Microsoft][ODBC Driver 17 for SQL Server]Login timeout expired (0) (SQLDriverConnect)"
        )


def test_db_user_and_password_with_user_server_and_database_make_an_sql_login(tmp_path, monkeypatch):
    fake = FakeOdbc()
    monkeypatch.setattr("api_pipeline.store.db.import_pyodbc", lambda setting="": fake)
    environ = {
        "USER_SERVER": "sql01.council.local",
        "USER_DATABASE": "HDM_Local",
        "DB_USER": "csc_api",
        "DB_PASSWORD": "pa;ss}word-Do-Not-Show",
    }
    result = run_cli(["test-db"], environ=environ, cwd=tmp_path)
    assert result.code == 3
    assert fake.strings == [
        "DRIVER={ODBC Driver 17 for SQL Server};SERVER=sql01.council.local;DATABASE=HDM_Local;"
        "UID={csc_api};PWD={pa;ss}}word-Do-Not-Show};"
    ]
    assert "Do-Not-Show" not in result.out + result.err
    without = run_cli(["test-db"], environ={k: v for k, v in environ.items() if k != "DB_PASSWORD"}, cwd=tmp_path)
    assert without.code == 2 and "DB_USER: an SQL login needs its password too: set DB_PASSWORD" in without.err
    windows = run_cli(["test-db"], environ={"USER_SERVER": "s", "USER_DATABASE": "d"}, cwd=tmp_path)
    assert windows.code == 3 and fake.strings[-1].endswith("SERVER=s;DATABASE=d;Trusted_Connection=yes;")


@pytest.mark.parametrize(("given", "mode"), [("deltas", "partial"), ("partial", "partial"), ("full", "full")])
def test_mode_deltas_is_partial(simulator, db_path, tmp_path, given, mode):
    insert(db_path, list(make_children(2, seed=7)))
    environ = dict(simulator.settings_env()) | db_env(db_path)
    result = run_cli(["run", "--mode", given, "--log-dir", str(tmp_path / "logs")], environ=environ, cwd=tmp_path)
    assert result.code == 0, result.err
    (summary,) = (tmp_path / "logs").glob("*.summary.json")
    assert json.loads(summary.read_text())["mode"] == mode


def test_the_earlier_tools_env_example_filled_in_works_as_it_is(simulator, tmp_path):
    folder = tmp_path / "CSC"
    folder.mkdir()
    (folder / ".env").write_text(earlier_env_example(simulator, sql_conn_str="sqlite:///staging.db"), encoding="utf-8")
    assert run_cli(["init-db", "--sample", "12"], cwd=folder).code == 0  # TABLE_NAME, quoted, with its comment
    result = python_m([], folder)  # as the earlier tool's scheduled task runs it: no command
    assert result.returncode == 0, result.stderr
    assert len(simulator.snapshot()) == 12
    assert "DEBUG" in result.stderr  # DEBUG=true
    (summary,) = (folder / "logs").glob("*.summary.json")
    data = json.loads(summary.read_text())
    assert data["mode"] == "partial" and data["outcomes"]["sent"] == 12


def test_the_earlier_tools_env_with_its_empty_sql_conn_str_uses_user_server(simulator, tmp_path, monkeypatch):
    fake = FakeOdbc()
    monkeypatch.setattr("api_pipeline.store.db.import_pyodbc", lambda setting="": fake)
    (tmp_path / ".env").write_text(earlier_env_example(simulator, sql_conn_str=""), encoding="utf-8")
    result = run_cli(["test-db"], cwd=tmp_path)
    assert result.code == 3  # no SQL Server here: but the string is the earlier tool's
    assert fake.strings == [
        "DRIVER={ODBC Driver 17 for SQL Server};SERVER=your_la_reporting_db_server;"
        "DATABASE=your_reporting_instance_name_eg_HDM_Local;Trusted_Connection=yes;"
    ]
