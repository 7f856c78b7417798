"""Issue 22.3: run lock ages by the database's clock, with machines' clocks really wrong.

Each run under test is ``python -m api_pipeline run`` in a process of its own whose clock
libfaketime moves (LD_PRELOAD), against PostgreSQL (whose server clock is the real one)
and SQLite. The run id in the lock's holder, and the run summary, are the child's own
clock speaking: every test checks from them that the clock really was off, so none can
pass because libfaketime did nothing. The other run, with the real clock, is this process.

Skips without libfaketime (Debian: ``apt-get install faketime``), except where
CSC_TEST_FAKETIME_REQUIRED is set (.ci/run installs it and sets it): there it fails.

Scenario (a), a run whose clock is slow keeps its lock, runs on PostgreSQL only: SQLite
has no server, so its times are those of the process that runs the statement, and a
process with a faked clock writes faked times. (On a real machine every run on a SQLite
file, which lives on that machine's disk, shares the one clock.)
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from api_pipeline.errors import DatabaseError, ExitCode
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from conftest import Staging, run_cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libfaketime is for Linux")

REQUIRED_ENV = "CSC_TEST_FAKETIME_REQUIRED"
# The multi-threaded build: a run reads the clock from several threads at once.
LIBRARY_PATTERNS = (
    "/usr/lib/*/faketime/libfaketimeMT.so.1",
    "/usr/lib/faketime/libfaketimeMT.so.1",
    "/usr/local/lib/faketime/libfaketimeMT.so.1",
)
SLOW = timedelta(hours=-2)
FAST = timedelta(days=2)
# `python -m api_pipeline run` with the heartbeat spaced out by BEAT_EVERY seconds (the first
# argument) instead of a minute, so a test sees a few of them in seconds.
QUICK_BEATS = (
    "import runpy, sys; from datetime import timedelta; import api_pipeline.store.lock as lock; "
    "lock.BEAT_EVERY = timedelta(seconds=float(sys.argv.pop(1))); "
    "runpy.run_module('api_pipeline', run_name='__main__', alter_sys=True)"
)


@pytest.fixture
def libfaketime() -> str:
    found = sorted(path for pattern in LIBRARY_PATTERNS for path in glob.glob(pattern))
    if not found:
        reason = (
            "libfaketime is not installed (Debian: apt-get install faketime), so the run lock's tests with a "
            "machine clock hours off cannot run"
        )
        if os.environ.get(REQUIRED_ENV):
            pytest.fail(reason)
        pytest.skip(reason)
    return found[0]


def real_utc() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Child:
    """``python -m api_pipeline run`` in a process of its own, with its clock faked."""

    def __init__(
        self,
        staging: Staging,
        simulator: Simulator,
        folder: Path,
        library: str,
        clock: dict[str, str],
        *,
        beat_every: float | None = None,
    ) -> None:
        folder.mkdir()
        self.folder = folder
        self.staging = staging
        self.log_dir = folder / "logs"
        environ = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FAKETIME")}
        environ |= simulator.settings_env() | staging.env
        environ |= {"BATCH_SIZE": "1", "LOG_DIR": str(self.log_dir), "LD_PRELOAD": library} | clock
        argv = [sys.executable, "-m", "api_pipeline", "run"]
        if beat_every is not None:
            argv = [sys.executable, "-c", QUICK_BEATS, str(beat_every), "run"]
        self._out = (folder / "stdout").open("wb")
        self._err = (folder / "stderr").open("wb")
        self.process = subprocess.Popen(argv, env=environ, cwd=folder, stdout=self._out, stderr=self._err)

    @property
    def pid(self) -> int:
        return self.process.pid

    def stderr(self) -> str:
        self._err.flush()
        return (self.folder / "stderr").read_text(errors="replace")

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        self.close()

    def close(self) -> None:
        self._out.close()
        self._err.close()

    def wait_for_lock(self, timeout: float = 60) -> str:
        """The lock row's holder once this run has taken the lock."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            holder = lock_holder(self.staging)
            if holder is not None and f" pid {self.pid} run " in holder:
                return holder
            if self.process.poll() is not None:
                pytest.fail(f"the run ended (exit {self.process.returncode}) before taking the lock:\n{self.stderr()}")
            time.sleep(0.05)
        pytest.fail(f"the run did not take the lock in {timeout} s:\n{self.stderr()}")

    def summary(self) -> dict[str, Any]:
        (path,) = self.log_dir.glob("*.summary.json")
        return json.loads(path.read_text(encoding="utf-8"))


