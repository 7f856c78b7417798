"""The tables the tool keeps beside the staging table: the ledger, the batches in flight, the children in doubt.

The ledger says, per child, what DfE last acknowledged (DESIGN §4); the in-flight table records a
batch before it is sent, and the in-doubt table the children whose copy at DfE is in doubt since
(DESIGN §7). :class:`SideTables` is the part of :class:`~api_pipeline.store.staging.StagingTable`
that makes, checks, reads and writes them; write-back itself, which writes them with the staging
rows in one transaction, is the staging table's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from api_pipeline.errors import DatabaseError
from api_pipeline.store import catalogue
from api_pipeline.store.columns import BINARY, IN_DOUBT_SPEC, IN_FLIGHT_SPEC, LEDGER_SPEC, LONG_TEXT, ColumnInfo, Kinds
from api_pipeline.store.db import Database
from api_pipeline.store.tables import (
    ColumnIssue,
    check_columns,
    in_doubt_ddl,
    in_doubt_index_ddl,
    in_flight_ddl,
    ledger_ddl,
    ledger_index_ddl,
)
from api_pipeline.timestamps import parse_timestamp, utc_now

log = logging.getLogger(__name__)

# Parameters per statement in bulk writes: under SQLite's historical limit of 999.
MAX_PARAMETERS = 900
# The ledger's and the in-doubt table's columns after their key, in the order write-back binds them.
_LEDGER_VALUES = tuple(c.name for c in LEDGER_SPEC[1:])
_IN_DOUBT_VALUES = tuple(c.name for c in IN_DOUBT_SPEC[1:])
_IN_FLIGHT_VALUES = tuple(c.name for c in IN_FLIGHT_SPEC[1:])


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


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


def naive(value: datetime) -> datetime:
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


class SideTables:
    """The ledger, in-flight and in-doubt tables of one staging table (a part of ``StagingTable``)."""

    db: Database
    ledger: str
    in_flight: str
    in_doubt: str
    # The columns of the tables the tool keeps beside the staging table, read once (None: missing).
    _side_columns: dict[str, list[ColumnInfo] | None]
    # False: made by hand with no key to upsert on.
    _keyed: dict[str, bool]

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
            if first is not None and (oldest is None or naive(first) < naive(oldest)):
                oldest = first
        return children, oldest

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
        for chunk in chunks(sorted(set(children)), MAX_PARAMETERS):
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
            for chunk in chunks([row[0] for row in values], MAX_PARAMETERS):
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
            for rows in chunks(values, MAX_PARAMETERS // len(kinds)):
                self.db.execute(
                    insert + ", ".join([marks] * len(rows)) + on_conflict,
                    [value for row in rows for value in row],
                    kinds=tuple(kinds) * len(rows),
                )
