"""``test-endpoint``, ``test-db``, ``test-schema``, ``init-db``: prove or prepare a setup without sending records.

``test-endpoint``'s checks (:func:`check_endpoint`, :class:`EndpointCheck`) live here, beside the
other checks; they use the API client's one-POST :meth:`~api_pipeline.dfe.api.ApiClient.probe`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from api_pipeline.dfe.answers import classify
from api_pipeline.dfe.api import PROMOTE_SECONDARY_KEY_ADVICE, ApiClient
from api_pipeline.dfe.auth import PROMOTE_SECONDARY_CLIENT_ADVICE, ClientCredentialsAuth
from api_pipeline.dfe.tls import CertificateReport, inspect_certificate
from api_pipeline.dfe.transport import make_session, proxy_address, session_proxy, user_agent
from api_pipeline.errors import (
    ApiError,
    AuthError,
    BatchRejected,
    ConfigError,
    DatabaseError,
    ExitCode,
    Forbidden,
    PipelineError,
    RetriableApiError,
    Unauthorized,
)
from api_pipeline.rehearsal.sample import load_sample_children
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import Secret, Settings
from api_pipeline.settings.context import Context
from api_pipeline.settings.masking import hide_secrets, known_secrets
from api_pipeline.store.catalogue import column_names, server_info
from api_pipeline.store.db import Database
from api_pipeline.store.dialect import Dialect
from api_pipeline.store.dialects import dialect_named
from api_pipeline.store.odbc import is_freetds_driver
from api_pipeline.store.staging import StagingTable
from api_pipeline.store.tables import (
    check_table_name_length,
    in_doubt_ddl,
    in_doubt_index_ddl,
    in_doubt_name,
    in_flight_ddl,
    in_flight_name,
    ledger_ddl,
    ledger_index_ddl,
    ledger_name,
    lock_ddl,
    lock_table_name,
    person_index_name,
    staging_ddl,
    staging_index_ddl,
)
from api_pipeline.wording import plural


def _connection_string(settings: Settings, command: str) -> Secret:
    if settings.db_connection_string is None:
        raise ConfigError(f"DB_CONNECTION_STRING: not set. {command} needs the database connection string.")
    return settings.db_connection_string


def test_db(settings: Settings, ctx: Context) -> int:
    """Connect, ``SELECT 1``, and report what we are talking to and who we are logged in as."""
    with Database.open_existing(_connection_string(settings, "test-db")) as db:
        if not db.answers():
            raise DatabaseError("SELECT 1 did not return 1")
        info = server_info(db)
        ctx.print(f"database: OK ({db.dialect.label}, SELECT 1 answered)")
        ctx.print(f"  DBMS:     {info.dbms} {info.version}")
        ctx.print(
            f"  driver:   {info.driver} {info.driver_version}{' (FreeTDS)' if is_freetds_driver(info.driver) else ''}"
        )
        if info.protocol:
            ctx.print(f"  protocol: {info.protocol}")
        ctx.print(f"  login:    {info.login or '(not reported)'}")
        ctx.print(f"  database: {info.database or '(not reported)'}")
    return ExitCode.OK


def test_schema(settings: Settings, ctx: Context) -> int:
    """Check the staging table (the live one or an ``_anon`` copy: it is just TABLE_NAME), the ledger
    and the in-flight and in-doubt tables.

    Lists every missing or unusable column with the exact DDL that fixes it for
    this DBMS. Exit 3 when the tool could not run against the table as it is.
    """
    problems = 0
    with Database.open_existing(_connection_string(settings, "test-schema")) as db:
        table = StagingTable(db, settings.table_name)
        d = db.dialect
        issues = table.column_issues()
        if issues is None:
            problems += 1
            where = f"the SQLite database {settings.sqlite_file}" if settings.sqlite_file else d.label
            ctx.print(f"staging table {settings.table_name}: NOT FOUND in {where}")
            ctx.print("  check TABLE_NAME (schema-qualify it, e.g. ssd_development.ssd_api_data_staging), or for a")
            ctx.print("  new set-up create it with 'init-db', or have a DBA run:")
            for statement in (staging_ddl(d, settings.table_name), staging_index_ddl(d, settings.table_name)):
                ctx.print(_indent(format_ddl(statement) + ";", "    "))
        else:
            problems += _report(ctx, f"staging table {settings.table_name}", issues)
            _report_filtered_indexes(ctx, db, settings.table_name)
        ledger_issues = table.ledger_issues()
        if ledger_issues is None:
            ctx.print(f"ledger table {table.ledger}: not created yet; 'run' creates it, or a DBA runs:")
            for statement in (ledger_ddl(d, table.ledger), ledger_index_ddl(d, table.ledger)):
                ctx.print(_indent(format_ddl(statement) + ";", "    "))
        else:
            problems += _report(ctx, f"ledger table {table.ledger}", ledger_issues)
        for what, name, found, statements in (
            ("in-flight table", table.in_flight, table.in_flight_issues(), (in_flight_ddl(d, table.in_flight),)),
            (
                "in-doubt table",
                table.in_doubt,
                table.in_doubt_issues(),
                (in_doubt_ddl(d, table.in_doubt), in_doubt_index_ddl(d, table.in_doubt)),
            ),
        ):
            if found is None:
                ctx.print(f"{what} {name}: not created yet; 'run' creates it, or a DBA runs:")
                for statement in statements:
                    ctx.print(_indent(format_ddl(statement) + ";", "    "))
            else:
                problems += _report(ctx, f"{what} {name}", found)
        if issues is not None and not any(i.blocking for i in issues):
            first = table.first_contact()
            if first.total:
                ctx.print(f"rows whose child has no ledger entry yet: {first.total}; the next run:")
                for line in first.lines():
                    ctx.print(line)
    return ExitCode.DATABASE if problems else ExitCode.OK


def _report(ctx: Context, what: str, issues: list[Any]) -> int:
    blocking = [i for i in issues if i.blocking]
    if not blocking:
        ctx.print(f"{what}: OK")
    else:
        ctx.print(f"{what}: {len(blocking)} column(s) the tool cannot use as they are")
    for issue in issues:
        label = "" if issue.blocking else "warning: "
        ctx.print(f"  - {label}{issue.column} {issue.reason}")
        if issue.fix:
            ctx.print(f"      fix: {issue.fix};")
    return 1 if blocking else 0


FILTERED_INDEX_NOTE = (
    "every session that writes the table then needs QUOTED_IDENTIFIER and ANSI_NULLS on, or its INSERT, UPDATE "
    "or MERGE fails with error 1934; SQL Agent T-SQL job steps, and procedures created with them off, do not "
    "have them on"
)
PERSON_INDEX_NOTE = (
    "The person_id index is not unique on SQL Server: one that allows several NULL person_ids has to be filtered, "
    f"and {FILTERED_INDEX_NOTE}. The tool itself finds two rows for one child and skips them."
)


def _report_filtered_indexes(ctx: Context, db: Database, table: str) -> None:
    """SQL Server: a filtered index on the staging table obliges the staging SQL's sessions (issue 18.6)."""
    sql = db.dialect.filtered_indexes_sql()
    if sql is None:
        return
    ours = person_index_name(table, unique=True)  # made by init-db before it made a plain index
    for (name,) in db.query(sql, (table,)):
        ctx.print(f"  - warning: index {name} is filtered: {FILTERED_INDEX_NOTE}")
        if str(name).lower() == ours.lower():
            plain = person_index_name(table, unique=False)
            ctx.print(f"      fix: DROP INDEX {ours} ON {table}; CREATE INDEX {plain} ON {table} (person_id);")


