"""Fault matrix: every fault the simulator can inject, against the real pipeline and SQLite.

After each faulty run: every row's status is truthful (a row is Sent only if DfE holds
exactly its record), the outcome maps to the right exit code, and once the fault is
gone a second run converges.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from api_pipeline.dfe.payload import records_equal
from api_pipeline.errors import ExitCode, PipelineError
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.demo import check_convergence
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from api_pipeline.store.lock import RunLock
from conftest import TABLE, insert, rows, run_cli, settings_for

N = 30


class Waits(list):
    """Stands in for time.sleep: records each wait instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def run_once(sim, db_path, waits, **env):
    """One run; returns (exit code, summary or None)."""
    try:
        summary = execute_run(settings_for(sim, db_path, BATCH_SIZE="10", **env), sleep=waits)
    except PipelineError as exc:
        return exc.exit_code, None
    return (ExitCode.RECORDS_FAILED if summary.problems else ExitCode.OK), summary


def assert_truthful(sim, db_path) -> None:
    held = sim.snapshot()
    for row in rows(db_path):
        if (row["submission_status"] or "").lower() == "sent":
            assert records_equal(held.get(row["person_id"]), json.loads(row["json_payload"])), row["person_id"]
            assert row["api_response"] and row["submission_timestamp"]


def assert_converges(sim, db_path) -> None:
    code, summary = run_once(sim, db_path, Waits())
    assert code == ExitCode.OK
    with Database.open_sqlite(db_path) as db:
        result = check_convergence(db, TABLE, sim.snapshot())
    assert result.ok, result.mismatched[:5]
    assert all(r["submission_status"] == "Sent" for r in rows(db_path))


# fault, times, extra settings, expected exit code, expected retry cause (or None)
MATRIX = [
    ("429", 2, {}, ExitCode.OK, "429"),
    ("500", 3, {"MAX_RETRIES": "5"}, ExitCode.OK, "500"),
    ("503", 1, {}, ExitCode.OK, "503"),
    ("503", 10, {"MAX_RETRIES": "2"}, ExitCode.API, "503"),
    ("slow", 1, {"HTTP_TIMEOUT": "0.5"}, ExitCode.OK, "timeout"),
    ("drop", 2, {}, ExitCode.OK, "connection reset"),
    ("garbage", 1, {}, ExitCode.OK, "unusable answer"),
    ("short_receipts", 1, {}, ExitCode.OK, "unusable answer"),
    ("garbage", 5, {"MAX_RETRIES": "1"}, ExitCode.RECORDS_FAILED, "unusable answer"),
    ("expire_tokens", 1, {}, ExitCode.OK, "401"),
    ("403", 10, {}, ExitCode.API, "403"),
    ("413", 1, {}, ExitCode.OK, None),
]


@pytest.mark.parametrize("fault,times,env,expected,cause", MATRIX, ids=[f"{m[0]}x{m[1]}" for m in MATRIX])
def test_fault_matrix(simulator, db_path, fault, times, env, expected, cause):
    insert(db_path, list(make_children(N, seed=50)))
    params = {"retry_after": 2} if fault == "429" else {"seconds": 1.5} if fault == "slow" else {}
    simulator.inject(fault, times=times, **params)
    waits = Waits()
    code, summary = run_once(simulator, db_path, waits, **env)
    assert code == expected
    assert_truthful(simulator, db_path)
    if summary is not None and cause is not None:
        assert summary.retries.get(cause, 0) >= 1, summary.retries
    if fault == "429":
        assert 2 in waits  # Retry-After honoured
    if fault == "garbage" and times > 1:  # past the retries: nobody in the garbled batches is Sent
        assert summary is not None and summary.outcomes["failed"] > 0
    simulator.clear_faults()
    assert_converges(simulator, db_path)


def test_token_renewed_mid_run(simulator, db_path):
    insert(db_path, list(make_children(N, seed=51)))
    simulator.inject("expire_tokens", times=1)
    code, summary = run_once(simulator, db_path, Waits())
    assert code == ExitCode.OK and summary.outcomes["sent"] == N
    assert simulator.token_requests == 2


def test_wrong_secret_is_an_auth_error_and_nothing_changes(simulator, db_path):
    insert(db_path, list(make_children(5, seed=52)))
    code, _ = run_once(simulator, db_path, Waits(), CLIENT_SECRET="not-the-secret")
    assert code == ExitCode.AUTH
    assert {r["submission_status"] for r in rows(db_path)} == {"Pending"}
    assert simulator.snapshot() == {}


def test_acknowledged_batches_are_kept_when_a_later_batch_fails(simulator, db_path):
    insert(db_path, list(make_children(N, seed=53)))
    waits = Waits()
    # First batch goes through (a "slow" of 0 s is a normal answer); then the API fails for good.
    simulator.inject("slow", seconds=0)
    simulator.inject("503", times=20)
    simulator.latency = 0.2  # long enough for the third batch to be queued behind the second
    code, _ = run_once(simulator, db_path, waits, MAX_RETRIES="1")
    simulator.latency = 0.0
    assert code == ExitCode.API
    statuses = [r["submission_status"] for r in rows(db_path)]
    assert statuses.count("Sent") == 10 and statuses.count("Pending") == 20
    # One request at a time: once the second batch failed for good, the third (prepared while
    # the second was being sent) was never sent.
    posts = [r for r in simulator.request_log() if r.method == "POST" and r.path.endswith("/children")]
    assert [r.status for r in posts] == [200, 503, 503]
    assert_truthful(simulator, db_path)
    simulator.clear_faults()
    assert_converges(simulator, db_path)


