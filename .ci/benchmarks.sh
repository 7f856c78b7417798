#!/usr/bin/env bash
# The benchmark suite at N=1,000 on SQLite and PostgreSQL, so it cannot rot (issue 8).
# Called by .ci/run after the tests, in its activated venv, with PostgreSQL started and
# CSC_TEST_POSTGRES_ODBC exported by .ci/postgres.sh. No timing assertions: the PASS/FAIL
# lines are printed for information; this fails only if the suite crashes or a run does
# not converge (the suite's own exit code).
set -euo pipefail
cd "$(dirname "$0")/.."

databases="sqlite"
if [ -n "${CSC_TEST_POSTGRES_ODBC:-}" ]; then
    databases="sqlite,postgresql"
else
    echo "benchmarks.sh: CSC_TEST_POSTGRES_ODBC is not set; SQLite only" >&2
fi
# Not SQL Server's dialect (--db mssql, Babelfish): half a minute more of a CI run whose time
# already goes to building and testing Babelfish.
out="$(mktemp -d)/benchmarks.json"
timeout 300 python benchmarks/suite.py --sizes 1000 --db "$databases" --json-out "$out" | sed '/^{/,$d'
echo "benchmarks.sh: results in $out"
