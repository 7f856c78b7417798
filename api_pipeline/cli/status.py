"""``status``: what is in the staging table, what is stuck and why, and how the last runs went.

For an analyst without SQL and for monitoring tools (``--json``). ``cli.status_report``
gathers the report (read-only, and never a value of a record); this module renders it for a
person, and is the command.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from api_pipeline.cli.status_report import RUN_OUTCOMES, STATE_ORDER, StatusReport, collect_status, ordered_by
from api_pipeline.errors import ConfigError, ExitCode
from api_pipeline.job.run_files import OUTCOME_WORDS, ROW_OUTCOMES, default_log_dir, unreadable_log_dir
from api_pipeline.settings.config import Settings
from api_pipeline.settings.context import Context
from api_pipeline.store.db import Database
from api_pipeline.timestamps import parse_timestamp
from api_pipeline.wording import duration, plural, printable


def describe_age(seconds: float) -> str:
    """``2 days 3 hours`` / ``5 hours 12 minutes`` / ``40 minutes``."""
    minutes = int(seconds // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, minutes = divmod(rest, 60)

    def unit(n: int, word: str) -> str:
        return f"{n} {word}{'' if n == 1 else 's'}"

    if days:
        return unit(days, "day") + (f" {unit(hours, 'hour')}" if hours else "")
    if hours:
        return unit(hours, "hour") + (f" {unit(minutes, 'minute')}" if minutes else "")
    return unit(minutes, "minute")


def _table(headers: list[str], rows: list[list[str]], align: str) -> Iterator[str]:
    """Plain aligned columns; ``align`` has one letter per column: ``l`` left, ``r`` right (numbers)."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return (
            "  "
            + "  ".join(
                c.ljust(widths[i]) if align[i] == "l" else c.rjust(widths[i]) for i, c in enumerate(cells)
            ).rstrip()
        )

    yield line(headers)
    for row in rows:
        yield line(row)


def _when(value: Any) -> str:
    """A timestamp for people: ``2026-03-01 21:04`` (`` UTC`` when the value says so)."""
    parsed = parse_timestamp(value)
    if parsed is None:
        return "?"
    return parsed.strftime("%Y-%m-%d %H:%M") + (" UTC" if parsed.tzinfo is not None else "")


def _waiting(report: StatusReport) -> str:
    """What the next run will read, by what it does with them (adding up to the rows), and how long
    the oldest has waited."""
    if report.pending_rows == 0:
        return "Waiting for the next run: nothing."
    parts = [
        f"{plural(n, one)} {what}"
        for n, one, what in (
            (report.pending_records, "record", "to send"),
            (report.pending_deletions, "deletion", "to send"),
        )
        if n
    ]
    if report.pending_adopt:
        parts.append(
            f"{report.pending_adopt} to record as already held by DfE (sent by the earlier tool) without sending"
        )
    head = f"Waiting for the next run: {plural(report.pending_rows, 'row')}: {', '.join(parts)}"
    if report.oldest_pending_age is not None:
        return (
            f"{head}; the oldest was last updated {describe_age(report.oldest_pending_age)} ago "
            f"({_when(report.oldest_pending)})."
        )
    why = "the table has no last_updated column" if not report.last_updated_column else "last_updated is empty"
    return f"{head} (age unknown: {why})."


def run_outcomes(run: dict[str, Any]) -> str:
    """``40 read: 8 sent, 2 purged, 30 recorded as already held by DfE (sent by the earlier tool)``:
    what became of every row a run read (the counts add up to it), then what it did not reach."""
    parts = [
        f"{run[shown]} {OUTCOME_WORDS[key]}"
        for key, shown in RUN_OUTCOMES.items()
        if key in ROW_OUTCOMES and run.get(shown)
    ]
    text = f"{run['rows_read']} read" + (f": {', '.join(parts)}" if parts else "")
    if run.get("changed_during_run"):
        text += f" ({run['changed_during_run']} of them {OUTCOME_WORDS['changed_during_run']})"
    if run.get("not_reached"):
        text += f"; {run['not_reached']} not reached"
    return text


