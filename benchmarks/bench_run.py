"""Benchmark: `run` on N synthetic children, SQLite, against the built-in simulator.

Measures the full first load, then a partial round after the council's nightly SQL
changes 20% of children and deletes 2%. Prints a table and a JSON line. Not a test:
figures only, no assertions.

    python benchmarks/bench_run.py --children 10000
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from api_pipeline.config import load_settings
from api_pipeline.db import Database, StagingTable
from api_pipeline.demo import apply_nightly_changes, check_convergence, load_children
from api_pipeline.logs import configure_logging
from api_pipeline.runner import execute_run
from api_pipeline.simulator import Simulator
from api_pipeline.synthetic import make_children

TABLE = "ssd_api_data_staging"


def measure(label: str, settings, sim: Simulator) -> dict:
    sim.clear_log()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    summary = execute_run(settings, run_id=label)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    sent = summary.outcomes["sent"] + summary.outcomes["purged"]
    return {
        "case": label,
        "records": sent,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "records_per_s": round(sent / wall, 1) if wall else None,
        "requests": summary.requests,
        "bytes_sent": summary.bytes_sent,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "problems": summary.problems,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--children", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    configure_logging(quiet=True)
    with tempfile.TemporaryDirectory() as folder:
        db_path = Path(folder) / "bench.db"
        with Database.open_sqlite(db_path) as db:
            StagingTable(db, TABLE).create_staging_table()
            t0 = time.perf_counter()
            load_children(db, TABLE, make_children(args.children, seed=args.seed))
            generate_s = time.perf_counter() - t0
        with Simulator(keep_request_bodies=False) as sim:
            environ = dict(sim.settings_env()) | {"DB_CONNECTION_STRING": f"sqlite:///{db_path}", "TABLE_NAME": TABLE}
            settings = load_settings(command="run", environ=environ)
            results = [measure("full_load", settings, sim)]
            with Database.open_sqlite(db_path) as db:
                apply_nightly_changes(db, TABLE, random.Random(args.seed), update_fraction=0.2, delete_fraction=0.02)
            results.append(measure("partial_20pct", settings, sim))
            with Database.open_sqlite(db_path) as db:
                converged = check_convergence(db, TABLE, sim.snapshot())
    print(f"children: {args.children:,} (generated and loaded in {generate_s:.1f} s)")
    print(
        f"{'case':<15}{'records':>9}{'wall s':>9}{'cpu s':>9}{'rec/s':>10}{'requests':>10}{'MB sent':>9}{'RSS MB':>8}"
    )
    for r in results:
        print(
            f"{r['case']:<15}{r['records']:>9}{r['wall_s']:>9}{r['cpu_s']:>9}{r['records_per_s']:>10}"
            f"{r['requests']:>10}{r['bytes_sent'] / 1e6:>9.2f}{r['peak_rss_mb']:>8}"
        )
    print(f"convergence: {converged.matching}/{converged.total}")
    print(json.dumps({"children": args.children, "results": results, "converged": converged.ok}))
    return 0 if converged.ok and not any(r["problems"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
