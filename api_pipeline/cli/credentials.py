"""``set-secret``: put a secret in the operating system's keyring, so the ``.env`` file holds none.

Any name a ``keyring:<service>/<name>`` reference can use may be stored; the names of the settings
that may live there (from :data:`api_pipeline.settings.config.OPTIONS`) are known in any case, and their
values checked. Reading and storing is :mod:`api_pipeline.settings.secret_store`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from api_pipeline.cli.console import console_secret_prompt, read_piped_line, stdin_is_interactive
from api_pipeline.errors import ConfigError, ExitCode, KeyringUnavailable
from api_pipeline.settings.config import NAMES_READ, OPTIONS, keyring_settings
from api_pipeline.settings.context import Context
from api_pipeline.settings.secret_store import (
    KEYRING_PREFIX,
    command_word,
    entry_words,
    is_keyring_reference,
    keyring_backend,
    keyring_name,
    keyring_place,
    store_secret,
)

DEFAULT_SERVICE = "csc-api-pipeline"


def keyring_variables() -> tuple[str, ...]:
    """The settings whose value may live in the keyring: every secret one, by every name it is read under."""
    return keyring_settings()


def set_secret_command(
    name: str,
    ctx: Context,
    *,
    service: str = DEFAULT_SERVICE,
    prompt: Callable[[str], str] | None = None,
) -> int:
    """``set-secret NAME``: ask for a secret twice without echo, store it, print the ``.env`` line.

    ``NAME`` is a setting's name in any case (stored in capitals), or any other name a ``keyring:``
    reference can end with, kept as written. Reads no settings, so it works before the ``.env`` is
    complete. ``prompt`` is for tests; by default the console is asked without showing what is
    typed. With no console to type at (a deployment script, a remote shell, ``< NUL``), the secret
    is the first line of standard input, asked once; nothing there (or nothing in time) is exit 2
    saying how to run it.
    """
    settings = keyring_variables()
    variable = keyring_name(name, settings)
    _check_name(variable)
    if variable.upper() in NAMES_READ and variable.upper() not in settings:
        raise ConfigError(
            f"set-secret: {variable.upper()} is not a secret, so it cannot be kept in the keyring: put its value in "
            f".env as it is. The settings that can be kept there: {', '.join(settings)}"
        )
    service = service.strip().strip("/")
    if not service:
        raise ConfigError("set-secret: --service must not be empty")
    try:  # before asking for anything: a machine with no keyring cannot store what is typed
        keyring_backend()
    except KeyringUnavailable as exc:
        raise ConfigError(f"set-secret: cannot store {variable}: {exc}") from None
    ask = prompt or (console_secret_prompt() if stdin_is_interactive() else None)
    if ask is None:
        first = _piped_secret(variable)
    else:
        first = _typed(ask, f"{variable} (what you type is not shown): ")
        if not first.strip():
            raise ConfigError("set-secret: nothing was typed, so nothing was stored")
    if is_keyring_reference(first):
        raise ConfigError(f"set-secret: give the secret itself, not a {KEYRING_PREFIX} reference")
    if ask is not None and _typed(ask, f"{variable} again, to confirm: ") != first:
        raise ConfigError("set-secret: the two entries differ, so nothing was stored")
    _check_value(variable, first)
    try:
        moved = store_secret(service, variable, first)
    except KeyringUnavailable as exc:
        raise ConfigError(f"set-secret: cannot store {variable}: {exc}; nothing was stored") from None
    account = ctx.environ.get("USERNAME") or ctx.environ.get("USER") or "this account"
    reference = f"{KEYRING_PREFIX}{service}/{variable}"
    ctx.print(f"Stored {variable} in {keyring_place()} for the account {account}, as {entry_words(service, variable)}.")
    if moved:
        ctx.print(f"The copy an earlier version kept under {service} alone was removed: this entry replaces it.")
    if variable in settings:
        ctx.print("Put this line in your .env in place of the secret, and delete the secret from the .env:")
        ctx.print("")
        ctx.print(f"{variable}={reference}")
    else:
        ctx.print(
            f"Put {reference} in your .env as the value of the setting it is for, in place of the secret, for example:"
        )
        ctx.print("")
        ctx.print(f"{_setting_it_may_be_for(variable, settings)}={reference}")
    ctx.print("")
    ctx.print(
        "Only this account can read it: run the scheduled task as the same account, or run set-secret "
        "again as the task's account. Then check with test-endpoint (or test-db for DB_PASSWORD)."
    )
    return ExitCode.OK


def _setting_it_may_be_for(name: str, settings: tuple[str, ...]) -> str:
    """The longest setting name inside ``name`` (``live_client_secret``: CLIENT_SECRET), for the example line."""
    inside = [setting for setting in settings if setting in name.upper()]
    return max(inside, key=len) if inside else "CLIENT_SECRET"


def _check_name(name: str) -> None:
    """A name a ``keyring:<service>/<name>`` reference can end with: not empty, no '/', no control character."""
    if not name:
        raise ConfigError("set-secret: give the name to store the secret under, such as CLIENT_SECRET")
    if "/" in name:
        raise ConfigError(
            f"set-secret: {command_word(name)} has a '/': in keyring:SERVICE/NAME the name is what follows the "
            "last '/'. Give the service with --service"
        )
    if any(ord(char) < 32 or ord(char) == 127 for char in name):
        raise ConfigError("set-secret: the name has a control character (a tab, a line end, ...)")


def _typed(ask: Callable[[str], str], prompt: str) -> str:
    """What was typed; "" when the input ended first; a line too long is refused."""
    try:
        return ask(prompt)
    except EOFError:
        return ""
    except ValueError as exc:
        raise ConfigError(f"set-secret: {exc}; nothing was stored") from None


def _piped_secret(variable: str) -> str:
    """The secret as the first line of standard input, for a run with no console to type at."""
    how = (
        "Run set-secret in a console window (Command Prompt or PowerShell) to type it, or give it as one line on "
        f"standard input, for example: type secret.txt | csc_api_pipeline.exe set-secret {variable}"
    )
    try:
        return read_piped_line(_stdin_fd())
    except EOFError:
        raise ConfigError(
            f"set-secret: there is no console to type {variable} at, and standard input was empty, so nothing was "
            f"stored. {how}"
        ) from None
    except TimeoutError as exc:
        raise ConfigError(
            f"set-secret: there is no console to type {variable} at, and {exc}, so nothing was stored. {how}"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"set-secret: {exc}; nothing was stored") from None


def _stdin_fd() -> int:
    """Standard input's file descriptor; EOFError when there is none to read (closed, or replaced)."""
    try:
        return sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is both of the last two
        raise EOFError("no standard input") from None


def _check_value(variable: str, value: str) -> None:
    """Catch a mistyped proxy address now rather than at 2 a.m.; the value itself is never shown."""
    option = next((o for o in OPTIONS if variable in (o.env, *o.fallbacks)), None)
    if option is None or option.attr in {"db_password", "db_connection_string"}:
        return
    try:
        option.parse(value)
    except ValueError as exc:
        raise ConfigError(f"set-secret: {variable}: <hidden> {exc}; nothing was stored") from None
