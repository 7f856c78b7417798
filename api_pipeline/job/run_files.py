"""The files a run leaves behind, and the summary that says what it did (DESIGN §9).

One log per run, its end-of-run summary (``*.summary.json``) and its HTML report, all in the
log folder, all named after the run id (:func:`new_run_id`) and kept private to the account
that runs the tool, as are dry-run files. The newest :data:`KEEP_RUNS` runs' files are kept,
newest by the start time each summary records, never by name (:func:`runs_in`).
Summaries and reports are written whole or not at all (:func:`replace_private`): a folder that
fills up or turns read-only never leaves an empty or half-written one for ``status`` to trip on.
No file is written through a link put in its place (the private files section below).
:class:`RunSummary` is what a run counts; :func:`read_summaries` reads summaries back for the
run report's history and for ``status``. Outcome keys (:data:`OUTCOME_KEYS`) are the words the
summary, the progress bar, the report and ``status`` share.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import stat
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from api_pipeline.errors import NotAPlainFile
from api_pipeline.settings.config import Settings
from api_pipeline.timestamps import parse_utc, utc_now, utc_stamp
from api_pipeline.wording import duration, plural

KEEP_RUNS = 30
PRIVATE_FILE = 0o600  # logs, summaries, reports and dry-run files: the account running the tool only
PRIVATE_DIR = 0o700
EXAMPLES_PER_REASON = 5

RUN_FILE_PREFIX = "csc_api_pipeline_"
LOG_SUFFIX = ".log"
SUMMARY_SUFFIX = ".summary.json"
REPORT_SUFFIX = ".report.html"
RUN_SUFFIXES = (LOG_SUFFIX, SUMMARY_SUFFIX, REPORT_SUFFIX)
TEMP_SUFFIX = ".tmp"  # a file being written (its name ends <name>.<random>.tmp); renamed into place when whole
STALE_TEMP_SECONDS = 3600  # a temporary file this old was left by a run that was killed while writing it
# A run dated further ahead of the clock than this is "in the future": a clock that ran fast, or
# files put in the log folder by someone else. A day covers local time taken for UTC, anywhere.
FUTURE_GRACE = timedelta(days=1)
SUMMARY_LIMIT = 8 * 1024 * 1024  # bytes: far more than any summary the tool writes

# What can happen to a row in a run: the keys of RunSummary.outcomes, each with the words the
# console's summary, validate and status say after its count.
OUTCOME_WORDS = {
    "sent": "sent",  # DfE acknowledged the record
    "purged": "purged",  # DfE acknowledged the deletion
    # an earlier tool sent it and it is unchanged: recorded in the ledger, not sent
    "adopted": "recorded as already held by DfE (sent by the earlier tool)",
    "unchanged": "already up to date",  # DfE already holds exactly this record (or has deleted this child)
    "valid": "would be sent",  # validate
    # validate: marked invalid by a run, passes now; sent once set back to pending
    "held_back_passes": "held back as invalid but passing now (sent once your SQL sets them back to Pending)",
    "dry_run": "written for review",  # run --dry-run
    "invalid": "invalid",  # fails DfE's schema: not sent until the data changes
    "skipped": "skipped",  # a problem with the staging row itself
    "rejected": "rejected by DfE",
    "failed": "not sent (will retry)",  # not sent this time; sent again next run
    # DfE acknowledged it, but the table could not record that (the database was lost): sent
    # whole next run, as a child in doubt (DESIGN §7)
    "in_doubt": "acknowledged by DfE but not recorded (in doubt)",
    # Said of rows counted once already: the council's SQL changed the row after it was read, so
    # what the run did is not written to it and it is sent next run.
    "changed_during_run": "changed in the table during the run",
    "not_reached": "not reached (stopped early)",  # the run stopped before reading it: not among the rows read
}
OUTCOME_KEYS = tuple(OUTCOME_WORDS)
# Each row a run reads has exactly one of these, so they add up to rows_read (the rows not reached
# are beyond it, and a row changed during the run has its own outcome as well).
ROW_OUTCOMES = tuple(key for key in OUTCOME_KEYS if key not in ("changed_during_run", "not_reached"))
# Said in the console's summary even when none: the outcomes of an ordinary run.
_ALWAYS_SAID = ("sent", "purged", "unchanged", "invalid", "skipped", "rejected", "failed")
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


def prune_run_files(log_dir: Path, keep: int = KEEP_RUNS, *, current: Path | None = None) -> None:
    """Keep the newest ``keep`` runs' logs, summaries and reports (:func:`runs_in` says which are
    newest), never the files of the run whose log is ``current``, and remove temporary files left by
    runs killed while writing one. Best effort: a folder that cannot be listed is left alone.
    """
    own = current.name[: -len(LOG_SUFFIX)] if current is not None and current.name.endswith(LOG_SUFFIX) else None
    try:
        found = runs_in(log_dir)
    except OSError:
        return
    room = keep - any(run.stem == own for run in found)  # the current run is one of those kept
    for run in found:
        if run.stem == own:
            continue
        if room > 0:
            room -= 1
            continue
        for path in run.paths:  # a link among them is removed itself: unlinking never follows one
            with contextlib.suppress(OSError):
                path.unlink()
    # Not one another run is writing at this moment (runs on other tables may share the folder).
    with contextlib.suppress(OSError):
        for left in log_dir.glob(RUN_FILE_PREFIX + "*" + TEMP_SUFFIX):
            with contextlib.suppress(OSError):
                if time.time() - left.lstat().st_mtime > STALE_TEMP_SECONDS:
                    left.unlink()


@dataclass
class RunFiles:
    """One run's files in the log folder (its log, summary and report), and when it started."""

    stem: str  # csc_api_pipeline_<run id>
    paths: list[Path] = field(default_factory=list)
    summary: dict[str, Any] | None = None  # None: no summary, or one that could not be used (``problem``)
    problem: str | None = None
    started: datetime | None = None  # UTC; None only when its files went away while being looked at
    in_future: bool = False  # started more than FUTURE_GRACE ahead of the clock

    @property
    def summary_path(self) -> Path | None:
        return next((p for p in self.paths if p.name.endswith(SUMMARY_SUFFIX)), None)


