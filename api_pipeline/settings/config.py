"""Settings: built once, validated up front, frozen, passed to whatever needs them.

Precedence (DESIGN §3): command-line flag > process environment > ``.env`` file >
default. Nothing else in the package reads ``os.environ``.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from api_pipeline.errors import ConfigError
from api_pipeline.settings.db_login import (
    SERVER_AND_DATABASE,
    add_db_password,
    add_db_user,
    integrated_security_string,
)
from api_pipeline.settings.envfile import EnvEntry, EnvFile, read_env_file
from api_pipeline.settings.paths import absolute_path, absolute_sqlite, sqlite_file_of, sqlite_url_for_file
from api_pipeline.settings.secret_store import is_keyring_reference, resolve_keyring_reference

TABLE_NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
LA_CODE_PATTERN = re.compile(r"^[0-9]{3}$")
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_BATCH_SIZE = 100
# The longest receipt the tool accepts from DfE (dfe/api.py) and so the least the ledger's receipt column holds.
MAX_RECEIPT_LENGTH = 255
MAX_IN_FLIGHT = 8
MAX_HTTP_TIMEOUT = 3600.0  # seconds: an hour for one request is already far longer than DfE needs
MAX_DURATION = 7 * 24 * 3600.0  # seconds: MAX_RUNTIME of a week at most
_VISIBLE_ASCII = re.compile(r"[!-~]+")
_INVISIBLE = frozenset({"Cc", "Cf", "Zl", "Zp"})  # control and format characters (zero-width space, BOM)


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
# The definition of every setting. The docs' configuration reference and the
# .env.example check are generated from this table, so they cannot drift.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One configuration variable: its name, meaning and how to parse it."""

    env: str
    attr: str
    help: str
    default: Any = None
    parse: Callable[[str], Any] = str
    secret: bool = False
    aliases: tuple[str, ...] = ()
    needed_for: frozenset[str] = frozenset()
    # Older or more general names read only when no source has ``env`` or an alias:
    # PROXY_URL in the .env beats a machine-wide HTTPS_PROXY in the environment.
    fallbacks: tuple[str, ...] = ()
    # A file or folder: a relative one is read from the folder of the .env that sets it.
    is_path: bool = False


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "y", "on"}:
        return True
    if value in {"0", "false", "no", "n", "off", ""}:
        return False
    raise ValueError("expected true or false")


def _whole_number(text: str, expected: str) -> int:
    """``int(text)``, with a sentence saying what is expected instead of Python's message."""
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"is not a whole number: {expected}") from None


def _parse_batch_size(text: str) -> int:
    expected = f"must be between 1 and {MAX_BATCH_SIZE} (DfE rejects larger batches with 413)"
    value = _whole_number(text, expected)
    if not 1 <= value <= MAX_BATCH_SIZE:
        raise ValueError(expected)
    return value


def _parse_in_flight(text: str) -> int:
    expected = f"must be between 1 and {MAX_IN_FLIGHT}"
    value = _whole_number(text, expected)
    if not 1 <= value <= MAX_IN_FLIGHT:
        raise ValueError(expected)
    return value


def _parse_timeout(text: str) -> float:
    expected = f"must be a number of seconds above 0 and at most {MAX_HTTP_TIMEOUT:g}, for example 60 or 2.5"
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"is not a number: {expected}") from None
    if not 0 < value <= MAX_HTTP_TIMEOUT:  # NaN and infinity fail this too
        raise ValueError(expected)
    return value


def _parse_non_negative_int(text: str) -> int:
    value = _whole_number(text, "must be 0 or more, for example 5")
    if value < 0:
        raise ValueError("must be zero or more")
    return value


_DURATION_UNITS = {
    **dict.fromkeys(("h", "hr", "hrs", "hour", "hours"), 3600),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60),
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds", ""), 1),
}
_DURATION_PART = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*")
DURATION_FORMS = "4h, 4 hours, 90m, 90 minutes, 1h30m, 3600s or 3600 (seconds)"


