"""Switch-over at scale: DfE's view after the first run on a table the earlier tool sent.

For N synthetic children, on SQLite or PostgreSQL (issue 14):

* **switch-over**: the earlier tool sends every child (whole records, 100 a request, marking
  rows ``sent`` with ``previous_json_payload = json_payload``); one night of the council's SQL
  (20% of children updated with realistic edits, 2% deleted, 200 new); then one ``run`` of
  this tool with no ledger.
* **with a ledger**: the same children and the same night, but this tool sent the first load
  itself, so its ledger knows what DfE holds.

For each it prints how many children DfE holds correctly after the run (the simulator's
view against the table's ``json_payload``; deleted children must be gone), the requests and
bytes that run sent, its time, and whether a second run sends nothing. Nothing is asserted
on time: this prints figures.

    python benchmarks/switch_over.py --children 10000 --db postgresql   # needs CSC_TEST_POSTGRES_ODBC
    python benchmarks/switch_over.py --children 2000 --db sqlite
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from api_pipeline.job.runner import execute_run  # noqa: E402
from api_pipeline.rehearsal.demo import apply_nightly_changes, check_convergence, load_children  # noqa: E402
from api_pipeline.rehearsal.simulator import Simulator  # noqa: E402
from api_pipeline.rehearsal.synthetic import make_children  # noqa: E402
from api_pipeline.rehearsal.synthetic_changes import mutate  # noqa: E402
from api_pipeline.settings.config import load_settings  # noqa: E402
from api_pipeline.store.db import Database  # noqa: E402
from api_pipeline.store.staging import StagingTable  # noqa: E402
from earlier_tool import send_as_earlier_tool  # noqa: E402

NEW_CHILDREN = 200


def _connection(kind: str, folder: Path) -> tuple[str, str]:
    """(connection string, table name) for a fresh table."""
    if kind == "sqlite":
        return f"sqlite:///{(folder / f'{uuid.uuid4().hex[:8]}.db').as_posix()}", "ssd_api_data_staging"
    odbc = os.environ.get("CSC_TEST_POSTGRES_ODBC", "").strip()
    if not odbc:
        raise SystemExit("--db postgresql needs CSC_TEST_POSTGRES_ODBC (source .ci/postgres.sh)")
    return odbc, f"switch_{uuid.uuid4().hex[:10]}"


def _drop(connection: str, table: str) -> None:
    if connection.startswith("sqlite:"):
        return
    with Database.connect(connection) as db, db.transaction():
        for suffix in ("", "_ledger", "_in_flight", "_in_doubt", "_run_lock"):
            db.execute(f"DROP TABLE IF EXISTS {table}{suffix}")


def scenario(kind: str, children: int, *, earlier_tool: bool, seed: int, folder: Path) -> dict[str, Any]:
    connection, table = _connection(kind, folder)
    with Database.connect(connection) as db:
        StagingTable(db, table).create_staging_table()
        load_children(db, table, make_children(children, seed=seed))
    try:
        with Simulator() as sim:
            environ = sim.settings_env() | {"DB_CONNECTION_STRING": connection, "TABLE_NAME": table}
            settings = load_settings(command="run", environ=environ)
            if earlier_tool:
                with Database.connect(connection) as db:
                    send_as_earlier_tool(sim, db, table)
            else:
                execute_run(settings)
            with Database.connect(connection) as db:
                night = apply_nightly_changes(
                    db, table, random.Random(seed + 1), update_fraction=0.2, delete_fraction=0.02
                )
                rng = random.Random(seed + 2)
                newcomers = [mutate(rng, c) for c in make_children(NEW_CHILDREN, seed=seed + 3)]
                for i, child in enumerate(newcomers):
                    child["la_child_id"] = f"NEW{i:07d}"
                load_children(db, table, newcomers)
            sim.clear_log()
            summary = execute_run(settings)
            posts = [e for e in sim.request_log() if e.path.endswith("/children")]
            with Database.connect(connection) as db:
                result = check_convergence(db, table, sim.snapshot())
            sim.clear_log()
            again = execute_run(settings)
    finally:
        _drop(connection, table)
    return {
        "db": kind,
        "children": children + NEW_CHILDREN,
        "case": "switch-over (no ledger)" if earlier_tool else "with this tool's ledger",
        "updated": len(night.updated),
        "deleted": len(night.deleted),
        "correct_at_dfe": result.matching,
        "total": result.total,
        "requests": len(posts),
        "bytes_sent": sum(len(e.body or b"") for e in posts),
        "adopted": summary.outcomes.get("adopted", 0),
        "sent": summary.outcomes.get("sent", 0),
        "purged": summary.outcomes.get("purged", 0),
        "seconds": round(summary.seconds, 2),
        "second_run_requests": again.requests,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            scenario(args.db, args.children, earlier_tool=True, seed=args.seed, folder=Path(tmp)),
            scenario(args.db, args.children, earlier_tool=False, seed=args.seed, folder=Path(tmp)),
        ]
    print(
        f"{'case':<26} {'correct at DfE':>16} {'requests':>9} {'MB sent':>8} {'adopted':>8} {'sent':>6} "
        f"{'purged':>6} {'run s':>6} {'2nd run requests':>17}"
    )
    for r in results:
        print(
            f"{r['case']:<26} {r['correct_at_dfe']:>7,}/{r['total']:<8,} {r['requests']:>9} "
            f"{r['bytes_sent'] / 1e6:>8.2f} {r['adopted']:>8} {r['sent']:>6} {r['purged']:>6} {r['seconds']:>6} "
            f"{r['second_run_requests']:>17}"
        )
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    ok = all(r["correct_at_dfe"] == r["total"] and r["second_run_requests"] == 0 for r in results)
    print("convergence after the first run:", "yes, in both cases" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
