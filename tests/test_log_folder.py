"""A run's result is its own, not its log folder's (issue 22, item 2; DESIGN §7).

A log folder that fills up or turns read-only part way through a run costs the run what it
cannot write there, the log file, summary or report, each with one warning on stderr: the exit
code, the rows and DfE are as they would have been. Summaries and reports are written whole or
not at all, so ``status`` never finds an empty or half-written one.

The mid-run tests give the log folder a small filesystem of its own: a tmpfs for a full disk,
and an ext4 image that the kernel turns read-only on an error, as it does on a failing disk.
Mounting needs root on Linux; without it they skip and say why, and with
CSC_TEST_MOUNT_REQUIRED set (CI runs as root) they fail instead.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from api_pipeline.errors import ExitCode
from api_pipeline.job.logs import LOGGER_NAME, RunLogFile, close_logging, configure_logging
from api_pipeline.job.report import write_report
from api_pipeline.job.run_files import RunSummary, replace_private, summary_path_for
from api_pipeline.rehearsal.demo import check_convergence
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from conftest import TABLE, db_env, insert, rows, run_cli

MOUNT_REQUIRED = "CSC_TEST_MOUNT_REQUIRED"
LOG_WARNING = "could not write the log file in"


def unavailable(why: str) -> NoReturn:
    if os.environ.get(MOUNT_REQUIRED):
        pytest.fail(f"{why} ({MOUNT_REQUIRED} is set)")
    pytest.skip(why)


def need_root_mount() -> None:
    if sys.platform != "linux" or os.geteuid() != 0:
        unavailable("needs root on Linux, to mount a small filesystem of its own as the log folder")


def run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=False)


@pytest.fixture
def tmpfs_logs(tmp_path: Path) -> Iterator[Path]:
    """A log folder on a 2 MB tmpfs of its own."""
    need_root_mount()
    folder = tmp_path / "logs"
    folder.mkdir()
    mounted = run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "csc-test-logs", str(folder)])
    if mounted.returncode:
        unavailable(f"could not mount a tmpfs for the log folder: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        run(["umount", "--lazy", str(folder)])


@pytest.fixture
def ext4_logs(tmp_path: Path) -> Iterator[tuple[Path, Callable[[], None]]]:
    """A log folder on a small ext4 image mounted with errors=remount-ro, and what makes the kernel
    turn it read-only (an ext4 error, as a failing disk gives): open files and new ones alike fail."""
    need_root_mount()
    if shutil.which("mkfs.ext4") is None:
        unavailable("mkfs.ext4 (e2fsprogs) is not installed")
    image, folder = tmp_path / "logs.img", tmp_path / "logs"
    folder.mkdir()
    with open(image, "wb") as handle:
        handle.truncate(8 * 1024 * 1024)
    made = run(["mkfs.ext4", "-q", "-F", str(image)])
    if made.returncode:
        unavailable(f"mkfs.ext4 failed: {made.stderr.strip()}")
    mounted = run(["mount", "-o", "loop,errors=remount-ro", str(image), str(folder)])
    if mounted.returncode:
        unavailable(f"could not mount an ext4 image (loop device) for the log folder: {mounted.stderr.strip()}")
    try:
        device = run(["findmnt", "-n", "-o", "SOURCE", str(folder)]).stdout.strip()
        trigger = Path("/sys/fs/ext4") / Path(device).name / "trigger_fs_error"
        if not trigger.exists():
            unavailable(f"this kernel has no {trigger} to turn the filesystem read-only with")

        def turn_read_only() -> None:
            trigger.write_text("csc-api-pipeline test: the log folder fails\n", encoding="utf-8")

        yield folder, turn_read_only
    finally:
        run(["umount", "--lazy", str(folder)])


def fill(folder: Path) -> None:
    """Take every free byte of the filesystem that ``folder`` is on."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError:
            return


