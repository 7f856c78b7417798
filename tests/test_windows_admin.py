"""A Windows admin's install (issue 26, items 1, 4 to 8 and 10; item 9 is in test_docs.py).

``set-secret`` with no console reads one line from standard input, or says at once how to run
it; it never waits for ever, never shows the secret. The one-file exe removes the copies of
itself that runs stopped by force left in %TEMP% (the logic, on a made-up TEMP folder here; the
exe itself under wine in packaging/smoke_test_exe.sh). A ``-vv`` traceback reaches the run's log
file and the error log, not only a console nobody watches. A console that cannot be written to
decides nothing. Each secret is a Credential Manager entry of its own (keyring's real Windows
backend over the stand-in of tests/credential_manager.py here; the real one under wine), and
the messages about the keyring say what to do. ``demo`` goes to the user's folder, ``status``
says when its log folder cannot be reached, and redirected output is UTF-8.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from api_pipeline.cli.console import NO_CONSOLE_INPUT, read_hidden, read_piped_line
from api_pipeline.cli.credentials import set_secret_command
from api_pipeline.cli.onefile import CLAIMED_SUFFIX, STALE_AFTER, remove_stale_copies
from api_pipeline.errors import ConfigError
from api_pipeline.job.logs import ERROR_LOG_NAME
from api_pipeline.job.pipeline import Pipeline
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from api_pipeline.settings.context import Context
from conftest import db_env, insert, run_cli

keyring = pytest.importorskip("keyring")
from credential_manager import credential_manager  # noqa: E402
from file_keyring import BACKEND, FILE_VARIABLE, FileKeyring  # noqa: E402
from keyring.backend import KeyringBackend  # noqa: E402

TESTS = Path(__file__).resolve().parent
SECRET = "piped-Secret-Do-Not-Show-26"


# -- item 1: set-secret without a console ----------------------------------------------------------------


def set_secret(
    tmp_path: Path, *args: str, stdin, text: str | None = None, backend: str = BACKEND, command: str = "set-secret"
) -> subprocess.CompletedProcess:
    """``python -m api_pipeline set-secret ...`` (or another ``command``) as a deployment script runs it:
    standard input not a console, and a keyring that keeps its secrets in a file (or ``backend``)."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSC_", "PYTHON_KEYRING"))}
    environ |= {
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS), environ.get("PYTHONPATH", "")]),
        "PYTHON_KEYRING_BACKEND": backend,
        FILE_VARIABLE: str(tmp_path / "keyring.json"),
    }
    return subprocess.run(
        [sys.executable, "-m", "api_pipeline", command, *args],
        cwd=tmp_path,
        env=environ,
        stdin=stdin,
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )


def stored(tmp_path: Path) -> str:
    path = tmp_path / "keyring.json"
    return path.read_text(encoding="utf-8") if path.exists() else ""


def test_set_secret_with_no_console_stores_the_line_piped_in_without_showing_it(tmp_path) -> None:
    result = set_secret(tmp_path, "client_secret", stdin=None, text=f"{SECRET}\r\nanything after the line\n")
    assert result.returncode == 0, result.stderr
    assert f'"csc-api-pipeline/CLIENT_SECRET/CLIENT_SECRET": "{SECRET}"' in stored(tmp_path)  # service/user
    assert "CLIENT_SECRET=keyring:csc-api-pipeline/CLIENT_SECRET" in result.stdout
    assert SECRET not in result.stdout + result.stderr
    assert "not shown" not in result.stdout + result.stderr  # no prompt: nobody is there to read it
    assert result.stderr == ""  # a deployment script that stops on anything on stderr goes on


@pytest.mark.parametrize(
    ("piped", "says"),
    [
        (None, "standard input was empty"),  # < NUL
        ("", "standard input was empty"),
        ("\n", "standard input was empty"),
        ("a" * 5000, "longer than 4096 bytes"),
        ("sec\x00ret\n", "control character"),
    ],
)
def test_set_secret_with_no_console_and_nothing_usable_piped_in_stops_at_once(tmp_path, piped, says) -> None:
    started = time.monotonic()
    result = set_secret(tmp_path, "CLIENT_SECRET", stdin=subprocess.DEVNULL if piped is None else None, text=piped)
    assert time.monotonic() - started < 20
    assert result.returncode == 2
    assert result.stderr.startswith("error: set-secret: ") and says in result.stderr
    assert "nothing was stored" in result.stderr and stored(tmp_path) == ""
    assert "Traceback" not in result.stderr


