"""MAX_IN_FLIGHT and MIN_REQUEST_INTERVAL_MS against the real simulator."""

from __future__ import annotations

import json
import threading

import pytest

from api_pipeline.dfe.api import ApiClient, Pacer
from api_pipeline.dfe.auth import ClientCredentialsAuth
from api_pipeline.dfe.payload import records_equal
from api_pipeline.dfe.transport import make_session
from api_pipeline.errors import ExitCode, PipelineError
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.demo import check_convergence
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from conftest import TABLE, encoded, insert, rows, settings_for


class SleepingClock:
    """A monotonic clock that only sleeping moves: the requests themselves take no time on it.

    Spacing measured on it is the spacing the client decided, however slowly a busy machine
    ran the requests and however late they reached the simulator.
    """

    def __init__(self) -> None:
        self.now = 1000.0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += max(0.0, seconds)


class RecordingPacer(Pacer):
    """The client's pacer, noting the start it gives each request (read under its lock)."""

    def __init__(self, pacer: Pacer) -> None:
        super().__init__(pacer.interval, clock=pacer.clock, sleep=pacer.sleep)
        self.starts: list[float] = []
        self._noting = threading.Lock()

    def wait_turn(self) -> float:
        start = super().wait_turn()
        with self._noting:
            self.starts.append(start)
        return start


def paced_client(sim: Simulator, db_path, clock: SleepingClock, **env: str) -> tuple[ApiClient, RecordingPacer]:
    settings = settings_for(sim, db_path, **env)
    session = make_session(settings)
    auth = ClientCredentialsAuth.from_settings(settings, session, clock=clock, sleep=clock.sleep)
    client = ApiClient(settings, session, auth, sleep=clock.sleep, clock=clock)
    client.pacer = RecordingPacer(client.pacer)
    return client, client.pacer


def gaps(starts: list[float]) -> list[float]:
    ordered = sorted(starts)
    return [b - a for a, b in zip(ordered, ordered[1:], strict=False)]


def spaced(starts: list[float], interval: float) -> bool:
    """Every gap at least ``interval``, give or take floating point's last digit."""
    return all(gap >= interval - 1e-9 for gap in gaps(starts))


def posts(sim: Simulator) -> int:
    return sum(1 for e in sim.request_log() if e.path.endswith("/children"))


def test_batches_in_flight_together_converge(db_path, monkeypatch):
    """MAX_IN_FLIGHT=4: the first two batches to reach DfE are each held there until the other has
    arrived, which only a client with batches in flight together can bring about (measured by
    what DfE saw, not by how long anything took)."""
    insert(db_path, list(make_children(160, seed=80)))
    together = threading.Barrier(2, timeout=5)
    first_two: list[str] = []  # each batch by its first child: a batch sent again is the same batch
    noting = threading.Lock()
    with Simulator() as sim:
        store = sim._store_batch

        def store_waiting_for_a_second(records: list[dict]) -> list[str]:
            with noting:
                batch = records[0]["la_child_id"]
                waits = len(first_two) < 2 and batch not in first_two
                if waits:
                    first_two.append(batch)
            if waits:  # the first two batches to reach DfE: each waits for the other
                together.wait()  # BrokenBarrierError, a 500 to the client, if no second batch comes
            return store(records)

        monkeypatch.setattr(sim, "_store_batch", store_waiting_for_a_second)
        summary = execute_run(settings_for(sim, db_path, BATCH_SIZE="20", MAX_IN_FLIGHT="4"))
        assert not together.broken, "the second batch never reached DfE while the first was there"
        assert summary.outcomes["sent"] == 160 and summary.batches == 8 and summary.problems == 0
        with Database.open_sqlite(db_path) as db:
            assert check_convergence(db, TABLE, sim.snapshot()).ok


def test_a_fatal_error_in_flight_keeps_the_other_batches_acknowledgements(db_path):
    insert(db_path, list(make_children(100, seed=81)))
    with Simulator(latency=0.05) as sim:
        sim.inject("503", times=3)
        try:
            execute_run(
                settings_for(sim, db_path, BATCH_SIZE="10", MAX_IN_FLIGHT="3", MAX_RETRIES="0"), sleep=lambda s: None
            )
        except PipelineError as exc:
            assert exc.exit_code == ExitCode.API
        held = sim.snapshot()
        for row in rows(db_path):
            if row["submission_status"] == "Sent":
                assert records_equal(held.get(row["person_id"]), json.loads(row["json_payload"]))
        sim.clear_faults()
        execute_run(settings_for(sim, db_path, BATCH_SIZE="10", MAX_IN_FLIGHT="3"))
        with Database.open_sqlite(db_path) as db:
            assert check_convergence(db, TABLE, sim.snapshot()).ok


def test_min_request_interval_spaces_requests(simulator, db_path):
    """The pacing of request starts, on the client's clock: the time the simulator spends
    answering does not enter, and the first request's token fetch happens before its pause."""
    clock = SleepingClock()
    client, pacer = paced_client(simulator, db_path, clock, MIN_REQUEST_INTERVAL_MS="150")
    for n, batch in enumerate(chunks(list(make_children(50, seed=82)), 10)):
        assert all(o.acknowledged for o in client.send(encoded(batch), f"b{n}"))
    assert posts(simulator) == len(pacer.starts) == 5
    assert spaced(pacer.starts, 0.15), gaps(pacer.starts)
    assert max(pacer.starts) - min(pacer.starts) == pytest.approx(4 * 0.15)  # and no more than asked


def test_min_request_interval_spaces_retries_and_in_flight_batches(simulator, db_path):
    """Three send threads at once, as MAX_IN_FLIGHT=3 runs them, two of whose requests DfE answers
    503 and which are retried: every start is at least MIN_REQUEST_INTERVAL_MS after the last."""
    clock = SleepingClock()
    client, pacer = paced_client(simulator, db_path, clock, MIN_REQUEST_INTERVAL_MS="120", MAX_RETRIES="3")
    simulator.inject("503", times=2)
    batches = list(chunks(list(make_children(60, seed=83)), 10))
    outcomes: list[bool] = []

    def send_every_third(first: int) -> None:
        for n in range(first, len(batches), 3):
            outcomes.extend(o.acknowledged for o in client.send(encoded(batches[n]), f"b{n}"))

    threads = [threading.Thread(target=send_every_third, args=(first,)) for first in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert outcomes.count(True) == 60
    assert posts(simulator) == len(pacer.starts) == 8  # six batches and two retried 503s
    assert spaced(pacer.starts, 0.12), gaps(pacer.starts)


def test_a_run_with_batches_in_flight_retries_and_pacing_sends_everything(simulator, db_path):
    """The same settings through a whole run (its spacing is the client's, proved above)."""
    insert(db_path, list(make_children(60, seed=83)))
    simulator.inject("503", times=2)
    summary = execute_run(
        settings_for(simulator, db_path, BATCH_SIZE="10", MAX_IN_FLIGHT="3", MIN_REQUEST_INTERVAL_MS="20")
    )
    assert summary.outcomes["sent"] == 60
    assert posts(simulator) == 8  # six batches and two retried 503s
    with Database.open_sqlite(db_path) as db:
        assert check_convergence(db, TABLE, simulator.snapshot()).ok


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]
