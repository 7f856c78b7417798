"""Batches in flight: sent on ``MAX_IN_FLIGHT`` threads, their outcomes written back in the
order they were sent on one more thread, while the run prepares the next ones.

A row becomes ``sent`` only when DfE returned a receipt for it (DESIGN §7). Before a batch
is sent, it is recorded in the in-flight table, with what DfE may hold for each child once it
lands; once DfE answers, the batch's outcomes, ledger entries and the end of that record are
written in one transaction. A child DfE may or may not hold the batch for (no receipt and no
refusal, or a record never written back because the answer, the database or the process was
lost) is *in doubt*, and the next run sends what makes DfE equal the table from either
version. A batch that fails for good stops the sending: nothing queued after it goes to DfE,
and what the batches already sent did get acknowledged is still written back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Protocol

from api_pipeline import reasons
from api_pipeline.api import BatchAborted, Outcome
from api_pipeline.errors import PipelineError
from api_pipeline.runs import RunSummary
from api_pipeline.staging import Doubt, InDoubt, LedgerEntry, RowUpdate, StagingRow, StagingTable
from api_pipeline.stopping import signals_to_the_main_thread
from api_pipeline.timestamps import utc_now

log = logging.getLogger(__name__)


class Sender(Protocol):
    """What the run needs from the API client (api.ApiClient): one Outcome per encoded record,
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
class Item:
    """One row ready to send."""

    row: StagingRow
    la_child_id: str
    mis_child_id: str | None
    record: dict
    body: bytes
    purge: bool
    outline_json: str  # what DfE may hold once the request lands, for the in-flight table
    ledger_json: str | None = None
    ledger_hash: bytes | None = None  # SHA-256 of ledger_json's UTF-8 text

    def in_doubt(self, batch_id: str) -> InDoubt:
        """This child, as the in-flight record of batch ``batch_id`` has it."""
        return InDoubt(self.la_child_id, self.row.id, self.outline_json, batch_id, utc_now())


@dataclass
class _InFlight:
    """A batch handed to the sender whose outcomes are not written back yet."""

    batch_id: str
    batch: list[Item]
    updates: list[RowUpdate]  # notes for rows left unsent, written with the batch's record
    adopted: list[LedgerEntry]  # ledger entries for rows an earlier tool sent, likewise
    in_flight: list[InDoubt]  # the batch's record: written before it may be sent
    started: float
    awaited: bool = False  # a send thread waits for the record (guarded by Batches._changed)
    future: Future = field(default_factory=Future)  # the send: DfE's outcomes
    recorded: Future = field(default_factory=Future)  # the record written: the send may start
    written: Future = field(default_factory=Future)  # the outcomes written back


