"""The console: writing to one that may fail, whether a person can type at it, reading a secret
from it, and the double-click wait.

A console that cannot be written to (a detached or closed one: ``OSError`` errno 9 under wine),
or output piped to a program that stops reading (``status | head``), never decides a command's
outcome: :class:`ConsoleMayFail` drops what cannot be written and the command carries on with its
own exit code (a reader leaving quietly; a failing console noted in the run's log).

Double-clicked from Explorer, the exe waits for Enter before its console window closes.

Windows gives a program started by a double-click a console window of its own, and closes it
the moment the program ends: the analyst sees a flash and no message. So the exe waits for
Enter then, and only then. Waiting anywhere else would be worse than a vanished window: under
Task Scheduler it would hang the night's run forever. So the decision (:func:`should_wait`)
needs every sign of a double-click at once, and the facts behind it (:func:`launch_facts`)
come from Windows through ctypes, where any error at all means "do not wait".

``set-secret`` reads a secret typed at the console without showing it, or, with no console (a
deployment script, a remote shell, ``< NUL``), the first line of standard input: never waiting for
ever, and never for more than one bounded line (:func:`read_hidden`, :func:`read_piped_line`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, cast


class ConsoleMayFail(io.TextIOBase):
    """stdout or stderr, which may stop taking what is written to it.

    A console window that was detached or closed, or a handle Windows no longer honours, fails
    every write (seen under wine as ``OSError: [Errno 9] Bad file descriptor`` from the progress
    bar). Raised into a command, that would end a night's run as "unexpected error" with exit
    code 1, and stop a settings error's message (exit 2) before it reached the error log. Here
    the first failure ends this stream's output instead: that write and every later one are
    dropped, ``failure`` says why, ``on_failure`` is told once (the run's log file notes it), and
    the stream's descriptor is pointed at the null device, so the interpreter's last flush at exit
    cannot fail either. A stream that is missing altogether (closed before the program started)
    counts as failed from the start.
    """

    def __init__(self, stream: TextIO | None, *, on_failure: Callable[[str], Any] | None = None) -> None:
        super().__init__()
        self.stream = stream
        self.on_failure = on_failure
        self.failure: str | None = None if stream is not None else "it was closed before the program started"
        self.reader_left = False  # output piped to a program that stopped reading (status | head)

    def write(self, text: str) -> int:
        if self.failure is None:
            try:
                self.stream.write(text)  # type: ignore[union-attr]
            except (OSError, ValueError) as exc:  # ValueError: a stream closed under us
                self._failed(exc)
        return len(text)

    def flush(self) -> None:
        if self.failure is None:
            try:
                self.stream.flush()  # type: ignore[union-attr]
            except (OSError, ValueError) as exc:
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.failure = _why_unwritable(exc)
        self.reader_left = isinstance(exc, OSError) and reader_has_gone(exc)
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            nowhere = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(nowhere, self.stream.fileno())  # type: ignore[union-attr]
            finally:
                os.close(nowhere)
        if self.on_failure is not None and not self.reader_left:  # a reader leaving is no failure
            with contextlib.suppress(Exception):  # telling of a failed console must not fail
                self.on_failure(self.failure)

    # Asked of the stream by what writes to it: the progress bar, the logging handler, argparse.
    def isatty(self) -> bool:
        try:
            return self.failure is None and bool(self.stream.isatty())  # type: ignore[union-attr]
        except (OSError, ValueError):
            return False

    def fileno(self) -> int:
        if self.stream is None:
            raise io.UnsupportedOperation("no stream")
        return self.stream.fileno()

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return getattr(self.stream, "errors", None)


def reader_has_gone(exc: OSError) -> bool:
    """The error of writing to a pipe whose reader has closed it (``status | head``): the output
    ends quietly there, as the shell user asked, with nothing noted anywhere.

    Windows reports it as EPIPE, or, for some pipes, as EINVAL from the flush.
    """
    if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
        return True
    return sys.platform == "win32" and exc.errno == errno.EINVAL


def _why_unwritable(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return f"{exc.strerror or type(exc).__name__} (errno {exc.errno})" if exc.errno else type(exc).__name__
    return "it was closed"


@contextlib.contextmanager
def consoles_may_fail(on_failure: Callable[[str, str], Any] | None = None) -> Iterator[tuple[TextIO, TextIO]]:
    """sys.stdout and sys.stderr as :class:`ConsoleMayFail` for the duration; yields the two.

    Everything the command writes goes through them: its own lines, the console log handler
    (made while they are in place), the progress bar, argparse's help and usage. ``on_failure``
    is told the stream's name ("standard output", "standard error") and why, once for each.
    """

    def told(name: str) -> Callable[[str], Any] | None:
        return None if on_failure is None else (lambda why: on_failure(name, why))

    saved = sys.stdout, sys.stderr
    out = ConsoleMayFail(saved[0], on_failure=told("standard output"))
    err = ConsoleMayFail(saved[1], on_failure=told("standard error"))
    sys.stdout, sys.stderr = cast(TextIO, out), cast(TextIO, err)
    try:
        yield cast(TextIO, out), cast(TextIO, err)
    finally:
        for stream in (out, err):
            stream.flush()
        sys.stdout, sys.stderr = saved


def unwritten(stream: Any) -> str | None:
    """Why ``stream`` (a :class:`ConsoleMayFail`) stopped taking what is written to it; None if it has
    not, or if its reader just stopped reading."""
    if getattr(stream, "reader_left", False):
        return None
    failure = getattr(stream, "failure", None)
    return failure if isinstance(failure, str) else None


EXPLORER = "explorer.exe"
PROMPT = "Press Enter to close this window."


@dataclass(frozen=True)
class Launch:
    """How this process was started, as far as Windows says; every unknown is the safe answer."""

    frozen_on_windows: bool = False  # the exe, on Windows (not python, not wine's Linux side)
    console_to_itself: bool = False  # no process but this program is attached to its console
    stdin_is_console: bool = False  # a person could press Enter (not a file, a pipe or NUL)
    launcher: str = ""  # the program that started this one (the one-file exe's own parent skipped)
    quiet: bool = False  # -q/--quiet or --json: the output is not for a person watching


def should_wait(launch: Launch) -> bool:
    """Wait for Enter only when every sign says a person double-clicked the exe in Explorer."""
    return (
        launch.frozen_on_windows
        and launch.console_to_itself
        and launch.stdin_is_console
        and launch.launcher.lower() == EXPLORER
        and not launch.quiet
    )


def is_quiet(argv: Sequence[str]) -> bool:
    """``-q``, ``--quiet`` (also inside ``-vq``) or ``--json``: nobody is reading the window."""
    for arg in argv:
        if arg in ("--quiet", "--json") or (arg.startswith("-") and not arg.startswith("--") and "q" in arg[1:]):
            return True
    return False


def launch_facts(argv: Sequence[str]) -> Launch:
    """The facts for :func:`should_wait`; anything Windows cannot tell us counts as "do not wait"."""
    quiet = is_quiet(argv)
    if sys.platform != "win32" or not getattr(sys, "frozen", False):
        return Launch(quiet=quiet)
    try:
        stdin_is_console = sys.stdin is not None and sys.stdin.isatty()
        if not stdin_is_console:  # nobody could press Enter: ask Windows nothing more
            return Launch(frozen_on_windows=True, quiet=quiet)
        processes = _windows_processes()
        own_name = os.path.basename(sys.executable).lower()
        ours, launcher = _family(os.getpid(), own_name, processes)
        on_console = _windows_console_processes()
    except Exception:  # noqa: BLE001 - any doubt at all: never wait
        return Launch(frozen_on_windows=True, quiet=quiet)
    return Launch(
        frozen_on_windows=True,
        console_to_itself=bool(on_console) and set(on_console) <= ours,
        stdin_is_console=stdin_is_console,
        launcher=launcher,
        quiet=quiet,
    )


def _family(pid: int, own_name: str, processes: dict[int, tuple[int, str]]) -> tuple[set[int], str]:
    """This process and the ancestors that are this same program (the one-file exe starts itself
    once more); and the name of the first ancestor that is not, or "" if it has gone."""
    ours = {pid}
    current = pid
    for _ in range(8):  # no loops through reused process ids
        entry = processes.get(current)
        if entry is None:
            return ours, ""
        parent = entry[0]
        found = processes.get(parent)
        if found is None or parent in ours:
            return ours, ""
        if found[1].lower() != own_name:
            return ours, found[1]
        ours.add(parent)
        current = parent
    return ours, ""


def wait_if_double_clicked(
    argv: Sequence[str],
    *,
    facts: Callable[[Sequence[str]], Launch] = launch_facts,
    read: Callable[[], Any] = input,
    out: TextIO | None = None,
) -> bool:
    """Wait for Enter when :func:`should_wait` says so; True if it waited. Never raises."""
    try:
        if not should_wait(facts(argv)):
            return False
    except Exception:  # noqa: BLE001 - in doubt, never wait
        return False
    with contextlib.suppress(Exception, KeyboardInterrupt):  # closing the window must never fail
        print(f"\n{PROMPT}", file=out or sys.stdout, flush=True)
        read()
    return True


# -- Reading a secret: typed at a console, or one line from standard input -------------------------

LINE_LIMIT = 4096  # characters or bytes: far more than any secret, key or proxy address
PIPE_WAIT = 30.0  # seconds a line on standard input is waited for, when there is no console
NO_CONSOLE_INPUT = "\uffff"  # what msvcrt.getwch returns, at once and for ever, when there is no console to read


def stdin_is_interactive() -> bool:
    """True when a person can type at standard input: a console, not a file, a pipe or NUL.

    On Windows only the console answers GetConsoleMode (``isatty`` is true for NUL too).
    """
    stdin = sys.stdin
    if stdin is None:
        return False
    try:
        if sys.platform == "win32":
            return _windows_console_input(stdin.fileno())
        return stdin.isatty()
    except Exception:  # noqa: BLE001 - a stdin that cannot say is not one a person types at
        return False


def read_hidden(prompt: str, *, getch: Callable[[], str], putch: Callable[[str], Any], limit: int = LINE_LIMIT) -> str:
    """A line typed at the Windows console, not shown: Enter ends it, Backspace removes, Ctrl+C stops.

    getpass's loop on Windows appends every ``msvcrt.getwch()`` until Enter; with no console to
    read, getwch answers ``\uffff`` at once, for ever, so that loop never ends and its line
    grows without bound (set-secret spinning with stdin redirected). Here that answer, or none,
    is the end of the input (EOFError), and a line longer than ``limit`` is refused (ValueError).
    """
    for char in prompt:
        putch(char)
    typed: list[str] = []
    while True:
        char = getch()
        if char in ("", NO_CONSOLE_INPUT):
            raise EOFError("no console input")
        if char in ("\r", "\n"):
            break
        if char == "\x03":
            raise KeyboardInterrupt
        if char == "\b":
            if typed:
                typed.pop()
            continue
        typed.append(char)
        if len(typed) > limit:
            raise ValueError(f"more than {limit} characters were typed, which no secret is")
    putch("\r")
    putch("\n")
    return "".join(typed)


def read_piped_line(fd: int, *, limit: int = LINE_LIMIT, wait: float = PIPE_WAIT) -> str:
    """The first line of standard input that is not a console (a pipe, a file, NUL), without its line end.

    At most ``limit`` bytes are read, and the line is waited for ``wait`` seconds at most: a pipe
    nobody writes to must not hang a deployment script. The read runs on a thread of its own,
    straight from the file descriptor, so one still waiting holds nothing the program needs to
    exit. EOFError when nothing came (NUL, an empty file), TimeoutError when nothing came in
    time, ValueError (saying why) for a line too long or not UTF-8 text.
    """
    received: list[bytes] = []
    failed: list[OSError] = []
    done = threading.Event()

    def read() -> None:
        data = b""
        try:
            while b"\n" not in data and len(data) <= limit:
                chunk = os.read(fd, limit + 1 - len(data))
                if not chunk:
                    break
                data += chunk
        except OSError as exc:
            failed.append(exc)
        received.append(data)
        done.set()

    threading.Thread(target=read, name="stdin-line", daemon=True).start()
    if not done.wait(wait):
        raise TimeoutError(f"no line arrived on standard input within {wait:g} seconds")
    if failed:
        raise ValueError(f"standard input could not be read ({failed[0].strerror or failed[0].__class__.__name__})")
    line, end, _ = received[0].partition(b"\n")
    if not end and len(line) > limit:
        raise ValueError(f"the first line on standard input is longer than {limit} bytes, which no secret is")
    line = line.removesuffix(b"\r").removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark from PowerShell
    if not line.strip():
        raise EOFError("standard input was empty")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("the line on standard input is not UTF-8 text") from None
    if any(ord(char) < 32 or ord(char) == 127 for char in text):
        raise ValueError(
            "the line on standard input has a control character (a NUL, a tab, ...), which no secret has: "
            "UTF-16 text, perhaps"
        )
    return text


def console_secret_prompt() -> Callable[[str], str]:
    """How to ask for a secret at this console without showing it: :func:`read_hidden` on Windows,
    :func:`getpass.getpass` elsewhere (it reads the terminal, and ends at end of input)."""
    if sys.platform == "win32":
        import msvcrt  # Windows only

        return lambda prompt: read_hidden(prompt, getch=msvcrt.getwch, putch=msvcrt.putwch)  # type: ignore[attr-defined]
    import getpass  # start-up: only for set-secret

    return lambda prompt: getpass.getpass(prompt)


# -- Windows only: the ctypes glue ---------------------------------------------------------------


def _windows_console_input(fd: int) -> bool:
    """Whether ``fd`` is a console's input: GetConsoleMode succeeds for nothing else."""
    import ctypes  # Windows only
    import msvcrt
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.GetConsoleMode.argtypes = [wintypes.HANDLE, ctypes.POINTER(wintypes.DWORD)]
    kernel32.GetConsoleMode.restype = wintypes.BOOL
    mode = wintypes.DWORD()
    return bool(kernel32.GetConsoleMode(wintypes.HANDLE(msvcrt.get_osfhandle(fd)), ctypes.byref(mode)))  # type: ignore[attr-defined]


def _windows_processes() -> dict[int, tuple[int, str]]:
    """Every process: id -> (parent id, exe file name), from a Toolhelp snapshot."""
    import ctypes  # Windows only
    from ctypes import wintypes

    class ProcessEntry(ctypes.Structure):
        _fields_ = [
            ("dwSize", wintypes.DWORD),
            ("cntUsage", wintypes.DWORD),
            ("th32ProcessID", wintypes.DWORD),
            ("th32DefaultHeapID", ctypes.c_size_t),
            ("th32ModuleID", wintypes.DWORD),
            ("cntThreads", wintypes.DWORD),
            ("th32ParentProcessID", wintypes.DWORD),
            ("pcPriClassBase", ctypes.c_long),
            ("dwFlags", wintypes.DWORD),
            ("szExeFile", ctypes.c_wchar * 260),
        ]

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.CreateToolhelp32Snapshot.restype = wintypes.HANDLE
    kernel32.CreateToolhelp32Snapshot.argtypes = [wintypes.DWORD, wintypes.DWORD]
    kernel32.Process32FirstW.argtypes = [wintypes.HANDLE, ctypes.POINTER(ProcessEntry)]
    kernel32.Process32NextW.argtypes = [wintypes.HANDLE, ctypes.POINTER(ProcessEntry)]
    kernel32.CloseHandle.argtypes = [wintypes.HANDLE]
    snapshot = kernel32.CreateToolhelp32Snapshot(0x2, 0)  # TH32CS_SNAPPROCESS
    if snapshot is None or snapshot == wintypes.HANDLE(-1).value:
        raise OSError("no process snapshot")
    try:
        entry = ProcessEntry()
        entry.dwSize = ctypes.sizeof(ProcessEntry)
        found: dict[int, tuple[int, str]] = {}
        more = kernel32.Process32FirstW(snapshot, ctypes.byref(entry))
        while more:
            found[int(entry.th32ProcessID)] = (int(entry.th32ParentProcessID), str(entry.szExeFile))
            more = kernel32.Process32NextW(snapshot, ctypes.byref(entry))
    finally:
        kernel32.CloseHandle(snapshot)
    if not found:
        raise OSError("empty process snapshot")
    return found


def _windows_console_processes() -> list[int]:
    """The ids of the processes attached to this console (none: no console)."""
    import ctypes  # Windows only
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
    kernel32.GetConsoleProcessList.argtypes = [ctypes.POINTER(wintypes.DWORD), wintypes.DWORD]
    kernel32.GetConsoleProcessList.restype = wintypes.DWORD
    size = 16
    buffer = (wintypes.DWORD * size)()
    count = int(kernel32.GetConsoleProcessList(buffer, size))
    if count == 0 or count > size:  # an error, or more processes than a double-click makes
        return [] if count == 0 else [0] * count
    return [int(buffer[i]) for i in range(count)]
