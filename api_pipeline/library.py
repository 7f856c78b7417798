"""The tool as a Python library: ``from api_pipeline import run``, for notebooks (Jupyter, Microsoft Fabric).

:func:`run` runs what the command line's ``run`` runs, with the settings loaded as the command
line loads them (``Context.load``: the ``.env`` file, the environment, then what the call says),
and the same log file, summary and report; it returns a :class:`RunResult` instead of exiting.

A notebook is someone else's process, so the call leaves it as it found it: it never calls
``sys.exit`` or reads ``sys.argv``; the signal handlers it installs for the run (so that
interrupting the kernel stops the run as Ctrl+C stops the command: the batch in flight is
answered and written back first) are the ones it found again when it returns; the package's
logger is put back as Python's default; and a ``connection=`` it is given (``store.borrowed``)
is the caller's still, open, with the settings the run changed on it put back.

Every outcome the command line turns into an exit code is a result here, never an exception:
a setting missing or wrong is ``exit_code`` 2 with the message in ``error``, a database that
cannot be reached 3, and so on (``errors.ExitCode``). :meth:`RunResult.check` raises
:class:`RunFailed` for a caller (a scheduled notebook, a pipeline) that wants a failed run to
fail the cell.

Where it stands: beside ``cli``, the other way in, at the top of the rooms (pyproject's
import-linter contract). It uses ``job`` (the run), ``settings`` (loading them) and ``store``
(the borrowed connection); nothing in the package imports it but ``api_pipeline/__init__.py``,
lazily, so that ``import api_pipeline`` stays as cheap as it was (the PyInstaller spec reads the
version that way).
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api_pipeline.errors import ConfigError, DatabaseError, ExitCode, Interrupted, PipelineError, RunFailed
from api_pipeline.job.logs import close_logging, log_to_files_only
from api_pipeline.job.progress import in_a_notebook
from api_pipeline.job.run_files import PROBLEM_OUTCOMES, ROW_OUTCOMES
from api_pipeline.job.runner import RunRecord, run_command
from api_pipeline.settings.config import OPTIONS
from api_pipeline.settings.context import Context
from api_pipeline.settings.options import Option
from api_pipeline.stopping import stopping_on_signals
from api_pipeline.store.borrowed import borrow
from api_pipeline.store.db import Database
from api_pipeline.wording import printable


@dataclass(frozen=True)
class RunResult:
    """What one :func:`run` did: counts, the exit code and where its files are. No record, no secret.

    ``counts`` has every row outcome of the run's summary (``sent``, ``purged``, ``unchanged``,
    ``invalid``, ``rejected``, ``failed``, ...; zero for those that did not happen), which add up
    to ``rows_read``; ``problems_by_reason`` the problems by field or reason, counts only.
    ``error`` is why the run stopped, as the command line says it (secrets hidden), else None.
    The files are None when they were not written (a setting wrong: the run never started).
    """

    exit_code: int
    meaning: str
    error: str | None = None
    run_id: str | None = None
    rows_read: int = 0
    counts: Mapping[str, int] = field(default_factory=dict)
    problems_by_reason: Mapping[str, int] = field(default_factory=dict)
    log_file: Path | None = None
    summary_file: Path | None = None
    report_file: Path | None = None

    @property
    def ok(self) -> bool:
        """Exit code 0: everything sent, or nothing to do."""
        return self.exit_code == ExitCode.OK

    @property
    def problems(self) -> int:
        """Rows invalid, skipped, rejected, failed, in doubt or not reached."""
        return sum(self.counts.get(key, 0) for key in PROBLEM_OUTCOMES)

    @property
    def sent(self) -> int:
        return self.counts.get("sent", 0)

    @property
    def purged(self) -> int:
        return self.counts.get("purged", 0)

    @property
    def unchanged(self) -> int:
        return self.counts.get("unchanged", 0)

    @property
    def invalid(self) -> int:
        return self.counts.get("invalid", 0)

    @property
    def rejected(self) -> int:
        return self.counts.get("rejected", 0)

    @property
    def failed(self) -> int:
        return self.counts.get("failed", 0)

    def check(self) -> RunResult:
        """This result, or :class:`RunFailed` when the exit code is not 0 (so that a failed run fails the cell)."""
        if not self.ok:
            raise RunFailed(self)
        return self


def run(
    env: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    connection: Any = None,
    *,
    limit: int | None = None,
    dry_run: str | os.PathLike[str] | None = None,
    resend_all: bool = False,
    purge_orphans: bool = False,
    purge_many_orphans: bool = False,
    quiet: bool = False,
    progress: bool | None = None,
    **overrides: Any,
) -> RunResult:
    """Run the pipeline once, as ``csc-api-pipeline run`` does, and return what it did.

    ``env``: the settings' variables to read instead of the process environment (``os.environ``).
    ``env_file``: the ``.env`` file (``--env-file``); without it, a ``.env`` (or the earlier tool's
    ``env.txt``) in the current folder, as the command line looks for one. ``connection``: an open
    ``sqlite3`` or ``pyodbc`` connection to the staging table's database, used instead of
    DB_CONNECTION_STRING and still open, and yours, afterwards (see docs/notebooks.md).
    ``overrides``: settings, by their variable's name or their attribute's (``BATCH_SIZE=50`` or
    ``batch_size=50``), above the environment and the file, and checked as they are.
    ``limit``, ``dry_run``, ``resend_all``, ``purge_orphans``, ``purge_many_orphans``, ``quiet``: the
    command's ``--limit``, ``--dry-run FOLDER``, ``--resend-all``, ``--purge-orphans``,
    ``--purge-many-orphans`` and ``--quiet``. ``progress``: the progress bar, on standard error: by default
    on a terminal and in a notebook (Jupyter, Fabric); True: wherever standard error goes; False:
    on a terminal only, as the command line. The log's lines go to standard error too (a notebook
    shows them under the cell), warnings only with ``quiet``.
    """
    cwd = Path.cwd()
    # The executable's folder is where the command line also looks for a .env; here, that would be
    # the folder of sys.argv[0], which is the notebook server's, not the caller's.
    ctx = Context(environ={}, cwd=cwd, out=sys.stdout, err=sys.stderr, executable_dir=cwd)
    record = RunRecord()
    code: int = ExitCode.OK
    error: str | None = None
    try:
        with stopping_on_signals(ctx.stop):
            flags = {"resend_all": resend_all, "purge_orphans": purge_orphans, "purge_many_orphans": purge_many_orphans}
            code = _run(ctx, record, env, env_file, connection, overrides, limit, dry_run, flags, quiet, progress)
    except PipelineError as exc:
        code, error = exc.exit_code, _error_text(ctx, exc)
    except KeyboardInterrupt as exc:
        code = ExitCode.INTERRUPTED
        reason = exc.reason if isinstance(exc, Interrupted) else "Ctrl+C"
        error = f"stopped by {reason}: rows not yet acknowledged stay pending and are sent next run"
    except Exception as exc:  # noqa: BLE001 - a fault in the tool is a result too, as the command line's exit 1
        code = ExitCode.RECORDS_FAILED
        kept = log_to_files_only(f"unexpected error: {type(exc).__name__}; its traceback:", sys.exc_info())
        where = f"its traceback is in {kept[0]}" if kept else "run the command line with -vv for its traceback"
        error = (
            f"unexpected error: {type(exc).__name__} (a fault in the tool, not in the data or the settings; {where})"
        )
    finally:
        close_logging()
    return _result(code, error, record)


def _run(
    ctx: Context,
    record: RunRecord,
    env: Mapping[str, str] | None,
    env_file: str | os.PathLike[str] | None,
    connection: Any,
    overrides: dict[str, Any],
    limit: int | None,
    dry_run: str | os.PathLike[str] | None,
    flags: dict[str, bool],
    quiet: bool,
    progress: bool | None,
) -> int:
    ctx.environ = {**_environment(env), **_override_variables(overrides, connection is not None)}
    explicit = None if env_file is None else ctx.path(Path(env_file))
    if explicit is not None and not explicit.is_file():
        raise ConfigError(f"env_file: {explicit} does not exist or is not a file")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit: {limit!r} is not a whole number of rows, 1 or more")
    if flags["purge_many_orphans"] and not flags["purge_orphans"]:
        raise ConfigError("purge_many_orphans confirms purge_orphans, which was not asked for")
    settings = ctx.load("run", explicit, {}, connection_given=connection is not None)
    anywhere = in_a_notebook() if progress is None else progress
    database: Database | None = None
    try:
        database = None if connection is None else borrow(connection)
        return run_command(
            settings,
            ctx,
            limit=limit,
            dry_run_dir=None if dry_run is None else ctx.path(Path(dry_run)),
            verbosity=0,
            quiet=quiet,
            resend_all=flags["resend_all"],
            purge_orphans=flags["purge_orphans"],
            purge_many_orphans=flags["purge_many_orphans"],
            database=database,
            record=record,
            progress_anywhere=anywhere,
        )
    finally:
        if database is not None:
            database.close()  # given back as it was given, never closed


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    if env is None:
        return dict(os.environ)
    wrong = sorted(str(name) for name, value in env.items() if not isinstance(name, str) or not isinstance(value, str))
    if wrong:
        raise ConfigError(f"env: every name and value must be text; not so for {', '.join(wrong)}")
    return dict(env)


def _options_by_name() -> dict[str, Option]:
    """Every setting by its variable's name, the earlier tool's names for it, and its attribute's name."""
    names: dict[str, Option] = {}
    for option in OPTIONS:
        for name in (option.env, *option.aliases, option.attr):
            names.setdefault(name, option)
    return names


