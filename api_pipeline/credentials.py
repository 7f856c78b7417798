"""Secrets kept in the operating system's keyring instead of the ``.env`` file.

On Windows the keyring is the Credential Manager of the account that runs the tool, so a
secret stored by ``set-secret`` is readable only by that Windows account. A setting refers
to one as ``keyring:<service>/<name>`` (the whole value); :func:`api_pipeline.config.load_settings`
resolves it. ``keyring`` is imported only when such a value, or ``set-secret``, needs it.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from typing import Any

from api_pipeline.config import KEYRING_PREFIX, OPTIONS, is_keyring_reference
from api_pipeline.errors import ConfigError, ExitCode

DEFAULT_SERVICE = "csc-api-pipeline"


class KeyringUnavailable(Exception):
    """The keyring cannot be used on this machine; the message says why, never a secret."""


def keyring_variables() -> tuple[str, ...]:
    """The settings whose value may live in the keyring: every secret one, by every name it is read under."""
    names: list[str] = []
    for option in OPTIONS:
        if option.secret:
            names.extend((option.env, *option.fallbacks))
    return tuple(names)


def keyring_place() -> str:
    """Where the secret goes, in words an officer recognises."""
    return "the Windows Credential Manager" if sys.platform == "win32" else "the keyring"


def _backend() -> Any:
    """The keyring backend to use, or :class:`KeyringUnavailable` saying why there is none."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        raise KeyringUnavailable("keyring support is not installed (pip install keyring)") from None
    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring) and sys.platform == "win32":
        # A frozen exe may lack the package metadata keyring uses to find backends; the
        # Credential Manager backend is always there on Windows, so ask for it by name.
        from keyring.backends.Windows import WinVaultKeyring

        backend = WinVaultKeyring()
    if isinstance(backend, fail.Keyring):
        raise KeyringUnavailable(
            "no keyring is available on this machine (on Windows it is the Credential Manager; on Linux a "
            "Secret Service such as GNOME Keyring is needed)"
        )
    return backend


def read_secret(service: str, name: str) -> str | None:
    """The stored secret, None if there is none, or :class:`KeyringUnavailable`."""
    backend = _backend()
    try:
        value = backend.get_password(service, name)
    except Exception as exc:  # backends raise their own errors (DBus, Win32); the class name is enough
        raise KeyringUnavailable(f"the keyring could not be read ({type(exc).__name__})") from None
    return value if isinstance(value, str) else None


def store_secret(service: str, name: str, value: str) -> None:
    backend = _backend()
    try:
        backend.set_password(service, name, value)
    except Exception as exc:
        raise KeyringUnavailable(f"the keyring refused to store it ({type(exc).__name__})") from None


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
        _backend()
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
