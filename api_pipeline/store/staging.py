"""The staging table and the submission ledger: what a run reads, and how its outcomes are written back.

:class:`StagingTable` is the one place that knows the staging table's columns and the ledger
beside it (DESIGN §4, §7): which rows a run reads (:meth:`StagingTable.candidate_source`), what
the ledger says DfE holds, the counts ``status`` shows, and the write-back of a batch's outcomes
and ledger entries in one transaction, with the optimistic check. SQL differences between the
DBMSs are :mod:`api_pipeline.store.dialect`'; the connection is :class:`api_pipeline.store.db.Database`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from api_pipeline import reasons
from api_pipeline.errors import DatabaseError
from api_pipeline.store import catalogue
from api_pipeline.store.columns import (
    BINARY,
    IN_DOUBT_SPEC,
    IN_FLIGHT_SPEC,
    LEDGER_SPEC,
    LONG_TEXT,
    MAX_NOTE_LENGTH,
    REQUIRED_COLUMNS,
    STAGING_SPEC,
    ColumnInfo,
    Kinds,
)
from api_pipeline.store.db import Database, validate_table_name
from api_pipeline.store.odbc import UNDECODABLE, UnreadableText
from api_pipeline.store.tables import (
    ColumnIssue,
    check_columns,
    check_table_name_length,
    in_doubt_ddl,
    in_doubt_index_ddl,
    in_doubt_name,
    in_flight_ddl,
    in_flight_name,
    ledger_ddl,
    ledger_index_ddl,
    ledger_name,
    staging_ddl,
)
from api_pipeline.timestamps import parse_timestamp, utc_now
from api_pipeline.wording import printable

log = logging.getLogger(__name__)

PAGE_SIZE = 500
# Parameters per statement in bulk writes: under SQLite's historical limit of 999.
MAX_PARAMETERS = 900
# The ledger's and the in-doubt table's columns after their key, in the order write-back binds them.
_LEDGER_VALUES = tuple(c.name for c in LEDGER_SPEC[1:])
_IN_DOUBT_VALUES = tuple(c.name for c in IN_DOUBT_SPEC[1:])
_IN_FLIGHT_VALUES = tuple(c.name for c in IN_FLIGHT_SPEC[1:])
_STATE = "LOWER(COALESCE(t.row_state, ''))"
_STATUS = "LOWER(COALESCE(t.submission_status, ''))"
# How SQLite and PostgreSQL refuse ON CONFLICT (la_child_id) when that column is not a key.
_NO_CONFLICT_KEY = re.compile(r"ON CONFLICT clause does not match|no unique or exclusion constraint|42P10", re.I)


def _chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


@dataclass(frozen=True)
class _Joined:
    """The staging table ``t`` joined to the ledger ``l`` and the in-doubt table ``f``, and what
    the joins say of a row's child, as SQL conditions."""

    source: str
    unknown: str  # the ledger has no entry for the child
    not_purged: str  # the ledger has not recorded the child's purge
    in_doubt: str  # the in-doubt table has an entry for the child (or for the row)


def _naive(value: datetime) -> datetime:
    """Comparable with a naive UTC time, whatever the column's type gave."""
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo is not None else value


def _children_of(batch_id: str, recorded_at: Any, text: Any) -> list[InDoubt] | None:
    """The children an in-flight row records; None when it is not what the tool writes."""
    at = parse_timestamp(recorded_at) or utc_now()
    try:
        found = json.loads(str(text))
        children = [
            InDoubt(
                str(child),
                int(staging_id),
                json.dumps(outline, ensure_ascii=False, separators=(",", ":")),
                batch_id,
                at,
            )
            for child, staging_id, outline in found
            if isinstance(child, str) and isinstance(outline, dict)
        ]
    except (ValueError, TypeError, RecursionError):
        return None
    return children if len(children) == len(found) else None


def _person_id(value: Any) -> str | None:
    """A row's person_id, spaces trimmed; text that is not valid as stored stays as it was read, so
    that it is known for what it is (:class:`~api_pipeline.store.odbc.UnreadableText`)."""
    if value is None or isinstance(value, UnreadableText):
        return value
    return str(value).strip()


@dataclass(frozen=True)
class StagingRow:
    """A candidate row, with what the ledger says DfE holds for that child."""

    id: int
    person_id: str | None
    json_payload: Any  # text, or whatever an odd column type gave (the pipeline checks)
    submission_status: str | None
    row_state: str | None
    ledger_json: str | None
    ledger_purged: bool
    ledger_receipt: str | None
    ledger_acknowledged_at: Any
    # Whether the ledger has an entry for this child at all (a purged child's has no record).
    ledger_found: bool = False
    # What an earlier tool left: the record before the council's latest change (usually what
    # that tool sent), its answer and the time of it. Used only for a child with no ledger entry.
    previous_json_payload: Any = None
    api_response: str | None = None
    submission_timestamp: Any = None
    # The in-doubt table's outline for this child (DESIGN §7): a batch that carried it was sent
    # and never settled, so DfE may hold what it outlines besides the ledger's record. None: not in doubt.
    doubt_outline: str | None = None
    # Columns the database server could not send as text (ODBC: bytes not valid in the database's
    # encoding), read as None.
    unreadable: tuple[str, ...] = ()

    @property
    def in_doubt(self) -> bool:
        return self.doubt_outline is not None

    @property
    def writable(self) -> bool:
        """Whether the write-back can match this row: its check reads json_payload and row_state back."""
        return not {"json_payload", "row_state"} & set(self.unreadable)

    @property
    def is_deleted(self) -> bool:
        return (self.row_state or "").strip().lower() == "deleted"

    @property
    def is_sent(self) -> bool:
        return (self.submission_status or "").strip().lower() == "sent"

    @property
    def held_back(self) -> bool:
        """Marked ``invalid`` by a run: not read again until the council's SQL sets it back to pending."""
        return not self.is_deleted and (self.submission_status or "").strip().lower() == "invalid"

    def with_ledger(self, entry: LedgerEntry | None, doubt_outline: str | None) -> StagingRow:
        """This row with ``entry`` as what DfE holds and ``doubt_outline`` as what it may hold
        besides (for a child the join by person_id could not find)."""
        if entry is None:
            return replace(
                self,
                ledger_json=None,
                ledger_purged=False,
                ledger_receipt=None,
                ledger_acknowledged_at=None,
                ledger_found=False,
                doubt_outline=doubt_outline,
            )
        return replace(
            self,
            ledger_json=entry.record_json,
            ledger_purged=entry.purged,
            ledger_receipt=entry.receipt,
            ledger_acknowledged_at=entry.acknowledged_at,
            ledger_found=True,
            doubt_outline=doubt_outline,
        )


