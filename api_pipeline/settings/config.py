"""Settings: built once, validated up front, frozen, passed to whatever needs them.

Precedence (DESIGN §3): command-line flag > process environment > ``.env`` file >
default. Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from api_pipeline.errors import ConfigError
from api_pipeline.settings.db_login import SERVER_AND_DATABASE, add_db_password, add_db_user, integrated_security_string
from api_pipeline.settings.envfile import EnvEntry, EnvFile, read_env_file
from api_pipeline.settings.options import (
    COMMON,
    DATABASE,
    DURATION_FORMS,
    MAX_BATCH_SIZE,
    Option,
    options_of,
    parse_batch_size,
    parse_bool,
    parse_credential,
    parse_duration,
    parse_email_address,
    parse_email_list,
    parse_header_secret,
    parse_https_url,
    parse_in_flight,
    parse_la_code,
    parse_non_negative_int,
    parse_notify_on,
    parse_port,
    parse_proxy_url,
    parse_scope,
    parse_table_name,
    parse_timeout,
    parse_webhook_format,
    reads_two_ways,
    setting,
)
from api_pipeline.settings.paths import absolute_path, absolute_sqlite, sqlite_file_of, sqlite_url_for_file
from api_pipeline.settings.secret_store import is_keyring_reference, resolve_keyring_reference


class Secret:
    """A string that never shows itself in repr, str, logs or tracebacks.

    Call :meth:`reveal` at the single place the real value is needed.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<hidden>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


class ConnectionString(Secret):
    """The database connection string, a secret that remembers which setting gave it, so that a
    message about the connection names what the council set: DB_CONNECTION_STRING, the earlier
    tool's SQL_CONN_STR, or its USER_SERVER and USER_DATABASE (``setting`` is then
    :data:`FROM_SERVER_AND_DATABASE`)."""

    __slots__ = ("setting",)

    def __init__(self, value: str, setting: str = "DB_CONNECTION_STRING") -> None:
        super().__init__(value)
        self.setting = setting


FROM_SERVER_AND_DATABASE = "USER_SERVER"  # the setting of a connection string built from USER_SERVER + USER_DATABASE


def connection_setting(connection_string: Secret | str) -> str:
    """The setting ``connection_string`` came from: DB_CONNECTION_STRING unless it says otherwise."""
    return connection_string.setting if isinstance(connection_string, ConnectionString) else "DB_CONNECTION_STRING"