def after_the_first_batch(simulator: Simulator, monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run ``action`` once DfE (the simulator) has stored the run's first batch, before it answers."""
    store = simulator._store_batch
    done: list[bool] = []

    def store_then_act(records: list[dict]) -> list[str]:
        receipts = store(records)
        if not done:
            done.append(True)
            action()
        return receipts

    monkeypatch.setattr(simulator, "_store_batch", store_then_act)


def start_run(simulator: Simulator, db_path: Path, logs: Path) -> tuple[int, str]:
    """``run -v`` (many lines, so the log outgrows what its file has room for) with the log folder ``logs``."""
    environ = dict(simulator.settings_env()) | db_env(db_path) | {"BATCH_SIZE": "5", "LOG_DIR": str(logs)}
    result = run_cli(["run", "-v"], environ=environ, cwd=db_path.parent)
    return result.code, result.err


def assert_run_converged(simulator: Simulator, db_path: Path, children: int) -> None:
    assert [r["submission_status"] for r in rows(db_path)] == ["Sent"] * children
    with Database.open_sqlite(db_path) as db:
        assert check_convergence(db, TABLE, simulator.snapshot()).ok


def assert_nothing_partial(folder: Path) -> None:
    """No empty or half-written summary or report, and no temporary file, in the log folder."""
    for path in folder.iterdir():
        assert not path.name.endswith(".tmp"), path.name
        if path.name.endswith(".summary.json"):
            assert json.loads(path.read_text(encoding="utf-8"))["exit_code"] == 0, path.name
        if path.name.endswith(".report.html"):
            assert path.read_text(encoding="utf-8").rstrip().endswith("</html>"), path.name


def assert_one_warning_and_no_tracebacks(console: str, folder: Path, reason: str) -> None:
    assert "Logging error" not in console and "Traceback" not in console, console[-3000:]
    warnings = [line for line in console.splitlines() if LOG_WARNING in line]
    assert len(warnings) == 1, warnings
    assert f"{LOG_WARNING} {folder} ({reason})" in warnings[0]


def test_a_log_folder_that_fills_mid_run_changes_nothing_but_the_files(
    simulator: Simulator, db_path: Path, tmpfs_logs: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    children = 200
    insert(db_path, list(make_children(children, seed=221)))
    after_the_first_batch(simulator, monkeypatch, lambda: fill(tmpfs_logs))
    code, err = start_run(simulator, db_path, tmpfs_logs)
    console = capfd.readouterr().err + err
    assert code == ExitCode.OK, console[-3000:]
    assert_run_converged(simulator, db_path, children)
    assert_one_warning_and_no_tracebacks(console, tmpfs_logs, "No space left on device")
    assert "could not write the run summary" in console and "could not write the run report" in console
    assert_nothing_partial(tmpfs_logs)
    assert not list(tmpfs_logs.glob("*.summary.json")) and not list(tmpfs_logs.glob("*.report.html"))
    (log_file,) = tmpfs_logs.glob("*.log")  # what was written before the disk filled is kept
    assert log_file.read_text(encoding="utf-8").splitlines()[0].endswith("started (partial mode)")


def test_a_log_folder_freed_again_gets_its_summary_and_report_whole(
    simulator: Simulator, db_path: Path, tmpfs_logs: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """Full for most of the run, then room again (another program's files deleted): the log file
    stays stopped, but the summary and report are written, whole, and say the run went well."""
    children = 60
    insert(db_path, list(make_children(children, seed=222)))
    sent = []

    def fill_then_free(records: list[dict]) -> list[str]:
        receipts = store(records)
        sent.append(len(records))
        if len(sent) == 1:
            fill(tmpfs_logs)
        if len(sent) == children // 5:
            (tmpfs_logs / "filler").unlink()
        return receipts

    store = simulator._store_batch
    monkeypatch.setattr(simulator, "_store_batch", fill_then_free)
    code, err = start_run(simulator, db_path, tmpfs_logs)
    console = capfd.readouterr().err + err
    assert code == ExitCode.OK, console[-3000:]
    assert_run_converged(simulator, db_path, children)
    assert_one_warning_and_no_tracebacks(console, tmpfs_logs, "No space left on device")
    assert "could not write the run summary" not in console and "could not write the run report" not in console
    assert_nothing_partial(tmpfs_logs)
    (summary_file,) = tmpfs_logs.glob("*.summary.json")
    assert json.loads(summary_file.read_text(encoding="utf-8"))["outcomes"]["sent"] == children


def test_a_log_folder_that_turns_read_only_mid_run_changes_nothing_but_the_files(
    simulator: Simulator, db_path: Path, ext4_logs, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    folder, turn_read_only = ext4_logs
    children = 200
    insert(db_path, list(make_children(children, seed=223)))
    after_the_first_batch(simulator, monkeypatch, turn_read_only)
    code, err = start_run(simulator, db_path, folder)
    console = capfd.readouterr().err + err
    assert code == ExitCode.OK, console[-3000:]
    assert_run_converged(simulator, db_path, children)
    assert_one_warning_and_no_tracebacks(console, folder, "Read-only file system")
    assert "could not write the run summary" in console and "could not write the run report" in console
    assert_nothing_partial(folder)
    assert not list(folder.glob("*.summary.json")) and not list(folder.glob("*.report.html"))


def test_a_run_that_fails_keeps_its_own_exit_code_when_the_log_folder_fills(
    simulator: Simulator, db_path: Path, tmpfs_logs: Path, monkeypatch: pytest.MonkeyPatch, capfd
) -> None:
    """The exit code is the run's, whatever it is: here DfE stops answering (5), and the folder is full."""
    insert(db_path, list(make_children(40, seed=224)))

    def fill_and_fail() -> None:
        fill(tmpfs_logs)
        simulator.inject("503", times=1000)

    after_the_first_batch(simulator, monkeypatch, fill_and_fail)
    environ = (
        dict(simulator.settings_env())
        | db_env(db_path)
        | {"BATCH_SIZE": "5", "LOG_DIR": str(tmpfs_logs), "MAX_RETRIES": "0"}
    )
    result = run_cli(["run", "-v"], environ=environ, cwd=db_path.parent)
    console = capfd.readouterr().err + result.err
    assert result.code == ExitCode.API, console[-3000:]
    assert "Logging error" not in console and "Traceback" not in console
    assert_nothing_partial(tmpfs_logs)


# ---------------------------------------------------------------------------
# The parts, without mounting anything.
# ---------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full, whose every write fails as a full disk")
def test_the_log_file_says_once_that_it_cannot_be_written_and_the_console_goes_on(capfd) -> None:
    configure_logging()
    handler = RunLogFile(Path("/dev/full"))
    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(handler)
    try:
        for n in range(30):
            logger.info("batch %d: 100 records, sent 100", n)
    finally:
        close_logging()  # closes the handler too: lines it held are dropped, not raised
    console = capfd.readouterr().err
    assert handler.failure == "No space left on device"
    assert "Logging error" not in console and "Traceback" not in console
    assert console.count(LOG_WARNING) == 1 and "(No space left on device)" in console
    assert console.count("batch ") == 30  # every line still reached the console


def test_a_summary_that_cannot_be_put_in_place_leaves_nothing_behind(tmp_path: Path) -> None:
    target = tmp_path / "csc_api_pipeline_x.summary.json"
    replace_private(target, '{"exit_code": 0}')
    assert json.loads(target.read_text(encoding="utf-8")) == {"exit_code": 0}
    if os.name == "posix":
        assert target.stat().st_mode & 0o777 == 0o600
    blocked = tmp_path / "csc_api_pipeline_y.summary.json"
    blocked.mkdir()  # a folder in the way: the rename fails
    (blocked / "keep").write_text("x", encoding="utf-8")
    with pytest.raises(OSError):
        replace_private(blocked, '{"exit_code": 0}')
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name, blocked.name]


def test_the_report_is_written_from_the_run_even_without_its_summary_file(tmp_path: Path) -> None:
    summary = RunSummary(run_id="20260301T020000.000Z-abcdef", mode="partial", exit_code=0)
    summary.outcomes["sent"] = 12
    summary_path = summary_path_for(tmp_path / "csc_api_pipeline_20260301T020000.000Z-abcdef.log")
    report = write_report(summary_path, summary.to_dict())
    page = report.read_text(encoding="utf-8")
    assert not summary_path.exists()
    assert "finished normally" in page and "(this run)" in page