@dataclass(frozen=True)
class LedgerEntry:
    """What DfE acknowledged for one child."""

    la_child_id: str
    mis_child_id: str | None
    staging_id: int
    record_json: str | None
    record_hash: bytes | None
    receipt: str
    acknowledged_at: datetime
    purged: bool


@dataclass(frozen=True)
class InDoubt:
    """One child of a batch in flight, or in doubt: what DfE may hold if the batch landed (DESIGN §7).

    ``outline_json`` is :func:`api_pipeline.dfe.payload.outline` of the request (with what the child's
    earlier doubt outlined, if any): with the ledger's record, every part DfE may then hold,
    which is all a run needs to make DfE equal the table whichever version it has.
    """

    la_child_id: str
    staging_id: int
    outline_json: str
    batch_id: str
    recorded_at: datetime


@dataclass(frozen=True)
class Doubt:
    """What a write-back changes in the in-flight and in-doubt tables (DESIGN §7, batches in doubt).

    Before a batch is sent: ``in_flight``, its children (one row). Once its outcomes are
    written back, or it is known never to have been sent: ``landed``, the batch ids whose
    in-flight rows go; ``in_doubt``, its children DfE may or may not hold it for (no receipt,
    and no refusal either); ``resolved``, children in doubt before whose receipt came back.
    """

    in_flight: list[InDoubt] = field(default_factory=list)
    landed: list[str] = field(default_factory=list)
    in_doubt: list[InDoubt] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class LeftInFlight:
    """A batch an earlier run recorded before sending and never wrote back: its children are in doubt."""

    batch_id: str
    children: list[InDoubt]  # empty when the record could not be read
    readable: bool = True


@dataclass(frozen=True)
class FirstContact:
    """Rows whose child has no ledger entry yet, by what the next run does with them (DESIGN §4)."""

    adopt: int  # an earlier tool sent it and it is unchanged: recorded in the ledger, not sent
    changed_since_sent: int  # marked sent but changed since: sent whole, with purges
    with_purges: int  # waiting, with the earlier tool's last copy: sent whole, with purges for what it lost
    whole: int  # waiting, never sent: sent whole
    purge: int  # deleted: purged

    @property
    def total(self) -> int:
        return self.adopt + self.changed_since_sent + self.with_purges + self.whole + self.purge

    def lines(self) -> list[str]:
        """What the next run will do for these children, in words."""
        if not self.total:
            return []
        parts = [
            (self.adopt, "recorded as already held by DfE (sent by the earlier tool), not sent again"),
            (
                self.changed_since_sent + self.with_purges,
                "sent whole, with purges for what previous_json_payload has and the record now lacks",
            ),
            (self.whole, "sent whole"),
            (self.purge, "purged (deleted children)"),
        ]
        return [f"  {n} {'row' if n == 1 else 'rows'}: {what}" for n, what in parts if n]


@dataclass(frozen=True)
class RowUpdate:
    """The outcome to write to one staging row.

    ``expect_payload`` is the ``json_payload`` text read at the start: the
    update only applies if the council's SQL has not changed it since.
    """

    row_id: int
    status: str
    api_response: str
    expect_payload: str | None
    submission_timestamp: datetime | None = None
    mark_sent: bool = False
    previous_hash: bytes | None = None
    row_state: str | None = None
    purge: bool = False

    @classmethod
    def unsent(cls, row: StagingRow, status: str, note: str) -> RowUpdate:
        """The row stays unsent with ``status`` (``""``: as it is) and ``note`` saying why in api_response,
        on one line with its control characters escaped (it may quote DfE, or the row)."""
        note = printable(note)[:MAX_NOTE_LENGTH]
        return cls(row_id=row.id, status=status, api_response=note, expect_payload=row.json_payload)


