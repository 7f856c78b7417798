"""DfE's receipts (DESIGN §6): what a 200 must carry before any record counts as acknowledged,
and when a receipt says it was received.

DfE's answer is read, never trusted: a receipt is accepted only in one of two exact shapes, and
its time only within a believable window. The reasons given for an unusable answer repeat
nothing of it (DfE's text may be hostile, and may echo a record).
"""

from __future__ import annotations

import functools
import re
from datetime import datetime, timedelta, timezone

import requests

from api_pipeline.dfe.transport import parse_json
from api_pipeline.settings.options import MAX_RECEIPT_LENGTH

# Receipts (DESIGN §6). DfE's OpenAPI document declares the 200 body as one uuid for the request;
# the earlier tools and their guidance read a list with one ``date_time_uuid.json`` name per record,
# like ``2026-03-01_21:04:33.12_<uuid>.json``. A receipt is one of those two shapes, exactly (plain
# ASCII, so no line break, escape, NUL or lone surrogate ever reaches a log line or a column).
_RECEIPT_UUID = re.compile("[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RECEIPT_NAME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})_([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,6}))?_[0-9A-Za-z][0-9A-Za-z-]*\.json"
)
# A receipt's time is believed only within this window; outside it the tool's own clock is recorded.
# DfE's API did not exist before 2020, and DfE's clock may be minutes ahead of this computer's, not days.
EARLIEST_RECEIPT_TIME = datetime(2020, 1, 1, tzinfo=timezone.utc)
RECEIPT_CLOCK_AHEAD = timedelta(days=1)


def _receipt_problem(item: object) -> str | None:
    """Why ``item`` is not a receipt, in words that repeat none of it (DfE's text may be hostile); None if it is one."""
    if not isinstance(item, str):
        return f"is {_json_kind(item)}, not text"
    if not item:
        return "is empty"
    if len(item) > MAX_RECEIPT_LENGTH:
        return f"is {len(item)} characters long (at most {MAX_RECEIPT_LENGTH})"
    if _RECEIPT_UUID.fullmatch(item) or _RECEIPT_NAME.fullmatch(item):
        return None  # the shapes are plain ASCII: nothing unprintable in them
    odd = next((c for c in item if not c.isprintable()), None)
    if odd is not None and 0xD800 <= ord(odd) <= 0xDFFF:
        return "holds text that is not valid Unicode (a lone surrogate)"
    if odd is not None:
        return f"holds a control or unprintable character (U+{ord(odd):04X})"
    return "is neither a uuid nor a date_time_uuid.json name"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


def parse_receipt_time(receipt: str) -> datetime | None:
    """The UTC time in a DfE-style receipt (``2026-03-01_21:04:33.12_<uuid>.json``); None for a bare uuid,
    or when the name's date and time are not a real moment."""
    match = _RECEIPT_NAME.fullmatch(receipt)
    if not match:
        return None
    return _receipt_moment(*match.groups())


def recorded_time(receipt: str, now: datetime) -> tuple[datetime, bool]:
    """When to record ``receipt`` as received: the time in its name, else ``now`` (this computer's
    clock, naive UTC). True when the name held a time that was set aside: not a real moment,
    before 2020, or more than a day ahead of ``now`` (a year-9999 receipt would otherwise be the
    "last acknowledgement" for ever, and year 1 does not fit SQL Server's DATETIME)."""
    match = _RECEIPT_NAME.fullmatch(receipt)
    if match is None:
        return now, False  # a bare uuid carries no time
    moment = _receipt_moment(*match.groups())
    clock = now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)
    if moment is None or not EARLIEST_RECEIPT_TIME <= moment <= clock + RECEIPT_CLOCK_AHEAD:
        return now, True
    return moment, False


@functools.lru_cache(maxsize=256)  # a batch's receipts share a handful of timestamps
def _receipt_moment(date: str, clock: str, fraction: str | None) -> datetime | None:
    try:  # the fields are fixed-width digits: building the datetime directly is ~10x cheaper than strptime
        moment = datetime(int(date[:4]), int(date[5:7]), int(date[8:]), int(clock[:2]), int(clock[3:5]), int(clock[6:]))
    except ValueError:  # e.g. month 13: as strptime, no time
        return None
    micro = int((fraction or "0").ljust(6, "0"))
    return moment.replace(microsecond=micro, tzinfo=timezone.utc)


def parse_receipts(response: requests.Response, expected: int) -> tuple[list[str] | None, str]:
    """One receipt per record, else None and the reason (which repeats nothing of the answer).

    The answer is one receipt for the whole request (a JSON string, as DfE's OpenAPI document
    declares it), which every record then shares, or a JSON list of one receipt per record, in
    order (as the earlier tools read it). A bare uuid that is not a JSON string is not JSON.
    """
    answer = parse_json(response.content)
    if answer is None:
        return None, "DfE answered 200 but the body was not JSON; nothing is counted as acknowledged"
    if isinstance(answer, str):
        problem = _receipt_problem(answer)
        if problem is not None:
            return None, f"DfE answered 200 with a receipt that {problem}; nothing is counted as acknowledged"
        return [answer] * expected, ""
    if not isinstance(answer, list):
        return None, "DfE answered 200 but not with a receipt or a list of receipts; nothing is counted as acknowledged"
    if len(answer) != expected:
        return None, (
            f"DfE returned {len(answer)} receipts for {expected} records; "
            "nothing is counted as acknowledged (sent again next run)"
        )
    for number, item in enumerate(answer, 1):
        problem = _receipt_problem(item)
        if problem is not None:
            return None, (
                f"DfE answered 200, but receipt {number} of {expected} {problem}; nothing is counted as acknowledged"
            )
    return answer, ""
