"""What ``status`` gathers: the staging table's counts and problems, what waits for the next run,
the ledger, and the last runs from their summaries, as one :class:`StatusReport` (``cli.status``
renders it, as text or as ``--json``).

Read-only: it runs SELECTs and reads the run summaries beside the logs; it never creates or
alters a table, not even the ledger.

No record content is ever gathered. Reasons are reduced to a *reason key*: the
tool's own wording up to the first ``:`` (which is where a value could start),
with list indexes generalised (``episodes[3].x`` → ``episodes[].x``). A field path
is only shown when every part of it is a field name of the payload schema, and
text the tool did not write itself (DfE's answers, older tools' notes) is shown
as a category only, so a value cannot slip through as a "reason".
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from api_pipeline import reasons
from api_pipeline.dfe.schema import generalise_path, load_bundled_schema, load_schema
from api_pipeline.job.orphans import EXAMPLE_IDS as ORPHAN_EXAMPLES
from api_pipeline.job.orphans import examples, find_orphans
from api_pipeline.job.run_files import FUTURE_GRACE, OUTCOME_KEYS, Summaries, read_summaries
from api_pipeline.settings.config import Settings
from api_pipeline.store.catalogue import column_names
from api_pipeline.store.db import Database
from api_pipeline.store.staging import FirstContact, StagingTable
from api_pipeline.timestamps import parse_timestamp, utc_now, utc_stamp

STATUS_FORMAT_VERSION = 1
EXAMPLE_IDS = 5
STATE_ORDER = ("new", "updated", "unchanged", "deleted")
STATUS_ORDER = ("pending", "sent", "error", "invalid")
NONE_SHOWN = "(empty)"
HIDDEN_REASON = "reason not shown (the text may contain record content)"

# -- reason keys ----------------------------------------------------------------------------

_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\[\d*\])*(\.[A-Za-z_][A-Za-z0-9_]*(\[\d*\])*)*$")
_SKIP_REASONS = (
    *((reasons.NOT_UTF8.format(column=c), reasons.NOT_UTF8.format(column=c)) for c in ("person_id", "row_state")),
    ("row_state ", "row_state is not New, Updated, Unchanged or Deleted"),
    (reasons.DUPLICATE_CHILD_START, "duplicate child"),
    # Notes an earlier version of this tool wrote.
    ("person_id is used by more than one row", "duplicate child"),
    ("person_id does not match", "person_id does not match la_child_id"),
)
_TOOL_PHRASES = reasons.shown_phrases()


def schema_field_names(schema: Any) -> frozenset[str]:
    """Every property name anywhere in a JSON schema: the only words a shown field path may use."""
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            properties = node.get("properties")
            if isinstance(properties, dict):
                names.update(str(k) for k in properties)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return frozenset(names)


class ReasonKeys:
    """Turns an ``api_response`` text into a reason key that cannot contain a record value."""

    def __init__(self, field_names: Iterable[str]) -> None:
        self.field_names = frozenset(field_names) | {"la_child_id", "mis_child_id", "purge"}

    @classmethod
    def from_settings(cls, settings: Settings) -> ReasonKeys:
        names = schema_field_names(load_bundled_schema())
        if settings.payload_schema is not None:
            names |= schema_field_names(load_schema(settings.payload_schema))
        return cls(names)

    def _path(self, text: str) -> str | None:
        text = text.strip()
        if text == "(record)":
            return text
        if not _PATH.match(text):
            return None
        parts = re.sub(r"\[\d*\]", "", text).split(".")
        return generalise_path(text) if all(p in self.field_names for p in parts) else None

    @staticmethod
    def _phrase(text: str) -> str | None:
        """One of the tool's own sentences, as written (``UTF-8`` stays), without what it gave in parentheses."""
        if reasons.comparable(text) not in _TOOL_PHRASES:
            return None
        return re.sub(r"\s*\([^)]*\)", "", text).strip()

    def _head(self, rest: str) -> str | None:
        if rest.startswith(reasons.DFE_REJECTED_RECORD):
            rest = rest[len(reasons.DFE_REJECTED_RECORD) :]
        head = rest.split(":", 1)[0]
        return self._path(head) or self._phrase(head)

    def key(self, api_response: Any) -> str:
        text = "" if api_response is None else str(api_response).strip()
        if text.startswith(reasons.INVALID):
            head = self._head(text[len(reasons.INVALID) :])
            return f"invalid: {head or HIDDEN_REASON}"
        if text.startswith(reasons.REJECTED):
            head = self._head(text[len(reasons.REJECTED) :])
            return f"rejected by DfE: {head or HIDDEN_REASON}"
        if text.startswith(reasons.WILL_RETRY):
            return "not sent, will be retried next run"
        if text.startswith(reasons.SKIPPED):
            rest = text[len(reasons.SKIPPED) :]
            for start, key in _SKIP_REASONS:
                if rest.startswith(start):
                    return f"skipped: {key}"
            return f"skipped: {HIDDEN_REASON}"
        if not text:
            return "no reason recorded"
        return HIDDEN_REASON


