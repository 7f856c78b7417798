"""The progress bar: drawn on a terminal (a real pseudo-terminal here), silent everywhere else."""

from __future__ import annotations

import fcntl
import io
import logging
import os
import pty
import select
import struct
import termios
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

import pytest

from api_pipeline.dfe.schema import RecordValidator
from api_pipeline.job.logs import LOGGER_NAME, close_logging, configure_logging
from api_pipeline.job.pipeline import Pipeline, RunOptions
from api_pipeline.job.progress import Progress, is_terminal, make_progress, progress_for
from api_pipeline.job.run_files import RunSummary
from api_pipeline.rehearsal.demo import load_children
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from api_pipeline.store.staging import StagingTable
from conftest import TABLE


@contextmanager
def terminal() -> Iterator[tuple[TextIO, int]]:
    """A pseudo-terminal: the program writes to the first, the test reads what it showed from the second."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # 40 rows, 120 columns
    stream = os.fdopen(slave, "w", encoding="utf-8")
    try:
        yield stream, master
    finally:
        stream.close()
        os.close(master)


def screen(master: int) -> str:
    """Everything written to the terminal so far."""
    chunks = []
    while select.select([master], [], [], 0.2)[0]:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks).decode("utf-8", errors="replace")


def summary_after(rows_read: int, **outcomes: int) -> RunSummary:
    summary = RunSummary(run_id="test", mode="partial")
    summary.rows_read = rows_read
    summary.outcomes.update(outcomes)
    return summary


def test_bar_on_a_terminal_shows_count_rate_and_time_left():
    with terminal() as (tty, master):
        assert is_terminal(tty)
        progress = make_progress(250, stream=tty)
        assert progress.enabled
        with progress:
            progress.update(summary_after(100, sent=98, invalid=2))
            progress.update(summary_after(250, sent=247, invalid=3))
        shown = screen(master)
    assert "100%" in shown and "250/250" in shown
    assert "records/s" in shown  # the rate
    assert "<00:00" in shown  # the time left
    assert "sent 247" in shown and "problems 3" in shown


def test_bar_shows_rows_recorded_as_already_held_by_dfe():
    with terminal() as (tty, master):
        with make_progress(40, stream=tty) as progress:
            progress.update(summary_after(40, sent=8, purged=2, adopted=30))
        shown = screen(master)
    assert "sent 8, purged 2, already held by DfE 30, problems 0" in shown


def test_unknown_total_shows_count_and_rate_only():
    with terminal() as (tty, master):
        with make_progress(None, stream=tty) as progress:
            progress.update(summary_after(40, valid=40))
        shown = screen(master)
    assert "40 records" in shown and "records/s" in shown and "valid 40" in shown
    assert "%" not in shown


def test_nothing_but_log_lines_when_not_a_terminal():
    stream = io.StringIO()
    progress = make_progress(250, stream=stream)
    assert not progress.enabled
    progress.update(summary_after(250, sent=250))
    progress.close()
    assert stream.getvalue() == ""


def test_quiet_turns_the_bar_off_even_on_a_terminal():
    with terminal() as (tty, master):
        progress = make_progress(10, stream=tty, quiet=True)
        progress.update(summary_after(10, sent=10))
        progress.close()
        assert not progress.enabled and screen(master) == ""


class NoDatabase:
    """A table whose database must not be touched."""

    @property
    def db(self):
        raise AssertionError("counted rows although no bar is shown")


def test_no_count_query_when_no_bar_is_shown():
    assert not progress_for(NoDatabase(), stream=io.StringIO()).enabled


@pytest.fixture
def table_with_children(db_path) -> Iterator[StagingTable]:
    with Database.open_sqlite(db_path) as db:
        load_children(db, TABLE, make_children(25, seed=4))
        yield StagingTable(db, TABLE)


def validate_with(table: StagingTable, progress: Progress) -> RunSummary:
    options = RunOptions(validate_only=True, batch_size=10)
    summary = RunSummary(run_id="test", mode="partial")
    validator = RecordValidator.from_settings(None)
    return Pipeline(table, None, validator, options, summary, on_progress=progress.update).run()


def test_validate_run_drives_the_bar_with_a_counted_total(table_with_children):
    with terminal() as (tty, master):
        progress = progress_for(table_with_children, stream=tty, description="validating")
        assert progress.enabled and progress.total == 25
        with progress:
            summary = validate_with(table_with_children, progress)
            assert progress._bar.n == 25  # after the last batch
        shown = screen(master)
    assert summary.outcomes["valid"] == 25
    assert "validating" in shown and "25/25" in shown and "valid 25" in shown


def test_validate_run_writes_nothing_when_not_a_terminal(table_with_children):
    stream = io.StringIO()
    progress = progress_for(table_with_children, stream=stream)
    with progress:
        validate_with(table_with_children, progress)
    assert stream.getvalue() == ""


def test_log_lines_go_above_the_bar_still_filtered_and_masked(tmp_path):
    try:
        masking, _ = configure_logging(verbosity=0)
        masking.add("s3cr3t-client-secret")
        logger = logging.getLogger(LOGGER_NAME)
        console = next(h for h in logger.handlers if type(h) is logging.StreamHandler)
        with terminal() as (tty, master):
            console.setStream(tty)
            with make_progress(5, stream=tty) as progress:
                assert console.stream is not tty  # wrapped while the bar is shown
                logging.getLogger("api_pipeline.run").info("batch 1 done; secret s3cr3t-client-secret")
                logging.getLogger("api_pipeline.run").debug("a debug line the console does not show")
                progress.update(summary_after(5, sent=5))
            assert console.stream is tty  # given back
            assert masking in console.filters
            shown = screen(master)
        assert "batch 1 done; secret <hidden>" in shown
        assert "s3cr3t" not in shown and "debug line" not in shown
        assert "5/5" in shown
    finally:
        close_logging()


def test_no_stream_means_no_bar():
    assert not make_progress(10, stream=None).enabled
    assert not progress_for(NoDatabase(), stream=None).enabled
