"""Times as the tool writes and reads them: UTC, naive where a DATETIME column holds it.

The one place for "now", for the ``…Z`` text of run summaries, and for reading back the
timestamps a database driver or a summary file gives (a ``datetime``, or text).
"""

from __future__ import annotations

import re
from datetime import date, datetime, timezone
from typing import Any

_FRACTION = re.compile(r"(\.\d{6})\d+")


def utc_now() -> datetime:
    """Now in UTC, naive: as DATETIME columns and the ledger hold it."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def utc_stamp(value: datetime | None = None) -> str:
    """``2026-03-01T02:00:00Z``: a moment (default now) to the second, in UTC, for summaries and ``status --json``."""
    moment = utc_now() if value is None else value
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.isoformat(timespec="seconds") + "Z"


def parse_timestamp(value: Any) -> datetime | None:
    """A DATETIME as the driver returns it (datetime, or text from SQLite) → datetime, or None."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    text = str(value).strip()
    if not text:
        return None
    text = _FRACTION.sub(r"\1", text.replace("Z", "+00:00"))  # SQL Server text has 7 fraction digits
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def parse_utc(text: Any) -> datetime | None:
    """A summary's ``…Z`` (or offset) text as an aware UTC-based datetime; naive text counts as UTC."""
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
