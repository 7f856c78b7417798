#!/usr/bin/env bash
# The benchmark suite at N=1,000 on SQLite, PostgreSQL and Babelfish, so it cannot rot (issues 8 and 24).
# Called by .ci/run after the tests, in its activated venv, with the servers started and their
# connection strings exported by .ci/postgres.sh and .ci/babelfish.sh. No timing assertions:
# the PASS/FAIL lines are printed for information; this fails only if the suite crashes or a
# run does not converge (the suite's own exit code).
set -euo pipefail
cd "$(dirname "$0")/.."

databases="sqlite"
if [ -n "${CSC_TEST_POSTGRES_ODBC:-}" ]; then
    databases="sqlite,postgresql"
else
    echo "benchmarks.sh: CSC_TEST_POSTGRES_ODBC is not set; no PostgreSQL" >&2
fi
# SQL Server's dialect on Babelfish (.ci/babelfish.sh), through FreeTDS.
if [ -n "${CSC_TEST_SQLSERVER_ODBC:-}" ]; then
    databases="$databases,mssql"
else
    echo "benchmarks.sh: CSC_TEST_SQLSERVER_ODBC is not set; no SQL Server (Babelfish)" >&2
fi
out="$(mktemp -d)/benchmarks.json"
timeout 300 python benchmarks/suite.py --sizes 1000 --db "$databases" --json-out "$out" | sed '/^{/,$d'
echo "benchmarks.sh: results in $out"
