"""The tables the tool makes and checks: their names, their DDL in each dialect, and what is wrong with one.

The staging table is the council's; beside it the tool keeps its ledger, the batches in flight, the
children in doubt and the run lock, each named after the staging table. Their columns are declared
once (``columns``); the DDL comes from the dialect's answers, so no DBMS is named here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from api_pipeline.errors import ConfigError
from api_pipeline.store.columns import (
    IN_DOUBT_SPEC,
    IN_FLIGHT_SPEC,
    LEDGER_SPEC,
    LOCK_HOLDER_SIZE,
    LOCK_NAME_SIZE,
    STAGING_SPEC,
    Column,
    ColumnInfo,
)
from api_pipeline.store.dialect import Dialect


def staging_ddl(dialect: Dialect, table: str) -> str:
    """The staging table as councils' SQL Server DDL creates it (DESIGN §4)."""
    body = ", ".join(dialect.column_definition(c) for c in STAGING_SPEC)
    return dialect.create_table_if_missing(table, body)


# ---------------------------------------------------------------------------
# What the tool makes beside the staging table, named after it: the one place those names are made.
# ---------------------------------------------------------------------------


def ledger_name(table: str) -> str:
    """The submission ledger lives beside the staging table: ``<table>_ledger``."""
    return f"{table}_ledger"


def in_flight_name(table: str) -> str:
    """Batches being sent: ``<table>_in_flight``."""
    return f"{table}_in_flight"


def in_doubt_name(table: str) -> str:
    """Children whose copy at DfE is in doubt: ``<table>_in_doubt``."""
    return f"{table}_in_doubt"


def in_doubt_index_name(in_doubt: str) -> str:
    return f"ix_{in_doubt.rsplit('.', 1)[-1]}_row"


def lock_table_name(table: str) -> str:
    """The run lock table beside the staging table: ``<table>_run_lock``."""
    return f"{table}_run_lock"


def person_index_name(table: str, *, unique: bool = True) -> str:
    return f"{'ux' if unique else 'ix'}_{table.rsplit('.', 1)[-1]}_person_id"


def ledger_index_name(ledger: str) -> str:
    return f"ix_{ledger.rsplit('.', 1)[-1]}_staging_id"


# The longest of those names adds this much to the staging table's own name.
DERIVED_NAME_EXTRA = max(
    len(ledger_name("")),
    len(lock_table_name("")),
    len(person_index_name("")),
    len(ledger_index_name(ledger_name(""))),
    len(in_flight_name("")),
    len(in_doubt_index_name(in_doubt_name(""))),
)


def check_table_name_length(dialect: Dialect, table: str) -> None:
    """Refuse a TABLE_NAME whose derived names the DBMS would cut, onto each other or onto the table itself."""
    limit = dialect.max_identifier
    if limit is None:
        return
    schema, _, name = table.rpartition(".")
    longest = limit - DERIVED_NAME_EXTRA
    if len(name) > longest or len(schema) > limit:
        raise ConfigError(
            f"TABLE_NAME: {table} is too long for {dialect.label}, which keeps names of at most {limit} "
            "characters: the tables and indexes the tool makes beside the staging table are named after it "
            f"(..._ledger, ..._in_doubt, ..._run_lock, ix_..._ledger_staging_id), so its name may have at most "
            f"{longest} characters (this one has {max(len(name), len(schema))}). Use a shorter name for the staging "
            "table"
        )


def staging_index_ddl(dialect: Dialect, table: str) -> str:
    """An index on person_id: unique (one row per child; NULLs allowed, as rows being built have none)
    where the DBMS allows that without conditions on the sessions that write the table."""
    if dialect.person_index_unique:
        return dialect.create_index_if_missing(person_index_name(table), table, "person_id", unique=True)
    return dialect.create_index_if_missing(person_index_name(table, unique=False), table, "person_id")


def _keyed_table_ddl(dialect: Dialect, table: str, spec: Sequence[Column]) -> str:
    """A table of ``spec`` whose first column is its primary key (created only if missing)."""
    columns = [dialect.column_definition(c) for c in spec]
    columns[0] += " PRIMARY KEY"
    return dialect.create_table_if_missing(table, ", ".join(columns))


def ledger_ddl(dialect: Dialect, ledger: str) -> str:
    """The submission ledger: per child, what DfE last acknowledged (DESIGN §4)."""
    return _keyed_table_ddl(dialect, ledger, LEDGER_SPEC)


def ledger_index_ddl(dialect: Dialect, ledger: str) -> str:
    """The ledger by staging row: how a run knows a row whose person_id is not its child's
    la_child_id already has its entry, without reading the row's record."""
    return dialect.create_index_if_missing(ledger_index_name(ledger), ledger, "staging_id")


def in_flight_ddl(dialect: Dialect, in_flight: str) -> str:
    """Batches sent and not yet written back (DESIGN §7, batches in doubt)."""
    return _keyed_table_ddl(dialect, in_flight, IN_FLIGHT_SPEC)


def in_doubt_ddl(dialect: Dialect, in_doubt: str) -> str:
    """Children whose copy at DfE is in doubt (DESIGN §7)."""
    return _keyed_table_ddl(dialect, in_doubt, IN_DOUBT_SPEC)


def in_doubt_index_ddl(dialect: Dialect, in_doubt: str) -> str:
    """The children in doubt by staging row, for a row whose person_id is not its child's la_child_id."""
    return dialect.create_index_if_missing(in_doubt_index_name(in_doubt), in_doubt, "staging_id")


def lock_ddl(dialect: Dialect, lock_table: str) -> str:
    """The run lock table: one row per staging table being worked on (see ``lock.RunLock``)."""
    collate = f" {dialect.key_collation}" if dialect.key_collation else ""
    body = (
        f"lock_name {dialect.short_text.format(n=LOCK_NAME_SIZE)}{collate} NOT NULL PRIMARY KEY, "
        f"holder {dialect.short_text.format(n=LOCK_HOLDER_SIZE)} NOT NULL, "
        f"acquired_at {dialect.timestamp} NOT NULL, heartbeat_at {dialect.timestamp} NOT NULL"
    )
    return dialect.create_table_if_missing(lock_table, body)


@dataclass(frozen=True)
class ColumnIssue:
    """A column the tool cannot use (``fix`` is the DDL to run) or should warn about."""

    column: str
    reason: str
    fix: str
    blocking: bool = True


def check_columns(
    dialect: Dialect, table: str, spec: Sequence[Column], present: Sequence[ColumnInfo]
) -> list[ColumnIssue]:
    """Missing and unusable columns of ``table`` against ``spec``, each with the DDL that fixes it."""
    by_name = {c.name: c for c in present}
    issues: list[ColumnIssue] = []
    for column in spec:
        info = by_name.get(column.name)
        if info is None:
            if column.required:
                issues.append(ColumnIssue(column.name, "is missing", dialect.add_column(table, column)))
            continue
        problem = dialect.problem(column, info)
        fix = dialect.alter_column_type(table, column, info)
        if problem and not fix:  # a DBMS that checks types and cannot change this column's
            problem += (
                "; it is the table's key, which ALTER COLUMN cannot change: the table has to be rebuilt with the "
                "column as the tool needs it (ask your DBA; 'init-db --print' shows the whole table)"
            )
        if problem:
            issues.append(ColumnIssue(column.name, problem, fix))
            continue
        warning = dialect.warning(column, info)
        if warning:
            issues.append(ColumnIssue(column.name, warning, fix, blocking=False))
    return issues