def tables_ddl(dialect: Dialect, table: str) -> list[tuple[str, str, str]]:
    """(what, name, DDL) for every table the tool uses, in creation order. Each DDL creates only if missing."""
    check_table_name_length(dialect, table)
    ledger, lock = ledger_name(table), lock_table_name(table)
    in_flight, in_doubt = in_flight_name(table), in_doubt_name(table)
    return [
        ("staging table", table, staging_ddl(dialect, table)),
        (_person_index(dialect), table, staging_index_ddl(dialect, table)),
        ("ledger table", ledger, ledger_ddl(dialect, ledger)),
        ("index on staging_id", ledger, ledger_index_ddl(dialect, ledger)),
        ("in-flight table", in_flight, in_flight_ddl(dialect, in_flight)),
        ("in-doubt table", in_doubt, in_doubt_ddl(dialect, in_doubt)),
        ("index on staging_id", in_doubt, in_doubt_index_ddl(dialect, in_doubt)),
        ("run lock table", lock, lock_ddl(dialect, lock)),
    ]


def _person_index(dialect: Dialect) -> str:
    return "unique index on person_id" if dialect.person_index_unique else "index on person_id"


SAMPLE_SUFFIX = "_anon"


def init_db(
    settings: Settings,
    ctx: Context,
    print_only: bool,
    *,
    dialect: str | None = None,
    sample: int | None = None,
    append: bool = False,
) -> int:
    """Create the staging table (with its person_id index), the ledger, the in-flight and in-doubt tables and
    the run lock table.

    Creates only what is missing; never drops or alters an existing table.
    ``print_only`` prints the DDL for a DBA to review instead; with ``dialect``
    (mssql, postgresql, sqlite) it needs no connection at all. ``sample`` then fills the
    table with that many synthetic children, as the council's SQL adds new ones.
    """
    table = settings.table_name
    if sample is not None:
        _check_sample_target(table, print_only)
    elif append:
        raise ConfigError("init-db --append adds sample children, so it needs --sample N")
    if print_only and dialect:
        _print_ddl(ctx, dialect_named(dialect), table)
        return ExitCode.OK
    if settings.db_connection_string is None:
        raise ConfigError(
            "DB_CONNECTION_STRING: not set. init-db needs the database to create the tables in; "
            "to only print the DDL, use: init-db --print --dialect mssql|postgresql|sqlite"
        )
    with Database.connect(settings.db_connection_string) as db:
        if dialect and dialect_named(dialect).name != db.dialect.name:
            raise ConfigError(f"--dialect {dialect} does not match the database, which is {db.dialect.label}")
        if print_only:
            _print_ddl(ctx, db.dialect, table)
            return ExitCode.OK
        ctx.print(f"database: {db.description}")
        staging_existed = column_names(db, table) is not None
        existed: dict[str, bool] = {}
        for what, name, statement in tables_ddl(db.dialect, table):
            if "index" in what:
                if existed[name]:
                    continue  # an existing table is left exactly as it is
            elif column_names(db, name) is not None:
                existed[name] = True
                ctx.print(f"{what} {name}: already exists, left as it is")
                continue
            existed[name] = False
            try:
                with db.transaction():
                    db.execute(statement)
            except DatabaseError as exc:
                raise DatabaseError(f"could not create the {what} {name}: {exc}") from None
            ctx.print(f"{what} on {name}: created" if "index" in what else f"{what} {name}: created")
            if what == "index on person_id":  # SQL Server's: say why it is not unique
                ctx.print(f"  {PERSON_INDEX_NOTE}")
        if staging_existed:
            ctx.print("Run test-schema to check the existing staging table's columns.")
        if sample is not None:
            _add_sample(db, table, sample, append, ctx)
    return ExitCode.OK


