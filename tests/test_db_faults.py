"""The database connection lost mid-run (DESIGN §7, §10): the run stops with exit 3 and nothing is
marked wrongly; the next run finishes the job. Against a real PostgreSQL server through ODBC: the
run's own server session is terminated between two batches, as a server restart would."""

from __future__ import annotations

import json

from api_pipeline.errors import ExitCode, PipelineError
from api_pipeline.payload import records_equal
from api_pipeline.runner import execute_run
from api_pipeline.staging import StagingTable
from api_pipeline.synthetic import make_children
from conftest import rows, settings_for


def test_connection_lost_mid_run_stops_with_exit_3_and_nothing_wrongly_marked(simulator, postgres_table):
    postgres_table.insert(list(make_children(40, seed=90)))
    settings = settings_for(simulator, postgres_table, BATCH_SIZE="10")
    real_write_back = StagingTable.write_back
    written: list[int] = []

    def write_back_then_lose_the_server(self: StagingTable, updates, ledger, **doubt) -> int:
        skipped = real_write_back(self, updates, ledger, **doubt)
        if not ledger:
            return skipped  # a batch's children recorded before it is sent
        written.append(len(updates))
        if len(written) == 1:  # the first batch is written; then the server drops the session
            backend = self.db.scalar("SELECT pg_backend_pid()")
            with postgres_table.open() as other:
                other.scalar("SELECT pg_terminate_backend(?)", (backend,))
        return skipped

    StagingTable.write_back = write_back_then_lose_the_server  # type: ignore[method-assign]
    try:
        execute_run(settings)
        raise AssertionError("the run should have stopped")
    except PipelineError as exc:
        assert exc.exit_code == ExitCode.DATABASE
    finally:
        StagingTable.write_back = real_write_back  # type: ignore[method-assign]

    held = simulator.snapshot()
    statuses = [row["submission_status"] for row in rows(postgres_table)]
    assert statuses.count("Sent") == 10  # the first batch, written before the connection went
    for row in rows(postgres_table):
        if row["submission_status"] == "Sent":
            assert records_equal(held.get(row["person_id"]), json.loads(row["json_payload"]))
    # DfE may have acknowledged later batches that the table could not record: sent again.
    summary = execute_run(settings)
    assert summary.outcomes["sent"] == 30 and summary.problems == 0
    assert {row["submission_status"] for row in rows(postgres_table)} == {"Sent"}
