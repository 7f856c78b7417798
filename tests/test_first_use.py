"""What a new user meets after the demo (issue 17), each through the command line.

Paths and files, messages and counts, rehearsal data, and the help and docs that go with
them. The other suites prove the pipeline; these prove that a council analyst, a scheduled
task started in System32 and a mistyped file name all get a clear, true answer.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from api_pipeline.job import run_files as runs
from api_pipeline.rehearsal.synthetic import make_children
from conftest import db_env, insert, run_cli


def sim_env(sim, db_path: Path, **extra: str) -> dict[str, str]:
    return dict(sim.settings_env()) | db_env(db_path) | {"MAX_RETRIES": "1", "HTTP_TIMEOUT": "5"} | extra


# ---------------------------------------------------------------------------
# Run ids
# ---------------------------------------------------------------------------


def test_two_runs_started_in_the_same_second_keep_their_own_log_summary_and_batch_ids(
    simulator, db_path, tmp_path, monkeypatch
):
    instant = datetime(2026, 3, 1, 2, 0, 0, 123456, tzinfo=timezone.utc)
    monkeypatch.setattr(runs, "utc_now", lambda: instant)  # the same millisecond, even
    insert(db_path, list(make_children(4, seed=1)))
    log_dir = tmp_path / "logs"
    environ = sim_env(simulator, db_path, BATCH_SIZE="2")
    first = run_cli(["run", "--log-dir", str(log_dir), "--limit", "2"], environ=environ, cwd=tmp_path)
    second = run_cli(["run", "--log-dir", str(log_dir)], environ=environ, cwd=tmp_path)
    assert (first.code, second.code) == (0, 0), first.err + second.err

    summaries = sorted(log_dir.glob("*.summary.json"))
    assert len(summaries) == 2 and len(list(log_dir.glob("*.log"))) == 2
    run_ids = [json.loads(p.read_text())["run_id"] for p in summaries]
    assert run_ids[0] != run_ids[1]
    assert all(re.fullmatch(r"20260301T020000\.123Z-[0-9a-f]{6}", r) for r in run_ids)
    batch_ids = set()
    for log_file in log_dir.glob("*.log"):
        found = set(re.findall(r"batch (\S+):", log_file.read_text(encoding="utf-8")))
        assert found and not found & batch_ids
        batch_ids |= found


def test_run_ids_are_unique_in_a_tight_loop():
    ids = {runs.new_run_id() for _ in range(2000)}
    assert len(ids) > 1995  # 6 random hex digits per millisecond


# ---------------------------------------------------------------------------
# Paths and files
# ---------------------------------------------------------------------------


def run_in(argv, *, cwd: Path, exe_dir: Path, environ=None, frozen: bool = False):
    """The CLI as a program at ``exe_dir`` started in ``cwd`` (Task Scheduler: System32)."""
    import io

    from api_pipeline.cli.main import main
    from api_pipeline.settings.context import Context
    from conftest import CliResult

    out, err = io.StringIO(), io.StringIO()
    ctx = Context(environ=environ or {}, cwd=cwd, out=out, err=err, executable_dir=exe_dir, frozen=frozen)
    return CliResult(main(argv, context=ctx), out.getvalue(), err.getvalue())


def write_env(path: Path, values: dict[str, str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()), encoding="utf-8")
    return path


@pytest.fixture
def folders(tmp_path):
    """A council's program folder (exe and .env) and the folder Task Scheduler starts in."""
    program, system32 = tmp_path / "CSC", tmp_path / "System32"
    program.mkdir()
    system32.mkdir()
    return program, system32


def test_a_relative_sqlite_path_in_env_is_the_env_folders_under_task_scheduler(simulator, folders):
    program, system32 = folders
    write_env(program / ".env", dict(simulator.settings_env()) | {"DB_CONNECTION_STRING": "sqlite:///staging.db"})
    created = run_in(["init-db"], cwd=system32, exe_dir=program)
    assert created.code == 0, created.err
    assert (program / "staging.db").is_file() and not (system32 / "staging.db").exists()
    assert str(program / "staging.db") in created.out
    insert(program / "staging.db", list(make_children(3, seed=2)))
    sent = run_in(["run"], cwd=system32, exe_dir=program)
    assert sent.code == 0, sent.err
    assert len(simulator.snapshot()) == 3
    assert list((program / "logs").glob("*.summary.json")) and not (system32 / "logs").exists()
    assert list(system32.iterdir()) == []  # nothing at all was created where the task started