def _check_sample_target(table: str, print_only: bool) -> None:
    """Rehearsal data goes only where it can never reach DfE's live receiver: a table named ``*_anon``."""
    if print_only:
        raise ConfigError("init-db --sample fills a table, so it cannot be combined with --print")
    if not table.lower().endswith(SAMPLE_SUFFIX):
        raise ConfigError(
            f"init-db --sample: TABLE_NAME is {table}, but sample children go only into a rehearsal table whose "
            f"name ends in {SAMPLE_SUFFIX}, which this tool never sends to DfE's live receiver. "
            f"Set TABLE_NAME={table}{SAMPLE_SUFFIX}"
        )


def _add_sample(db: Database, table: str, count: int, append: bool, ctx: Context) -> None:
    staging = StagingTable(db, table)
    existing = staging.row_count()
    if existing and not append:
        raise ConfigError(
            f"init-db --sample: the table {table} already has {plural(existing, 'row')}, so no sample children "
            "were added. Empty it first, or add them to what is there with --append"
        )
    first = 1
    if existing:  # after the highest sample id already there, so no child is added twice
        first = 1 + max((int(p[1:]) for p in staging.person_ids() if re.fullmatch(r"C\d{7}", p)), default=0)
    added = load_sample_children(db, table, make_children(count, seed=SAMPLE_SEED + first, first=first))
    last = first + added - 1
    ids = f"C{first:07d}" if added == 1 else f"C{first:07d} to C{last:07d}"
    ctx.print(
        f"sample: {plural(added, 'synthetic child')} added to {table} (person_id {ids}), as "
        "the council's SQL adds new children: submission_status Pending, row_state New"
    )
    if existing:  # a rehearsal under way: the simulator is (or should be) running already
        they = "it" if added == 1 else "them"
        ctx.print(f"Next: run, to send {they} to the simulator (simulate-api, running in another window).")
    else:
        ctx.print("Next: simulate-api in another window, then run against it (see the rehearsal guide).")


