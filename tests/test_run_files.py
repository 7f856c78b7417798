"""The files a run leaves, and the folder they are in (issue 23, item 7).

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
from datetime import datetime, timezone
from pathlib import Path

import pytest

from api_pipeline import runner
from api_pipeline.errors import ExitCode
from api_pipeline.logs import ERROR_LOG_NAME
from api_pipeline.runs import (
    LOG_SUFFIX,
    REPORT_SUFFIX,
    RUN_FILE_PREFIX,
    SUMMARY_SUFFIX,
    create_private,
    replace_private,
)
from api_pipeline.simulator import Simulator
from api_pipeline.synthetic import make_children
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