def test_a_relative_sqlite_path_in_an_env_file_given_from_elsewhere_is_that_files(simulator, tmp_path):
    env_file = write_env(
        tmp_path / "council" / "settings.env",
        dict(simulator.settings_env()) | {"DB_CONNECTION_STRING": "sqlite:///data/staging.db", "LOG_DIR": "runs"},
    )
    (tmp_path / "council" / "data").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert run_cli(["--env-file", str(env_file), "init-db"], cwd=elsewhere).code == 0
    insert(tmp_path / "council" / "data" / "staging.db", list(make_children(2, seed=3)))
    result = run_cli(["--env-file", str(env_file), "run"], cwd=elsewhere)
    assert result.code == 0, result.err
    assert list((tmp_path / "council" / "runs").glob("*.log"))  # LOG_DIR too: from the .env's folder
    assert list(elsewhere.iterdir()) == []


def test_a_relative_sqlite_path_from_the_environment_is_the_current_folders(tmp_path):
    here = tmp_path / "here"
    here.mkdir()
    result = run_cli(["init-db"], environ={"DB_CONNECTION_STRING": "sqlite:///rehearsal.db"}, cwd=here)
    assert result.code == 0, result.err
    assert (here / "rehearsal.db").is_file()


@pytest.mark.parametrize("command", ["test-db", "test-schema", "run", "validate", "status"])
def test_only_init_db_creates_a_database_file(simulator, tmp_path, command):
    mistyped = tmp_path / "stagign.db"
    environ = sim_env(simulator, mistyped)
    result = run_cli([command], environ=environ, cwd=tmp_path)
    assert result.code == 3, result.out + result.err
    assert f"the SQLite database {mistyped} does not exist" in result.err
    assert "init-db" in result.err
    assert not mistyped.exists()


def test_database_errors_name_the_absolute_sqlite_path(simulator, tmp_path):
    (tmp_path / "empty.db").touch()
    env_file = write_env(
        tmp_path / ".env", dict(simulator.settings_env()) | {"DB_CONNECTION_STRING": "sqlite:///empty.db"}
    )
    result = run_cli(["--env-file", str(env_file), "run"], cwd=tmp_path)
    assert result.code == 3
    assert "the staging table ssd_api_data_staging was not found" in result.err
    assert f"error: (the SQLite database: {tmp_path / 'empty.db'})" in result.err
    (log_file,) = (tmp_path / "logs").glob("*.log")
    assert f"the SQLite database: {tmp_path / 'empty.db'}" in log_file.read_text(encoding="utf-8")


def test_test_schema_names_the_sqlite_file_it_looked_in(tmp_path):
    (tmp_path / "other.db").touch()
    result = run_cli(["test-schema"], environ={"DB_CONNECTION_STRING": "sqlite:///other.db"}, cwd=tmp_path)
    assert result.code == 3
    assert f"staging table ssd_api_data_staging: NOT FOUND in the SQLite database {tmp_path / 'other.db'}" in result.out


def test_with_no_env_found_it_says_where_it_looked_before_the_missing_settings(folders):
    program, system32 = folders
    result = run_in(["run"], cwd=system32, exe_dir=program)
    assert result.code == 2
    lines = result.err.splitlines()
    assert lines[0] == (
        f"error: no .env found; looked in: {system32}, {program} (for .env, then env.txt). "
        "Put .env next to the program, or give its path with --env-file"
    )
    assert lines[1].startswith("error: DB_CONNECTION_STRING: not set")


def test_configuration_errors_are_also_written_to_the_log_folder_beside_the_env(folders):
    program, system32 = folders
    write_env(program / ".env", {"DB_CONNECTION_STRING": "sqlite:///staging.db", "BATCH_SIZE": "250"})
    result = run_in(["run"], cwd=system32, exe_dir=program)
    assert result.code == 2
    trace = (program / "logs" / "csc_api_pipeline.errors.log").read_text(encoding="utf-8")
    assert f"'run' stopped with exit code 2 (settings from {program / '.env'}; started in {system32})" in trace
    assert "error: BATCH_SIZE: '250' must be between 1 and 100" in trace
    assert "error: LA_CODE: not set" in trace
    assert not (system32 / "logs").exists()


