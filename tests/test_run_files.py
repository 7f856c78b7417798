"""The files a run leaves, and the folder they are in (issue 23, items 5 and 7).

Item 5: run files are ordered and pruned by the start time recorded in each summary, never by
their names; the current run's files are never removed; a summary dated in the future (a clock
that ran fast, or a file put there by someone who can write to the log folder) is flagged by
``status``, and neither it nor its kind crowds real runs out of ``status`` or the report's chart.

Item 7: a link planted where the tool writes (a run's log, summary or report, the temporary
file a summary or report is written to, a dry-run file, the error log) is never written
through: new files are made exclusively, files are replaced by renaming within their folder,
and a linked error log is refused with a warning. What a usage error writes is the owner's alone.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from api_pipeline.errors import ExitCode
from api_pipeline.job import runner
from api_pipeline.job.logs import ERROR_LOG_NAME
from api_pipeline.job.run_files import (
    KEEP_RUNS,
    LOG_SUFFIX,
    REPORT_SUFFIX,
    RUN_FILE_PREFIX,
    SUMMARY_SUFFIX,
    create_private,
    prune_run_files,
    read_summaries,
    replace_private,
)
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from conftest import db_env, insert, run_cli

POSIX_MODES = pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes; Windows keeps its own ACLs")
LINKS = pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="needs symbolic links")
VICTIM_TEXT = "a file outside the log folder that the tool must never touch\n"


def run_id_at(moment: datetime, suffix: str = "0a0a0a") -> str:
    """A run id as :func:`runs.new_run_id` makes them, for ``moment``."""
    return f"{moment:%Y%m%dT%H%M%S}.{moment.microsecond // 1000:03d}Z-{suffix}"


def stamp(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def plant_run(log_dir: Path, run_id: str, started: datetime | None, *, summary: bool = True) -> list[Path]:
    """A run's log, summary and report as a run leaves them; ``started`` None: a summary without a start time."""
    log_dir.mkdir(parents=True, exist_ok=True)
    stem = log_dir / f"{RUN_FILE_PREFIX}{run_id}"
    made = [stem.with_name(stem.name + LOG_SUFFIX)]
    made[0].write_text(f"run {run_id} started\n", encoding="utf-8")
    if summary:
        data = {"run_id": run_id, "mode": "partial", "dry_run": False, "outcomes": {"sent": 7}, "exit_code": 0}
        if started is not None:
            data["started_at"] = stamp(started)
        made.append(stem.with_name(stem.name + SUMMARY_SUFFIX))
        made[-1].write_text(json.dumps(data), encoding="utf-8")
        made.append(stem.with_name(stem.name + REPORT_SUFFIX))
        made[-1].write_text("<html></html>\n", encoding="utf-8")
    return made


def set_mtime(paths: list[Path], moment: datetime) -> None:
    for path in paths:
        os.utime(path, (moment.timestamp(), moment.timestamp()))


def run_ids_in(log_dir: Path) -> set[str]:
    return {
        p.name[len(RUN_FILE_PREFIX) :].split("Z-", 1)[0]
        for p in log_dir.iterdir()
        if p.name.startswith(RUN_FILE_PREFIX) and p.name.endswith(LOG_SUFFIX)
    }


# ---------------------------------------------------------------------------
# Item 5: ordered by the time inside, never by name.
# ---------------------------------------------------------------------------


