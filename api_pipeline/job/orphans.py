"""Children the table lost (orphans): found after every run, purged only with ``run --purge-orphans``.

An orphan is a child the ledger says DfE holds (or that is in doubt) with no row left that
produces it: its row was deleted outright instead of being marked deleted, or re-keyed (its
person_id and la_child_id changed). The table no longer says anything about it, so no run would
ever send its purge, and DfE would hold it for good. A plain run only says how many there are;
``--purge-orphans`` sends each a record-level purge (:func:`~api_pipeline.dfe.payload.build_purge`)
through the same batches as every other request: recorded in flight before it is sent, settled
in the ledger when DfE acknowledges it, in doubt if the answer is lost (DESIGN §7), so a run
that stops part-way purges what is left next time.

A table emptied or truncated by mistake makes every child an orphan. So the purge refuses when
the orphans are more than :data:`MASS_SHARE` of the children the ledger says DfE holds (and more
than :data:`MASS_FLOOR`) unless ``--purge-many-orphans`` confirms it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from api_pipeline.dfe.json_text import encode_record, frame_body
from api_pipeline.dfe.payload import build_purge
from api_pipeline.dfe.schema import RecordValidator
from api_pipeline.errors import ConfigError, Invalid
from api_pipeline.job.batches import Batches, Item, Sender
from api_pipeline.job.rows import child_of, parse_payload
from api_pipeline.job.run_files import RunSummary, make_private_dir, replace_private
from api_pipeline.store.ledger import chunks
from api_pipeline.store.orphans import NO_ROW, OrphanCandidate, orphan_candidates, payloads_by_id
from api_pipeline.store.staging import StagingRow, StagingTable
from api_pipeline.wording import plural

log = logging.getLogger(__name__)

# More orphans than this share of the children DfE holds, and than MASS_FLOOR, looks like a table
# emptied by mistake rather than children deleted one by one: --purge-orphans refuses them.
MASS_SHARE = 0.10
MASS_FLOOR = 20
EXAMPLE_IDS = 5  # ids shown in status and the log: ids only, never a record


def find_orphans(table: StagingTable) -> list[OrphanCandidate]:
    """The orphans, by id: the candidates no row's person_id names (``store.orphans``), less those a
    row still produces through its record (a row with no person_id, or the row that last sent the
    child whose person_id now differs from its record's la_child_id).

    A row whose record cannot be read is taken to produce the child its ledger entry names: when
    in doubt, a child is not called an orphan.
    """
    candidates = orphan_candidates(table)
    if not candidates:
        return []
    produced: set[str] = set()
    for _row_id, payload in table.rows_without_person_id():
        produced.update(_child_in(payload))
    kept_by_row: set[int] = set()
    for row_id, payload in payloads_by_id(table, (c.staging_id for c in candidates if c.staging_id)).items():
        if payload is None:  # there, but unreadable: it may still be that child
            kept_by_row.add(row_id)
        produced.update(_child_in(payload))
    return [c for c in candidates if c.la_child_id not in produced and c.staging_id not in kept_by_row]


def _child_in(payload: object) -> list[str]:
    """The la_child_id a row's record produces, if it has one."""
    try:
        return [child_of(parse_payload(payload))]
    except Invalid:
        return []


def examples(orphans: list[OrphanCandidate]) -> list[str]:
    """The first few orphans' ids (ids only), for status and the log."""
    return [o.la_child_id for o in orphans[:EXAMPLE_IDS]]


def too_many(orphans: int, held: int) -> bool:
    """Whether ``orphans`` among ``held`` children looks like a table emptied by mistake."""
    return orphans > MASS_FLOOR and orphans > held * MASS_SHARE


@dataclass
class OrphanPurge:
    """After a run's rows: find the orphans, and warn, show (``--dry-run``) or purge them.

    The purges go in batches of their own, on a :class:`~api_pipeline.job.batches.Batches` of
    their own whose counts are kept apart from the rows' (they are no row's outcome).
    """

    table: StagingTable
    validator: RecordValidator
    summary: RunSummary
    purge: bool  # run --purge-orphans
    many: bool  # run --purge-many-orphans: past the mass-deletion guard
    batch_size: int

    def run(
        self,
        sender: Sender | None,
        *,
        review_dir: Path | None = None,
        max_in_flight: int = 1,
        on_progress: Callable[[RunSummary], None] | None = None,
        recorder: StagingTable | None = None,
    ) -> None:
        """Find the orphans; purge them through ``sender``, or (None: a run that sends nothing) write
        their purges to ``review_dir`` for review (``--purge-orphans --dry-run``)."""
        orphans = find_orphans(self.table)
        self.summary.orphans = len(orphans)
        if not orphans:
            return
        one = len(orphans) == 1
        shown = ", ".join(examples(orphans)) + (", ..." if len(orphans) > EXAMPLE_IDS else "")
        if not self.purge:
            log.warning(
                "%s the ledger says DfE holds %s no row left in the staging table (deleted outright rather than "
                "marked deleted, or re-keyed): %s. DfE keeps %s until purged: run with --purge-orphans to purge "
                "%s (see how-it-works)",
                plural(len(orphans), "child", "children"),
                "has" if one else "have",
                shown,
                "it" if one else "them",
                "it" if one else "them",
            )
            return
        self._guard(len(orphans))
        items = [item for item in map(self._item, orphans) if item is not None]
        log.info("%s with no row in the staging table, to purge: %s", plural(len(orphans), "orphan"), shown)
        if sender is None:
            for number, batch in enumerate(chunks(items, self.batch_size), start=1):
                self._write_for_review(review_dir, f"{self.summary.run_id}-orphans-{number:05d}", batch)
            return
        # Counted apart from the rows' outcomes, then copied into the run's summary.
        counts = RunSummary(run_id=self.summary.run_id, mode=self.summary.mode)
        progress = None if on_progress is None else (lambda _: on_progress(self.summary))
        batches = Batches(self.table, sender, counts, max_in_flight, True, progress, recorder)
        try:
            for number, batch in enumerate(chunks(items, self.batch_size), start=1):
                self.summary.batches += 1
                batches.submit(f"{self.summary.run_id}-orphans-{number:05d}", batch, [], [])
            batches.drain()
        finally:
            batches.shutdown()
            o = counts.outcomes
            self.summary.orphans_purged += o["purged"]
            self.summary.orphans_not_purged += o["rejected"] + o["failed"] + o["in_doubt"]
        log.info(
            "orphans: %d purged by DfE, %d not purged%s",
            self.summary.orphans_purged,
            self.summary.orphans_not_purged,
            " (sent again next run with --purge-orphans)" if self.summary.orphans_not_purged else "",
        )

    def _guard(self, orphans: int) -> None:
        """Refuse a purge that looks like a table emptied by mistake, unless confirmed."""
        held = self.table.ledger_totals()[0]
        if self.many or not too_many(orphans, held):
            return
        raise ConfigError(
            f"--purge-orphans: {orphans} of the {held} children the ledger says DfE holds have no row in the "
            f"staging table: more than {MASS_SHARE:.0%}, which looks like a table emptied or truncated by mistake. "
            "No orphan was purged. Check the staging table (status); if these children really are gone, run "
            "again with --purge-orphans --purge-many-orphans"
        )

    def _item(self, orphan: OrphanCandidate) -> Item | None:
        """The orphan's purge, as a batch item: its "row" is none (:data:`NO_ROW`), so nothing is
        written to the staging table; the ledger and the in-doubt table record it by its id."""
        body = build_purge(orphan.la_child_id, orphan.mis_child_id)
        errors = self.validator.errors(body)
        if errors:  # the id itself does not pass DfE's schema (no value shown): nothing to send
            log.warning("orphan %s: its purge does not pass DfE's schema (%s); not sent", orphan.la_child_id, errors[0])
            self.summary.orphans_not_purged += 1
            return None
        row = StagingRow(
            id=NO_ROW,
            person_id=orphan.la_child_id,
            json_payload=None,
            submission_status=None,
            row_state="deleted",
            ledger_json=None,
            ledger_purged=False,
            ledger_receipt=None,
            ledger_acknowledged_at=None,
            ledger_found=True,
            doubt_outline=orphan.doubt_outline,
        )
        return Item(row, orphan.la_child_id, orphan.mis_child_id, body, encode_record(body), purge=True, orphan=True)

    def _write_for_review(self, folder: Path | None, batch_id: str, batch: list[Item]) -> None:
        assert folder is not None
        make_private_dir(folder)
        path = folder / f"batch_{batch_id}.json"
        replace_private(path, frame_body(i.body for i in batch))  # ids only, but the owner's all the same
        self.summary.orphans_for_review += len(batch)
        log.info("batch %s: %s written to %s for review", batch_id, plural(len(batch), "orphan purge"), path)
