"""Exceptions, grouped by what the caller should do about them.

Every error that stops a command derives from :class:`PipelineError` and carries the
process exit code (DESIGN §10) that ``cli.main`` returns for it. The others never reach the
boundary: the module that catches them marks a row, reads an answer as a network failure, or
says why it falls back. Each group below says which.

Messages are written for a council officer and never contain payload content,
secrets or personal data.

Two exceptions live in the module that raises them, because no other module sees them:
``dfe.api.UnusableReceipts`` (an answer without one receipt per record, sent again inside
``ApiClient.send``) and ``dfe.tls.ProxyRefused`` (the proxy's answer to ``CONNECT`` while
``test-endpoint`` looks at a certificate); ``dfe.auth._TokenEndpointBusy`` is private to the token's retries.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import IntEnum
from typing import Any


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


# ---------------------------------------------------------------------------
# Stop the command: one line on stderr and the error's exit code.
# ---------------------------------------------------------------------------


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


class Unauthorized(AuthError):
    """DfE answered 401: the token (or the SupplierKey) was refused."""


class ApiError(PipelineError):
    """The API could not be used: network, TLS, proxy, refusal."""

    exit_code = ExitCode.API


class FatalApiError(ApiError):
    """The API refused in a way retrying will not fix (403 after backoff, 404, TLS)."""


class RetriesExhausted(ApiError):
    """A retriable failure kept happening until the retry budget ran out (exit 5)."""

    def __init__(self, message: str, *, status: int | None, attempts: int) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class RunLocked(PipelineError):
    """Another run is working on the same staging table: this one does nothing."""

    exit_code = ExitCode.RUN_IN_PROGRESS


class RunStopped(PipelineError):
    """The run was asked to stop (:class:`Interrupted`), seen by a thread that was waiting to send.

    Raised on a send thread, so that a batch waiting to be retried stops there: what DfE has
    not acknowledged stays pending and is sent next run.
    """

    exit_code = ExitCode.INTERRUPTED


class RunFailed(PipelineError):
    """A run through the Python API ended with an exit code other than 0, raised only when the
    caller asks (``library.RunResult.check``: a scheduled notebook whose failed run must fail).

    ``result`` is the run's ``RunResult`` and ``exit_code`` its exit code.
    """

    def __init__(self, result: Any) -> None:
        super().__init__(f"the run ended with exit code {result.exit_code} ({result.meaning})")
        self.result = result
        self.exit_code = result.exit_code


class Interrupted(KeyboardInterrupt):
    """Ctrl+C, or the system asking the process to stop: SIGTERM, SIGHUP, Windows' console events.

    A ``KeyboardInterrupt``, so every ``except KeyboardInterrupt`` treats a stop by the system as
    it treats Ctrl+C. ``reason`` names what asked: ``"Ctrl+C"``, ``"SIGTERM"``, ...
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# ---------------------------------------------------------------------------
# Try again: only these are retried (with the server's Retry-After, when it gives one).
# ---------------------------------------------------------------------------


class RetriableApiError(ApiError):
    """A failure worth retrying (429, 5xx, timeouts, resets). Only these are retried.

    ``retry_after`` is the server's requested wait in seconds, when it gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class TransientNetworkError(RetriableApiError):
    """A timeout or dropped connection: worth retrying. ``cause`` is a short label for logs;
    ``detail`` the sentence saying what failed, without the "Cannot reach ..." in front."""

    def __init__(self, message: str, *, cause: str, detail: str = "") -> None:
        super().__init__(message)
        self.cause = cause
        self.detail = detail or message


class Forbidden(RetriableApiError):
    """DfE answered 403: its gateway throttles with 403 too, so it is retried a few times."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=403, retry_after=retry_after)


# ---------------------------------------------------------------------------
# Settle the batch: what DfE said of each record stands; send the rest again, or stop.
# ---------------------------------------------------------------------------


class PayloadTooLarge(ApiError):
    """DfE answered 413: the batch is too big; halve it."""


class BatchRejected(PipelineError):
    """DfE answered 400. ``indexes`` maps each record it named (``[n]``, 0-based) to its masked reason."""

    def __init__(self, indexes: dict[int, str], message: str) -> None:
        super().__init__(message)
        self.indexes = indexes


class BatchAborted(PipelineError):
    """A batch stopped by an error that stops the run (auth, fatal, retries exhausted).

    ``error`` is that error; ``outcomes`` are the batch's records settled before it, in order
    (DfE's answers for them stand: acknowledged, or rejected). The message and exit code are the error's.
    """

    def __init__(self, error: PipelineError, outcomes: list[Any]) -> None:
        super().__init__(str(error))
        self.error = error
        self.outcomes = outcomes  # dfe.api.Outcome each (a room above this one)
        self.exit_code = error.exit_code


# ---------------------------------------------------------------------------
# Mark the row and carry on with the others (the row's outcome, never the run's).
# ---------------------------------------------------------------------------


class Invalid(Exception):
    """The record's content cannot be sent: the row becomes ``invalid`` until its payload changes."""

    def __init__(self, reason: str, *keys: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keys = keys or (reason,)


class Skip(Exception):
    """The row itself is inconsistent: leave its status, explain, look again next run."""

    def __init__(self, reason: str, key: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


class Later(Exception):
    """Look at this row again once every other row has been read (its person_id is not its child's id)."""


# ---------------------------------------------------------------------------
# Take the answer as a network failure: nothing of it is used (dfe.bounded reads within limits).
# ---------------------------------------------------------------------------


class AnswerTooSlow(Exception):
    """The exchange did not finish within its deadline (nothing of the answer is used)."""


class AnswerTooLarge(Exception):
    """The answer's body was bigger than the cap (nothing of it is used)."""


# ---------------------------------------------------------------------------
# Say why, and carry on without it: the command decides what that costs.
# ---------------------------------------------------------------------------


class KeyringUnavailable(Exception):
    """The keyring cannot be used on this machine; the message says why, never a secret."""


class NotAPlainFile(OSError):
    """Where the tool would add to or read a file of its own, something else is: a link, a pipe, a folder."""


class NotDelivered(Exception):
    """An alert channel (e-mail, webhook) could not deliver; the message says why, naming no secret.

    A run logs it as a warning and records it in its summary (its exit code stays its own);
    ``test-notify`` fails with it.
    """