def test_set_secret_with_nul_says_how_to_run_it(tmp_path) -> None:
    result = set_secret(tmp_path, "SUPPLIER_KEY", stdin=subprocess.DEVNULL)
    assert "Run set-secret in a console window" in result.stderr
    assert "type secret.txt | csc_api_pipeline.exe set-secret SUPPLIER_KEY" in result.stderr


def test_a_pipe_nobody_writes_to_is_waited_for_a_bounded_time() -> None:
    reading, writing = os.pipe()
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="no line arrived on standard input within 0.3 seconds"):
            read_piped_line(reading, wait=0.3)
        assert time.monotonic() - started < 5
    finally:
        os.close(writing)
        os.close(reading)


def test_a_line_arriving_in_pieces_is_read_to_its_end_and_no_further() -> None:
    reading, writing = os.pipe()

    def write_slowly() -> None:
        for piece in (b"\xef\xbb\xbfpart-", b"one", b"\r\nsecond line\n"):
            os.write(writing, piece)
            time.sleep(0.05)

    writer = threading.Thread(target=write_slowly)
    writer.start()
    try:
        assert read_piped_line(reading, wait=10) == "part-one"  # a byte-order mark from PowerShell is dropped
    finally:
        writer.join()
        os.close(writing)
        os.close(reading)


def test_the_windows_console_prompt_ends_when_there_is_no_console() -> None:
    """getpass on Windows appends msvcrt.getwch()'s answer until Enter; with no console that answer is
    '\\uffff' at once, for ever: the spin. The prompt here ends there instead."""
    calls = 0

    def no_console() -> str:
        nonlocal calls
        calls += 1
        if calls > 10_000:
            raise AssertionError("still reading: the prompt spins")
        return NO_CONSOLE_INPUT

    shown: list[str] = []
    with pytest.raises(EOFError):
        read_hidden("CLIENT_SECRET: ", getch=no_console, putch=shown.append)
    assert calls == 1 and "".join(shown) == "CLIENT_SECRET: "


def test_the_windows_console_prompt_reads_a_typed_line_without_showing_it() -> None:
    keys = iter("sekx\bret\r")
    shown: list[str] = []
    assert read_hidden("> ", getch=lambda: next(keys), putch=shown.append) == "sekret"
    assert "".join(shown) == "> \r\n"
    with pytest.raises(ValueError, match="more than 5 characters"):
        read_hidden("> ", getch=lambda: "x", putch=shown.append, limit=5)
    with pytest.raises(KeyboardInterrupt):
        read_hidden("> ", getch=lambda: "\x03", putch=shown.append)


# -- item 4: the one-file exe's copies in %TEMP% ---------------------------------------------------------

NOW = 2_000_000_000.0
OLD = NOW - STALE_AFTER - 3600


def unpacked(temp: Path, name: str, *, mtime: float, own: bool = True) -> Path:
    """A folder as the one-file exe unpacks itself: the Python DLL, and (when it is this program's) its schema."""
    folder = temp / name
    (folder / "api_pipeline" / "data").mkdir(parents=True) if own else folder.mkdir(parents=True)
    for dll in ("python3.dll", "python311.dll"):
        (folder / dll).write_bytes(b"MZ")
    if own:
        (folder / "api_pipeline" / "data" / "schema.json").write_text("{}", encoding="utf-8")
    os.utime(folder, (mtime, mtime))
    return folder


def deleting_as_windows_does(*loaded: Path):
    """os.remove as Windows does it: a DLL a running process has loaded cannot be deleted."""

    def delete(path: Path) -> None:
        if path.parent in loaded:
            raise PermissionError(13, "Access is denied")
        os.remove(path)

    return delete


def renaming_as_windows_does(*open_in: Path):
    """os.rename as Windows does it: a folder with a file open in it cannot be renamed."""

    def rename(source: Path, target: Path) -> None:
        if source in open_in:
            raise PermissionError(13, "The process cannot access the file because it is being used")
        os.rename(source, target)

    return rename