# ---------------------------------------------------------------------------
# Every setting, one row each: its variable, help, default and parser (options.setting). The
# docs' configuration reference and the .env.example check are generated from these rows, and
# load_settings reads them, so none of them can drift from another.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Everything the tool needs to know, validated. Build with :func:`load_settings`."""

    db_connection_string: Secret | None = setting(
        "DB_CONNECTION_STRING",
        "Where the staging table lives: sqlite:///path/to/file.db, or an ODBC connection string "
        "for SQL Server or PostgreSQL. Passwords in it are treated as secrets. A relative SQLite path is "
        "read from the folder of the .env file that sets it (from the current folder when set otherwise).",
        parse=str.strip,
        secret=True,
        aliases=("SQL_CONN_STR",),
        needed_for=DATABASE,
    )
    db_user: str | None = setting(
        "DB_USER",
        "A SQL Server login's user name (with DB_PASSWORD), as the earlier tool's sender took it: with "
        "USER_SERVER and USER_DATABASE it makes an SQL-login connection instead of Windows authentication; "
        "with a DB_CONNECTION_STRING that names no user, it is added to it as UID={...}.",
        parse=str.strip,
    )
    db_password: Secret | None = setting(
        "DB_PASSWORD",
        "The database password, kept out of DB_CONNECTION_STRING: added to it as PWD={...} (the connection "
        "string must then have no PWD= or Password= of its own). Usually keyring:<service>/<name>.",
        parse=lambda text: text,
        secret=True,
    )
    table_name: str = setting(
        "TABLE_NAME",
        "The staging table, optionally schema-qualified.",
        default="ssd_api_data_staging",
        parse=parse_table_name,
    )
    api_endpoint: str | None = setting(
        "API_ENDPOINT",
        "Base URL of the DfE receiver, for example "
        "https://pp-api.education.gov.uk/children-in-social-care-data-receiver-test/1 (DfE's test receiver).",
        parse=parse_https_url,
        needed_for=COMMON,
    )
    la_code: str | None = setting(
        "LA_CODE",
        "Your council's 3-digit DfE LA code.",
        parse=parse_la_code,
        needed_for=COMMON,
    )
    token_endpoint: str | None = setting(
        "TOKEN_ENDPOINT",
        "OAuth2 token URL (Azure AD v2), for example "
        "https://login.microsoftonline.com/<tenant-id>/oauth2/v2.0/token (Azure AD v2).",
        parse=parse_https_url,
        needed_for=COMMON,
    )
    client_id: str | None = setting(
        "CLIENT_ID",
        "OAuth2 client id issued by DfE.",
        parse=parse_credential,
        needed_for=COMMON,
    )
    client_secret: Secret | None = setting(
        "CLIENT_SECRET",
        "OAuth2 client secret issued by DfE. May be keyring:<service>/<name> to read it from the Windows "
        "Credential Manager (see set-secret).",
        parse=parse_credential,
        secret=True,
        needed_for=COMMON,
    )
    client_secret_secondary: Secret | None = setting(
        "CLIENT_SECRET_SECONDARY",
        "DfE's second client secret, for changing secrets without downtime: tried once when the token endpoint "
        "refuses CLIENT_SECRET as wrong or expired, with a warning to promote it. May be keyring:<service>/<name>.",
        parse=parse_credential,
        secret=True,
    )
    scope: str | None = setting(
        "SCOPE",
        "OAuth2 scope issued by DfE (ends in /.default).",
        parse=parse_scope,
        needed_for=COMMON,
    )
    supplier_key: Secret | None = setting(
        "SUPPLIER_KEY",
        "DfE subscription key, sent as the SupplierKey header. May be keyring:<service>/<name>.",
        parse=parse_header_secret,
        secret=True,
        needed_for=COMMON,
    )
    supplier_key_secondary: Secret | None = setting(
        "SUPPLIER_KEY_SECONDARY",
        "DfE's second subscription key, for changing keys without downtime: tried once when DfE refuses "
        "SUPPLIER_KEY (HTTP 401), with a warning to promote it. May be keyring:<service>/<name>.",
        parse=parse_header_secret,
        secret=True,
    )
    use_partial_payload: bool = setting(
        "USE_PARTIAL_PAYLOAD",
        "true: send only what changed since DfE's last acknowledgement (deltas); false: send whole records.",
        default=True,
        parse=parse_bool,
    )
    batch_size: int = setting(
        "BATCH_SIZE",
        "Records per request, 1 to 100.",
        default=MAX_BATCH_SIZE,
        parse=parse_batch_size,
    )
    debug: bool = setting(
        "DEBUG",
        "true: log more detail (same as -v). Never logs record content.",
        default=False,
        parse=parse_bool,
    )
    http_timeout: float = setting(
        "HTTP_TIMEOUT",
        "Most seconds one request to DfE or the token endpoint may take, start to finish, its answer included "
        "(above 0, at most 3600; connecting alone is allowed 10 seconds or less).",
        default=60.0,
        parse=parse_timeout,
    )
    max_retries: int = setting(
        "MAX_RETRIES",
        "How many times to retry a request after a temporary failure (429, 5xx, timeout, reset).",
        default=5,
        parse=parse_non_negative_int,
    )
    max_in_flight: int = setting(
        "MAX_IN_FLIGHT",
        "Requests to DfE allowed at the same time, 1 to 8. DfE does not publish its limits, so the default "
        "is 1; raise it only with DfE's agreement, to shorten a large first load.",
        default=1,
        parse=parse_in_flight,
    )
    min_request_interval_ms: int = setting(
        "MIN_REQUEST_INTERVAL_MS",
        "Least time between the starts of two requests, in milliseconds, for a gateway that throttles "
        "(default 0: no pause).",
        default=0,
        parse=parse_non_negative_int,
    )
    max_runtime: float = setting(
        "MAX_RUNTIME",
        f"Longest a run may take, written like {DURATION_FORMS}. When reached, the run stops cleanly after "
        "the current batch; what is left stays pending for the next run.",
        default=4 * 3600.0,
        parse=parse_duration,
    )
    allow_live: bool = setting(
        "ALLOW_LIVE",
        "true: allow sending to DfE's live receiver (an API_ENDPOINT without '-test' in its host name or path). "
        "Same as run --live. Never allowed for a table whose name ends in _anon.",
        default=False,
        parse=parse_bool,
    )
    https_proxy: Secret | None = setting(
        "PROXY_URL",
        "The proxy to reach DfE through, for example http://proxy.council.local:8080, or "
        "http://user:password@proxy:8080 for a proxy that wants a user and password (secret; may be "
        "keyring:<service>/<name>). For NTLM or Kerberos proxies, point it at a local relay such as Px "
        "(http://127.0.0.1:3128). When not set, HTTPS_PROXY is used. Windows' own proxy settings are not read.",
        parse=parse_proxy_url,
        secret=True,
        fallbacks=("HTTPS_PROXY",),
    )
    no_proxy: str | None = setting("NO_PROXY", "Hosts to reach without the proxy, comma-separated.", parse=str.strip)
    ca_bundle: Path | None = setting(
        "CA_BUNDLE",
        "A PEM file of extra certificate authorities to trust (for example your firewall's). "
        "TLS verification is always on.",
        parse=lambda text: Path(text.strip()),
        is_path=True,
    )
    log_dir: Path | None = setting(
        "LOG_DIR",
        "Folder for log files. Default: a 'logs' folder next to the .env file (or the current folder). "
        "A relative path, like every path in the .env file, is read from the .env file's folder.",
        parse=lambda text: Path(text.strip()),
        is_path=True,
    )
    payload_schema: Path | None = setting(
        "PAYLOAD_SCHEMA",
        "Path to a newer DfE openapi.json (or a JSON Schema for one record) to validate against, "
        "instead of the schema built into this version.",
        parse=lambda text: Path(text.strip()),
        is_path=True,
    )
    notify_on: str = setting(
        "NOTIFY_ON",
        "When a run sends an alert: never; failure (the run's exit code is not 0); problems (a failure, or any "
        "row invalid, rejected or skipped); always. Through e-mail (SMTP_HOST) and/or a webhook "
        "(NOTIFY_WEBHOOK_URL); test-notify sends a test alert. An alert that cannot be sent is a warning, never "
        "a different exit code.",
        default="never",
        parse=parse_notify_on,
    )
    smtp_host: str | None = setting(
        "SMTP_HOST",
        "Your council's mail relay, for alerts by e-mail, for example smtp.council.gov.uk.",
        parse=str.strip,
    )
    smtp_port: int = setting("SMTP_PORT", "The mail relay's port (STARTTLS).", default=587, parse=parse_port)
    smtp_starttls: bool = setting(
        "SMTP_STARTTLS",
        "true: encrypt the connection to the mail relay with STARTTLS, its certificate checked with the same "
        "trust as DfE's (the system's store plus CA_BUNDLE); false only for a relay that cannot, and then with "
        "no SMTP_USER (a password is never sent unencrypted).",
        default=True,
        parse=parse_bool,
    )
    smtp_user: str | None = setting(
        "SMTP_USER", "The user name the mail relay wants, if it wants one (with SMTP_PASSWORD).", parse=str.strip
    )
    smtp_password: Secret | None = setting(
        "SMTP_PASSWORD",
        "The mail relay's password for SMTP_USER. May be keyring:<service>/<name>.",
        parse=parse_credential,
        secret=True,
    )
    notify_email_from: str | None = setting(
        "NOTIFY_EMAIL_FROM",
        "The address alerts come from, for example csc-pipeline@council.gov.uk.",
        parse=parse_email_address,
    )
    notify_email_to: tuple[str, ...] | None = setting(
        "NOTIFY_EMAIL_TO",
        "Who gets alerts by e-mail: one or more addresses, separated by commas (a team mailbox is best).",
        parse=parse_email_list,
    )
    notify_webhook_url: Secret | None = setting(
        "NOTIFY_WEBHOOK_URL",
        "A webhook for alerts: a Microsoft Teams Workflows (Power Automate) HTTP trigger, a Slack incoming "
        "webhook, or any JSON receiver. https:// only (http:// only to this machine); reached through "
        "PROXY_URL with the same trust as DfE. A secret, as such addresses carry a signature; may be "
        "keyring:<service>/<name>.",
        parse=parse_https_url,
        secret=True,
    )
    notify_webhook_format: str = setting(
        "NOTIFY_WEBHOOK_FORMAT",
        "What NOTIFY_WEBHOOK_URL expects: teams (an Adaptive Card, for a Teams Workflows trigger), slack "
        "(Slack's incoming-webhook message) or json (the alert's facts as one JSON object).",
        default="teams",
        parse=parse_webhook_format,
    )
    env_file: Path | None = field(default=None, compare=False)
    # What is odd in the .env file but stops nothing: a name that is not a setting, an escape in quotes.
    warnings: tuple[str, ...] = field(default=(), compare=False)

    @property
    def sqlite_file(self) -> Path | None:
        """The SQLite database file DB_CONNECTION_STRING names (absolute once loaded), else None."""
        if self.db_connection_string is None:
            return None
        return sqlite_file_of(self.db_connection_string.reveal())

    @property
    def is_test_receiver(self) -> bool:
        """DfE's test receivers have '-test' in their host name or path (the simulator's path too).

        Only the host and path count: not a user name, query or fragment, and not a loopback
        host on its own, which may be a relay to the live receiver. An address that could reach
        another than it reads as (``/x-test/../``; refused when settings are loaded) counts as live.
        """
        if reads_two_ways(self.api_endpoint or ""):
            return False
        parts = urlsplit(self.api_endpoint or "")
        return "-test" in (parts.hostname or "").lower() or "-test" in unquote(parts.path).lower()

    @property
    def connect_timeout(self) -> float:
        return min(10.0, self.http_timeout)

    def secrets(self) -> list[Secret]:
        """Every secret setting that is set, for the log masking filter."""
        return [value for value in (getattr(self, f.name) for f in fields(self)) if isinstance(value, Secret)]

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


