"""Logging, configured once per process (DESIGN §9).

Console: human lines on stderr. File: one log per run in the log folder (named, kept
private and pruned as :mod:`api_pipeline.job.run_files` says); a folder that fills up or turns
read-only part way stops the file, with one warning, never the run (:class:`RunLogFile`).
A filter masks every known secret wherever it would appear, and each record is written as one
line whatever it quotes (:class:`OneLineFormatter`). Callers log ids, counts and statuses only,
never record content.
"""

from __future__ import annotations

import contextlib
import io
import logging
import stat
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from api_pipeline.errors import ConfigError, NotAPlainFile
from api_pipeline.job.run_files import (
    append_private,
    create_private,
    log_path,
    make_private_dir,
    new_run_id,
    prune_run_files,
    why_not,
)
from api_pipeline.settings.config import Secret
from api_pipeline.settings.masking import LIVE_SECRETS, LiveSecrets, mask_secrets
from api_pipeline.timestamps import utc_now
from api_pipeline.wording import printable

LOGGER_NAME = "api_pipeline"


class SecretMaskingFilter(logging.Filter):
    """Rewrites each record's final message with every live secret masked, as the registry
    (:data:`~api_pipeline.settings.masking.LIVE_SECRETS`) has them when the record is written."""

    def __init__(self, live: LiveSecrets = LIVE_SECRETS) -> None:
        super().__init__()
        self.live = live

    @property
    def secrets(self) -> frozenset[str]:
        return self.live.values()

    def add(self, *values: Secret | str | None) -> None:
        """Mask these too from now on, wherever the registry is read."""
        self.live.add(*values)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = format_traceback(record.exc_info)
        masked = mask_secrets(message, self.secrets)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text, self.secrets)
        record.msg, record.args = masked, None
        return True


def _exceptions(exc: BaseException | None) -> Iterator[BaseException]:
    """This exception and every one chained to it (its cause, its context, a group's members), once each."""
    seen: set[int] = set()
    stack = [exc]
    while stack:
        each = stack.pop()
        if each is None or id(each) in seen:
            continue
        seen.add(id(each))
        yield each
        stack.extend([each.__cause__, each.__context__, *getattr(each, "exceptions", ())])


def format_traceback(exc_info: Any) -> str:
    """Python's traceback, where what each exception says (which may quote anything: a value, an
    answer) is one line with its control characters escaped (:func:`~api_pipeline.wording.printable`).

    The traceback keeps its own lines, for a person to read; only the exceptions' words were not
    the tool's, and a newline in them could otherwise add a line that looks like a log record.
    """
    kind, exc, trace = exc_info
    text = "".join(traceback.format_exception(kind, exc, trace))
    for each in _exceptions(exc):
        said = "".join(traceback.format_exception_only(type(each), each))
        text = text.replace(said, printable(said.rstrip("\n")) + "\n")
    return "\n".join(printable(line) for line in text.rstrip("\n").split("\n"))


class OneLineFormatter(logging.Formatter):
    """Each record on one line, its control characters escaped: an id from the table or DfE's words
    holding a newline, an escape sequence or a bidi override can neither forge a log line nor drive
    the console. A traceback (``-v``) is written as :func:`format_traceback` gives it.

    The tool's own messages are single lines, so they read as they are.
    """

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return format_traceback(ei)


class RunLogFile(logging.FileHandler):
    """The run's log file. Once the OS refuses to write it (the disk is full, the folder turned
    read-only, a network share went away), it says so once, with the folder and the OS's reason,
    and writes no more: the run goes on, and its log goes on on the console.

    Python's own handler would print a "--- Logging error ---" traceback for every line instead,
    and fail again on closing.

    ``fd``: the file as :func:`~api_pipeline.job.run_files.create_private` made it for this run, written
    through that descriptor rather than opened again by name (by then a link could be there).
    """

    def __init__(self, path: Path, fd: int | None = None) -> None:
        self._fd = fd
        super().__init__(path, encoding="utf-8")
        self.failure: str | None = None  # why the file stopped, once it has
        self._ended = False

    def _open(self) -> io.TextIOWrapper:
        if self._fd is None:
            return super()._open()
        fd, self._fd = self._fd, None
        return open(fd, "a", encoding=self.encoding, errors=self.errors)  # the handler closes it

    def emit(self, record: logging.LogRecord) -> None:
        if self.failure is None and not self._ended:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):
            self._give_up(exc)
        else:  # a fault in a message or its formatting: reported as Python reports it
            super().handleError(record)

    def flush(self) -> None:
        try:
            super().flush()
        except OSError as exc:
            self._give_up(exc)

    def close(self) -> None:
        self._ended = True
        try:
            super().close()
        except OSError as exc:  # the last lines, which the OS took but could not store
            self.stream = None  # type: ignore[assignment]
            self._give_up(exc)

    def _give_up(self, exc: OSError) -> None:
        if self.failure is not None:
            return
        self.failure = why_not(exc)
        stream, self.stream = self.stream, None  # type: ignore[assignment]
        if stream is not None:
            with contextlib.suppress(OSError, ValueError):
                stream.close()  # the lines it still holds cannot be written: dropped with it
        logging.getLogger(LOGGER_NAME).warning(
            "could not write the log file in %s (%s): the run goes on, and its log is on the console only from now",
            Path(self.baseFilename).parent,
            self.failure,
        )