SAMPLE_SEED = 2026


def _print_ddl(ctx: Context, dialect: Dialect, table: str) -> None:
    ctx.print(f"-- CSC API Pipeline tables for {dialect.label} (TABLE_NAME={table}).")
    ctx.print("-- Each statement creates its object only when it is missing; nothing is dropped or altered.")
    for what, name, statement in tables_ddl(dialect, table):
        ctx.print(f"-- {what}: {name}")
        if what == "index on person_id":
            ctx.print(f"-- {PERSON_INDEX_NOTE}")
        ctx.print(format_ddl(statement) + ";")


def format_ddl(statement: str) -> str:
    """One column per line in a CREATE TABLE, as a DBA would write it."""
    match = re.search(r"CREATE TABLE \S+ \(", statement)
    if match is None or not statement.endswith(")"):
        return statement
    body, depth, parts, current = statement[match.end() : -1], 0, [], ""
    for char in body:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += char
    parts.append(current.strip())
    return statement[: match.end()] + "\n" + ",\n".join("    " + p for p in parts) + "\n)"


def _indent(text: str, prefix: str) -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def test_endpoint(settings: Settings, ctx: Context) -> int:
    """Token + ``POST []``: proves credentials, key, URL, LA code, proxy and TLS; sends no record."""
    session = make_session(settings)
    try:
        auth = ClientCredentialsAuth.from_settings(settings, session)
        client = ApiClient(settings, session, auth)
        check = check_endpoint(client)
    finally:
        session.close()
    secrets = [*client.answer_mask().secrets, *known_secrets()]
    for line in check.lines():
        ctx.print(hide_secrets(line, secrets))
    return ExitCode.OK if check.ok else check.exit_code


@dataclass(frozen=True)
class EndpointCheck:
    """The result of ``test-endpoint``: whether token and endpoint work, and why not."""

    ok: bool
    stage: str  # "token" or "endpoint": where it stopped
    message: str
    status: int | None = None
    note: str | None = None
    exit_code: int = ExitCode.OK
    url: str = ""
    warnings: tuple[str, ...] = ()
    proxy: str | None = None  # host:port, never credentials
    trust: str = ""
    certificates: tuple[CertificateReport, ...] = ()

    def lines(self) -> list[str]:
        """What ``test-endpoint`` prints: verdict, where, warnings, note, then the network path and certificates."""
        verdict = "PASS" if self.ok else f"FAIL ({self.stage})"
        shown = [f"{verdict}: {self.message}"]
        if self.url:
            shown.append(f"{'token endpoint' if self.stage == 'token' else 'endpoint'}: POST {self.url}")
        shown.extend(f"warning: {text}" for text in self.warnings)
        if self.note:
            shown.append(f"note: {self.note}")
        if self.certificates:
            shown.append(f"proxy: {self.proxy}" if self.proxy else "proxy: none (direct connection)")
        if self.trust and any(not c.plain_http for c in self.certificates):
            shown.append(f"trusted certificate authorities: {self.trust}")
        shown.extend(report.line() for report in self.certificates)
        return shown


