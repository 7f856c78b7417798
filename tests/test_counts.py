"""Every count a person reads adds up to the rows it speaks of (issue 25, item 1).

Through the command line, for the situations a council meets: a first load, a night of changes
with purges, a switch-over from the earlier tool (rows recorded as already held by DfE), invalid
and skipped rows, and a run stopped part way. For every run: the console's end-of-run summary,
``summary.json``, the HTML report, ``status`` (text and ``--json``), and ``validate --all`` after
it; before it, ``status``'s rows waiting for the next run.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from api_pipeline.rehearsal.synthetic import make_children
from conftest import Staging, run_cli
from earlier_tool import send_as_earlier_tool

ADOPTED_WORDS = "recorded as already held by DfE (sent by the earlier tool)"
# Said of rows already counted once (changed_during_run), or of rows the run did not read.
NOT_PARTS = {"changed_during_run", "not_reached"}
# What can become of a row read: each row read has exactly one of these.
ROW_OUTCOMES = (
    "sent", "purged", "unchanged", "adopted", "valid", "held_back_passes", "dry_run",
    "invalid", "skipped", "rejected", "failed", "in_doubt",
)  # fmt: skip
CONSOLE_LINE = re.compile(r"^\d\d:\d\d:\d\d\s+[A-Z]+\s+(?P<text>.*)$")


def numbers(text: str) -> list[int]:
    return [int(n) for n in re.findall(r"\b\d+\b", text)]


@dataclass
class Rehearsal:
    """One scenario's table, simulator and folders; :meth:`run` runs the tool and checks every count."""

    sim: object
    staging: Staging
    tmp_path: Path
    capsys: pytest.CaptureFixture[str]
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def log_dir(self) -> Path:
        return self.tmp_path / "logs"

    @property
    def env(self) -> dict[str, str]:
        env = self.sim.settings_env() | self.staging.env  # type: ignore[attr-defined]
        return env | {"MAX_RETRIES": "1", "HTTP_TIMEOUT": "5", "LOG_DIR": str(self.log_dir)} | self.extra

    def cli(self, *argv: str):
        return run_cli(list(argv), environ=self.env, cwd=self.tmp_path)

    def status_waiting(self) -> dict:
        """``status`` before a run: what waits for it adds up, in words and in ``--json``."""
        text = self.cli("status")
        assert text.code == 0, text.err
        (waiting,) = [line for line in text.out.splitlines() if line.startswith("Waiting")]
        pending = json.loads(self.cli("status", "--json").out)["pending"]
        if pending["rows"]:
            total, *parts = numbers(waiting.split(";")[0])
            assert total == pending["rows"] and parts and sum(parts) == total, waiting
        assert pending["records"] + pending["deletions"] + pending["adopt"] == pending["rows"], pending
        return pending

    def run(self, *argv: str) -> dict:
        """``run``, then every count it leaves behind, checked; returns its summary."""
        before = set(self.log_dir.glob("*.summary.json")) if self.log_dir.exists() else set()
        self.capsys.readouterr()
        self.cli("run", *argv)
        console = self.capsys.readouterr().err  # the console's log lines go to the process's stderr
        (summary_path,) = set(self.log_dir.glob("*.summary.json")) - before
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        read = summary["rows_read"]
        outcomes = summary["outcomes"]
        assert sum(n for key, n in outcomes.items() if key not in NOT_PARTS) == read, summary

        # The console: the end-of-run summary's second line accounts for every row read.
        lines = [m.group("text") for m in map(CONSOLE_LINE.match, console.splitlines()) if m]
        (at,) = [i for i, line in enumerate(lines) if " finished in " in line]
        assert f"{read} row" in lines[at]
        assert sum(numbers(lines[at + 1])) == read, lines[at : at + 3]
        if outcomes.get("adopted"):
            assert f"{outcomes['adopted']} {ADOPTED_WORDS}" in lines[at + 1]
        if outcomes.get("not_reached"):
            assert any(f"not reached (stopped early): {outcomes['not_reached']}" in line for line in lines[at:])

        # The report: its table of what happened adds up to the records read, each row in words.
        report = summary_path.with_name(summary_path.name.replace(".summary.json", ".report.html")).read_text()
        section = report[report.index("What happened to the records") : report.index("Why some records")]
        parts = re.findall(r'<tr><td class="text">([^<]*)</td><td class="num">(\d+)</td></tr>', section)
        assert sum(int(n) for _, n in parts) == read, parts
        assert all(" " in label for label, _ in parts), parts  # words, never a bare key such as "adopted"
        if outcomes.get("adopted"):
            assert html.escape("Recorded as already held by DfE (sent by the earlier tool)", quote=True) in section
        assert f'Records read from the staging table</td><td class="text">{read}<' in report
        assert 'Time taken</td><td class="text">0.0 seconds' not in report
        if read < 100:  # a handful of records in a fraction of a second says nothing about speed
            assert "Speed" not in report

        # status: the run's counts add up, in words and in --json.
        state = json.loads(self.cli("status", "--json").out)
        (recent,) = [r for r in state["runs"]["recent"] if r["run_id"] == summary["run_id"]]
        assert recent["rows_read"] == read
        shown = {"dry_run": "written_for_review"}  # a dry run's records: dry_run is the kind of run there
        assert {shown.get(key, key) for key, n in outcomes.items() if n and key not in NOT_PARTS} <= set(recent)
        assert sum(recent.get(shown.get(key, key), 0) for key in ROW_OUTCOMES) == read, recent
        assert state["ledger"]["last_acknowledged_at"] is None or state["ledger"]["last_acknowledged_at"].endswith("Z")
        text = self.cli("status").out.splitlines()
        runs_at = next(i for i, line in enumerate(text) if line.startswith("Last "))
        for line in text[runs_at + 2 : runs_at + 2 + len(state["runs"]["recent"])]:  # every run shown adds up
            described = re.search(r"\b(\d+) read(: [^;]*)?", line)
            assert described is not None, line
            assert sum(numbers(described.group(0))) == 2 * int(described.group(1)), line  # "40 read: 8 sent, ..."

        # validate --all: every row of the table is accounted for.
        checked = self.cli("validate", "--all").out.splitlines()[0]
        total, *counts = numbers(checked)
        assert sum(counts) == total, checked
        return summary


