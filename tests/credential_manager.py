"""The Windows Credential Manager as keyring's own backend sees it, on any system.

keyring's ``WinVaultKeyring`` calls four things of ``win32cred`` (CredRead, CredWrite, CredDelete
and two constants) and raises ``pywintypes.error``. :func:`credential_manager` puts stand-ins for
those into its module, over a dict of generic credentials keyed by target name (case-insensitive,
as Windows' are), so the backend's real code (where it puts an entry, what it moves when a second
user name is stored under a service, how it reads one back) runs here as it does on Windows.
The real Credential Manager is exercised under wine by packaging/smoke_test_exe.sh.
Synthetic test secrets only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from keyring.backends import Windows

NOT_FOUND = 1168  # ERROR_NOT_FOUND: what CredRead says for a target that is not there


class Win32Error(Exception):
    """As ``win32ctypes.pywin32.pywintypes.error``: (winerror, funcname, strerror)."""

    def __init__(self, winerror: int, funcname: str, strerror: str) -> None:
        super().__init__(winerror, funcname, strerror)
        self.winerror, self.funcname, self.strerror = winerror, funcname, strerror


@dataclass
class CredentialManager:
    """Generic credentials by target name; ``failing`` makes every call fail with that Windows error."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)
    failing: tuple[int, str] | None = None
    CRED_TYPE_GENERIC: int = 1
    CRED_PERSIST_ENTERPRISE: int = 3

    def targets(self) -> dict[str, str]:
        """Target name -> user name, as the Credential Manager window lists them."""
        return {entry["TargetName"]: entry["UserName"] for entry in self.entries.values()}

    def _check(self, funcname: str) -> None:
        if self.failing is not None:
            raise Win32Error(self.failing[0], funcname, self.failing[1])

    def CredRead(self, Type: int, TargetName: str) -> dict[str, Any]:  # noqa: N802, N803 - win32cred's names
        self._check("CredRead")
        entry = self.entries.get(TargetName.lower())
        if entry is None:
            raise Win32Error(NOT_FOUND, "CredRead", "Element not found.")
        return dict(entry, CredentialBlob=entry["CredentialBlob"].encode("utf-16-le"))

    def CredWrite(self, credential: dict[str, Any], flags: int) -> None:  # noqa: N802 - win32cred's name
        self._check("CredWrite")
        self.entries[credential["TargetName"].lower()] = dict(credential)

    def CredDelete(self, Type: int, TargetName: str) -> None:  # noqa: N802, N803 - win32cred's names
        self._check("CredDelete")
        if self.entries.pop(TargetName.lower(), None) is None:
            raise Win32Error(NOT_FOUND, "CredDelete", "Element not found.")


@contextlib.contextmanager
def credential_manager() -> Iterator[CredentialManager]:
    """keyring's real ``WinVaultKeyring`` over a :class:`CredentialManager`, as the keyring in use."""
    import keyring

    store = CredentialManager()
    saved = {name: getattr(Windows, name, None) for name in ("win32cred", "pywintypes")}
    Windows.win32cred = store  # type: ignore[attr-defined]
    Windows.pywintypes = type("pywintypes", (), {"error": Win32Error})  # type: ignore[attr-defined]
    previous = keyring.get_keyring()
    keyring.set_keyring(Windows.WinVaultKeyring())
    try:
        yield store
    finally:
        keyring.set_keyring(previous)
        for name, value in saved.items():
            if value is None:
                delattr(Windows, name)
            else:
                setattr(Windows, name, value)
