"""Paths named in settings: a relative one made absolute against a folder, and the SQLite file in a
``sqlite:///`` connection string. :func:`api_pipeline.settings.config.load_settings` makes a relative path
absolute against the folder of the ``.env`` file that set it, else the current folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

SQLITE_URL_PREFIX = "sqlite:///"
_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|[\\/]{2})")
# What SQLite database files are usually called: a setting ending so is a file's name.
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3", ".db3", ".s3db", ".sdb")


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


def sqlite_url_for_file(text: str, base: Path) -> str | None:
    """``sqlite:///`` + ``text``, when ``text`` reads as a file's path: a SQLite file's usual
    suffix, a folder in it, or a file of that name there (against ``base``); else None."""
    text = text.strip()
    if not text or any(mark in text for mark in ("=", ";", "://", "@")):  # a URL of another database, say
        return None
    named_like_one = text.lower().endswith(SQLITE_SUFFIXES) or "/" in text or "\\" in text
    if not named_like_one:
        try:
            if not absolute_path(Path(text), base).is_file():
                return None
        except (OSError, ValueError):  # a name no file could have
            return None
    return SQLITE_URL_PREFIX + text.replace("\\", "/")
