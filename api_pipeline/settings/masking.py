"""Hiding secrets in text: the settings' secrets, passwords in connection strings and URLs, and
bearer tokens, wherever the tool writes what it was given or what it was told (DESIGN §9).

Every message, log line, report and summary passes through :func:`mask_secrets` (or, for the
tool's own messages, which hold no unknown secret, :func:`hide_secrets`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "<hidden>"
# Password=...; PWD=...; in connection strings, and user:password@ in URLs.
_CONN_PASSWORD = re.compile(r"(?i)\b(pwd|password)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)")  # ODBC: '}}' is a '}'
_URL_PASSWORD = re.compile(r"(?i)(://[^/:@\s]+:)([^@/\s]+)@")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def hide_secrets(text: str, secrets: Iterable[str]) -> str:
    """Hide each of these known secrets (for the tool's own messages, which hold no unknown ones)."""
    for secret in sorted(secrets, key=len, reverse=True):  # a secret inside a longer one goes second
        if secret and len(secret) >= 4:
            text = text.replace(secret, MASK)
    return text


def mask_secrets(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide secrets, connection-string passwords, proxy passwords and bearer tokens."""
    text = hide_secrets(text, secrets)
    text = _CONN_PASSWORD.sub(lambda m: f"{m.group(1)}={MASK}", text)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group(1)}{MASK}@", text)
    return _BEARER.sub(lambda m: f"{m.group(1)}{MASK}", text)