@pytest.fixture
def rehearsal(simulator, staging, tmp_path, capsys) -> Rehearsal:
    return Rehearsal(simulator, staging, tmp_path, capsys)


def test_a_first_load_adds_up(rehearsal: Rehearsal) -> None:
    rehearsal.staging.insert(list(make_children(12, seed=251)))
    waiting = rehearsal.status_waiting()
    assert (waiting["rows"], waiting["records"], waiting["deletions"], waiting["adopt"]) == (12, 12, 0, 0)
    rehearsal.staging.insert([{**next(make_children(1, seed=258)), "la_child_id": "C 1"}])  # invalid: not sent
    assert rehearsal.run("--dry-run", str(rehearsal.tmp_path / "review"))["outcomes"] == {"dry_run": 12, "invalid": 1}
    summary = rehearsal.run()
    assert summary["outcomes"] == {"sent": 12, "invalid": 1}


def test_a_night_of_changes_with_purges_adds_up(rehearsal: Rehearsal) -> None:
    children = list(make_children(12, seed=252))
    rehearsal.staging.insert(children)
    rehearsal.run()
    for child in children[:2]:
        child["child_details"]["postcode"] = "BN1 1AA"
        rehearsal.staging.set_payload(child["la_child_id"], child)
    rehearsal.staging.mark_deleted(children[2]["la_child_id"])
    # status's own table shows 2 Pending and 1 Deleted: what waits says so, not "3 to be sent".
    waiting = rehearsal.status_waiting()
    assert (waiting["rows"], waiting["records"], waiting["deletions"], waiting["adopt"]) == (3, 2, 1, 0)
    (line,) = [x for x in rehearsal.cli("status").out.splitlines() if x.startswith("Waiting")]
    assert "3 rows: 2 records to send, 1 deletion to send" in line
    summary = rehearsal.run()
    assert summary["outcomes"] == {"sent": 2, "purged": 1}


def test_a_switch_over_with_rows_the_earlier_tool_sent_adds_up(rehearsal: Rehearsal) -> None:
    children = list(make_children(30, seed=253))
    rehearsal.staging.insert(children)
    with rehearsal.staging.open() as db:
        assert send_as_earlier_tool(rehearsal.sim, db, rehearsal.staging.table) == 30
    for child in children[:3]:
        child["child_details"]["postcode"] = "BN1 1AA"
        rehearsal.staging.set_payload(child["la_child_id"], child)
    for child in children[3:5]:
        rehearsal.staging.mark_deleted(child["la_child_id"])
    newcomers = list(make_children(2, seed=254))
    for i, child in enumerate(newcomers):
        child["la_child_id"] = f"NEW{i:04d}"
    rehearsal.staging.insert(newcomers)
    waiting = rehearsal.status_waiting()
    assert (waiting["rows"], waiting["records"], waiting["deletions"], waiting["adopt"]) == (32, 5, 2, 25)
    (line,) = [x for x in rehearsal.cli("status").out.splitlines() if x.startswith("Waiting")]
    assert "25 to record as already held by DfE (sent by the earlier tool)" in line
    summary = rehearsal.run()
    assert summary["outcomes"] == {"sent": 5, "purged": 2, "adopted": 25}
    # The next night nothing is waiting, and validate --all still accounts for the purged children.
    assert rehearsal.status_waiting()["rows"] == 0


def test_invalid_and_skipped_rows_add_up(rehearsal: Rehearsal) -> None:
    children = list(make_children(8, seed=255))
    children[0]["child_details"]["sex"] = "Female"
    children[1]["child_details"]["sex"] = "Female"
    twin = json.loads(json.dumps(children[2]))
    rehearsal.staging.insert([*children, twin])
    summary = rehearsal.run()
    assert summary["outcomes"] == {"sent": 5, "invalid": 2, "skipped": 2}


def test_a_run_stopped_part_way_adds_up(simulator, db_path, tmp_path, capsys) -> None:
    rehearsal = Rehearsal(simulator, Staging.sqlite(db_path), tmp_path, capsys, {"BATCH_SIZE": "10"})
    rehearsal.staging.insert(list(make_children(50, seed=256)))
    simulator.inject("slow", seconds=0)  # the first batch goes through
    simulator.inject("503", times=50)
    summary = rehearsal.run()
    assert summary["stopped_early"] and summary["outcomes"]["sent"] == 10
    assert summary["rows_read"] + summary["outcomes"]["not_reached"] == 50


def test_validate_all_counts_a_child_dfe_has_already_deleted(simulator, db_path, tmp_path, capsys) -> None:
    """The issue's ``checked 51 rows: 0 would be sent, 50 already up to date``: the purged child was left out."""
    rehearsal = Rehearsal(simulator, Staging.sqlite(db_path), tmp_path, capsys)
    children = list(make_children(3, seed=257))
    rehearsal.staging.insert(children)
    rehearsal.run()
    rehearsal.staging.mark_deleted(children[0]["la_child_id"])
    assert rehearsal.run()["outcomes"] == {"purged": 1}
    checked = rehearsal.cli("validate", "--all")
    assert checked.code == 0 and checked.out.splitlines()[0] == (
        "checked 3 rows: 0 would be sent, 3 already up to date, 0 invalid, 0 skipped"
    )