def test_only_stale_unused_copies_of_this_program_are_removed(tmp_path) -> None:
    temp = tmp_path / "Temp"
    stale = unpacked(temp, "_MEI123452", mtime=OLD)
    stale_too = unpacked(temp, "_MEIa1B2c3", mtime=OLD)
    running = unpacked(temp, "_MEI99992", mtime=OLD)  # this run's own, however old
    in_use = unpacked(temp, "_MEI55552", mtime=OLD)  # a week-long run still going: its DLL is loaded
    open_in = unpacked(temp, "_MEI55553", mtime=OLD)  # a file in it open
    fresh = unpacked(temp, "_MEI77772", mtime=NOW - 600)  # another run, started ten minutes ago
    someone_elses = unpacked(temp, "_MEI88882", mtime=OLD, own=False)  # another PyInstaller program's
    half_removed = unpacked(temp, "_MEI44442" + CLAIMED_SUFFIX, mtime=NOW, own=False)  # a removal cut short
    not_ours = [unpacked(temp, name, mtime=OLD) for name in ("_MEI", "MEI123", "_MEI1-2", "_mei123")]
    (temp / "_MEI66662").write_text("a file, not a folder", encoding="utf-8")
    os.utime(temp / "_MEI66662", (OLD, OLD))
    (temp / "_MEI33332").symlink_to(unpacked(tmp_path / "elsewhere", "_MEI1", mtime=OLD), target_is_directory=True)

    removed = remove_stale_copies(
        temp,
        running,
        now=NOW,
        delete=deleting_as_windows_does(in_use),
        rename=renaming_as_windows_does(open_in),
    )

    assert sorted(removed) == ["_MEI123452", "_MEI44442", "_MEIa1B2c3"]
    assert not stale.exists() and not stale_too.exists() and not half_removed.exists()
    for kept in (running, in_use, fresh, someone_elses, *not_ours):
        assert (kept / "python311.dll").is_file() and (kept / "python3.dll").is_file(), kept
    assert (open_in / "api_pipeline" / "data" / "schema.json").is_file()  # its DLLs went; nothing else did
    assert (temp / "_MEI66662").is_file() and (tmp_path / "elsewhere" / "_MEI1" / "python311.dll").is_file()
    assert sorted(path.name for path in temp.iterdir() if path.name.endswith(CLAIMED_SUFFIX)) == []


def test_a_temp_folder_that_cannot_be_read_removes_nothing_and_raises_nothing(tmp_path) -> None:
    assert remove_stale_copies(tmp_path / "missing", None, now=NOW) == []


def test_the_cleanup_runs_only_in_the_one_file_exe_on_windows() -> None:
    from api_pipeline.cli.onefile import clean_up_after_runs_stopped_by_force

    assert not getattr(sys, "frozen", False)
    assert clean_up_after_runs_stopped_by_force() == []  # python -m api_pipeline: nothing to clean
    entry_point = (TESTS.parent / "api_pipeline" / "cli" / "entry_point.py").read_text(encoding="utf-8")
    assert entry_point.index("clean_up_after_runs_stopped_by_force()") < entry_point.index("code = main()")


def test_scheduling_recommends_the_one_folder_build_for_scheduled_tasks() -> None:
    text = " ".join((TESTS.parent / "docs" / "scheduling.md").read_text(encoding="utf-8").split())
    assert "one-folder build" in text and "%TEMP%" in text


# -- item 5: -vv tracebacks in the files -----------------------------------------------------------------


def test_a_vv_traceback_reaches_the_run_log_and_the_error_log_masked(simulator, db_path, monkeypatch) -> None:
    insert(db_path, list(make_children(1, seed=265)))
    secret = simulator.settings_env()["CLIENT_SECRET"]

    def fault(self):  # a bug in the tool, which no test of the real parts can provoke
        raise RuntimeError(f"quoting {secret}\nERROR forged line")

    monkeypatch.setattr(Pipeline, "run", fault)
    environ = dict(simulator.settings_env()) | db_env(db_path)
    result = run_cli(["-vv", "run"], environ=environ, cwd=db_path.parent)
    assert result.code == 1 and "Traceback (most recent call last):" in result.err
    error_log = db_path.parent / "logs" / ERROR_LOG_NAME
    (log_file,) = set((db_path.parent / "logs").glob("*.log")) - {error_log}
    for text in (log_file.read_text(encoding="utf-8"), error_log.read_text(encoding="utf-8")):
        assert "Traceback (most recent call last):" in text and "in fault" in text
        assert secret not in text and "<hidden>" in text
        assert "\nERROR forged line" not in text  # what the exception says stays on one line
    assert "'run' stopped with an unexpected error (exit code 1); traceback (-vv):" in error_log.read_text(
        encoding="utf-8"
    )


