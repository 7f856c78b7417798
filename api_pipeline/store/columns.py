"""The columns the tool works with (DESIGN §4): the staging table's, and those of the tables it keeps beside it.

Declared once (:data:`STAGING_SPEC`, :data:`LEDGER_SPEC`, :data:`IN_FLIGHT_SPEC`, :data:`IN_DOUBT_SPEC`);
each dialect derives its DDL from them (``tables``), and the checks that say whether an existing
table can be used compare what the database describes (:class:`ColumnInfo`) with them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from api_pipeline.settings.options import MAX_RECEIPT_LENGTH

HASH_BYTES = 32  # SHA-256
MAX_NOTE_LENGTH = 4000  # api_response: what this tool writes there is cut to this; the column holds at least as much
LOCK_NAME_SIZE = 128  # the run lock table's lock_name column
LOCK_HOLDER_SIZE = 200

# Parameter kinds: the few parameters a driver cannot bind well by guessing from the Python value.
LONG_TEXT = "long_text"  # stored in, or compared with, an NVARCHAR(MAX) / TEXT column
BINARY = "binary"  # bytes (or None) for a BINARY(32) / BYTEA column
Kinds = Sequence[str | None]


@dataclass(frozen=True)
class Column:
    """One column the tool reads or writes, and the least it can work with.

    ``kind`` is one of: id, text, long_text, hash, timestamp, int, flag. For
    ``text``, ``size`` is the length councils' DDL gives it and ``min_size`` the
    shortest that holds every value the tool writes. ``long_text`` must be
    unlimited (NVARCHAR(MAX), TEXT) unless ``min_size`` says a length is enough.
    """

    name: str
    kind: str
    size: int = 0
    min_size: int = 0
    nullable: bool = True
    default: str | None = None
    required: bool = True
    # A JSON column: PostgreSQL's JSON and JSONB types also do (the earlier PostgreSQL builder's DDL).
    json: bool = False
    # A key compared character for character: a child's id, whose letter case matters (DfE may take
    # AB12 and ab12 for two children). SQL Server gives it a binary collation (sql_server.BINARY_COLLATION).
    exact: bool = False


STAGING_SPEC = (
    Column("id", "id", nullable=False),
    Column("person_id", "text", 20, min_size=20),
    Column("legacy_id", "text", 36, required=False),
    Column("json_payload", "long_text", nullable=False, json=True),
    Column("previous_json_payload", "long_text", json=True),
    Column("partial_json_payload", "long_text", json=True),
    Column("current_hash", "hash", required=False),
    Column("previous_hash", "hash"),
    Column("submission_status", "text", 50, min_size=7, default="'Pending'"),
    Column("submission_timestamp", "timestamp"),
    Column("api_response", "long_text", min_size=MAX_NOTE_LENGTH),
    Column("row_state", "text", 10, min_size=9, default="'New'"),
    Column("last_updated", "timestamp", required=False, default="CURRENT_TIMESTAMP"),
)
LEDGER_SPEC = (
    Column("la_child_id", "text", 36, min_size=20, nullable=False, exact=True),
    Column("mis_child_id", "text", 36, min_size=36),
    Column("staging_id", "int"),
    Column("record_json", "long_text"),
    Column("record_hash", "hash"),
    Column("receipt", "text", MAX_RECEIPT_LENGTH, min_size=MAX_RECEIPT_LENGTH),
    Column("acknowledged_at", "timestamp"),
    Column("purged", "flag", nullable=False, default="0"),
)
# A batch about to be sent, or sent and not yet written back (DESIGN §7): one row, written before
# the batch goes and deleted with its write-back; ``children_json`` is each child's id, staging row
# and outline. A row left behind is a batch in doubt: the next run moves its children to the
# in-doubt table.
IN_FLIGHT_SPEC = (
    Column("batch_id", "text", 64, min_size=40, nullable=False),
    Column("recorded_at", "timestamp"),
    Column("children_json", "long_text", nullable=False),
)
# Children whose copy at DfE is in doubt: DfE holds the ledger's record, or what a batch whose
# answer was never recorded made of it, which the outline bounds (its ids and blocks).
IN_DOUBT_SPEC = (
    Column("la_child_id", "text", 36, min_size=20, nullable=False, exact=True),
    Column("staging_id", "int"),
    Column("outline_json", "long_text", nullable=False),
    Column("batch_id", "text", 64, min_size=40),
    Column("recorded_at", "timestamp"),
)
STAGING_COLUMNS = tuple(c.name for c in STAGING_SPEC)
# Columns the tool cannot work without; legacy_id, current_hash and last_updated are optional.
REQUIRED_COLUMNS = tuple(c.name for c in STAGING_SPEC if c.required)


@dataclass(frozen=True)
class ColumnInfo:
    """A column as the database describes it. ``length`` None: unlimited (MAX, TEXT) or not a string."""

    name: str
    data_type: str
    length: int | None = None
    nullable: bool | None = None  # None: not known
    key: bool = False  # part of the table's primary key
    collation: str | None = None  # None: not text, not known, or the database's default (SQLite)

    def shown(self) -> str:
        if self.data_type in _SIZED_TYPES:
            return f"{self.data_type.upper()}({'MAX' if self.length is None else self.length})"
        return self.data_type.upper()


_SIZED_TYPES = frozenset(
    {"nvarchar", "varchar", "nchar", "char", "binary", "varbinary", "character varying", "character"}
)
