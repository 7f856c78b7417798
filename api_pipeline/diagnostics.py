"""``test-endpoint``, ``test-db``, ``test-schema``: prove a setup without sending records."""

from __future__ import annotations

from typing import Any

from api_pipeline.config import Settings
from api_pipeline.db import REQUIRED_COLUMNS, Database, StagingTable, ledger_ddl, staging_ddl
from api_pipeline.errors import DatabaseError, ExitCode


def test_db(settings: Settings, ctx: Any) -> int:
    """Connect, ``SELECT 1``, report what we are talking to."""
    assert settings.db_connection_string is not None
    with Database.connect(settings.db_connection_string) as db:
        if db.scalar("SELECT 1") != 1:
            raise DatabaseError("SELECT 1 did not return 1")
        ctx.print(f"database: OK, {db.description}")
    return ExitCode.OK


def test_schema(settings: Settings, ctx: Any) -> int:
    """Check the staging table and ledger, and say exactly how to fix what is missing."""
    assert settings.db_connection_string is not None
    problems = 0
    with Database.connect(settings.db_connection_string) as db:
        table = StagingTable(db, settings.table_name, settings.ledger_table)
        missing = table.missing_columns()
        if missing is None:
            problems += 1
            ctx.print(f"staging table {settings.table_name}: NOT FOUND")
            ctx.print("  check TABLE_NAME, or create it (for a new set-up) with:")
            ctx.print("  " + staging_ddl(db.dialect, settings.table_name))
        elif missing:
            problems += 1
            ctx.print(f"staging table {settings.table_name}: missing column(s) {', '.join(missing)}")
            for column in missing:
                ctx.print(f"  ALTER TABLE {settings.table_name} ADD {column} ...  (see DESIGN §4 for its type)")
        else:
            ctx.print(f"staging table {settings.table_name}: OK ({len(REQUIRED_COLUMNS)} required columns present)")
        if db.column_names(settings.ledger_table) is None:
            ctx.print(f"ledger table {settings.ledger_table}: not created yet (run creates it), or create it with:")
            ctx.print("  " + ledger_ddl(db.dialect, settings.ledger_table))
        else:
            ctx.print(f"ledger table {settings.ledger_table}: OK")
    return ExitCode.DATABASE if problems else ExitCode.OK


def test_endpoint(settings: Settings, ctx: Any) -> int:
    """Token + ``POST []``: proves credentials, key, URL, LA code, proxy and TLS; sends no record."""
    from api_pipeline.api import ApiClient, make_session
    from api_pipeline.auth import ClientCredentialsAuth

    session = make_session(settings)
    try:
        auth = ClientCredentialsAuth(
            token_endpoint=str(settings.token_endpoint),
            client_id=str(settings.client_id),
            client_secret=settings.client_secret,  # type: ignore[arg-type]
            scope=str(settings.scope),
            session=session,
            timeout=(settings.connect_timeout, settings.http_timeout),
        )
        client = ApiClient(settings, session, auth)
        check = client.test_endpoint()
    finally:
        session.close()
    for line in check.lines():
        ctx.print(line)
    return ExitCode.OK if check.ok else check.exit_code
