"""Write-back: a batch's outcomes, ledger entries and doubts written in one transaction, with the optimistic check.

The part of :class:`~api_pipeline.store.staging.StagingTable` that writes (DESIGN §7): a staging
row is updated only while its ``json_payload`` is still the one the run read, so a change the
council's SQL made meanwhile is never overwritten; the row stays pending and is sent next run.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from api_pipeline.errors import DatabaseError
from api_pipeline.store import catalogue
from api_pipeline.store.columns import BINARY, LONG_TEXT, MAX_NOTE_LENGTH
from api_pipeline.store.ledger import MAX_PARAMETERS, Doubt, LedgerEntry, SideTables, chunks
from api_pipeline.wording import printable

log = logging.getLogger(__name__)

# How SQLite and PostgreSQL refuse ON CONFLICT (la_child_id) when that column is not a key.
_NO_CONFLICT_KEY = re.compile(r"ON CONFLICT clause does not match|no unique or exclusion constraint|42P10", re.I)


class _Row(Protocol):
    """A staging row as read (``staging.StagingRow``): what an unsent outcome needs of it."""

    @property
    def id(self) -> int: ...

    @property
    def json_payload(self) -> str | None: ...


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
    def unsent(cls, row: _Row, status: str, note: str) -> RowUpdate:
        """The row stays unsent with ``status`` (``""``: as it is) and ``note`` saying why in api_response,
        on one line with its control characters escaped (it may quote DfE, or the row)."""
        note = printable(note)[:MAX_NOTE_LENGTH]
        return cls(row_id=row.id, status=status, api_response=note, expect_payload=row.json_payload)


class WriteBack(SideTables):
    """Writing a batch's outcomes back to the staging table and the tables beside it (a part of ``StagingTable``)."""

    table: str
    _current_hash: bool | None

    def _has_current_hash(self) -> bool:
        if self._current_hash is None:
            self._current_hash = "current_hash" in (catalogue.column_names(self.db, self.table) or [])
        return self._current_hash

    def _locked_rows(self, row_ids: Sequence[int]) -> dict[int, tuple[Any, str | None]]:
        """``json_payload`` (as :meth:`Dialect.stored_text` reads it: SQL Server, its SHA-256, so no
        payload travels back) and ``row_state`` of these rows, locked until the transaction ends.

        SQLite's ``BEGIN IMMEDIATE`` already holds the write lock; the others lock the rows read.
        """
        found: dict[int, tuple[Any, str | None]] = {}
        d = self.db.dialect
        payload = d.stored_text("json_payload")
        for chunk in chunks(sorted(set(row_ids)), MAX_PARAMETERS):
            marks = ", ".join("?" * len(chunk))
            # In id order, so concurrent writers that also go in id order cannot deadlock with it.
            sql = d.select_for_update(f"id, {payload}, row_state", self.table, f"id IN ({marks}) ORDER BY id")
            for row_id, stored, state in self.db.query(sql, chunk, chunk=len(chunk)):
                found[int(row_id)] = (None if stored is None else d.comparable(stored), state)
        return found

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
            for chunk in chunks(rows, MAX_PARAMETERS // len(casts)):
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
