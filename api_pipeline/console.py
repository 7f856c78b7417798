"""The console the tool writes to: a reader that leaves early, and the exe's double-click wait.

Output piped to a program that stops reading (``status | head``) is cut short quietly: the
command carries on to its end and its exit code is its own (:class:`ReaderMayLeave`).

Double-clicked from Explorer, the exe waits for Enter before its console window closes.

Windows gives a program started by a double-click a console window of its own, and closes it
the moment the program ends: the analyst sees a flash and no message. So the exe waits for
Enter then, and only then. Waiting anywhere else would be worse than a vanished window: under
Task Scheduler it would hang the night's run forever. So the decision (:func:`should_wait`)
needs every sign of a double-click at once, and the facts behind it (:func:`launch_facts`)
come from Windows through ctypes, where any error at all means "do not wait".
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO, cast


class ReaderMayLeave(io.TextIOBase):
    """stdout or stderr, whose reader may stop reading before the command ends (``status | head``).

    Writing to a pipe nobody reads any more raises ``BrokenPipeError``. Raised into a command,
    it would end a read-only command with "unexpected error" and exit 1, and could stop a
    ``run`` part-way, hiding its outcome. Here it ends the output instead: this write and every
    later one are dropped, and the command carries on to its end with its own exit code (the
    shell convention of 141 for a program killed by SIGPIPE would say "stopped", which a run
    that went on to send and write back was not). The stream's file descriptor is pointed at
    the null device, so the interpreter's last flush, at exit, has nowhere to fail either.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self.stream = stream
        self.reader_left = False

    def write(self, text: str) -> int:
        if not self.reader_left:
            try:
                self.stream.write(text)
            except OSError as exc:
                self._left_or_raise(exc)
        return len(text)

    def flush(self) -> None:
        if not self.reader_left:
            try:
                self.stream.flush()
            except OSError as exc:
                self._left_or_raise(exc)

    def _left_or_raise(self, exc: OSError) -> None:
        if not reader_has_gone(exc):
            raise exc
        self.reader_left = True
        with contextlib.suppress(OSError, ValueError, AttributeError, io.UnsupportedOperation):
            nowhere = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(nowhere, self.stream.fileno())
            finally:
                os.close(nowhere)

    # Asked of the stream by what writes to it: the progress bar, the logging handler, argparse.
    def isatty(self) -> bool:
        return not self.reader_left and self.stream.isatty()

    def fileno(self) -> int:
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
    """The error of writing to a pipe whose reader has closed it.

    Windows reports it as EPIPE, or, for some pipes, as EINVAL from the flush.
    """
    if isinstance(exc, BrokenPipeError) or exc.errno == errno.EPIPE:
        return True
    return sys.platform == "win32" and exc.errno == errno.EINVAL


@contextlib.contextmanager
def readers_may_leave() -> Iterator[tuple[TextIO, TextIO]]:
    """sys.stdout and sys.stderr as :class:`ReaderMayLeave`, for the duration; yields the two.

    Everything the command writes goes through them: its own lines, the console log handler
    (made while they are in place), the progress bar, argparse's help and usage.
    """
    saved = sys.stdout, sys.stderr
    out, err = _guarded(saved[0]), _guarded(saved[1])
    sys.stdout, sys.stderr = out, err
    try:
        yield out, err
    finally:
        for stream in (out, err):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = saved


def _guarded(stream: TextIO) -> TextIO:
    """``stream`` as :class:`ReaderMayLeave`; a missing one (no console at all) stays missing."""
    return cast(TextIO, ReaderMayLeave(stream)) if stream is not None else stream


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


# -- Windows only: the ctypes glue ---------------------------------------------------------------


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
