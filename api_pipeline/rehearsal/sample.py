"""Rehearsal data: synthetic children put into a council's own staging table (``init-db --sample``).

The rows look exactly as the council's staging SQL writes a new child, so a rehearsal
exercises the tool as the real table will: see ``docs/rehearsal.md``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

from api_pipeline.store.catalogue import column_names
from api_pipeline.store.columns import BINARY, LONG_TEXT
from api_pipeline.store.db import Database
from api_pipeline.timestamps import utc_now


def load_sample_children(db: Database, table: str, records: Iterable[dict], *, chunk: int = 500) -> int:
    """Insert records exactly as a council's staging SQL adds new children, for a rehearsal.

    ``submission_status`` ``Pending``, ``row_state`` ``New``, ``previous_json_payload`` and
    ``previous_hash`` NULL, ``current_hash`` as SQL Server's ``HASHBYTES('SHA2_256', json_payload)``
    computes it (SHA-256 of the NVARCHAR text, that is of its UTF-16LE bytes), ``legacy_id``
    the record's ``mis_child_id`` and ``last_updated`` now. Optional columns the table lacks
    are left out.
    """
    present = set(column_names(db, table) or ())
    optional = [c for c in ("legacy_id", "current_hash", "last_updated") if c in present]
    columns = ["person_id", "json_payload", "submission_status", "row_state", *optional]
    kinds = [None, LONG_TEXT, None, None, *(BINARY if c == "current_hash" else None for c in optional)]
    sql = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    now = db.dialect.timestamp_param(utc_now())
    total = 0
    rows: list[tuple[Any, ...]] = []

    def flush() -> None:
        with db.transaction():
            db.executemany(sql, rows, kinds=kinds)

    for record in records:
        text = json.dumps(record, ensure_ascii=False)
        extra = {
            "legacy_id": record.get("mis_child_id"),
            "current_hash": hashlib.sha256(text.encode("utf-16-le")).digest(),
            "last_updated": now,
        }
        rows.append((record["la_child_id"], text, "Pending", "New", *(extra[c] for c in optional)))
        if len(rows) >= chunk:
            flush()
            total, rows = total + len(rows), []
    if rows:
        flush()
        total += len(rows)
    return total