def test_without_any_env_the_exe_leaves_its_trace_beside_itself(folders):
    program, system32 = folders
    result = run_in([], cwd=system32, exe_dir=program, frozen=True)
    assert result.code == 2
    trace = (program / "logs" / "csc_api_pipeline.errors.log").read_text(encoding="utf-8")
    assert "no .env found" in trace and "error: API_ENDPOINT: not set" in trace
    usage = run_in(["run", "--limit", "many"], cwd=system32, exe_dir=program, frozen=True)
    assert usage.code == 2 and "is not a whole number" in usage.err
    trace = (program / "logs" / "csc_api_pipeline.errors.log").read_text(encoding="utf-8")
    assert "the command line stopped with exit code 2" in trace and "'many' is not a whole number" in trace


# ---------------------------------------------------------------------------
# Messages and counts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("written", ["4 hours", "4h", "240 minutes", "3h 60m", "14400"])
def test_max_runtime_reads_the_ways_people_write_it(simulator, db_path, tmp_path, written):
    insert(db_path, list(make_children(2, seed=4)))
    result = run_cli(["run"], environ=sim_env(simulator, db_path, MAX_RUNTIME=written), cwd=tmp_path)
    assert result.code == 0, result.err


@pytest.mark.parametrize(
    ("variable", "written", "says"),
    [
        (
            "MAX_RUNTIME",
            "4 hours please",
            "is not a duration this tool reads; write it like 4h, 4 hours, 90m, 90 minutes, 1h30m, 3600s or 3600",
        ),
        ("MAX_RUNTIME", "four hours", "is not a duration this tool reads; write it like 4h, 4 hours"),
        ("HTTP_TIMEOUT", "a minute", "is not a number: must be a number of seconds above 0 and at most 3600"),
        ("BATCH_SIZE", "lots", "is not a whole number: must be between 1 and 100"),
        ("MAX_RETRIES", "five", "is not a whole number: must be 0 or more"),
        ("MAX_IN_FLIGHT", "2.5", "is not a whole number: must be between 1 and 8"),
    ],
)
def test_a_wrongly_written_number_says_which_forms_are_accepted(simulator, db_path, tmp_path, variable, written, says):
    result = run_cli(["run"], environ=sim_env(simulator, db_path, **{variable: written}), cwd=tmp_path)
    assert result.code == 2
    assert f"error: {variable}: {written!r} {says}" in result.err
    assert "could not convert" not in result.err and "invalid literal" not in result.err


def test_set_secret_without_a_keyring_says_so_before_asking_for_anything(tmp_path, monkeypatch):
    keyring = pytest.importorskip("keyring")
    from keyring.backends import fail

    asked: list[str] = []
    monkeypatch.setattr("getpass.getpass", lambda prompt="": asked.append(prompt) or "typed-secret")
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        result = run_cli(["set-secret", "client_secret"], cwd=tmp_path)
    finally:
        keyring.set_keyring(previous)
    assert result.code == 2
    assert "error: set-secret: cannot store CLIENT_SECRET: no keyring is available on this machine" in result.err
    assert asked == []


def test_set_secret_names_its_choices(tmp_path, capsys):
    from api_pipeline.cli.credentials import keyring_variables

    assert run_cli(["set-secret", "--help"], cwd=tmp_path).code == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert all(name in shown for name in keyring_variables())
    wrong = run_cli(["set-secret", "CLIENT_ID"], cwd=tmp_path)
    assert wrong.code == 2 and "CLIENT_ID is not a secret" in wrong.err and "CLIENT_SECRET" in wrong.err


