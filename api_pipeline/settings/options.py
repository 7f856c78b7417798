"""What a setting is, and how its text is read: :class:`Option` (a setting's name, help and parser),
:func:`setting` (one row of :class:`~api_pipeline.settings.config.Settings`), the limits the
settings keep to, and the parsers, each of which says in a sentence what it expects.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import Any
from urllib.parse import unquote, urlsplit

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


# The key, in a Settings field's metadata, of the Option that reads it.
OPTION = "option"


def setting(
    env: str,
    help: str,
    *,
    default: Any = None,
    parse: Callable[[str], Any] = str,
    secret: bool = False,
    aliases: tuple[str, ...] = (),
    needed_for: frozenset[str] = frozenset(),
    fallbacks: tuple[str, ...] = (),
    is_path: bool = False,
) -> Any:
    """A field of :class:`~api_pipeline.settings.config.Settings` that is a setting: its default, and
    the :class:`Option` that reads it, declared once, in one row.

    The Option's ``attr`` is the field's name, filled in by :func:`options_of`; so a setting cannot
    be read without a field to hold it, nor a field have a default other than its setting's.
    """
    option = Option(
        env=env,
        attr="",
        help=help,
        default=default,
        parse=parse,
        secret=secret,
        aliases=aliases,
        needed_for=needed_for,
        fallbacks=fallbacks,
        is_path=is_path,
    )
    return field(default=default, metadata={OPTION: option})


def options_of(settings_class: type) -> tuple[Option, ...]:
    """The settings of a dataclass declared with :func:`setting`, in the order of its fields."""
    return tuple(
        replace(each.metadata[OPTION], attr=each.name) for each in fields(settings_class) if OPTION in each.metadata
    )


def parse_bool(text: str) -> bool:
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


def parse_batch_size(text: str) -> int:
    expected = f"must be between 1 and {MAX_BATCH_SIZE} (DfE rejects larger batches with 413)"
    value = _whole_number(text, expected)
    if not 1 <= value <= MAX_BATCH_SIZE:
        raise ValueError(expected)
    return value


def parse_in_flight(text: str) -> int:
    expected = f"must be between 1 and {MAX_IN_FLIGHT}"
    value = _whole_number(text, expected)
    if not 1 <= value <= MAX_IN_FLIGHT:
        raise ValueError(expected)
    return value


def parse_timeout(text: str) -> float:
    expected = f"must be a number of seconds above 0 and at most {MAX_HTTP_TIMEOUT:g}, for example 60 or 2.5"
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"is not a number: {expected}") from None
    if not 0 < value <= MAX_HTTP_TIMEOUT:  # NaN and infinity fail this too
        raise ValueError(expected)
    return value


def parse_non_negative_int(text: str) -> int:
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


def parse_duration(text: str) -> float:
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


def parse_header_secret(text: str) -> str:
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


def parse_credential(text: str) -> str:
    """CLIENT_ID, CLIENT_SECRET, SCOPE: trimmed, and without invisible characters pasted in by accident."""
    value = text.strip()
    if any(unicodedata.category(char) in _INVISIBLE for char in value):
        raise ValueError(
            "contains an invisible character (a zero-width space, a byte-order mark or a control character, "
            "often pasted in by accident): type or paste it again"
        )
    return value


def parse_table_name(text: str) -> str:
    value = text.strip()
    if not TABLE_NAME_PATTERN.match(value):
        raise ValueError(
            "must be a plain table name, optionally schema-qualified (letters, digits, underscores), "
            "for example ssd_api_data_staging or ssd_development.ssd_api_data_staging"
        )
    return value


def parse_la_code(text: str) -> str:
    value = text.strip()
    if not LA_CODE_PATTERN.match(value):
        raise ValueError("must be your council's 3-digit DfE LA code, for example 846")
    return value


def reads_two_ways(url: str) -> str | None:
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


def parse_https_url(text: str) -> str:
    value = text.strip().rstrip("/")
    problem = reads_two_ways(value)
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


def parse_proxy_url(text: str) -> str:
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


def parse_scope(text: str) -> str:
    value = parse_credential(text)
    if not value:
        raise ValueError("must not be empty")
    return value


# ---------------------------------------------------------------------------
# Alerts (NOTIFY_ON and its channels: api_pipeline.notify).
# ---------------------------------------------------------------------------

NOTIFY_ON_CHOICES = ("never", "failure", "problems", "always")
WEBHOOK_FORMATS = ("teams", "slack", "json")
_EMAIL_ADDRESS = re.compile(r"[^@\s<>\"(),;:]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*")


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    return parse


parse_notify_on = _one_of(NOTIFY_ON_CHOICES)
parse_webhook_format = _one_of(WEBHOOK_FORMATS)


def parse_port(text: str) -> int:
    expected = "must be a port number from 1 to 65535, for example 587"
    value = _whole_number(text, expected)
    if not 1 <= value <= 65535:
        raise ValueError(expected)
    return value


def parse_email_address(text: str) -> str:
    """One plain address (``name@council.gov.uk``): no display name, and nothing that could add a header."""
    value = text.strip()
    if not _EMAIL_ADDRESS.fullmatch(value):
        raise ValueError("must be one e-mail address, such as csc-alerts@council.gov.uk")
    return value


def parse_email_list(text: str) -> tuple[str, ...]:
    """Addresses separated by commas (or semicolons, as Outlook writes them)."""
    parts = [part.strip() for part in text.replace(";", ",").split(",") if part.strip()]
    if not parts:
        raise ValueError("names no e-mail address; give one or more, separated by commas")
    bad = [part for part in parts if not _EMAIL_ADDRESS.fullmatch(part)]
    if bad:
        raise ValueError(
            f"has {len(bad)} part(s) that are not plain e-mail addresses; write them like a@council.gov.uk, "
            "separated by commas"
        )
    return tuple(parts)


COMMON = frozenset({"run", "test-endpoint"})
DATABASE = frozenset({"run", "validate", "status", "test-db", "test-schema", "init-db"})
