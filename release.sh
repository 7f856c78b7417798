#!/usr/bin/env bash
# Make a release of CSC API Pipeline.
#
#   ./release.sh X.Y.Z [--exe] [--docs] [--no-push]
#   ./release.sh --secrets-baseline      rewrite packaging/secrets-baseline.json, for review
#   ./release.sh --tools                 only prepare the release tools, then stop
#
# In order, stopping at the first problem:
#   1. refuses unless the git tree is clean (no changes, no new files), X.Y.Z is higher than
#      the current version (api_pipeline/about.py, the one place it lives) and tag vX.Y.Z
#      is new;
#   2. scans the tracked files for secrets: detect-secrets (anything not already audited in
#      packaging/secrets-baseline.json fails), and gitleaks too when it is installed;
#   3. sets __version__ to X.Y.Z and moves CHANGELOG.md's "## [Unreleased]" notes under
#      "## [X.Y.Z] - <today>", leaving an empty Unreleased section above;
#   4. runs the tests (python -m pytest -q);
#   5. builds the sdist and wheel into dist/ and checks them with twine;
#   6. --exe: builds csc_api_pipeline.exe under wine (packaging/build_windows_exe.sh) and
#      smoke-tests it; --docs: builds the docs site and PDF (tools/docs/build.py);
#   7. writes dist/release.zip (exe if built, .env.example, README, LICENSE, CHANGELOG, the
#      docs PDF if present at site/csc-api-pipeline-docs.pdf, SHA256SUMS) and dist/SHA256SUMS;
#   8. commits "Release X.Y.Z", tags vX.Y.Z, and pushes both to origin unless --no-push.
# If a step before the commit fails, the version and changelog edits are undone.
# Pushing the tag starts .github/workflows/build-release-exe.yml, which builds the exe on Windows and
# publishes the GitHub release.
#
# Environment: PYTHON (default python3) runs the tests and makes the tools' venv;
# CSC_RELEASE_TOOLS (default ~/.cache/csc_api_pipeline/release-tools) is that venv, with
# packaging/release-tools.txt; CSC_RELEASE_SKIP_TESTS=1 skips step 4 (the project's own test
# of this script uses it).
set -euo pipefail

REPO=$(cd "$(dirname "$0")" && pwd)
cd "$REPO"
PYTHON=${PYTHON:-python3}
TOOLS=${CSC_RELEASE_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/csc_api_pipeline/release-tools}
BASELINE=packaging/secrets-baseline.json
PDF=site/csc-api-pipeline-docs.pdf

die() {
    echo "release.sh: error: $*" >&2
    exit 1
}

say() {
    echo "== $*"
}

usage() {
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
}

# --- The release tools, in their own venv --------------------------------------------------
tools() {
    local stamp=$TOOLS/.requirements
    if [ -x "$TOOLS/bin/python" ] && cmp -s "$stamp" packaging/release-tools.txt; then
        return 0
    fi
    say "installing the release tools into $TOOLS"
    rm -rf "$TOOLS"
    "$PYTHON" -m venv "$TOOLS" || die "$PYTHON cannot make a virtual environment"
    "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check -r packaging/release-tools.txt 2>&1 |
        { grep -v "is ignored: it is neither a file nor a directory" || true; } ||
        die "could not install the release tools (packaging/release-tools.txt)"
    cp packaging/release-tools.txt "$stamp"
}

# --- The secret scan -------------------------------------------------------------------------
detect_secrets_scan() {
    # Scans the files git tracks and the new ones it does not ignore (for a release the tree
    # is clean, so they are the same), less the baseline, which is made of hashes. JSON out.
    local files=() file
    while IFS= read -r -d '' file; do
        [ -f "$file" ] && [ "$file" != "$BASELINE" ] && files+=("$file")
    done < <(git ls-files -z -co --exclude-standard)
    "$TOOLS/bin/detect-secrets" scan "${files[@]}"
}

secret_scan() {
    say "secret scan: detect-secrets"
    local report
    report=$(mktemp)
    detect_secrets_scan >"$report" || die "detect-secrets failed"
    # New findings are those not already audited into the baseline (matched by file and the
    # secret's hash, so moved lines do not count). Only file, line and kind are printed.
    if ! "$TOOLS/bin/python" - "$report" "$BASELINE" <<'EOF'; then
import json, pathlib, sys
found = json.loads(pathlib.Path(sys.argv[1]).read_text())["results"]
baseline_path = pathlib.Path(sys.argv[2])
known = set()
if baseline_path.is_file():
    for filename, items in json.loads(baseline_path.read_text())["results"].items():
        known |= {(filename, item["hashed_secret"]) for item in items}
new = [(f, i["line_number"], i["type"]) for f, items in found.items() for i in items if (f, i["hashed_secret"]) not in known]
for filename, line, kind in sorted(new):
    print(f"  {filename}:{line}: {kind}")
if new:
    print(f"{len(new)} possible secret(s) not in {baseline_path}.")
    sys.exit(1)
print(f"  nothing new ({sum(map(len, found.values()))} audited finding(s) in {baseline_path})")
EOF
        rm -f "$report"
        die "the secret scan found something. Remove real secrets (and rotate them); if these are test values, run './release.sh --secrets-baseline', review the diff, and commit it"
    fi
    rm -f "$report"
    if command -v gitleaks >/dev/null; then
        say "secret scan: gitleaks"
        gitleaks detect --source . --config packaging/gitleaks.toml --redact --no-banner ||
            die "gitleaks found something (above)"
    else
        say "secret scan: gitleaks is not installed; skipped"
    fi
}

