"""Benchmark: `run` on N synthetic children against the built-in simulator, on SQLite, PostgreSQL or SQL Server.

Measures the full first load, then a partial round after the council's nightly SQL
changes 20% of children and deletes 2%. Prints a table and a JSON line. Not a test:
figures only, no assertions. Peak RSS is the whole process's, simulator included
(it holds every record it received).

    python benchmarks/bench_run.py --children 10000
    python benchmarks/bench_run.py --children 10000 --db postgresql   # CSC_TEST_POSTGRES_ODBC, or --odbc
    python benchmarks/bench_run.py --children 10000 --db mssql        # CSC_TEST_SQLSERVER_ODBC (Babelfish), or --odbc
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import api_pipeline
from api_pipeline.job.logs import configure_logging
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.demo import apply_nightly_changes, check_convergence, load_children
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from api_pipeline.store.db import Database
from api_pipeline.store.staging import StagingTable

TABLE = "ssd_api_data_staging"


def run_child(
    command: list[str], environ: dict[str, str], cwd: Path, stdout: Any = None
) -> tuple[float, float, float, int]:
    """Run ``command`` with this checkout's code; returns wall s, CPU s, peak RSS MB and the exit code."""
    wall0 = time.perf_counter()
    source = str(Path(api_pipeline.__file__).resolve().parent.parent)  # the same code as this process
    path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH", "")) if p)
    child = subprocess.Popen(command, env=os.environ | environ | {"PYTHONPATH": path}, cwd=cwd, stdout=stdout)
    # The child's own ru_maxrss would include this process's memory at fork time, so peak
    # RSS is read from its /proc VmHWM (a high-water mark of its own address space) instead.
    peak_kb, pid = 0, 0
    while pid == 0:
        try:
            status_text = Path(f"/proc/{child.pid}/status").read_text()
            peak_kb = max(peak_kb, int(status_text.split("VmHWM:")[1].split()[0]))
        except (OSError, IndexError, ValueError):
            pass
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid == 0:
            time.sleep(0.02)
    wall = time.perf_counter() - wall0
    child.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, peak_kb / 1024, child.returncode


def measure_in_child(label: str, environ: dict[str, str], sim: Simulator, folder: Path) -> dict:
    """The same case as :func:`measure`, but ``run`` is its own process: peak RSS is the tool's alone."""
    sim.clear_log()
    logs = Path(folder) / f"logs-{label}"
    command = [sys.executable, "-m", "api_pipeline", "-q", "--log-dir", str(logs), "run"]
    wall, cpu, peak_mb, returncode = run_child(command, environ, Path(folder))
    (summary_file,) = logs.glob("*.summary.json")
    summary = json.loads(summary_file.read_text(encoding="utf-8"))
    outcomes = summary["outcomes"]
    sent = outcomes.get("sent", 0) + outcomes.get("purged", 0)
    return {
        "case": label,
        "records": sent,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "records_per_s": round(sent / wall, 1) if wall else None,
        "requests": summary["requests"],
        "bytes_sent": summary["bytes_sent"],
        "peak_rss_mb": round(peak_mb, 1),
        "problems": int(returncode != 0),
    }


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
    parser.add_argument(
        "--db",
        choices=("sqlite", "postgresql", "mssql"),
        default="sqlite",
        help="Where the staging table is (mssql: SQL Server's dialect, e.g. Babelfish from .ci/babelfish.sh).",
    )
    parser.add_argument(
        "--separate-process",
        action="store_true",
        help="Run each case as 'python -m api_pipeline run' in its own process, so peak RSS is the tool's "
        "alone (by default the process also hosts the simulator and the benchmark's own bookkeeping).",
    )
    parser.add_argument(
        "--odbc",
        help="ODBC connection string for --db postgresql or mssql (default: $CSC_TEST_POSTGRES_ODBC, or "
        "$CSC_TEST_SQLSERVER_ODBC for mssql). A uniquely named table is created in it and dropped afterwards.",
    )
    args = parser.parse_args(argv)
    if args.odbc is None and args.db != "sqlite":
        args.odbc = os.environ.get("CSC_TEST_POSTGRES_ODBC" if args.db == "postgresql" else "CSC_TEST_SQLSERVER_ODBC")
    if args.db != "sqlite" and not args.odbc:
        parser.error(f"--db {args.db} needs --odbc (.ci/postgres.sh or .ci/babelfish.sh sets one up)")
    configure_logging(quiet=True)
    with tempfile.TemporaryDirectory() as folder:
        if args.db != "sqlite":
            connection, table = args.odbc, f"bench_{uuid.uuid4().hex[:10]}"
        else:
            connection, table = f"sqlite:///{Path(folder) / 'bench.db'}", TABLE
        try:
            with Database.connect(connection) as db:
                StagingTable(db, table).create_staging_table()
                t0 = time.perf_counter()
                load_children(db, table, make_children(args.children, seed=args.seed))
                generate_s = time.perf_counter() - t0
            with Simulator(keep_request_bodies=False) as sim:
                environ = dict(sim.settings_env()) | {"DB_CONNECTION_STRING": connection, "TABLE_NAME": table}
                settings = load_settings(command="run", environ=environ)

                def case(label: str) -> dict:
                    if args.separate_process:
                        return measure_in_child(label, environ, sim, Path(folder))
                    return measure(label, settings, sim)

                results = [case("full_load")]
                with Database.connect(connection) as db:
                    apply_nightly_changes(
                        db, table, random.Random(args.seed), update_fraction=0.2, delete_fraction=0.02
                    )
                results.append(case("partial_20pct"))
                with Database.connect(connection) as db:
                    converged = check_convergence(db, table, sim.snapshot())
        finally:
            if args.db != "sqlite":
                with Database.connect(connection) as db:
                    for name in (table, *(f"{table}_{n}" for n in ("ledger", "in_flight", "in_doubt", "run_lock"))):
                        db.execute(f"DROP TABLE IF EXISTS {name}")
    print(f"database: {args.db}" + (", each run in its own process" if args.separate_process else ""))
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
    print(
        json.dumps(
            {
                "children": args.children,
                "db": args.db,
                "separate_process": args.separate_process,
                "results": results,
                "converged": converged.ok,
            }
        )
    )
    return 0 if converged.ok and not any(r["problems"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
