"""Logging, configured once per process (DESIGN §9).

Console: human lines on stderr. File: one log per run in the log folder, the
newest ``KEEP_LOGS`` kept. A filter masks every known secret wherever it would
appear. Callers log ids, counts and statuses only, never record content.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from api_pipeline.config import Secret
from api_pipeline.errors import ConfigError

KEEP_LOGS = 30
LOGGER_NAME = "api_pipeline"
MASK = "<hidden>"
PRIVATE_FILE = 0o600  # logs, summaries, reports and dry-run files: the account running the tool only
PRIVATE_DIR = 0o700
# Password=...; PWD=...; in connection strings, and user:password@ in URLs.
_CONN_PASSWORD = re.compile(r"(?i)\b(pwd|password)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)")  # ODBC: '}}' is a '}'
_URL_PASSWORD = re.compile(r"(?i)(://[^/:@\s]+:)([^@/\s]+)@")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def hide_secrets(text: str, secrets: Iterable[str]) -> str:
    """Hide each of these known secrets (for the tool's own messages, which hold no unknown ones)."""
    for secret in sorted(secrets, key=len, reverse=True):  # a secret inside a longer one goes second
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide secrets, connection-string passwords, proxy passwords and bearer tokens."""
    text = hide_secrets(text, secrets)
    text = _CONN_PASSWORD.sub(lambda m: f"{m.group(1)}={MASK}", text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)


class SecretMaskingFilter(logging.Filter):
    """Rewrites each record's final message with every secret masked."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: frozenset[str] = frozenset(s for s in secrets if s)

    def add(self, *values: Secret | str | None) -> None:
        """Mask these too from now on. Safe from any thread: the set is replaced, never changed."""
        revealed = {value.reveal() if isinstance(value, Secret) else value for value in values}
        self.secrets = self.secrets | {value for value in revealed if value}

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        masked = mask_secrets(message, self.secrets)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text, self.secrets)
        record.msg, record.args = masked, None
        return True


def _masking_filters() -> list[SecretMaskingFilter]:
    found: list[SecretMaskingFilter] = []
    for handler in logging.getLogger(LOGGER_NAME).handlers:
        found.extend(f for f in handler.filters if isinstance(f, SecretMaskingFilter) and f not in found)
    return found


def remember_secret(*values: Secret | str | None) -> None:
    """Mask these in every log line from now on: a secret learnt during the run, such as its token.

    Does nothing when logging is not configured (:func:`configure_logging`).
    """
    for masking in _masking_filters():
        masking.add(*values)


def known_secrets() -> frozenset[str]:
    """Every secret the configured log masking knows: the settings' and those learnt since."""
    found: frozenset[str] = frozenset()
    for masking in _masking_filters():
        found |= masking.secrets
    return found


def make_private_dir(folder: Path) -> None:
    """Make ``folder`` and any missing parents readable by this account only (POSIX 0700).

    A folder that exists already is left as it is. On Windows the mode means nothing and the
    folder inherits its parent's permissions, as before.
    """
    missing: list[Path] = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        path.mkdir(mode=PRIVATE_DIR, exist_ok=True)


def write_private(path: Path, data: str | bytes) -> None:
    """Write ``path`` (text as UTF-8) so that only this account can read it (POSIX 0600).

    Logs, summaries, reports and dry-run files name children or hold their records: a file
    that exists already is made private too. On Windows the file's permissions come from
    its folder, as before.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), PRIVATE_FILE)
    with open(fd, "wb") as handle:
        if hasattr(os, "fchmod"):
            with contextlib.suppress(OSError):
                os.fchmod(handle.fileno(), PRIVATE_FILE)
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def _create_private(path: Path) -> None:
    """An empty private file, for a handler that then appends to it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
    try:
        if hasattr(os, "fchmod"):
            with contextlib.suppress(OSError):
                os.fchmod(fd, PRIVATE_FILE)
    finally:
        os.close(fd)


def why_not(exc: OSError) -> str:
    """Why a folder or file could not be made, in words (the path is the caller's to name)."""
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return "a file is in the way (a folder is needed there)"
    if isinstance(exc, IsADirectoryError):
        return "a folder is in the way (a file is needed there)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or type(exc).__name__


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def new_run_id() -> str:
    """``20260301T020000.123Z-7f3a9c``: the start time in UTC to the millisecond, and a random suffix.

    Unique even for runs started in the same millisecond (each run has its own log, summary
    and batch ids), and names sort by start time.
    """
    now = _utc_now()
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def configure_logging(
    *, verbosity: int = 0, quiet: bool = False, log_dir: Path | None = None, run_id: str | None = None
) -> tuple[SecretMaskingFilter, Path | None]:
    """Set up console and (optionally) file logging; returns the masking filter and the log file."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    masking = SecretMaskingFilter()

    console = logging.StreamHandler()
    console_level = logging.WARNING if quiet else logging.INFO if verbosity == 0 else logging.DEBUG
    console.setLevel(console_level)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    console.addFilter(masking)
    logger.addHandler(console)

    log_file = None
    if log_dir is not None:
        log_file = log_dir / f"csc_api_pipeline_{run_id or new_run_id()}.log"
        try:
            make_private_dir(log_dir)
            _create_private(log_file)
            file_handler = logging.FileHandler(log_file, encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"LOG_DIR (or --log-dir): cannot keep the log files in {log_dir}: {why_not(exc)}. "
                "Choose a folder this account can create and write to"
            ) from None
        file_handler.setLevel(logging.DEBUG if verbosity else logging.INFO)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        file_handler.addFilter(masking)
        logger.addHandler(file_handler)
        prune_logs(log_dir)
    return masking, log_file


ERROR_LOG_NAME = "csc_api_pipeline.errors.log"  # outside prune_logs' pattern: kept, and capped instead
ERROR_LOG_LIMIT = 256 * 1024


def append_error_log(folders: Iterable[Path], lines: Iterable[str]) -> Path | None:
    """Append a failed start's messages to ``csc_api_pipeline.errors.log`` in the first folder that takes it.

    A configuration error stops the tool before its run log exists; under Task Scheduler
    stderr goes nowhere, so this file is the only trace. Past :data:`ERROR_LOG_LIMIT` bytes
    it is renamed to ``.old`` (replacing the last one) and started afresh. Never raises.
    """
    text = "".join(f"{line}\n" for line in lines)
    stamp = _utc_now().strftime("%Y-%m-%d %H:%M:%S UTC")
    for folder in folders:
        path = folder / ERROR_LOG_NAME
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if path.is_file() and path.stat().st_size > ERROR_LOG_LIMIT:
                path.replace(path.with_name(path.name + ".old"))
            with path.open("a", encoding="utf-8") as handle:
                handle.write(f"{stamp}\n{text}")
        except OSError:
            continue
        return path
    return None


def prune_logs(log_dir: Path, keep: int = KEEP_LOGS) -> None:
    """Keep only the newest ``keep`` run logs (and their summaries)."""
    for pattern in ("csc_api_pipeline_*.log", "csc_api_pipeline_*.summary.json", "csc_api_pipeline_*.report.html"):
        files = sorted(log_dir.glob(pattern), key=lambda p: p.name, reverse=True)
        for old in files[keep:]:
            with contextlib.suppress(OSError):
                old.unlink()


def close_logging() -> None:
    """Undo :func:`configure_logging`: handlers closed, the logger as Python's default again."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