def test_counts_of_one_are_singular(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(1, seed=5)))
    log_dir = tmp_path / "logs"
    assert run_cli(["run", "--log-dir", str(log_dir)], environ=sim_env(simulator, db_path), cwd=tmp_path).code == 0
    (log_file,) = log_dir.glob("*.log")
    text = log_file.read_text(encoding="utf-8")
    assert "1 row read, 1 batch, 1 request, 0 retries" in text
    for wrong in ("1 rows", "1 batches", "1 requests", "1 retries"):
        assert wrong not in text
    (report,) = log_dir.glob("*.report.html")
    page = report.read_text(encoding="utf-8")
    assert "The last run</h2>" in page and "The last 1 runs" not in page
    status = run_cli(["status", "--log-dir", str(log_dir)], environ=db_env(db_path), cwd=tmp_path)
    assert "1 child acknowledged by DfE" in status.out and "Last 1 run " in status.out


def test_the_run_chart_tells_runs_of_one_day_apart_shows_small_runs_and_leaves_out_dry_runs(
    simulator, db_path, tmp_path
):
    log_dir = tmp_path / "logs"
    environ = sim_env(simulator, db_path, BATCH_SIZE="100")
    insert(db_path, list(make_children(300, seed=6)))
    assert run_cli(["run", "--log-dir", str(log_dir)], environ=environ, cwd=tmp_path).code == 0
    insert(db_path, [dict(c, la_child_id=f"S{n:07d}") for n, c in enumerate(make_children(2, seed=7))])
    dry = run_cli(
        ["run", "--log-dir", str(log_dir), "--dry-run", str(tmp_path / "review")], environ=environ, cwd=tmp_path
    )
    assert dry.code == 0, dry.err
    assert run_cli(["run", "--log-dir", str(log_dir)], environ=environ, cwd=tmp_path).code == 0

    newest = sorted(log_dir.glob("*.report.html"))[-1]
    page = newest.read_text(encoding="utf-8")
    chart = page[page.index("<svg") : page.index("</svg>")]
    assert chart.count("<title>run of ") == 4 and "dry run of" not in chart  # 2 runs x 2 bars
    labels = re.findall(r'class="axis" text-anchor="middle"(?: font-weight="bold")?>([^<]+)</text>', chart)
    labels.remove("this run")
    assert len(labels) == 2 and labels[0] != labels[1]  # same day, told apart by the time
    assert all(re.fullmatch(r"\d{1,2} [A-Z][a-z]{2} \d{2}:\d{2}(:\d{2})?( \(\d\))?", label) for label in labels)
    assert 'class="value"' in chart and ">2</text>" in chart  # the run of 2 beside the run of 300 shows its number
    assert "Dry runs are left out" in page
    dry_report = sorted(log_dir.glob("*.report.html"))[1]
    assert "This dry run, like every dry run, is not in the chart" in dry_report.read_text(encoding="utf-8")


def test_status_on_a_table_lacking_columns_gives_runs_message_and_the_test_schema_hint(simulator, tmp_path):
    import sqlite3

    path = tmp_path / "staging.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE ssd_api_data_staging (id INTEGER PRIMARY KEY, person_id TEXT, json_payload TEXT, "
            "submission_status TEXT, api_response TEXT)"
        )
    status = run_cli(["status"], environ=db_env(path), cwd=tmp_path)
    run = run_cli(["run"], environ=sim_env(simulator, path), cwd=tmp_path)
    assert status.code == run.code == 3
    message = "error: the staging table ssd_api_data_staging lacks required column(s): "
    assert message in status.err and "row_state" in status.err and "(run test-schema for the fix)" in status.err
    assert "no such column" not in status.err
    assert status.err.splitlines()[0] == run.err.splitlines()[0]


def summary_of(log_dir: Path) -> dict:
    (path,) = log_dir.glob("*.summary.json")
    return json.loads(path.read_text(encoding="utf-8"))


def test_a_run_stopped_by_an_unreachable_dfe_counts_every_row_left_unsent(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(5, seed=8)))
    simulator.inject("503", times=50)
    log_dir = tmp_path / "logs"
    result = run_cli(["run", "--log-dir", str(log_dir)], environ=sim_env(simulator, db_path), cwd=tmp_path)
    assert result.code == 5, result.err
    summary = summary_of(log_dir)
    assert summary["stopped_early"] is True and summary["exit_code"] == 5
    assert summary["outcomes"].get("failed") == 5 and summary["outcomes"].get("sent", 0) == 0
    (log_file,) = log_dir.glob("*.log")
    said = "of these: 0 sent, 0 purged, 0 already up to date, 0 invalid, 0 skipped, 0 rejected by DfE, 5 not sent"
    assert said in log_file.read_text(encoding="utf-8")