def test_max_runtime_stops_cleanly_between_batches(simulator, db_path):
    insert(db_path, list(make_children(N, seed=54)))
    code, summary = run_once(simulator, db_path, Waits(), MAX_RUNTIME="0.001s")
    assert code == ExitCode.RECORDS_FAILED and summary.stopped_early
    assert summary.outcomes["sent"] == 10  # one batch, then the deadline
    assert_truthful(simulator, db_path)
    assert_converges(simulator, db_path)


# -- single run per table -----------------------------------------------------------------


def test_second_run_refuses_while_a_live_run_holds_the_lock(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(3, seed=55)))
    other = None
    with Database.open_sqlite(db_path) as db:
        other = RunLock(db, TABLE, run_id="other")
        other.holder = live_holder("other")  # another process on this machine that is still running
        other.acquire()
        environ = dict(simulator.settings_env()) | {"DB_CONNECTION_STRING": f"sqlite:///{db_path}"}
        result = run_cli(["run"], environ=environ, cwd=tmp_path)
        other.release()
    assert result.code == ExitCode.RUN_IN_PROGRESS == 6
    assert "another run is already working on ssd_api_data_staging" in result.err
    assert simulator.request_log() == []
    assert run_cli(["run"], environ=environ, cwd=tmp_path).code == 0  # released on exit


def live_holder(run_id: str) -> str:
    """A lock holder that is a live process on this machine, other than this one (our parent)."""
    import os
    import socket

    return f"{socket.gethostname()} pid {os.getppid()} run {run_id}"


def test_stale_lock_is_taken_over(db_path):
    with Database.open_sqlite(db_path) as db:
        crashed = RunLock(db, TABLE, run_id="crashed")
        crashed.holder = "some-other-host pid 1 run crashed"
        crashed.acquire()
        with db.transaction():  # its last sign of life, 61 minutes ago by the database's clock
            db.execute(
                f"UPDATE {TABLE}_run_lock SET heartbeat_at = strftime('%Y-%m-%d %H:%M:%f', 'now', '-61 minutes')"
            )
        taker = RunLock(db, TABLE, run_id="next")
        taker.holder = live_holder("next")
        taker.acquire()
        with pytest.raises(PipelineError, match=r"last active 0 s ago"):
            RunLock(db, TABLE, run_id="third").acquire()


def test_lock_of_a_dead_process_on_this_machine_is_taken_over_at_once(db_path):
    import socket

    with Database.open_sqlite(db_path) as db:
        dead = RunLock(db, TABLE, run_id="killed")
        dead.holder = f"{socket.gethostname()} pid 999999 run killed"
        dead.acquire()
        RunLock(db, TABLE, run_id="next").acquire()


def test_heartbeat_is_written_at_most_once_a_minute(db_path):
    """Spaced out by a monotonic clock (here one moved by hand); what is written is the database's time."""
    from api_pipeline.store.lock import BEAT_EVERY

    ticks = [1000.0]
    with Database.open_sqlite(db_path) as db:
        lock = RunLock(db, TABLE, run_id="beats", monotonic=lambda: ticks[0])
        lock.acquire()
        long_ago = "2000-01-01 00:00:00.000"

        def stored() -> str:
            ((beat,),) = db.query(f"SELECT heartbeat_at FROM {TABLE}_run_lock")
            return str(beat)

        with db.transaction():
            db.execute(f"UPDATE {TABLE}_run_lock SET heartbeat_at = ?", (long_ago,))
        ticks[0] += BEAT_EVERY.total_seconds() / 2
        lock.heartbeat()  # too soon: no write, no commit
        assert stored() == long_ago
        ticks[0] += BEAT_EVERY.total_seconds()
        lock.heartbeat()
        written = datetime.fromisoformat(stored())
        assert abs(written - datetime.now(timezone.utc).replace(tzinfo=None)) < timedelta(seconds=5)
        lock.release()


# -- test and live receivers ----------------------------------------------------------------

LIVE = "https://api.example.invalid/children-in-social-care-data-receiver/1"


def test_live_receiver_needs_explicit_permission(simulator, db_path, tmp_path):
    insert(db_path, list(make_children(2, seed=56)))
    environ = dict(simulator.settings_env()) | {"DB_CONNECTION_STRING": f"sqlite:///{db_path}", "API_ENDPOINT": LIVE}
    refused = run_cli(["run"], environ=environ, cwd=tmp_path)
    assert refused.code == ExitCode.USAGE
    assert "--live" in refused.err and "ALLOW_LIVE" in refused.err
    assert simulator.token_requests == 0


def test_anon_table_never_goes_live(simulator, tmp_path):
    environ = dict(simulator.settings_env()) | {
        "DB_CONNECTION_STRING": f"sqlite:///{tmp_path / 'x.db'}",
        "API_ENDPOINT": LIVE,
        "TABLE_NAME": "ssd_api_data_staging_anon",
        "ALLOW_LIVE": "true",
    }
    refused = run_cli(["run", "--live"], environ=environ, cwd=tmp_path)
    assert refused.code == ExitCode.USAGE and "_anon" in refused.err
    assert not (tmp_path / "x.db").exists()  # refused before any connection was opened


def test_test_receiver_and_simulator_need_no_permission(simulator):
    from api_pipeline.settings.config import load_settings

    base = dict(simulator.settings_env()) | {"DB_CONNECTION_STRING": "sqlite:///x.db"}
    assert load_settings(command="run", environ=base).is_test_receiver
    test_url = "https://pp-api.example.invalid/children-in-social-care-data-receiver-test/1"
    assert load_settings(command="run", environ=base | {"API_ENDPOINT": test_url}).is_test_receiver
    assert not load_settings(command="run", environ=base | {"API_ENDPOINT": LIVE}).is_test_receiver