class StagingTable:
    """Reads candidates from the staging table and writes outcomes back, with the ledger."""

    def __init__(self, db: Database, table: str, ledger: str | None = None) -> None:
        self.db = db
        self.table = validate_table_name(table)
        check_table_name_length(db.dialect, self.table)
        self.ledger = validate_table_name(ledger or ledger_name(table))
        self.in_flight = validate_table_name(in_flight_name(table))
        self.in_doubt = validate_table_name(in_doubt_name(table))
        # The columns of the tables the tool keeps beside the staging table, read once (None: missing).
        self._side_columns: dict[str, list[ColumnInfo] | None] = {}
        self._current_hash: bool | None = None
        # False: made by hand with no key to upsert on.
        self._keyed = {self.ledger: True, self.in_flight: True, self.in_doubt: True}

    def on(self, db: Database) -> StagingTable:
        """This table on another connection to the same database, with what is known of the tables
        beside it (so none is looked up again)."""
        other = StagingTable(db, self.table, self.ledger)
        other._side_columns = dict(self._side_columns)
        other._keyed = dict(self._keyed)
        return other

    # -- schema -------------------------------------------------------------

    def create_staging_table(self) -> None:
        """The table as councils' DDL makes it (no unique index: existing tables may lack one)."""
        with self.db.transaction():
            self.db.execute(staging_ddl(self.db.dialect, self.table))

    def create_ledger(self) -> None:
        """The ledger and the in-flight and in-doubt tables beside it (each only if missing)."""
        d = self.db.dialect
        with self.db.transaction():
            self.db.execute(ledger_ddl(d, self.ledger))
            self.db.execute(ledger_index_ddl(d, self.ledger))
            self.db.execute(in_flight_ddl(d, self.in_flight))
            self.db.execute(in_doubt_ddl(d, self.in_doubt))
            self.db.execute(in_doubt_index_ddl(d, self.in_doubt))
        self._side_columns.clear()
        for name in (self.ledger, self.in_flight, self.in_doubt):  # as made (or as they already were)
            self._columns_of(name)

    def _has_current_hash(self) -> bool:
        if self._current_hash is None:
            self._current_hash = "current_hash" in (catalogue.column_names(self.db, self.table) or [])
        return self._current_hash

    def _columns_of(self, side_table: str) -> list[ColumnInfo] | None:
        if side_table not in self._side_columns:  # the three are looked up together, in one query
            self._side_columns.update(catalogue.columns_of(self.db, [self.ledger, self.in_flight, self.in_doubt]))
        return self._side_columns[side_table]

    def has_ledger(self) -> bool:
        return self._columns_of(self.ledger) is not None

    def has_in_flight(self) -> bool:
        """Whether the in-flight and in-doubt tables both exist."""
        return all(self._columns_of(name) is not None for name in (self.in_flight, self.in_doubt))

    def ensure_ledger(self) -> None:
        """Create the ledger and the in-flight and in-doubt tables where missing; never alters an existing table."""
        missing = [name for name in (self.ledger, self.in_flight, self.in_doubt) if self._columns_of(name) is None]
        if not missing:
            return
        try:
            self.create_ledger()
        except DatabaseError as exc:
            raise DatabaseError(
                f"the table{'s' if len(missing) > 1 else ''} {' and '.join(missing)} the tool keeps beside the "
                f"staging table could not be created ({exc}). Ask your DBA to create "
                f"{'them' if len(missing) > 1 else 'it'}: csc-api-pipeline init-db --print"
            ) from None
        log.info("created %s", " and ".join(missing))

    def missing_columns(self) -> list[str] | None:
        """Required columns the staging table lacks; None when the table itself is missing."""
        present = catalogue.column_names(self.db, self.table)
        if present is None:
            return None
        return [c for c in REQUIRED_COLUMNS if c not in present]

    def require_columns(self) -> None:
        """Raise the DatabaseError that says so when the staging table, or a column the tool needs, is missing."""
        missing = self.missing_columns()
        if missing is None:
            raise DatabaseError(
                f"the staging table {self.table} was not found. Check TABLE_NAME and DB_CONNECTION_STRING "
                "(run test-schema for details)."
            )
        if missing:
            raise DatabaseError(
                f"the staging table {self.table} lacks required column(s): {', '.join(missing)} "
                "(run test-schema for the fix)"
            )

    def column_issues(self) -> list[ColumnIssue] | None:
        """Missing or unusable staging columns with the DDL to fix each; None when the table is missing."""
        present = catalogue.columns(self.db, self.table)
        return None if present is None else check_columns(self.db.dialect, self.table, STAGING_SPEC, present)

    def ledger_issues(self) -> list[ColumnIssue] | None:
        """The same for the ledger; None when it does not exist yet."""
        present = self._columns_of(self.ledger)
        return None if present is None else check_columns(self.db.dialect, self.ledger, LEDGER_SPEC, present)

    def in_flight_issues(self) -> list[ColumnIssue] | None:
        """The same for the in-flight table; None when it does not exist yet."""
        present = self._columns_of(self.in_flight)
        return None if present is None else check_columns(self.db.dialect, self.in_flight, IN_FLIGHT_SPEC, present)

    def in_doubt_issues(self) -> list[ColumnIssue] | None:
        """The same for the in-doubt table; None when it does not exist yet."""
        present = self._columns_of(self.in_doubt)
        return None if present is None else check_columns(self.db.dialect, self.in_doubt, IN_DOUBT_SPEC, present)

    # -- reading --------------------------------------------------------------

    def duplicate_person_ids(self) -> frozenset[str]:
        """person_id values on more than one row, spaces trimmed and letter case ignored (ids that differ
        only in case are one key to a case-insensitive database): the tool cannot tell which row is the child."""
        trimmed = f"LOWER({self.db.dialect.trim('person_id')})"
        sql = (
            f"SELECT {trimmed} FROM {self.table} WHERE person_id IS NOT NULL AND {trimmed} <> '' "
            f"GROUP BY {trimmed} HAVING COUNT(*) > 1"
        )
        return frozenset(str(row[0]).strip() for row in self.db.query(sql))

    def person_ids(self) -> frozenset[str]:
        """Every row's person_id, spaces trimmed: whose la_child_id each matching row claims."""
        sql = f"SELECT person_id FROM {self.table} WHERE person_id IS NOT NULL"
        return frozenset(text for row in self.db.query(sql, chunk=2000) if (text := str(row[0]).strip()))

    def rows_without_person_id(self) -> Iterator[tuple[int, Any]]:
        """``(id, json_payload)`` of rows whose person_id is NULL or blank: only their record says who they are.

        A payload the server cannot send as text (:data:`~api_pipeline.store.odbc.UNDECODABLE`) is left
        out: its row is reported when it is read as a candidate.
        """
        rest = f"FROM {self.table} WHERE (person_id IS NULL OR {self.db.dialect.trim('person_id')} = '') AND id > ?"
        last = 0
        try:
            for row_id, payload in self.db.query(f"SELECT id, json_payload {rest} ORDER BY id", (last,)):
                last = int(row_id)
                yield last, payload
        except DatabaseError as exc:
            if exc.kind != UNDECODABLE:
                raise
            for (row_id,) in self.db.fetch_all(f"SELECT id {rest} ORDER BY id", (last,)):
                try:
                    yield int(row_id), self.payload_of(int(row_id))
                except DatabaseError as one:
                    if one.kind != UNDECODABLE:
                        raise

    def payload_of(self, row_id: int) -> Any:
        """One row's json_payload (None when the row is gone)."""
        return self.db.scalar(f"SELECT json_payload FROM {self.table} WHERE id = ?", (row_id,))

    def candidate_source(self, *, all_rows: bool = False, held_back: bool = False) -> tuple[str, str]:
        """``(FROM source, WHERE condition)`` for the rows a run reads; the one definition of them.

        Candidates: every row not yet ``sent``/``invalid`` (any case); deleted children whose
        purge DfE has not acknowledged; and rows an earlier tool marked ``sent`` whose child
        has no ledger entry yet (switch-over: adopted into the ledger, DESIGN §4); and children
        in doubt (DESIGN §7), whatever their status says, unless their record is ``invalid``.
        ``held_back`` (``validate``): rows marked ``invalid`` too, which a run leaves until the
        council's SQL sets them back to pending.
        The ledger is joined as ``l`` and the in-doubt table as ``f`` on the trimmed person_id
        (their columns are NULL when they do not exist yet: read-only runs do not create them).
        A row whose person_id is not its record's la_child_id is found in both by its staging
        id instead.
        """
        j = self._joined()
        if all_rows:
            return j.source, "1 = 1"
        settled = "'sent'" if held_back else "'sent', 'invalid'"
        wanted = (
            f"({_STATE} <> 'deleted' AND {_STATUS} NOT IN ({settled})) "
            f"OR ({_STATE} = 'deleted' AND {j.not_purged}) "
            f"OR ({_STATE} <> 'deleted' AND {_STATUS} = 'sent' AND {j.unknown}) "
            f"OR ({j.in_doubt} AND ({_STATE} = 'deleted' OR {_STATUS} <> 'invalid'))"
        )
        return j.source, wanted

    def candidates_from_where(self, *, all_rows: bool = False, held_back: bool = False) -> str:
        """``FROM … WHERE …`` selecting the rows a run would read (no parameters)."""
        source, wanted = self.candidate_source(all_rows=all_rows, held_back=held_back)
        return f"FROM {source} WHERE {wanted}"

    def count_candidates(self, *, all_rows: bool = False, held_back: bool = False, limit: int | None = None) -> int:
        """How many rows the next run (or ``validate``) will read: one cheap COUNT, for the progress bar."""
        where = self.candidates_from_where(all_rows=all_rows, held_back=held_back)
        found = int(self.db.scalar(f"SELECT COUNT(*) {where}") or 0)
        return found if limit is None else min(found, limit)

    def count_candidates_after(self, row_id: int, *, all_rows: bool = False, held_back: bool = False) -> int:
        """How many of the rows a run reads come after ``row_id``: what a run that stopped early did not reach."""
        source, wanted = self.candidate_source(all_rows=all_rows, held_back=held_back)
        return int(self.db.scalar(f"SELECT COUNT(*) FROM {source} WHERE t.id > ? AND ({wanted})", (row_id,)) or 0)

    # -- what status shows ---------------------------------------------------------

    def counts_by_status_and_state(self) -> list[tuple[Any, Any, int]]:
        """``(submission_status, row_state, rows)``, compared case-insensitively, spelt as the table has them."""
        sql = (
            "SELECT MIN(submission_status), MIN(row_state), COUNT(*) FROM "
            f"{self.table} GROUP BY LOWER(COALESCE(submission_status, '')), LOWER(COALESCE(row_state, ''))"
        )
        return [(status, state, int(rows)) for status, state, rows in self.db.query(sql)]

    def problem_rows(self) -> Iterator[tuple[int, Any, Any]]:
        """``(id, submission_status, api_response)`` of invalid and error rows, and of rows whose last
        attempt was not sent, in id order (streamed)."""
        sql = (
            f"SELECT id, submission_status, api_response FROM {self.table} "
            "WHERE LOWER(COALESCE(submission_status, '')) IN ('invalid', 'error') "
            "OR api_response LIKE ? OR api_response LIKE ? ORDER BY id"
        )
        not_sent = (reasons.WILL_RETRY + "%", reasons.SKIPPED + "%")  # the pipeline's own notes
        for row_id, status, response in self.db.query(sql, not_sent):
            yield int(row_id), status, response

    def pending(self, *, oldest: bool = True) -> tuple[int, Any]:
        """How many rows the next run would read, and (with ``oldest``, which needs a last_updated
        column) the oldest last_updated among them as the driver gives it."""
        if not oldest:
            return self.count_candidates(), None
        for rows, first in self.db.query(f"SELECT COUNT(*), MIN(t.last_updated) {self.candidates_from_where()}"):
            return int(rows or 0), first
        return 0, None

    def waiting(self) -> tuple[int, int]:
        """Of the rows the next run would read (:meth:`pending`): how many are deleted children whose
        purge it sends, and how many it records as already held by DfE without sending them (an
        earlier tool sent them and they are unchanged since, DESIGN §4). The rest are records to send."""
        source, wanted = self.candidate_source()
        j = self._joined()
        same = self.db.dialect.same_columns("t.previous_json_payload", "t.json_payload")
        adopt = (
            f"{_STATE} <> 'deleted' AND {_STATUS} = 'sent' AND {j.unknown} AND NOT {j.in_doubt} "
            f"AND (t.previous_json_payload IS NULL OR {same})"
        )
        sql = (
            f"SELECT SUM(CASE WHEN {_STATE} = 'deleted' THEN 1 ELSE 0 END), "
            f"SUM(CASE WHEN {adopt} THEN 1 ELSE 0 END) FROM {source} WHERE {wanted}"
        )
        for deletions, adopt_rows in self.db.query(sql):
            return int(deletions or 0), int(adopt_rows or 0)
        return 0, 0

    def ledger_totals(self) -> tuple[int, int, Any]:
        """Children acknowledged, children purged and the latest acknowledgement, from the ledger."""
        sql = (
            "SELECT SUM(CASE WHEN purged = 0 THEN 1 ELSE 0 END), SUM(CASE WHEN purged = 0 THEN 0 ELSE 1 END), "
            f"MAX(acknowledged_at) FROM {self.ledger}"
        )
        for acknowledged, purged, last in self.db.query(sql):
            return int(acknowledged or 0), int(purged or 0), last
        return 0, 0, None

    def _joined(self) -> _Joined:
        """The staging table ``t`` joined to the ledger ``l`` and the in-doubt table ``f``."""
        person = self.db.dialect.exact(self.db.dialect.trim("t.person_id"))
        if self.has_ledger():
            source = f"{self.table} t LEFT JOIN {self.ledger} l ON l.la_child_id = {person}"
            by_row = f"SELECT 1 FROM {self.ledger} r WHERE r.staging_id = t.id"
            unknown = f"l.la_child_id IS NULL AND NOT EXISTS ({by_row})"
            not_purged = f"(l.purged IS NULL OR l.purged = 0) AND NOT EXISTS ({by_row} AND r.purged = 1)"
        else:
            source = (
                f"{self.table} t LEFT JOIN (SELECT NULL AS la_child_id, NULL AS record_json, "
                "CAST(NULL AS INTEGER) AS purged, NULL AS receipt, NULL AS acknowledged_at) l ON 1 = 0"
            )
            unknown = not_purged = "1 = 1"
        if self.has_in_flight():
            source += f" LEFT JOIN {self.in_doubt} f ON f.la_child_id = {person}"
            in_doubt = (
                f"(f.la_child_id IS NOT NULL OR EXISTS (SELECT 1 FROM {self.in_doubt} g WHERE g.staging_id = t.id))"
            )
        else:
            source += " LEFT JOIN (SELECT NULL AS la_child_id, NULL AS outline_json) f ON 1 = 0"
            in_doubt = "1 = 0"
        return _Joined(source, unknown, not_purged, in_doubt)

    def first_contact(self) -> FirstContact:
        """Children the ledger has no entry for yet (switch-over), by what the next run will do
        (children in doubt aside: they are sent whole, with purges, whatever else holds)."""
        j = self._joined()
        source, unknown = j.source, f"{j.unknown} AND NOT {j.in_doubt}"
        same = self.db.dialect.same_columns("t.previous_json_payload", "t.json_payload")
        live = f"{_STATE} <> 'deleted'"
        cases = (
            f"{live} AND {_STATUS} = 'sent' AND (t.previous_json_payload IS NULL OR {same})",
            f"{live} AND {_STATUS} = 'sent' AND t.previous_json_payload IS NOT NULL AND NOT ({same})",
            f"{live} AND {_STATUS} NOT IN ('sent', 'invalid') AND t.previous_json_payload IS NOT NULL",
            f"{live} AND {_STATUS} NOT IN ('sent', 'invalid') AND t.previous_json_payload IS NULL",
            f"{_STATE} = 'deleted'",
        )
        sums = ", ".join(f"SUM(CASE WHEN {case} THEN 1 ELSE 0 END)" for case in cases)
        for row in self.db.query(f"SELECT {sums} FROM {source} WHERE {unknown}"):
            return FirstContact(*(int(n or 0) for n in row))
        return FirstContact(0, 0, 0, 0, 0)

    _CANDIDATE_COLUMNS = (
        "t.id, t.person_id, t.json_payload, t.submission_status, t.row_state, "
        "l.record_json, l.purged, l.receipt, l.acknowledged_at, l.la_child_id, "
        "t.previous_json_payload, t.api_response, t.submission_timestamp, f.outline_json"
    )

    @staticmethod
    def _candidate(row: Sequence[Any]) -> StagingRow:
        return StagingRow(
            id=int(row[0]),
            person_id=_person_id(row[1]),
            json_payload=row[2],
            submission_status=row[3],
            row_state=row[4],
            ledger_json=row[5],
            ledger_purged=bool(row[6]),
            ledger_receipt=row[7],
            ledger_acknowledged_at=row[8],
            ledger_found=row[9] is not None,
            previous_json_payload=row[10],
            api_response=row[11],
            submission_timestamp=row[12],
            doubt_outline=None if row[13] is None else str(row[13]),
        )

    def iter_candidates(
        self, *, page_size: int = PAGE_SIZE, limit: int | None = None, all_rows: bool = False, held_back: bool = False
    ) -> Iterator[StagingRow]:
        """Rows that may need sending (:meth:`candidate_source`), in id order, one page at a time.

        Keyset pagination (``id > last``) keeps memory flat, lets the writes of
        earlier batches commit between pages, and never re-reads a row.
        """
        source, wanted = self.candidate_source(all_rows=all_rows, held_back=held_back)
        rest = f"FROM {source} WHERE t.id > ? AND ({wanted}) ORDER BY t.id"
        sql = self.db.dialect.select_top(self._CANDIDATE_COLUMNS, rest)
        ids = self.db.dialect.select_top("t.id", rest)
        last_id, produced = 0, 0
        reader = self.db.reader
        while limit is None or produced < limit:
            size = page_size if limit is None else min(page_size, limit - produced)
            params = (size, last_id) if self.db.dialect.limit_first() else (last_id, size)
            with reader.lock:  # the whole page: on a shared connection, no write-back interleaves
                page, read = self._page(reader, sql, ids, params)
            for row in page:
                produced += 1
                yield row
            if len(read) < size:
                return
            last_id = read[-1]

    def rows_by_id(self, row_ids: Sequence[int]) -> Iterator[StagingRow]:
        """These rows, as :meth:`iter_candidates` gives them, in id order (the pipeline's second look)."""
        source, _ = self.candidate_source(all_rows=True)
        for chunk in _chunks(sorted(row_ids), MAX_PARAMETERS):
            marks = ", ".join("?" * len(chunk))
            rest = f"FROM {source} WHERE t.id IN ({marks}) ORDER BY t.id"
            sql = f"SELECT {self._CANDIDATE_COLUMNS} {rest}"
            with self.db.reader.lock:
                page, _ = self._page(self.db.reader, sql, f"SELECT t.id {rest}", chunk)
            yield from page

    def _page(
        self, reader: Database, sql: str, ids_sql: str, params: Sequence[Any]
    ) -> tuple[list[StagingRow], list[int]]:
        """The rows ``sql`` selects, and the ids it found (a row deleted since may be missing from the rows).

        When the server cannot send a text value of one of them as text (ODBC: bytes not valid in
        the database's encoding, :data:`~api_pipeline.store.odbc.UNDECODABLE`), the whole read fails
        and says nothing of which row: then the rows are read one at a time (``ids_sql`` selects
        their ids with the same parameters), so only that row is set aside (:meth:`_row_alone`).
        """
        try:
            page = [self._candidate(row) for row in reader.fetch_all(sql, params)]
            return page, [row.id for row in page]
        except DatabaseError as exc:
            if exc.kind != UNDECODABLE:
                raise
        row_ids = [int(found[0]) for found in reader.fetch_all(ids_sql, params)]
        log.debug("reading %d rows one at a time: one of them holds text the server cannot send", len(row_ids))
        alone = [self._row_alone(reader, row_id) for row_id in row_ids]
        return [row for row in alone if row is not None], row_ids

    def _row_alone(self, reader: Database, row_id: int) -> StagingRow | None:
        """One candidate row by its id (None when it is gone); a column the server cannot send as text is
        read as None and named in :attr:`StagingRow.unreadable`, so its row is reported, not the run stopped."""
        source, _ = self.candidate_source(all_rows=True)
        where = f"FROM {source} WHERE t.id = ?"
        try:
            found = reader.fetch_all(f"SELECT {self._CANDIDATE_COLUMNS} {where}", (row_id,))
            return self._candidate(found[0]) if found else None
        except DatabaseError as exc:
            if exc.kind != UNDECODABLE:
                raise
        values: list[Any] = []
        unreadable: list[str] = []
        for column in self._CANDIDATE_COLUMNS.split(", "):
            try:
                found = reader.fetch_all(f"SELECT {column} {where}", (row_id,))
            except DatabaseError as exc:
                if exc.kind != UNDECODABLE:
                    raise
                unreadable.append(column.split(".", 1)[1])
                values.append(None)
                continue
            if not found:
                return None
            values.append(found[0][0])
        return replace(self._candidate(values), unreadable=tuple(unreadable))

    def ledger_entry(self, la_child_id: str) -> LedgerEntry | None:
        """The ledger's entry for one child, or None (always None before the ledger exists)."""
        if not self.has_ledger():
            return None
        sql = (
            "SELECT la_child_id, mis_child_id, staging_id, record_json, record_hash, receipt, "
            f"acknowledged_at, purged FROM {self.ledger} WHERE la_child_id = ?"
        )
        for row in self.db.query(sql, (la_child_id,)):
            return LedgerEntry(
                la_child_id=row[0],
                mis_child_id=row[1],
                staging_id=row[2],
                record_json=row[3],
                record_hash=None if row[4] is None else bytes(row[4]),
                receipt=row[5],
                acknowledged_at=row[6],
                purged=bool(row[7]),
            )
        return None

    def doubt_outline(self, la_child_id: str) -> str | None:
        """The in-doubt table's outline for one child: not None means the child is in doubt."""
        if not self.has_in_flight():
            return None
        found = self.db.scalar(f"SELECT outline_json FROM {self.in_doubt} WHERE la_child_id = ?", (la_child_id,))
        return None if found is None else str(found)

    def left_in_flight(self) -> list[LeftInFlight]:
        """Batches recorded before they were sent and never written back (by a run that stopped), oldest first."""
        if not self.has_in_flight():
            return []
        sql = f"SELECT batch_id, recorded_at, children_json FROM {self.in_flight} ORDER BY recorded_at, batch_id"
        found = []
        for batch_id, recorded_at, text in self.db.query(sql):
            children = _children_of(str(batch_id), recorded_at, text)
            found.append(LeftInFlight(str(batch_id), children or [], readable=children is not None))
        return found

    def in_doubt_totals(self) -> tuple[int, datetime | None]:
        """Children in doubt (with those of batches an earlier run left in flight: at most, as a child may
        be in both), and when the oldest of their batches was recorded (``status``)."""
        if not self.has_in_flight():
            return 0, None
        children, oldest = 0, None
        for count, first in self.db.query(f"SELECT COUNT(*), MIN(recorded_at) FROM {self.in_doubt}"):
            children, oldest = int(count or 0), parse_timestamp(first)
        for batch in self.left_in_flight():
            children += len(batch.children)
            first = batch.children[0].recorded_at if batch.children else None
            if first is not None and (oldest is None or _naive(first) < _naive(oldest)):
                oldest = first
        return children, oldest

    # -- writing --------------------------------------------------------------

    def _locked_rows(self, row_ids: Sequence[int]) -> dict[int, tuple[Any, str | None]]:
        """``json_payload`` (as :meth:`Dialect.stored_text` reads it: SQL Server, its SHA-256, so no
        payload travels back) and ``row_state`` of these rows, locked until the transaction ends.

        SQLite's ``BEGIN IMMEDIATE`` already holds the write lock; the others lock the rows read.
        """
        found: dict[int, tuple[Any, str | None]] = {}
        d = self.db.dialect
        payload = d.stored_text("json_payload")
        for chunk in _chunks(sorted(set(row_ids)), MAX_PARAMETERS):
            marks = ", ".join("?" * len(chunk))
            # In id order, so concurrent writers that also go in id order cannot deadlock with it.
            sql = d.select_for_update(f"id, {payload}, row_state", self.table, f"id IN ({marks}) ORDER BY id")
            for row_id, stored, state in self.db.query(sql, chunk, chunk=len(chunk)):
                found[int(row_id)] = (None if stored is None else d.comparable(stored), state)
        return found

    def _write_ledger(self, ledger: Sequence[LedgerEntry]) -> None:
        """Replace these children's ledger entries (inside the caller's transaction)."""
        d = self.db.dialect
        values = [
            (
                e.la_child_id,
                e.mis_child_id,
                e.staging_id,
                e.record_json,
                e.record_hash,
                e.receipt,
                d.timestamp_param(e.acknowledged_at),
                1 if e.purged else 0,
            )
            for e in ledger
        ]
        self._upsert(self.ledger, _LEDGER_VALUES, values, (None, None, None, LONG_TEXT, BINARY, None, None, None))

    def _write_in_flight(self, batch: Sequence[InDoubt]) -> None:
        """Record one batch before it is sent: one row, whatever its size (inside the caller's transaction)."""
        first = batch[0]
        assert all(child.batch_id == first.batch_id for child in batch), "one batch's children"
        # [[la_child_id, staging_id, outline], ...]: each outline is JSON already.
        children = ",".join(
            f"[{json.dumps(c.la_child_id, ensure_ascii=False)},{int(c.staging_id)},{c.outline_json}]" for c in batch
        )
        row = (first.batch_id, self.db.dialect.timestamp_param(first.recorded_at), f"[{children}]")
        # Upserted: a write-back redone (its COMMIT's answer lost) must leave the same row.
        self._upsert(self.in_flight, _IN_FLIGHT_VALUES, [row], (None, None, LONG_TEXT), key="batch_id")

    def _write_in_doubt(self, children: Sequence[InDoubt]) -> None:
        """These children are in doubt, with these outlines (inside the caller's transaction)."""
        d = self.db.dialect
        values = [
            (c.la_child_id, c.staging_id, c.outline_json, c.batch_id, d.timestamp_param(c.recorded_at))
            for c in children
        ]
        self._upsert(self.in_doubt, _IN_DOUBT_VALUES, values, (None, None, LONG_TEXT, None, None))

    def _resolve(self, children: Sequence[str]) -> None:
        """These children are no longer in doubt: the ledger says what DfE holds (inside the caller's transaction)."""
        for chunk in _chunks(sorted(set(children)), MAX_PARAMETERS):
            marks = ", ".join("?" * len(chunk))
            self.db.execute(f"DELETE FROM {self.in_doubt} WHERE la_child_id IN ({marks})", chunk)

    def _upsert(
        self, table: str, columns: Sequence[str], values: list[tuple[Any, ...]], kinds: Kinds, key: str = "la_child_id"
    ) -> None:
        """Insert these rows into ``table`` (keyed on ``key``, the first value of each row), replacing
        any with the same key (inside the caller's transaction).

        SQLite and PostgreSQL update each row in place (``ON CONFLICT ... DO UPDATE``), which
        leaves the key's index alone and dirties half the pages a delete and insert would;
        SQL Server, and a table whose key is not declared one, delete and insert.
        """
        upsert = self._keyed[table] and self.db.dialect.upserts
        if not upsert:
            for chunk in _chunks([row[0] for row in values], MAX_PARAMETERS):
                marks = ", ".join("?" * len(chunk))
                self.db.execute(f"DELETE FROM {table} WHERE {key} IN ({marks})", chunk)
        insert = f"INSERT INTO {table} ({key}, {', '.join(columns)}) VALUES "
        marks = "(" + ", ".join("?" * len(kinds)) + ")"
        on_conflict = ""
        if upsert:
            updates = ", ".join(f"{c} = excluded.{c}" for c in columns)
            on_conflict = f" ON CONFLICT ({key}) DO UPDATE SET {updates}"
        if self.db.fast_executemany:  # one parameter array: as fast as it gets
            self.db.executemany(insert + marks + on_conflict, values, kinds=kinds)
        else:  # a multi-row VALUES: one round trip where executemany makes one per row
            for rows in _chunks(values, MAX_PARAMETERS // len(kinds)):
                self.db.execute(
                    insert + ", ".join([marks] * len(rows)) + on_conflict,
                    [value for row in rows for value in row],
                    kinds=tuple(kinds) * len(rows),
                )

    def write_back(
        self,
        updates: Sequence[RowUpdate],
        ledger: Sequence[LedgerEntry],
        *,
        doubt: Doubt | None = None,
    ) -> int:
        """Write row updates, ledger entries and what ``doubt`` says in one transaction.

        Returns how many row updates were skipped because the council's SQL changed the row
        since it was read (those rows stay pending). A transaction the database rolled back as a
        deadlock victim, or one that waited too long for the staging SQL's locks, is written
        again from the start (Database.retry_conflicts).
        """
        doubt = doubt or Doubt()
        return self.db.retry_conflicts(lambda: self._write_back_once(updates, ledger, doubt), "writing back a batch")

    def _write_back_once(self, updates: Sequence[RowUpdate], ledger: Sequence[LedgerEntry], doubt: Doubt) -> int:
        while True:
            try:
                return self._write_back(updates, ledger, doubt)
            except DatabaseError as exc:
                # A table made by hand without its primary key: nothing was written (the
                # transaction rolled back); delete and insert from now on.
                written = ((self.ledger, ledger), (self.in_flight, doubt.in_flight), (self.in_doubt, doubt.in_doubt))
                keyless = [t for t, rows in written if rows]
                keyless = [t for t in keyless if self._keyed[t]]
                if not (keyless and _NO_CONFLICT_KEY.search(str(exc))):
                    raise
                for table in keyless:
                    self._keyed[table] = False
                log.warning(
                    "the table %s has no primary key on la_child_id; writing it the slower way. "
                    "csc-api-pipeline init-db --print shows the DDL it should have",
                    " or ".join(keyless),
                )

    def _write_back(self, updates: Sequence[RowUpdate], ledger: Sequence[LedgerEntry], doubt: Doubt) -> int:
        d = self.db.dialect
        t = self.table
        # previous_hash takes current_hash, as the earlier tools and the council's SQL do;
        # a table without current_hash gets the hash of the record sent.
        copy_hash = self._has_current_hash()
        # Each statement in two forms: for rows re-read under the transaction's lock and found
        # as they were (the lock keeps them so: no check needed), and with the optimistic check
        # for any other row, so the database's own comparison decides.
        same_payload = f" AND {d.same_stored_text('json_payload')}"
        # kind -> (the columns set from parameters, as (column, PostgreSQL type), in parameter
        # order before the row id; what else is set; the optimistic check).
        shapes: dict[str, tuple[tuple[tuple[str, str], ...], str, str]] = {
            "sent": (
                (
                    ("submission_status", "TEXT"),
                    ("api_response", "TEXT"),
                    ("submission_timestamp", "TIMESTAMP"),
                    *(() if copy_hash else (("previous_hash", "BYTEA"),)),
                    ("row_state", "TEXT"),
                ),
                "previous_json_payload = json_payload, partial_json_payload = NULL"
                + (", previous_hash = current_hash" if copy_hash else ""),
                same_payload,
            ),
            "purge": (
                (("submission_status", "TEXT"), ("api_response", "TEXT"), ("submission_timestamp", "TIMESTAMP")),
                "",
                " AND LOWER(row_state) = 'deleted'",
            ),
            "outcome": ((("submission_status", "TEXT"), ("api_response", "TEXT")), "", same_payload),
            "note": ((("api_response", "TEXT"),), "", same_payload),
        }
        kinds_of = {"TEXT": None, "TIMESTAMP": None, "BYTEA": BINARY}
        statements: dict[str, tuple[str, tuple[Any, ...], str]] = {}
        for kind, (columns, also, check) in shapes.items():
            assignments = ", ".join([*(f"{column} = ?" for column, _ in columns), *([also] if also else [])])
            param_kinds = tuple(LONG_TEXT if c == "api_response" else kinds_of[pg] for c, pg in columns) + (None,)
            statements[kind] = (f"UPDATE {t} SET {assignments} WHERE id = ?", param_kinds, check)

        def set_based(kind: str, rows: list[tuple[Any, ...]]) -> None:
            """PostgreSQL: many rows' updates in one statement, one round trip (psqlODBC's
            executemany makes one per row). Every parameter is cast: psqlODBC sends them untyped."""
            columns, also, _ = shapes[kind]
            names = [column for column, _ in columns]
            casts = [f"CAST(? AS {pg})" for _, pg in columns] + ["CAST(? AS INTEGER)"]
            row_marks = "(" + ", ".join(casts) + ")"
            assignments = ", ".join([*(f"{n} = v.{n}" for n in names), *([also] if also else [])])
            for chunk in _chunks(rows, MAX_PARAMETERS // len(casts)):
                self.db.execute(
                    f"UPDATE {t} SET {assignments} FROM (VALUES {', '.join([row_marks] * len(chunk))}) "
                    f"AS v({', '.join([*names, 'row_id'])}) WHERE {t}.id = v.row_id",
                    [value for row in chunk for value in row],
                )

        def plan(u: RowUpdate) -> tuple[str, tuple[Any, ...]]:
            if u.purge:
                return "purge", (u.status, u.api_response, d.timestamp_param(u.submission_timestamp), u.row_id)
            if u.mark_sent:
                hashed = () if copy_hash else (u.previous_hash,)
                params = (u.status, u.api_response, d.timestamp_param(u.submission_timestamp), *hashed, u.row_state)
                return "sent", (*params, u.row_id)
            if u.status:
                return "outcome", (u.status, u.api_response, u.row_id)
            return "note", (u.api_response, u.row_id)

        skipped = 0
        with self.db.transaction():
            if ledger:
                self._write_ledger(ledger)
            if doubt.resolved:
                self._resolve(doubt.resolved)
            if doubt.in_doubt:
                self._write_in_doubt(doubt.in_doubt)
            if doubt.in_flight:
                self._write_in_flight(doubt.in_flight)
            for batch_id in doubt.landed:  # after the records: a batch recorded and landed at once leaves none
                self.db.execute(f"DELETE FROM {self.in_flight} WHERE batch_id = ?", (batch_id,))
            # The optimistic check, in bulk: the batch's rows are read once under a write lock;
            # those still as they were read are updated together (executemany); any other
            # row is updated on its own so the database's own comparison decides and is counted.
            current = self._locked_rows([u.row_id for u in updates])
            together: dict[str, list[tuple[Any, ...]]] = {}
            for u in updates:
                kind, params = plan(u)
                payload, state = current.get(u.row_id, (None, None))
                # The text read, as stored_text reads it (SQL Server: its hash; the text of a row
                # that was not valid as stored is never bound back, only the hash of its bytes).
                expected = None if u.purge else d.expected_text(u.expect_payload)
                if u.row_id in current and ((state or "").lower() == "deleted" if u.purge else payload == expected):
                    together.setdefault(kind, []).append(params)
                    continue
                sql, kinds, check = statements[kind]
                if u.purge:
                    checked = self.db.execute(sql + check, params, kinds=kinds)
                else:
                    checked = self.db.execute(sql + check, (*params, expected), kinds=(*kinds, d.expected_kind))
                if checked == 0:
                    skipped += 1
            for kind, rows in together.items():
                if d.set_based_updates and len(rows) > 1:
                    set_based(kind, rows)
                    continue
                sql, kinds, _ = statements[kind]
                self.db.executemany(sql, rows, kinds=kinds)
        return skipped