def test_a_run_stopped_part_way_accounts_for_every_row(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(50, seed=9)))
    simulator.inject("slow", seconds=0)  # the first batch goes through
    simulator.inject("503", times=50)
    log_dir = tmp_path / "logs"
    environ = sim_env(simulator, db_path, BATCH_SIZE="10")
    result = run_cli(["run", "--log-dir", str(log_dir)], environ=environ, cwd=tmp_path)
    assert result.code == 5
    summary = summary_of(log_dir)
    o = summary["outcomes"]
    assert summary["stopped_early"] is True
    assert o["sent"] == 10 and o["failed"] >= 10 and o["not_reached"] > 0
    assert o["sent"] + o["failed"] + o["not_reached"] == 50
    pending = run_cli(["status", "--json", "--log-dir", str(log_dir)], environ=db_env(db_path), cwd=tmp_path)
    assert json.loads(pending.out)["pending"]["rows"] == o["failed"] + o["not_reached"]
    report = next(log_dir.glob("*.report.html")).read_text(encoding="utf-8")
    assert "Not reached before the run stopped" in report


def test_per_batch_times_are_the_time_each_batch_took(simulator, db_path, tmp_path):
    """A batch's time is its own request's, not its wait behind the one before. DfE holds the first
    batch for 3 s and answers the rest at once; the second batch waits behind the first, so
    counting its wait would show it taking about 3 s too. The margin is seconds, not a fraction
    of one: a busy machine does not make a loopback request of two records take that long."""
    insert(db_path, list(make_children(10, seed=10)))
    simulator.inject("slow", seconds=3.0)
    log_dir = tmp_path / "logs"
    environ = sim_env(simulator, db_path, BATCH_SIZE="2", MAX_IN_FLIGHT="1")
    assert run_cli(["run", "--log-dir", str(log_dir)], environ=environ, cwd=tmp_path).code == 0
    (log_file,) = log_dir.glob("*.log")
    times = [float(t) for t in re.findall(r"batch \S+: 2 records: 2 sent \((\d+\.\d+) s\)", log_file.read_text())]
    assert len(times) == 5
    assert times[0] >= 3.0 and all(t < 2.0 for t in times[1:]), times


@pytest.mark.parametrize("fault", ["garbage", "short_receipts"])
def test_a_garbled_200_is_healed_within_the_run_and_pages_nobody(simulator, db_path, tmp_path, fault):
    insert(db_path, list(make_children(6, seed=11)))
    simulator.inject(fault)
    log_dir = tmp_path / "logs"
    result = run_cli(["run", "--log-dir", str(log_dir)], environ=sim_env(simulator, db_path), cwd=tmp_path)
    assert result.code == 0, result.err
    summary = summary_of(log_dir)
    assert summary["outcomes"]["sent"] == 6 and summary["retries"] == {"unusable answer": 1}
    assert len(simulator.snapshot()) == 6


# ---------------------------------------------------------------------------
# Help and the generated reference
# ---------------------------------------------------------------------------


def docgen():
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools" / "docs"))
    import docgen as module

    return module


def flat_keys(value, prefix=""):
    """``a.b``, ``a[].c``: every key path of a JSON document."""
    found = []
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            found.append(path)
            found += flat_keys(item, path)
    elif isinstance(value, list) and value and isinstance(value[0], dict):
        found += flat_keys(value[0], prefix + "[]")
    return found


def test_status_json_keys_are_all_in_the_generated_reference(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(3, seed=12)))
    children = list(make_children(1, seed=13))
    children[0]["la_child_id"] = "X1"
    children[0]["child_details"]["sex"] = "Female"
    insert(db_path, children)
    log_dir = tmp_path / "logs"
    assert run_cli(["run", "--log-dir", str(log_dir)], environ=sim_env(simulator, db_path), cwd=tmp_path).code == 1
    result = run_cli(["status", "--json", "--log-dir", str(log_dir)], environ=db_env(db_path), cwd=tmp_path)
    keys = flat_keys(json.loads(result.out))
    page = docgen().cli_reference()
    section = page[page.index("## `status --json`") : page.index("## Exit codes")]
    documented = re.findall(r"^\| `([^`]+)` \|", section, re.M)
    assert sorted(keys) == sorted(documented)
    status_help = run_cli(["status", "--help"], cwd=tmp_path)
    assert status_help.code == 0