@dataclass
class Batches:
    """The batches of one run between the sender and the table.

    Without a sender (a dry run, a validation), only :meth:`write` is used. The database
    connection is shared with the run's reading, one user at a time.

    With a sender, one thread writes to the table: each batch's record before it is sent, and
    its outcomes once DfE answered, in the order the batches were sent. A record waits to go
    in the same transaction as the next batch's outcomes unless a send thread is free and
    waiting for it: on a run that keeps every send thread busy, a record costs no transaction
    of its own, and sending never waits longer than one write-back.
    """

    table: StagingTable
    sender: Sender | None
    summary: RunSummary
    max_in_flight: int
    writes: bool  # whether outcomes are written to the table (not a dry run or a validation)
    on_progress: Callable[[RunSummary], None] | None = None

    def __post_init__(self) -> None:
        # Batches are sent on a pool of MAX_IN_FLIGHT threads (one, by default: one request at a
        # time); their records and outcomes are written on one more thread.
        sending = self.sender is not None
        self._executor = (
            ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="send", initializer=signals_to_the_main_thread)
            if sending
            else None
        )
        self._changed = threading.Condition()  # a record to write, a send finished, or stopping
        self._to_record: deque[_InFlight] = deque()  # batches whose record is not written yet
        self._to_write: deque[_InFlight] = deque()  # batches whose outcomes are not written yet, oldest first
        self._stopping = False
        self._writer: threading.Thread | None = None
        if sending:
            self._writer = threading.Thread(target=self._write_loop, name="write-back", daemon=True)
            self._writer.start()
        self._written: deque[_InFlight] = deque()  # batches the run has not seen written back, oldest first
        self._failed = threading.Event()  # set by a send thread when its batch failed for good
        self._send_seconds: dict[str, float] = {}  # batch id -> how long its sending took, retries included

    def submit(
        self,
        batch_id: str,
        batch: list[Item],
        updates: list[RowUpdate],
        adopted: list[LedgerEntry],
        in_flight: list[InDoubt],
    ) -> None:
        """Hand a batch to the send pool, once its record (``in_flight``, with ``updates`` and
        ``adopted``) is written; its outcomes are written back once DfE answers.

        Nothing is sent unless it is recorded first (DESIGN §7, batches in doubt). Waits while
        twice ``MAX_IN_FLIGHT`` batches are not yet written back; raises the first batch's failure
        for good.
        """
        assert self._executor is not None
        if self._failed.is_set():  # an earlier batch failed for good: send no more
            self.drain()
        flight = _InFlight(batch_id, batch, updates, adopted, in_flight, time.monotonic())
        flight.future = self._executor.submit(self._send, [i.body for i in batch], flight)
        flight.future.add_done_callback(self._wake)
        with self._changed:
            self._to_record.append(flight)
            self._to_write.append(flight)
            self._changed.notify()
        self._written.append(flight)
        # The send pool keeps MAX_IN_FLIGHT requests going; as many batches again may wait
        # their turn, so the run keeps preparing while the writer catches up.
        while len(self._written) >= 2 * self.max_in_flight:
            self._await_oldest()

    def drain(self) -> None:
        """Wait for every batch still in flight to be written back; the first failure is raised."""
        while self._written:
            self._await_oldest()

    def shutdown(self) -> None:
        """Stop the threads; batches not started are cancelled (their rows stay pending), and every
        batch that was sent is written back (Ctrl+C or SIGTERM while batches are in flight)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
        if self._writer is not None:
            with self._changed:
                self._stopping = True
                self._changed.notify()
            self._writer.join()

    def write(self, updates: list[RowUpdate], ledger: list[LedgerEntry], doubt: Doubt | None = None) -> None:
        """Write row updates, ledger entries and what ``doubt`` says in one transaction (when the
        run writes), then report progress."""
        if self.writes and (updates or ledger or doubt):
            skipped = self.table.write_back(updates, ledger, doubt=doubt)
            if skipped:
                self.summary.outcomes["changed_during_run"] += skipped
                log.info("%d rows changed in the table during the run; they stay pending for the next run", skipped)
        if self.on_progress:
            self.on_progress(self.summary)

    def _wake(self, _future: Future) -> None:
        with self._changed:
            self._changed.notify()

    def _send(self, bodies: list[bytes], flight: _InFlight) -> list[Outcome]:
        """One batch's request, on a send thread, once its record is written; none once a batch
        has failed for good.

        A send thread takes the next queued batch as soon as its last one ends, before the
        write-back thread has seen that one's failure; this check is what keeps "a batch that
        fails for good stops the run" true with one request at a time.
        """
        if self._failed.is_set():
            raise CancelledError  # never sent: its rows stay pending
        if not flight.recorded.done():
            with self._changed:  # the writer need not wait for the next write-back to write it
                flight.awaited = True
                self._changed.notify()
        try:
            flight.recorded.result()  # a record that could not be written raises: never sent
        except BaseException:
            self._failed.set()
            raise
        if self._failed.is_set():
            raise CancelledError
        assert self.sender is not None
        started = time.monotonic()  # the batch's own time, not its wait in the queue
        try:
            return self.sender.send(bodies, flight.batch_id)
        except BaseException:
            self._failed.set()
            raise
        finally:
            self._send_seconds[flight.batch_id] = time.monotonic() - started

    # -- the write-back thread -----------------------------------------------------

    def _write_loop(self) -> None:
        """Write outcomes in the order the batches were sent, with every record waiting; and
        records alone when a send thread waits for one."""
        signals_to_the_main_thread()
        while True:
            with self._changed:
                while not (
                    (self._to_write and self._to_write[0].future.done())
                    or any(flight.awaited for flight in self._to_record)
                    or self._stopping
                ):
                    self._changed.wait()
                records = list(self._to_record)
                self._to_record.clear()
                answered = self._to_write.popleft() if self._to_write and self._to_write[0].future.done() else None
                if not records and answered is None:
                    if not self._to_write:
                        return  # stopping, and nothing left
                    # Stopping with a send still running (the send pool's shutdown waits for it).
                    self._changed.wait(0.05)
                    continue
            try:
                self._write_step(records, answered)
            except BaseException as exc:  # a fault in the tool: no batch may wait for ever
                log.debug("the write-back thread failed", exc_info=True)
                for flight in [*records, *([answered] if answered is not None else [])]:
                    for future in (flight.recorded, flight.written):
                        if not future.done():
                            future.set_exception(exc)

    def _write_step(self, records: list[_InFlight], answered: _InFlight | None) -> None:
        """One transaction: the records of ``records`` and the outcomes of ``answered``. Never raises:
        each batch's futures say how it went."""
        # A send that ended before its record was written never reached DfE (it waits for the record):
        # no record needed.
        records = [r for r in records if not r.future.done()]
        updates: list[RowUpdate] = []
        ledger: list[LedgerEntry] = []
        doubt = Doubt()
        for flight in records:
            updates += flight.updates
            ledger += flight.adopted
            doubt.in_flight.extend(flight.in_flight)
        outcome = _Outcome(Counter(), None, answered=False)
        if answered is not None:
            outcome = self._outcomes(answered, updates, ledger, doubt)
        try:
            self.write(updates, ledger, doubt)
        except BaseException as exc:
            for flight in records:
                flight.recorded.set_exception(exc)
            if answered is not None:
                self._count_unwritten(answered, outcome.counts)
                answered.written.set_exception(exc)
            return
        for flight in records:
            flight.recorded.set_result(None)
        if answered is None:
            return
        self.summary.outcomes.update(outcome.counts)
        if outcome.answered:
            log.info(
                "batch %s: %d records, %s (%.2f s)",
                answered.batch_id,
                len(answered.batch),
                ", ".join(f"{k} {v}" for k, v in sorted(outcome.counts.items())),
                self._send_seconds.pop(answered.batch_id, time.monotonic() - answered.started),
            )
        if outcome.error is not None:
            answered.written.set_exception(outcome.error)
        else:
            answered.written.set_result(None)

    def _outcomes(
        self, flight: _InFlight, updates: list[RowUpdate], ledger: list[LedgerEntry], doubt: Doubt
    ) -> _Outcome:
        """What DfE's answer to ``flight`` makes of its rows, added to the transaction's lists, and
        the error that stops the run, if any."""
        doubt.landed.append(flight.batch_id)
        try:
            outcomes = flight.future.result()
        except CancelledError:  # never sent, as the run stopped first: its rows stay pending
            return _Outcome(Counter(failed=len(flight.batch)), None, answered=False)
        except BatchAborted as exc:
            # The run stops (its send thread has said so); first record what DfE did acknowledge.
            answered = {o.index for o in exc.outcomes}
            unanswered = [item for index, item in enumerate(flight.batch) if index not in answered]
            counts = settle([(flight.batch[o.index], o) for o in exc.outcomes], updates, ledger, doubt, flight.batch_id)
            counts["failed"] += len(unanswered)  # left pending, and in doubt: the request may have landed
            doubt.in_doubt.extend(item.in_doubt(flight.batch_id) for item in unanswered)
            return _Outcome(counts, exc.error, answered=False)
        except BaseException as exc:  # stopped before sending (the record, or the run lock, was lost)
            return _Outcome(Counter(failed=len(flight.batch)), exc, answered=False)
        counts = settle(list(zip(flight.batch, outcomes, strict=True)), updates, ledger, doubt, flight.batch_id)
        return _Outcome(counts, None, answered=True)

    def _count_unwritten(self, flight: _InFlight, counts: Counter) -> None:
        """The write-back of ``flight`` failed: what DfE acknowledged is in doubt, the rest not sent."""
        acknowledged = counts["sent"] + counts["purged"]
        self.summary.outcomes["in_doubt"] += acknowledged
        self.summary.outcomes["failed"] += len(flight.batch) - acknowledged
        if acknowledged:
            log.warning(
                "batch %s: DfE acknowledged %d records, but the table could not record it; the next run sends "
                "them again whole",
                flight.batch_id,
                acknowledged,
            )

    def _await_oldest(self) -> None:
        """Wait until the oldest batch is written back; if it failed, stop sending and settle the rest."""
        try:
            self._written.popleft().written.result()
        except BaseException:
            for flight in self._written:
                flight.future.cancel()  # only those not started yet: nothing more goes to DfE
            while self._written:  # record what the batches already sent did get acknowledged
                try:
                    self._written.popleft().written.result()
                except (PipelineError, CancelledError) as exc:
                    if isinstance(exc, PipelineError):
                        log.warning(
                            "another batch in flight also failed: %s", str(exc).splitlines()[0] if str(exc) else exc
                        )
            raise


