"""Secrets kept in the operating system's keyring instead of the ``.env`` file.

On Windows the keyring is the Credential Manager of the account that runs the tool, so a
secret stored by ``set-secret`` is readable only by that Windows account. A setting refers
to one as ``keyring:<service>/<name>`` (the whole value); :func:`api_pipeline.config.load_settings`
resolves it with :func:`resolve_keyring_reference`. ``keyring`` is imported only when such a value,
or ``set-secret``, needs it (imports inside functions here keep it lazy).
"""

from __future__ import annotations

import sys
from typing import Any

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


class KeyringUnavailable(Exception):
    """The keyring cannot be used on this machine; the message says why, never a secret."""


def keyring_place() -> str:
    """Where the secret goes, in words an officer recognises."""
    return "the Windows Credential Manager" if sys.platform == "win32" else "the keyring"


def keyring_backend() -> Any:
    """The keyring backend to use, or :class:`KeyringUnavailable` saying why there is none."""
    try:
        import keyring  # start-up: only for keyring: values and set-secret
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
    backend = keyring_backend()
    try:
        value = backend.get_password(service, name)
    except Exception as exc:  # backends raise their own errors (DBus, Win32); the class name is enough
        raise KeyringUnavailable(f"the keyring could not be read ({type(exc).__name__})") from None
    return value if isinstance(value, str) else None


def store_secret(service: str, name: str, value: str) -> None:
    backend = keyring_backend()
    try:
        backend.set_password(service, name, value)
    except Exception as exc:
        raise KeyringUnavailable(f"the keyring refused to store it ({type(exc).__name__})") from None


def resolve_keyring_reference(variable: str, text: str, problems: list[str]) -> str | None:
    """The secret a ``keyring:`` value points at, or None with the reason added to ``problems``.

    ``keyring`` is imported only here, so a .env without keyring references never loads it.
    """
    try:
        service, name = parse_keyring_reference(text)
    except ValueError as exc:
        problems.append(f"{variable}: {exc}")
        return None
    reference = f"{KEYRING_PREFIX}{service}/{name}"
    try:
        value = read_secret(service, name)
    except KeyringUnavailable as exc:
        problems.append(f"{variable}: cannot read {reference}: {exc}")
        return None
    if value is None:
        problems.append(
            f"{variable}: {reference} is not in {keyring_place()}. Store it with: "
            f"csc_api_pipeline.exe set-secret {name} --service {service} (as the Windows account that runs the tool)"
        )
        return None
    if not value.strip():
        problems.append(f"{variable}: {reference} is empty in {keyring_place()}")
        return None
    return value