def test_the_generated_reference_lists_set_secrets_names(tmp_path):
    from api_pipeline.cli.credentials import keyring_variables

    page = docgen().cli_reference()
    section = page[page.index("### `set-secret`") :]
    section = section[: section.index("\n### ")] if "\n### " in section else section
    assert "| argument | what it does |" in section
    for name in keyring_variables():
        assert name.replace("_", "\\_") in section


def test_every_command_help_points_at_the_one_exit_code_list(tmp_path, capsys):
    from api_pipeline.cli.parser import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in subparsers.choices.items():
        text = sub.format_help()
        assert "exit codes:" not in text and "The exit codes are listed once, by 'csc-api-pipeline --help'." in text
    assert "exit codes:" in parser.format_help() and "130  interrupted" in parser.format_help()


def test_skip_reasons_say_what_to_install_or_set():
    from conftest import REFERENCE_ENV, reference_missing

    reason = reference_missing("DfE's OpenAPI document")
    assert REFERENCE_ENV in reason and "DFE-Digital/children-in-social-care-schemas" in reason
    assert "data-to-insight/dfe-csc-api-data-flows" in reason
    unexplained = ("shared" + " is absent", "shared folder" + " is absent")  # the old reasons, not spelt out here
    for path in Path(__file__).parent.glob("test_*.py"):
        text = path.read_text(encoding="utf-8")
        assert not any(words in text for words in unexplained), path.name


# ---------------------------------------------------------------------------
# Rehearsal data
# ---------------------------------------------------------------------------

ANON = "ssd_api_data_staging_anon"


def test_init_db_sample_fills_the_table_as_the_councils_sql_would_and_it_sends(simulator, tmp_path):
    import hashlib

    from conftest import Staging

    environ = sim_env(simulator, tmp_path / "rehearsal.db", TABLE_NAME=ANON)
    result = run_cli(["init-db", "--sample", "25"], environ=environ, cwd=tmp_path)
    assert result.code == 0, result.err
    assert f"sample: 25 synthetic children added to {ANON} (person_id C0000001 to C0000025)" in result.out
    staging = Staging("sqlite", f"sqlite:///{(tmp_path / 'rehearsal.db').as_posix()}", ANON)
    with staging.open() as db:
        found = list(
            db.query(
                f"SELECT person_id, legacy_id, json_payload, previous_json_payload, partial_json_payload, "
                f"current_hash, previous_hash, submission_status, row_state, api_response, last_updated FROM {ANON}"
            )
        )
    assert len(found) == 25
    for person, legacy, payload, previous, partial, current, prev_hash, status, state, response, updated in found:
        record = json.loads(payload)
        assert person == record["la_child_id"] and legacy == record["mis_child_id"]
        assert (previous, partial, prev_hash, response) == (None, None, None, None)
        assert (status, state) == ("Pending", "New") and updated
        assert bytes(current) == hashlib.sha256(payload.encode("utf-16-le")).digest()  # HASHBYTES on NVARCHAR

    sent = run_cli(["run"], environ=environ, cwd=tmp_path)
    assert sent.code == 0, sent.err
    assert len(simulator.snapshot()) == 25


def test_init_db_sample_only_into_an_anon_table(simulator, tmp_path):
    environ = sim_env(simulator, tmp_path / "live.db")
    result = run_cli(["init-db", "--sample", "5"], environ=environ, cwd=tmp_path)
    assert result.code == 2
    assert "TABLE_NAME is ssd_api_data_staging, but sample children go only into a rehearsal table" in result.err
    assert "Set TABLE_NAME=ssd_api_data_staging_anon" in result.err
    assert not (tmp_path / "live.db").exists()  # refused before anything was created


