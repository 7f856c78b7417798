"""Crash safety (DESIGN §7): SIGKILL a real `run` process at random moments, then finish.

After every kill, no row may show Sent unless the simulator holds exactly that record;
after a final run to completion, DfE's view equals the staging table.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from api_pipeline.dfe.payload import records_equal
from api_pipeline.rehearsal.demo import apply_nightly_changes, check_convergence
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from conftest import TABLE, db_env, insert, ledger, rows

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses SIGKILL")

CHILDREN = 2000
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_run(env: dict[str, str], cwd) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "api_pipeline", "-q", "run"],
        env=os.environ | env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def assert_no_false_sent(sim: Simulator, db_path) -> int:
    """Sent rows hold what DfE holds; a purge the ledger records as acknowledged really happened.

    A deleted row's status says nothing about its purge (the council's SQL leaves it alone), and
    a purge DfE acknowledged just before the kill may not be in the ledger yet: it is sent again
    next run, which is harmless. So for deleted rows only the ledger's word is checked.
    """
    held = sim.snapshot()
    purged = {child for child, entry in ledger(db_path).items() if entry["purged"]}
    assert not purged & set(held)
    sent = 0
    for row in rows(db_path):
        if (row["submission_status"] or "").lower() == "sent":
            if (row["row_state"] or "").lower() != "deleted":
                assert records_equal(held.get(row["person_id"]), json.loads(row["json_payload"])), row["person_id"]
            sent += 1
    return sent


def kill_loop(sim, db_path, tmp_path, env, rng, kills=4) -> list[int]:
    progress = []
    for _ in range(kills):
        proc = start_run(env, tmp_path)
        time.sleep(rng.uniform(0.8, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        progress.append(assert_no_false_sent(sim, db_path))
    return progress


def test_sigkill_at_random_moments_loses_nothing(db_path, tmp_path):
    rng = random.Random(2026)
    insert(db_path, list(make_children(CHILDREN, seed=60)))
    with Simulator(latency=0.05, keep_request_bodies=False) as sim:
        env = dict(sim.settings_env()) | db_env(db_path) | {"BATCH_SIZE": "50", "LOG_DIR": str(tmp_path / "logs")}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))
        progress = kill_loop(sim, db_path, tmp_path, env, rng)
        assert progress[-1] > 0  # the killed runs did make progress
        final = subprocess.run(
            [sys.executable, "-m", "api_pipeline", "-q", "run"], env=os.environ | env, cwd=tmp_path, timeout=300
        )
        assert final.returncode == 0
        assert assert_no_false_sent(sim, db_path) == CHILDREN

        # And again for a partial round with updates, removals and deletions.
        with Database.open_sqlite(db_path) as db:
            apply_nightly_changes(db, TABLE, rng, update_fraction=0.3, delete_fraction=0.05)
        kill_loop(sim, db_path, tmp_path, env, rng, kills=3)
        final = subprocess.run(
            [sys.executable, "-m", "api_pipeline", "-q", "run"], env=os.environ | env, cwd=tmp_path, timeout=300
        )
        assert final.returncode == 0
        assert_no_false_sent(sim, db_path)
        with Database.open_sqlite(db_path) as db:
            result = check_convergence(db, TABLE, sim.snapshot())
        assert result.ok, result.mismatched[:5]