def test_without_vv_the_traceback_stays_out_of_the_files(simulator, db_path, monkeypatch) -> None:
    insert(db_path, list(make_children(1, seed=266)))
    monkeypatch.setattr(Pipeline, "run", lambda self: {}["missing"])
    result = run_cli(["run"], environ=dict(simulator.settings_env()) | db_env(db_path), cwd=db_path.parent)
    assert result.code == 1 and "Traceback" not in result.err
    (log_file,) = (db_path.parent / "logs").glob("*.log")
    assert "Traceback" not in log_file.read_text(encoding="utf-8")
    assert not (db_path.parent / "logs" / ERROR_LOG_NAME).exists()


# -- item 6: a console that cannot be written to ---------------------------------------------------------


def the_program(*args: str, cwd: Path, env: dict[str, str] | None = None, console: str) -> subprocess.CompletedProcess:
    """``python -m api_pipeline ARGS`` with a console that takes no writes, as the program itself meets it.

    ``console="unwritable"``: stdout and stderr are a terminal (so the progress bar is drawn) opened
    for reading only, so every write fails with OSError errno 9, as a detached console's does under
    wine. ``console="closed"``: both closed before the program starts (``>&- 2>&-``).
    """
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSC_", "PYTHON_KEYRING"))}
    environ |= {"PYTHONPATH": os.pathsep.join([str(TESTS.parent), environ.get("PYTHONPATH", "")])} | (env or {})
    command = [sys.executable, "-m", "api_pipeline", *args]
    if console == "closed":
        return subprocess.run(
            ["bash", "-c", 'exec "$@" >&- 2>&-', "bash", *command], cwd=cwd, env=environ, stdin=subprocess.DEVNULL
        )
    controller, terminal = os.openpty()
    unwritable = os.open(os.ttyname(terminal), os.O_RDONLY | os.O_NOCTTY)
    try:
        return subprocess.run(
            command, cwd=cwd, env=environ, stdin=subprocess.DEVNULL, stdout=unwritable, stderr=unwritable, timeout=120
        )
    finally:
        for fd in (unwritable, terminal, controller):
            os.close(fd)


def test_a_console_that_fails_every_write_never_decides_a_run(simulator, db_path) -> None:
    insert(db_path, list(make_children(3, seed=2606)))
    environ = dict(simulator.settings_env()) | db_env(db_path)
    result = the_program("run", cwd=db_path.parent, env=environ, console="unwritable")
    assert result.returncode == 0
    assert len(simulator.snapshot()) == 3
    (log_file,) = (db_path.parent / "logs").glob("*.log")
    text = log_file.read_text(encoding="utf-8")
    assert "the console could not be written to (standard error: Bad file descriptor (errno 9))" in text
    (summary,) = (db_path.parent / "logs").glob("*.summary.json")
    summary = json.loads(summary.read_text(encoding="utf-8"))
    assert summary["exit_code"] == 0 and summary["outcomes"]["sent"] == 3
    assert not (db_path.parent / "logs" / ERROR_LOG_NAME).exists()


@pytest.mark.parametrize("console", ["unwritable", "closed"])
def test_a_settings_error_with_no_console_still_exits_2_and_reaches_the_error_log(tmp_path, console) -> None:
    result = the_program("run", cwd=tmp_path, console=console)
    assert result.returncode == 2
    text = (tmp_path / "logs" / ERROR_LOG_NAME).read_text(encoding="utf-8")
    assert "'run' stopped with exit code 2" in text
    assert "error: DB_CONNECTION_STRING: not set" in text


@pytest.mark.parametrize("console", ["unwritable", "closed"])
def test_an_error_the_console_could_not_show_is_kept_in_the_error_log(tmp_path, console) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text("DB_CONNECTION_STRING=sqlite:///missing.db\n", encoding="utf-8")
    result = the_program("test-db", cwd=tmp_path, console=console)
    assert result.returncode == 3
    text = (tmp_path / "logs" / ERROR_LOG_NAME).read_text(encoding="utf-8")
    assert "'test-db' stopped with exit code 3" in text and "the console could not show this" in text
    assert "missing.db" in text