def test_thirty_runs_dated_a_year_ahead_neither_prune_nor_hide_a_failing_run(db_path: Path) -> None:
    """The case the issue found: 30 run files named (and dated) a year ahead, then a run that fails.

    Before: pruning at start-up deleted the run's own log (its name sorted last), and ``status``,
    ``status --json`` and the report's chart listed only the future runs.
    """
    log_dir = db_path.parent / "logs"
    now = datetime.now(timezone.utc)
    for n in range(KEEP_RUNS):
        ahead = now + timedelta(days=365, minutes=n)
        plant_run(log_dir, run_id_at(ahead, f"f{n:05x}"), ahead)
    children = list(make_children(3, seed=2305))
    children[1]["child_details"]["sex"] = "Zqxmarkersex"  # too long: invalid, so the run fails (exit 1)
    insert(db_path, children)

    with Simulator() as sim:
        environ = sim.settings_env() | db_env(db_path)
        result = run_cli(["run"], environ=environ, cwd=db_path.parent)
        assert result.code == ExitCode.RECORDS_FAILED, result.err[-2000:]
        status_text = run_cli(["status"], environ=environ, cwd=db_path.parent)
        status_json = run_cli(["status", "--json"], environ=environ, cwd=db_path.parent)

    (log_file,) = [p for p in log_dir.glob(f"{RUN_FILE_PREFIX}{now:%Y}*{LOG_SUFFIX}")]
    run_id = log_file.name[len(RUN_FILE_PREFIX) : -len(LOG_SUFFIX)]
    assert "started" in log_file.read_text(encoding="utf-8")  # its log was kept, and holds the whole run
    assert "invalid" in log_file.read_text(encoding="utf-8")
    assert (log_dir / f"{RUN_FILE_PREFIX}{run_id}{SUMMARY_SUFFIX}").is_file()
    report = (log_dir / f"{RUN_FILE_PREFIX}{run_id}{REPORT_SUFFIX}").read_text(encoding="utf-8")

    assert status_text.code == ExitCode.OK and status_json.code == ExitCode.OK
    lines = status_text.out.splitlines()
    (heading,) = [i for i, line in enumerate(lines) if line.startswith("Last ") and "run" in line]
    assert lines[heading].startswith("Last 1 run ")  # only the one real run, not the 30 planted ones
    assert lines[heading + 2].lstrip().startswith(f"{now:%Y-%m-%d}")
    assert f"{now.year + 1}-" not in "\n".join(lines[heading : heading + 3])
    left = KEEP_RUNS - 1  # the run's own files and the newest of the others are kept: the future ones go first
    assert len(list(log_dir.glob(f"{RUN_FILE_PREFIX}{now.year + 1}*{SUMMARY_SUFFIX}"))) == left
    assert f"Warning: {left} run summaries are dated in the future" in status_text.out

    document = json.loads(status_json.out)["runs"]
    assert [r["run_id"] for r in document["recent"]] == [run_id]
    assert document["dated_in_future"]["summaries"] == left
    assert len(document["dated_in_future"]["run_ids"]) == 10  # as many as status --runs shows (10)

    assert "The last run" in report and f"{now.year + 1}-" not in report.split("The last run", 1)[1]


def test_pruning_keeps_the_newest_runs_by_the_time_inside_and_the_current_run(tmp_path: Path) -> None:
    """Names that sort the other way round from the times inside; a summary without a time and a
    log without a summary (a run killed, or still going) are dated by their files' time."""
    log_dir = tmp_path / "logs"
    now = datetime.now(timezone.utc).replace(microsecond=0)
    by_age: list[str] = []  # newest first, by the time inside
    for n in range(KEEP_RUNS + 5):
        started = now - timedelta(hours=n + 1)
        name_time = datetime(2020, 1, 1, tzinfo=timezone.utc) + timedelta(hours=n)  # older name, newer time
        run_id = run_id_at(name_time, f"{n:06x}")
        set_mtime(plant_run(log_dir, run_id, started), now - timedelta(days=30))
        by_age.append(run_id)
    no_time = run_id_at(datetime(2019, 1, 1, tzinfo=timezone.utc), "aaaaaa")
    set_mtime(plant_run(log_dir, no_time, None), now - timedelta(minutes=90))  # between the 1st and the 2nd
    killed = run_id_at(datetime(2019, 1, 2, tzinfo=timezone.utc), "bbbbbb")
    set_mtime(plant_run(log_dir, killed, None, summary=False), now - timedelta(days=400))  # the oldest of all
    ahead = now + timedelta(days=365)
    future = run_id_at(ahead, "cccccc")
    set_mtime(plant_run(log_dir, future, ahead), now)  # dated a year ahead: pruned first
    current = run_id_at(datetime(2018, 1, 1, tzinfo=timezone.utc), "dddddd")
    set_mtime(plant_run(log_dir, current, None, summary=False), now - timedelta(days=500))  # as old as can be

    prune_run_files(log_dir, current=log_dir / f"{RUN_FILE_PREFIX}{current}{LOG_SUFFIX}")

    kept = [by_age[0], no_time, *by_age[1 : KEEP_RUNS - 2]]  # and the current run: KEEP_RUNS in all
    assert {run_id.split("Z-", 1)[0] for run_id in [*kept, current]} == run_ids_in(log_dir)
    for run_id in kept:  # every file of a kept run is kept with it
        for suffix in (LOG_SUFFIX, SUMMARY_SUFFIX, REPORT_SUFFIX):
            assert (log_dir / f"{RUN_FILE_PREFIX}{run_id}{suffix}").exists()
    assert not list(log_dir.glob(f"*{future}*")) and not list(log_dir.glob(f"*{killed}*"))