def test_init_db_sample_refuses_a_table_with_rows_unless_asked(simulator, tmp_path):
    environ = sim_env(simulator, tmp_path / "rehearsal.db", TABLE_NAME=ANON)
    assert run_cli(["init-db", "--sample", "3"], environ=environ, cwd=tmp_path).code == 0
    again = run_cli(["init-db", "--sample", "3"], environ=environ, cwd=tmp_path)
    assert again.code == 2
    assert f"the table {ANON} already has 3 rows, so no sample children were added" in again.err
    more = run_cli(["init-db", "--sample", "2", "--append"], environ=environ, cwd=tmp_path)
    assert more.code == 0, more.err
    assert "(person_id C0000004 to C0000005)" in more.out
    status = run_cli(["status", "--json"], environ=environ, cwd=tmp_path)
    assert json.loads(status.out)["total_rows"] == 5
    assert run_cli(["init-db", "--append"], environ=environ, cwd=tmp_path).code == 2


def test_init_db_sample_on_postgresql(postgres_odbc, tmp_path):
    import hashlib

    from conftest import Staging, unique_table

    staging = Staging("postgresql", postgres_odbc, unique_table("pg") + "_anon")
    try:
        result = run_cli(["init-db", "--sample", "4"], environ=staging.env, cwd=tmp_path)
        assert result.code == 0, result.err
        with staging.open() as db:
            found = list(db.query(f"SELECT json_payload, current_hash, submission_status FROM {staging.table}"))
        assert len(found) == 4
        assert all(bytes(h) == hashlib.sha256(p.encode("utf-16-le")).digest() and s == "Pending" for p, h, s in found)
    finally:
        staging.drop()


def test_simulate_api_help_names_the_credentials_it_accepts(tmp_path, capsys):
    from api_pipeline.rehearsal.simulator import Simulator

    assert run_cli(["simulate-api", "--help"], cwd=tmp_path).code == 0
    shown = " ".join(capsys.readouterr().out.split())
    sim = Simulator()
    for value in (sim.client_id, sim.client_secret, sim.supplier_key, sim.scope, sim.tenant, sim.la_code):
        assert value in shown, value
    assert "CLIENT_ID" in shown and "SUPPLIER_KEY" in shown and "TOKEN_ENDPOINT" in shown


def test_simulate_api_help_gives_the_simulators_own_addresses(tmp_path, capsys):
    from api_pipeline.rehearsal.simulator import Simulator

    assert run_cli(["simulate-api", "--help"], cwd=tmp_path).code == 0
    shown = "".join(capsys.readouterr().out.split())
    with Simulator(port=0) as sim:
        port = sim.base_url.rsplit(":", 1)[1]
        for name in ("API_ENDPOINT", "TOKEN_ENDPOINT"):
            assert f"{name}={sim.settings_env()[name].replace(port, 'PORT', 1)}" in shown


REHEARSAL = Path(__file__).resolve().parents[1] / "docs" / "rehearsal.md"
FENCE = re.compile(
    r'^(?:=== "(?P<tab>[^"]+)"\n\n)?(?P<indent> *)```(?P<lang>\w+)\n(?P<body>.*?)\n(?P=indent)```', re.M | re.S
)


def rehearsal_steps(tab: str) -> list[tuple[str, str]]:
    """The guide's blocks in order, as (language, text); SQL only from the ``tab`` variant."""
    import textwrap

    steps = []
    for match in FENCE.finditer(REHEARSAL.read_text(encoding="utf-8")):
        if match["lang"] == "sql" and match["tab"] != tab:
            continue
        steps.append((match["lang"], textwrap.dedent(match["indent"] + match["body"])))
    return steps


def walk_the_rehearsal(simulator, folder: Path, tab: str, execute_sql, environ=None) -> list:
    """Follow docs/rehearsal.md: its .env (pointed at this simulator's port), its commands, its SQL."""
    port = simulator.base_url.rsplit(":", 1)[1]
    results = []
    for lang, text in rehearsal_steps(tab):
        if lang == "ini":
            (folder / ".env").write_text(text.replace("127.0.0.1:8765", f"127.0.0.1:{port}") + "\n", encoding="utf-8")
        elif lang == "sql":
            execute_sql(text)
        elif lang == "console":
            for line in text.splitlines():
                argv = line.split()[1:]
                if argv[:1] == ["simulate-api"]:
                    continue  # the test's own simulator stands in for the second window (--state or not)
                result = run_cli(argv, cwd=folder, environ=environ)
                assert result.code == 0, (line, result.out, result.err)
                results.append((argv, result))
    return results