OPTIONS: tuple[Option, ...] = options_of(Settings)
OPTIONS_BY_ENV = {option.env: option for option in OPTIONS}


def keyring_settings() -> tuple[str, ...]:
    """The settings whose value may live in the keyring: every secret one, by every name it is read under."""
    return tuple(name for option in OPTIONS if option.secret for name in (option.env, *option.fallbacks))


# Every name the tool reads a setting from: each setting's, its older names, and the earlier
# tool's USER_SERVER and USER_DATABASE. A .env line with another name is warned about.
def _names_read(options: tuple[Option, ...]) -> frozenset[str]:
    return frozenset(
        [name for option in options for name in (option.env, *option.aliases, *option.fallbacks)]
        + [*SERVER_AND_DATABASE]
    )


NAMES_READ = _names_read(OPTIONS)

# Names an earlier tool's .env could set that this tool does not read. The earlier tool read its
# .env into the environment, where its HTTP library (requests) found these; this one reads only its
# own settings. Each maps to this tool's setting for the same thing.
EARLIER_NAMES_IGNORED = {
    "REQUESTS_CA_BUNDLE": "CA_BUNDLE",
    "CURL_CA_BUNDLE": "CA_BUNDLE",
    "HTTP_PROXY": "PROXY_URL",
    "ALL_PROXY": "PROXY_URL",
}