def runs_in(log_dir: Path, now: datetime | None = None) -> list[RunFiles]:
    """Every run's files in ``log_dir``, newest first, by when each run started.

    That is the ``started_at`` its summary records. A run without one (still going, killed before
    its summary was written, or a summary that cannot be read) counts as started when its newest
    file was last changed. Names are never used: they are only as right as the clock that named
    them, and anyone who can write to the folder can choose them. Runs dated more than
    :data:`FUTURE_GRACE` ahead of ``now`` (UTC if naive; default: this computer's clock) come last, as the
    oldest: a clock that ran fast, or files put there, must not push real runs out. Raises
    OSError if the folder cannot be listed.
    """
    runs: dict[str, RunFiles] = {}
    for path in log_dir.glob(RUN_FILE_PREFIX + "*"):
        suffix = next((s for s in RUN_SUFFIXES if path.name.endswith(s)), None)
        if suffix is not None:
            stem = path.name[: -len(suffix)]
            runs.setdefault(stem, RunFiles(stem)).paths.append(path)
    clock = now or utc_now()
    latest_real = (clock if clock.tzinfo else clock.replace(tzinfo=timezone.utc)) + FUTURE_GRACE
    for run in runs.values():
        _date(run)
        run.in_future = run.started is not None and run.started > latest_real

    def newest_first(run: RunFiles) -> tuple[bool, bool, float]:
        return run.in_future, run.started is None, -run.started.timestamp() if run.started else 0.0

    return sorted(runs.values(), key=newest_first)


def _date(run: RunFiles) -> None:
    """Read the run's summary, if any, and set when the run started: from the summary, else its files' time."""
    summary_path = run.summary_path
    if summary_path is not None:
        try:
            run.summary = load_summary(summary_path)
        except (OSError, ValueError, RecursionError) as exc:
            run.problem = str(exc) if isinstance(exc, ValueError) else "unreadable"
    run.started = parse_utc(run.summary.get("started_at")) if run.summary is not None else None
    if run.started is None:
        times = []
        for path in run.paths:
            with contextlib.suppress(OSError):
                times.append(path.lstat().st_mtime)
        if times:
            with contextlib.suppress(OverflowError, OSError, ValueError):
                run.started = datetime.fromtimestamp(max(times), timezone.utc)


