"""Ctrl+C, and the system asking a command to stop (DESIGN §7).

SIGTERM and SIGHUP (a service manager, ``kill``, a terminal closing) and, on Windows, Ctrl+Break
and the console window closing, logoff and shutdown stop a command as Ctrl+C does: the main
thread gets :class:`~api_pipeline.errors.Interrupted` (a ``KeyboardInterrupt``) naming what asked.
For ``run`` that means: the batch being sent is answered and written back, no other batch is
sent, the summary and report are written, the run lock is released, and the exit code is 130.

:class:`StopRequest` is the request, shared by the threads of one command. The signal handlers
note it. The main thread is told once, by the exception, and only where it may be: ``run`` is
interrupted only while it reads, sends and writes back rows (:meth:`StopRequest.interruptible`),
never while it takes or releases the run lock or writes its files
(:meth:`StopRequest.uninterrupted`). The send threads' waits between retries end at once
(:meth:`StopRequest.sleep`). :func:`stopping_on_signals` installs the handlers for one command
started from the command line, or for one Python API call (``api_pipeline.library.run``), and
puts back those it found; ``runner.execute_run`` on its own installs none.
"""

from __future__ import annotations

import _thread
import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

from api_pipeline.errors import Interrupted, RunStopped

log = logging.getLogger(__name__)

# What each signal is called in the log, the summary and the report. SIGBREAK is Windows' Ctrl+Break.
SIGNALS = {"SIGINT": "Ctrl+C", "SIGTERM": "SIGTERM", "SIGHUP": "SIGHUP", "SIGBREAK": "Ctrl+Break"}

# Windows' console control events (wincon.h). Its C runtime turns Ctrl+C and Ctrl+Break into
# SIGINT and SIGBREAK, which Python's signal module handles. The other three it maps to SIGBREAK
# too, but its handler only sets a flag and returns, and Windows then ends the process at once:
# Python never sees them, so a console control handler of our own catches them.
CTRL_C_EVENT = 0
CTRL_BREAK_EVENT = 1
CONSOLE_EVENTS = {
    2: "the console window closing",  # CTRL_CLOSE_EVENT
    5: "Windows logging off",  # CTRL_LOGOFF_EVENT
    6: "Windows shutting down",  # CTRL_SHUTDOWN_EVENT
}


def signals_to_the_main_thread() -> None:
    """Keep the signals that stop a command away from the calling thread (one of the tool's own,
    first thing it does), so that they reach the main thread.

    POSIX gives a process's signal to any one thread that does not block it, and Python acts on
    it only in the main thread, and only once that thread runs again: a signal given to a send
    thread while the main thread waits for a batch would go unheard until that batch was
    written back, and the next batch could be sent meanwhile. Blocked everywhere else, it
    interrupts the main thread's wait at once. Windows has no such thing (nothing to do there).
    """
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


_STOP_SIGNALS = frozenset(
    signum for name in SIGNALS if (signum := getattr(signal, name, None)) is not None and name != "SIGBREAK"
)


def signal_name(signum: int) -> str:
    """``"SIGTERM"``; ``"Ctrl+C"`` for SIGINT."""
    for name, described in SIGNALS.items():
        if getattr(signal, name, None) == signum:
            return described
    return f"signal {signum}"


class StopRequest:
    """Whether this command has been asked to stop, and by what; one per command.

    ``reason`` is the first thing that asked (a second signal while the command stops changes
    nothing). Any thread may read it; :meth:`note` may be called from any thread.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        # Logged as soon as a stop is asked, before the command has finished stopping: set by a
        # command whose stopping takes a while (``run`` waits for the answer to the batch in flight).
        self.announcement: str | None = None
        self._asked = threading.Event()  # wakes the send threads' waits, and the announcement
        self._told = False  # the main thread has been stopped, or is not to be any more
        self._armed = True  # whether a signal stops the main thread where it is (see uninterrupted)

    def note(self, reason: str) -> None:
        """Record that the command is asked to stop (the first reason stands) and end the waits."""
        if self.reason is None:
            self.reason = reason
            self._asked.set()

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The signal handler, which Python runs on the main thread between two of its steps.

        The first signal stops the main thread with :class:`Interrupted`, unless it is in an
        :meth:`uninterrupted` block; later ones are only noted, so they cannot cut the stopping
        short (a second Ctrl+C used to abandon the writing back of the batch in flight).
        """
        tell = self._armed and not self._told
        if tell:  # decided first: a signal arriving inside this handler must not raise twice
            self._told = True
        self.note(signal_name(signum))
        if tell:
            raise Interrupted(self.reason or signal_name(signum))

    @contextlib.contextmanager
    def uninterrupted(self) -> Iterator[None]:
        """A block no signal interrupts, such as taking and releasing the run lock or writing the
        run's files: a stop asked meanwhile is noted, and takes effect at the start of the next
        :meth:`interruptible` block, if there is one."""
        armed, self._armed = self._armed, False
        try:
            yield
        finally:
            self._armed = armed

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A block a signal may stop anywhere (its own cleanup is what makes that safe), inside an
        :meth:`uninterrupted` one: a stop asked before it began stops it as it begins."""
        armed, self._armed = self._armed, True
        try:
            if self.reason is not None and not self._told:
                self._told = True
                raise Interrupted(self.reason)
            yield
        finally:
            self._armed = armed

    def finish(self) -> None:
        """The command's work is done: a stop asked from now on is noted, never raised."""
        self._told = True

    def sleep(self, seconds: float) -> None:
        """How a run's retries and request pacing wait: ``time.sleep``, ended at once by a stop
        request, which is raised as :class:`RunStopped` so that no further attempt is made."""
        if self._asked.wait(seconds) and self.reason is not None:
            raise RunStopped(f"stopped by {self.reason} before trying again; the records stay pending")

    def check(self) -> None:
        """Raise :class:`RunStopped` if the command has been asked to stop: for a batch about to be sent."""
        if self.reason is not None:
            raise RunStopped(f"stopped by {self.reason}; the batch was not sent and its records stay pending")

    def wait(self) -> bool:
        """Block until asked to stop, or until :meth:`close`; True if asked."""
        self._asked.wait()
        return self.reason is not None

    def close(self) -> None:
        """End :meth:`wait` (the command is over). The request is no use afterwards."""
        self._asked.set()