def load_settings(
    *,
    command: str,
    environ: Mapping[str, str],
    env_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
    connection_given: bool = False,
) -> Settings:
    """Build Settings for ``command`` from flags, environment and ``.env``; report every problem at once.

    ``overrides`` maps attribute names to values already parsed from command-line flags.
    ``connection_given``: the caller hands the command an open database connection (the Python
    API's ``connection=``), so DB_CONNECTION_STRING is neither needed nor read.
    Relative paths (a SQLite file, LOG_DIR, CA_BUNDLE, PAYLOAD_SCHEMA) become absolute: against
    the folder of ``env_file`` when it set them, else against ``cwd`` (default: the current
    folder), so a task started in System32 never creates or reads files there by accident.
    """
    env = read_env_file(env_file)
    file_values = env.values()
    from_parts = False  # the connection string was built from USER_SERVER and USER_DATABASE
    db_setting = "DB_CONNECTION_STRING"  # the setting the connection string came from, for messages
    here = Path.cwd() if cwd is None else cwd
    env_folder = env_file.parent if env_file is not None else here
    overrides = dict(overrides or {})
    values: dict[str, Any] = {}
    problems: list[str] = list(env.problems)
    where = f" (in {env_file})" if env_file else ""

    from_file: set[str] = set()  # attributes whose value came from the .env file

    def lookup(option: Option) -> tuple[str, str] | None:
        for names in ((option.env, *option.aliases), option.fallbacks):
            for name in names:
                if environ.get(name, "").strip():
                    return name, environ[name]
            for name in names:
                if file_values.get(name, "").strip():
                    from_file.add(option.attr)
                    return name, _as_read(option, env.entries[name])
        return None

    for option in options_of(Settings):  # read when called, so every row of Settings is read
        if connection_given and option.attr == "db_connection_string":
            continue
        if option.attr in overrides and overrides[option.attr] is not None:
            values[option.attr] = overrides.pop(option.attr)
            continue
        found = lookup(option)
        if found is None and option.env == "DB_CONNECTION_STRING":
            found = integrated_security_string(environ, file_values)
            from_parts = found is not None
            if found is not None and any(not environ.get(n, "").strip() for n in ("USER_SERVER", "USER_DATABASE")):
                from_file.add(option.attr)
        if found is None:
            if command in option.needed_for:
                problems.append(f"{option.env}: not set{where}. {option.help}")
            continue
        name, text = found
        if option.attr == "db_connection_string":
            db_setting = name
        if option.secret and is_keyring_reference(text):
            resolved = resolve_keyring_reference(name, text, problems, setting_names=keyring_settings())
            if resolved is None:
                continue
            text = resolved
        try:
            value = option.parse(text)
        except ValueError as exc:
            shown = "<hidden>" if option.secret else repr(text.strip())
            problems.append(f"{name}: {shown} {exc}")
            continue
        base = env_folder if option.attr in from_file else here
        if option.is_path and isinstance(value, Path):
            value = absolute_path(value, base)
        elif option.attr == "db_connection_string":
            if "=" not in value and not value.lower().startswith("sqlite:"):
                problems.append(_not_a_connection_string(name, value, base))
                continue
            value = absolute_sqlite(value, base)
        values[option.attr] = Secret(value) if option.secret else value

    if values.get("db_connection_string") is not None and not isinstance(values["db_connection_string"], Secret):
        values["db_connection_string"] = Secret(values["db_connection_string"])
    if values.get("db_user") and values.get("db_connection_string") is not None:
        with_user = add_db_user(values["db_connection_string"].reveal(), values["db_user"], from_parts, problems)
        if with_user is not None:
            values["db_connection_string"] = Secret(with_user)
        if values.get("db_password") is None:
            problems.append("DB_USER: an SQL login needs its password too: set DB_PASSWORD (or remove DB_USER)")
    if values.get("db_password") is not None and values.get("db_connection_string") is not None:
        combined = add_db_password(values["db_connection_string"].reveal(), values["db_password"].reveal(), problems)
        if combined is not None:
            values["db_connection_string"] = Secret(combined)
    warnings = env_file_warnings(env)
    if problems:
        raise ConfigError(problems, warnings=warnings)
    if values.get("db_connection_string") is not None:
        values["db_connection_string"] = ConnectionString(values["db_connection_string"].reveal(), db_setting)
    return Settings(env_file=env_file, warnings=tuple(warnings), **values)