# --- Versions ----------------------------------------------------------------------------------
current_version() {
    sed -n 's/^__version__ = "\(.*\)"$/\1/p' api_pipeline/about.py
}

# Exit 0 when $1 is a higher PEP 440 version than $2 (X.Y.Z, with aN/bN/rcN, .postN, .devN).
version_higher() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import re, sys
def key(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)*)(?:(a|b|rc)(\d+))?(?:\.post(\d+))?(?:\.dev(\d+))?", text)
    if not m:
        sys.exit(f"release.sh: error: cannot read version {text!r}")
    release = tuple(int(n) for n in m.group(1).split("."))
    release += (0,) * (6 - len(release))
    if m.group(2):
        pre = ({"a": 0, "b": 1, "rc": 2}[m.group(2)], int(m.group(3)))
    elif m.group(5) is not None and m.group(4) is None:
        pre = (-1, 0)  # X.Y.Z.devN comes before X.Y.Za1
    else:
        pre = (3, 0)
    post = int(m.group(4)) if m.group(4) is not None else -1
    dev = int(m.group(5)) if m.group(5) is not None else sys.maxsize
    return (release, pre, post, dev)
sys.exit(0 if key(sys.argv[1]) > key(sys.argv[2]) else 1)
EOF
}

# --- Arguments ---------------------------------------------------------------------------------
VERSION=""
EXE=0
DOCS=0
PUSH=1
MODE=release
while [ $# -gt 0 ]; do
    case "$1" in
        -h | --help)
            usage
            exit 0
            ;;
        --exe) EXE=1 ;;
        --docs) DOCS=1 ;;
        --no-push) PUSH=0 ;;
        --secrets-baseline) MODE=baseline ;;
        --tools) MODE=tools ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *)
            [ -z "$VERSION" ] || die "one version only (see --help)"
            VERSION=$1
            ;;
    esac
    shift
done

case "$MODE" in
    tools)
        tools
        say "release tools ready in $TOOLS"
        exit 0
        ;;
    baseline)
        tools
        detect_secrets_scan >"$BASELINE"
        say "wrote $BASELINE: review every finding ('git diff $BASELINE'; '$TOOLS/bin/detect-secrets audit $BASELINE'), then commit it"
        exit 0
        ;;
esac