# -- timestamps -----------------------------------------------------------------------------


def age_seconds(value: datetime, *, naive_is_utc: bool, now: datetime | None = None) -> float:
    """Seconds since ``value``; never negative.

    Naive timestamps are UTC on SQLite (its CURRENT_TIMESTAMP is UTC, and the demo
    writes UTC) and the server's local time elsewhere (GETDATE(), now()).
    """
    if value.tzinfo is not None:
        current = (now or datetime.now(timezone.utc)).astimezone(timezone.utc)
        return max(0.0, (current - value.astimezone(timezone.utc)).total_seconds())
    if now is not None:
        current = now.astimezone(timezone.utc).replace(tzinfo=None) if naive_is_utc else now.replace(tzinfo=None)
    else:
        current = utc_now() if naive_is_utc else datetime.now()
    return max(0.0, (current - value).total_seconds())


def _utc(value: datetime | None) -> datetime | None:
    """A time the tool itself wrote (the ledger's, the in-doubt table's): UTC, naive as DATETIME holds it."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    if value.tzinfo is not None:
        return value.astimezone(timezone.utc).replace(tzinfo=None).isoformat(timespec="seconds") + "Z"
    return value.isoformat(timespec="seconds")


# -- the report ------------------------------------------------------------------------------

# Every key of ``status --json``, as a path (``[]`` marks a list of objects), and what it means.
# The documentation's table is generated from this, and a test checks it against to_dict().
STATUS_JSON_KEYS: dict[str, str] = {
    "format_version": f"{STATUS_FORMAT_VERSION}. Changes only if a key is removed or changes meaning; "
    "new keys may be added.",
    "generated_at": "When the status was taken: UTC, ISO 8601 ending in Z.",
    "table": "The staging table (TABLE_NAME).",
    "total_rows": "Rows in the staging table.",
    "counts": "One entry per submission_status and row_state combination, compared case-insensitively.",
    "counts[].submission_status": "As the table spells it; (empty) for NULL or blank.",
    "counts[].row_state": "As the table spells it; (empty) for NULL or blank.",
    "counts[].rows": "Rows with that combination.",
    "problems": "Invalid, rejected and not-sent rows grouped by reason, most rows first.",
    "problems[].submission_status": "The rows' status, as the table spells it.",
    "problems[].reason": "A reason key such as invalid: child_details.postcode: field names only, never a value.",
    "problems[].rows": "Rows with that status and reason.",
    "problems[].example_row_ids": f"Up to {EXAMPLE_IDS} row ids (the id column) to look at.",
    "pending": "The rows the next run would read.",
    "pending.rows": "How many: records + deletions + adopt.",
    "pending.records": "Of those, records to send (whole or as changes; one DfE already holds is found up to date "
    "and not sent).",
    "pending.deletions": "Of those, deleted children whose purge DfE has not acknowledged: purges to send.",
    "pending.adopt": "Of those, rows an earlier tool sent and nobody has changed since: recorded as already held by "
    "DfE, not sent again.",
    "pending.oldest_last_updated": "The oldest last_updated among them, or null.",
    "pending.oldest_age_seconds": "How long ago that was, in seconds, or null.",
    "pending.last_updated_column": "false when the table has no last_updated column (no age can be given).",
    "ledger": "The submission ledger: what DfE has acknowledged.",
    "ledger.table": "The ledger table's name.",
    "ledger.exists": "false until the first run creates it.",
    "ledger.children_acknowledged": "Children whose current record DfE acknowledged; null without a ledger.",
    "ledger.children_purged": "Children whose deletion DfE acknowledged; null without a ledger.",
    "ledger.last_acknowledged_at": "The latest acknowledgement (UTC, ending in Z), or null.",
    "ledger.rows_without_entry": "Rows whose child has no ledger entry yet (as after switching from an earlier "
    "tool), by what the next run does with them.",
    "ledger.rows_without_entry.adopt": "Marked sent by an earlier tool and unchanged since: recorded, not sent.",
    "ledger.rows_without_entry.changed_since_sent": "Marked sent but changed since: sent whole, with purges.",
    "ledger.rows_without_entry.with_purges": "Waiting, with previous_json_payload: sent whole, with purges for "
    "what it has and the record lacks.",
    "ledger.rows_without_entry.whole": "Waiting, never sent: sent whole.",
    "ledger.rows_without_entry.purge": "Deleted children: purged.",
    "ledger.children_in_doubt": "Children in a batch that was sent but whose answer was never recorded: DfE may "
    "hold the ledger's record or the batch's. The next run sends each whole, with purges for whatever that batch "
    "may have left.",
    "ledger.in_doubt_since": "When the oldest of those batches was sent (UTC, ending in Z), or null.",
    "ledger.orphans": "Children the ledger says DfE holds (or that are in doubt) with no row left in the staging "
    "table that produces them: the row deleted outright rather than marked deleted, or re-keyed. DfE keeps them "
    "until run --purge-orphans purges them; null without a ledger.",
    "ledger.orphans.count": "How many.",
    "ledger.orphans.examples": f"Up to {ORPHAN_EXAMPLES} of their la_child_ids (ids only), in order.",
    "runs": "The latest runs, from the run summaries in the log folder.",
    "runs.log_dir": "The log folder read.",
    "runs.recent": "One entry per run, newest first (status --runs N: how many).",
    "runs.recent[].run_id": "The run's id, as in its log file's name.",
    "runs.recent[].started_at": "When it started (UTC).",
    "runs.recent[].seconds": "How long it took, or null.",
    "runs.recent[].dry_run": "true for run --dry-run (nothing sent).",
    "runs.recent[].rows_read": "Rows it read: the sum of sent, purged, unchanged, adopted, dry_run, invalid, "
    "skipped, rejected, failed and in_doubt.",
    "runs.recent[].sent": "Records DfE acknowledged.",
    "runs.recent[].purged": "Deletions DfE acknowledged.",
    "runs.recent[].unchanged": "Records DfE already held exactly (and children it had already deleted): not sent.",
    "runs.recent[].adopted": "Records an earlier tool sent, unchanged since: recorded as already held by DfE, not "
    "sent.",
    "runs.recent[].written_for_review": "Records written for review (run --dry-run).",
    "runs.recent[].invalid": "Records that fail DfE's schema (not sent until their data changes).",
    "runs.recent[].skipped": "Rows skipped because of a problem with the row itself.",
    "runs.recent[].rejected": "Records DfE refused.",
    "runs.recent[].failed": "Records not sent this time; sent again next run.",
    "runs.recent[].in_doubt": "Records DfE acknowledged that the table could not record: sent whole next run.",
    "runs.recent[].changed_during_run": "Of the rows read, those the council's SQL changed during the run (each "
    "counted under its outcome too): sent next run.",
    "runs.recent[].not_reached": "Rows the run stopped before reading (not among rows_read): read next run.",
    "runs.recent[].exit_code": "The run's exit code, or null if it did not record one.",
    "runs.unreadable_summaries": "Summary files that could not be read and were left out.",
    "runs.dated_in_future": f"Run summaries dated more than {FUTURE_GRACE.days} day ahead of the clock of the "
    "computer status ran on: a clock that ran fast, or files put in the log folder by someone else. They are left "
    "out of recent, and are the first to be deleted when old runs' files are.",
    "runs.dated_in_future.summaries": "How many (0 normally).",
    "runs.dated_in_future.latest_started_at": "The latest start time any of them records, or null.",
    "runs.dated_in_future.run_ids": "Their run ids, latest first (status --runs N: how many).",
}


@dataclass
class StatusReport:
    """Everything ``status`` shows; :meth:`to_dict` is the ``--json`` document."""

    table: str
    total_rows: int = 0
    counts: list[dict[str, Any]] = field(default_factory=list)
    problems: list[dict[str, Any]] = field(default_factory=list)
    pending_rows: int = 0
    pending_deletions: int = 0
    pending_adopt: int = 0
    oldest_pending: datetime | None = None
    oldest_pending_age: float | None = None
    last_updated_column: bool = True
    ledger_table: str = ""
    ledger_exists: bool = False
    children_acknowledged: int | None = None
    children_purged: int | None = None
    last_acknowledged: datetime | None = None
    first_contact: FirstContact | None = None
    children_in_doubt: int = 0
    in_doubt_since: datetime | None = None
    orphans: int | None = None  # None: no ledger yet
    orphan_examples: list[str] = field(default_factory=list)
    log_dir: str = ""
    runs: list[dict[str, Any]] = field(default_factory=list)
    skipped_summaries: list[str] = field(default_factory=list)  # "file: why" for each summary left out
    future_runs: list[dict[str, Any]] = field(default_factory=list)  # dated in the future, latest first
    future_total: int = 0
    generated_at: str = field(default_factory=utc_stamp)

    @property
    def pending_records(self) -> int:
        """Of the rows waiting, the records to send: neither deletions nor rows to record as already held."""
        return self.pending_rows - self.pending_deletions - self.pending_adopt

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": STATUS_FORMAT_VERSION,
            "generated_at": self.generated_at,
            "table": self.table,
            "total_rows": self.total_rows,
            "counts": self.counts,
            "problems": self.problems,
            "pending": {
                "rows": self.pending_rows,
                "records": self.pending_records,
                "deletions": self.pending_deletions,
                "adopt": self.pending_adopt,
                "oldest_last_updated": _iso(self.oldest_pending),
                "oldest_age_seconds": None if self.oldest_pending_age is None else round(self.oldest_pending_age),
                "last_updated_column": self.last_updated_column,
            },
            "ledger": {
                "table": self.ledger_table,
                "exists": self.ledger_exists,
                "children_acknowledged": self.children_acknowledged,
                "children_purged": self.children_purged,
                "last_acknowledged_at": _iso(self.last_acknowledged),
                "rows_without_entry": None if self.first_contact is None else asdict(self.first_contact),
                "children_in_doubt": self.children_in_doubt,
                "in_doubt_since": _iso(self.in_doubt_since),
                "orphans": None
                if self.orphans is None
                else {"count": self.orphans, "examples": list(self.orphan_examples)},
            },
            "runs": {
                "log_dir": self.log_dir,
                "recent": self.runs,
                "unreadable_summaries": len(self.skipped_summaries),
                "dated_in_future": {
                    "summaries": self.future_total,
                    "latest_started_at": self.future_runs[0]["started_at"] if self.future_runs else None,
                    "run_ids": [r["run_id"] for r in self.future_runs],
                },
            },
        }


def ordered_by(known: tuple[str, ...], value: str) -> tuple[int, str]:
    """A sort key: the values in ``known`` in its order, then any other the table holds, alphabetically."""
    return (known.index(value) if value in known else len(known), value)


def collect_counts(table: StagingTable) -> list[dict[str, Any]]:
    """Rows by status × row_state, compared case-insensitively, shown as the table spells them."""
    found: list[dict[str, Any]] = [
        {
            "submission_status": str(status or "").strip() or NONE_SHOWN,
            "row_state": str(state or "").strip() or NONE_SHOWN,
            "rows": int(rows),
        }
        for status, state, rows in table.counts_by_status_and_state()
    ]
    found.sort(
        key=lambda c: (
            ordered_by(STATUS_ORDER, c["submission_status"].lower()),
            ordered_by(STATE_ORDER, c["row_state"].lower()),
        )
    )
    return found


def collect_problems(table: StagingTable, keys: ReasonKeys) -> list[dict[str, Any]]:
    """Invalid and error rows (and rows whose last attempt was not sent), grouped by reason key.

    Streams the rows; only keys, counts and a few row ids are kept.
    """
    counts: Counter[tuple[str, str]] = Counter()
    shown: dict[str, str] = {}
    examples: dict[tuple[str, str], list[int]] = {}
    for row_id, status, response in table.problem_rows():
        status_key = (status or "").strip().lower()
        shown.setdefault(status_key, (status or "").strip() or NONE_SHOWN)
        group = (status_key, keys.key(response))
        counts[group] += 1
        ids = examples.setdefault(group, [])
        if len(ids) < EXAMPLE_IDS:
            ids.append(int(row_id))
    return [
        {"submission_status": shown[status_key], "reason": reason, "rows": n, "example_row_ids": examples[group]}
        for group, n in sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        for status_key, reason in [group]
    ]


def read_run_summaries(log_dir: Path, limit: int, now: datetime | None = None) -> Summaries:
    """The newest ``limit`` usable run summaries (newest first), those dated in the future apart,
    and ``"file: why"`` for each one skipped.

    A summary whose fields are not of their kind (a hand edit: a list where a mapping belongs)
    is skipped rather than stopping ``status``, like one that is not strict JSON.
    """

    def usable(summary: dict[str, Any]) -> bool:
        run_row(summary)  # every field status shows is of its kind, or ValueError
        return True

    return read_summaries(log_dir, limit, keep=usable, now=now)


def _of_kind(summary: dict[str, Any], key: str, kinds: tuple[type, ...]) -> Any:
    """``summary[key]`` when it is None or of one of ``kinds`` (a bool is not a number); else ValueError."""
    value = summary.get(key)
    if value is None:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise ValueError(f"{key!r} is not a {' or '.join(k.__name__ for k in kinds)}")
    return value


# The outcomes a run's summary can have (validate writes none), each one's count shown for every run,
# by its key in the summary and in status --json (dry_run is the run's kind there already).
RUN_OUTCOMES = {
    key: "written_for_review" if key == "dry_run" else key
    for key in OUTCOME_KEYS
    if key not in ("valid", "held_back_passes")
}


def run_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of one run summary that ``status`` shows; ValueError if a field is not of its kind."""
    outcomes = _of_kind(summary, "outcomes", (dict,)) or {}

    def count(key: str) -> int:
        return int(_of_kind(outcomes, key, (int,)) or 0)

    return {
        "run_id": str(_of_kind(summary, "run_id", (str,)) or ""),
        "started_at": _of_kind(summary, "started_at", (str,)),
        "seconds": _of_kind(summary, "seconds", (int, float)),
        "dry_run": bool(_of_kind(summary, "dry_run", (bool,))),
        "rows_read": int(_of_kind(summary, "rows_read", (int,)) or 0),
        **{shown: count(key) for key, shown in RUN_OUTCOMES.items()},
        "exit_code": _of_kind(summary, "exit_code", (int,)),
    }


