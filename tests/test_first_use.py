"""What a new user meets after the demo (issue 17), each through the command line.

Paths and files, messages and counts, rehearsal data, and the help and docs that go with
them. The other suites prove the pipeline; these prove that a council analyst, a scheduled
task started in System32 and a mistyped file name all get a clear, true answer.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest

from api_pipeline import logs
from api_pipeline.synthetic import make_children
from conftest import db_env, insert, run_cli


def sim_env(sim, db_path: Path, **extra: str) -> dict[str, str]:
    return dict(sim.settings_env()) | db_env(db_path) | {"MAX_RETRIES": "1", "HTTP_TIMEOUT": "5"} | extra


# ---------------------------------------------------------------------------
# Run ids
# ---------------------------------------------------------------------------


def test_two_runs_started_in_the_same_second_keep_their_own_log_summary_and_batch_ids(
    simulator, db_path, tmp_path, monkeypatch
):
    instant = datetime(2026, 3, 1, 2, 0, 0, 123456, tzinfo=timezone.utc)
    monkeypatch.setattr(logs, "_utc_now", lambda: instant)  # the same millisecond, even
    insert(db_path, list(make_children(4, seed=1)))
    log_dir = tmp_path / "logs"
    environ = sim_env(simulator, db_path, BATCH_SIZE="2")
    first = run_cli(["run", "--log-dir", str(log_dir), "--limit", "2"], environ=environ, cwd=tmp_path)
    second = run_cli(["run", "--log-dir", str(log_dir)], environ=environ, cwd=tmp_path)
    assert (first.code, second.code) == (0, 0), first.err + second.err

    summaries = sorted(log_dir.glob("*.summary.json"))
    assert len(summaries) == 2 and len(list(log_dir.glob("*.log"))) == 2
    run_ids = [json.loads(p.read_text())["run_id"] for p in summaries]
    assert run_ids[0] != run_ids[1]
    assert all(re.fullmatch(r"20260301T020000\.123Z-[0-9a-f]{6}", r) for r in run_ids)
    batch_ids = set()
    for log_file in log_dir.glob("*.log"):
        found = set(re.findall(r"batch (\S+):", log_file.read_text(encoding="utf-8")))
        assert found and not found & batch_ids
        batch_ids |= found


def test_run_ids_are_unique_in_a_tight_loop():
    ids = {logs.new_run_id() for _ in range(2000)}
    assert len(ids) > 1995  # 6 random hex digits per millisecond