def lock_holder(staging: Staging) -> str | None:
    with staging.open() as db:
        try:
            return db.scalar(f"SELECT holder FROM {staging.table}_run_lock")
        except DatabaseError:  # no lock table yet: the run makes it
            return None


def heartbeat(staging: Staging) -> tuple[Any, float | None]:
    """The lock row's heartbeat as stored and, on PostgreSQL, its age by the server's clock (worked
    out here, not by the code under test). ValueError once the lock row is gone."""
    now = "(clock_timestamp() AT TIME ZONE 'UTC')" if staging.kind == "postgresql" else "NULL"
    with staging.open() as db:
        ((stored, server_now),) = db.fetch_all(f"SELECT heartbeat_at, {now} FROM {staging.table}_run_lock")
    return stored, None if server_now is None else (server_now - stored).total_seconds()


def run_id_time(holder: str) -> datetime:
    """When the holder's run started by its own clock: its run id begins with it."""
    match = re.search(r" run (\d{8}T\d{6}\.\d{3})Z-", holder)
    assert match, holder
    return datetime.strptime(match[1], "%Y%m%dT%H%M%S.%f")


def assert_clock_off(seen: datetime, by: timedelta, real: datetime) -> None:
    """libfaketime really moved the child's clock: what it saw is ``by`` away from the real time."""
    assert abs(seen - real - by) < timedelta(minutes=2), f"the child's clock said {seen}, the real one {real}"


def last_active(message: str) -> int:
    match = re.search(r"last active (-?\d+) s ago", message)
    assert match, message
    return int(match[1])


def parent_log(folder: Path) -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in sorted(folder.glob("*.log")))


def test_a_run_whose_clock_is_slow_keeps_its_lock(postgres_table: Staging, libfaketime: str, tmp_path: Path):
    """Issue 22.3: a run on a machine whose clock was 2 h slow had its live lock taken over ("last
    active 7204 s ago") and both sent. Its heartbeat is now the server's time: the second run refuses."""
    staging = postgres_table
    staging.insert(list(make_children(6, seed=2231)))
    with Simulator(latency=1.0) as simulator:
        slow = Child(staging, simulator, tmp_path / "slow", libfaketime, {"FAKETIME": "-2h"})
        try:
            holder = slow.wait_for_lock()
            assert_clock_off(run_id_time(holder), SLOW, real_utc())
            environ = simulator.settings_env() | staging.env | {"LOG_DIR": str(tmp_path / "logs")}
            second = run_cli(["run"], environ=environ, cwd=tmp_path)
            assert slow.process.poll() is None, "the slow run was not busy any more: the check proves nothing"
            code = slow.wait()
        finally:
            slow.kill()
        assert second.code == ExitCode.RUN_IN_PROGRESS == 6, second.err
        assert f"another run is already working on {staging.table}" in second.err
        assert 0 <= last_active(second.err) < 60
        assert code == 0, slow.stderr()
        # Every child was sent once, by the slow run alone.
        posts = [e for e in simulator.request_log() if e.path.endswith("/children")]
        assert sum(e.record_count for e in posts) == 6
    assert {row["submission_status"] for row in staging.rows()} == {"Sent"}


