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
# "error: ..." line per problem, no traceback), a Windows admin's habits (set-secret with no console
# and the Credential Manager entries it makes, a UTF-16 .env, a killed one-file run, output to a
# pipe as UTF-8, status on a share that cannot be reached), and `demo`, started in System32 under
# wine, runs end to end in the user's folder (SQLite and the built-in simulator inside the exe)
# and ends with the convergence line, exit 0.
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

WANT_VERSION=$(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$REPO/api_pipeline/about.py")
[ -n "$WANT_VERSION" ] || {
    echo "error: no __version__ in api_pipeline/about.py" >&2
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
EXE_NAME=$(basename "$EXE")

UNSET_SETTINGS=()
while read -r name; do
    UNSET_SETTINGS+=(-u "$name")
done < <(sed -n 's/^#\{0,1\} *\([A-Z][A-Z0-9_]*\)=.*/\1/p' "$REPO/.env.example" | sort -u)

passed=0
failed=0
OUT=""
RC=0

# Runs the exe from the empty work folder (or RUN_DIR) with a minimal environment (no settings,
# but any NAME=VALUE in EXTRA_ENV), stdin from /dev/null (or, with STDIN_TEXT set, a pipe that
# gives that text) and output through a pipe (see wine_run in packaging/wine/common.sh), for at
# most 300 seconds.
EXTRA_ENV=()
RUN_DIR=$T/work
STDIN_TEXT="" # piped to the exe when not empty; never a console either way
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
    if [ -n "$STDIN_TEXT" ]; then
        OUT=$(printf '%s' "$STDIN_TEXT" | run_exe_raw "$@" 2>&1 | cat
            exit "${PIPESTATUS[1]}")
    else
        OUT=$(run_exe_raw "$@" </dev/null 2>&1 | cat
            exit "${PIPESTATUS[0]}")
    fi
    RC=$?
    set -e
    OUT=${OUT//$'\r'/}
    # The tool writes output that goes to a pipe as UTF-8 (Windows would use the ANSI code page),
    # so it is read as it is; wine's own messages are ASCII.
}

# The exe itself, in RUN_DIR, with the environment run_exe describes and the caller's stdin.
run_exe_raw() {
    if [ "$ON_WINDOWS" = 1 ]; then
        # Windows programs need much of their environment (SYSTEMROOT, TEMP, ...): drop only
        # the tool's own settings, every name .env.example documents.
        (cd "$RUN_DIR" && exec timeout 300 env "${UNSET_SETTINGS[@]}" "${EXTRA_ENV[@]}" "$RUN_EXE" "$@")
    else
        (cd "$RUN_DIR" && exec timeout 300 env -i HOME="$HOME" PATH="$PATH" WINEPREFIX="$WINEPREFIX" \
            WINEARCH="$WINEARCH" WINEDEBUG="$WINEDEBUG" WINEDLLOVERRIDES="$WINEDLLOVERRIDES" "${EXTRA_ENV[@]}" \
            wine "$RUN_EXE" "$@")
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

unpacked_folders() {
    find "$1" -maxdepth 1 -type d -name '_MEI*' 2>/dev/null | sort
}

# Under wine: starts the one-file exe (simulate-api, which runs until stopped) and ends its first
# process by force, as Task Scheduler's time limit or a restart does, which leaves its %TEMP%
# folder behind. Under wine the second process (Python) goes on running; later starts must leave
# its folder while it runs, and while it is less than a day old, and remove it after that.
check_killed_run_leftovers() {
    local temp before left="" waited=0 pid
    temp=$(winepath -u "$(wine cmd.exe /c echo %TEMP% </dev/null 2>/dev/null | tr -d '\r')" 2>/dev/null)
    RC=0
    if [ -z "$temp" ] || [ ! -d "$temp" ]; then
        OUT="%TEMP% is '$temp'"
        not_ok "killed one-file run: cannot find %TEMP%"
        return
    fi
    before=$(unpacked_folders "$temp")
    mkfifo "$T/simulator.out"
    cat "$T/simulator.out" >/dev/null &
    (cd "$T/work" && exec env -i HOME="$HOME" PATH="$PATH" WINEPREFIX="$WINEPREFIX" WINEARCH="$WINEARCH" \
        WINEDEBUG="$WINEDEBUG" WINEDLLOVERRIDES="$WINEDLLOVERRIDES" \
        wine "$RUN_EXE" simulate-api --port 0 </dev/null >"$T/simulator.out" 2>&1) &
    pid=$! # exec all the way: this is the exe's first process
    while [ -z "$left" ] && [ "$waited" -lt 60 ]; do
        sleep 1
        waited=$((waited + 1))
        left=$(comm -13 <(printf '%s\n' "$before") <(unpacked_folders "$temp") | head -n 1)
        [ -z "$left" ] || [ -f "$left/python311.dll" ] || left=""
    done
    sleep 5 # let it finish unpacking and start serving
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    OUT="%TEMP%: $temp; the killed run's folder: ${left:-none appeared}"
    if [ -z "$left" ] || [ ! -f "$left/python311.dll" ]; then
        not_ok "killed one-file run: want its _MEI folder left behind in %TEMP%"
        wine taskkill.exe /F /IM "$EXE_NAME" </dev/null >/dev/null 2>&1 || true
        return
    fi
    touch -d '2 days ago' "$left"
    run_exe --version
    if [ ! -f "$left/python311.dll" ]; then
        not_ok "killed one-file run: a folder still in use by a running copy was removed ($left)"
    else
        ok "killed one-file run: its folder is left while a copy runs from it"
    fi
    wine taskkill.exe /F /IM "$EXE_NAME" </dev/null >/dev/null 2>&1 || true # now no copy runs from it
    sleep 2
    touch "$left"
    run_exe --version
    if [ ! -d "$left" ]; then
        not_ok "killed one-file run: a folder less than a day old was removed ($left)"
        return
    fi
    touch -d '2 days ago' "$left"
    run_exe --version
    if [ -e "$left" ] || [ -e "$left.removing" ]; then
        OUT=$(find "$left" "$left.removing" 2>/dev/null | head)
        not_ok "killed one-file run: the next start left its day-old folder ($left)"
    else
        check "killed one-file run: the next start removes its day-old _MEI folder" 0
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

# --- A Windows admin's habits (issue 26) ---------------------------------------------------

# set-secret with no console: < NUL stops at once (it used to spin for ever), and a line piped
# in is stored without being shown. The service name keeps the made-up value apart.
# Under wine, the Credential Manager entries an earlier smoke test left are removed first, so the
# checks below see only this run's.
if [ "$ON_WINDOWS" = 0 ]; then
    for entry in csc-smoke-test/CLIENT_SECRET csc-smoke-test/SUPPLIER_KEY csc-smoke-test \
        CLIENT_SECRET@csc-smoke-test SUPPLIER_KEY@csc-smoke-test; do
        wine reg delete "HKCU\\Software\\Wine\\Credential Manager\\Generic: $entry" /f </dev/null >/dev/null 2>&1 || true
    done
fi
started_secret=$(date +%s)
run_exe set-secret CLIENT_SECRET --service csc-smoke-test
if [ $(($(date +%s) - started_secret)) -gt 60 ]; then
    not_ok "set-secret < NUL: took more than 60 s"
else
    check_config_error "set-secret < NUL stops at once" "^error: set-secret: there is no console .*standard input was empty"
fi
STDIN_TEXT=$'smoke-test-key-not-a-secret\r\n'
run_exe set-secret SUPPLIER_KEY --service csc-smoke-test
STDIN_TEXT=""
if grep -q "smoke-test-key-not-a-secret" <<<"$OUT"; then
    not_ok "set-secret with a piped line: the secret was shown"
else
    check "set-secret with a piped line stores it" 0 "^SUPPLIER_KEY=keyring:csc-smoke-test/SUPPLIER_KEY\$" \
        '^Stored SUPPLIER_KEY in the Windows Credential Manager .*as the generic credential "csc-smoke-test/SUPPLIER_KEY"'
fi

# Each secret is a generic credential of its own, named as its reference: storing a second one, and
# one again, moves nothing (keyring's own scheme moved the first to SUPPLIER_KEY@csc-smoke-test).
# (Under wine, the entries an earlier smoke test left were removed before the first was stored.)
STDIN_TEXT=$'smoke-test-secret-not-a-secret\r\n'
run_exe set-secret client_secret --service csc-smoke-test
run_exe set-secret SUPPLIER_KEY --service csc-smoke-test
STDIN_TEXT=""
check "set-secret: a second secret, and one again" 0 "^SUPPLIER_KEY=keyring:csc-smoke-test/SUPPLIER_KEY\$"
if [ "$ON_WINDOWS" = 0 ]; then # wine keeps its Credential Manager in the registry
    OUT=$(wine reg query 'HKCU\Software\Wine\Credential Manager' </dev/null 2>&1 | tr -d '\r' | grep -i 'csc-smoke-test' || true)
    RC=0
    if grep -qF '@csc-smoke-test/' <<<"$OUT"; then
        not_ok "Credential Manager: an entry was moved to USER@csc-smoke-test/..."
    else
        check "Credential Manager: one entry per secret, named as its reference" 0 \
            "Generic: csc-smoke-test/CLIENT_SECRET\$" "Generic: csc-smoke-test/SUPPLIER_KEY\$"
    fi
fi
EXTRA_ENV=(CLIENT_SECRET=keyring:csc-smoke-test/CLIENT_SECRET SUPPLIER_KEY=keyring:csc-smoke-test/SUPPLIER_KEY)
run_exe test-endpoint
EXTRA_ENV=()
if grep -qE "^error: (CLIENT_SECRET|SUPPLIER_KEY)" <<<"$OUT"; then
    not_ok "keyring: references to the stored secrets: want them read"
else
    check_config_error "keyring: references to the stored secrets are read (only other settings missing)" "^error: API_ENDPOINT"
fi

# A .env saved as UTF-16 (Windows PowerShell 5.1's '>') with a quoted Windows path: read, and the
# path keeps its backslashes (\n and \t are folder names, not a new line and a tab).
mkdir -p "$T/utf16"
{
    printf '\xff\xfe'
    printf '# B\xc3\xbcro\r\nDB_CONNECTION_STRING="sqlite:///C:\\data\\new\\test.db"\r\n' | iconv -f UTF-8 -t UTF-16LE
} >"$T/utf16/.env"
RUN_DIR=$T/utf16
run_exe test-db
RUN_DIR=$T/work
if grep -qF 'C:\data\new\test.db does not exist' <<<"$OUT"; then
    check "a UTF-16 .env with a quoted Windows path" 3 "^error: the SQLite database "
else
    not_ok "a UTF-16 .env with a quoted Windows path: want 'C:\\data\\new\\test.db does not exist'"
fi

# The one-file exe killed by force leaves its %TEMP%\_MEI... folder; a later start removes it once
# it is a day old and no copy runs from it. Under wine only: it kills a process by its Linux id.
if [ ! -d "$(dirname "$EXE")/_internal" ] && [ "$ON_WINDOWS" = 0 ]; then
    check_killed_run_leftovers
fi

# A .env naming a folder the ANSI code page cannot spell, its output going to a pipe: the message
# arrives as UTF-8 (it used to be '?ód?'). And a log folder on a share that cannot be reached is
# said to be so by status (exit 2), not "no run summaries yet".
mkdir -p "$T/letters"
printf 'DB_CONNECTION_STRING=sqlite:///C:/\xc5\x81\xc3\xb3d\xc5\xba/missing.db\r\n' >"$T/letters/.env"
RUN_DIR=$T/letters
run_exe test-db
check "redirected output is UTF-8" 3 'C:\\Łódź\\missing\.db does not exist'
run_exe status --log-dir '\\nonexistent.invalid\share\csc\logs'
RUN_DIR=$T/work
check_config_error "status with a log folder on a share that cannot be reached" \
    'cannot read the run summaries in \\\\nonexistent\.invalid\\share\\csc\\logs: it cannot be reached'

# demo started where an administrator's command prompt opens (System32, under wine) goes to the
# user's own folder, and says so.
if [ "$ON_WINDOWS" = 0 ]; then
    RUN_DIR=$WINEPREFIX/drive_c/windows/system32
    rm -rf "$RUN_DIR/csc_api_pipeline_demo" # an older build's, in the test prefix
fi
run_exe demo
demo_output=$OUT
demo_dir=$RUN_DIR
RUN_DIR=$T/work
if [ -e "$demo_dir/csc_api_pipeline_demo" ]; then
    not_ok "demo: it wrote into the folder it was started in ($demo_dir)"
else
    check "demo end to end, in the user's folder" 0 "^Demo folder: .*csc_api_pipeline_demo \(in your user folder" \
        "^Run 1 .*sent [0-9]+" "^Run 2 " "^Check: DfE view equals staging data for ([0-9]+)/\\1 children$"
fi

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
