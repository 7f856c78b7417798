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

import functools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from api_pipeline import reasons
from api_pipeline.dfe.api import Outcome
from api_pipeline.dfe.json_text import encode_record
from api_pipeline.dfe.payload import load_outline, outline, outline_union
from api_pipeline.dfe.receipts import recorded_time
from api_pipeline.errors import BatchAborted, PipelineError
from api_pipeline.job.run_files import OUTCOME_WORDS, RunSummary
from api_pipeline.stopping import signals_to_the_main_thread
from api_pipeline.store.ledger import Doubt, InDoubt, LedgerEntry
from api_pipeline.store.staging import StagingRow, StagingTable
from api_pipeline.store.write_back import RowUpdate
from api_pipeline.timestamps import utc_now
from api_pipeline.wording import plural

log = logging.getLogger(__name__)


# How often the main thread, waiting for a batch, wakes to run Python: a signal's handler runs
# only then (see hearing_signals).
HEAR_SIGNALS_EVERY = 0.25  # seconds


def hearing_signals(future: Future) -> Future:
    """Wait for ``future`` on the main thread in short steps, and return it once done.

    Python runs a signal's handler in the main thread, between two of its steps. POSIX gives the
    signal to any thread that does not block it: the tool's own threads block the stop signals
    (:func:`~api_pipeline.stopping.signals_to_the_main_thread`), but a thread a library starts
    may not, and a signal it takes wakes nobody. Waking every :data:`HEAR_SIGNALS_EVERY` seconds,
    the main thread hears Ctrl+C, SIGTERM or SIGHUP within that time whichever thread took it,
    rather than once DfE answers the batch in flight.
    """
    while not wait_for([future], timeout=HEAR_SIGNALS_EVERY).done:
        pass
    return future


class Sender(Protocol):
    """What the run needs from the API client (api.ApiClient): one Outcome per encoded record,
    in order, or :class:`~api_pipeline.errors.BatchAborted` with those settled before the run had to stop."""

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
    """One row ready to send; or, with ``orphan``, a purge for a child no row produces any more
    (``job.orphans``): its ``row`` stands for none, and nothing is written to the staging table."""

    row: StagingRow
    la_child_id: str
    mis_child_id: str | None
    record: dict
    body: bytes
    purge: bool
    ledger_json: str | None = None
    ledger_hash: bytes | None = None  # SHA-256 of ledger_json's UTF-8 text
    orphan: bool = False

    @functools.cached_property
    def outline_json(self) -> str:
        """For the in-flight table: what DfE may hold once the request lands, beyond the ledger's
        record (:func:`~api_pipeline.dfe.payload.outline`), with what the child's earlier doubt
        outlined. Worked out on the thread that records the batch, not the one reading rows."""
        parts = outline(self.record)
        if self.row.doubt_outline is not None:
            what = f"row {self.row.id}: the in-doubt entry for child {self.la_child_id}"
            parts = outline_union(outline_of(self.row.doubt_outline, what), parts)
        return encode_record(parts).decode("utf-8")

    def in_doubt(self, batch_id: str, at: datetime | None = None) -> InDoubt:
        """This child, as the in-flight record of batch ``batch_id`` has it."""
        return InDoubt(self.la_child_id, self.row.id, self.outline_json, batch_id, at or utc_now())


def outline_of(text: str, what: str) -> dict:
    """An outline as the tool wrote it; ``{}`` (with a warning naming ``what``) for anything else:
    nothing to purge by, but the record still goes whole."""
    found = load_outline(text)
    if found is None:
        log.warning("%s is unreadable; the record is sent whole without purges for it", what)
        return {}
    return found


@dataclass
class _InFlight:
    """A batch handed to the sender whose outcomes are not written back yet."""

    batch_id: str
    batch: list[Item]
    updates: list[RowUpdate]  # notes for rows left unsent, written with the batch's outcomes
    adopted: list[LedgerEntry]  # ledger entries for rows an earlier tool sent, likewise
    future: Future
    started: float