# ---------------------------------------------------------------------------
# Private files.
#
# Logs, summaries, reports and dry-run files name children or hold their records: each is
# readable by the account running the tool only (POSIX 0600, in folders made 0700; on Windows
# they take their folder's permissions, as before). And each is written where it is meant to
# be, never through a link someone put in its place: a new file is made exclusively (O_EXCL,
# which never follows a link, and O_NOFOLLOW where the system has it), a file is replaced by
# renaming a new one over it within its folder (which replaces a link, not what it points to),
# and a file added to (the error log) must be a plain file of its own.
# ---------------------------------------------------------------------------

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)  # POSIX: a link as the last part of the path is refused, not followed
_NO_WAIT = getattr(os, "O_NONBLOCK", 0)  # POSIX: a named pipe put where a file belongs is refused, not waited on
_BINARY = getattr(os, "O_BINARY", 0)  # Windows: the bytes as given


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


def _made_private(fd: int) -> int:
    if hasattr(os, "fchmod"):
        with contextlib.suppress(OSError):
            os.fchmod(fd, PRIVATE_FILE)
    return fd


def _refuse_links_by_looking(path: Path) -> None:
    """Where there is no O_NOFOLLOW (Windows), look first: a link at ``path`` is refused."""
    if not _NO_FOLLOW and os.path.islink(path):
        raise NotAPlainFile(errno.EEXIST, "is a link", str(path))


def create_private(path: Path) -> int:
    """A new empty file at ``path``, readable by this account only, open for writing; returns its descriptor.

    Made now or not at all: whatever is at ``path`` already, a link above all, raises
    FileExistsError and is left as it is, so nothing is written through a link put there.
    """
    if not _NO_FOLLOW and os.path.islink(path):
        raise FileExistsError(errno.EEXIST, "a link is in the way", str(path))
    return _made_private(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW | _BINARY, PRIVATE_FILE))


def replace_private(path: Path, data: str | bytes) -> None:
    """Write ``path`` (text as UTF-8), readable by this account only, whole or not at all.

    The data goes to a new temporary file beside ``path`` with a name no one can guess (made by
    :func:`create_private`), is flushed to the disk, and the file is renamed over ``path``. A
    folder that fills up or turns read-only part way (or a power cut) leaves ``path`` as it was,
    never empty or half written, and the temporary file is removed; a link at ``path`` is
    replaced, never written through. Raises OSError.
    """
    partial = path.with_name(f"{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")
    fd = create_private(partial)
    try:
        with open(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise


def _plain(path: Path, found: os.stat_result, *, one_name: bool = False) -> None:
    if stat.S_ISLNK(found.st_mode):
        raise NotAPlainFile(errno.ELOOP, "is a link", str(path))
    if not stat.S_ISREG(found.st_mode):
        raise NotAPlainFile(errno.EINVAL, "is not a plain file", str(path))
    if one_name and found.st_nlink > 1:  # written to, a hard link changes the file under its other name too
        raise NotAPlainFile(errno.EMLINK, "is a hard link (the file has another name too)", str(path))


def append_private(path: Path) -> int:
    """``path`` opened to add to its end (made if missing), readable by this account only; returns its descriptor.

    For a file kept from run to run (the error log). A link, or anything but a plain file with
    one name, raises :class:`NotAPlainFile` and is left as it is.
    """
    _refuse_links_by_looking(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _NO_FOLLOW | _NO_WAIT | _BINARY, PRIVATE_FILE)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK) and os.path.islink(path):  # EMLINK: the BSDs' word for it
            raise NotAPlainFile(errno.ELOOP, "is a link", str(path)) from None
        if exc.errno == errno.ENXIO:  # a named pipe nobody reads
            raise NotAPlainFile(errno.EINVAL, "is not a plain file", str(path)) from None
        raise
    try:
        _plain(path, os.fstat(fd), one_name=True)
    except BaseException:
        os.close(fd)
        raise
    return _made_private(fd)