@dataclass
class _Outcome:
    """What a batch's answer made of its rows, by outcome; the error that stops the run, if any."""

    counts: Counter
    error: BaseException | None
    answered: bool  # DfE answered the whole batch (not stopped part-way, not cancelled)


def settle(
    pairs: list[tuple[Item, Outcome]],
    updates: list[RowUpdate],
    ledger: list[LedgerEntry],
    doubt: Doubt,
    batch_id: str,
) -> Counter:
    """What DfE's answers make of the rows: a row update each (and a ledger entry for each
    receipt) added to ``updates`` and ``ledger``; returns the count of each outcome.

    A receipt ends a child's doubt, if it was in doubt (``doubt.resolved``): the ledger says
    what DfE holds. A refusal leaves the child as it was: DfE stored nothing of the request.
    Any other answer may have been stored or not, so the child is in doubt (``doubt.in_doubt``)
    until a later run's receipt.
    """
    counts: Counter = Counter()
    now = utc_now()
    for item, outcome in pairs:
        row = item.row
        if outcome.receipt:
            # DfE holds the record now (a purge item has no record: the ledger says the child is gone).
            at = outcome.received_at or now
            purge = item.purge
            counts["purged" if purge else "sent"] += 1
            updates.append(
                RowUpdate(
                    row_id=row.id,
                    status=in_case_of(row.submission_status, "sent"),
                    api_response=outcome.receipt,
                    expect_payload=None if purge else row.json_payload,
                    submission_timestamp=at,
                    mark_sent=not purge,
                    previous_hash=None if purge else item.ledger_hash,
                    row_state=None if purge else in_case_of(row.row_state, "unchanged"),
                    purge=purge,
                )
            )
            ledger_json, ledger_hash = (None, None) if purge else (item.ledger_json, item.ledger_hash)
            ledger.append(
                LedgerEntry(
                    item.la_child_id, item.mis_child_id, row.id, ledger_json, ledger_hash, outcome.receipt, at, purge
                )
            )
            if row.in_doubt:
                doubt.resolved.append(item.la_child_id)
        elif outcome.rejected:
            counts["rejected"] += 1
            log.warning("row %s (child %s) rejected by DfE: %s", row.id, item.la_child_id, outcome.error)
            updates.append(
                RowUpdate.unsent(row, in_case_of(row.submission_status, "error"), f"{reasons.REJECTED}{outcome.error}")
            )
        else:
            counts["failed"] += 1
            updates.append(RowUpdate.unsent(row, "", f"{reasons.WILL_RETRY}: {outcome.error}"))
            doubt.in_doubt.append(item.in_doubt(batch_id))
    return counts
