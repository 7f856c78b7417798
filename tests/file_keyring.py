"""A keyring backend that keeps its secrets in a JSON file, for ``set-secret`` run as a program.

A subprocess picks it with ``PYTHON_KEYRING_BACKEND=file_keyring.FileKeyring`` (``tests`` on
``PYTHONPATH``) and ``CSC_TEST_KEYRING_FILE`` naming the file; keyring's own discovery never
chooses it. Synthetic test secrets only.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend

BACKEND = "file_keyring.FileKeyring"
FILE_VARIABLE = "CSC_TEST_KEYRING_FILE"


class FileKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]
    viable = False  # type: ignore[assignment]

    @property
    def _path(self) -> Path:
        return Path(os.environ[FILE_VARIABLE])

    def _load(self) -> dict[str, str]:
        return json.loads(self._path.read_text(encoding="utf-8")) if self._path.exists() else {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}/{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        stored = self._load()
        stored[f"{service}/{username}"] = password
        self._path.write_text(json.dumps(stored), encoding="utf-8")

    def delete_password(self, service: str, username: str) -> None:
        stored = self._load()
        stored.pop(f"{service}/{username}", None)
        self._path.write_text(json.dumps(stored), encoding="utf-8")
