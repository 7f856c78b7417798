"""The exit code, the summary and the report tell the truth (issue 15, item 6).

A configuration mistake is exit 2 with a line naming the setting, before anything is
connected to or sent; anything the tool did not expect is exit 1 and is recorded as
unexpected in the summary and the report, never as a run that finished normally.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api_pipeline.errors import ConfigError, ExitCode
from api_pipeline.job.pipeline import Pipeline
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from conftest import db_env, insert, rows, run_cli

ZERO_WIDTH_SPACE = "\u200b"


@pytest.fixture
def sim():
    with Simulator() as simulator:
        yield simulator


def env_for(sim: Simulator, db_path: Path, **extra: str) -> dict[str, str]:
    return sim.settings_env() | db_env(db_path) | {"MAX_RETRIES": "0", "HTTP_TIMEOUT": "5"} | extra


def summary_of(tmp_path: Path) -> dict:
    (path,) = sorted((tmp_path / "logs").glob("*.summary.json"))
    return json.loads(path.read_text(encoding="utf-8"))


def report_of(tmp_path: Path) -> str:
    (path,) = sorted((tmp_path / "logs").glob("*.report.html"))
    return path.read_text(encoding="utf-8")


def test_an_unexpected_error_is_recorded_as_such(sim, db_path, monkeypatch) -> None:
    insert(db_path, list(make_children(2, seed=170)))

    def fault(self):  # a bug in the tool, which no test of the real parts can provoke
        raise KeyError("something the tool did not expect")

    monkeypatch.setattr(Pipeline, "run", fault)
    result = run_cli(["run"], environ=env_for(sim, db_path), cwd=db_path.parent)
    assert result.code == 1 and "unexpected error: KeyError" in result.err
    summary = summary_of(db_path.parent)
    assert summary["exit_code"] == 1
    assert summary["fatal_error"].startswith("unexpected error: KeyError")
    report = report_of(db_path.parent)
    assert "finished normally" not in report and "unexpected error" in report


@pytest.mark.parametrize("name", ["SUPPLIER_KEY", "SUPPLIER_KEY_SECONDARY"])
@pytest.mark.parametrize("command", ["run", "test-endpoint"])
def test_a_supplier_key_with_an_invisible_character_is_a_configuration_error(sim, db_path, name, command) -> None:
    insert(db_path, list(make_children(1, seed=171)))
    environ = env_for(sim, db_path, **{name: "sim-supplier" + ZERO_WIDTH_SPACE + "-key"})
    result = run_cli([command], environ=environ, cwd=db_path.parent)
    assert result.code == ExitCode.USAGE, result.err
    assert any(line.startswith(f"error: {name}:") for line in result.err.splitlines()) and "invisible" in result.err
    assert sim.request_log() == []  # refused before anything was sent


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e10", "0", "-5", "Infinity"])
def test_http_timeout_must_be_a_sensible_number_of_seconds(sim, db_path, value) -> None:
    result = run_cli(["run"], environ=env_for(sim, db_path, HTTP_TIMEOUT=value), cwd=db_path.parent)
    assert result.code == ExitCode.USAGE, result.err
    assert any(line.startswith("error: HTTP_TIMEOUT:") for line in result.err.splitlines())
    assert sim.request_log() == []


@pytest.mark.parametrize("value", ["nan", "inf", "1e400", "nanh"])
def test_max_runtime_must_be_a_finite_duration(value) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(command="demo", environ={"MAX_RUNTIME": value})
    assert caught.value.problems[0].startswith("MAX_RUNTIME:")


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_a_log_folder_under_a_file_is_a_configuration_error(sim, db_path, how) -> None:
    blocker = db_path.parent / "not-a-folder"
    blocker.write_text("a file where the log folder would go", encoding="utf-8")
    log_dir = blocker / "logs"
    argv = ["--log-dir", str(log_dir), "run"] if how == "flag" else ["run"]
    extra = {"LOG_DIR": str(log_dir)} if how == "environment" else {}
    insert(db_path, list(make_children(1, seed=172)))
    result = run_cli(argv, environ=env_for(sim, db_path, **extra), cwd=db_path.parent)
    assert result.code == ExitCode.USAGE, result.err
    assert result.err.startswith("error: LOG_DIR") and "--log-dir" in result.err and str(log_dir) in result.err
    assert sim.request_log() == []
    assert [r["submission_status"] for r in rows(db_path)] == ["Pending"]


def test_dry_run_at_an_existing_file_is_a_configuration_error(sim, db_path) -> None:
    target = db_path.parent / "review.json"
    target.write_text("{}", encoding="utf-8")
    insert(db_path, list(make_children(2, seed=173)))
    result = run_cli(["run", "--dry-run", str(target)], environ=env_for(sim, db_path), cwd=db_path.parent)
    assert result.code == ExitCode.USAGE, result.err
    assert result.err.startswith("error: --dry-run:") and str(target) in result.err
    assert target.read_text(encoding="utf-8") == "{}"


def test_dry_run_under_a_file_is_a_configuration_error(sim, db_path) -> None:
    blocker = db_path.parent / "blocker"
    blocker.write_text("x", encoding="utf-8")
    insert(db_path, list(make_children(1, seed=174)))
    result = run_cli(["run", "--dry-run", str(blocker / "review")], environ=env_for(sim, db_path), cwd=db_path.parent)
    assert result.code == ExitCode.USAGE and result.err.startswith("error: --dry-run:"), result.err


def test_a_stopped_run_is_not_reported_as_finished_normally(tmp_path) -> None:
    from api_pipeline.job.report import render_report

    page = render_report({"run_id": "x", "exit_code": 1, "fatal_error": "unexpected error: KeyError"}, [])
    assert "finished normally" not in page and "finished, but some records" not in page
    assert "unexpected error: KeyError" in page
