"""Logging, configured once per process (DESIGN §9).

Console: human lines on stderr. File: one log per run in the log folder, the
newest ``KEEP_LOGS`` kept. A filter masks every known secret wherever it would
appear. Callers log ids, counts and statuses only, never record content.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path

from api_pipeline.config import Secret

KEEP_LOGS = 30
LOGGER_NAME = "api_pipeline"
MASK = "<hidden>"
# Password=...; PWD=...; in connection strings, and user:password@ in URLs.
_CONN_PASSWORD = re.compile(r"(?i)\b(pwd|password)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)")  # ODBC: '}}' is a '}'
_URL_PASSWORD = re.compile(r"(?i)(://[^/:@\s]+:)([^@/\s]+)@")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide secrets, connection-string passwords, proxy passwords and bearer tokens."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    text = _CONN_PASSWORD.sub(lambda m: f"{m.group(1)}={MASK}", text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)


class SecretMaskingFilter(logging.Filter):
    """Rewrites each record's final message with every secret masked."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = {s for s in secrets if s}

    def add(self, *values: Secret | str | None) -> None:
        for value in values:
            if isinstance(value, Secret):
                value = value.reveal()
            if value:
                self.secrets.add(value)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        masked = mask_text(message, self.secrets)
        if record.exc_text:
            record.exc_text = mask_text(record.exc_text, self.secrets)
        record.msg, record.args = masked, None
        return True


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
        log_dir.mkdir(parents=True, exist_ok=True)
        log_file = log_dir / f"csc_api_pipeline_{run_id or new_run_id()}.log"
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
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