def test_summaries_dated_in_the_future_are_read_apart_from_the_real_ones(tmp_path: Path) -> None:
    now = datetime.now(timezone.utc)
    real = [run_id_at(now - timedelta(days=d), f"{d:06x}") for d in (3, 1, 2)]
    for day, run_id in zip((3, 1, 2), real, strict=True):
        plant_run(tmp_path, run_id, now - timedelta(days=day))
    ahead = [run_id_at(now + timedelta(days=400 + d), f"f{d:05x}") for d in range(5)]
    for d, run_id in enumerate(ahead):
        plant_run(tmp_path, run_id, now + timedelta(days=400 + d))
    found = read_summaries(tmp_path, 2)
    assert [s["run_id"] for s in found.recent] == [real[1], real[2]]  # newest first, the future left apart
    assert [s["run_id"] for s in found.in_future] == [ahead[4], ahead[3]]
    assert found.in_future_total == 5 and found.skipped == []


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes (FIFOs)")
def test_a_pipe_or_a_link_where_a_summary_belongs_is_skipped_not_waited_on(tmp_path: Path) -> None:
    """Pruning at start-up now reads summaries: a named pipe there must not hang every run."""
    now = datetime.now(timezone.utc)
    plant_run(tmp_path, run_id_at(now, "aaaaaa"), now)
    pipe = tmp_path / f"{RUN_FILE_PREFIX}{run_id_at(now, 'bbbbbb')}{SUMMARY_SUFFIX}"
    os.mkfifo(pipe)
    elsewhere = tmp_path.parent / f"{tmp_path.name}-elsewhere.json"
    elsewhere.write_text(json.dumps({"run_id": "x", "started_at": stamp(now)}), encoding="utf-8")
    (tmp_path / f"{RUN_FILE_PREFIX}{run_id_at(now, 'cccccc')}{SUMMARY_SUFFIX}").symlink_to(elsewhere)
    outcome: list[object] = []

    def read_and_prune() -> None:
        outcome.append(read_summaries(tmp_path, 10))
        prune_run_files(tmp_path)

    worker = threading.Thread(target=read_and_prune, daemon=True)
    worker.start()
    worker.join(20)
    assert not worker.is_alive(), "reading the run summaries waited on a named pipe"
    (found,) = outcome
    assert [s["run_id"] for s in found.recent] == [run_id_at(now, "aaaaaa")]  # type: ignore[attr-defined]
    assert len(found.skipped) == 2  # type: ignore[attr-defined]
    assert elsewhere.exists()


