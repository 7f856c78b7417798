"""``run``: stream rows → build payloads → validate → batch → send → write back.

This module decides what each row needs (DESIGN §4, §7): nothing, its whole record, a delta
against what DfE holds per the ledger, purges, or adoption of what an earlier tool sent.
Reading a row and knowing its child is :mod:`~api_pipeline.job.rows`; sending batches and
writing their outcomes back is :mod:`~api_pipeline.job.batches`. A crash at any moment leaves
every row either untouched (re-sent next run, which DfE treats as an upsert) or truthfully
marked.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

from api_pipeline import reasons
from api_pipeline.dfe.json_text import encode_record, frame_body
from api_pipeline.dfe.payload import (
    build_purge,
    duplicate_ids,
    load_normal,
    normal_form,
    normalise,
    outline_union,
    request_for,
    request_in_doubt,
)
from api_pipeline.dfe.schema import RecordValidator, generalise_path
from api_pipeline.errors import Invalid, Later, PipelineError, Skip
from api_pipeline.job.batches import Batches, Item, Sender, in_case_of, outline_of
from api_pipeline.job.rows import DUPLICATE_CHILD, Identities, child_key, child_of, parse_payload
from api_pipeline.job.run_files import RunSummary, make_private_dir, replace_private
from api_pipeline.settings.config import Settings
from api_pipeline.settings.options import MAX_RECEIPT_LENGTH
from api_pipeline.store.ledger import Doubt, InDoubt, LedgerEntry
from api_pipeline.store.staging import StagingRow, StagingTable
from api_pipeline.store.write_back import RowUpdate
from api_pipeline.timestamps import utc_now, utc_stamp
from api_pipeline.wording import plural, printable

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """How this run goes: the settings that shape it (defaults: the settings' own) and the command's flags.

    ``max_runtime`` None: no limit (library callers and tests; a run from the command line has MAX_RUNTIME).
    ``validate_only`` reads the rows held back as ``invalid`` too, which a run leaves alone.
    """

    partial: bool = Settings.use_partial_payload
    limit: int | None = None
    dry_run_dir: Path | None = None
    batch_size: int = Settings.batch_size
    validate_only: bool = False
    all_rows: bool = False
    max_runtime: float | None = None
    max_in_flight: int = Settings.max_in_flight
    # Every child as if DfE's copy were in doubt: sent whole, with purges for all the ledger says
    # it holds (run --resend-all, after restoring an older copy of the tables).
    resend_all: bool = False
    # Children the ledger says DfE holds with no row left (job.orphans): purged after the rows
    # (run --purge-orphans), past the guard against a table emptied by mistake (--purge-many-orphans).
    purge_orphans: bool = False
    purge_many_orphans: bool = False

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
        recorder: StagingTable | None = None,
    ) -> None:
        """``recorder``: ``table`` on a connection of the run's own for recording batches before
        they are sent (see :class:`~api_pipeline.job.batches.Batches`); ``table`` itself when None."""
        self.table = table
        self.validator = validator
        self.options = options
        self.summary = summary
        self._batch: list[Item] = []
        self._updates: list[RowUpdate] = []
        self._batch_counter = 0
        self._last_row_id = 0  # the highest row id read: rows after it were not reached if the run stops
        self._adopted: list[LedgerEntry] = []  # ledger entries for rows an earlier tool sent
        self._in_batch: set[str] = set()  # the children in the batch being filled
        # A read-only run (validate, a dry run) moves nothing: the children of batches an earlier
        # run left in flight are known in doubt from here instead (child -> outline).
        self._left_in_flight: dict[str, str] = {}
        self.identities = Identities(table)
        # Batches are sent and written back on threads of their own while this thread reads
        # and prepares the next ones.
        self.batches = Batches(table, sender, summary, options.max_in_flight, options.writes, on_progress, recorder)

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
        """After an early stop: how many rows the run would still have read (best effort, counts only).

        So that what became of the rows read adds up to them: rows read once and kept for the
        second look, which the run did not get back to, count as not reached rather than read, and
        a row read whose outcome was never settled (the run stopped as it was being prepared) as not
        sent.
        """
        waiting = self.identities.waiting
        read = self.summary.rows_read
        self.summary.rows_read -= waiting
        unsettled = self.summary.rows_read - self.summary.accounted
        if unsettled > 0:
            self.summary.outcomes["failed"] += unsettled
        try:
            left = self.table.count_candidates_after(
                self._last_row_id, all_rows=self.options.all_rows, held_back=self.options.validate_only
            )
        except PipelineError as exc:  # the database may be why the run stopped
            log.debug("rows not reached could not be counted: %s", exc)
            self.summary.not_reached_unknown = True
            return
        if self.options.limit is not None:
            left = min(left, max(0, self.options.limit - read))
        self.summary.outcomes["not_reached"] = left + waiting

    def _run(self) -> RunSummary:
        started = time.monotonic()
        if self.options.writes:
            self._take_in_doubt()
        else:
            self._left_in_flight = {
                child.la_child_id: child.outline_json
                for batch in self.table.left_in_flight()
                for child in batch.children
            }
        self.identities.find_duplicates()
        deadline = None if self.options.max_runtime is None else started + self.options.max_runtime
        try:
            rows = self.table.iter_candidates(
                limit=self.options.limit, all_rows=self.options.all_rows, held_back=self.options.validate_only
            )
            if self._take_all(rows, deadline, count=True) and self.identities.has_later:
                self._take_all(self.identities.second_look_rows(), deadline, count=False)
            self._flush()
            self.batches.drain()
            if self.options.writes:
                self.table.db.finish_bulk_writes()
        finally:
            self.batches.shutdown()
            self.summary.seconds = time.monotonic() - started
            self.summary.finished_at = utc_stamp()
        return self.summary

    def _take_all(self, rows: Iterator[StagingRow], deadline: float | None, *, count: bool) -> bool:
        """Prepare and send ``rows``; False when MAX_RUNTIME stopped the run first."""
        for row in rows:
            if count:
                self.summary.rows_read += 1
            else:
                self.identities.took_second_look_row()
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

    def _take_in_doubt(self) -> None:
        """Batches an earlier run recorded and never wrote back leave their children in doubt
        (DESIGN §7): moved to the in-doubt table before any row is read, so that each is read
        again, whatever its status says, and sent whole."""
        left = self.table.left_in_flight()
        if not left:
            return
        merged: dict[str, InDoubt] = {}
        for batch in left:
            if not batch.readable:
                log.warning(
                    "the in-flight record of batch %s in %s is not one this tool wrote and is left as it is; its "
                    "children cannot be told apart, so DfE's copy of them may differ from the table",
                    batch.batch_id,
                    self.table.in_flight,
                )
                continue
            for child in batch.children:
                earlier = merged.get(child.la_child_id)
                known = earlier.outline_json if earlier else self.table.doubt_outline(child.la_child_id)
                if known is not None:
                    what = f"the in-doubt entry for child {child.la_child_id}"
                    union = outline_union(outline_of(known, what), outline_of(child.outline_json, what))
                    child = replace(child, outline_json=encode_record(union).decode("utf-8"))
                merged[child.la_child_id] = child
        landed = [batch.batch_id for batch in left if batch.readable]
        self.table.write_back([], [], doubt=Doubt(landed=landed, in_doubt=list(merged.values())))
        log.warning(
            "%d %s sent by an earlier run never had %s answer recorded (the run stopped, or the answer or the "
            "database was lost): %s in doubt and sent whole, with purges for whatever %s may have left",
            len(landed),
            "batch" if len(landed) == 1 else "batches",
            "its" if len(landed) == 1 else "their",
            f"{len(merged)} {'child is' if len(merged) == 1 else 'children are'}",
            "it" if len(landed) == 1 else "they",
        )

    def _take(self, row: StagingRow) -> None:
        self._last_row_id = max(self._last_row_id, row.id)
        try:
            item = self._prepare(row)
        except Later:
            return
        except Skip as problem:
            self.summary.outcomes["skipped"] += 1
            self.summary.note_problem(problem.key, row.id)
            log.warning("row %s skipped: %s", row.id, problem.reason)
            # DfE's last answer (a receipt, or why it refused the record) stays in api_response;
            # only an empty one, or this tool's own earlier note, gets the reason. A row the server
            # cannot send as text cannot be matched by the write-back's check: it gets nothing.
            earlier = (row.api_response or "").strip()
            if self.options.writes and row.writable and (not earlier or earlier.startswith(reasons.SKIPPED)):
                self._updates.append(RowUpdate.unsent(row, "", f"{reasons.SKIPPED}{problem.reason}"))
            return
        except Invalid as problem:
            self.summary.outcomes["invalid"] += 1
            for key in problem.keys:
                self.summary.note_problem(key, row.id)
            log.warning("row %s (child %s) is invalid: %s", row.id, row.person_id, problem.reason)
            if self.options.writes:
                status = in_case_of(row.submission_status, "invalid")
                self._updates.append(RowUpdate.unsent(row, status, f"{reasons.INVALID}{problem.reason}"))
            return
        if item is not None and self.options.validate_only and row.held_back:
            # It passes now, but a run leaves it alone until the council's SQL sets it back to pending.
            self.summary.outcomes["held_back_passes"] += 1
            return
        if item is not None:
            child = child_key(item.la_child_id)
            if child in self._in_batch:  # never one child twice in a request (DESIGN §4)
                self.identities.duplicates.add(child)
                self.summary.outcomes["skipped"] += 1
                self.summary.note_problem(DUPLICATE_CHILD[1], row.id)
                log.warning("row %s skipped: %s", row.id, DUPLICATE_CHILD[0])
                return
            self._in_batch.add(child)
            self._batch.append(item)

    def _prepare(self, row: StagingRow) -> Item | None:
        try:
            return self._prepare_row(row)
        except (Invalid, Skip, Later):
            raise
        except (RecursionError, MemoryError, TypeError, ValueError, KeyError, AttributeError) as exc:
            # Whatever the record holds must not stop the run for every other child.
            log.debug("row %s could not be prepared", row.id, exc_info=True)
            raise Invalid(
                f"the record could not be checked ({type(exc).__name__}); see the log at debug level",
                "could not be checked",
            ) from None

    def _prepare_row(self, row: StagingRow) -> Item | None:
        self.identities.check_row(row)
        if row.is_deleted:
            return self._prepare_purge(row)
        record = parse_payload(row.json_payload)
        la_child_id = child_of(record)
        row = self._resending(self.identities.identify(row, la_child_id), la_child_id)
        # The record in normal form (empty objects and lists dropped) is what DfE will hold:
        # it is validated whole, its JSON goes in the ledger, and the request is built from it.
        try:
            record, full = normal_form(record)
        except ValueError:
            raise Invalid(reasons.NOT_ENCODABLE, "bad text") from None
        mis = record.get("mis_child_id")
        mis_child_id = mis if isinstance(mis, str) else None
        # What DfE will hold once it acknowledges: the normalised record (``full``).
        ledger_json, ledger_hash = full.decode("utf-8"), hashlib.sha256(full).digest()
        inherited = None
        if not row.ledger_found:
            if row.is_sent and _unchanged_since_sent(row) and not row.in_doubt:
                self._adopt(row, la_child_id, mis_child_id, ledger_json, ledger_hash)
                return None
            inherited = self._inherited(row, la_child_id)
        problems = self.validator.problems(record)
        if problems:
            raise Invalid(
                "; ".join(f"{path}: {message}" for path, message in problems),
                *(f"schema: {generalise_path(path)}" for path, _ in problems),
            )
        duplicates = duplicate_ids(record)
        if duplicates:
            raise Invalid(f"{duplicates[0]}: the same id appears twice in this list", "duplicate id in a list")
        body: dict | None
        held = inherited if not row.ledger_found else self._baseline(row)
        if row.in_doubt:
            # DfE holds what the ledger says or what a batch whose answer was lost made of it
            # (DESIGN §7): the whole record, with purges for every part either may hold, makes
            # it equal the table from both. Never "already up to date".
            self.summary.resent_in_doubt += 1
            log.info("row %s (child %s): DfE's copy is in doubt; sending the whole record", row.id, row.person_id)
            body = request_in_doubt(record, held, self._doubt_outline(row))
        elif not row.ledger_found:
            # First contact (DESIGN §4): the whole record, plus purges for whatever the earlier
            # tool's last copy has and the record now lacks, in either mode.
            body = request_for(record, inherited, delta=False)
        else:
            body = request_for(record, held, delta=self.options.partial)
        if body is None:
            self._mark_unchanged(row)
            return None
        if body is record:  # a first send: the record itself, validated above
            encoded = full
        else:  # a delta or purges: the request itself must be valid too
            errors = self.validator.errors(body)
            if errors:
                raise Invalid(f"{reasons.REQUEST_INVALID}: " + "; ".join(errors), "request invalid")
            encoded = encode_record(body)
        return Item(
            row=row,
            la_child_id=la_child_id,
            mis_child_id=mis_child_id,
            record=body,
            body=encoded,
            purge=False,
            ledger_json=ledger_json,
            ledger_hash=ledger_hash,
        )

    def _doubt_outline(self, row: StagingRow) -> dict:
        """What a batch in doubt may have left DfE holding for this row's child, beyond the ledger."""
        return outline_of(row.doubt_outline or "{}", f"row {row.id}: the in-doubt entry for child {row.person_id}")

    def _resending(self, row: StagingRow, la_child_id: str) -> StagingRow:
        """``row`` as a child in doubt when a batch left in flight carried it (a read-only run), or
        with --resend-all (with nothing known beyond the ledger)."""
        if row.in_doubt:
            return row
        left = self._left_in_flight.get(la_child_id)
        if left is not None:
            return replace(row, doubt_outline=left)
        if self.options.resend_all:
            return replace(row, doubt_outline="{}")
        return row

    def _inherited(self, row: StagingRow, la_child_id: str) -> dict | None:
        """What an earlier tool last sent for a child this tool has not: ``previous_json_payload``
        in normal form, when it is a record of this child (DESIGN §4). None otherwise."""
        if row.previous_json_payload is None:
            return None
        try:
            previous = parse_payload(row.previous_json_payload, "previous_json_payload")
        except Invalid as problem:
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
        # The earlier tool's note, kept as this child's receipt: shown escaped wherever it goes next.
        receipt = printable((row.api_response or "").strip())[:MAX_RECEIPT_LENGTH]
        at = _as_datetime(row.submission_timestamp) or utc_now()
        self._adopted.append(
            LedgerEntry(la_child_id, mis_child_id, row.id, ledger_json, ledger_hash, receipt, at, False)
        )

    def _prepare_purge(self, row: StagingRow) -> Item | None:
        la_child_id = row.person_id
        mis_child_id = None
        try:
            record = parse_payload(row.json_payload)
            la_child_id = child_of(record)
            mis = record.get("mis_child_id")
            mis_child_id = mis if isinstance(mis, str) and mis else None
        except Invalid:
            pass  # a deleted child's purge needs only its id
        if not la_child_id:
            raise Invalid(reasons.PURGE_WITHOUT_ID, "purge without id")
        row = self._resending(self.identities.identify(row, la_child_id), la_child_id)
        if row.ledger_purged and not row.in_doubt:
            # Found by its la_child_id: DfE has already deleted this child, as the table says
            # (read by validate --all): already up to date.
            self.summary.outcomes["unchanged"] += 1
            return None
        body = build_purge(la_child_id, mis_child_id)
        errors = self.validator.errors(body)
        if errors:
            raise Invalid(f"{reasons.PURGE_INVALID}: " + "; ".join(errors), "purge schema")
        return Item(
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
            self.batches.write(updates, adopted)
            return
        self.batches.submit(batch_id, batch, updates, adopted)

    def _write_for_review(self, batch_id: str, batch: list[Item]) -> None:
        folder = self.options.dry_run_dir
        assert folder is not None
        make_private_dir(folder)
        path = folder / f"batch_{batch_id}.json"
        replace_private(path, frame_body(i.body for i in batch))  # whole records: the owner's only
        log.info("batch %s: %s written to %s for review", batch_id, plural(len(batch), "record"), path)


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