def _not_a_connection_string(name: str, value: str, base: Path) -> str:
    """The problem with a connection string that has no KEY=value in it, so is no ODBC string:
    a file's path, with the sqlite:/// address it was probably meant to be, or else what to write."""
    suggestion = sqlite_url_for_file(value, base)
    if suggestion is not None:
        return (
            f"{name}: {value} reads as a file's path, not a connection string: for a SQLite database, did you mean "
            f"{name}={suggestion}? (a relative path is read from the folder of the .env file that sets it)"
        )
    return (
        f"{name}: not a connection string (it has no KEY=value in it): give sqlite:///path/to/file.db for a "
        "SQLite database, or an ODBC connection string such as DRIVER={ODBC Driver 18 for SQL Server};"
        "SERVER=...;DATABASE=...;Trusted_Connection=yes; for SQL Server"
    )


def _is_read_as_written(option: Option, entry: EnvEntry) -> bool:
    """A file or folder (a SQLite database too) keeps the backslashes written in its quotes."""
    if option.is_path:
        return True
    return option.attr == "db_connection_string" and entry.path_text.strip().lower().startswith("sqlite:")


def _as_read(option: Option, entry: EnvEntry) -> str:
    """A setting's text from the .env: a path's backslashes as written (``"C:\\Logs\\new"`` is a folder,
    not a new line: :attr:`EnvEntry.path_text`); anything else as python-dotenv reads it, as the earlier
    tool read it, so its .env files mean what they meant."""
    return entry.path_text if _is_read_as_written(option, entry) else entry.value