def format_status(report: StatusReport) -> list[str]:
    """The report as lines for a person."""
    out = [f"Staging table {report.table}: {report.total_rows} row{'' if report.total_rows == 1 else 's'}"]
    if report.counts:
        statuses: dict[str, str] = {}
        states: dict[str, str] = {}
        cells: dict[tuple[str, str], int] = {}
        for c in report.counts:
            s, r = c["submission_status"], c["row_state"]
            statuses.setdefault(s.lower(), s)
            states.setdefault(r.lower(), r)
            cells[(s.lower(), r.lower())] = c["rows"]
        state_keys = sorted(states, key=lambda k: ordered_by(STATE_ORDER, k))
        headers = ["submission_status", *(states[k] for k in state_keys), "total"]
        rows = []
        for s in statuses:
            counts = [cells.get((s, k), 0) for k in state_keys]
            rows.append([statuses[s], *(str(n) if n else "-" for n in counts), str(sum(counts))])
        totals = [sum(cells.get((s, k), 0) for s in statuses) for k in state_keys]
        rows.append(["total", *(str(n) for n in totals), str(sum(totals))])
        out.append("")
        out.append("Rows by submission_status (down) and row_state (across):")
        out.extend(_table(headers, rows, "l" + "r" * (len(headers) - 1)))

    out.append("")
    out.append(_waiting(report))
    out.append("")
    if report.problems:
        out.append("Not sent, by reason (field names only, never record content):")
        out.extend(
            _table(
                ["status", "reason", "rows", "example row ids"],
                [
                    [p["submission_status"], p["reason"], str(p["rows"]), ", ".join(map(str, p["example_row_ids"]))]
                    for p in report.problems
                ],
                "llrl",
            )
        )
    else:
        out.append("No invalid or rejected rows.")

    out.append("")
    if report.ledger_exists:
        last = f"; last acknowledgement {_when(report.last_acknowledged)}" if report.last_acknowledged else ""
        out.append(
            f"Submission ledger {report.ledger_table}: {plural(report.children_acknowledged or 0, 'child')} "
            "acknowledged by DfE, "
            f"{report.children_purged} purged{last}."
        )
    else:
        out.append(
            f"Submission ledger {report.ledger_table}: does not exist yet (the first run creates it; "
            "status never does). Until then no child counts as acknowledged."
        )
    if report.first_contact is not None and report.first_contact.total:
        out.append(f"Rows whose child has no ledger entry yet: {report.first_contact.total}. The next run:")
        out.extend(report.first_contact.lines())
    if report.children_in_doubt:
        since = f" (the oldest since {_when(report.in_doubt_since)})" if report.in_doubt_since else ""
        out.append(
            f"In doubt: {plural(report.children_in_doubt, 'child', 'children')} in a batch that was sent but whose "
            f"answer was never recorded{since}. DfE holds the ledger's record or that batch's; the next run sends "
            "each whole, with purges for whatever the batch may have left."
        )
    if report.orphans:
        more = ", ..." if report.orphans > len(report.orphan_examples) else ""
        out.append(
            f"Orphans: {plural(report.orphans, 'child', 'children')} the ledger says DfE holds with no row left in "
            f"the table (deleted outright rather than marked deleted, or re-keyed): {', '.join(report.orphan_examples)}"
            f"{more}. DfE keeps them until run --purge-orphans purges them (see how-it-works)."
        )

    out.append("")
    if report.runs:
        out.append(f"Last {len(report.runs)} run{'' if len(report.runs) == 1 else 's'} (logs in {report.log_dir}):")
        out.extend(
            _table(
                ["started", "duration", "kind", "exit code", "rows"],
                [
                    [
                        _when(r["started_at"]),
                        duration(r["seconds"], unknown="?", unit="s"),
                        "dry run" if r["dry_run"] else "run",
                        "?" if r["exit_code"] is None else str(r["exit_code"]),
                        run_outcomes(r),
                    ]
                    for r in report.runs
                ],
                "lrlrl",
            )
        )
    else:
        out.append(f"No run summaries in {report.log_dir} yet.")
    if report.future_total:
        n = report.future_total
        latest = _when(report.future_runs[0]["started_at"]) if report.future_runs else "?"
        out.append(
            f"Warning: {plural(n, 'run summary', 'run summaries')} {'is' if n == 1 else 'are'} dated in the future "
            f"(the latest {latest}): a clock that ran fast, or files put in {report.log_dir} by someone else. "
            f"{'It is' if n == 1 else 'They are'} left out of the runs above, and the first to be deleted when old "
            "runs' files are."
        )
    if report.skipped_summaries:
        n = len(report.skipped_summaries)
        out.append(f"({plural(n, 'run summary file')} could not be read and {'was' if n == 1 else 'were'} left out.)")
    return out


