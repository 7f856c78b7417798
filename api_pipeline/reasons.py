"""Why a row was not sent: the words the pipeline writes in ``api_response`` and ``status`` reads back.

The pipeline (and the API client, for DfE's refusals) write a row's reason as one of the
:data:`INVALID`, :data:`REJECTED`, :data:`WILL_RETRY` or :data:`SKIPPED` notes followed by a
sentence. ``status`` reduces each to a *reason key* that can hold no record value: a field path,
or one of the sentences below that name no field (:func:`shown_phrases`). Both sides use this
module, so a sentence reworded here is still recognised there.
"""

from __future__ import annotations

import re

# What the row's api_response starts with.
INVALID = "invalid: "  # fails DfE's schema or cannot be read: not sent until its data changes
REJECTED = "rejected by DfE: "  # DfE refused this record
WILL_RETRY = "not sent, will retry next run"  # followed by ": <why>"
SKIPPED = "not sent: "  # a problem with the staging row itself

# DfE's refusals, as the API client words them (after REJECTED).
DFE_REJECTED_RECORD = "DfE rejected this record: "  # followed by DfE's (masked) reason for it
DFE_REJECTED_REQUEST = "DfE rejected the request"
TOO_LARGE_ALONE = "DfE refused this record as too large even on its own"

# The pipeline's sentences that name no field (after INVALID). {column} is the staging column read.
PAYLOAD_EMPTY = "{column} is empty"
PAYLOAD_TOO_LARGE = "{column} is larger than {megabytes} MB"
PAYLOAD_NOT_JSON = "{column} is not valid JSON"
PAYLOAD_NOT_OBJECT = "{column} is a JSON {kind}, not an object"
PAYLOAD_BYTE_ORDER_MARK = (
    "{column} starts with a byte-order mark (U+FEFF): an invisible character that SQL Server's JSON functions "
    "refuse too, often left by a file saved as 'UTF-8 with BOM'; remove it in the staging SQL"
)
NO_CHILD_ID = "la_child_id is missing from json_payload"
CHILD_ID_PADDED = (
    "la_child_id has a space or line break at its start or end; the child's id is sent exactly as the record "
    "has it, so fix it in the staging SQL"
)
NOT_ENCODABLE = "json_payload contains text that cannot be encoded as UTF-8 JSON"
# After a field path ({path}: never a key the schema does not declare, nor a value).
DUPLICATE_KEY = (
    "{path}: this key appears more than once in one object of {column}, so the record says two things "
    "(SQL Server's JSON_VALUE reads the first, this tool the last); the staging SQL must write each key once"
)
NUMBER_TOO_LARGE = (
    "{path}: {column} holds a number too large to send exactly (an integer beyond 64 bits, or a number beyond "
    "about 1.8e308)"
)
REQUEST_INVALID = "the request built for this record is invalid"
PURGE_INVALID = "purge request is invalid"
PURGE_WITHOUT_ID = "deleted row has no person_id to purge"
# Text that is not UTF-8 as stored (SQLite): the sentence is NOT_UTF8, " (byte N): ", NOT_UTF8_ADVICE.
NOT_UTF8 = "{column} is not UTF-8 text"
NOT_UTF8_ADVICE = (
    "it holds characters saved in another encoding, often Windows-1252 (where é is one byte); correct them "
    "where the staging SQL reads them from, or convert them in the staging SQL"
)
JSON_KINDS = ("list", "str", "int", "float", "bool", "NoneType")  # what json.loads can give that is not an object

# Problems with the row rather than the record (after SKIPPED).
UNKNOWN_ROW_STATE = "row_state {state!r} is not one of New, Updated, Unchanged, Deleted; fix the staging SQL"
DUPLICATE_CHILD_START = "another row of the staging table is the same child"
DUPLICATE_CHILD = (
    f"{DUPLICATE_CHILD_START} (the same la_child_id or person_id, or ids that differ only in letter case, which SQL "
    "Server and perhaps DfE take for one child); none of its rows is sent until the staging SQL keeps exactly one "
    "row per child"
)


def comparable(text: str) -> str:
    """A sentence as ``status`` compares it: parentheses dropped, every number as N."""
    return re.sub(r"\d+", "N", re.sub(r"\s*\([^)]*\)", "", text).strip())


def shown_phrases() -> frozenset[str]:
    """The sentences ``status`` may show as they are (in :func:`comparable` form): they name no field
    and hold no value. Only the json_payload column's are: the others are reported as it."""
    column = "json_payload"
    sentences = [
        PAYLOAD_EMPTY.format(column=column),
        PAYLOAD_TOO_LARGE.format(column=column, megabytes=1),
        PAYLOAD_NOT_JSON.format(column=column),
        PAYLOAD_BYTE_ORDER_MARK.format(column=column).split(":", 1)[0],
        *(PAYLOAD_NOT_OBJECT.format(column=column, kind=kind) for kind in JSON_KINDS),
        NO_CHILD_ID,
        CHILD_ID_PADDED,
        REQUEST_INVALID,
        PURGE_INVALID,
        PURGE_WITHOUT_ID,
        NOT_ENCODABLE,
        NOT_UTF8.format(column=column),
        DFE_REJECTED_REQUEST,
        TOO_LARGE_ALONE,
    ]
    return frozenset(comparable(sentence) for sentence in sentences)
