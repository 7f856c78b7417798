"""Output piped to a program that stops reading (``status | head``) ends quietly, for every command.

Real processes with a real pipe: the reader closes its end before the command writes a line
(every write fails), or after the first line (the usual ``| head``, tried many times since
when the write fails depends on timing). The command carries on to its end, and its exit code
is its own: a ``run`` whose output nobody reads still sends and writes back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from api_pipeline.rehearsal.synthetic import make_children
from conftest import db_env, insert, rows

REPO = Path(__file__).resolve().parents[1]
TRIES = 8

# What an unhandled closed pipe shows, from the tool or from the interpreter's last flush.
CRASH_SIGNS = ("unexpected error", "BrokenPipe", "Exception ignored", "Traceback")


def command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "api_pipeline", *argv]


def environ(extra: dict[str, str]) -> dict[str, str]:
    env = os.environ | extra
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env


def closed_before_start(argv: list[str], env: dict[str, str], cwd: Path, *, both: bool = False) -> tuple[int, str]:
    """Run with stdout (and stderr too, with ``both``) a pipe whose reader has already gone."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            argv,
            env=env,
            cwd=cwd,
            stdout=write_end,
            stderr=write_end if both else subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    return result.returncode, result.stderr or ""


def closed_after_first_line(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """``COMMAND | head -1``: read one line, then close the pipe."""
    proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    return proc.wait(timeout=120), first, err


@pytest.fixture
def table(db_path: Path) -> dict[str, str]:
    insert(db_path, list(make_children(40, seed=25)))
    return db_env(db_path)


@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_status_into_a_pipe_closed_early_ends_quietly_with_its_own_exit_code(table, tmp_path, json_output):
    argv = command("status", *(["--json"] if json_output else []))
    env = environ(table)
    code, err = closed_before_start(argv, env, tmp_path)
    assert code == 0 and not any(sign in err for sign in CRASH_SIGNS), err
    for _ in range(TRIES):
        code, first, err = closed_after_first_line(argv, env, tmp_path)
        assert first.strip() == ("{" if json_output else "Staging table ssd_api_data_staging: 40 rows")
        assert code == 0 and not any(sign in err for sign in CRASH_SIGNS), err


@pytest.mark.parametrize(
    "argv",
    [["validate", "--all"], ["test-db"], ["test-schema"], ["--help"], ["--version"], ["init-db", "--print"]],
    ids=lambda argv: " ".join(argv),
)
def test_every_command_into_a_closed_pipe_keeps_its_exit_code(table, tmp_path, argv):
    env = environ(table)
    expected = subprocess.run(command(*argv), env=env, cwd=tmp_path, capture_output=True, timeout=120).returncode
    code, err = closed_before_start(command(*argv), env, tmp_path)
    assert code == expected and not any(sign in err for sign in CRASH_SIGNS), err
    code, err = closed_before_start(command(*argv), env, tmp_path, both=True)
    assert code == expected


def test_demo_into_a_closed_pipe_still_runs_to_the_end(tmp_path):
    code, err = closed_before_start(command("demo", "--children", "30", "--dir", "demo"), environ({}), tmp_path)
    assert code == 0 and not any(sign in err for sign in CRASH_SIGNS), err  # 0: it converged
    (log_file,) = (tmp_path / "demo" / "logs").glob("*.log")
    assert "batch demo-2-" in log_file.read_text(encoding="utf-8")  # its second run happened


def test_a_run_whose_output_nobody_reads_still_sends_and_writes_back(simulator, table, db_path, tmp_path):
    """``run 2>&1 | head``: only the output stops; the run's outcome is not hidden."""
    env = environ(dict(simulator.settings_env()) | table | {"BATCH_SIZE": "7", "LOG_DIR": str(tmp_path / "logs")})
    code, _ = closed_before_start(command("run"), env, tmp_path, both=True)
    assert code == 0
    assert {row["submission_status"] for row in rows(db_path)} == {"Sent"}
    assert len(simulator.snapshot()) == 40
    (summary,) = (tmp_path / "logs").glob("*.summary.json")
    assert json.loads(summary.read_text(encoding="utf-8"))["exit_code"] == 0