def _override_variables(overrides: Mapping[str, Any], connection_given: bool) -> dict[str, str]:
    """``overrides`` as the variables the settings are read from, so that each is checked as the
    command line checks it, and above the environment and the file. None means not overridden."""
    known = _options_by_name()
    variables: dict[str, str] = {}
    problems = []
    for name, value in overrides.items():
        option = known.get(name)
        if option is None:
            nearest = difflib.get_close_matches(name.upper(), sorted(o.env for o in OPTIONS), n=1, cutoff=0.7)
            hint = f": did you mean {nearest[0]}?" if nearest else " (configuration.md lists every setting)"
            problems.append(f"{name} is not a setting{hint}")
        elif value is None:
            continue
        elif connection_given and option.attr == "db_connection_string":
            problems.append(f"{name}: give connection= or {option.env}, not both")
        elif isinstance(value, bool):
            variables[option.env] = "true" if value else "false"
        elif isinstance(value, (str, int, float, os.PathLike)):
            variables[option.env] = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        else:
            problems.append(f"{name}: give text, a number, true/false or a path, not a {type(value).__name__}")
    if problems:
        raise ConfigError(problems)
    return variables


def _error_text(ctx: Context, exc: PipelineError) -> str:
    """What the command line says after ``error:``, its lines joined: secrets hidden, control characters escaped."""
    lines = str(exc).split("\n") if str(exc) else [exc.__class__.__name__]
    sqlite_file = ctx.loaded.sqlite_file if ctx.loaded is not None else None
    if isinstance(exc, DatabaseError) and sqlite_file is not None and str(sqlite_file) not in str(exc):
        lines.append(f"(the SQLite database: {sqlite_file})")
    return "\n".join(printable(ctx.masked(line)) for line in lines)


def _result(code: int, error: str | None, record: RunRecord) -> RunResult:
    summary = record.summary
    code = int(code)  # a plain number, as a notebook shows it, not ExitCode.OK
    try:
        meaning = ExitCode(code).meaning
    except ValueError:
        meaning = "see the exit codes in the documentation"
    if summary is None:
        return RunResult(exit_code=code, meaning=meaning, error=error)
    counts = {key: int(summary.outcomes[key]) for key in ROW_OUTCOMES}
    counts |= {key: int(n) for key, n in summary.outcomes.items() if key not in counts and n}
    return RunResult(
        exit_code=code,
        meaning=meaning,
        error=error or summary.fatal_error,
        run_id=summary.run_id,
        rows_read=summary.rows_read,
        counts=counts,
        problems_by_reason=dict(summary.invalid_reasons),
        log_file=record.log_file,
        summary_file=record.summary_file,
        report_file=record.report_file,
    )
