"""Secrets kept in the operating system's keyring instead of the ``.env`` file.

On Windows the keyring is the Credential Manager of the account that runs the tool, so a
secret stored by ``set-secret`` is readable only by that Windows account. A setting refers
to one as ``keyring:<service>/<name>`` (the whole value); :func:`api_pipeline.settings.config.load_settings`
resolves it with :func:`resolve_keyring_reference`. ``keyring`` is imported only when such a value,
or ``set-secret``, needs it (imports inside functions here keep it lazy).

Each secret has an entry of its own, named as its reference after ``keyring:``
(``csc-api-pipeline/CLIENT_SECRET``, with the user name ``CLIENT_SECRET``): :func:`entry_name`.
Earlier versions kept every secret under the service alone, where keyring's Credential Manager
backend moves the first one to ``CLIENT_SECRET@csc-api-pipeline`` as soon as a second is stored;
those are still read, and storing a secret again removes its old copy.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import Any

from api_pipeline.errors import KeyringUnavailable

KEYRING_PREFIX = "keyring:"


def is_keyring_reference(text: str) -> bool:
    return text.strip().lower().startswith(KEYRING_PREFIX)


def parse_keyring_reference(text: str) -> tuple[str, str]:
    """``keyring:<service>/<name>`` -> (service, name). Raises ValueError naming the expected form."""
    body = text.strip()[len(KEYRING_PREFIX) :]
    service, _, name = body.rpartition("/")
    if not service.strip() or not name.strip():
        raise ValueError("expected keyring:<service>/<name>, for example keyring:csc-api-pipeline/CLIENT_SECRET")
    return service.strip(), name.strip()


def keyring_place() -> str:
    """Where the secret goes, in words an officer recognises."""
    return "the Windows Credential Manager" if sys.platform == "win32" else "the keyring"


def keyring_backend() -> Any:
    """The keyring backend to use, or :class:`KeyringUnavailable` saying why there is none."""
    try:
        import keyring  # start-up: only for keyring: values and set-secret
        from keyring.backends import fail, null
    except ImportError:
        raise KeyringUnavailable("keyring support is not installed (pip install keyring)") from None
    try:
        backend = keyring.get_keyring()
    except Exception as exc:  # a backend named in PYTHON_KEYRING_BACKEND or keyringrc.cfg that cannot be loaded
        raise KeyringUnavailable(
            f"the keyring named by PYTHON_KEYRING_BACKEND (or by keyring's own keyringrc.cfg file) cannot be used "
            f"({type(exc).__name__}: {exc}). Correct it, or remove it to use "
            f"{'the Windows Credential Manager' if sys.platform == 'win32' else 'the system keyring'}"
        ) from None
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
    if isinstance(backend, null.Keyring):
        raise KeyringUnavailable(
            f"the keyring chosen ({_backend_name(backend)}, by PYTHON_KEYRING_BACKEND or keyring's keyringrc.cfg "
            "file) keeps nothing. Remove that choice to use "
            f"{'the Windows Credential Manager' if sys.platform == 'win32' else 'the system keyring'}"
        )
    return backend


def entry_name(service: str, name: str) -> str:
    """The keyring entry (service) a secret is kept under: its reference after ``keyring:``.

    In the Windows Credential Manager this is the generic credential's name, so each secret has
    one entry, named predictably, whatever else is stored.
    """
    return f"{service}/{name}"


def entry_words(service: str, name: str) -> str:
    """Where :func:`store_secret` put a secret, as the keyring's own window shows it."""
    if sys.platform == "win32":
        return f'the generic credential "{entry_name(service, name)}" (user name {name})'
    return f'the service "{entry_name(service, name)}" (user name {name})'


def read_secret(service: str, name: str, *, also: Iterable[str] = ()) -> str | None:
    """The stored secret, None if there is none, or :class:`KeyringUnavailable`.

    Looked for under ``name`` then each of ``also`` (other spellings of the name), each in its
    own entry first (:func:`entry_name`), then where earlier versions kept it (under the service alone).
    """
    backend = keyring_backend()
    for each in dict.fromkeys((name, *also)):
        for entry in (entry_name(service, each), service):
            try:
                value = backend.get_password(entry, each)
            except Exception as exc:  # backends raise their own errors (DBus, Win32)
                raise KeyringUnavailable(f"the keyring could not be read ({what_went_wrong(exc)})") from None
            if isinstance(value, str):
                return value
    return None


