"""Reading one staging row: its record parsed within bounds, the child it speaks for, and
whether it is that child's only row (DESIGN §4).

What cannot be sent is said with one of three exceptions, which the run turns into the
row's outcome: :class:`Invalid` (the record's content), :class:`Skip` (the row itself, or a
child with more than one row) and :class:`Later` (look again once every row is read).
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

from api_pipeline import reasons
from api_pipeline.dfe.json_text import DUPLICATE_KEY, MAX_NESTING, loads_record, nesting_exceeds, unclear_part
from api_pipeline.dfe.schema import UNKNOWN_KEY, format_path, generalise_path, load_bundled_schema, schema_keys
from api_pipeline.errors import Invalid, Later, Skip
from api_pipeline.store.odbc import UTF16, UnreadableText
from api_pipeline.store.staging import StagingRow, StagingTable
from api_pipeline.wording import plural

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1_000_000
KNOWN_ROW_STATES = frozenset({"new", "updated", "unchanged", "deleted", ""})
KNOWN_STATUSES = frozenset({"pending", "sent", "error", "invalid", ""})


DUPLICATE_CHILD = (reasons.DUPLICATE_CHILD, "duplicate child")


def unreadable(column: str, text: UnreadableText) -> tuple[str, str]:
    """Why ``column``'s text cannot be used, and the reason key: where it goes wrong, never what it holds."""
    if text.encoding == UTF16:
        return (
            f"{column} (character {text.position + 1}) holds text that is not valid Unicode as stored (a lone "
            "UTF-16 surrogate: often half an emoji, cut by LEFT() or SUBSTRING() in the staging SQL); fix the "
            "staging SQL",
            "text not valid Unicode",
        )
    key = reasons.NOT_UTF8.format(column=column)
    return f"{key} (byte {text.position + 1}): {reasons.NOT_UTF8_ADVICE}", key


def unsendable(columns: Sequence[str]) -> tuple[str, str]:
    """Why a row whose ``columns`` the database server could not send as text is left as it is, and the
    reason key (:attr:`~api_pipeline.store.staging.StagingRow.unreadable`)."""
    key = f"{' and '.join(columns)} cannot be read as text"
    return (
        f"{key}: the database server could not convert {'it' if len(columns) == 1 else 'them'} to UTF-8 (bytes that "
        "are not valid in the database's encoding, often a name saved as Windows-1252 in a SQL_ASCII database); "
        "the row is left as it is until that is corrected",
        key,
    )


