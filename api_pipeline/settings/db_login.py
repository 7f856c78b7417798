"""DB_USER and DB_PASSWORD added to the connection string, each in exactly one place.

A connection string that names its own user or password, uses Windows integrated security, or
is SQLite gets neither (a problem says which to remove). The earlier tool's USER_SERVER +
USER_DATABASE form is SQL Server with Windows integrated security; with DB_USER its SQL login
takes the place of Windows authentication. :func:`api_pipeline.settings.config.load_settings` calls these
with the revealed text and keeps what they return secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_ODBC_PASSWORD_KEY = re.compile(r"(?i)(?:^|;)\s*(?:pwd|password)\s*=")
_ODBC_INTEGRATED = re.compile(
    r"(?i)(?:^|;)\s*(?:trusted_connection\s*=\s*yes|integrated\s+security\s*=\s*(?:sspi|true)"
    r"|authentication\s*=\s*activedirectoryintegrated)"
)
_ODBC_USER_KEY = re.compile(r"(?i)(?:^|;)\s*(?:uid|user\s+id|user)\s*=")
_TRUSTED_CONNECTION = re.compile(r"(?i)trusted_connection\s*=\s*yes;?")
# The earlier tool's two settings that make a connection string, read when no source has one.
SERVER_AND_DATABASE = ("USER_SERVER", "USER_DATABASE")


def _odbc_braced(value: str) -> str:
    return "{" + value.replace("}", "}}") + "}"


def add_db_user(connection: str, user: str, from_parts: bool, problems: list[str]) -> str | None:
    """The connection string with DB_USER as ``UID={...}``; None with a problem when that cannot be right.

    From USER_SERVER + USER_DATABASE the SQL login replaces Windows authentication, as in the
    earlier tool's sender; a connection string of the user's own must not name a user already.
    """
    text = connection.strip()
    if text.lower().startswith("sqlite:"):
        problems.append("DB_USER: a SQLite file has no login; remove DB_USER")
        return None
    if _ODBC_USER_KEY.search(text):
        problems.append("DB_USER: DB_CONNECTION_STRING already names a user (UID= or User ID=); keep only one")
        return None
    if from_parts:
        text = _TRUSTED_CONNECTION.sub("", text)
    elif _ODBC_INTEGRATED.search(text):
        problems.append(
            "DB_USER: DB_CONNECTION_STRING uses Windows integrated security, which needs no user; "
            "remove DB_USER or the Trusted_Connection setting"
        )
        return None
    return f"{text.rstrip(';')};UID={_odbc_braced(user)};"


def add_db_password(connection: str, password: str, problems: list[str]) -> str | None:
    """DB_CONNECTION_STRING with DB_PASSWORD added as ``PWD={...}``; None with a problem when that cannot be right.

    One rule: the password is in exactly one place. A connection string that has its own
    ``PWD=``/``Password=``, uses Windows integrated security, or is SQLite gets no DB_PASSWORD.
    """
    text = connection.strip()
    if text.lower().startswith("sqlite:"):
        problems.append("DB_PASSWORD: a SQLite file has no password; remove DB_PASSWORD")
        return None
    if _ODBC_PASSWORD_KEY.search(text):
        problems.append(
            "DB_PASSWORD: DB_CONNECTION_STRING already has a password (PWD= or Password=); keep only one of them"
        )
        return None
    if _ODBC_INTEGRATED.search(text):
        problems.append(
            "DB_PASSWORD: DB_CONNECTION_STRING uses Windows integrated security, which needs no password; "
            "remove DB_PASSWORD or the Trusted_Connection setting"
        )
        return None
    return f"{text.rstrip(';')};PWD={_odbc_braced(password)};"


def integrated_security_string(environ: Mapping[str, str], file_values: Mapping[str, str]) -> tuple[str, str] | None:
    """Upstream's USER_SERVER + USER_DATABASE form: SQL Server with Windows integrated security.

    With DB_USER, :func:`add_db_user` turns it into an SQL login (DB_PASSWORD adds the password).
    """

    def get(name: str) -> str:
        return (environ.get(name) or file_values.get(name) or "").strip()

    server, database = (get(name) for name in SERVER_AND_DATABASE)
    if server and database:
        return "USER_SERVER", f"SERVER={server};DATABASE={database};Trusted_Connection=yes;"
    return None
