"""How the tool's sentences read when a count is one, and other small matters of wording (issue 25, item 8)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.wording import plural
from conftest import db_env, insert, run_cli

ANON = "ssd_api_data_staging_anon"


def sim_env(sim, db_path: Path, **extra: str) -> dict[str, str]:
    return dict(sim.settings_env()) | db_env(db_path) | {"MAX_RETRIES": "1", "HTTP_TIMEOUT": "5"} | extra


def log_of(log_dir: Path) -> str:
    (path,) = log_dir.glob("*.log")
    return path.read_text(encoding="utf-8")


@pytest.mark.parametrize("word, many", [("record", None), ("child", None), ("child has", "children have")])
def test_plural_says_one_thing_as_one(word, many):
    assert plural(1, word, many) == f"1 {word}"
    assert plural(0, word, many).startswith("0 ") and plural(0, word, many) != f"0 {word}"


def test_a_run_of_one_record_says_one_record(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(1, seed=261)))
    log_dir = tmp_path / "logs"
    result = run_cli(["run", "--log-dir", str(log_dir)], environ=sim_env(simulator, db_path), cwd=tmp_path)
    assert result.code == 0, result.err
    text = log_of(log_dir)
    assert ": 1 record: 1 sent (" in text  # the batch's line
    assert "1 row read, 1 batch, 1 request, 0 retries" in text
    assert "1 records" not in text and "1 rows" not in text


def test_a_dry_run_of_one_record_says_one_record_written(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(1, seed=262)))
    log_dir, review = tmp_path / "logs", tmp_path / "review"
    argv = ["run", "--dry-run", str(review), "--log-dir", str(log_dir)]
    assert run_cli(argv, environ=sim_env(simulator, db_path), cwd=tmp_path).code == 0
    text = log_of(log_dir)
    assert ": 1 record written to " in text and " for review" in text
    assert "request records" not in text and "1 records" not in text


def test_init_db_names_one_sample_child_once_and_says_what_comes_next(simulator, tmp_path):
    environ = sim_env(simulator, tmp_path / "rehearsal.db", TABLE_NAME=ANON)
    first = run_cli(["init-db", "--sample", "3"], environ=environ, cwd=tmp_path)
    assert first.code == 0, first.err
    assert "(person_id C0000001 to C0000003)" in first.out
    assert "Next: simulate-api in another window, then run against it" in first.out  # a new rehearsal
    assert run_cli(["run"], environ=environ, cwd=tmp_path).code == 0
    more = run_cli(["init-db", "--sample", "1", "--append"], environ=environ, cwd=tmp_path)
    assert more.code == 0, more.err
    assert f"sample: 1 synthetic child added to {ANON} (person_id C0000004), as" in more.out
    assert "C0000004 to C0000004" not in more.out
    # The rehearsal is under way, with the simulator running: the next step is the run.
    assert "Next: run, to send it to the simulator (simulate-api, running in another window)." in more.out
    assert "Next: simulate-api" not in more.out
    assert run_cli(["run"], environ=environ, cwd=tmp_path).code == 0
    assert len(simulator.snapshot()) == 4


def test_an_address_without_https_says_http_to_this_machine_is_accepted_too(simulator, db_path, tmp_path):
    environ = sim_env(simulator, db_path, API_ENDPOINT="pp-api.education.gov.uk/children-in-social-care-data-receiver")
    result = run_cli(["run"], environ=environ, cwd=tmp_path)
    assert result.code == 2
    assert "API_ENDPOINT" in result.err and "must be a full URL starting https://" in result.err
    assert "(or http:// to this machine, such as http://127.0.0.1:8765 for the simulator)" in result.err


def test_status_gives_the_ledgers_times_in_utc(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(2, seed=263)))
    assert run_cli(["run"], environ=sim_env(simulator, db_path), cwd=tmp_path).code == 0
    state = json.loads(run_cli(["status", "--json"], environ=db_env(db_path), cwd=tmp_path).out)
    assert state["generated_at"].endswith("Z")
    assert state["ledger"]["last_acknowledged_at"].endswith("Z"), state["ledger"]
    assert all(run["started_at"].endswith("Z") for run in state["runs"]["recent"])
    text = run_cli(["status"], environ=db_env(db_path), cwd=tmp_path).out
    (ledger,) = [line for line in text.splitlines() if line.startswith("Submission ledger")]
    assert ledger.endswith(" UTC."), ledger


def test_no_command_and_no_env_says_run_was_started_before_what_is_not_set(tmp_path):
    result = run_cli([], cwd=tmp_path)
    assert result.code == 2
    lines = result.err.splitlines()
    assert lines[0].startswith("error: no command was given, so 'run' was started"), lines
    assert any(line.startswith("error: DB_CONNECTION_STRING: not set") for line in lines[1:])