def check_endpoint(client: ApiClient, *, inspect_tls: bool = True) -> EndpointCheck:
    """Get a token and POST ``[]``: proves credentials, key, URL, LA code, proxy and TLS at once.

    Never GETs the endpoint and never sends a record; no retries, so a failure is shown as is.
    With ``inspect_tls``, also reports the proxy and each host's certificate and issuer.
    """
    check = _check_endpoint(client)
    warnings = list(check.warnings)
    if client.auth.secondary_in_use:
        warnings.append(PROMOTE_SECONDARY_CLIENT_ADVICE)
    if client.secondary_key_in_use and check.ok:
        warnings.append(PROMOTE_SECONDARY_KEY_ADVICE)
    return replace(check, warnings=tuple(warnings), **_network_report(client, inspect_tls))


def _network_report(client: ApiClient, inspect_tls: bool) -> dict[str, Any]:
    """The proxy in use and the certificates the token and API hosts present (for test-endpoint)."""
    context = getattr(client.session, "ssl_context", None)
    if not inspect_tls or context is None:
        return {}
    reports = []
    for label, url in (("token host", client.auth.token_endpoint), ("API host", client.url)):
        reports.append(
            inspect_certificate(
                label,
                url,
                context=context,
                proxy=session_proxy(client.session, url),
                timeout=client.settings.connect_timeout,
                user_agent=user_agent(),
            )
        )
    return {
        "proxy": proxy_address(session_proxy(client.session, client.url)),
        "trust": getattr(client.session, "trust", ""),
        "certificates": tuple(reports),
    }


def _check_endpoint(client: ApiClient) -> EndpointCheck:
    try:
        client.auth.get_token()
    except (AuthError, ApiError) as exc:
        token_url = client.auth.token_endpoint
        return EndpointCheck(False, "token", str(exc), exit_code=exc.exit_code, url=token_url)
    try:
        response = client.probe(b"[]")
    except PipelineError as exc:  # TLS, proxy, DNS, refused, timeout
        return EndpointCheck(False, "endpoint", str(exc), exit_code=exc.exit_code, url=client.url)
    status = response.status_code

    def refused(message: str, exit_code: int) -> EndpointCheck:
        return EndpointCheck(False, "endpoint", message, status=status, exit_code=exit_code, url=client.url)

    try:
        classify(response, client.answer_mask())
    except BatchRejected as exc:
        return EndpointCheck(
            True,
            "endpoint",
            "Token, SupplierKey, URL and LA code accepted: auth works, body refused.",
            status=status,
            note=f"DfE objected to the empty test body, which proves access but not the format: {exc}",
            url=client.url,
        )
    except Unauthorized as exc:
        keys = "SUPPLIER_KEY and SUPPLIER_KEY_SECONDARY" if client.secondary_key_in_use else "SUPPLIER_KEY"
        return refused(
            f"{_sentence(exc)}. A token was issued, so check {keys}, and that CLIENT_ID and SCOPE "
            "are the ones DfE issued for this API",
            ExitCode.AUTH,
        )
    except Forbidden as exc:
        return refused(
            f"{_sentence(exc)}. Check that this machine's public IP address is on DfE's allow-list, "
            "that SUPPLIER_KEY is right and that LA_CODE is your council's",
            ExitCode.API,
        )
    except RetriableApiError as exc:
        return refused(f"{_sentence(exc)}. Try again later", ExitCode.API)
    except PipelineError as exc:  # 404, 407, 413, anything else unexpected
        return EndpointCheck(False, "endpoint", str(exc), status=status, exit_code=exc.exit_code, url=client.url)
    return EndpointCheck(
        True,
        "endpoint",
        f"Token, SupplierKey, URL and LA code accepted (HTTP {response.status_code}; nothing stored).",
        status=response.status_code,
        url=client.url,
    )


def _sentence(exc: BaseException) -> str:
    """An error's message ready to have advice appended after a full stop."""
    return str(exc).rstrip(". ")
