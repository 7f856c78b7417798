"""Hiding secrets in text: the settings' secrets, passwords in connection strings and URLs, and
bearer tokens, wherever the tool writes what it was given or what it was told (DESIGN §9).

Every message, log line, report and summary passes through :func:`mask_secrets` (or, for the
tool's own messages, which hold no unknown secret, :func:`hide_secrets`).

Which secrets are live is kept in one place, :data:`LIVE_SECRETS`: the settings' secrets as a
command loads them, and each secret learnt during the run (every token the token endpoint
issues). The log filter, the error line and traceback ``cli.main`` prints, and what an answer
from DfE or Azure may not echo all read it; none keeps a copy of its own.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable

from api_pipeline.settings.config import Secret

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


class LiveSecrets:
    """The registry of the secrets live in this process, revealed, to be hidden wherever they could appear.

    Safe from any thread: a token arrives on whichever thread fetched it, while others log. The
    set is replaced, never changed, so a reader needs no lock.
    """

    def __init__(self) -> None:
        self._values: frozenset[str] = frozenset()
        self._adding = threading.Lock()

    def add(self, *values: Secret | str | None) -> None:
        """Hide these too from now on (a :class:`Secret` is revealed here; None and empty are skipped)."""
        revealed = {value.reveal() if isinstance(value, Secret) else value for value in values}
        with self._adding:
            self._values = self._values | {value for value in revealed if value}

    def values(self) -> frozenset[str]:
        return self._values

    def clear(self) -> None:
        """Forget them all: the command that had them is over."""
        with self._adding:
            self._values = frozenset()


# The process's live secrets. One registry for the process, as its logging is one: a secret
# learnt anywhere during a command must be hidden everywhere, from every thread, until it ends.
LIVE_SECRETS = LiveSecrets()


def remember_secret(*values: Secret | str | None) -> None:
    """Hide these everywhere from now on: a setting's secret, or one learnt during the run, such as its token."""
    LIVE_SECRETS.add(*values)


def known_secrets() -> frozenset[str]:
    """Every secret live in this process: the settings' loaded so far, and those learnt since."""
    return LIVE_SECRETS.values()
