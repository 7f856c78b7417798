#!/usr/bin/env bash
# Smoke test of a built csc_api_pipeline.exe, as an analyst would first use it.
#
#   packaging/smoke_test_exe.sh [EXE]
#
# EXE defaults to dist/windows/csc_api_pipeline.exe; a one-folder build's exe
# (dist/windows/csc_api_pipeline/csc_api_pipeline.exe) works too. On Linux it runs under
# wine (the prefix of build_windows_exe.sh); on Windows (Git Bash) it runs the exe directly.
#
# The exe is copied to a fresh folder and run from another, empty one, with no settings in
# the environment, so no .env or variable can help it. Checked: --version matches this tree,
# --help lists the commands and exit codes, no command means run (here: exit 2, no settings), every
# command's --help, every test-* command and `run` fail cleanly without settings (exit 2, one
# "error: ..." line per problem, no traceback), and `demo` runs end to end (SQLite and the
# built-in simulator inside the exe) and ends with the convergence line, exit 0.
# Exit status: 0 when every check passed, 1 otherwise.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
EXE=${1:-$REPO/dist/windows/csc_api_pipeline.exe}
case "$EXE" in
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
esac
[ -f "$EXE" ] || {
    echo "error: no exe at $EXE (build it with packaging/build_windows_exe.sh)" >&2
    exit 1
}
EXE=$(cd "$(dirname "$EXE")" && pwd)/$(basename "$EXE")

case "$(uname -s)" in
    MINGW* | MSYS* | CYGWIN*) ON_WINDOWS=1 ;;
    *) ON_WINDOWS=0 ;;
esac
if [ "$ON_WINDOWS" = 0 ]; then
    # shellcheck source=packaging/wine/common.sh
    . "$REPO/packaging/wine/common.sh"
    prepare_wine_prefix
fi

WANT_VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/api_pipeline/__init__.py")
[ -n "$WANT_VERSION" ] || {
    echo "error: no __version__ in api_pipeline/__init__.py" >&2
    exit 1
}

T=$(mktemp -d "${TMPDIR:-/tmp}/csc-exe-smoke.XXXXXX")
# Leaves nothing running: on Linux, wine's server for this prefix is stopped at the end.
trap 'rm -rf "$T"; [ "$ON_WINDOWS" = 1 ] || wineserver -k >/dev/null 2>&1 || true' EXIT
mkdir -p "$T/bin" "$T/work"
if [ -d "$(dirname "$EXE")/_internal" ]; then
    cp -r "$(dirname "$EXE")/." "$T/bin/" # one-folder build: the exe needs its _internal folder
else
    cp "$EXE" "$T/bin/"
fi
RUN_EXE=$T/bin/$(basename "$EXE")

UNSET_SETTINGS=()
while read -r name; do
    UNSET_SETTINGS+=(-u "$name")
done < <(sed -n 's/^#\{0,1\} *\([A-Z][A-Z0-9_]*\)=.*/\1/p' "$REPO/.env.example" | sort -u)

passed=0
failed=0
OUT=""
RC=0

# Runs the exe from the empty work folder with a minimal environment (no settings, but any
# NAME=VALUE in EXTRA_ENV), stdin from /dev/null and output through a pipe (see wine_run in
# packaging/wine/common.sh).
EXTRA_ENV=()
WINE_FAULTS=0
run_exe() {
    run_exe_once "$@"
    # Now and then a process of wine's own (not the exe: its output and exit code are whole)
    # reports "wine: Unhandled page fault ..." into the same stream. Such a check is run once
    # more, and said so; a fault of the exe itself would come again, and fail the check.
    if [ "$ON_WINDOWS" = 0 ] && grep -q '^wine: Unhandled page fault' <<<"$OUT"; then
        WINE_FAULTS=$((WINE_FAULTS + 1))
        echo "note: wine reported a page fault during 'csc_api_pipeline.exe $*'; running it once more"
        run_exe_once "$@"
    fi
}