def collect_status(
    db: Database, settings: Settings, log_dir: Path, *, runs: int = 10, now: datetime | None = None
) -> StatusReport:
    """Gather the status of the table named in ``settings``; raises DatabaseError if it is missing."""
    table = StagingTable(db, settings.table_name)
    table.require_columns()  # the same messages as run's, pointing at test-schema
    columns = column_names(db, table.table) or []
    report = StatusReport(table=table.table, ledger_table=table.ledger, log_dir=str(log_dir))
    report.counts = collect_counts(table)
    report.total_rows = sum(c["rows"] for c in report.counts)
    report.problems = collect_problems(table, ReasonKeys.from_settings(settings))

    report.ledger_exists = table.has_ledger()
    report.last_updated_column = "last_updated" in columns
    report.pending_rows, oldest = table.pending(oldest=report.last_updated_column)
    if report.pending_rows:
        report.pending_deletions, report.pending_adopt = table.waiting()
    report.oldest_pending = parse_timestamp(oldest)
    if report.oldest_pending is not None:
        report.oldest_pending_age = age_seconds(
            report.oldest_pending, naive_is_utc=db.dialect.naive_timestamps_are_utc, now=now
        )

    if report.ledger_exists:
        acknowledged, purged, last = table.ledger_totals()
        report.children_acknowledged, report.children_purged = acknowledged, purged
        report.last_acknowledged = _utc(parse_timestamp(last))
        orphans = find_orphans(table)
        report.orphans, report.orphan_examples = len(orphans), examples(orphans)

    report.first_contact = table.first_contact()
    report.children_in_doubt, since = table.in_doubt_totals()
    report.in_doubt_since = _utc(parse_timestamp(since))
    summaries = read_run_summaries(log_dir, runs, now)
    report.runs = [run_row(s) for s in summaries.recent]
    report.future_runs = [run_row(s) for s in summaries.in_future]
    report.future_total = summaries.in_future_total
    report.skipped_summaries = summaries.skipped
    return report
