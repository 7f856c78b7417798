"""Wiring for ``run``: settings → database, validator, HTTP client → pipeline → summary.

Kept apart from ``pipeline`` (which only moves rows) and ``cli`` (which only
parses), so ``demo``, the tests and the benchmarks start runs the same way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from api_pipeline.dfe.api import ApiClient
from api_pipeline.dfe.auth import ClientCredentialsAuth
from api_pipeline.dfe.schema import RecordValidator
from api_pipeline.dfe.transport import make_session
from api_pipeline.errors import ConfigError, DatabaseError, ExitCode, Interrupted, PipelineError
from api_pipeline.job.alerts import say_setup_problems, send_run_alert
from api_pipeline.job.logs import configure_logging
from api_pipeline.job.orphans import OrphanPurge
from api_pipeline.job.pipeline import Pipeline, RunOptions
from api_pipeline.job.progress import progress_for
from api_pipeline.job.report import write_report
from api_pipeline.job.run_files import (
    OUTCOME_WORDS,
    ROW_OUTCOMES,
    RunSummary,
    default_log_dir,
    make_private_dir,
    new_run_id,
    summary_path_for,
    why_not,
    write_summary,
)
from api_pipeline.settings.config import Settings
from api_pipeline.settings.context import Context
from api_pipeline.settings.masking import hide_secrets
from api_pipeline.stopping import StopRequest
from api_pipeline.store.db import Database
from api_pipeline.store.lock import Heartbeat, RunLock
from api_pipeline.store.staging import StagingTable
from api_pipeline.timestamps import utc_stamp
from api_pipeline.wording import plural, printable

log = logging.getLogger("api_pipeline.run")


def execute_run(
    settings: Settings,
    *,
    run_id: str | None = None,
    limit: int | None = None,
    dry_run_dir: Path | None = None,
    partial: bool | None = None,
    validate_only: bool = False,
    all_rows: bool = False,
    resend_all: bool = False,
    purge_orphans: bool = False,
    purge_many_orphans: bool = False,
    sleep: Callable[[float], None] | None = None,
    progress_stream: TextIO | None = None,
    summary: RunSummary | None = None,
    stop: StopRequest | None = None,
    database: Database | None = None,
    progress_anywhere: bool = False,
) -> RunSummary:
    """One run of the pipeline with everything built from ``settings``. Raises on fatal errors.

    ``sleep`` is how retries wait (default: ``stop.sleep``, else ``time.sleep``); tests pass one
    that records the waits instead. ``progress_stream`` gets a progress bar when it is a
    terminal. ``summary``, when given, is filled in as the run goes, so the caller still has the
    counts if the run fails. ``resend_all``: every row is read and every child sent whole, as if
    DfE's copy of each were in doubt (after restoring an older copy of the tables).
    ``purge_orphans``: after the rows, purge the children the ledger says DfE holds that no row
    produces any more (``job.orphans``; ``purge_many_orphans`` past its guard); without it they are
    only counted, and a warning names the option. ``stop``,
    the command line's (:mod:`~api_pipeline.stopping`): a
    signal stops the run only while it reads, sends and writes back rows, never while it
    connects or takes or releases the run lock; once a stop is asked no batch is sent and no
    retry made. ``database``: a connection the caller opened (``store.borrowed``), used instead of
    DB_CONNECTION_STRING's and given back, never closed. ``progress_anywhere``: the bar on
    ``progress_stream`` even when it is no terminal (a notebook's output).
    """
    if sleep is None:
        sleep = stop.sleep if stop is not None else time.sleep
    # Where a signal may stop the run: only inside ``interruptible()``, around the pipeline itself.
    uninterrupted = stop.uninterrupted if stop is not None else contextlib.nullcontext
    interruptible = stop.interruptible if stop is not None else contextlib.nullcontext
    run_id = run_id or (summary.run_id if summary else new_run_id())
    all_rows = all_rows or resend_all
    options = RunOptions.from_settings(
        settings,
        partial=partial,
        limit=limit,
        dry_run_dir=dry_run_dir,
        validate_only=validate_only,
        all_rows=all_rows,
        resend_all=resend_all,
        purge_orphans=purge_orphans,
        purge_many_orphans=purge_many_orphans,
    )
    if summary is None:
        summary = RunSummary(
            run_id=run_id, mode="partial" if options.partial else "full", dry_run=dry_run_dir is not None
        )
    if options.writes:
        check_live_interlock(settings)
    if dry_run_dir is not None:
        prepare_review_folder(dry_run_dir)
    validator = RecordValidator.from_settings(settings.payload_schema)
    with uninterrupted(), _the_database(settings, database) as db:
        table = StagingTable(db, settings.table_name)
        table.require_columns()
        if options.writes:
            db.prepare_for_bulk_writes()
        what = "checking" if validate_only else "preparing" if dry_run_dir is not None else "sending"
        progress = progress_for(
            table,
            stream=progress_stream,
            all_rows=all_rows,
            held_back=validate_only,
            limit=limit,
            description=what,
            anywhere=progress_anywhere,
        )
        with progress:
            if not options.writes:
                with interruptible():
                    Pipeline(table, None, validator, options, summary, on_progress=progress.update).run()
                    if not validate_only and not summary.stopped_early:
                        _orphans(table, validator, options, summary).run(None, review_dir=dry_run_dir)
                    return summary
            table.ensure_ledger()
            check_ledger(table)
            with RunLock(db, settings.table_name, run_id=run_id) as lock:
                session = make_session(settings)
                try:
                    auth = ClientCredentialsAuth.from_settings(settings, session, sleep=sleep)
                    client = ApiClient(settings, session, auth, sleep=sleep)
                    # Batches are recorded before they are sent on a connection of their own, so that
                    # recording one never waits for another's write-back (DESIGN §7).
                    recording = db.another()
                    try:
                        recorder = None if recording is None else table.on(recording)
                        with Heartbeat(lock, client, stop=stop, on_progress=progress.update) as heartbeat:
                            pipeline = Pipeline(
                                table,
                                heartbeat,
                                validator,
                                options,
                                summary,
                                on_progress=heartbeat.after_batch,
                                recorder=recorder,
                            )
                            with interruptible():
                                pipeline.run()
                                if not summary.stopped_early:  # the ledger as the rows left it
                                    _orphans(table, validator, options, summary).run(
                                        heartbeat,
                                        max_in_flight=options.max_in_flight,
                                        on_progress=heartbeat.after_batch,
                                        recorder=recorder,
                                    )
                                return summary
                    finally:
                        _copy_client_counters(client, summary)
                        if recording is not None:
                            recording.close()
                finally:
                    session.close()


def _orphans(table: StagingTable, validator: RecordValidator, options: RunOptions, summary: RunSummary) -> OrphanPurge:
    """The children the table lost, after the rows: counted and warned of, or purged (--purge-orphans)."""
    return OrphanPurge(table, validator, summary, options.purge_orphans, options.purge_many_orphans, options.batch_size)


def _the_database(settings: Settings, given: Database | None) -> Database:
    """The connection the caller gave, else the one DB_CONNECTION_STRING names, opened now."""
    if given is not None:
        log.info("database: %s", given.description)
        return given
    assert settings.db_connection_string is not None
    return Database.open_existing(settings.db_connection_string)


def prepare_review_folder(folder: Path) -> None:
    """The --dry-run folder, made now: a file in the way is a mistake to report before any work."""
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--dry-run: {folder} is a file; give a folder for the request files to be written to")
    try:
        make_private_dir(folder)  # the files hold whole records
    except OSError as exc:
        raise ConfigError(f"--dry-run: cannot make the folder {folder}: {why_not(exc)}") from None


def check_ledger(table: StagingTable) -> None:
    """Refuse before sending when the ledger, or the in-flight or in-doubt table, cannot hold what
    is written to it (a receipt too long).

    Found only at write-back, that would be after DfE had taken the records: every run.
    """
    for what, name, issues in (
        ("ledger table", table.ledger, table.ledger_issues()),
        ("in-flight table", table.in_flight, table.in_flight_issues()),
        ("in-doubt table", table.in_doubt, table.in_doubt_issues()),
    ):
        blocking = [issue for issue in issues or [] if issue.blocking]
        if blocking:
            first = blocking[0]
            raise DatabaseError(
                f"the {what} {name} cannot hold what the tool writes to it: {first.column} {first.reason}. "
                "Nothing was sent. Run test-schema for the statement that fixes it"
            )


def check_live_interlock(settings: Settings) -> None:
    """Refuse to send to DfE's live receiver by accident, and never send an _anon test copy there."""
    if settings.is_test_receiver:
        return
    if settings.table_name.lower().endswith("_anon"):
        raise ConfigError(
            f"TABLE_NAME {settings.table_name} is an anonymised test copy (_anon) and API_ENDPOINT is DfE's live "
            "receiver (no '-test' in its host name or path). Test copies go to the test receiver only."
        )
    if not settings.allow_live:
        raise ConfigError(
            "API_ENDPOINT is DfE's live receiver (no '-test' in its host name or path). To send live data, run with "
            "--live or set ALLOW_LIVE=true; to rehearse, use DfE's test receiver."
        )


def _copy_client_counters(client: Any, summary: RunSummary) -> None:
    summary.requests = int(getattr(client, "requests", 0))
    summary.retries = dict(getattr(client, "retries", {}) or {})
    summary.bytes_sent = int(getattr(client, "bytes_sent", 0))


def run_command(
    settings: Settings,
    ctx: Context,
    *,
    limit: int | None,
    dry_run_dir: Path | None,
    verbosity: int,
    quiet: bool,
    resend_all: bool = False,
    purge_orphans: bool = False,
    purge_many_orphans: bool = False,
    database: Database | None = None,
    record: RunRecord | None = None,
    progress_anywhere: bool = False,
) -> int:
    """The ``run`` command: log file, masking, the run, the summary and the exit code.

    The exit code is the run's own: a log file, summary or report that cannot be written is a
    warning (DESIGN §7). Ctrl+C or SIGTERM (``ctx.stop``) stops only the run's work, where
    :func:`execute_run` allows; the log, the summary and the report around it are written whole,
    and once they are, a signal changes nothing. ``record`` is filled in as the run goes, for a
    caller that wants the summary and the files' paths (the Python API), even when the run raises.
    ``database`` and ``progress_anywhere``: as :func:`execute_run`'s.
    """
    stop = ctx.stop
    stop.announcement = (
        "stopping. A batch being sent is answered and written back first (HTTP_TIMEOUT at most); nothing "
        "more is sent, and what DfE has not acknowledged stays pending for the next run"
    )
    with stop.uninterrupted():
        try:
            return _run_and_record(
                settings,
                ctx,
                stop,
                limit=limit,
                dry_run_dir=dry_run_dir,
                verbosity=verbosity,
                quiet=quiet,
                resend_all=resend_all,
                purge_orphans=purge_orphans,
                purge_many_orphans=purge_many_orphans,
                database=database,
                record=record if record is not None else RunRecord(),
                progress_anywhere=progress_anywhere,
            )
        finally:
            stop.finish()


def _run_and_record(
    settings: Settings,
    ctx: Context,
    stop: StopRequest,
    *,
    limit: int | None,
    dry_run_dir: Path | None,
    verbosity: int,
    quiet: bool,
    resend_all: bool,
    purge_orphans: bool = False,
    purge_many_orphans: bool = False,
    database: Database | None,
    record: RunRecord,
    progress_anywhere: bool,
) -> int:
    run_id = new_run_id()
    log_dir = default_log_dir(settings, ctx.cwd)
    verbosity = max(verbosity, 1 if settings.debug else 0)  # DEBUG=true is -v, on the console and in the log
    masking, log_file = configure_logging(verbosity=verbosity, quiet=quiet, log_dir=log_dir, run_id=run_id)
    masking.add(*settings.secrets())
    record.log_file = log_file
    log.info(
        "run %s started (%s mode)%s%s%s",
        run_id,
        "partial" if settings.use_partial_payload else "full",
        ", dry run" if dry_run_dir else "",
        ", every child sent whole again (--resend-all)" if resend_all else "",
        ", orphans purged (--purge-orphans)" if purge_orphans else "",
    )
    _log_where_settings_came_from(settings, ctx)
    say_setup_problems(settings)
    summary = RunSummary(
        run_id=run_id, mode="partial" if settings.use_partial_payload else "full", dry_run=dry_run_dir is not None
    )
    record.summary = summary
    exit_code = ExitCode.OK
    try:
        execute_run(
            settings,
            limit=limit,
            dry_run_dir=dry_run_dir,
            progress_stream=None if quiet else ctx.err,
            summary=summary,
            stop=stop,
            resend_all=resend_all,
            purge_orphans=purge_orphans,
            purge_many_orphans=purge_many_orphans,
            database=database,
            progress_anywhere=progress_anywhere,
        )
        exit_code = ExitCode.RECORDS_FAILED if summary.problems else ExitCode.OK
        return exit_code
    except PipelineError as exc:
        exit_code = exc.exit_code
        summary.stopped_early = True
        first_line = str(exc).split("\n")[0] if str(exc) else exc.__class__.__name__
        # Secrets hidden (the token included, once it was issued), control characters escaped.
        summary.fatal_error = printable(hide_secrets(first_line, masking.secrets))
        log.error("run stopped: %s", summary.fatal_error)
        if isinstance(exc, DatabaseError) and settings.sqlite_file and str(settings.sqlite_file) not in str(exc):
            log.error("the SQLite database: %s", settings.sqlite_file)
        raise
    except KeyboardInterrupt as exc:
        exit_code = ExitCode.INTERRUPTED
        summary.stopped_early = True
        summary.fatal_error = f"stopped by {exc.reason if isinstance(exc, Interrupted) else 'Ctrl+C'}"
        log.warning("run %s: what DfE did not acknowledge stays pending and is sent next run", summary.fatal_error)
        raise
    except Exception as exc:
        # A fault in the tool: cli.main exits 1 for it, and the summary and report must say so.
        # Only the exception's type is recorded: its message could hold anything.
        exit_code = ExitCode.RECORDS_FAILED
        summary.fatal_error = (
            f"unexpected error: {type(exc).__name__} (a fault in the tool, not in the data or the settings; "
            "run again with -vv for details and report it)"
        )
        log.error("run stopped: %s", summary.fatal_error)
        raise
    finally:
        if stop.reason is not None and exit_code != ExitCode.INTERRUPTED:
            log.info("%s arrived as the run was ending; it ended as it would have anyway", stop.reason)
        summary.exit_code = exit_code
        summary.finished_at = summary.finished_at or utc_stamp()
        for line in summary.lines():
            log.info("%s", line)
        if log_file is not None:
            _write_run_files(log_file, summary, record)
        # After the summary and the report, so the alert can say where they are; then the summary
        # again, to record what became of the alert. Neither changes the exit code.
        if send_run_alert(settings, summary, log_file=log_file, report=record.report_file) and log_file is not None:
            _rewrite_summary(log_file, summary)


@dataclass
class RunRecord:
    """What a run left behind, filled in as it goes: its summary, and the files written (None: not written)."""

    summary: RunSummary | None = None
    log_file: Path | None = None
    summary_file: Path | None = None
    report_file: Path | None = None


def _write_run_files(log_file: Path, summary: RunSummary, record: RunRecord) -> None:
    """The summary and the report beside the run's log; either failing is a warning, never a new exit code."""
    try:
        summary_path = write_summary(log_file, summary)
        record.summary_file = summary_path
    except OSError as exc:
        summary_path = summary_path_for(log_file)
        log.warning("could not write the run summary in %s: %s", log_file.parent, why_not(exc))
    log.info("log: %s", log_file)
    try:
        record.report_file = write_report(summary_path, summary.to_dict())
        log.info("report: %s", record.report_file)
    except (OSError, ValueError) as exc:
        reason = why_not(exc) if isinstance(exc, OSError) else str(exc)
        log.warning("could not write the run report in %s: %s", log_file.parent, reason)


def _rewrite_summary(log_file: Path, summary: RunSummary) -> None:
    with contextlib.suppress(OSError):  # the first writing's failure was said already
        write_summary(log_file, summary)


def _log_where_settings_came_from(settings: Settings, ctx: Context) -> None:
    if ctx.implied_run:
        log.info("no command was given: running 'run', as the earlier tool did")
    env_file = settings.env_file
    if env_file is None:
        log.info("settings: from the environment only (no .env file found)")
    elif env_file.name.lower() == "env.txt":
        log.info(
            "settings: from %s, the earlier tool's env.txt, as there is no .env beside it; rename it to .env "
            "when convenient",
            env_file,
        )
    else:
        log.info("settings: from %s", env_file)
    for warning in settings.warnings:
        log.warning("settings: %s", warning)
    if settings.sqlite_file is not None:
        log.info("database: SQLite file %s", settings.sqlite_file)


def validate_command(settings: Settings, ctx: Context, *, all_rows: bool, limit: int | None) -> int:
    """The ``validate`` command: the run's checks without sending or writing anything."""
    configure_logging(quiet=True)
    summary = execute_run(settings, validate_only=True, all_rows=all_rows, limit=limit, progress_stream=ctx.err)
    ctx.print(validation_line(summary))
    if summary.invalid_reasons:
        width = max(len(key) for key in summary.invalid_reasons)
        ctx.print("")
        ctx.print(f"{'problem':<{width}}  {'rows':>6}  example row ids")
        for key, count in summary.invalid_reasons.most_common():
            examples = ", ".join(str(i) for i in summary.examples.get(key, []))
            ctx.print(f"{key:<{width}}  {count:>6}  {examples}")
    return ExitCode.RECORDS_FAILED if summary.problems else ExitCode.OK


# What validate always says, even when none; any other outcome is said when it happened.
_VALIDATION_SAID = ("valid", "unchanged", "invalid", "skipped")


def validation_line(summary: RunSummary) -> str:
    """``checked N rows: …``, with a count for every outcome of a row checked, so that the counts add up to N."""
    o = summary.outcomes
    said = [*_VALIDATION_SAID, *(key for key in ROW_OUTCOMES if o[key] and key not in _VALIDATION_SAID)]
    said += [key for key in sorted(o) if o[key] and key not in OUTCOME_WORDS]
    parts = [f"{o[key]} {OUTCOME_WORDS.get(key, key.replace('_', ' '))}" for key in said]
    line = f"checked {plural(summary.rows_read, 'row')}: {', '.join(parts)}"
    if o["changed_during_run"]:
        line += f" ({o['changed_during_run']} of them {OUTCOME_WORDS['changed_during_run']})"
    if summary.stopped_early:
        left = "unknown" if summary.not_reached_unknown else str(o["not_reached"])
        line += f"; stopped early, not reached: {left}"
    return line