def env_file_warnings(env: EnvFile) -> list[str]:
    """One warning for each .env line the tool ignores or may misread; never an error, never a value.

    A name that is not a setting (a misspelling is ignored without a word otherwise), with the
    nearest setting; a name an earlier tool read that this one does not, with this one's setting;
    an escape in double quotes that became a control character in a value that is not a path.
    """
    options = options_of(Settings)
    names_read = _names_read(options)
    warnings = []
    for name, entry in env.entries.items():
        where = f"{name} on line {entry.line} of {env.path}"
        if name not in names_read:
            warnings.append(f"{where} {_why_not_read(name, names_read)}")
            continue
        option = next((o for o in options if name in (o.env, *o.aliases, *o.fallbacks)), None)
        if option is not None and _is_read_as_written(option, entry):
            continue
        escapes = entry.control_escapes()
        if escapes:
            shown = (
                "a backslash escape" if option is not None and option.secret else " and ".join(dict.fromkeys(escapes))
            )
            warnings.append(
                f"{where}: inside double quotes, {shown} is read as a control character (a new line, a tab, ...), "
                "as python-dotenv and the earlier tool read it. For a backslash there, write it twice (\\\\) or put "
                "the value in single quotes"
            )
    return warnings


def _why_not_read(name: str, names_read: frozenset[str]) -> str:
    """The rest of the warning for a .env name the tool does not read: what it may have meant."""
    upper = name.upper()
    if upper in EARLIER_NAMES_IGNORED:
        capitals = f" (write names in capitals: {upper})" if upper != name else ""
        return (
            f"is not read by this tool: the earlier tool's HTTP library took it from the environment. "
            f"This tool's setting for it is {EARLIER_NAMES_IGNORED[upper]}{capitals}"
        )
    if upper in names_read:
        return (
            f"is not read, so it is ignored: write it in capitals, {upper} (the earlier tool read any case on Windows)"
        )
    nearest = difflib.get_close_matches(upper, sorted(names_read), n=1, cutoff=0.7)
    if nearest:
        return f"is not a setting, so it is ignored: did you mean {nearest[0]}?"
    return "is not a setting of this tool, so it is ignored (configuration.md lists every setting)"