# -- item 7: Credential Manager messages and entries -----------------------------------------------------


def stored_by_set_secret(name: str, value: str, tmp_path: Path, **options: str) -> str:
    out = io.StringIO()
    ctx = Context(environ={"USERNAME": "svc-csc"}, cwd=tmp_path, out=out, err=io.StringIO())
    assert set_secret_command(name, ctx, prompt=lambda _: value, **options) == 0
    return out.getvalue()


REFERENCES = {
    "CLIENT_SECRET": "keyring:csc-api-pipeline/CLIENT_SECRET",
    "SUPPLIER_KEY": "keyring:csc-api-pipeline/SUPPLIER_KEY",
}


def test_each_secret_has_a_credential_manager_entry_of_its_own_named_as_its_reference(tmp_path) -> None:
    with credential_manager() as windows:
        printed = stored_by_set_secret("CLIENT_SECRET", "first-secret-Do-Not-Show", tmp_path)
        stored_by_set_secret("supplier_key", "key-Do-Not-Show", tmp_path)
        entries = {"csc-api-pipeline/CLIENT_SECRET": "CLIENT_SECRET", "csc-api-pipeline/SUPPLIER_KEY": "SUPPLIER_KEY"}
        assert windows.targets() == entries
        assert '"csc-api-pipeline/CLIENT_SECRET" (user name CLIENT_SECRET)' in printed

        stored_by_set_secret("CLIENT_SECRET", "next-secret-Do-Not-Show", tmp_path)  # DfE's next secret
        assert windows.targets() == entries  # replaced in place: no copy of the old one left under another name
        settings = load_settings(command="demo", environ=REFERENCES)
    assert settings.client_secret.reveal() == "next-secret-Do-Not-Show"
    assert settings.supplier_key.reveal() == "key-Do-Not-Show"


def test_secrets_stored_the_earlier_way_are_still_read_and_get_their_own_entry_when_stored_again(tmp_path) -> None:
    with credential_manager() as windows:
        earlier = keyring.get_keyring()  # as earlier versions stored them: under the service alone
        earlier.set_password("csc-api-pipeline", "CLIENT_SECRET", "old-secret-Do-Not-Show")
        earlier.set_password("csc-api-pipeline", "SUPPLIER_KEY", "key-Do-Not-Show")
        assert windows.targets() == {  # the entries the issue saw move
            "csc-api-pipeline": "SUPPLIER_KEY",
            "CLIENT_SECRET@csc-api-pipeline": "CLIENT_SECRET",
        }
        settings = load_settings(command="demo", environ=REFERENCES)
        assert settings.client_secret.reveal() == "old-secret-Do-Not-Show"
        assert settings.supplier_key.reveal() == "key-Do-Not-Show"

        printed = stored_by_set_secret("CLIENT_SECRET", "new-secret-Do-Not-Show", tmp_path)
        assert "The copy an earlier version kept under csc-api-pipeline alone was removed" in printed
        assert windows.targets() == {
            "csc-api-pipeline": "SUPPLIER_KEY",
            "csc-api-pipeline/CLIENT_SECRET": "CLIENT_SECRET",
        }
        settings = load_settings(command="demo", environ=REFERENCES)
    assert settings.client_secret.reveal() == "new-secret-Do-Not-Show"
    assert settings.supplier_key.reveal() == "key-Do-Not-Show"


def test_a_credential_manager_that_cannot_be_used_gives_windows_error_code_and_a_hint(tmp_path) -> None:
    no_logon_session = (1312, "A specified logon session does not exist. It may already have been terminated.")
    with credential_manager() as windows:
        windows.failing = no_logon_session
        with pytest.raises(ConfigError) as caught:
            load_settings(command="demo", environ={"CLIENT_SECRET": REFERENCES["CLIENT_SECRET"]})
        with pytest.raises(ConfigError) as storing:
            stored_by_set_secret("CLIENT_SECRET", "secret-Do-Not-Show", tmp_path)
    (problem,) = caught.value.problems
    assert problem.startswith(
        "CLIENT_SECRET: cannot read keyring:csc-api-pipeline/CLIENT_SECRET: the keyring could not be read (Windows "
        "error 1312: A specified logon session does not exist. It may already have been terminated; this account "
        "has no Credential Manager in this logon"
    )
    assert '"Do not store password"' in problem
    assert "refused to store it (Windows error 1312: " in str(storing.value) and "Do-Not-Show" not in str(storing.value)


