"""`simulate-api --state FILE`: DfE's view kept across a restart of the simulator, as a rehearsal needs
when its simulator window is closed between the first run and the second (issue 25, item 5)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api_pipeline.rehearsal.demo import check_convergence
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from conftest import TABLE, db_env, insert, mark_deleted, run_cli, set_payload

REPO = Path(__file__).resolve().parents[1]


class SimulateApi:
    """``simulate-api`` in a process of its own, as a council runs it in a second window."""

    def __init__(self, *argv: str) -> None:
        env = os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "api_pipeline", "simulate-api", "--port", "0", *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.said: list[str] = []
        self.settings: dict[str, str] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "Press Ctrl+C to stop." not in self.said:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.said.append(line.strip())
            name, sep, value = line.strip().partition("=")
            if sep and name.isupper():
                self.settings[name] = value

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)
        rest, _ = self.proc.communicate(timeout=20)
        return self.proc.returncode, rest


@pytest.mark.skipif(sys.platform == "win32", reason="stops the simulator with SIGINT")
def test_dfe_s_view_outlasts_a_restart_with_state(db_path, tmp_path):
    state = tmp_path / "dfe-view.json"
    children = list(make_children(5, seed=252))
    insert(db_path, children)

    first = SimulateApi("--state", str(state))
    assert f"Holding no children yet; what it holds is saved in {state} when it stops." in first.said
    assert run_cli(["run"], environ=first.settings | db_env(db_path), cwd=tmp_path).code == 0
    code, said = first.stop()
    assert code == 0 and f"Saved the 5 children it holds in {state}" in said
    if os.name == "posix":
        assert state.stat().st_mode & 0o077 == 0  # this account's only
    assert len(json.loads(state.read_text(encoding="utf-8"))["children"]) == 5

    # The council's SQL changes one child and drops another; the simulator is started again.
    changed = dict(children[0], child_details=dict(children[0]["child_details"], postcode="BN1 1AA"))
    set_payload(db_path, children[0]["la_child_id"], changed)
    mark_deleted(db_path, children[1]["la_child_id"])
    second = SimulateApi("--state", str(state))
    assert f"Holding 5 children from {state}, as when the simulator last stopped." in second.said
    result = run_cli(["run"], environ=second.settings | db_env(db_path), cwd=tmp_path)
    assert result.code == 0, result.err
    code, said = second.stop()
    assert code == 0 and "Saved the 4 children" in said

    held = json.loads(state.read_text(encoding="utf-8"))["children"]
    with Database.open_sqlite(db_path) as db:
        verdict = check_convergence(db, TABLE, held)
    assert verdict.ok, verdict.mismatched  # the partial run landed on the view kept, not on an empty one
    assert held[children[0]["la_child_id"]]["child_details"]["postcode"] == "BN1 1AA"


def test_a_file_the_simulator_did_not_save_is_refused_before_it_starts(tmp_path):
    (tmp_path / "notes.json").write_text('{"children": "not these"}', encoding="utf-8")
    result = run_cli(["simulate-api", "--port", "0", "--state", "notes.json"], cwd=tmp_path)
    assert result.code == 2
    assert "--state: " in result.err and "is not a file simulate-api saved" in result.err
    missing = run_cli(["simulate-api", "--port", "0", "--state", "no/such/folder/view.json"], cwd=tmp_path)
    assert missing.code == 2 and "does not exist" in missing.err