@dataclass
class Batches:
    """The batches of one run between the sender and the table.

    Without a sender (a dry run, a validation), only :meth:`write` is used. The database
    connection is shared with the run's reading, one user at a time.

    Each batch is recorded in the in-flight table before it is sent, on a thread of its own and
    on ``recorder``: the table on a connection of the run's own for that (``table`` itself when
    there is none). A batch's record is written while the batch before it is at DfE, so it
    waits neither for another batch's write-back nor for the run to read the next rows.
    """

    table: StagingTable
    sender: Sender | None
    summary: RunSummary
    max_in_flight: int
    writes: bool  # whether outcomes are written to the table (not a dry run or a validation)
    on_progress: Callable[[RunSummary], None] | None = None
    recorder: StagingTable | None = None

    def __post_init__(self) -> None:
        # Batches are sent on a pool of MAX_IN_FLIGHT threads (one, by default: one request at a
        # time), and their outcomes written back on one more thread, in the order they were sent.
        sending = self.sender is not None
        self._executor = self._writer = self._recording = None
        if sending:
            quiet = signals_to_the_main_thread
            self._executor = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="send", initializer=quiet)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="write-back", initializer=quiet)
            self._recording = ThreadPoolExecutor(1, thread_name_prefix="record", initializer=quiet)
        self._sends: deque[Future] = deque()  # send futures not known to be finished
        self._written: deque[Future] = deque()  # write-back futures, oldest first
        self._failed = threading.Event()  # set by a send thread when its batch failed for good
        self._send_seconds: dict[str, float] = {}  # batch id -> how long its sending took, retries included
        self._times_set_aside = 0  # receipts whose time was not believed (written back on the writer thread)

    def submit(
        self,
        batch_id: str,
        batch: list[Item],
        updates: list[RowUpdate],
        adopted: list[LedgerEntry],
    ) -> None:
        """Record the batch (DESIGN §7, batches in doubt) and hand it to the send pool,
        which sends it once it is recorded; its outcomes are written back with ``updates`` and
        ``adopted`` once DfE answers.

        Nothing is sent unless it is recorded first: a record that cannot be written stops the
        batch as a failure for good does.
        Waits while twice ``MAX_IN_FLIGHT`` batches are not yet written back; raises the first
        batch's failure for good.
        """
        assert self._executor is not None and self._writer is not None and self._recording is not None
        if self._failed.is_set():  # an earlier batch failed for good: send no more
            self.drain()
        recorded = self._recording.submit(self._record, batch_id, batch)
        future = self._executor.submit(self._send, [i.body for i in batch], batch_id, recorded)
        while self._sends and self._sends[0].done():
            self._sends.popleft()
        self._sends.append(future)
        flight = _InFlight(batch_id, batch, updates, adopted, future, time.monotonic())
        self._written.append(self._writer.submit(self._complete, flight))
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
        if self._writer is not None:  # a write-back waiting its turn is for a batch sent, or one just cancelled
            self._writer.shutdown(wait=True, cancel_futures=False)
        if self._recording is not None:  # a record still to write is for a batch that will not be sent
            self._recording.shutdown(wait=True, cancel_futures=True)
        if self._times_set_aside:  # said once a run, with no receipt's text: it came from the answer
            count, self._times_set_aside = self._times_set_aside, 0
            log.warning(
                "receipts from DfE whose time was not believable (not a real date, before 2020, or more than a day "
                "ahead of this computer's clock): %d; "
                "this computer's time was recorded for them instead, in submission_timestamp and the ledger",
                count,
            )

    def write(self, updates: list[RowUpdate], ledger: list[LedgerEntry], doubt: Doubt | None = None) -> None:
        """Write row updates, ledger entries and what ``doubt`` says in one transaction (when the
        run writes), then report progress."""
        if self.writes and (updates or ledger or doubt):
            skipped = self.table.write_back(updates, ledger, doubt=doubt)
            if skipped:
                self.summary.outcomes["changed_during_run"] += skipped
                log.info(
                    "%s in the table during the run; %s pending for the next run",
                    plural(skipped, "row was changed", "rows were changed"),
                    "it stays" if skipped == 1 else "they stay",
                )
        if self.on_progress:
            self.on_progress(self.summary)

    def _record(self, batch_id: str, batch: list[Item]) -> None:
        """Write the batch's record in the in-flight table, on the recording thread."""
        now = utc_now()
        in_flight = [item.in_doubt(batch_id, now) for item in batch]
        (self.recorder or self.table).write_back([], [], doubt=Doubt(in_flight=in_flight))

    def _send(self, bodies: list[bytes], batch_id: str, recorded: Future) -> list[Outcome]:
        """One batch's request, on a send thread, once ``recorded``; none once a batch has failed for good.

        A send thread takes the next queued batch as soon as its last one ends, before the
        write-back thread has seen that one's failure; this check is what keeps "a batch that
        fails for good stops the run" true with one request at a time.
        """
        if self._failed.is_set():
            raise CancelledError  # never sent: its rows stay pending
        try:
            recorded.result()  # the batch's record, written: or never sent
        except BaseException:
            self._failed.set()
            raise
        if self._failed.is_set():
            raise CancelledError
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
        """Wait for one batch's answer and write its outcomes back, in one transaction; counted
        once written (what DfE acknowledged but the table could not record is in doubt)."""
        updates, ledger = list(flight.updates), list(flight.adopted)
        doubt = Doubt()
        outcome = self._outcomes(flight, updates, ledger, doubt)
        try:
            self.write(updates, ledger, doubt)
        except BaseException:
            self._count_unwritten(flight, outcome.counts)
            raise
        self.summary.outcomes.update(outcome.counts)
        self._times_set_aside += outcome.times_set_aside
        if outcome.answered:
            log.info(
                "batch %s: %s: %s (%.2f s)",
                flight.batch_id,
                plural(len(flight.batch), "record"),
                ", ".join(f"{outcome.counts[k]} {words}" for k, words in OUTCOME_WORDS.items() if outcome.counts[k]),
                self._send_seconds.pop(flight.batch_id, time.monotonic() - flight.started),
            )
        if outcome.error is not None:
            raise outcome.error

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
            settled = [(flight.batch[o.index], o) for o in exc.outcomes]
            counts, set_aside = settle(settled, updates, ledger, doubt, flight.batch_id)
            counts["failed"] += len(unanswered)  # left pending, and in doubt: the request may have landed
            doubt.in_doubt.extend(item.in_doubt(flight.batch_id) for item in unanswered)
            return _Outcome(counts, exc.error, answered=False, times_set_aside=set_aside)
        except BaseException as exc:  # stopped before sending (the record, or the run lock, was lost)
            return _Outcome(Counter(failed=len(flight.batch)), exc, answered=False)
        settled = list(zip(flight.batch, outcomes, strict=True))
        counts, set_aside = settle(settled, updates, ledger, doubt, flight.batch_id)
        return _Outcome(counts, None, answered=True, times_set_aside=set_aside)

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
            hearing_signals(self._written.popleft()).result()
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