def read_plain(path: Path, limit: int, *, keep_end: bool = False) -> bytes:
    """The bytes of ``path``, a plain file of at most ``limit`` bytes; ValueError, saying why, for anything else.

    A link, a named pipe or a device where a run file belongs (put there by someone who can write
    to the folder) is neither followed nor waited on. ``keep_end``: a larger file gives its last
    ``limit`` bytes instead (the end of a long log is what says how it went).
    """
    try:
        _plain(path, path.lstat())
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW | _NO_WAIT | _BINARY)
    except NotAPlainFile as exc:
        raise ValueError(f"it {exc.strerror}") from None
    with open(fd, "rb") as handle:
        try:
            _plain(path, os.fstat(handle.fileno()))
        except NotAPlainFile as exc:
            raise ValueError(f"it {exc.strerror}") from None
        if keep_end:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - limit))
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"it is larger than {limit} bytes")
    return data


def why_not(exc: OSError) -> str:
    """Why a folder or file could not be made, in words (the path is the caller's to name)."""
    if isinstance(exc, (NotADirectoryError, FileExistsError)):
        return "a file is in the way (a folder is needed there)"
    if isinstance(exc, IsADirectoryError):
        return "a folder is in the way (a file is needed there)"
    if isinstance(exc, NotAPlainFile):
        return f"it {exc.strerror}"
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
    # Children the ledger says DfE holds with no row left in the table (job.orphans), and what became
    # of their purges (run --purge-orphans): no row's outcome, so counted apart from rows_read.
    orphans: int = 0
    orphans_purged: int = 0
    orphans_not_purged: int = 0
    orphans_for_review: int = 0
    # The run's alert (NOTIFY_ON): the channels that took it, and a line for each that did not
    # (a failed alert is a warning, never the run's exit code).
    alerts_sent: list[str] = field(default_factory=list)
    alert_failures: list[str] = field(default_factory=list)

    @property
    def problems(self) -> int:
        o = self.outcomes
        rows = o["invalid"] + o["rejected"] + o["failed"] + o["skipped"] + o["in_doubt"]
        return rows + self.orphans_not_purged + int(self.stopped_early)

    @property
    def accounted(self) -> int:
        """Rows read that have an outcome: all of them, once the run is over."""
        return sum(self.outcomes[key] for key in ROW_OUTCOMES)

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
        """The end-of-run summary for the console and the log: the rows read, and what became of
        every one of them, in counts that add up to the rows read."""
        o = self.outcomes
        head = "dry run (nothing sent)" if self.dry_run else f"{self.mode} run"
        always = (*_ALWAYS_SAID, "dry_run") if self.dry_run else _ALWAYS_SAID
        said = [key for key in ROW_OUTCOMES if o[key] or key in always]
        said += [key for key in sorted(o) if o[key] and key not in OUTCOME_WORDS]  # a key from elsewhere
        lines = [
            f"{head} finished in {duration(self.seconds, unit='s')}: {plural(self.rows_read, 'row')} read, "
            f"{plural(self.batches, 'batch')}, {plural(self.requests, 'request')}, "
            f"{plural(sum(self.retries.values()), 'retry', 'retries')}",
            "  of these: " + ", ".join(f"{o[key]} {OUTCOME_WORDS.get(key, key.replace('_', ' '))}" for key in said),
        ]
        changed = o["changed_during_run"]
        if changed:
            one = changed == 1
            lines.append(
                f"  {plural(changed, 'row')} of these {'was' if one else 'were'} changed in the table during the run: "
                f"{'it stays' if one else 'they stay'} pending and {'is' if one else 'are'} sent at the next run"
            )
        if self.stopped_early:
            if self.not_reached_unknown:
                lines.append("  not reached (stopped early): unknown (the database could not be asked)")
            else:
                left = o["not_reached"]
                lines.append(
                    f"  not reached (stopped early): {plural(left, 'row')}" + (", read at the next run" if left else "")
                )
        if self.resent_in_doubt:
            lines.append(
                f"  {plural(self.resent_in_doubt, 'child', 'children')} sent whole because DfE's copy was in doubt "
                "(an earlier batch's answer was never recorded, or run --resend-all), with purges for whatever "
                "DfE may hold"
            )
        if self.orphans:
            lines.append(f"  {self._orphan_line()}")
        lines += [
            f"  problem: {key}: {plural(count, 'row')}, e.g. row id {', '.join(map(str, self.examples.get(key, [])))}"
            for key, count in self.invalid_reasons.most_common(10)
        ]
        return lines

    def _orphan_line(self) -> str:
        """What became of the children the ledger says DfE holds with no row left in the table."""
        head = f"orphans (the ledger says DfE holds them, no row left): {self.orphans}"
        if self.orphans_for_review:
            return f"{head}, {self.orphans_for_review} purges written for review"
        if self.orphans_purged or self.orphans_not_purged:
            return f"{head}, {self.orphans_purged} purged by DfE, {self.orphans_not_purged} not purged"
        return f"{head}, not purged (run --purge-orphans to purge them)"


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

    Raises OSError or ValueError, with the reason, for a file that cannot be used: a link, a
    pipe or a file far larger than a summary included (:func:`read_plain`).
    """
    text = read_plain(path, SUMMARY_LIMIT).decode("utf-8")
    data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite)
    if not isinstance(data, dict):
        raise ValueError(f"it is a JSON {type(data).__name__}, not an object")
    return data


@dataclass
class Summaries:
    """Run summaries read back from the log folder (:func:`read_summaries`)."""

    recent: list[dict[str, Any]] = field(default_factory=list)  # newest first
    in_future: list[dict[str, Any]] = field(default_factory=list)  # dated in the future, latest first
    in_future_total: int = 0  # all of those, not only the ones read
    skipped: list[str] = field(default_factory=list)  # "file: why" for each that could not be used


def unreadable_log_dir(log_dir: Path) -> str | None:
    """Why the run files in ``log_dir`` cannot be read, in words; None when they can.

    A folder not made yet, whose parent is there, is fine: the first run makes it, and until then
    there are simply no runs. One whose parent is missing too is a network share that cannot be
    reached (Windows says "not found" for both) or a mistyped path, and its "no runs yet" would
    be untrue.
    """
    try:
        with os.scandir(log_dir):
            return None
    except FileNotFoundError:
        parent = log_dir.parent
        if parent != log_dir and parent.is_dir():
            return None
        return (
            f"it cannot be reached: neither it nor the folder it is in ({parent}) exists (a network share this "
            "account cannot reach now, or a mistyped path)"
        )
    except OSError as exc:
        return f"it cannot be read ({why_not(exc)})"


def read_summaries(
    log_dir: Path,
    limit: int,
    *,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    now: datetime | None = None,
) -> Summaries:
    """The newest ``limit`` usable summaries in ``log_dir`` that ``keep`` accepts, newest first by
    when each run started (:func:`runs_in`), and, apart from them, those dated in the future.

    A summary that is not strict JSON (a hand edit: ``NaN``), or that ``keep`` refuses with a
    ValueError, is skipped rather than stopping the caller, and named in ``skipped``.
    """
    found = Summaries()
    if not log_dir.is_dir():
        return found
    try:
        runs = runs_in(log_dir, now)
    except OSError as exc:  # a folder that went away or turned unreadable: no history, said so
        found.skipped.append(f"{log_dir}: cannot be read ({why_not(exc)})")
        return found
    for run in runs:
        path = run.summary_path
        if path is None:
            continue
        if run.summary is None:
            found.skipped.append(f"{path.name}: {run.problem}")
            continue
        try:
            wanted = keep is None or keep(run.summary)
        except ValueError as exc:
            found.skipped.append(f"{path.name}: {exc}")
            continue
        if not wanted:
            continue
        if run.in_future:
            found.in_future_total += 1
            shelf = found.in_future
        else:
            shelf = found.recent
        if len(shelf) < limit:
            shelf.append(run.summary)
    return found
