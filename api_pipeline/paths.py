"""Paths named in settings: a relative one made absolute against a folder, and the SQLite file in a
``sqlite:///`` connection string. :func:`api_pipeline.config.load_settings` makes a relative path
absolute against the folder of the ``.env`` file that set it, else the current folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SQLITE_URL_PREFIX = "sqlite:///"
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|[\\/]{2})")


def sqlite_file_of(connection_string: str) -> Path | None:
    """``sqlite:///staging.db`` → ``staging.db``; None for ODBC strings and in-memory databases."""
    text = connection_string.strip()
    if not text.lower().startswith(SQLITE_URL_PREFIX):
        return None
    rest = text[len(SQLITE_URL_PREFIX) :]
    return None if rest in ("", ":memory:") else Path(rest)


def absolute_path(path: Path, base: Path) -> Path:
    """``path`` made absolute against ``base``; a Windows drive path counts as absolute everywhere."""
    if path.is_absolute() or _WINDOWS_ABSOLUTE.match(str(path)):
        return path
    return Path(os.path.abspath(base / path))


def absolute_sqlite(connection_string: str, base: Path) -> str:
    """A relative ``sqlite:///`` path made absolute against ``base``; anything else unchanged."""
    path = sqlite_file_of(connection_string)
    if path is None:
        return connection_string
    absolute = absolute_path(path, base)
    if absolute is path:
        return connection_string.strip()
    return SQLITE_URL_PREFIX + absolute.as_posix()