def log_to_files_only(message: str, exc_info: Any = None, *, level: int = logging.ERROR) -> list[Path]:
    """``message`` (and its traceback) in the run's log file, not on the console (which had its own
    copy, or cannot be written to).

    Masked as every log line is. Returns the files written to: none when no run log is open.
    """
    logger = logging.getLogger(LOGGER_NAME)
    record = logger.makeRecord(f"{LOGGER_NAME}.cli", level, __file__, 0, message, (), exc_info)
    written = []
    for handler in logger.handlers:
        if isinstance(handler, RunLogFile) and handler.failure is None:
            handler.handle(record)  # its filter masks, its formatter writes the traceback as format_traceback does
            written.append(Path(handler.baseFilename))
    return written


def _without_handlers() -> logging.Logger:
    """The package's logger with its handlers removed and closed."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    return logger


def configure_logging(
    *, verbosity: int = 0, quiet: bool = False, log_dir: Path | None = None, run_id: str | None = None
) -> tuple[SecretMaskingFilter, Path | None]:
    """Set up console and (optionally) file logging; returns the masking filter and the log file."""
    logger = _without_handlers()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    masking = SecretMaskingFilter()

    console = logging.StreamHandler()
    console_level = logging.WARNING if quiet else logging.INFO if verbosity == 0 else logging.DEBUG
    console.setLevel(console_level)
    console.setFormatter(OneLineFormatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
    console.addFilter(masking)
    logger.addHandler(console)

    log_file = None
    if log_dir is not None:
        log_file = log_path(log_dir, run_id or new_run_id())
        file_handler = _run_log_file(log_dir, log_file)
        if file_handler is not None:
            file_handler.setLevel(logging.DEBUG if verbosity else logging.INFO)
            file_handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
            file_handler.addFilter(masking)
            logger.addHandler(file_handler)
        prune_run_files(log_dir, current=log_file)
    return masking, log_file


def _run_log_file(log_dir: Path, log_file: Path) -> RunLogFile | None:
    """The run's new log file; None, with a warning, when something is already at its name.

    A folder that cannot be made or written to is a configuration error (exit 2, before any work).
    """
    try:
        make_private_dir(log_dir)
        return RunLogFile(log_file, create_private(log_file))
    except FileExistsError:
        if not log_dir.is_dir():  # a file where the folder belongs
            raise _unusable_log_dir(log_dir, "a file is in the way (a folder is needed there)") from None
    except OSError as exc:
        raise _unusable_log_dir(log_dir, why_not(exc)) from None
    # The run's id is new and partly random, so whatever is at its log's name was put there: a
    # link, to have the log written through it to somewhere else. It is neither followed nor removed.
    logging.getLogger(LOGGER_NAME).warning(
        "the log file %s was there before this run (a link, or a file put there by something else): it is left "
        "as it is, and this run's log is on the console only",
        log_file,
    )
    return None


def _unusable_log_dir(log_dir: Path, why: str) -> ConfigError:
    return ConfigError(
        f"LOG_DIR (or --log-dir): cannot keep the log files in {log_dir}: {why}. "
        "Choose a folder this account can create and write to"
    )


ERROR_LOG_NAME = "csc_api_pipeline.errors.log"  # outside the run files' patterns: kept, and capped instead
ERROR_LOG_LIMIT = 256 * 1024


def append_error_log(
    folders: Iterable[Path], lines: Iterable[str], *, warn: Callable[[str], None] | None = None
) -> Path | None:
    """Append a failed start's messages to ``csc_api_pipeline.errors.log`` in the first folder that takes it.

    A configuration error stops the tool before its run log exists; under Task Scheduler
    stderr goes nowhere, so this file is the only trace. Past :data:`ERROR_LOG_LIMIT` bytes
    it is renamed to ``.old`` (replacing the last one) and started afresh. The folder and the
    file are the owner's alone, like the run logs. An error log that is a link (or anything but
    a plain file) is never written through: ``warn`` is told, and the next folder is tried.
    Never raises.
    """
    text = "".join(f"{line}\n" for line in lines)
    stamp = utc_now().strftime("%Y-%m-%d %H:%M:%S UTC")
    for folder in folders:
        path = folder / ERROR_LOG_NAME
        try:
            make_private_dir(folder)
            with contextlib.suppress(FileNotFoundError):
                found = path.lstat()
                if stat.S_ISREG(found.st_mode) and found.st_size > ERROR_LOG_LIMIT:
                    path.replace(path.with_name(path.name + ".old"))  # a rename: a link at .old is replaced
            with open(append_private(path), "a", encoding="utf-8") as handle:
                handle.write(f"{stamp}\n{text}")
        except NotAPlainFile as exc:
            if warn is not None:
                warn(
                    f"{path} {exc.strerror}: it is left as it is, and nothing was written through it. Remove it to "
                    "have the tool keep its error log there again"
                )
            continue
        except OSError:
            continue
        return path
    return None


def close_logging() -> None:
    """Undo :func:`configure_logging`: handlers closed, the logger as Python's default again, and
    the live secrets forgotten (the command is over)."""
    LIVE_SECRETS.clear()
    logger = _without_handlers()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True