run_exe_once() {
    set +e
    if [ "$ON_WINDOWS" = 1 ]; then
        # Windows programs need much of their environment (SYSTEMROOT, TEMP, ...): drop only
        # the tool's own settings, every name .env.example documents.
        OUT=$(cd "$T/work" && env "${UNSET_SETTINGS[@]}" "${EXTRA_ENV[@]}" "$RUN_EXE" "$@" </dev/null 2>&1 | cat
            exit "${PIPESTATUS[0]}")
    else
        OUT=$(cd "$T/work" && env -i HOME="$HOME" PATH="$PATH" WINEPREFIX="$WINEPREFIX" WINEARCH="$WINEARCH" \
            WINEDEBUG="$WINEDEBUG" WINEDLLOVERRIDES="$WINEDLLOVERRIDES" "${EXTRA_ENV[@]}" \
            wine "$RUN_EXE" "$@" </dev/null 2>&1 | cat
            exit "${PIPESTATUS[0]}")
    fi
    RC=$?
    set -e
    OUT=${OUT//$'\r'/}
    # Windows Python writes to a pipe in the ANSI code page (cp1252 here); show it as UTF-8.
    if command -v iconv >/dev/null; then
        OUT=$(printf '%s' "$OUT" | iconv -c -f CP1252 -t UTF-8)
    fi
}

ok() {
    passed=$((passed + 1))
    echo "ok   $*"
}

not_ok() {
    failed=$((failed + 1))
    echo "FAIL $1 (exit code $RC)"
    printf '%s\n' "$OUT" | sed 's/^/     | /'
}

# check NAME WANT_RC [GREP_PATTERN...]: exit code and lines the output must contain.
check() {
    local name=$1 want=$2
    shift 2
    if [ "$RC" != "$want" ]; then
        not_ok "$name: want exit code $want"
        return
    fi
    local pattern
    for pattern in "$@"; do
        if ! grep -qE -- "$pattern" <<<"$OUT"; then
            not_ok "$name: no line matching /$pattern/"
            return
        fi
    done
    if grep -qE "Traceback|unexpected error:" <<<"$OUT"; then
        not_ok "$name: crashed"
        return
    fi
    ok "$name"
}

# A configuration failure: exit 2, every line "error: ...", and the variables named.
check_config_error() {
    local name=$1
    shift
    if [ "$RC" != 2 ]; then
        not_ok "$name: want exit code 2"
    elif grep -qvE '^error: ' <<<"$OUT" || [ -z "$OUT" ]; then
        not_ok "$name: every line should be 'error: ...'"
    else
        check "$name" 2 "$@"
    fi
}

if [ -d "$(dirname "$EXE")/_internal" ]; then
    echo "smoke test of $EXE (one folder, $(du -sh "$(dirname "$EXE")" | cut -f1))"
else
    echo "smoke test of $EXE (one file, $(du -h "$EXE" | cut -f1))"
fi
started=$(date +%s)

run_exe --version
check "--version prints $WANT_VERSION" 0 "^csc-api-pipeline ${WANT_VERSION//./\\.}\$"

run_exe --help
check "--help lists commands and exit codes" 0 "^commands:" "^exit codes:" "130 +interrupted" "test-endpoint" "demo"
HELP=$OUT
mapfile -t COMMANDS < <(sed -n '/^commands:/,/^$/p' <<<"$HELP" | sed -n 's/^    \([a-z][a-z-]*\)\( .*\)\{0,1\}$/\1/p')
if [ "${#COMMANDS[@]}" -lt 4 ]; then
    RC=0
    OUT=$HELP
    not_ok "could not read the command list from --help"
fi

# No command means run, as the earlier tool's scheduled tasks start it. stdin is /dev/null, so
# the double-click wait (for Enter) can never apply here: the exe ends at once.
run_exe
check_config_error "no command: runs 'run', which says where it looked for .env" \
    "^error: no \.env found; looked in: " "^error: DB_CONNECTION_STRING" "^error: no command was given, so 'run' was started"

for command in "${COMMANDS[@]}"; do
    run_exe "$command" --help
    check "$command --help" 0 "^usage: csc-api-pipeline .*$command"
done

for command in "${COMMANDS[@]}"; do
    case "$command" in
        test-endpoint)
            run_exe "$command"
            check_config_error "$command without settings" "^error: API_ENDPOINT" "^error: CLIENT_SECRET" "^error: SUPPLIER_KEY"
            ;;
        test-db | test-schema)
            run_exe "$command"
            check_config_error "$command without settings" "^error: DB_CONNECTION_STRING"
            ;;
        test-*)
            run_exe "$command"
            check_config_error "$command without settings" "^error: "
            ;;
    esac
done
run_exe test-db-connection
check_config_error "test-db-connection (old name) without settings" "^error: DB_CONNECTION_STRING"

run_exe run
check_config_error "run without settings" "^error: DB_CONNECTION_STRING" "^error: API_ENDPOINT"

# Where .env.example offers keyring:<service>/<name> secrets, such a value makes the exe load
# keyring and ask the Windows Credential Manager: the frozen backend works if the answer is
# "not in the Windows Credential Manager".
if grep -q 'keyring:' "$REPO/.env.example"; then
    EXTRA_ENV=(CLIENT_SECRET=keyring:csc-api-pipeline/SMOKE_TEST_NOT_STORED)
    run_exe run
    EXTRA_ENV=()
    check_config_error "run with a keyring: secret that is not stored" \
        "^error: CLIENT_SECRET: keyring:csc-api-pipeline/SMOKE_TEST_NOT_STORED is not in the Windows Credential Manager"
fi

run_exe run --limit 0
check "run --limit 0: usage error" 2 "usage: |error: "

run_exe demo
demo_output=$OUT
check "demo end to end" 0 "^Run 1 .*sent [0-9]+" "^Run 2 " "^Check: DfE view equals staging data for ([0-9]+)/\\1 children$"

echo
echo "--- demo output ---"
printf '%s\n' "$demo_output"
echo "-------------------"
echo
total=$((passed + failed))
again=""
[ "$WINE_FAULTS" = 0 ] || again=" ($WINE_FAULTS run again after a page fault in wine itself)"
echo "smoke test: $passed of $total checks passed in $(($(date +%s) - started)) s$again"
[ "$failed" = 0 ]
