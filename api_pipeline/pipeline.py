"""``run``: stream rows → build payloads → validate → batch → send → write back.

A row becomes ``sent`` only when DfE returned a receipt for it (DESIGN §7). Each
batch's outcomes and ledger entries are written in one transaction, so a crash
at any moment leaves every row either untouched (re-sent next run, which DfE
treats as an upsert) or truthfully marked.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from api_pipeline import reasons
from api_pipeline.api import BatchAborted, Outcome
from api_pipeline.config import Settings
from api_pipeline.dialects import MAX_RECEIPT_LENGTH
from api_pipeline.errors import PipelineError
from api_pipeline.odbc import UnreadableText
from api_pipeline.payload import (
    MAX_NESTING,
    build_purge,
    duplicate_ids,
    encode_record,
    frame_body,
    load_normal,
    loads_record,
    nesting_exceeds,
    normal_form,
    normalise,
    request_for,
)
from api_pipeline.runs import RunSummary, write_private
from api_pipeline.schema import RecordValidator, generalise_path
from api_pipeline.staging import LedgerEntry, RowUpdate, StagingRow, StagingTable
from api_pipeline.timestamps import utc_now, utc_stamp

log = logging.getLogger(__name__)

MAX_RECORD_BYTES = 1_000_000
KNOWN_ROW_STATES = frozenset({"new", "updated", "unchanged", "deleted", ""})
KNOWN_STATUSES = frozenset({"pending", "sent", "error", "invalid", ""})


class Sender(Protocol):
    """What the pipeline needs from the API client (api.ApiClient): one Outcome per encoded record,
    in order, or :class:`~api_pipeline.api.BatchAborted` with those settled before the run had to stop."""

    def send(self, bodies: list[bytes], batch_id: str) -> list[Outcome]: ...


def in_case_of(example: str | None, word: str) -> str:
    """Write ``word`` in the case style the table already uses (``Pending`` → ``Sent``)."""
    example = (example or "").strip()
    if example.isupper() and len(example) > 1:
        return word.upper()
    if example[:1].isupper():
        return word.capitalize()
    return word


@dataclass
class RunOptions:
    """How this run goes: the settings that shape it (defaults: the settings' own) and the command's flags.

    ``max_runtime`` None: no limit (library callers and tests; a run from the command line has MAX_RUNTIME).
    """

    partial: bool = Settings.use_partial_payload
    limit: int | None = None
    dry_run_dir: Path | None = None
    batch_size: int = Settings.batch_size
    validate_only: bool = False
    all_rows: bool = False
    max_runtime: float | None = None
    max_in_flight: int = Settings.max_in_flight

    @classmethod
    def from_settings(cls, settings: Settings, *, partial: bool | None = None, **flags: Any) -> RunOptions:
        """The options for a run with these settings; ``partial`` (--mode) overrides USE_PARTIAL_PAYLOAD."""
        return cls(
            partial=settings.use_partial_payload if partial is None else partial,
            batch_size=settings.batch_size,
            max_runtime=settings.max_runtime,
            max_in_flight=settings.max_in_flight,
            **flags,
        )

    @property
    def writes(self) -> bool:
        """Whether this run sends and writes outcomes back (not a dry run or a validation)."""
        return self.dry_run_dir is None and not self.validate_only


@dataclass
class _Item:
    """One row ready to send."""

    row: StagingRow
    la_child_id: str
    mis_child_id: str | None
    record: dict
    body: bytes
    purge: bool
    ledger_json: str | None = None
    ledger_hash: bytes | None = None  # SHA-256 of ledger_json's UTF-8 text


@dataclass
class _InFlight:
    """A batch handed to the sender whose outcomes are not written back yet."""

    batch_id: str
    batch: list[_Item]
    updates: list[RowUpdate]
    future: Future
    started: float
    adopted: list[LedgerEntry] = field(default_factory=list)  # written with the batch, whatever its fate


class _Invalid(Exception):
    """The record's content cannot be sent: the row becomes ``invalid`` until its payload changes."""

    def __init__(self, reason: str, *keys: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.keys = keys or (reason,)


class _Skip(Exception):
    """The row itself is inconsistent: leave its status, explain, look again next run."""

    def __init__(self, reason: str, key: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.key = key


class _Later(Exception):
    """Look at this row again once every other row has been read (its person_id is not its child's id)."""


DUPLICATE_CHILD = (reasons.DUPLICATE_CHILD, "duplicate child")


def _parse_payload(text: Any, column: str = "json_payload") -> dict:
    """A staging column's record, or :class:`_Invalid` saying why it cannot be one.

    The column may hold anything its declared type lets it: SQLite stores a bare number in a
    column declared ``JSON`` as a number, and a driver may give bytes. Nesting is checked
    before parsing (:data:`MAX_NESTING`), so no record can exhaust the parser's stack.
    """
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise _Invalid(f"{column} is binary data, not UTF-8 text", "not text") from None
    if text is not None and not isinstance(text, str):
        raise _Invalid(f"{column} is a {type(text).__name__}, not JSON text", "not text")
    if text is None or not text.strip():
        raise _Invalid(reasons.PAYLOAD_EMPTY.format(column=column), "empty payload")
    if len(text) > MAX_RECORD_BYTES // 4 and len(text.encode("utf-8", "surrogatepass")) > MAX_RECORD_BYTES:
        raise _Invalid(
            reasons.PAYLOAD_TOO_LARGE.format(column=column, megabytes=MAX_RECORD_BYTES // 1_000_000), "record too large"
        )
    if nesting_exceeds(text, MAX_NESTING):
        raise _Invalid(f"{column} is nested more than {MAX_NESTING} levels deep", "nested too deeply")
    try:
        record = loads_record(text)
    except json.JSONDecodeError as exc:
        raise _Invalid(
            f"{reasons.PAYLOAD_NOT_JSON.format(column=column)} (line {exc.lineno}, column {exc.colno})", "not JSON"
        ) from None
    except (ValueError, RecursionError) as exc:  # NaN or Infinity
        raise _Invalid(f"{reasons.PAYLOAD_NOT_JSON.format(column=column)}: {exc}", "not JSON") from None
    if not isinstance(record, dict):
        raise _Invalid(
            reasons.PAYLOAD_NOT_OBJECT.format(column=column, kind=type(record).__name__), "not a JSON object"
        )
    return record


def _child_of(record: dict) -> str:
    """The record's ``la_child_id``, as DfE will see it; :class:`_Invalid` when it has none."""
    la_child_id = record.get("la_child_id")
    if not isinstance(la_child_id, str) or not la_child_id.strip():
        raise _Invalid(reasons.NO_CHILD_ID, "la_child_id missing")
    return la_child_id


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run with Python's cyclic garbage collector mostly out of the way.

    A run parses millions of small dicts and lists, none of them in reference cycles (JSON
    cannot make one), and frees them by reference counting. With the default thresholds the
    collector would still wake every 700 allocations and, every so often, walk every object
    the process holds: about a quarter of a run's CPU time, for nothing. So the objects that
    exist at the start (modules, settings, the schema) are frozen out of its walks, and it
    runs every 50,000 allocations instead; both are undone afterwards.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, thresholds[1], thresholds[2])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


class Pipeline:
    """One run over one staging table."""

    def __init__(
        self,
        table: StagingTable,
        sender: Sender | None,
        validator: RecordValidator,
        options: RunOptions,
        summary: RunSummary,
        *,
        on_progress: Callable[[RunSummary], None] | None = None,
    ) -> None:
        self.table = table
        self.sender = sender
        self.validator = validator
        self.options = options
        self.summary = summary
        self.on_progress = on_progress
        self._batch: list[_Item] = []
        self._updates: list[RowUpdate] = []
        self._batch_counter = 0
        self._unknown_statuses: set[str] = set()
        self._send_seconds: dict[str, float] = {}  # batch id -> how long its sending took, retries included
        self._last_row_id = 0  # the highest row id read: rows after it were not reached if the run stops
        self._second_look_left = 0  # rows of the second look not yet taken
        # Batches are sent on a pool of MAX_IN_FLIGHT threads (one, by default: one request at a
        # time), and their outcomes written back on one more thread, in the order they were
        # sent, while this thread reads and prepares the next batches. The database connection
        # is shared, one user at a time.
        sending = sender is not None
        self._executor = ThreadPoolExecutor(options.max_in_flight, thread_name_prefix="send") if sending else None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="write-back") if sending else None
        self._sends: deque[Future] = deque()  # send futures not known to be finished
        self._written: deque[Future] = deque()  # write-back futures, oldest first
        self._failed = threading.Event()  # set by a send thread when its batch failed for good
        self._adopted: list[LedgerEntry] = []  # ledger entries for rows an earlier tool sent
        # Children (la_child_id, spaces trimmed) that more than one row claims: none of their rows is sent.
        self.duplicates: set[str] = set()
        self._person_ids: frozenset[str] | None = None  # every row's person_id, read when first needed
        # Rows whose person_id is not their record's la_child_id: (row id, child), looked at last.
        self._later: list[tuple[int, str]] = []
        self._second_look = False
        self._in_batch: set[str] = set()  # the children in the batch being filled

    # -- the run ---------------------------------------------------------------

    def run(self) -> RunSummary:
        with _fewer_collections():
            try:
                return self._run()
            except BaseException:
                # Stopped by an error (DfE unreachable, the database, Ctrl+C): the rows read
                # but not yet handed to the sender are left unsent too.
                self.summary.stopped_early = True
                self.summary.outcomes["failed"] += len(self._batch)
                self._batch = []
                raise
            finally:
                if self.summary.stopped_early:
                    self._count_not_reached()

    def _count_not_reached(self) -> None:
        """After an early stop: how many rows the run would still have read (best effort, counts only)."""
        source, wanted = self.table.candidate_source(all_rows=self.options.all_rows)
        sql = f"SELECT COUNT(*) FROM {source} WHERE t.id > ? AND ({wanted})"
        try:
            left = int(self.table.db.scalar(sql, (self._last_row_id,)) or 0)
        except PipelineError as exc:  # the database may be why the run stopped
            log.debug("rows not reached could not be counted: %s", exc)
            return
        if self.options.limit is not None:
            left = min(left, max(0, self.options.limit - self.summary.rows_read))
        # Rows read once and kept for the second look, which the run did not get back to.
        left += len(self._later) + self._second_look_left
        self.summary.outcomes["not_reached"] = left

    def _run(self) -> RunSummary:
        started = time.monotonic()
        self._find_duplicates()
        deadline = None if self.options.max_runtime is None else started + self.options.max_runtime
        try:
            rows = self.table.iter_candidates(limit=self.options.limit, all_rows=self.options.all_rows)
            if self._take_all(rows, deadline, count=True) and self._later:
                self._take_all(self._second_look_rows(), deadline, count=False)
            self._flush()
            self._drain()
            if self.options.writes:
                self.table.db.finish_bulk_writes()
        finally:
            for pool in (self._executor, self._writer):
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)
            self.summary.seconds = time.monotonic() - started
            self.summary.finished_at = utc_stamp()
        return self.summary

    def _take_all(self, rows: Iterator[StagingRow], deadline: float | None, *, count: bool) -> bool:
        """Prepare and send ``rows``; False when MAX_RUNTIME stopped the run first."""
        for row in rows:
            if count:
                self.summary.rows_read += 1
            else:
                self._second_look_left -= 1
            self._take(row)
            if len(self._batch) >= self.options.batch_size:
                self._flush()
                if deadline is not None and time.monotonic() > deadline:
                    self.summary.stopped_early = True
                    log.warning(
                        "MAX_RUNTIME (%d s) reached after row id %s: stopping cleanly; rows not yet "
                        "reached stay pending and are sent next run",
                        self.options.max_runtime,
                        row.id,
                    )
                    return False
        return True

    # -- who is who ----------------------------------------------------------------

    def _find_duplicates(self) -> None:
        """Children claimed by more than one row, known before anything is sent (DESIGN §4).

        A child is its record's ``la_child_id`` (spaces trimmed), normally also the row's
        ``person_id``: a person_id on several rows is found by one query; a row with no
        person_id is known by its record, read here; a row whose person_id is some other id
        is known only once its record is parsed, so such rows are sent after all others
        (:meth:`_second_look_rows`), when every claim on their child is known.
        """
        self.duplicates = set(self.table.duplicate_person_ids())
        claims: Counter = Counter()
        for _row_id, payload in self.table.rows_without_person_id():
            try:
                claims[_child_of(_parse_payload(payload)).strip()] += 1
            except _Invalid:
                continue  # the row is reported on its own when it is read
        if claims:
            taken = self._known_person_ids()
            self.duplicates.update(child for child, n in claims.items() if n > 1 or child in taken)
        if self.duplicates:
            log.warning(
                "%d children have more than one row in the staging table; none of their rows is sent",
                len(self.duplicates),
            )

    def _known_person_ids(self) -> frozenset[str]:
        if self._person_ids is None:
            self._person_ids = self.table.person_ids()
        return self._person_ids

    def _second_look_rows(self) -> Iterator[StagingRow]:
        """Rows whose person_id is not their child's la_child_id, now that all claims are known."""
        later, self._later = self._later, []
        log.warning(
            "%d %s a person_id that differs from their record's la_child_id; each is sent under its "
            "la_child_id. The staging SQL should set person_id to the la_child_id",
            len(later),
            "row has" if len(later) == 1 else "rows have",
        )
        claims = Counter(child for _, child in later)
        taken = self._known_person_ids()
        self.duplicates.update(child for child, n in claims.items() if n > 1 or child in taken)
        self._second_look = True
        self._second_look_left = len(later)
        return self.table.rows_by_id([row_id for row_id, _ in later])

    def _ledger_elsewhere(self, row: StagingRow, child: str) -> StagingRow:
        """``row`` with the ledger entry of ``child``, for a row the join by person_id could not match.

        The ledger names the row that last sent each child: another row that still holds the
        same child makes this one a duplicate.
        """
        entry = self.table.ledger_entry(child)
        if entry is not None and entry.staging_id is not None and int(entry.staging_id) != row.id:
            try:
                other = _child_of(_parse_payload(self.table.payload_of(int(entry.staging_id)))).strip()
            except _Invalid:
                other = None
            if other == child:
                self.duplicates.add(child)
                raise _Skip(*DUPLICATE_CHILD)
        return row.with_ledger(entry)

    def _take(self, row: StagingRow) -> None:
        self._last_row_id = max(self._last_row_id, row.id)
        try:
            item = self._prepare(row)
        except _Later:
            return
        except _Skip as problem:
            self.summary.outcomes["skipped"] += 1
            self.summary.note_problem(problem.key, row.id)
            log.warning("row %s skipped: %s", row.id, problem.reason)
            # DfE's last answer (a receipt, or why it refused the record) stays in api_response;
            # only an empty one, or this tool's own earlier note, gets the reason.
            earlier = (row.api_response or "").strip()
            if self.options.writes and (not earlier or earlier.startswith(reasons.SKIPPED)):
                self._updates.append(
                    RowUpdate(
                        row_id=row.id,
                        status="",
                        api_response=f"{reasons.SKIPPED}{problem.reason}"[:4000],
                        expect_payload=row.json_payload,
                    )
                )
            return
        except _Invalid as problem:
            self.summary.outcomes["invalid"] += 1
            for key in problem.keys:
                self.summary.note_problem(key, row.id)
            log.warning("row %s (child %s) is invalid: %s", row.id, row.person_id, problem.reason)
            if self.options.writes:
                self._updates.append(
                    RowUpdate(
                        row_id=row.id,
                        status=in_case_of(row.submission_status, "invalid"),
                        api_response=f"{reasons.INVALID}{problem.reason}"[:4000],
                        expect_payload=row.json_payload,
                    )
                )
            return
        if item is not None:
            child = item.la_child_id.strip()
            if child in self._in_batch:  # never one child twice in a request (DESIGN §4)
                self.duplicates.add(child)
                self.summary.outcomes["skipped"] += 1
                self.summary.note_problem(DUPLICATE_CHILD[1], row.id)
                log.warning("row %s skipped: %s", row.id, DUPLICATE_CHILD[0])
                return
            self._in_batch.add(child)
            self._batch.append(item)

    def _check_row(self, row: StagingRow) -> None:
        """Problems with the row rather than the record: not the data's fault, so not ``invalid``."""
        state = (row.row_state or "").strip().lower()
        if state not in KNOWN_ROW_STATES:
            raise _Skip(
                reasons.UNKNOWN_ROW_STATE.format(state=row.row_state),
                "unknown row_state",
            )
        status = (row.submission_status or "").strip().lower()
        if status not in KNOWN_STATUSES and status not in self._unknown_statuses:
            self._unknown_statuses.add(status)
            log.warning("submission_status %r is not a status this tool writes; treating it as pending", status)
        if row.person_id and row.person_id in self.duplicates:
            raise _Skip(*DUPLICATE_CHILD)

    def _identify(self, row: StagingRow, child: str) -> StagingRow:
        """Check ``child`` (the record's la_child_id, trimmed) is this row's alone; find its ledger entry."""
        if child in self.duplicates:
            raise _Skip(*DUPLICATE_CHILD)
        if row.person_id == child:
            return row  # the ledger was joined by person_id
        if row.person_id and not self._second_look:
            if child in self._known_person_ids():
                # Another row's person_id says it is this child: hold that row back too, if it
                # is still to come (one read before this is already on its way to DfE).
                self.duplicates.add(child)
            self._later.append((row.id, child))
            raise _Later
        return self._ledger_elsewhere(row, child)

    def _prepare(self, row: StagingRow) -> _Item | None:
        try:
            return self._prepare_row(row)
        except (_Invalid, _Skip, _Later):
            raise
        except (RecursionError, MemoryError, TypeError, ValueError, KeyError, AttributeError) as exc:
            # Whatever the record holds must not stop the run for every other child.
            log.debug("row %s could not be prepared", row.id, exc_info=True)
            raise _Invalid(
                f"the record could not be checked ({type(exc).__name__}); see the log at debug level",
                "could not be checked",
            ) from None

    def _prepare_row(self, row: StagingRow) -> _Item | None:
        if isinstance(row.json_payload, UnreadableText):  # read with U+FFFD for what was stored: never sent
            raise _Invalid(
                f"json_payload (character {row.json_payload.position + 1}) holds text that is not valid Unicode as "
                "stored (a lone UTF-16 surrogate: often half an emoji, cut by LEFT() or SUBSTRING() in the staging "
                "SQL); fix the staging SQL",
                "text not valid Unicode",
            )
        self._check_row(row)
        if row.is_deleted:
            return self._prepare_purge(row)
        record = _parse_payload(row.json_payload)
        la_child_id = _child_of(record)
        row = self._identify(row, la_child_id.strip())
        # The record in normal form (empty objects and lists dropped) is what DfE will hold:
        # it is validated whole, its JSON goes in the ledger, and the request is built from it.
        try:
            record, full = normal_form(record)
        except ValueError:
            raise _Invalid(reasons.NOT_ENCODABLE, "bad text") from None
        mis = record.get("mis_child_id")
        mis_child_id = mis if isinstance(mis, str) else None
        # What DfE will hold once it acknowledges: the normalised record (``full``).
        ledger_json, ledger_hash = full.decode("utf-8"), hashlib.sha256(full).digest()
        inherited = None
        if not row.ledger_found:
            if row.is_sent and _unchanged_since_sent(row):
                self._adopt(row, la_child_id, mis_child_id, ledger_json, ledger_hash)
                return None
            inherited = self._inherited(row, la_child_id)
        problems = self.validator.problems(record)
        if problems:
            raise _Invalid(
                "; ".join(f"{path}: {message}" for path, message in problems),
                *(f"schema: {generalise_path(path)}" for path, _ in problems),
            )
        duplicates = duplicate_ids(record)
        if duplicates:
            raise _Invalid(f"{duplicates[0]}: the same id appears twice in this list", "duplicate id in a list")
        body: dict | None
        if not row.ledger_found:
            # First contact (DESIGN §4): the whole record, plus purges for whatever the earlier
            # tool's last copy has and the record now lacks, in either mode.
            body = request_for(record, inherited, delta=False)
        else:
            body = request_for(record, self._baseline(row), delta=self.options.partial)
        if body is None:
            self._mark_unchanged(row)
            return None
        if body is record:  # a first send: the record itself, validated above
            encoded = full
        else:  # a delta or purges: the request itself must be valid too
            errors = self.validator.errors(body)
            if errors:
                raise _Invalid(f"{reasons.REQUEST_INVALID}: " + "; ".join(errors), "request invalid")
            encoded = encode_record(body)
        return _Item(
            row=row,
            la_child_id=la_child_id,
            mis_child_id=mis_child_id,
            record=body,
            body=encoded,
            purge=False,
            ledger_json=ledger_json,
            ledger_hash=ledger_hash,
        )

    def _inherited(self, row: StagingRow, la_child_id: str) -> dict | None:
        """What an earlier tool last sent for a child this tool has not: ``previous_json_payload``
        in normal form, when it is a record of this child (DESIGN §4). None otherwise."""
        if row.previous_json_payload is None:
            return None
        try:
            previous = _parse_payload(row.previous_json_payload, "previous_json_payload")
        except _Invalid as problem:
            log.warning("row %s: %s; its record is sent whole without purges", row.id, problem.reason)
            return None
        if previous.get("la_child_id") != la_child_id:
            return None
        return normalise(previous)

    def _adopt(
        self, row: StagingRow, la_child_id: str, mis_child_id: str | None, ledger_json: str, ledger_hash: bytes
    ) -> None:
        """A row an earlier tool sent and nobody has changed since: DfE holds it, so the ledger
        says so, and nothing is sent (DESIGN §4)."""
        self.summary.outcomes["adopted"] += 1
        if not self.options.writes:
            return
        receipt = (row.api_response or "").strip()[:MAX_RECEIPT_LENGTH]
        at = _as_datetime(row.submission_timestamp) or utc_now()
        self._adopted.append(
            LedgerEntry(la_child_id, mis_child_id, row.id, ledger_json, ledger_hash, receipt, at, False)
        )

    def _prepare_purge(self, row: StagingRow) -> _Item | None:
        la_child_id = row.person_id
        mis_child_id = None
        try:
            record = _parse_payload(row.json_payload)
            la_child_id = _child_of(record)
            mis = record.get("mis_child_id")
            mis_child_id = mis if isinstance(mis, str) and mis else None
        except _Invalid:
            pass  # a deleted child's purge needs only its id
        if not la_child_id:
            raise _Invalid(reasons.PURGE_WITHOUT_ID, "purge without id")
        row = self._identify(row, la_child_id.strip())
        if row.ledger_purged:
            return None  # found by its la_child_id: DfE has already deleted this child
        body = build_purge(la_child_id, mis_child_id)
        errors = self.validator.errors(body)
        if errors:
            raise _Invalid(f"{reasons.PURGE_INVALID}: " + "; ".join(errors), "purge schema")
        return _Item(
            row=row,
            la_child_id=la_child_id,
            mis_child_id=mis_child_id,
            record=body,
            body=encode_record(body),
            purge=True,
        )

    def _baseline(self, row: StagingRow) -> dict | None:
        """What DfE holds for this child per the ledger; None when it holds nothing."""
        if row.ledger_json is None or row.ledger_purged:
            return None
        try:
            baseline = load_normal(row.ledger_json)
        except ValueError:
            log.warning("ledger entry for child %s is unreadable; sending the whole record", row.person_id)
            return None
        return baseline if isinstance(baseline, dict) else None

    def _mark_unchanged(self, row: StagingRow) -> None:
        """DfE already holds exactly this record: record that, send nothing."""
        self.summary.outcomes["unchanged"] += 1
        if not self.options.writes:
            return
        receipt = row.ledger_receipt or ""
        self._updates.append(
            RowUpdate(
                row_id=row.id,
                status=in_case_of(row.submission_status, "sent"),
                api_response=receipt,
                expect_payload=row.json_payload,
                submission_timestamp=_as_datetime(row.ledger_acknowledged_at),
                mark_sent=True,
                previous_hash=None if row.ledger_json is None else _sha256(row.ledger_json),
                row_state=in_case_of(row.row_state, "unchanged"),
            )
        )

    # -- one batch ---------------------------------------------------------------

    def _flush(self) -> None:
        """Hand the current batch to the sender (and write any invalid-row updates)."""
        batch, self._batch = self._batch, []
        updates, self._updates = self._updates, []
        adopted, self._adopted = self._adopted, []
        self._in_batch = set()
        if not batch and not updates and not adopted:
            return
        if batch:
            self._batch_counter += 1
            self.summary.batches += 1
        batch_id = f"{self.summary.run_id}-{self._batch_counter:05d}"
        if not batch or not self.options.writes:
            if self.options.validate_only:
                self.summary.outcomes["valid"] += len(batch)
            elif self.options.dry_run_dir is not None and batch:
                self._write_for_review(batch_id, batch)
                self.summary.outcomes["dry_run"] += len(batch)
            self._write(updates, adopted)
            return
        assert self.sender is not None
        bodies = [i.body for i in batch]
        assert self._executor is not None and self._writer is not None
        if self._failed.is_set():  # an earlier batch failed for good: send no more
            self._drain()
        future = self._executor.submit(self._send, bodies, batch_id)
        while self._sends and self._sends[0].done():
            self._sends.popleft()
        self._sends.append(future)
        flight = _InFlight(batch_id, batch, updates, future, time.monotonic(), adopted)
        self._written.append(self._writer.submit(self._complete, flight))
        # The send pool keeps MAX_IN_FLIGHT requests going; as many batches again may wait
        # their turn, so this thread keeps preparing while the writer catches up.
        while len(self._written) >= 2 * self.options.max_in_flight:
            self._await_oldest()

    def _send(self, bodies: list[bytes], batch_id: str) -> list[Outcome]:
        """One batch's request, on a send thread; none once a batch has failed for good.

        A send thread takes the next queued batch as soon as its last one ends, before the
        write-back thread has seen that one's failure; this check is what keeps "a batch that
        fails for good stops the run" true with one request at a time.
        """
        if self._failed.is_set():
            raise CancelledError  # never sent: its rows stay pending
        assert self.sender is not None
        started = time.monotonic()  # the batch's own time, not its wait in the queue
        try:
            return self.sender.send(bodies, batch_id)
        except BaseException:
            self._failed.set()
            raise
        finally:
            self._send_seconds[batch_id] = time.monotonic() - started

    def _complete(self, flight: _InFlight) -> None:
        """Wait for one batch's answer and write its outcomes back, in one transaction."""
        ledger: list[LedgerEntry] = list(flight.adopted)
        try:
            outcomes = flight.future.result()
        except CancelledError:  # never sent, as the run stopped first: its rows stay pending
            self.summary.outcomes["failed"] += len(flight.batch)
            self._write(flight.updates, ledger)
            return
        except BatchAborted as exc:
            # The run stops (its send thread has said so); first record what DfE did acknowledge.
            self._settle_aborted(flight, exc.outcomes, ledger)
            raise exc.error from None
        except PipelineError:  # stopped before sending (the run lock was lost): nothing settled
            self._settle_aborted(flight, [], ledger)
            raise
        counts = self._apply_outcomes(list(zip(flight.batch, outcomes, strict=True)), flight.updates, ledger)
        log.info(
            "batch %s: %d records, %s (%.2f s)",
            flight.batch_id,
            len(flight.batch),
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            self._send_seconds.pop(flight.batch_id, time.monotonic() - flight.started),
        )
        self._write(flight.updates, ledger)

    def _settle_aborted(self, flight: _InFlight, settled: list[Outcome], ledger: list[LedgerEntry]) -> None:
        self.summary.outcomes["failed"] += len(flight.batch) - len(settled)  # left pending
        self._apply_outcomes([(flight.batch[o.index], o) for o in settled], flight.updates, ledger)
        self._write(flight.updates, ledger)

    def _await_oldest(self) -> None:
        """Wait until the oldest batch is written back; if it failed, stop sending and settle the rest."""
        try:
            self._written.popleft().result()
        except BaseException:
            for send in self._sends:
                send.cancel()  # only those not started yet: nothing more goes to DfE
            while self._written:  # record what the batches already sent did get acknowledged
                try:
                    self._written.popleft().result()
                except PipelineError as exc:
                    log.warning(
                        "another batch in flight also failed: %s", str(exc).splitlines()[0] if str(exc) else exc
                    )
            raise

    def _drain(self) -> None:
        """Wait for every batch still in flight to be written back; the first failure is raised."""
        while self._written:
            self._await_oldest()

    def _write(self, updates: list[RowUpdate], ledger: list[LedgerEntry]) -> None:
        if self.options.writes and (updates or ledger):
            skipped = self.table.write_back(updates, ledger)
            if skipped:
                self.summary.outcomes["changed_during_run"] += skipped
                log.info("%d rows changed in the table during the run; they stay pending for the next run", skipped)
        if self.on_progress:
            self.on_progress(self.summary)

    def _apply_outcomes(
        self, pairs: list[tuple[_Item, Outcome]], updates: list[RowUpdate], ledger: list[LedgerEntry]
    ) -> Counter:
        counts: Counter = Counter()
        now = utc_now()
        for item, outcome in pairs:
            row = item.row
            if outcome.receipt:
                at = outcome.received_at or now
                sent = in_case_of(row.submission_status, "sent")
                if item.purge:
                    counts["purged"] += 1
                    updates.append(
                        RowUpdate(
                            row_id=row.id,
                            status=sent,
                            api_response=outcome.receipt,
                            expect_payload=None,
                            submission_timestamp=at,
                            purge=True,
                        )
                    )
                    ledger.append(
                        LedgerEntry(item.la_child_id, item.mis_child_id, row.id, None, None, outcome.receipt, at, True)
                    )
                else:
                    counts["sent"] += 1
                    updates.append(
                        RowUpdate(
                            row_id=row.id,
                            status=sent,
                            api_response=outcome.receipt,
                            expect_payload=row.json_payload,
                            submission_timestamp=at,
                            mark_sent=True,
                            previous_hash=item.ledger_hash,
                            row_state=in_case_of(row.row_state, "unchanged"),
                        )
                    )
                    ledger.append(
                        LedgerEntry(
                            item.la_child_id,
                            item.mis_child_id,
                            row.id,
                            item.ledger_json,
                            item.ledger_hash,
                            outcome.receipt,
                            at,
                            False,
                        )
                    )
            elif outcome.rejected:
                counts["rejected"] += 1
                log.warning("row %s (child %s) rejected by DfE: %s", row.id, item.la_child_id, outcome.error)
                updates.append(
                    RowUpdate(
                        row_id=row.id,
                        status=in_case_of(row.submission_status, "error"),
                        api_response=f"{reasons.REJECTED}{outcome.error}"[:4000],
                        expect_payload=row.json_payload,
                    )
                )
            else:
                counts["failed"] += 1
                updates.append(
                    RowUpdate(
                        row_id=row.id,
                        status="",
                        api_response=f"{reasons.WILL_RETRY}: {outcome.error}"[:4000],
                        expect_payload=row.json_payload,
                    )
                )
        self.summary.outcomes.update(counts)
        return counts

    def _write_for_review(self, batch_id: str, batch: list[_Item]) -> None:
        folder = self.options.dry_run_dir
        assert folder is not None
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"batch_{batch_id}.json"
        write_private(path, frame_body(i.body for i in batch))  # whole records: the owner's only
        log.info("batch %s: %d request records written to %s for review", batch_id, len(batch), path)


def _unchanged_since_sent(row: StagingRow) -> bool:
    """An earlier tool set ``previous_json_payload`` to what it sent; the council's SQL changes
    both that and the status when the record changes. A NULL copy says nothing: trust the status."""
    previous = row.previous_json_payload
    return previous is None or previous == row.json_payload


def _sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _as_datetime(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