def test_set_secret_stores_any_name_a_reference_uses_and_the_advice_for_a_missing_one_works(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv(FILE_VARIABLE, str(tmp_path / "keyring.json"))
    environ = {
        "CLIENT_SECRET": "keyring:csc-api-pipeline/live_client_secret",
        "SUPPLIER_KEY": "keyring:council csc/supplier_key",  # a setting's name in lower case, a service with a space
    }
    previous = keyring.get_keyring()
    keyring.set_keyring(FileKeyring())
    try:
        with pytest.raises(ConfigError) as caught:
            load_settings(command="demo", environ=environ)
        advice = [
            re.search(r"Store it with: csc_api_pipeline.exe (.*) \(as the Windows", p) for p in caught.value.problems
        ]
        commands = [shlex.split(found.group(1)) for found in advice if found]
        assert commands == [
            ["set-secret", "live_client_secret", "--service", "csc-api-pipeline"],
            ["set-secret", "supplier_key", "--service", "council csc"],
        ]
        for command, value in zip(commands, ["live-secret-Do-Not-Show", "key-Do-Not-Show"], strict=True):
            result = set_secret(tmp_path, *command[1:], stdin=None, text=value)  # as the message says to
            assert result.returncode == 0, result.stderr
        assert (
            "CLIENT_SECRET=keyring:csc-api-pipeline/live_client_secret"
            in set_secret(tmp_path, *commands[0][1:], stdin=None, text="live-secret-Do-Not-Show").stdout
        )
        settings = load_settings(command="demo", environ=environ)
    finally:
        keyring.set_keyring(previous)
    assert settings.client_secret.reveal() == "live-secret-Do-Not-Show"
    assert settings.supplier_key.reveal() == "key-Do-Not-Show"


def test_set_secret_refuses_a_name_no_reference_can_end_with_and_settings_that_are_not_secret(tmp_path) -> None:
    for name, says in [("csc/CLIENT_SECRET", "has a '/'"), ("client_id", "CLIENT_ID is not a secret"), (" ", "give")]:
        result = set_secret(tmp_path, name, stdin=None, text="x-Do-Not-Show")
        assert result.returncode == 2 and says in result.stderr, result.stderr
    assert stored(tmp_path) == ""


def test_a_keyring_backend_that_cannot_be_loaded_is_a_settings_error(tmp_path) -> None:
    result = set_secret(tmp_path, "CLIENT_SECRET", stdin=None, text="s-Do-Not-Show", backend="no.such.Backend")
    assert result.returncode == 2 and "unexpected error" not in result.stderr
    assert result.stderr.startswith(
        "error: set-secret: cannot store CLIENT_SECRET: the keyring named by PYTHON_KEYRING_BACKEND (or by keyring's "
        "own keyringrc.cfg file) cannot be used (ModuleNotFoundError: No module named 'no')"
    )
    (tmp_path / ".env").write_text(
        "DB_CONNECTION_STRING=sqlite:///x.db\nDB_PASSWORD=keyring:svc/DB_PASSWORD\n", "utf-8"
    )
    result = set_secret(tmp_path, stdin=subprocess.DEVNULL, backend="no.such.Backend", command="test-db")
    assert result.returncode == 2 and "unexpected error" not in result.stderr
    assert "error: DB_PASSWORD: cannot read keyring:svc/DB_PASSWORD: the keyring named by PYTHON_KEYRING_BACKEND" in (
        result.stderr
    )


def test_a_keyring_that_keeps_nothing_never_gets_stored_said(tmp_path) -> None:
    result = set_secret(
        tmp_path, "CLIENT_SECRET", stdin=None, text="s-Do-Not-Show", backend="keyring.backends.null.Keyring"
    )
    assert result.returncode == 2 and "Stored" not in result.stdout
    assert "the keyring chosen (keyring.backends.null.Keyring, by PYTHON_KEYRING_BACKEND" in result.stderr
    assert "keeps nothing" in result.stderr

    class Forgetful(KeyringBackend):  # a backend that says nothing, and keeps nothing
        priority = 1  # type: ignore[assignment]

        def get_password(self, service: str, username: str) -> None:
            return None

        def set_password(self, service: str, username: str, password: str) -> None:
            pass

        def delete_password(self, service: str, username: str) -> None:
            pass

    previous = keyring.get_keyring()
    keyring.set_keyring(Forgetful())
    try:
        with pytest.raises(ConfigError, match="took it but did not give it back when asked"):
            stored_by_set_secret("CLIENT_SECRET", "s-Do-Not-Show", tmp_path)
    finally:
        keyring.set_keyring(previous)


# -- item 8: demo from an administrator's prompt ----------------------------------------------------------


def test_demo_started_in_system32_goes_to_the_users_own_folder_and_says_where(tmp_path) -> None:
    system32 = tmp_path / "Windows" / "System32"  # where an elevated command prompt opens
    home = tmp_path / "Users" / "analyst"
    system32.mkdir(parents=True)
    home.mkdir(parents=True)
    result = run_cli(["demo", "--children", "4"], environ={"HOME": str(home), "USERPROFILE": str(home)}, cwd=system32)
    assert result.code == 0, result.err
    folder = home / "csc_api_pipeline_demo"
    assert (folder / "staging.db").is_file() and list(system32.iterdir()) == []
    assert f"Demo folder: {folder} (in your user folder; --dir FOLDER puts it elsewhere)" in result.out
    assert result.out.rstrip().endswith(f"Everything the demo made is in {folder}")

    again = run_cli(["demo", "--children", "4", "--dir", "mine"], environ={"HOME": str(home)}, cwd=tmp_path)
    assert again.code == 0 and (tmp_path / "mine" / "staging.db").is_file()  # --dir: from where it was started
    assert f"Demo folder: {tmp_path / 'mine'}\n" in again.out


# -- item 10: status on a log folder that cannot be reached; redirected output in UTF-8 -------------------


def test_status_on_a_log_folder_that_cannot_be_reached_says_so_and_exits_2(db_path) -> None:
    insert(db_path, list(make_children(1, seed=2610)))
    share = db_path.parent / "share-not-mounted" / "csc" / "logs"  # as \\server\share\csc\logs when it is down
    result = run_cli(["status", "--log-dir", str(share)], environ=db_env(db_path), cwd=db_path.parent)
    assert result.code == 2 and result.out == ""
    assert (
        f"error: LOG_DIR (or --log-dir): cannot read the run summaries in {share}: it cannot be reached" in result.err
    )
    assert "No run summaries" not in result.err

    blocked = db_path.parent / "a-file"
    blocked.write_text("", encoding="utf-8")
    result = run_cli(["status", "--log-dir", str(blocked)], environ=db_env(db_path), cwd=db_path.parent)
    assert result.code == 2 and "a file is in the way" in result.err


def test_status_before_the_first_run_still_says_none_yet(db_path) -> None:
    insert(db_path, list(make_children(1, seed=2611)))
    result = run_cli(["status"], environ=db_env(db_path), cwd=db_path.parent)  # logs\ beside it: not made yet
    assert result.code == 0 and f"No run summaries in {db_path.parent / 'logs'} yet." in result.out


def redirected(tmp_path: Path, **env: str) -> bytes:
    """What ``test-db`` writes to a file, on a system whose redirected output is not UTF-8 (as Windows
    writes it in the ANSI code page), for a .env naming a database in the folder Łódź."""
    folder = tmp_path / "start"
    folder.mkdir(exist_ok=True)
    (folder / ".env").write_text(f"DB_CONNECTION_STRING=sqlite:///{tmp_path.as_posix()}/Łódź/missing.db\n", "utf-8")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSC_", "PYTHONIOENCODING", "LC_", "LANG"))}
    environ |= {"LC_ALL": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"} | env
    out = folder / "out.txt"
    with out.open("wb") as handle:
        result = subprocess.run(
            [sys.executable, "-m", "api_pipeline", "test-db"], cwd=folder, env=environ, stdout=handle, stderr=handle
        )
    assert result.returncode == 3
    return out.read_bytes()


def test_redirected_output_is_utf8_whatever_the_code_page(tmp_path) -> None:
    assert "/Łódź/missing.db does not exist".encode() in redirected(tmp_path)


def test_pythonioencoding_still_chooses_the_encoding_of_redirected_output(tmp_path) -> None:
    assert "/?ód?/missing.db does not exist".encode("cp1252") in redirected(tmp_path, PYTHONIOENCODING="cp1252")
