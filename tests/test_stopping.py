"""Stopped by the system, not by a person (issue 22, item 4; DESIGN §7).

SIGTERM and SIGHUP stop a run as Ctrl+C does: the batch in flight is answered and written back,
no other batch is sent, the summary and report say what stopped it, the run lock is released,
and the exit code is 130. A second signal does not cut that short. Real runs (``python -m
api_pipeline run``) against the real simulator and a SQLite table, signalled while DfE holds a
batch and has not yet answered.

Windows' console events cannot happen on Linux: what is tested here is the part of their
handler that is Python (it names the event and interrupts the main thread as Ctrl+C does), not
its registration with SetConsoleCtrlHandler.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest

from api_pipeline.errors import ExitCode, Interrupted, RunStopped
from api_pipeline.job.batches import hearing_signals
from api_pipeline.job.pipeline import Pipeline
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.demo import check_convergence
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.stopping import CONSOLE_EVENTS, CTRL_BREAK_EVENT, CTRL_C_EVENT, StopRequest, stopping_on_signals
from api_pipeline.store.db import Database
from conftest import TABLE, db_env, insert, rows, run_cli, settings_for

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends POSIX signals")

REPO = Path(__file__).resolve().parents[1]
STOPPED_IN = 60  # seconds: generous; a stopped run waits at most for one answer (here about a second)


def run_env(sim: Simulator, db_path: Path, **extra: str) -> dict[str, str]:
    env = dict(sim.settings_env()) | db_env(db_path) | {"BATCH_SIZE": "20", "LOG_DIR": str(db_path.parent / "logs")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return env | extra


# The signals these tests send. A process inherits a signal set to be ignored: pytest started
# with nohup ignores SIGHUP, and one started in the background by a shell without job control
# ignores SIGINT. A run honours that (test_a_signal_set_to_be_ignored_stays_ignored), so the
# runs here start with each one's default, as from a terminal, and these tests mean the same
# wherever pytest was started.
SENT = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)


def as_from_a_terminal() -> None:
    """In the child before it starts Python: every signal sent here at its default."""
    for signum in SENT:
        signal.signal(signum, signal.SIG_DFL)


@pytest.fixture(autouse=True)
def _signals_at_their_defaults() -> Iterator[None]:
    """The same for the handlers installed in this process by the tests of the stop request."""
    found = {signum: signal.getsignal(signum) for signum in SENT}
    for signum, handler in found.items():
        if handler == signal.SIG_IGN:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    yield
    for signum, handler in found.items():
        signal.signal(signum, handler)


def start(
    env: dict[str, str], cwd: Path, *argv: str, then: Callable[[], object] | None = None, **popen: object
) -> subprocess.Popen:
    """Start a run (or ``argv``) as from a terminal; ``then`` runs in the child after that."""

    def before_python() -> None:
        as_from_a_terminal()
        if then is not None:
            then()

    command = argv or (sys.executable, "-m", "api_pipeline", "run")
    return subprocess.Popen(
        list(command),
        env=os.environ | env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=before_python,
        **popen,
    )


def on_stored_batch(sim: Simulator, monkeypatch: pytest.MonkeyPatch, nth: int, action: Callable[[], None]) -> None:
    """Run ``action`` when DfE (the simulator) has stored the run's ``nth`` batch: the batch is in
    flight, acknowledged by DfE, its answer not yet back (it leaves ``latency`` after it arrived)."""
    store = sim._store_batch
    stored: list[int] = []

    def store_then_act(records: list[dict]) -> list[str]:
        receipts = store(records)
        stored.append(len(records))
        if len(stored) == nth:
            action()
        return receipts

    monkeypatch.setattr(sim, "_store_batch", store_then_act)


def until_the_run_says_it_is_stopping(db_path: Path, reason: str) -> None:
    """Wait, DfE's answer to the batch in flight with it, until the run has logged that it is stopping.

    The run hears a signal once its main thread runs again, which a busy machine may put off
    for longer than DfE takes to answer; its next batch could then go before the stop was
    heard. Holding the answer until the run has said it is stopping tests what happens once it
    has, whatever the machine's speed.
    """
    deadline = time.monotonic() + STOPPED_IN
    while time.monotonic() < deadline:
        for log_file in (db_path.parent / "logs").glob("*.log"):
            if f"{reason}: stopping." in log_file.read_text(encoding="utf-8", errors="replace"):
                return
        time.sleep(0.02)


def posts(sim: Simulator) -> int:
    return sum(1 for entry in sim.request_log() if entry.path.endswith("/children"))


def posts_after(sim: Simulator, moment: float) -> list[tuple[int, int]]:
    """(status, records) of each POST that reached DfE after ``moment`` (wall clock)."""
    return [
        (entry.status, entry.record_count)
        for entry in sim.request_log()
        if entry.path.endswith("/children") and entry.arrived > moment
    ]


def request_history(sim: Simulator) -> list[tuple[str, int, int]]:
    """Every request the simulator saw, for a failure's message: (path's end, status, records)."""
    return [(entry.path.rsplit("/", 1)[-1], entry.status, entry.record_count) for entry in sim.request_log()]


def run_files(db_path: Path) -> tuple[dict, str, str]:
    logs = db_path.parent / "logs"
    (summary,) = logs.glob("*.summary.json")
    (report,) = logs.glob("*.report.html")
    (log_file,) = logs.glob("*.log")
    return (
        json.loads(summary.read_text(encoding="utf-8")),
        report.read_text(encoding="utf-8"),
        log_file.read_text(encoding="utf-8"),
    )


def lock_rows(db_path: Path) -> list[tuple]:
    with sqlite3.connect(db_path) as conn:
        return conn.execute(f"SELECT lock_name, holder FROM {TABLE}_run_lock").fetchall()


def sent_children(db_path: Path) -> set[str]:
    return {r["person_id"] for r in rows(db_path) if r["submission_status"] == "Sent"}


def assert_settled(sim: Simulator, db_path: Path) -> None:
    """Every child DfE holds is marked sent, with what DfE holds; no row is marked sent that DfE lacks."""
    held = sim.snapshot()
    assert sent_children(db_path) == set(held)
    for row in rows(db_path):
        if row["submission_status"] == "Sent":
            assert held[row["person_id"]] == json.loads(row["json_payload"]), row["person_id"]


def assert_a_second_run_converges(sim: Simulator, db_path: Path, env: dict[str, str], children: int) -> None:
    sim.latency = 0.0
    final = subprocess.run(
        [sys.executable, "-m", "api_pipeline", "-q", "run"], env=os.environ | env, cwd=db_path.parent, timeout=300
    )
    assert final.returncode == ExitCode.OK
    assert len(sent_children(db_path)) == children
    with Database.open_sqlite(db_path) as db:
        assert check_convergence(db, TABLE, sim.snapshot()).ok


@pytest.mark.parametrize(
    ("signum", "reason"),
    [(signal.SIGTERM, "SIGTERM"), (signal.SIGHUP, "SIGHUP"), (signal.SIGINT, "Ctrl+C")],
    ids=["SIGTERM", "SIGHUP", "Ctrl+C"],
)
def test_a_signal_mid_run_stops_it_as_ctrl_c_does(db_path, monkeypatch, signum, reason) -> None:
    children = 100
    insert(db_path, list(make_children(children, seed=224)))
    with Simulator(latency=0.5) as sim:
        env = run_env(sim, db_path)
        started = threading.Event()
        procs: list[subprocess.Popen] = []
        signalled: list[float] = []

        def signal_the_run() -> None:
            started.wait(10)
            signalled.append(time.time())
            procs[0].send_signal(signum)
            until_the_run_says_it_is_stopping(db_path, reason)

        on_stored_batch(sim, monkeypatch, 2, signal_the_run)
        procs.append(start(env, db_path.parent))
        started.set()
        err = procs[0].communicate(timeout=STOPPED_IN)[1].decode("utf-8", "replace")

        assert procs[0].returncode == ExitCode.INTERRUPTED == 130, err
        assert err.rstrip().splitlines()[-1] == (
            f"stopped by {reason}: rows not yet acknowledged stay pending and are sent next run"
        )
        assert f"{reason}: stopping." in err  # said at once, before the batch in flight is answered
        # The batch in flight was answered; nothing was sent after the signal.
        assert posts_after(sim, signalled[0]) == [], (request_history(sim), err)
        assert posts(sim) >= 2, (request_history(sim), err)
        assert_settled(sim, db_path)
        assert len(sent_children(db_path)) == 40
        assert lock_rows(db_path) == []
        summary, report, log_text = run_files(db_path)
        assert summary["exit_code"] == 130 and summary["fatal_error"] == f"stopped by {reason}"
        assert summary["stopped_early"] and summary["outcomes"]["sent"] == 40
        assert f"run stopped by {reason}" in log_text
        assert f"stopped by {reason}" in report and "exit code 130" in report
        assert_a_second_run_converges(sim, db_path, env, children)


def test_a_second_signal_while_stopping_does_not_cut_it_short(db_path, monkeypatch) -> None:
    """SIGTERM, then SIGTERM again and Ctrl+C while the batch in flight is still at DfE: the run
    still waits for the answer, writes it back, writes its files and releases the lock."""
    insert(db_path, list(make_children(60, seed=225)))
    with Simulator(latency=2.0) as sim:
        env = run_env(sim, db_path)
        procs: list[subprocess.Popen] = []
        started = threading.Event()

        def signal_three_times() -> None:
            started.wait(10)
            for signum in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                procs[0].send_signal(signum)
                time.sleep(0.2)

        def signal_three_times_and_wait() -> None:
            threading.Thread(target=signal_three_times).start()
            until_the_run_says_it_is_stopping(db_path, "SIGTERM")

        on_stored_batch(sim, monkeypatch, 1, signal_three_times_and_wait)
        procs.append(start(env, db_path.parent))
        started.set()
        err = procs[0].communicate(timeout=STOPPED_IN)[1].decode("utf-8", "replace")
        assert procs[0].returncode == 130, err
        assert "stopped by SIGTERM:" in err and "Traceback" not in err
        assert posts(sim) == 1
        assert_settled(sim, db_path)
        assert len(sent_children(db_path)) == 20
        assert lock_rows(db_path) == []
        summary, _, _ = run_files(db_path)
        assert summary["fatal_error"] == "stopped by SIGTERM"


def test_a_run_waiting_to_retry_stops_at_once(db_path) -> None:
    """DfE asked the run to come back in two minutes (429, Retry-After): SIGTERM ends the wait, and
    no further attempt is made."""
    insert(db_path, list(make_children(20, seed=226)))
    with Simulator() as sim:
        sim.inject("429", times=5, retry_after=120)
        env = run_env(sim, db_path)
        proc = start(env, db_path.parent)
        deadline = time.monotonic() + STOPPED_IN
        while not any(e.status == 429 for e in sim.request_log()):
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        time.sleep(0.3)  # the run has read the answer and is waiting
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        err = proc.communicate(timeout=STOPPED_IN)[1].decode("utf-8", "replace")
        stopped_after = time.monotonic() - signalled
        assert proc.returncode == 130, err
        assert stopped_after < 30  # not the 120 s DfE asked for
        assert posts(sim) == 1 and sent_children(db_path) == set()
        assert {r["submission_status"] for r in rows(db_path)} == {"Pending"}
        assert lock_rows(db_path) == []
        summary, _, _ = run_files(db_path)
        assert summary["fatal_error"] == "stopped by SIGTERM" and summary["outcomes"]["failed"] == 20


def test_batches_in_flight_together_are_all_written_back(simulator, db_path, monkeypatch) -> None:
    """MAX_IN_FLIGHT=4: SIGTERM while four batches are at DfE and the staging table is busy (the
    council's SQL holds a write lock): each of the four is written back once the table is free.
    A write-back waiting its turn used to be cancelled with the batches not yet sent."""
    insert(db_path, list(make_children(200, seed=227)))
    simulator.latency = 0.5
    take = Pipeline._take
    council_sql = threading.Event()

    def hold_the_table() -> None:
        conn = sqlite3.connect(db_path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        council_sql.set()
        time.sleep(1.5)
        conn.execute("COMMIT")
        conn.close()

    def take_then_signal(self, row) -> None:
        if self.summary.rows_read == 45:  # four batches of ten are at DfE (each sent once recorded)
            deadline = time.monotonic() + 10
            while simulator.records_accepted < 40 and time.monotonic() < deadline:
                time.sleep(0.01)
            threading.Thread(target=hold_the_table).start()
            council_sql.wait(10)
            assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)  # else this would end pytest
            os.kill(os.getpid(), signal.SIGTERM)
        take(self, row)

    monkeypatch.setattr(Pipeline, "_take", take_then_signal)
    environ = run_env(simulator, db_path, BATCH_SIZE="10", MAX_IN_FLIGHT="4")
    result = run_cli(["run"], environ=environ, cwd=db_path.parent)
    assert result.code == ExitCode.INTERRUPTED, result.err
    assert posts(simulator) == 4
    assert_settled(simulator, db_path)
    assert len(sent_children(db_path)) == 40
    assert lock_rows(db_path) == []


def test_a_signal_while_the_run_takes_its_lock_leaves_no_lock_behind(simulator, db_path, monkeypatch) -> None:
    """The signal arrives as the lock row is written: it is noted, the lock is taken whole, and the
    run stops as its work would begin, releasing the lock and sending nothing."""
    from api_pipeline.store.lock import RunLock

    insert(db_path, list(make_children(5, seed=228)))
    acquire = RunLock.acquire

    def acquire_then_signal(self) -> None:
        acquire(self)
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
        os.kill(os.getpid(), signal.SIGTERM)  # arrives before acquire() has returned

    monkeypatch.setattr(RunLock, "acquire", acquire_then_signal)
    result = run_cli(["run"], environ=run_env(simulator, db_path), cwd=db_path.parent)
    assert result.code == 130 and "stopped by SIGTERM" in result.err
    assert posts(simulator) == 0 and lock_rows(db_path) == []


# ---------------------------------------------------------------------------
# Where the handlers are, and are not.
# ---------------------------------------------------------------------------


def test_handlers_are_installed_only_while_a_command_runs(simulator, db_path) -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    during: dict[int, object] = {}

    def record(so_far) -> None:
        during.update({s: signal.getsignal(s) for s in before})

    insert(db_path, list(make_children(3, seed=229)))
    summary = execute_run(settings_for(simulator, db_path))
    assert summary.outcomes["sent"] == 3
    assert {s: signal.getsignal(s) for s in before} == before  # the library installs nothing

    insert(db_path, [dict(c, la_child_id=f"H{n}") for n, c in enumerate(make_children(2, seed=230))])
    original = Pipeline._flush

    def flush_and_record(self) -> None:
        record(None)
        original(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Pipeline, "_flush", flush_and_record)
        assert run_cli(["run"], environ=run_env(simulator, db_path), cwd=db_path.parent).code == 0
    assert all(during[s] not in (before[s], signal.SIG_DFL) for s in before)  # the command's own, while it ran
    assert {s: signal.getsignal(s) for s in before} == before  # and the ones found, put back


def test_importing_the_package_installs_no_handler() -> None:
    code = (
        "import signal, api_pipeline.cli.main, api_pipeline.job.runner, api_pipeline.stopping; "
        "print([signal.getsignal(s) == signal.SIG_DFL for s in (signal.SIGTERM, signal.SIGHUP)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert out.strip() == "[True, True]"


def test_a_signal_set_to_be_ignored_stays_ignored(db_path, monkeypatch) -> None:
    """Started with nohup (SIGHUP ignored), a run does not stop on SIGHUP."""
    insert(db_path, list(make_children(40, seed=231)))
    with Simulator(latency=0.3) as sim:
        procs: list[subprocess.Popen] = []
        started = threading.Event()

        def hang_up() -> None:
            started.wait(10)
            procs[0].send_signal(signal.SIGHUP)

        on_stored_batch(sim, monkeypatch, 1, hang_up)
        ignore_hangups = lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN)  # noqa: E731
        procs.append(start(run_env(sim, db_path), db_path.parent, then=ignore_hangups))
        started.set()
        err = procs[0].communicate(timeout=STOPPED_IN)[1].decode("utf-8", "replace")
        assert procs[0].returncode == 0, err
        assert len(sent_children(db_path)) == 40


# ---------------------------------------------------------------------------
# The stop request itself.
# ---------------------------------------------------------------------------


def test_a_signal_another_thread_takes_still_stops_the_main_threads_wait_at_once() -> None:
    """A thread a library started does not block the stop signals, and POSIX may give the signal to
    it; Python then runs the handler only once the main thread runs again. Waiting for a batch in
    short steps (hearing_signals), the main thread hears it at once, not when DfE answers."""
    stop = StopRequest()
    never_answered: Future = Future()
    libraries_thread = threading.Thread(target=time.sleep, args=(5,), daemon=True)
    libraries_thread.start()
    started = time.monotonic()
    with stopping_on_signals(stop), pytest.raises(Interrupted) as caught:
        threading.Timer(0.2, signal.pthread_kill, args=(libraries_thread.ident, signal.SIGTERM)).start()
        hearing_signals(never_answered).result()
    assert caught.value.reason == "SIGTERM"
    assert time.monotonic() - started < 0.2 + 2


def test_the_first_signal_stops_the_main_thread_and_later_ones_are_only_noted() -> None:
    stop = StopRequest()
    with stopping_on_signals(stop), pytest.raises(Interrupted) as caught:
        signal.raise_signal(signal.SIGTERM)
    assert caught.value.reason == "SIGTERM" == stop.reason
    with stopping_on_signals(stop):
        signal.raise_signal(signal.SIGHUP)  # no exception: already stopping
    assert stop.reason == "SIGTERM"


def test_a_stop_in_an_uninterrupted_block_waits_for_the_next_interruptible_one() -> None:
    stop = StopRequest()
    done = []
    with stopping_on_signals(stop), stop.uninterrupted():
        signal.raise_signal(signal.SIGTERM)  # taking the run lock, say: noted, not raised
        done.append("the rest of the block")
        with pytest.raises(Interrupted), stop.interruptible():
            done.append("never")
    assert done == ["the rest of the block"] and stop.reason == "SIGTERM"

    finished = StopRequest()
    with stopping_on_signals(finished):
        finished.finish()  # the work is done: a signal now changes nothing
        signal.raise_signal(signal.SIGTERM)
        with finished.interruptible():
            done.append("after the work")
    assert finished.reason == "SIGTERM" and done[-1] == "after the work"


def test_waits_between_retries_end_when_asked_to_stop() -> None:
    stop = StopRequest()
    stop.sleep(0.01)  # an ordinary wait
    threading.Timer(0.2, stop.note, args=("SIGTERM",)).start()
    started = time.monotonic()
    with pytest.raises(RunStopped, match="stopped by SIGTERM"):
        stop.sleep(60)
    assert time.monotonic() - started < 30
    with pytest.raises(RunStopped):
        stop.check()


def test_windows_console_events_stop_the_run_as_ctrl_c_does(db_path, monkeypatch) -> None:
    """The Python part of the Windows handler, run on a thread as Windows would run it: the
    console window closing stops the run with that reason (ctypes' registration is Windows-only)."""
    insert(db_path, list(make_children(60, seed=232)))
    script = textwrap.dedent(
        """
        import os, sys, threading, time
        from pathlib import Path
        from api_pipeline import stopping
        from api_pipeline.cli import main as cli
        from api_pipeline.settings.context import Context

        trigger = Path(sys.argv[1])
        ctx = Context(environ=os.environ, cwd=Path.cwd(), out=sys.stdout, err=sys.stderr)

        def windows_closes_the_console():
            while not trigger.exists():
                time.sleep(0.01)
            events = object.__new__(stopping._ConsoleEvents)  # as registered, without ctypes
            events.stop = ctx.stop
            assert events._on_event(stopping.CTRL_C_EVENT) is False
            events._on_event(2)  # CTRL_CLOSE_EVENT: never returns

        threading.Thread(target=windows_closes_the_console, daemon=True).start()
        sys.exit(cli.main(["run"], context=ctx))
        """
    )
    trigger = db_path.parent / "close-the-console"
    with Simulator(latency=0.5) as sim:

        def close_the_console() -> None:
            trigger.touch()
            until_the_run_says_it_is_stopping(db_path, "the console window closing")

        on_stored_batch(sim, monkeypatch, 1, close_the_console)
        proc = start(run_env(sim, db_path), db_path.parent, sys.executable, "-c", script, str(trigger))
        err = proc.communicate(timeout=STOPPED_IN)[1].decode("utf-8", "replace")
        assert proc.returncode == 130, err
        assert "stopped by the console window closing:" in err
        assert_settled(sim, db_path)
        assert len(sent_children(db_path)) == 20 and lock_rows(db_path) == []
        summary, _, _ = run_files(db_path)
        assert summary["fatal_error"] == "stopped by the console window closing"


def test_console_events_are_named_and_ctrl_c_is_left_to_the_c_runtime() -> None:
    assert CONSOLE_EVENTS == {
        2: "the console window closing",
        5: "Windows logging off",
        6: "Windows shutting down",
    }
    assert CTRL_C_EVENT not in CONSOLE_EVENTS and CTRL_BREAK_EVENT not in CONSOLE_EVENTS


def test_a_signal_in_the_middle_of_a_transaction_rolls_it_back(staging) -> None:
    """Where a run may be interrupted, its main thread's database work is transactions: a signal
    half way through one leaves nothing of it, and the connection goes on working."""
    stop = StopRequest()
    with staging.open() as db:
        with stopping_on_signals(stop), pytest.raises(Interrupted), db.transaction():
            db.execute(
                f"INSERT INTO {staging.table} (person_id, json_payload, submission_status, row_state) "
                "VALUES (?, ?, ?, ?)",
                ("C1", "{}", "Pending", "New"),
            )
            signal.raise_signal(signal.SIGTERM)
            db.execute(f"UPDATE {staging.table} SET row_state = 'Updated'")
        assert db.scalar(f"SELECT COUNT(*) FROM {staging.table}") == 0
        with db.transaction():
            db.execute(
                f"INSERT INTO {staging.table} (person_id, json_payload, submission_status, row_state) "
                "VALUES (?, ?, ?, ?)",
                ("C2", "{}", "Pending", "New"),
            )
        assert db.scalar(f"SELECT person_id FROM {staging.table}") == "C2"


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_the_runs_own_threads_leave_stopping_signals_to_the_main_thread(simulator, db_path, monkeypatch) -> None:
    """A signal the kernel gives a send or write-back thread would go unheard while the main thread
    waits for a batch, and the next batch could be sent meanwhile: those threads block them."""
    from api_pipeline.dfe.api import ApiClient
    from api_pipeline.job.batches import Batches

    insert(db_path, list(make_children(5, seed=229)))
    masks: dict[str, set[int]] = {}
    send, complete = ApiClient.send, Batches._complete

    def send_noting_the_mask(self, bodies, batch_id):
        masks["send"] = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return send(self, bodies, batch_id)

    def complete_noting_the_mask(self, flight):
        masks["write-back"] = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
        return complete(self, flight)

    monkeypatch.setattr(ApiClient, "send", send_noting_the_mask)
    monkeypatch.setattr(Batches, "_complete", complete_noting_the_mask)
    result = run_cli(["run"], environ=run_env(simulator, db_path), cwd=db_path.parent)
    assert result.code == ExitCode.OK, result.err
    stopping = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    assert stopping <= masks["send"] and stopping <= masks["write-back"]
    assert not stopping & set(signal.pthread_sigmask(signal.SIG_BLOCK, []))  # the main thread hears them