def status_command(settings: Settings, ctx: Context, *, runs: int = 10, as_json: bool = False) -> int:
    """The ``status`` command. Exit 0; a missing table or database error raises (exit 3), and so does
    a log folder that cannot be reached or read (exit 2, as ``run`` refuses one, before the database).

    ``--json`` prints one JSON object with these keys (stable; new keys may be added,
    ``format_version`` changes if any is removed or changes meaning):

    - ``format_version`` (1), ``generated_at`` (UTC, ISO 8601 ``Z``), ``table``, ``total_rows``
    - ``counts``: ``[{submission_status, row_state, rows}]``, one per combination, compared
      case-insensitively and spelt as the table has them (``(empty)`` for NULL or blank)
    - ``problems``: ``[{submission_status, reason, rows, example_row_ids}]``, most rows first;
      ``reason`` is a reason key such as ``invalid: child_details.postcode``, never a value
    - ``pending``: ``{rows, records, deletions, adopt, oldest_last_updated, oldest_age_seconds,
      last_updated_column}``: the rows the next run would read (records to send, purges to send and
      rows to record as already held by DfE, adding up to ``rows``); the oldest ``last_updated``
      among them, or null
    - ``ledger``: ``{table, exists, children_acknowledged, children_purged, last_acknowledged_at,
      rows_without_entry, children_in_doubt, in_doubt_since, orphans}`` (times in UTC, ending in ``Z``;
      counts null when the ledger does not exist yet); ``rows_without_entry`` is
      ``{adopt, changed_since_sent, with_purges, whole, purge}``: rows whose child has no ledger
      entry yet (as after switching from an earlier tool), by what the next run does with them;
      ``children_in_doubt``: children in a batch sent but never settled; ``orphans``: ``{count,
      examples}``, children DfE holds with no row left (ids only; null without a ledger)
    - ``runs``: ``{log_dir, recent: [{run_id, started_at, seconds, dry_run, rows_read, sent,
      purged, unchanged, adopted, written_for_review, invalid, skipped, rejected, failed, in_doubt,
      changed_during_run, not_reached, exit_code}], unreadable_summaries, dated_in_future:
      {summaries, latest_started_at, run_ids}}``, newest first by the start time each summary
      records; summaries dated in the future are counted apart, not listed in ``recent``
    """
    if settings.db_connection_string is None:
        raise ConfigError(["DB_CONNECTION_STRING: not set. status reads the staging table it names."])
    log_dir = default_log_dir(settings, ctx.cwd)
    unreadable = unreadable_log_dir(log_dir)
    if unreadable is not None:  # not "no runs yet": a monitoring script would take that for nights not run
        raise ConfigError(
            f"LOG_DIR (or --log-dir): cannot read the run summaries in {log_dir}: {unreadable}. Give the folder "
            "the scheduled task keeps its logs in, as this account can reach it"
        )
    with Database.open_existing(settings.db_connection_string) as db:
        report = collect_status(db, settings, log_dir, runs=runs)
    for skipped in report.skipped_summaries:
        print(printable(f"warning: run summary {skipped}; it is left out"), file=ctx.err, flush=True)
    if as_json:
        ctx.print(json.dumps(report.to_dict(), indent=2, sort_keys=True))  # ASCII: every control character escaped
    else:
        for line in format_status(report):
            ctx.print(printable(line))  # statuses as the table spells them: one line each, whatever they hold
    return ExitCode.OK