@contextlib.contextmanager
def stopping_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Ctrl+C, SIGTERM and SIGHUP (on Windows: Ctrl+C, Ctrl+Break and the console's close,
    logoff and shutdown events) stop the main thread through ``stop`` while the block runs.

    Installed only from the main thread (Python runs signal handlers there), never over a signal
    set to be ignored (``nohup``); the handlers found are put back afterwards.
    """
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {}
    for name in SIGNALS:
        signum = getattr(signal, name, None)
        if signum is None:
            continue
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                continue
            previous[signum] = signal.signal(signum, stop.on_signal)
        except (OSError, ValueError):
            continue
    announcer = threading.Thread(target=_announce, args=(stop,), name="stop-announcer", daemon=True)
    console = None
    try:
        announcer.start()
        if sys.platform == "win32":
            console = _ConsoleEvents(stop)
        yield stop
    finally:
        if console is not None:
            console.remove()
        for signum, handler in previous.items():
            with contextlib.suppress(OSError, ValueError, TypeError):  # TypeError: one set outside Python
                signal.signal(signum, handler)
        stop.close()
        if announcer.is_alive():
            announcer.join(timeout=1)


def _announce(stop: StopRequest) -> None:
    """Say at once that the command is stopping, on a thread of its own: a signal handler must
    not write to a stream the main thread may be in the middle of writing to."""
    signals_to_the_main_thread()
    if stop.wait() and stop.announcement:
        log.warning("%s: %s", stop.reason, stop.announcement)


class _ConsoleEvents:
    """Windows only: the console window closing, logoff and shutdown stop the command as Ctrl+C does.

    Windows runs the handler on a thread of its own and ends the process as soon as it returns
    (or when its time is up: about 5 seconds; the one-file exe's launcher ends the program
    about half a second after a close). So the handler notes the request, interrupts the main
    thread as Ctrl+C would, and never returns: the main thread ends the process when the run
    has stopped, unless Windows ends it first.
    """

    def __init__(self, stop: StopRequest) -> None:
        # Windows only, so imported here: SetConsoleCtrlHandler is kernel32's, and ctypes'
        # WinDLL and WINFUNCTYPE exist only on Windows.
        import ctypes
        from ctypes import wintypes

        self.stop = stop
        routine_type = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)  # type: ignore[attr-defined]
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)  # type: ignore[attr-defined]
        self._set_handler = kernel32.SetConsoleCtrlHandler
        self._set_handler.argtypes = (routine_type, wintypes.BOOL)
        self._set_handler.restype = wintypes.BOOL
        # Referenced for as long as Windows may call it: a collected callback would crash the process.
        self._routine = routine_type(self._on_event)
        self._installed = bool(self._set_handler(self._routine, True))

    def _on_event(self, event: int) -> bool:
        reason = CONSOLE_EVENTS.get(event)
        if reason is None:
            return False  # Ctrl+C, Ctrl+Break: to the C runtime's handler, which raises SIGINT or SIGBREAK
        self.stop.note(reason)
        _thread.interrupt_main(signal.SIGINT)  # the main thread stops as for Ctrl+C, with this reason
        threading.Event().wait()  # never returns: returning would let Windows end the process now
        return True

    def remove(self) -> None:
        if self._installed:
            self._set_handler(self._routine, False)
            self._installed = False