def store_secret(service: str, name: str, value: str) -> bool:
    """Store the secret in its own entry and read it back; True when a copy an earlier version
    kept (under the service alone) was then removed. :class:`KeyringUnavailable` if the keyring
    refused it or does not give it back (a keyring that keeps nothing)."""
    backend = keyring_backend()
    entry = entry_name(service, name)
    try:
        _write(backend, entry, name, value)
        stored = backend.get_password(entry, name)
    except Exception as exc:
        raise KeyringUnavailable(f"the keyring refused to store it ({what_went_wrong(exc)})") from None
    if stored != value:
        raise KeyringUnavailable(
            f"the keyring ({_backend_name(backend)}) took it but did not give it back when asked, so it keeps no "
            "secrets"
        )
    try:
        if backend.get_password(service, name) is None:
            return False
        backend.delete_password(service, name)
    except Exception:  # noqa: BLE001 - the old copy stays; the new entry is read first
        return False
    return True


def _write(backend: Any, entry: str, name: str, value: str) -> None:
    """``backend.set_password``, except for the Credential Manager, which is written in place.

    keyring's Credential Manager backend, asked to store where an entry already is, first copies
    that entry to ``<user name>@<entry>``: storing a secret again (a new client secret from DfE)
    would leave the old one behind under another name. Its own writer puts it in the one entry.
    """
    from keyring.backends.Windows import WinVaultKeyring  # importable everywhere; usable on Windows only

    write_in_place = getattr(backend, "_set_password", None) if isinstance(backend, WinVaultKeyring) else None
    if write_in_place is not None:
        write_in_place(entry, name, value)
    else:
        backend.set_password(entry, name, value)


# What Windows' Credential Manager errors mean for the tool, by error code.
WINDOWS_HINTS = {
    1312: 'this account has no Credential Manager in this logon: a scheduled task set to "Do not store password" '
    "(or started by a service with no user profile) cannot read it. Untick that in the task's General tab and "
    "give the account's password, or keep the secret in a .env file only this account can read",
    5: "access to the Credential Manager was denied to this account",
}


def what_went_wrong(exc: BaseException) -> str:
    """An error from a keyring backend in words: Windows' error code and text, with a hint where one
    helps; for anything else its kind only (a backend's message could hold anything)."""
    code = getattr(exc, "winerror", None)
    if not isinstance(code, int):
        return type(exc).__name__
    words = str(getattr(exc, "strerror", None) or "").strip().rstrip(".")
    text = f"Windows error {code}" + (f": {words}" if words else "")
    hint = WINDOWS_HINTS.get(code)
    return f"{text}; {hint}" if hint else text


def _backend_name(backend: Any) -> str:
    return f"{type(backend).__module__}.{type(backend).__qualname__}"


def keyring_name(name: str, setting_names: Iterable[str]) -> str:
    """The name a secret is kept under: a setting's name in capitals, however it was typed (so
    ``set-secret client_secret`` and a reference ending ``/client_secret`` meet, and storing it again
    replaces it); any other name exactly as written."""
    name = name.strip()
    return name.upper() if name.upper() in set(setting_names) else name


def command_word(text: str) -> str:
    """``text`` as one word of a command line to copy: quoted when it has a space or a character a shell reads."""
    return text if re.fullmatch(r"[A-Za-z0-9_.:/\\@+=-]+", text) else f'"{text}"'


def resolve_keyring_reference(
    variable: str, text: str, problems: list[str], *, setting_names: Iterable[str] = ()
) -> str | None:
    """The secret a ``keyring:`` value points at, or None with the reason added to ``problems``.

    ``setting_names``: the settings that may be kept in the keyring, whose names are read in any
    case (:func:`keyring_name`). ``keyring`` is imported only here, so a .env without keyring
    references never loads it.
    """
    try:
        service, name = parse_keyring_reference(text)
    except ValueError as exc:
        problems.append(f"{variable}: {exc}")
        return None
    reference = f"{KEYRING_PREFIX}{service}/{name}"
    try:
        value = read_secret(service, keyring_name(name, setting_names), also=(name,))
    except KeyringUnavailable as exc:
        problems.append(f"{variable}: cannot read {reference}: {exc}")
        return None
    if value is None:
        problems.append(
            f"{variable}: {reference} is not in {keyring_place()}. Store it with: csc_api_pipeline.exe set-secret "
            f"{command_word(name)} --service {command_word(service)} (as the Windows account that runs the tool)"
        )
        return None
    if not value.strip():
        problems.append(f"{variable}: {reference} is empty in {keyring_place()}")
        return None
    return value
