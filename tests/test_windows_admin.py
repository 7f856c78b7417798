"""A Windows admin's install (issue 26, items 1, 4 and 5).

``set-secret`` with no console reads one line from standard input, or says at once how to run
it; it never waits for ever, never shows the secret. The one-file exe removes the copies of
itself that runs stopped by force left in %TEMP% (the logic, on a made-up TEMP folder here; the
exe itself under wine in packaging/smoke_test_exe.sh). A ``-vv`` traceback reaches the run's log
file and the error log, not only a console nobody watches.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api_pipeline.console import NO_CONSOLE_INPUT, read_hidden, read_piped_line

pytest.importorskip("keyring")
from file_keyring import BACKEND, FILE_VARIABLE  # noqa: E402

TESTS = Path(__file__).resolve().parent
SECRET = "piped-Secret-Do-Not-Show-26"


@pytest.fixture(autouse=True)
def _restore_log_propagation() -> Iterator[None]:
    """The CLI's logging setup stops the package logger propagating; later tests' caplog needs it back."""
    logger = logging.getLogger("api_pipeline")
    before = logger.propagate
    yield
    logger.propagate = before


# -- item 1: set-secret without a console ----------------------------------------------------------------


def set_secret(tmp_path: Path, *args: str, stdin, text: str | None = None) -> subprocess.CompletedProcess:
    """``python -m api_pipeline set-secret ...`` as a deployment script runs it: standard input not a console,
    and a keyring that keeps its secrets in a file."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("CSC_", "PYTHON_KEYRING"))}
    environ |= {
        "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS), environ.get("PYTHONPATH", "")]),
        "PYTHON_KEYRING_BACKEND": BACKEND,
        FILE_VARIABLE: str(tmp_path / "keyring.json"),
    }
    return subprocess.run(
        [sys.executable, "-m", "api_pipeline", "set-secret", *args],
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
    assert f'"csc-api-pipeline/CLIENT_SECRET": "{SECRET}"' in stored(tmp_path)
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