def _parse_duration(text: str) -> float:
    """``14400``, ``240m``, ``4h``, ``4 hours``, ``1h 30m``, ``90s`` → seconds."""
    value = text.strip().lower()
    total, position, parts = 0.0, 0, 0
    while position < len(value):
        match = _DURATION_PART.match(value, position)
        if match is None or match.end() == position or match.group(2) not in _DURATION_UNITS:
            raise ValueError(f"is not a duration this tool reads; write it like {DURATION_FORMS}")
        if match.group(2) == "" and (parts or match.end() < len(value)):  # a bare number stands alone
            raise ValueError(f"is not a duration this tool reads; write it like {DURATION_FORMS}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position, parts = match.end(), parts + 1
    if not parts or not 0 < total <= MAX_DURATION:
        raise ValueError(f"must be a positive duration of at most a week, for example {DURATION_FORMS}")
    return total


def _parse_header_secret(text: str) -> str:
    """A secret sent as an HTTP header value (SUPPLIER_KEY): visible ASCII only."""
    value = text.strip()
    if not value:
        raise ValueError("is empty")
    if not _VISIBLE_ASCII.fullmatch(value):
        raise ValueError(
            "contains an invisible, space or non-ASCII character (often pasted in with the key by accident), "
            "which cannot be sent in the SupplierKey header: type or paste it again"
        )
    return value


def _parse_credential(text: str) -> str:
    """CLIENT_ID, CLIENT_SECRET, SCOPE: trimmed, and without invisible characters pasted in by accident."""
    value = text.strip()
    if any(unicodedata.category(char) in _INVISIBLE for char in value):
        raise ValueError(
            "contains an invisible character (a zero-width space, a byte-order mark or a control character, "
            "often pasted in by accident): type or paste it again"
        )
    return value


def _parse_table_name(text: str) -> str:
    value = text.strip()
    if not TABLE_NAME_PATTERN.match(value):
        raise ValueError(
            "must be a plain table name, optionally schema-qualified (letters, digits, underscores), "
            "for example ssd_api_data_staging or ssd_development.ssd_api_data_staging"
        )
    return value


def _parse_la_code(text: str) -> str:
    value = text.strip()
    if not LA_CODE_PATTERN.match(value):
        raise ValueError("must be your council's 3-digit DfE LA code, for example 846")
    return value


def _reads_two_ways(url: str) -> str | None:
    """Why ``url`` could reach another address than the one it reads as, or None.

    requests resolves ``.`` and ``..`` path segments before sending, passes ``%2e%2e`` on as
    ``..`` for the server to resolve, and ends the host at a backslash (``https://a\\@b-test/``
    reads as host b-test and connects to a); servers may read a backslash as ``/`` and ``..;`` as
    ``..``. So ``https://host/x-test/../children-in-social-care-data-receiver/1`` reads as a test
    receiver and posts to the live one. No address DfE or Azure gives has any of these, so they
    are refused rather than resolved as one client or server would resolve them.
    """
    if "\\" in url:
        return "contains a backslash"
    path = urlsplit(url).path
    while (decoded := unquote(path)) != path:  # %252e%252e is ".." decoded twice; each pass shortens it
        path = decoded
    if "\\" in path:
        return "contains a backslash (%5c)"
    if any(segment.split(";", 1)[0] in (".", "..") for segment in path.split("/")):
        return "has a '.' or '..' segment in its path (perhaps written %2e%2e)"
    return None


def _parse_https_url(text: str) -> str:
    value = text.strip().rstrip("/")
    problem = _reads_two_ways(value)
    if problem:
        raise ValueError(
            f"{problem}, so requests or the server would read it as another address than the one written "
            "(for API_ENDPOINT, perhaps DfE's live receiver). Write the address exactly as DfE (or Azure) "
            "gives it, without '.' or '..' parts or backslashes"
        )
    parts = urlsplit(value)
    if parts.scheme not in {"https", "http"} or not parts.hostname:
        raise ValueError(
            "must be a full URL starting https:// (or http:// to this machine, such as http://127.0.0.1:8765 for the "
            "simulator)"
        )
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ValueError("must use https:// (plain http is only allowed to this machine, for the simulator)")
    return value


def _parse_proxy_url(text: str) -> str:
    """``http://[user:password@]host:port``; a bare ``host:port`` means http://, as browsers and requests read it."""
    value = text.strip()
    if "://" not in value:
        value = "http://" + value
    parts = urlsplit(value)
    if parts.scheme.lower() not in {"http", "https"}:
        raise ValueError(
            "must be an http:// proxy address such as http://proxy.council.local:8080 (SOCKS is not supported)"
        )
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        raise ValueError("has a port that is not a number; expected http://host:port") from None
    if not parts.hostname:
        raise ValueError("has no host name; expected http://host:port")
    return value


def _parse_scope(text: str) -> str:
    value = _parse_credential(text)
    if not value:
        raise ValueError("must not be empty")
    return value


COMMON = frozenset({"run", "test-endpoint"})
DATABASE = frozenset({"run", "validate", "status", "test-db", "test-schema", "init-db"})

OPTIONS: tuple[Option, ...] = (
    Option(
        "DB_CONNECTION_STRING",
        "db_connection_string",
        "Where the staging table lives: sqlite:///path/to/file.db, or an ODBC connection string "
        "for SQL Server or PostgreSQL. Passwords in it are treated as secrets. A relative SQLite path is "
        "read from the folder of the .env file that sets it (from the current folder when set otherwise).",
        parse=str.strip,
        secret=True,
        aliases=("SQL_CONN_STR",),
        needed_for=DATABASE,
    ),
    Option(
        "DB_USER",
        "db_user",
        "A SQL Server login's user name (with DB_PASSWORD), as the earlier tool's sender took it: with "
        "USER_SERVER and USER_DATABASE it makes an SQL-login connection instead of Windows authentication; "
        "with a DB_CONNECTION_STRING that names no user, it is added to it as UID={...}.",
        parse=str.strip,
    ),
    Option(
        "DB_PASSWORD",
        "db_password",
        "The database password, kept out of DB_CONNECTION_STRING: added to it as PWD={...} (the connection "
        "string must then have no PWD= or Password= of its own). Usually keyring:<service>/<name>.",
        parse=lambda text: text,
        secret=True,
    ),
    Option(
        "TABLE_NAME",
        "table_name",
        "The staging table, optionally schema-qualified.",
        default="ssd_api_data_staging",
        parse=_parse_table_name,
    ),
    Option(
        "API_ENDPOINT",
        "api_endpoint",
        "Base URL of the DfE receiver, for example "
        "https://pp-api.education.gov.uk/children-in-social-care-data-receiver-test/1 (DfE's test receiver).",
        parse=_parse_https_url,
        needed_for=COMMON,
    ),
    Option("LA_CODE", "la_code", "Your council's 3-digit DfE LA code.", parse=_parse_la_code, needed_for=COMMON),
    Option(
        "TOKEN_ENDPOINT",
        "token_endpoint",
        "OAuth2 token URL (Azure AD v2), for example "
        "https://login.microsoftonline.com/<tenant-id>/oauth2/v2.0/token (Azure AD v2).",
        parse=_parse_https_url,
        needed_for=COMMON,
    ),
    Option("CLIENT_ID", "client_id", "OAuth2 client id issued by DfE.", parse=_parse_credential, needed_for=COMMON),
    Option(
        "CLIENT_SECRET",
        "client_secret",
        "OAuth2 client secret issued by DfE. May be keyring:<service>/<name> to read it from the Windows "
        "Credential Manager (see set-secret).",
        parse=_parse_credential,
        secret=True,
        needed_for=COMMON,
    ),
    Option(
        "CLIENT_SECRET_SECONDARY",
        "client_secret_secondary",
        "DfE's second client secret, for changing secrets without downtime: tried once when the token endpoint "
        "refuses CLIENT_SECRET as wrong or expired, with a warning to promote it. May be keyring:<service>/<name>.",
        parse=_parse_credential,
        secret=True,
    ),
    Option("SCOPE", "scope", "OAuth2 scope issued by DfE (ends in /.default).", parse=_parse_scope, needed_for=COMMON),
    Option(
        "SUPPLIER_KEY",
        "supplier_key",
        "DfE subscription key, sent as the SupplierKey header. May be keyring:<service>/<name>.",
        parse=_parse_header_secret,
        secret=True,
        needed_for=COMMON,
    ),
    Option(
        "SUPPLIER_KEY_SECONDARY",
        "supplier_key_secondary",
        "DfE's second subscription key, for changing keys without downtime: tried once when DfE refuses "
        "SUPPLIER_KEY (HTTP 401), with a warning to promote it. May be keyring:<service>/<name>.",
        parse=_parse_header_secret,
        secret=True,
    ),
    Option(
        "USE_PARTIAL_PAYLOAD",
        "use_partial_payload",
        "true: send only what changed since DfE's last acknowledgement (deltas); false: send whole records.",
        default=True,
        parse=_parse_bool,
    ),
    Option(
        "BATCH_SIZE",
        "batch_size",
        "Records per request, 1 to 100.",
        default=MAX_BATCH_SIZE,
        parse=_parse_batch_size,
    ),
    Option(
        "DEBUG",
        "debug",
        "true: log more detail (same as -v). Never logs record content.",
        default=False,
        parse=_parse_bool,
    ),
    Option(
        "HTTP_TIMEOUT",
        "http_timeout",
        "Most seconds one request to DfE or the token endpoint may take, start to finish, its answer included "
        "(above 0, at most 3600; connecting alone is allowed 10 seconds or less).",
        default=60.0,
        parse=_parse_timeout,
    ),
    Option(
        "MAX_RETRIES",
        "max_retries",
        "How many times to retry a request after a temporary failure (429, 5xx, timeout, reset).",
        default=5,
        parse=_parse_non_negative_int,
    ),
    Option(
        "MAX_IN_FLIGHT",
        "max_in_flight",
        "Requests to DfE allowed at the same time, 1 to 8. DfE does not publish its limits, so the default "
        "is 1; raise it only with DfE's agreement, to shorten a large first load.",
        default=1,
        parse=_parse_in_flight,
    ),
    Option(
        "MIN_REQUEST_INTERVAL_MS",
        "min_request_interval_ms",
        "Least time between the starts of two requests, in milliseconds, for a gateway that throttles "
        "(default 0: no pause).",
        default=0,
        parse=_parse_non_negative_int,
    ),
    Option(
        "MAX_RUNTIME",
        "max_runtime",
        f"Longest a run may take, written like {DURATION_FORMS}. When reached, the run stops cleanly after "
        "the current batch; what is left stays pending for the next run.",
        default=4 * 3600.0,
        parse=_parse_duration,
    ),
    Option(
        "ALLOW_LIVE",
        "allow_live",
        "true: allow sending to DfE's live receiver (an API_ENDPOINT without '-test' in its host name or path). "
        "Same as run --live. Never allowed for a table whose name ends in _anon.",
        default=False,
        parse=_parse_bool,
    ),
    Option(
        "PROXY_URL",
        "https_proxy",
        "The proxy to reach DfE through, for example http://proxy.council.local:8080, or "
        "http://user:password@proxy:8080 for a proxy that wants a user and password (secret; may be "
        "keyring:<service>/<name>). For NTLM or Kerberos proxies, point it at a local relay such as Px "
        "(http://127.0.0.1:3128). When not set, HTTPS_PROXY is used. Windows' own proxy settings are not read.",
        parse=_parse_proxy_url,
        secret=True,
        fallbacks=("HTTPS_PROXY",),
    ),
    Option("NO_PROXY", "no_proxy", "Hosts to reach without the proxy, comma-separated.", parse=str.strip),
    Option(
        "CA_BUNDLE",
        "ca_bundle",
        "A PEM file of extra certificate authorities to trust (for example your firewall's). "
        "TLS verification is always on.",
        parse=lambda text: Path(text.strip()),
        is_path=True,
    ),
    Option(
        "LOG_DIR",
        "log_dir",
        "Folder for log files. Default: a 'logs' folder next to the .env file (or the current folder). "
        "A relative path, like every path in the .env file, is read from the .env file's folder.",
        parse=lambda text: Path(text.strip()),
        is_path=True,
    ),
    Option(
        "PAYLOAD_SCHEMA",
        "payload_schema",
        "Path to a newer DfE openapi.json (or a JSON Schema for one record) to validate against, "
        "instead of the schema built into this version.",
        parse=lambda text: Path(text.strip()),
        is_path=True,
    ),
)

OPTIONS_BY_ENV = {option.env: option for option in OPTIONS}


def keyring_settings() -> tuple[str, ...]:
    """The settings whose value may live in the keyring: every secret one, by every name it is read under."""
    return tuple(name for option in OPTIONS if option.secret for name in (option.env, *option.fallbacks))


# Every name the tool reads a setting from: each setting's, its older names, and the earlier
# tool's USER_SERVER and USER_DATABASE. A .env line with another name is warned about.
NAMES_READ = frozenset(
    [name for option in OPTIONS for name in (option.env, *option.aliases, *option.fallbacks)] + [*SERVER_AND_DATABASE]
)

# Names an earlier tool's .env could set that this tool does not read. The earlier tool read its
# .env into the environment, where its HTTP library (requests) found these; this one reads only its
# own settings. Each maps to this tool's setting for the same thing.
EARLIER_NAMES_IGNORED = {
    "REQUESTS_CA_BUNDLE": "CA_BUNDLE",
    "CURL_CA_BUNDLE": "CA_BUNDLE",
    "HTTP_PROXY": "PROXY_URL",
    "ALL_PROXY": "PROXY_URL",
}


@dataclass(frozen=True)
class Settings:
    """Everything the tool needs to know, validated. Build with :func:`load_settings`."""

    db_connection_string: Secret | None = None
    db_user: str | None = None
    db_password: Secret | None = None
    table_name: str = "ssd_api_data_staging"
    api_endpoint: str | None = None
    la_code: str | None = None
    token_endpoint: str | None = None
    client_id: str | None = None
    client_secret: Secret | None = None
    client_secret_secondary: Secret | None = None
    scope: str | None = None
    supplier_key: Secret | None = None
    supplier_key_secondary: Secret | None = None
    use_partial_payload: bool = True
    batch_size: int = MAX_BATCH_SIZE
    debug: bool = False
    http_timeout: float = 60.0
    max_retries: int = 5
    max_in_flight: int = 1
    min_request_interval_ms: int = 0
    max_runtime: float = 4 * 3600.0
    allow_live: bool = False
    https_proxy: Secret | None = None
    no_proxy: str | None = None
    ca_bundle: Path | None = None
    log_dir: Path | None = None
    payload_schema: Path | None = None
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
        if _reads_two_ways(self.api_endpoint or ""):
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
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


def load_settings(
    *,
    command: str,
    environ: Mapping[str, str],
    env_file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build Settings for ``command`` from flags, environment and ``.env``; report every problem at once.

    ``overrides`` maps attribute names to values already parsed from command-line flags.
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

    for option in OPTIONS:
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
    warnings = []
    for name, entry in env.entries.items():
        where = f"{name} on line {entry.line} of {env.path}"
        if name not in NAMES_READ:
            warnings.append(f"{where} {_why_not_read(name)}")
            continue
        option = next((o for o in OPTIONS if name in (o.env, *o.aliases, *o.fallbacks)), None)
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


def _why_not_read(name: str) -> str:
    """The rest of the warning for a .env name the tool does not read: what it may have meant."""
    upper = name.upper()
    if upper in EARLIER_NAMES_IGNORED:
        capitals = f" (write names in capitals: {upper})" if upper != name else ""
        return (
            f"is not read by this tool: the earlier tool's HTTP library took it from the environment. "
            f"This tool's setting for it is {EARLIER_NAMES_IGNORED[upper]}{capitals}"
        )
    if upper in NAMES_READ:
        return (
            f"is not read, so it is ignored: write it in capitals, {upper} (the earlier tool read any case on Windows)"
        )
    nearest = difflib.get_close_matches(upper, sorted(NAMES_READ), n=1, cutoff=0.7)
    if nearest:
        return f"is not a setting, so it is ignored: did you mean {nearest[0]}?"
    return "is not a setting of this tool, so it is ignored (configuration.md lists every setting)"
