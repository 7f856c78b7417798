"""The staging table: what a run reads, and the counts ``status`` shows.

:class:`StagingTable` is the one place that knows the staging table's columns and the ledger
beside it (DESIGN §4, §7): which rows a run reads (:meth:`StagingTable.candidate_source`), what
the ledger says DfE holds, the counts ``status`` shows. Its other parts: the tables beside it
(``ledger.SideTables``) and the write-back of a batch's outcomes and ledger entries in one
transaction, with the optimistic check (``write_back.WriteBack``). SQL differences between the
DBMSs are the dialect's (``dialect.Dialect``); the connection is :class:`api_pipeline.store.db.Database`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from api_pipeline import reasons
from api_pipeline.errors import DatabaseError
from api_pipeline.store import catalogue
from api_pipeline.store.columns import REQUIRED_COLUMNS, STAGING_SPEC, ColumnInfo
from api_pipeline.store.db import Database, validate_table_name
from api_pipeline.store.ledger import MAX_PARAMETERS, LedgerEntry, chunks
from api_pipeline.store.odbc import UNDECODABLE, UnreadableText
from api_pipeline.store.tables import (
    ColumnIssue,
    check_columns,
    check_table_name_length,
    in_doubt_name,
    in_flight_name,
    ledger_name,
    staging_ddl,
)
from api_pipeline.store.write_back import WriteBack

log = logging.getLogger(__name__)

PAGE_SIZE = 500
_STATE = "LOWER(COALESCE(t.row_state, ''))"
_STATUS = "LOWER(COALESCE(t.submission_status, ''))"


@dataclass(frozen=True)
class _Joined:
    """The staging table ``t`` joined to the ledger ``l`` and the in-doubt table ``f``, and what
    the joins say of a row's child, as SQL conditions."""

    source: str
    unknown: str  # the ledger has no entry for the child
    not_purged: str  # the ledger has not recorded the child's purge
    in_doubt: str  # the in-doubt table has an entry for the child (or for the row)


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


class StagingTable(WriteBack):
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
        self._current_hash = None
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

    def row_count(self) -> int:
        """How many rows the table has, whatever their status."""
        return int(self.db.scalar(f"SELECT COUNT(*) FROM {self.table}") or 0)

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
        for chunk in chunks(sorted(row_ids), MAX_PARAMETERS):
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
