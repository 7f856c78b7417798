"""Batches in flight: sent on ``MAX_IN_FLIGHT`` threads, their outcomes written back in the
order they were sent on one more thread, while the run prepares the next ones.

A row becomes ``sent`` only when DfE returned a receipt for it (DESIGN §7). Each batch's
outcomes and ledger entries are written in one transaction. A batch that fails for good
stops the sending: nothing queued after it goes to DfE, and what the batches already sent
did get acknowledged is still written back.
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
from api_pipeline.staging import LedgerEntry, RowUpdate, StagingRow, StagingTable
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
    ledger_json: str | None = None
    ledger_hash: bytes | None = None  # SHA-256 of ledger_json's UTF-8 text


@dataclass
class _InFlight:
    """A batch handed to the sender whose outcomes are not written back yet."""

    batch_id: str
    batch: list[Item]
    updates: list[RowUpdate]
    future: Future
    started: float
    adopted: list[LedgerEntry] = field(default_factory=list)  # written with the batch, whatever its fate


@dataclass
class Batches:
    """The batches of one run between the sender and the table.

    Without a sender (a dry run, a validation), only :meth:`write` is used. The database
    connection is shared with the run's reading, one user at a time.
    """

    table: StagingTable
    sender: Sender | None
    summary: RunSummary
    max_in_flight: int
    writes: bool  # whether outcomes are written to the table (not a dry run or a validation)
    on_progress: Callable[[RunSummary], None] | None = None

    def __post_init__(self) -> None:
        # Batches are sent on a pool of MAX_IN_FLIGHT threads (one, by default: one request at a
        # time), and their outcomes written back on one more thread, in the order they were sent.
        sending = self.sender is not None
        self._executor = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="send") if sending else None
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="write-back") if sending else None
        self._sends: deque[Future] = deque()  # send futures not known to be finished
        self._written: deque[Future] = deque()  # write-back futures, oldest first
        self._failed = threading.Event()  # set by a send thread when its batch failed for good
        self._send_seconds: dict[str, float] = {}  # batch id -> how long its sending took, retries included

    def submit(self, batch_id: str, batch: list[Item], updates: list[RowUpdate], adopted: list[LedgerEntry]) -> None:
        """Hand a batch to the send pool; its outcomes are written back with ``updates`` and ``adopted``.

        Waits while twice ``MAX_IN_FLIGHT`` batches are not yet written back; raises the first
        batch's failure for good.
        """
        assert self._executor is not None and self._writer is not None
        if self._failed.is_set():  # an earlier batch failed for good: send no more
            self.drain()
        future = self._executor.submit(self._send, [i.body for i in batch], batch_id)
        while self._sends and self._sends[0].done():
            self._sends.popleft()
        self._sends.append(future)
        flight = _InFlight(batch_id, batch, updates, future, time.monotonic(), adopted)
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

    def write(self, updates: list[RowUpdate], ledger: list[LedgerEntry]) -> None:
        """Write row updates and ledger entries in one transaction (when the run writes), then report progress."""
        if self.writes and (updates or ledger):
            skipped = self.table.write_back(updates, ledger)
            if skipped:
                self.summary.outcomes["changed_during_run"] += skipped
                log.info("%d rows changed in the table during the run; they stay pending for the next run", skipped)
        if self.on_progress:
            self.on_progress(self.summary)

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
            self.write(flight.updates, ledger)
            return
        except BatchAborted as exc:
            # The run stops (its send thread has said so); first record what DfE did acknowledge.
            self._settle_aborted(flight, exc.outcomes, ledger)
            raise exc.error from None
        except PipelineError:  # stopped before sending (the run lock was lost): nothing settled
            self._settle_aborted(flight, [], ledger)
            raise
        counts = settle(list(zip(flight.batch, outcomes, strict=True)), flight.updates, ledger)
        self.summary.outcomes.update(counts)
        log.info(
            "batch %s: %d records, %s (%.2f s)",
            flight.batch_id,
            len(flight.batch),
            ", ".join(f"{k} {v}" for k, v in sorted(counts.items())),
            self._send_seconds.pop(flight.batch_id, time.monotonic() - flight.started),
        )
        self.write(flight.updates, ledger)

    def _settle_aborted(self, flight: _InFlight, settled: list[Outcome], ledger: list[LedgerEntry]) -> None:
        self.summary.outcomes["failed"] += len(flight.batch) - len(settled)  # left pending
        self.summary.outcomes.update(settle([(flight.batch[o.index], o) for o in settled], flight.updates, ledger))
        self.write(flight.updates, ledger)

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


def settle(pairs: list[tuple[Item, Outcome]], updates: list[RowUpdate], ledger: list[LedgerEntry]) -> Counter:
    """What DfE's answers make of the rows: a row update each (and a ledger entry for each
    receipt) added to ``updates`` and ``ledger``; returns the count of each outcome."""
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
        elif outcome.rejected:
            counts["rejected"] += 1
            log.warning("row %s (child %s) rejected by DfE: %s", row.id, item.la_child_id, outcome.error)
            updates.append(
                RowUpdate.unsent(row, in_case_of(row.submission_status, "error"), f"{reasons.REJECTED}{outcome.error}")
            )
        else:
            counts["failed"] += 1
            updates.append(RowUpdate.unsent(row, "", f"{reasons.WILL_RETRY}: {outcome.error}"))
    return counts
