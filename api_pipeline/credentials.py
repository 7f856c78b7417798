"""``set-secret``: put a secret in the operating system's keyring, so the ``.env`` file holds none.

Which settings may live there comes from :data:`api_pipeline.config.OPTIONS`; reading and
storing is :mod:`api_pipeline.secret_store`'s.
"""

from __future__ import annotations

import getpass
from collections.abc import Callable
from typing import Any

from api_pipeline.config import OPTIONS
from api_pipeline.errors import ConfigError, ExitCode
from api_pipeline.secret_store import (
    KEYRING_PREFIX,
    KeyringUnavailable,
    is_keyring_reference,
    keyring_backend,
    keyring_place,
    store_secret,
)

DEFAULT_SERVICE = "csc-api-pipeline"


def keyring_variables() -> tuple[str, ...]:
    """The settings whose value may live in the keyring: every secret one, by every name it is read under."""
    names: list[str] = []
    for option in OPTIONS:
        if option.secret:
            names.extend((option.env, *option.fallbacks))
    return tuple(names)


def set_secret_command(
    name: str,
    ctx: Any,
    *,
    service: str = DEFAULT_SERVICE,
    prompt: Callable[[str], str] | None = None,
) -> int:
    """``set-secret NAME``: ask for a secret twice without echo, store it, print the ``.env`` line.

    Reads no settings, so it works before the ``.env`` is complete. ``prompt`` is for tests;
    by default :func:`getpass.getpass`, which does not show what is typed.
    """
    variable = name.strip().upper()
    allowed = keyring_variables()
    if variable not in allowed:
        raise ConfigError(f"set-secret: {name} cannot be kept in the keyring; choose one of {', '.join(allowed)}")
    service = service.strip().strip("/")
    if not service:
        raise ConfigError("set-secret: --service must not be empty")
    try:  # before asking for anything: a machine with no keyring cannot store what is typed
        keyring_backend()
    except KeyringUnavailable as exc:
        raise ConfigError(f"set-secret: cannot store {variable}: {exc}") from None
    ask = prompt or getpass.getpass
    first = ask(f"{variable} (what you type is not shown): ")
    if not first.strip():
        raise ConfigError("set-secret: nothing was typed, so nothing was stored")
    if is_keyring_reference(first):
        raise ConfigError(f"set-secret: type the secret itself, not a {KEYRING_PREFIX} reference")
    if ask(f"{variable} again, to confirm: ") != first:
        raise ConfigError("set-secret: the two entries differ, so nothing was stored")
    _check_value(variable, first)
    try:
        store_secret(service, variable, first)
    except KeyringUnavailable as exc:
        raise ConfigError(f"set-secret: cannot store {variable}: {exc}") from None
    account = ctx.environ.get("USERNAME") or ctx.environ.get("USER") or "this account"
    ctx.print(f"Stored {variable} in {keyring_place()} (service {service}) for the account {account}.")
    ctx.print("Put this line in your .env in place of the secret, and delete the secret from the .env:")
    ctx.print("")
    ctx.print(f"{variable}={KEYRING_PREFIX}{service}/{variable}")
    ctx.print("")
    ctx.print(
        "Only this account can read it: run the scheduled task as the same account, or run set-secret "
        "again as the task's account. Then check with test-endpoint (or test-db for DB_PASSWORD)."
    )
    return ExitCode.OK


def _check_value(variable: str, value: str) -> None:
    """Catch a mistyped proxy address now rather than at 2 a.m.; the value itself is never shown."""
    option = next((o for o in OPTIONS if variable in (o.env, *o.fallbacks)), None)
    if option is None or option.attr in {"db_password", "db_connection_string"}:
        return
    try:
        option.parse(value)
    except ValueError as exc:
        raise ConfigError(f"set-secret: {variable}: <hidden> {exc}; nothing was stored") from None