# ---------------------------------------------------------------------------
# Item 7: planted links are never written through.
# ---------------------------------------------------------------------------


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside every folder the tool writes to, readable by all (0644) as most files are."""
    path = tmp_path / "outside" / "victim.txt"
    path.parent.mkdir()
    path.write_text(VICTIM_TEXT, encoding="utf-8")
    path.chmod(0o644)
    return path


def assert_untouched(victim: Path) -> None:
    assert victim.read_text(encoding="utf-8") == VICTIM_TEXT
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


PLANTED = {
    "summary": "{log_dir}/csc_api_pipeline_{run_id}.summary.json",
    "summary being written": "{log_dir}/csc_api_pipeline_{run_id}.summary.json.tmp",
    "report": "{log_dir}/csc_api_pipeline_{run_id}.report.html",
    "report being written": "{log_dir}/csc_api_pipeline_{run_id}.report.html.tmp",
    "log": "{log_dir}/csc_api_pipeline_{run_id}.log",
    "dry-run file": "{review}/batch_{run_id}-00001.json",
    "dry-run file being written": "{review}/batch_{run_id}-00001.json.tmp",
}


@LINKS
@pytest.mark.parametrize("where", PLANTED)
def test_a_link_planted_where_a_run_writes_is_not_written_through(
    where: str, db_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """The run's id is fixed here so that the link can be planted at its files' names in advance."""
    run_id = run_id_at(datetime.now(timezone.utc), "5e1f1e")
    monkeypatch.setattr(runner, "new_run_id", lambda: run_id)
    log_dir, review = db_path.parent / "logs", db_path.parent / "review"
    for folder in (log_dir, review):
        folder.mkdir(mode=0o700)
    link = Path(PLANTED[where].format(log_dir=log_dir, review=review, run_id=run_id))
    link.symlink_to(victim)
    insert(db_path, list(make_children(3, seed=2307)))
    with Simulator() as sim:
        environ = sim.settings_env() | db_env(db_path)
        result = run_cli(["run", "--dry-run", str(review)], environ=environ, cwd=db_path.parent)
    assert result.code == ExitCode.OK, result.err[-2000:]
    assert_untouched(victim)
    assert json.loads((log_dir / f"{RUN_FILE_PREFIX}{run_id}{SUMMARY_SUFFIX}").read_text(encoding="utf-8"))
    assert list(review.glob("batch_*.json"))
    if where == "log":
        assert f"the log file {link} was there before this run" in capfd.readouterr().err
    assert not [p for p in [*log_dir.iterdir(), *review.iterdir()] if p.is_symlink() and p != link]


@LINKS
def test_a_linked_error_log_is_refused_with_a_warning(tmp_path: Path, victim: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir(mode=0o700)
    (logs / ERROR_LOG_NAME).symlink_to(victim)
    result = run_cli(["run", "--limit", "many"], environ={}, cwd=tmp_path)
    assert result.code == ExitCode.USAGE
    assert_untouched(victim)
    assert f"warning: {logs / ERROR_LOG_NAME} is a link" in result.err
    assert "Traceback" not in result.err


@POSIX_MODES
def test_a_usage_error_leaves_its_trace_for_the_owner_alone(tmp_path: Path) -> None:
    previous = os.umask(0o022)  # the usual default, which would make them readable by everyone
    try:
        result = run_cli(["run", "--limit", "many"], environ={}, cwd=tmp_path)
    finally:
        os.umask(previous)
    assert result.code == ExitCode.USAGE
    assert stat.S_IMODE((tmp_path / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "logs" / ERROR_LOG_NAME).stat().st_mode) == 0o600


@POSIX_MODES
def test_an_error_log_from_an_earlier_version_is_made_the_owners_alone(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / ERROR_LOG_NAME).write_text("2026-01-01 00:00:00 UTC\nerror: an earlier one\n", encoding="utf-8")
    (logs / ERROR_LOG_NAME).chmod(0o644)
    assert run_cli(["run", "--limit", "many"], environ={}, cwd=tmp_path).code == ExitCode.USAGE
    assert stat.S_IMODE((logs / ERROR_LOG_NAME).stat().st_mode) == 0o600
    assert "an earlier one" in (logs / ERROR_LOG_NAME).read_text(encoding="utf-8")


@LINKS
def test_a_new_private_file_is_never_made_through_a_link(tmp_path: Path, victim: Path) -> None:
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    linked = tmp_path / "linked"
    linked.symlink_to(victim)
    for link in (dangling, linked):
        with pytest.raises(FileExistsError):
            create_private(link)
    assert not (tmp_path / "nowhere").exists()
    assert_untouched(victim)


@LINKS
def test_a_replaced_file_replaces_the_link_not_what_it_points_to(tmp_path: Path, victim: Path) -> None:
    target = tmp_path / "csc_api_pipeline_x.summary.json"
    target.symlink_to(victim)
    replace_private(target, '{"exit_code": 0}')
    assert not target.is_symlink() and json.loads(target.read_text(encoding="utf-8")) == {"exit_code": 0}
    assert_untouched(victim)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["csc_api_pipeline_x.summary.json", "outside"]