def check_the_rehearsal(simulator, results, log_dir: Path) -> None:
    runs = [r for argv, r in results if argv == ["run"]]
    statuses = [r for argv, r in results if argv == ["status"]]
    assert len(runs) == 2 and len(statuses) == 2
    summaries = [json.loads(p.read_text()) for p in sorted(log_dir.glob("*.summary.json"))]
    first, second = (s["outcomes"] for s in summaries)
    assert first["sent"] == 50
    assert second["sent"] == 2 and second["purged"] == 1 and summaries[1]["rows_read"] == 3
    assert "50 children acknowledged by DfE, 1 purged" in statuses[1].out
    held = simulator.snapshot()
    assert "C0000002" not in held and "C0000051" in held and len(held) == 50
    assert held["C0000001"]["child_details"]["postcode"] == "BN1 1AA"


def test_the_rehearsal_guide_works_as_written_on_sqlite(simulator, tmp_path):
    import sqlite3

    def execute(sql: str) -> None:
        with sqlite3.connect(tmp_path / "rehearsal.db") as conn:
            conn.execute(sql)

    results = walk_the_rehearsal(simulator, tmp_path, "SQLite", execute)
    check_the_rehearsal(simulator, results, tmp_path / "logs")


def test_the_rehearsal_guide_works_as_written_on_postgresql(simulator, postgres_odbc, tmp_path):
    from conftest import Staging, unique_table

    staging = Staging("postgresql", postgres_odbc, unique_table("rh") + "_anon")

    def execute(sql: str) -> None:
        with staging.open() as db, db.transaction():
            db.execute(sql.replace("ssd_api_data_staging_anon", staging.table))

    environ = {"DB_CONNECTION_STRING": postgres_odbc, "TABLE_NAME": staging.table}
    try:
        results = walk_the_rehearsal(simulator, tmp_path, "PostgreSQL", execute, environ=environ)
        check_the_rehearsal(simulator, results, tmp_path / "logs")
    finally:
        staging.drop()


def test_the_rehearsal_guides_sql_server_statements_are_tsql():
    sqlglot = pytest.importorskip("sqlglot")
    from sqlglot import exp
    from sqlglot.errors import ErrorLevel

    statements = [text for lang, text in rehearsal_steps("SQL Server") if lang == "sql"]
    assert len(statements) == 2
    for sql in statements:
        tree = sqlglot.parse_one(sql, read="tsql", error_level=ErrorLevel.RAISE)
        assert not list(tree.find_all(exp.Command)), sql


# ---------------------------------------------------------------------------
# README
# ---------------------------------------------------------------------------

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_readme_lists_every_command():
    from api_pipeline.cli.parser import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    names = {choice.dest for choice in subparsers._choices_actions}
    listed = set(re.findall(r"^\| `([a-z-]+)` \|", README.read_text(encoding="utf-8"), re.M))
    assert names <= listed, sorted(names - listed)


def test_the_readme_says_how_to_install_on_a_fresh_machine():
    text = " ".join(README.read_text(encoding="utf-8").split())
    repo = README.parent
    assert "python3 -m venv .venv && . .venv/bin/activate" in text
    minimum = re.search(r'^requires-python = ">=([\d.]+)"', (repo / "pyproject.toml").read_text(), re.M)
    assert minimum is not None and f"Python {minimum.group(1)} or newer" in text
    workflows = " ".join(p.read_text(encoding="utf-8") for p in (repo / ".github" / "workflows").glob("*.yml"))
    tested = re.search(r"python: \[([^\]]+)\]", workflows)  # the test matrix, whatever its file is called
    assert tested is not None
    versions = [v.strip().strip('"') for v in tested.group(1).split(",")]
    assert f"tested on Python {', '.join(versions[:-1])} and {versions[-1]}" in text
    assert "Node.js and npm" in text and "Chromium" in text