@dataclass
class _Outcome:
    """What a batch's answer made of its rows, by outcome; the error that stops the run, if any."""

    counts: Counter
    error: BaseException | None
    answered: bool  # DfE answered the whole batch (not stopped part-way, not cancelled)
    times_set_aside: int = 0  # receipts whose own time was not believed (see receipts.recorded_time)


def settle(
    pairs: list[tuple[Item, Outcome]],
    updates: list[RowUpdate],
    ledger: list[LedgerEntry],
    doubt: Doubt,
    batch_id: str,
) -> tuple[Counter, int]:
    """What DfE's answers make of the rows: a row update each (and a ledger entry for each
    receipt) added to ``updates`` and ``ledger``; returns the count of each outcome, and how many
    receipts carried a time that was set aside for this computer's (see
    :func:`~api_pipeline.dfe.receipts.recorded_time`).

    A receipt ends a child's doubt, if it was in doubt (``doubt.resolved``): the ledger says
    what DfE holds. A refusal leaves the child as it was: DfE stored nothing of the request.
    Any other answer may have been stored or not, so the child is in doubt (``doubt.in_doubt``)
    until a later run's receipt.
    """
    counts: Counter = Counter()
    set_aside = 0
    now = utc_now()
    for item, outcome in pairs:
        row = item.row
        if outcome.receipt:
            # DfE holds the record now (a purge item has no record: the ledger says the child is gone).
            at, odd_time = recorded_time(outcome.receipt, now)
            set_aside += odd_time
            purge = item.purge
            counts["purged" if purge else "sent"] += 1
            if not item.orphan:
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
            if item.orphan:
                log.warning("the purge of orphan %s was rejected by DfE: %s", item.la_child_id, outcome.error)
                continue
            log.warning("row %s (child %s) rejected by DfE: %s", row.id, item.la_child_id, outcome.error)
            updates.append(
                RowUpdate.unsent(row, in_case_of(row.submission_status, "error"), f"{reasons.REJECTED}{outcome.error}")
            )
        else:
            counts["failed"] += 1
            if not item.orphan:
                updates.append(RowUpdate.unsent(row, "", f"{reasons.WILL_RETRY}: {outcome.error}"))
            doubt.in_doubt.append(item.in_doubt(batch_id))
    return counts, set_aside
