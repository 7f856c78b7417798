"""Children the table lost: the ledger says DfE holds them (or may), and no row's person_id names them.

A child is an *orphan* when the ledger says DfE holds it (not purged), or it is in doubt (a batch
that carried it was never settled), and no row of the staging table produces it any more: its
row was deleted outright rather than marked deleted, or re-keyed (its person_id changed). The
queries here find the *candidates*: children no row's person_id names, compared exactly as the
ledger's own joins compare (:meth:`~api_pipeline.store.dialect.Dialect.exact`). A row whose
person_id is empty or some other id may still produce one through its record; reading records
is the run's business (``job.orphans``), which rules those out.

Read-only: ``status`` runs these too, and never creates a table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from api_pipeline.errors import DatabaseError
from api_pipeline.store.ledger import MAX_PARAMETERS, chunks
from api_pipeline.store.odbc import UNDECODABLE
from api_pipeline.store.staging import StagingTable

# The staging id the tables beside the staging table record for a child with no row: an orphan's
# purge, in flight, in doubt or acknowledged. Row ids start at 1, so it matches no row, and the
# joins by staging id (a row whose person_id is not its child's id) never take it for one.
NO_ROW = 0


@dataclass(frozen=True)
class OrphanCandidate:
    """A child DfE holds, or may hold, that no row's person_id names."""

    la_child_id: str
    mis_child_id: str | None
    staging_id: int | None  # the row that last sent it (the ledger's), or that was in doubt for it
    # The in-doubt table's outline, when a batch that carried it was never settled; None otherwise.
    doubt_outline: str | None


def orphan_candidates(table: StagingTable) -> list[OrphanCandidate]:
    """Children the ledger says DfE holds, or that are in doubt, whose id no row's person_id is, by id.

    Nothing before the ledger exists. Two queries rather than a UNION: the in-doubt table is
    asked only when it exists, and no NULL column needs a type in every dialect.
    """
    if not table.has_ledger():
        return []
    d = table.db.dialect
    nobody = f"NOT EXISTS (SELECT 1 FROM {table.table} t WHERE {d.exact(d.trim('t.person_id'))} = {{child}})"
    in_doubt = table.has_in_flight()
    if in_doubt:
        source = f"{table.ledger} l LEFT JOIN {table.in_doubt} f ON f.la_child_id = l.la_child_id"
        columns, held = "f.outline_json", "(l.purged = 0 OR f.la_child_id IS NOT NULL)"
    else:
        source, columns, held = f"{table.ledger} l", "NULL", "l.purged = 0"
    sql = (
        f"SELECT l.la_child_id, l.mis_child_id, l.staging_id, {columns} FROM {source} "
        f"WHERE {held} AND {nobody.format(child='l.la_child_id')} ORDER BY l.la_child_id"
    )
    found = [_candidate(row) for row in table.db.query(sql)]
    if in_doubt:  # in doubt with no ledger entry: a first send whose answer was lost
        sql = (
            f"SELECT f.la_child_id, NULL, f.staging_id, f.outline_json FROM {table.in_doubt} f "
            f"WHERE NOT EXISTS (SELECT 1 FROM {table.ledger} l WHERE l.la_child_id = f.la_child_id) "
            f"AND {nobody.format(child='f.la_child_id')} ORDER BY f.la_child_id"
        )
        found += [_candidate(row) for row in table.db.query(sql)]
        found.sort(key=lambda c: c.la_child_id)
    return found


def _candidate(row: tuple[Any, ...]) -> OrphanCandidate:
    child, mis, staging_id, outline = row
    return OrphanCandidate(
        la_child_id=str(child),
        mis_child_id=None if mis is None or not str(mis) else str(mis),
        staging_id=None if staging_id is None else int(staging_id),
        doubt_outline=None if outline is None else str(outline),
    )


def payloads_by_id(table: StagingTable, row_ids: Iterable[int]) -> dict[int, Any]:
    """``json_payload`` of these rows, by id (rows gone are missing), a chunk of ids per query.

    A payload the server cannot send as text (:data:`~api_pipeline.store.odbc.UNDECODABLE`) is
    None: the row is there, and what it holds cannot be told.
    """
    found: dict[int, Any] = {}
    for chunk in chunks(sorted({i for i in row_ids if i != NO_ROW}), MAX_PARAMETERS):
        marks = ", ".join("?" * len(chunk))
        sql = f"SELECT id, json_payload FROM {table.table} WHERE id IN ({marks})"
        try:
            found.update((int(row_id), payload) for row_id, payload in table.db.fetch_all(sql, chunk))
        except DatabaseError as exc:
            if exc.kind != UNDECODABLE:
                raise
            for row_id in chunk:
                try:
                    payload = table.payload_of(row_id)
                except DatabaseError as one:
                    if one.kind != UNDECODABLE:
                        raise
                    found[row_id] = None
                    continue
                if payload is not None:
                    found[row_id] = payload
    return found
