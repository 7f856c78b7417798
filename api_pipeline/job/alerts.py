"""What a run's alert says, and whether NOTIFY_ON wants one (DESIGN §13).

Built from the run's summary only: its counts, its problems by field (the reason keys the
summary already holds: a field path or one of the tool's own sentences, never a value), its
exit code and what that means, and where the log and report are. Sent by
:mod:`api_pipeline.notify` after the summary is written; what became of it is a log line and a
field of the summary, and never the run's exit code.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from api_pipeline.errors import ExitCode
from api_pipeline.job.run_files import OUTCOME_WORDS, ROW_OUTCOMES, RunSummary
from api_pipeline.notify.channels import Delivery, deliver, setup_problems
from api_pipeline.notify.message import Alert
from api_pipeline.settings.config import Settings
from api_pipeline.wording import duration, plural

log = logging.getLogger("api_pipeline.run")

PROBLEMS_SHOWN = 10  # fields named in an alert; the report has them all
# Outcomes that make NOTIFY_ON=problems send an alert even when the run's exit code is 0.
ALERTING_OUTCOMES = ("invalid", "rejected", "skipped")

_NEXT_STEPS = {
    ExitCode.OK: ("Nothing to do.",),
    ExitCode.RECORDS_FAILED: (
        "Open the report: it lists each problem with example row ids.",
        "Invalid rows are sent once the staging SQL gives them data that passes; fix the fields named above.",
        "Rows not sent (will retry) go at the next run by themselves.",
    ),
    ExitCode.USAGE: ("Fix the setting named in the log, then run test-endpoint and test-db by hand.",),
    ExitCode.DATABASE: ("The database could not be used: run test-db and test-schema as the task's account.",),
    ExitCode.AUTH: (
        "DfE's sign-in refused the credentials: run test-endpoint. An expired CLIENT_SECRET is the usual cause; "
        "DfE issues a new one.",
    ),
    ExitCode.API: (
        "DfE could not be reached or refused the request: run test-endpoint, which names the cause (network, "
        "proxy, TLS, allow-list).",
    ),
    ExitCode.RUN_IN_PROGRESS: (
        "Another run was working on the same table: if this happens every night, two scheduled tasks overlap.",
    ),
    ExitCode.INTERRUPTED: (
        "The run was stopped (Ctrl+C, the task ended, or the server shut down). What DfE did not acknowledge "
        "is sent at the next run; nothing to do unless it happens every night.",
    ),
}


def wanted(notify_on: str, summary: RunSummary) -> bool:
    """Whether NOTIFY_ON asks for an alert about this run."""
    if notify_on == "always":
        return True
    failed = (summary.exit_code or 0) != 0
    if notify_on == "failure":
        return failed
    if notify_on == "problems":
        return failed or any(summary.outcomes[key] for key in ALERTING_OUTCOMES)
    return False


def run_alert(settings: Settings, summary: RunSummary, *, log_file: Path | None, report: Path | None) -> Alert:
    """The alert for a finished run: counts, problems by field, the exit code and what to do next."""
    code = next((each for each in ExitCode if each.value == summary.exit_code), None)
    la = settings.la_code or "(LA_CODE not set)"
    if code == ExitCode.OK:
        level, headline = "ok", "run finished, nothing wrong"
    elif code == ExitCode.RECORDS_FAILED and not summary.fatal_error:
        level, headline = "problems", f"run finished with problems ({plural(summary.problems, 'row')})"
    else:
        level, headline = "failed", "run failed"
    if summary.dry_run:
        headline += " (dry run: nothing sent)"
    meaning = code.meaning if code is not None else "unknown"
    o = summary.outcomes
    counts = {key: o[key] for key in ROW_OUTCOMES if o[key]}
    facts = [
        ("LA code", la),
        ("Run id", summary.run_id),
        ("Exit code", f"{summary.exit_code}: {meaning}"),
        ("Computer", socket.gethostname()),
        ("Started", summary.started_at),
        ("Took", duration(summary.seconds, unit="s")),
        ("Rows read", str(summary.rows_read)),
        *((OUTCOME_WORDS.get(key, key).capitalize(), str(count)) for key, count in counts.items()),
    ]
    if summary.stopped_early:
        left = "unknown" if summary.not_reached_unknown else str(o["not_reached"])
        facts.append(("Not reached (stopped early)", left))
    if summary.fatal_error:
        facts.append(("Why it stopped", summary.fatal_error))
    facts.append(("Log", str(log_file) if log_file is not None else "none (no log folder)"))
    facts.append(("Report", str(report) if report is not None else "not written"))
    problems = tuple(summary.invalid_reasons.most_common(PROBLEMS_SHOWN))
    steps = _NEXT_STEPS.get(code, ()) if code is not None else ()
    if summary.fatal_error and summary.fatal_error.startswith("unexpected error"):
        steps = ("A fault in the tool: run again by hand with -vv and report it with the log.",)
    return Alert(
        title=f"CSC API Pipeline, LA {la}: {headline}",
        level=level,
        facts=tuple(facts),
        problems=problems,
        next_steps=steps,
        data={
            "la_code": settings.la_code,
            "run_id": summary.run_id,
            "exit_code": summary.exit_code,
            "exit_meaning": meaning,
            "dry_run": summary.dry_run,
            "started_at": summary.started_at,
            "finished_at": summary.finished_at,
            "rows_read": summary.rows_read,
            "counts": counts,
            "fatal_error": summary.fatal_error,
            "log": str(log_file) if log_file is not None else None,
            "report": str(report) if report is not None else None,
        },
    )


def say_setup_problems(settings: Settings) -> None:
    """At the start of a run: what would stop its alert, as warnings, so a log read early shows them."""
    for problem in setup_problems(settings):
        log.warning("alerts: %s", problem)


def send_run_alert(
    settings: Settings, summary: RunSummary, *, log_file: Path | None, report: Path | None
) -> list[Delivery]:
    """Send the run's alert if NOTIFY_ON wants one; log and record what became of it. Never raises."""
    try:
        if not wanted(settings.notify_on, summary):
            return []
        outcomes = deliver(settings, run_alert(settings, summary, log_file=log_file, report=report))
    except Exception as exc:  # a fault in the tool: the run's exit code is its own
        outcomes = [Delivery("alert", False, f"unexpected error: {type(exc).__name__}")]
    for outcome in outcomes:
        if outcome.ok:
            log.info("alert %s", outcome.line())
            summary.alerts_sent.append(outcome.channel)
        else:
            log.warning("alert %s", outcome.line())
            summary.alert_failures.append(outcome.line())
    return outcomes