# --- 1. Refuse what would make a bad release -----------------------------------------------
[ -n "$VERSION" ] || {
    usage >&2
    exit 2
}
[[ "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "the version must look like X.Y.Z (for example 1.2.0), not '$VERSION'"
git rev-parse --is-inside-work-tree >/dev/null 2>&1 || die "$REPO is not a git repository"
if [ -n "$(git status --porcelain)" ]; then
    git status --short >&2
    die "the working tree is not clean (above): commit or stash first, so the release is exactly what is committed"
fi
CURRENT=$(current_version)
[ -n "$CURRENT" ] || die "no __version__ = \"...\" line in api_pipeline/about.py"
version_higher "$VERSION" "$CURRENT" || die "$VERSION is not higher than the current version $CURRENT"
if git rev-parse -q --verify "refs/tags/v$VERSION" >/dev/null; then
    die "tag v$VERSION already exists"
fi
grep -q '^## \[Unreleased\]' CHANGELOG.md || die "CHANGELOG.md has no '## [Unreleased]' section"
BRANCH=$(git symbolic-ref --short -q HEAD) || die "HEAD is detached: check out the branch to release"
if [ "$PUSH" = 1 ]; then
    git remote get-url origin >/dev/null 2>&1 || die "no 'origin' remote to push to (use --no-push to release locally)"
fi
say "releasing $VERSION (now $CURRENT) from $BRANCH"
started=$(date +%s)

# --- 2. Secret scan, before anything is changed ---------------------------------------------
tools
secret_scan

# --- 3. Version and changelog (undone if a later step fails) ------------------------------
COMMITTED=0
restore() {
    if [ "$COMMITTED" = 0 ]; then
        git checkout -q -- api_pipeline/about.py CHANGELOG.md 2>/dev/null || true
    fi
}
trap restore EXIT

TODAY=$(date -u +%F)
say "version $CURRENT -> $VERSION; CHANGELOG: [Unreleased] -> [$VERSION] - $TODAY"
"$PYTHON" - "$VERSION" "$TODAY" <<'EOF'
import pathlib, re, sys
version, today = sys.argv[1], sys.argv[2]

init = pathlib.Path("api_pipeline/about.py")
text, count = re.subn(r'^__version__ = "[^"]*"$', f'__version__ = "{version}"', init.read_text(), flags=re.M)
if count != 1:
    sys.exit("release.sh: error: expected one __version__ line in api_pipeline/about.py")
init.write_text(text)

changelog = pathlib.Path("CHANGELOG.md")
text = changelog.read_text()
head = re.search(r"^## \[Unreleased\][^\n]*\n", text, flags=re.M)
following = re.search(r"^## \[", text[head.end():], flags=re.M)
end = head.end() + following.start() if following else len(text)
notes = text[head.end():end]
if not re.search(r"\S", re.sub(r"^#+ .*$", "", notes, flags=re.M)):
    sys.exit("release.sh: error: CHANGELOG.md's Unreleased section is empty: say what changed first")
text = text[: head.start()] + f"## [Unreleased]\n\n## [{version}] - {today}\n" + notes + text[end:]
# Keep-a-Changelog compare links, when the file has them.
link = re.search(r"^\[Unreleased\]: (\S+)/compare/(\S+)\.\.\.HEAD$", text, flags=re.M)
if link:
    base, previous = link.groups()
    text = text.replace(
        link.group(0),
        f"[Unreleased]: {base}/compare/v{version}...HEAD\n[{version}]: {base}/compare/{previous}...v{version}",
    )
changelog.write_text(text)
EOF

# --- 4. Tests ------------------------------------------------------------------------------------
if [ "${CSC_RELEASE_SKIP_TESTS:-0}" = 1 ]; then
    say "tests: skipped (CSC_RELEASE_SKIP_TESTS=1)"
else
    say "tests: $PYTHON -m pytest -q"
    "$PYTHON" -m pytest -q || die "the tests failed"
fi

# --- 5. sdist and wheel --------------------------------------------------------------------------
say "building the sdist and wheel"
mkdir -p dist
rm -f dist/csc_api_pipeline-* dist/release.zip dist/SHA256SUMS dist/csc_api_pipeline.exe dist/"$(basename "$PDF")"
# The wheel is built from the sdist, which proves the sdist is complete.
"$TOOLS/bin/python" -m build --outdir dist . >dist/build.log 2>&1 || {
    tail -30 dist/build.log >&2
    die "python -m build failed (dist/build.log)"
}
WHEEL=dist/csc_api_pipeline-$VERSION-py3-none-any.whl
SDIST=dist/csc_api_pipeline-$VERSION.tar.gz
{ [ -f "$WHEEL" ] && [ -f "$SDIST" ]; } || die "expected $WHEEL and $SDIST; dist/ has: $(ls dist)"
"$TOOLS/bin/twine" check --strict "$WHEEL" "$SDIST" || die "twine check failed"

# --- 6. The exe and the docs, when asked -----------------------------------------------------
ZIP_ARGS=()
if [ "$EXE" = 1 ]; then
    say "building csc_api_pipeline.exe"
    bash packaging/build_windows_exe.sh --onefile
    bash packaging/smoke_test_exe.sh dist/windows/csc_api_pipeline.exe
    cp dist/windows/csc_api_pipeline.exe dist/csc_api_pipeline.exe
    ZIP_ARGS+=(--exe dist/csc_api_pipeline.exe)
fi
if [ "$DOCS" = 1 ]; then
    say "building the docs and PDF"
    "$PYTHON" tools/docs/build.py || die "the docs build failed"
fi
if [ -f "$PDF" ]; then
    say "docs PDF: $PDF, built $(date -r "$PDF" '+%F %T') (--docs rebuilds it)"
    cp "$PDF" dist/
    ZIP_ARGS+=(--pdf "$PDF")
else
    say "docs PDF: none at $PDF (--docs builds it); release.zip goes without"
fi

# --- 7. release.zip and checksums ------------------------------------------------------------
"$PYTHON" packaging/make_release_zip.py --version "$VERSION" --out dist/release.zip "${ZIP_ARGS[@]}"
(
    cd dist
    published=("$(basename "$WHEEL")" "$(basename "$SDIST")" release.zip)
    [ -f csc_api_pipeline.exe ] && published+=(csc_api_pipeline.exe)
    [ -f "$(basename "$PDF")" ] && published+=("$(basename "$PDF")")
    sha256sum -- "${published[@]}" >SHA256SUMS
)

# --- 8. Commit, tag, push --------------------------------------------------------------------------
git add api_pipeline/about.py CHANGELOG.md
git commit -q -m "Release $VERSION" -- api_pipeline/about.py CHANGELOG.md
COMMITTED=1
git tag -a "v$VERSION" -m "CSC API Pipeline $VERSION"
say "committed 'Release $VERSION' and tagged v$VERSION"
if [ "$PUSH" = 1 ]; then
    git push --atomic origin "$BRANCH" "v$VERSION"
    say "pushed $BRANCH and v$VERSION to origin: the release workflow takes it from here"
else
    say "not pushed (--no-push). When ready: git push --atomic origin $BRANCH v$VERSION"
fi

echo
say "release $VERSION in $(($(date +%s) - started)) s:"
(cd dist && cat SHA256SUMS)
