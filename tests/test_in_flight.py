"""MAX_IN_FLIGHT and MIN_REQUEST_INTERVAL_MS against the real simulator."""

from __future__ import annotations

import json

from api_pipeline.db import Database
from api_pipeline.demo import check_convergence
from api_pipeline.errors import ExitCode, PipelineError
from api_pipeline.payload import records_equal
from api_pipeline.runner import execute_run
from api_pipeline.simulator import Simulator
from api_pipeline.synthetic import make_children
from conftest import TABLE, insert, rows, settings_for


def receiver_times(sim) -> list[float]:
    return sorted(e.at for e in sim.request_log() if e.path.endswith("/children") and e.status == 200)


def assert_spaced(arrivals: list[float], interval: float) -> None:
    """The client spaces the starts of its requests; the simulator sees them arrive with some
    scheduling jitter, which cancels out over the whole run but not in a single gap."""
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) >= interval - 0.05, gaps
    assert arrivals[-1] - arrivals[0] >= (len(arrivals) - 1) * interval - 0.03, gaps


def test_batches_in_flight_together_converge(db_path):
    insert(db_path, list(make_children(160, seed=80)))
    with Simulator(latency=0.3) as sim:
        summary = execute_run(settings_for(sim, db_path, BATCH_SIZE="20", MAX_IN_FLIGHT="4"))
        assert summary.outcomes["sent"] == 160 and summary.batches == 8 and summary.problems == 0
        times = receiver_times(sim)
        # Sequential requests would finish at least 0.3 s apart; in flight together, some finish together.
        assert min(b - a for a, b in zip(times, times[1:], strict=False)) < 0.15
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
    insert(db_path, list(make_children(50, seed=82)))
    execute_run(settings_for(simulator, db_path, BATCH_SIZE="10", MIN_REQUEST_INTERVAL_MS="150"))
    # Arrival times: the pacing is of request starts, so the time the simulator spends answering
    # does not enter, and the first request's token fetch happens before its pause.
    arrivals = sorted(e.arrived for e in simulator.request_log() if e.path.endswith("/children"))
    assert len(arrivals) == 5
    assert_spaced(arrivals, 0.15)


def test_min_request_interval_spaces_retries_and_in_flight_batches(simulator, db_path):
    insert(db_path, list(make_children(60, seed=83)))
    simulator.inject("503", times=2)
    summary = execute_run(
        settings_for(simulator, db_path, BATCH_SIZE="10", MAX_IN_FLIGHT="3", MIN_REQUEST_INTERVAL_MS="120")
    )
    assert summary.outcomes["sent"] == 60
    arrivals = sorted(e.arrived for e in simulator.request_log() if e.path.endswith("/children"))
    assert len(arrivals) == 8  # six batches and two retried 503s
    assert_spaced(arrivals, 0.12)
