"""The command line, in-process: every command and exit code (DESIGN §2, §10)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from api_pipeline import __version__
from api_pipeline.cli.parser import build_parser
from api_pipeline.rehearsal.synthetic import make_children
from conftest import db_env, insert, run_cli


def sim_env(sim, db_path: Path, **extra: str) -> dict[str, str]:
    return dict(sim.settings_env()) | db_env(db_path) | {"MAX_RETRIES": "1", "HTTP_TIMEOUT": "5"} | extra


def test_no_command_means_run_and_says_so_when_settings_are_missing(tmp_path):
    result = run_cli([], cwd=tmp_path)
    assert result.code == 2
    assert "error: DB_CONNECTION_STRING: not set" in result.err
    assert "no command was given, so 'run' was started" in result.err and "--help" in result.err


def test_version(tmp_path, capsys):
    assert run_cli(["--version"], cwd=tmp_path).code == 0
    assert __version__ in capsys.readouterr().out


def test_help_documents_exit_codes_once_on_the_top_level(tmp_path, capsys):
    assert run_cli(["--help"], cwd=tmp_path).code == 0
    text = capsys.readouterr().out
    for code in ("0 ", "1 ", "2 ", "3 ", "4 ", "5 ", "6 ", "130"):
        assert f"\n  {code}" in text
    assert run_cli(["run", "--help"], cwd=tmp_path).code == 0
    text = capsys.readouterr().out
    assert "exit codes:" not in text and "130" not in text
    assert "--help" in text.split("usage:")[-1].split("options:")[-1]  # points at the top-level list


def test_unknown_option_is_a_usage_error(tmp_path):
    assert run_cli(["run", "--no-such-option"], cwd=tmp_path).code == 2


def test_run_without_configuration_lists_every_missing_variable(tmp_path):
    result = run_cli(["run"], cwd=tmp_path)
    assert result.code == 2
    for name in (
        "DB_CONNECTION_STRING",
        "API_ENDPOINT",
        "LA_CODE",
        "TOKEN_ENDPOINT",
        "CLIENT_ID",
        "CLIENT_SECRET",
        "SCOPE",
        "SUPPLIER_KEY",
    ):
        assert f"error: {name}: not set" in result.err


def test_every_command_and_option_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert {"run", "test-endpoint", "test-db", "test-schema", "demo", "simulate-api"} <= set(subparsers.choices)
    for name, sub in subparsers.choices.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings}"


def test_run_sends_and_writes_log_and_summary(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(12, seed=5)))
    result = run_cli(["run", "--log-dir", str(tmp_path / "logs")], environ=sim_env(simulator, db_path), cwd=tmp_path)
    assert result.code == 0, result.err
    (summary_file,) = (tmp_path / "logs").glob("*.summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["outcomes"]["sent"] == 12 and summary["exit_code"] == 0
    assert list((tmp_path / "logs").glob("*.log"))


def test_env_file_option_and_mode_flag(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(3, seed=6)))
    env_file = tmp_path / "council.env"
    env_file.write_text("\n".join(f"{k}={v}" for k, v in sim_env(simulator, db_path).items()), encoding="utf-8")
    result = run_cli(["--env-file", str(env_file), "run", "--mode", "full", "--limit", "2"], cwd=tmp_path)
    assert result.code == 0, result.err
    assert len(simulator.snapshot()) == 2
    assert (tmp_path / "logs").is_dir()  # default log folder: next to the .env file


def test_run_with_invalid_records_exits_1(simulator, db_path, tmp_path):
    children = list(make_children(3, seed=6))
    children[0]["child_details"]["sex"] = "Female"
    insert(db_path, children)
    assert run_cli(["run"], environ=sim_env(simulator, db_path), cwd=tmp_path).code == 1


def test_run_with_wrong_secret_exits_4(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(2, seed=6)))
    result = run_cli(["run"], environ=sim_env(simulator, db_path, CLIENT_SECRET="wrong-secret-value"), cwd=tmp_path)
    assert result.code == 4
    assert "CLIENT_SECRET" in result.err
    assert "wrong-secret-value" not in result.err


def test_run_with_api_unreachable_exits_5(db_path, tmp_path):
    from api_pipeline.rehearsal.simulator import Simulator

    with Simulator() as sim:
        environ = sim_env(sim, db_path)
    insert(db_path, list(make_children(2, seed=6)))
    result = run_cli(["run"], environ=environ, cwd=tmp_path)
    assert result.code == 5, result.err


def test_run_with_missing_table_exits_3(simulator, tmp_path):
    (tmp_path / "empty.db").touch()
    environ = sim_env(simulator, tmp_path / "empty.db")
    result = run_cli(["run"], environ=environ, cwd=tmp_path)
    assert result.code == 3
    assert "ssd_api_data_staging" in result.err


def test_test_db(db_path, tmp_path):
    result = run_cli(["test-db"], environ=db_env(db_path), cwd=tmp_path)
    assert result.code == 0 and "SQLite" in result.out
    alias = run_cli(["test-db-connection"], environ=db_env(db_path), cwd=tmp_path)
    assert alias.code == 0
    broken = run_cli(["test-db"], environ={"DB_CONNECTION_STRING": "sqlite:///no/such/folder/x.db"}, cwd=tmp_path)
    assert broken.code == 3


def test_test_schema(db_path, tmp_path):
    ok = run_cli(["test-schema"], environ=db_env(db_path), cwd=tmp_path)
    assert ok.code == 0 and "OK" in ok.out
    missing = run_cli(["test-schema"], environ=db_env(db_path) | {"TABLE_NAME": "no_such_table"}, cwd=tmp_path)
    assert missing.code == 3 and "NOT FOUND" in missing.out and "CREATE TABLE" in missing.out


def test_test_endpoint(simulator, tmp_path):
    environ = dict(simulator.settings_env())
    good = run_cli(["test-endpoint"], environ=environ, cwd=tmp_path)
    assert good.code == 0, good.out + good.err
    assert simulator.snapshot() == {}
    posts = [e for e in simulator.request_log() if e.path.endswith("/children")]
    assert [e.body for e in posts] == [b"[]"]
    assert run_cli(["test-endpoint"], environ=environ | {"CLIENT_SECRET": "nope"}, cwd=tmp_path).code == 4
    assert run_cli(["test-endpoint"], environ=environ | {"LA_CODE": "123"}, cwd=tmp_path).code == 5


def test_demo(tmp_path):
    result = run_cli(["demo", "--children", "60", "--dir", str(tmp_path / "demo")], cwd=tmp_path)
    assert result.code == 0, result.out + result.err
    assert "DfE view equals staging data for 60/60 children" in result.out
    assert (tmp_path / "demo" / "staging.db").exists()


def test_installed_entry_points(tmp_path):
    python = subprocess.run([sys.executable, "-m", "api_pipeline", "--version"], capture_output=True, text=True)
    assert python.returncode == 0 and __version__ in python.stdout
    nothing = subprocess.run([sys.executable, "-m", "api_pipeline"], capture_output=True, text=True, cwd=tmp_path)
    assert nothing.returncode == 2 and "no command was given, so 'run' was started" in nothing.stderr
    script = shutil.which("csc-api-pipeline")
    if script is None:
        pytest.skip("csc-api-pipeline console script not installed (pip install . to test it)")
    assert subprocess.run([script, "--version"], capture_output=True).returncode == 0