def test_a_lock_left_by_a_run_whose_clock_is_fast_expires_by_the_database_clock(
    staging: Staging, libfaketime: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Issue 22.3: a lock left by a machine whose clock was 2 days fast blocked every run for 2 days,
    "last active -172800 s ago". The run that finds it sees a sane age and takes it over once it has
    been silent for stale_after by the database's clock."""
    staging.insert(list(make_children(8, seed=2232)))
    with Simulator(latency=1.0) as simulator:
        fast = Child(staging, simulator, tmp_path / "fast", libfaketime, {"FAKETIME": "+2d"})
        try:
            holder = fast.wait_for_lock()
        finally:
            fast.kill()  # killed while it held the lock
        assert_clock_off(run_id_time(holder), FAST, real_utc())
        with staging.open() as db, db.transaction():  # as if on another machine: no process to look for
            db.execute(f"UPDATE {staging.table}_run_lock SET holder = ?", ("otherhost pid 1 run fast-clock",))
        environ = simulator.settings_env() | staging.env | {"LOG_DIR": str(tmp_path / "logs")}

        first = run_cli(["run"], environ=environ, cwd=tmp_path)
        assert first.code == ExitCode.RUN_IN_PROGRESS, first.err
        assert 0 <= last_active(first.err) < 60
        ahead = re.search(r"(\d+) s ahead of the database's clock", first.err)
        if staging.kind == "sqlite":  # the fast run wrote its own clock's time: counted from now
            assert ahead and abs(int(ahead[1]) - FAST.total_seconds()) < 120, first.err
        else:  # PostgreSQL's clock wrote it
            assert ahead is None, first.err

        stale_after = timedelta(seconds=3)
        monkeypatch.setattr("api_pipeline.store.lock.DEFAULT_STALE_AFTER", stale_after)
        time.sleep(stale_after.total_seconds() + 0.5)
        second = run_cli(["run"], environ=environ, cwd=tmp_path)
        assert second.code == 0, second.err
    took_over = re.search(r"took over the run lock on .*last active (-?\d+) s ago", parent_log(tmp_path / "logs"))
    assert took_over, parent_log(tmp_path / "logs")
    assert stale_after.total_seconds() <= int(took_over[1]) < 120
    assert {row["submission_status"] for row in staging.rows()} == {"Sent"}


def test_heartbeats_go_on_when_the_clock_is_put_back(staging: Staging, libfaketime: str, tmp_path: Path):
    """Issue 22.3: heartbeats were spaced out by the machine's clock, so a clock put back 2 h
    mid-run silenced the run for 2 h, and its live lock looked abandoned. They are spaced out by
    a monotonic clock now, which never goes back (real machines' do not; libfaketime's stays
    real with FAKETIME_DONT_FAKE_MONOTONIC)."""
    clock_file = tmp_path / "faketime"
    clock_file.write_text("+0\n")
    # libfaketime rereads the file every second. FAKETIME_DONT_FAKE_MONOTONIC also makes its
    # time.sleep fail (libfaketime 0.9.10, wolfcw/libfaketime#426), which a run going well never calls.
    clock = {
        "FAKETIME_TIMESTAMP_FILE": str(clock_file),
        "FAKETIME_CACHE_DURATION": "1",
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }
    staging.insert(list(make_children(12, seed=2233)))
    with Simulator(latency=0.5) as simulator:
        child = Child(staging, simulator, tmp_path / "child", libfaketime, clock, beat_every=0.5)
        try:
            child.wait_for_lock()
            clock_file.write_text("-2h\n")
            time.sleep(1.5)  # the child has read the file again
            after_the_step = []
            while child.process.poll() is None:
                try:
                    after_the_step.append(heartbeat(staging))
                except ValueError:  # released as the run ended
                    break
                time.sleep(0.2)
            code = child.wait()
        finally:
            child.kill()
    assert code == 0, child.stderr()
    # The clock was put back: the run ended, by its own clock, before it started.
    summary = child.summary()
    started = datetime.fromisoformat(summary["started_at"].rstrip("Z"))
    finished = datetime.fromisoformat(summary["finished_at"].rstrip("Z"))
    assert_clock_off(finished, SLOW, started)
    # The heartbeat was written again and again after the clock went back.
    written = {stored for stored, _ in after_the_step}
    assert len(after_the_step) >= 5 and len(written) >= 3, after_the_step
    if staging.kind == "postgresql":  # by the server's clock, which did not go back: the lock stayed fresh
        assert max(age or 0 for _, age in after_the_step) < 5, after_the_step
