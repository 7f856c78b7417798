"""Exceptions, grouped by what the caller should do about them.

Every error the tool raises on purpose derives from :class:`PipelineError` and
carries the process exit code (DESIGN §10) that ``cli.main`` returns for it.
Messages are written for a council officer and never contain payload content,
secrets or personal data.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes (DESIGN §10). Task Scheduler shows these.

    Each code's :attr:`meaning` is the one sentence for it: the CLI's ``--help``, the run
    report and the documentation are all rendered from it.
    """

    OK = 0
    RECORDS_FAILED = 1
    USAGE = 2
    DATABASE = 3
    AUTH = 4
    API = 5
    RUN_IN_PROGRESS = 6
    INTERRUPTED = 130

    def __str__(self) -> str:  # "3", as on Python 3.11+, whatever the version
        return str(self.value)

    @property
    def meaning(self) -> str:
        return _EXIT_CODE_MEANINGS[self]


_EXIT_CODE_MEANINGS = {
    ExitCode.OK: "everything sent, or nothing to do",
    ExitCode.RECORDS_FAILED: "finished, but some records failed or are invalid; or an unexpected error",
    ExitCode.USAGE: "usage or configuration error",
    ExitCode.DATABASE: "database error",
    ExitCode.AUTH: "authentication error (token endpoint, or 401 from the API)",
    ExitCode.API: "API unreachable or refused (network, TLS, proxy, 403 after retries)",
    ExitCode.RUN_IN_PROGRESS: "another run is already working on the same table (this one did nothing)",
    ExitCode.INTERRUPTED: (
        "interrupted: stopped by Ctrl+C or by the system (SIGTERM, SIGHUP; on Windows the console window "
        "closing, logoff or shutdown)"
    ),
}


class PipelineError(Exception):
    """Base class: one line for the operator, one exit code."""

    exit_code = ExitCode.RECORDS_FAILED


class ConfigError(PipelineError):
    """Settings are missing or wrong. Carries every problem found, one per line, and the warnings
    about the settings found on the way (a misspelt name is often why one is missing)."""

    exit_code = ExitCode.USAGE

    def __init__(self, problems: list[str] | str, *, warnings: Sequence[str] = ()) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.warnings = list(warnings)
        super().__init__("\n".join(self.problems))


class DatabaseError(PipelineError):
    """The database cannot be reached, read or written.

    ``kind`` says when retrying may help: ``"conflict"`` (chosen as a deadlock victim, or a
    serialization failure: the transaction was rolled back), ``"lock_timeout"`` (waited too
    long for a lock another session holds), ``"key_violation"`` (a duplicate key),
    ``"connection_lost"`` (the server ended a session that worked, or the network dropped it),
    ``"unreachable"`` (no connection could be opened); None otherwise.
    """

    exit_code = ExitCode.DATABASE
    kind: str | None = None

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind


class AuthError(PipelineError):
    """The token endpoint refused us, or the API said 401 after a fresh token."""

    exit_code = ExitCode.AUTH


class ApiError(PipelineError):
    """The API could not be used: network, TLS, proxy, refusal."""

    exit_code = ExitCode.API


class RetriableApiError(ApiError):
    """A failure worth retrying (429, 5xx, timeouts, resets). Only these are retried.

    ``retry_after`` is the server's requested wait in seconds, when it gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class FatalApiError(ApiError):
    """The API refused in a way retrying will not fix (403 after backoff, 404, TLS)."""


class RunLocked(PipelineError):
    """Another run is working on the same staging table: this one does nothing."""

    exit_code = ExitCode.RUN_IN_PROGRESS


class RunStopped(PipelineError):
    """The run was asked to stop (:class:`Interrupted`), seen by a thread that was waiting to send.

    Raised on a send thread, so that a batch waiting to be retried stops there: what DfE has
    not acknowledged stays pending and is sent next run.
    """

    exit_code = ExitCode.INTERRUPTED


class Interrupted(KeyboardInterrupt):
    """Ctrl+C, or the system asking the process to stop: SIGTERM, SIGHUP, Windows' console events.

    A ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` treats a stop by the system as
    it treats Ctrl+C. ``reason`` names what asked: ``"Ctrl+C"``, ``"SIGTERM"``, ...
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
