"""The files a run leaves behind, and the summary that says what it did (DESIGN §9).

One log per run, its end-of-run summary (``*.summary.json``) and its HTML report, all in the
log folder, all named after the run id (:func:`new_run_id`) and kept private to the account
that runs the tool, as are dry-run files; the newest :data:`KEEP_RUNS` of each kind are kept.
Summaries and reports are written whole or not at all (:func:`replace_private`): a folder that
fills up or turns read-only never leaves an empty or half-written one for ``status`` to trip on.
:class:`RunSummary` is what a run counts; :func:`read_summaries` reads summaries back for the
run report's history and for ``status``. Outcome keys (:data:`OUTCOME_KEYS`) are the words the
summary, the progress bar, the report and ``status`` share.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from api_pipeline.config import Settings
from api_pipeline.timestamps import utc_now, utc_stamp
from api_pipeline.wording import plural

KEEP_RUNS = 30
PRIVATE_FILE = 0o600  # logs, summaries, reports and dry-run files: the account running the tool only
PRIVATE_DIR = 0o700
EXAMPLES_PER_REASON = 5

RUN_FILE_PREFIX = "csc_api_pipeline_"
LOG_SUFFIX = ".log"
SUMMARY_SUFFIX = ".summary.json"
REPORT_SUFFIX = ".report.html"
SUMMARY_GLOB = RUN_FILE_PREFIX + "*" + SUMMARY_SUFFIX
TEMP_SUFFIX = ".tmp"  # a summary or report being written; renamed into place when whole
STALE_TEMP_SECONDS = 3600  # a temporary file this old was left by a run that was killed while writing it

# What can happen to a row in a run: the keys of RunSummary.outcomes.
OUTCOME_KEYS = (
    "sent",  # DfE acknowledged the record
    "purged",  # DfE acknowledged the deletion
    "unchanged",  # DfE already holds exactly this record
    "adopted",  # an earlier tool sent it and it is unchanged: recorded in the ledger, not sent
    "valid",  # validate: would be sent
    "held_back_passes",  # validate: marked invalid by a run, passes now; sent once set back to pending
    "dry_run",  # run --dry-run: written for review
    "invalid",  # fails DfE's schema: not sent until the data changes
    "skipped",  # a problem with the staging row itself
    "rejected",  # DfE refused it
    "failed",  # not sent this time; sent again next run
    "changed_during_run",  # the council's SQL changed it after it was read; sent next run
    # DfE acknowledged it, but the table could not record that (the database was lost): sent
    # whole next run, as a child in doubt (DESIGN §7)
    "in_doubt",
    "not_reached",  # the run stopped before reading it
)
PROBLEM_OUTCOMES = ("invalid", "skipped", "rejected", "failed", "in_doubt", "not_reached")


# ---------------------------------------------------------------------------
# Names and places.
# ---------------------------------------------------------------------------


def new_run_id() -> str:
    """``20260301T020000.123Z-7f3a9c``: the start time in UTC to the millisecond, and a random suffix.

    Unique even for runs started in the same millisecond (each run has its own log, summary
    and batch ids), and names sort by start time.
    """
    now = utc_now()
    return f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def default_log_dir(settings: Settings, cwd: Path) -> Path:
    """LOG_DIR, else ``logs`` next to the .env file, else in the current folder."""
    if settings.log_dir is not None:
        return settings.log_dir
    base = settings.env_file.parent if settings.env_file is not None else cwd
    return base / "logs"


def log_path(log_dir: Path, run_id: str) -> Path:
    return log_dir / f"{RUN_FILE_PREFIX}{run_id}{LOG_SUFFIX}"


def summary_path_for(log_file: Path) -> Path:
    """``csc_api_pipeline_<run_id>.log`` → ``csc_api_pipeline_<run_id>.summary.json``."""
    return log_file.with_suffix(SUMMARY_SUFFIX)


def report_path_for(summary_path: Path) -> Path:
    """``csc_api_pipeline_<run_id>.summary.json`` → ``csc_api_pipeline_<run_id>.report.html``."""
    name = summary_path.name
    stem = name[: -len(SUMMARY_SUFFIX)] if name.endswith(SUMMARY_SUFFIX) else summary_path.stem
    return summary_path.with_name(stem + REPORT_SUFFIX)


def prune_run_files(log_dir: Path, keep: int = KEEP_RUNS) -> None:
    """Keep only the newest ``keep`` run logs, summaries and reports, and remove temporary files
    left by runs killed while writing one. Best effort: a folder that cannot be listed is left alone."""
    try:
        for suffix in (LOG_SUFFIX, SUMMARY_SUFFIX, REPORT_SUFFIX):
            files = sorted(log_dir.glob(RUN_FILE_PREFIX + "*" + suffix), key=lambda p: p.name, reverse=True)
            for old in files[keep:]:
                with contextlib.suppress(OSError):
                    old.unlink()
        # Not one another run is writing at this moment (runs on other tables may share the folder).
        for left in log_dir.glob(RUN_FILE_PREFIX + "*" + TEMP_SUFFIX):
            with contextlib.suppress(OSError):
                if time.time() - left.stat().st_mtime > STALE_TEMP_SECONDS:
                    left.unlink()
    except OSError:
        return


# ---------------------------------------------------------------------------
# Private files.
# ---------------------------------------------------------------------------


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


def _open_private(path: Path, flags: int) -> int:
    """``path`` opened (created if missing) with ``flags``, readable by this account only (POSIX 0600).

    A file that exists already keeps its mode on open, so it is made private too. On Windows
    the file's permissions come from its folder, as before.
    """
    fd = os.open(path, flags | os.O_CREAT, PRIVATE_FILE)
    if hasattr(os, "fchmod"):
        with contextlib.suppress(OSError):
            os.fchmod(fd, PRIVATE_FILE)
    return fd


def write_private(path: Path, data: str | bytes) -> None:
    """Write ``path`` (text as UTF-8) so that only this account can read it.

    Logs, summaries, reports and dry-run files name children or hold their records.
    """
    with open(_open_private(path, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_BINARY", 0)), "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def replace_private(path: Path, data: str | bytes) -> None:
    """:func:`write_private`, whole or not at all: written to a temporary file beside ``path``,
    flushed to the disk, then renamed over it.

    A folder that fills up or turns read-only part way (or a power cut) leaves ``path`` as it
    was, never empty or half written; the temporary file is removed. Raises OSError.
    """
    partial = path.with_name(path.name + TEMP_SUFFIX)
    try:
        with open(_open_private(partial, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_BINARY", 0)), "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def create_private(path: Path) -> None:
    """An empty private file, for a handler that then appends to it."""
    os.close(_open_private(path, os.O_WRONLY | os.O_APPEND))


def why_not(exc: OSError) -> str:
    """Why a folder or file could not be made, in words (the path is the caller's to name)."""
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return "a file is in the way (a folder is needed there)"
    if isinstance(exc, IsADirectoryError):
        return "a folder is in the way (a file is needed there)"
    if isinstance(exc, PermissionError):
        return "permission denied"
    return exc.strerror or type(exc).__name__


# ---------------------------------------------------------------------------
# The summary.
# ---------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What happened, for the console, the log and the summary file. Counts only."""

    run_id: str
    mode: str
    dry_run: bool = False
    started_at: str = field(default_factory=utc_stamp)
    finished_at: str | None = None
    seconds: float = 0.0
    rows_read: int = 0
    outcomes: Counter = field(default_factory=Counter)
    invalid_reasons: Counter = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)
    batches: int = 0
    requests: int = 0
    retries: dict[str, int] = field(default_factory=dict)
    bytes_sent: int = 0
    fatal_error: str | None = None
    exit_code: int | None = None
    stopped_early: bool = False
    # Children whose copy at DfE was in doubt (an earlier batch's answer was not recorded),
    # sent whole with purges for whatever that batch may have left (DESIGN §7).
    resent_in_doubt: int = 0
    # A run that stopped early could not count the rows it did not reach (the database was gone).
    not_reached_unknown: bool = False

    @property
    def problems(self) -> int:
        o = self.outcomes
        return o["invalid"] + o["rejected"] + o["failed"] + o["skipped"] + o["in_doubt"] + int(self.stopped_early)

    def _not_reached(self) -> str:
        if self.not_reached_unknown:
            return "unknown (the database could not be asked)"
        return str(self.outcomes["not_reached"])

    def note_problem(self, key: str, row_id: int) -> None:
        """Count a problem by its reason and keep the first few row ids as examples."""
        self.invalid_reasons[key] += 1
        examples = self.examples.setdefault(key, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(row_id)

    def to_dict(self) -> dict[str, Any]:
        """The summary file's document: every field, in order, as plain JSON values."""
        return asdict(self) | {
            "seconds": round(self.seconds, 3),
            "outcomes": dict(self.outcomes),
            "invalid_reasons": dict(self.invalid_reasons),
        }

    def lines(self) -> list[str]:
        o = self.outcomes
        head = "dry run (nothing sent)" if self.dry_run else f"{self.mode} run"
        return [
            f"{head} finished in {self.seconds:.1f} s: {plural(self.rows_read, 'row')} read, "
            f"{plural(self.batches, 'batch')}, {plural(self.requests, 'request')}, "
            f"{plural(sum(self.retries.values()), 'retry', 'retries')}",
            f"  sent {o['sent']}, purged {o['purged']}, already up to date {o['unchanged']}, "
            f"invalid {o['invalid']}, skipped {o['skipped']}, rejected by DfE {o['rejected']}, "
            f"not sent (will retry) {o['failed']}, changed during the run {o['changed_during_run']}"
            + (f", written for review {o['dry_run']}" if self.dry_run else "")
            + (f", acknowledged by DfE but not recorded (in doubt) {o['in_doubt']}" if o["in_doubt"] else "")
            + (f", not reached (stopped early) {self._not_reached()}" if self.stopped_early else ""),
            *(
                [
                    f"  {plural(self.resent_in_doubt, 'child', 'children')} sent whole because DfE's copy was in doubt "
                    "(an earlier batch's answer was never recorded, or run --resend-all), with purges for whatever "
                    "DfE may hold"
                ]
                if self.resent_in_doubt
                else []
            ),
            *(
                f"  problem: {key}: {plural(count, 'row')}, "
                f"e.g. row id {', '.join(map(str, self.examples.get(key, [])))}"
                for key, count in self.invalid_reasons.most_common(10)
            ),
        ]


def write_summary(log_file: Path, summary: RunSummary) -> Path:
    """The summary beside the run's log file, written whole or not at all; returns its path. Raises OSError."""
    path = summary_path_for(log_file)
    replace_private(path, json.dumps(summary.to_dict(), indent=2))
    return path


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is too large a number")
    return value


def load_summary(path: Path) -> dict[str, Any]:
    """A run summary as strict JSON: an object, and no NaN or infinite numbers (a hand edit can add them).

    Raises OSError or ValueError, with the reason, for a file that cannot be used.
    """
    data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant, parse_float=_finite)
    if not isinstance(data, dict):
        raise ValueError(f"it is a JSON {type(data).__name__}, not an object")
    return data


def read_summaries(
    log_dir: Path, limit: int, *, keep: Callable[[dict[str, Any]], bool] | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """The newest ``limit`` readable summaries in ``log_dir`` that ``keep`` accepts (newest first),
    and ``"file: why"`` for each one that could not be used.

    A summary that is not strict JSON (a hand edit: ``NaN``), or that ``keep`` refuses with a
    ValueError, is skipped rather than stopping the caller.
    """
    if not log_dir.is_dir():
        return [], []
    try:
        paths = sorted(log_dir.glob(SUMMARY_GLOB), key=lambda p: p.name, reverse=True)
    except OSError as exc:  # a folder that went away or turned unreadable: no history, said so
        return [], [f"{log_dir}: cannot be read ({why_not(exc)})"]
    found: list[dict[str, Any]] = []
    skipped: list[str] = []
    for path in paths:
        if len(found) >= limit:
            break
        try:
            summary = load_summary(path)
            wanted = keep is None or keep(summary)
        except (OSError, ValueError, RecursionError) as exc:
            skipped.append(f"{path.name}: {exc}" if isinstance(exc, ValueError) else f"{path.name}: unreadable")
            continue
        if wanted:
            found.append(summary)
    return found, skipped