def parse_payload(text: Any, column: str = "json_payload") -> dict:
    """A staging column's record, or :class:`Invalid` saying why it cannot be one.

    The column may hold anything its declared type lets it: SQLite stores a bare number in a
    column declared ``JSON`` as a number, and a driver may give bytes. Text that is not valid
    as stored is never parsed (what it reads as is not what the table holds). Nesting is checked
    before parsing (:data:`MAX_NESTING`), so no record can exhaust the parser's stack. A record
    that readers would take differently (a key twice in one object, a number too large) is
    invalid, as is one that starts with a byte-order mark: each says so, naming the field.
    """
    if isinstance(text, UnreadableText):
        raise Invalid(*unreadable(column, text))
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise Invalid(f"{column} is binary data, not UTF-8 text", "not text") from None
    if text is not None and not isinstance(text, str):
        raise Invalid(f"{column} is a {type(text).__name__}, not JSON text", "not text")
    if text is None or not text.strip():
        raise Invalid(reasons.PAYLOAD_EMPTY.format(column=column), "empty payload")
    if len(text) > MAX_RECORD_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_RECORD_BYTES:
        raise Invalid(
            reasons.PAYLOAD_TOO_LARGE.format(column=column, megabytes=MAX_RECORD_BYTES // 1_000_000), "record too large"
        )
    if nesting_exceeds(text, MAX_NESTING):
        raise Invalid(f"{column} is nested more than {MAX_NESTING} levels deep", "nested too deeply")
    try:
        record = loads_record(text)
    except json.JSONDecodeError as exc:
        if text.lstrip(_JSON_WHITESPACE).startswith(_BYTE_ORDER_MARK):
            raise Invalid(reasons.PAYLOAD_BYTE_ORDER_MARK.format(column=column), "byte-order mark") from None
        raise Invalid(
            f"{reasons.PAYLOAD_NOT_JSON.format(column=column)} (line {exc.lineno}, column {exc.colno})", "not JSON"
        ) from None
    except (ValueError, RecursionError) as exc:  # NaN or Infinity
        raise Invalid(f"{reasons.PAYLOAD_NOT_JSON.format(column=column)}: {exc}", "not JSON") from None
    if not isinstance(record, dict):
        raise Invalid(reasons.PAYLOAD_NOT_OBJECT.format(column=column, kind=type(record).__name__), "not a JSON object")
    unclear = unclear_part(text, record)
    if unclear is not None:
        raise _unclear(*unclear, column)
    return record


_JSON_WHITESPACE = " \t\r\n"
# Refused, not stripped: SQL Server's JSON functions refuse it too, and the row is the council's
# to correct, so what the tool sends is what the table holds.
_BYTE_ORDER_MARK = "\ufeff"


def _unclear(kind: str, parts: tuple[str | int, ...], column: str) -> Invalid:
    """:class:`Invalid` for a record that readers would take differently (:func:`json_text.unclear_part`),
    naming the path: a key the schema does not declare is not named (it may be data), nor any value."""
    path = _shown_path(parts)
    sentence = reasons.DUPLICATE_KEY if kind == DUPLICATE_KEY else reasons.NUMBER_TOO_LARGE
    return Invalid(sentence.format(path=path, column=column), f"{kind}: {generalise_path(path)}")


@functools.cache
def _schema_keys() -> frozenset[str]:
    """The bundled schema's keys: DfE's field names, which a message may show (a PAYLOAD_SCHEMA's
    extra keys are shown as not in the schema: still nothing of the record's)."""
    return schema_keys(load_bundled_schema())


def _shown_path(parts: tuple[str | int, ...]) -> str:
    known = _schema_keys()
    return format_path(p if isinstance(p, int) or p in known else UNKNOWN_KEY for p in parts)


def child_of(record: dict) -> str:
    """The record's ``la_child_id``: the child's identity, exactly as DfE will be sent it.

    That one spelling is compared for duplicates, keys the ledger and goes in the request, so
    an id with a space or line break at either end is :class:`Invalid` (DfE's pattern refuses
    it too) rather than tidied: tidied, it would be compared as one child and sent as another.
    """
    la_child_id = record.get("la_child_id")
    if not isinstance(la_child_id, str) or not la_child_id.strip():
        raise Invalid(reasons.NO_CHILD_ID, "la_child_id missing")
    if la_child_id != la_child_id.strip():
        raise Invalid(reasons.CHILD_ID_PADDED, "la_child_id padded")
    return la_child_id


def child_key(child_id: str) -> str:
    """What two ids share when a database that ignores case and trailing spaces (SQL Server's
    usual collation) would take them for one child: rows whose ids share it are held back together."""
    return child_id.strip().casefold()


class Identities:
    """Who is who in one run: the child each row speaks for, and the children more than one row claims.

    A child is its record's ``la_child_id`` (:func:`child_of`), normally also the row's
    ``person_id``. No row of a child that more than one row claims is sent, and ids that differ
    only in letter case or trailing spaces count as one child (:func:`child_key`): a database
    that ignores case would take them for one, and so may DfE.
    """

    def __init__(self, table: StagingTable) -> None:
        self.table = table
        # Children (by child_key) that more than one row claims: none of their rows is sent.
        self.duplicates: set[str] = set()
        self._person_ids: Counter | None = None  # rows per person_id's child_key, read when first needed
        # Rows whose person_id is not their record's la_child_id: (row id, child, its person_id), looked at last.
        self._later: list[tuple[int, str, str]] = []
        self._second_look = False
        self._second_look_left = 0  # rows of the second look not yet taken
        self._unknown_statuses: set[str] = set()
        self._unreadable_status_said = False

    @property
    def waiting(self) -> int:
        """Rows kept for the second look and not taken yet (not reached, should the run stop now)."""
        return len(self._later) + self._second_look_left

    @property
    def has_later(self) -> bool:
        return bool(self._later)

    def find_duplicates(self) -> None:
        """Children claimed by more than one row, known before anything is sent (DESIGN §4).

        A person_id on several rows is found by one query; a row with no person_id is known by
        its record, read here; a row whose person_id is some other id is known only once its
        record is parsed, so such rows are sent after all others (:meth:`second_look_rows`),
        when every claim on their child is known.
        """
        self.duplicates = {child_key(person_id) for person_id in self.table.duplicate_person_ids()}
        claims: Counter = Counter()
        for _row_id, payload in self.table.rows_without_person_id():
            try:
                claims[child_key(child_of(parse_payload(payload)))] += 1
            except Invalid:
                continue  # the row is reported on its own when it is read
        if claims:
            taken = self._known_person_ids()
            self.duplicates.update(key for key, n in claims.items() if n > 1 or key in taken)
        if self.duplicates:
            many = len(self.duplicates) > 1
            log.warning(
                "%s more than one row in the staging table; none of %s rows is sent",
                plural(len(self.duplicates), "child has", "children have"),
                "their" if many else "its",
            )

    def _known_person_ids(self) -> Counter:
        """Rows per person_id, by :func:`child_key`."""
        if self._person_ids is None:
            self._person_ids = Counter(child_key(person_id) for person_id in self.table.person_ids())
        return self._person_ids

    def _claimed_elsewhere(self, key: str, person_id: str) -> bool:
        """Whether a row other than the one whose person_id is ``person_id`` has a person_id of child ``key``."""
        return self._known_person_ids()[key] > (1 if child_key(person_id) == key else 0)

    def second_look_rows(self) -> Iterator[StagingRow]:
        """Rows whose person_id is not their child's la_child_id, now that all claims are known."""
        later, self._later = self._later, []
        log.warning(
            "%d %s a person_id that differs from their record's la_child_id; each is sent under its "
            "la_child_id. The staging SQL should set person_id to the la_child_id",
            len(later),
            "row has" if len(later) == 1 else "rows have",
        )
        claims = Counter(child_key(child) for _, child, _ in later)
        for _, child, person_id in later:
            key = child_key(child)
            if claims[key] > 1 or self._claimed_elsewhere(key, person_id):
                self.duplicates.add(key)
        self._second_look = True
        self._second_look_left = len(later)
        return self.table.rows_by_id([row_id for row_id, _, _ in later])

    def took_second_look_row(self) -> None:
        self._second_look_left -= 1

    def check_row(self, row: StagingRow) -> None:
        """Problems with the row rather than the record: not the data's fault, so not ``invalid``.

        A person_id or row_state that is not valid text as stored says nothing the run can trust
        (which child, whether to purge it): the row waits until it is fixed. A submission_status
        that is not is only compared, and it is treated as an unknown status: pending. The same
        for what the server could not send as text (:attr:`StagingRow.unreadable`), where the
        record too waits, as nothing can be written to its row.
        """
        if {"person_id", "json_payload", "row_state"} & set(row.unreadable):
            raise Skip(*unsendable(row.unreadable))
        if row.unreadable:  # an earlier tool's copy or note, a status: read as empty
            log.warning("row %s: %s", row.id, unsendable(row.unreadable)[0].split(";")[0] + "; read as empty")
        for column, value in (("person_id", row.person_id), ("row_state", row.row_state)):
            if isinstance(value, UnreadableText):
                raise Skip(*unreadable(column, value))
        state = (row.row_state or "").strip().lower()
        if state not in KNOWN_ROW_STATES:
            raise Skip(reasons.UNKNOWN_ROW_STATE.format(state=row.row_state), "unknown row_state")
        if isinstance(row.submission_status, UnreadableText):
            if not self._unreadable_status_said:
                self._unreadable_status_said = True
                log.warning(
                    "row %s: submission_status is not valid text as stored (not shown; other rows may have the "
                    "same); treating it as pending",
                    row.id,
                )
        else:
            status = (row.submission_status or "").strip().lower()
            if status not in KNOWN_STATUSES and status not in self._unknown_statuses:
                self._unknown_statuses.add(status)
                log.warning("submission_status %r is not a status this tool writes; treating it as pending", status)
        if row.person_id and child_key(row.person_id) in self.duplicates:
            raise Skip(*DUPLICATE_CHILD)

    def identify(self, row: StagingRow, child: str) -> StagingRow:
        """Check ``child`` (the record's la_child_id, :func:`child_of`) is this row's alone; find its ledger entry.

        :class:`Later` for a row whose person_id is another id (or the same in another case), until the second look.
        """
        key = child_key(child)
        if key in self.duplicates:
            raise Skip(*DUPLICATE_CHILD)
        if row.person_id == child:
            return row  # the ledger was joined by person_id
        if row.person_id and not self._second_look:
            if self._claimed_elsewhere(key, row.person_id):
                # Another row's person_id says it is this child: hold that row back too, if it
                # is still to come (one read before this is already on its way to DfE).
                self.duplicates.add(key)
            self._later.append((row.id, child, row.person_id))
            raise Later
        return self._ledger_elsewhere(row, child)

    def _ledger_elsewhere(self, row: StagingRow, child: str) -> StagingRow:
        """``row`` with the ledger and in-flight entries of ``child``, for a row the join by person_id could not match.

        The ledger names the row that last sent each child: another row that still holds the
        same child makes this one a duplicate.
        """
        entry = self.table.ledger_entry(child)
        if entry is not None and entry.staging_id is not None and int(entry.staging_id) != row.id:
            try:
                other = child_key(child_of(parse_payload(self.table.payload_of(int(entry.staging_id)))))
            except Invalid:
                other = None
            if other == child_key(child):
                self.duplicates.add(other)
                raise Skip(*DUPLICATE_CHILD)
        return row.with_ledger(entry, self.table.doubt_outline(child))
