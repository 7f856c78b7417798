"""Text from the staging table or from DfE is shown with its control characters escaped (issue 23, item 6).

A ``person_id`` holding a newline and a line of its own, or an answer from DfE holding a clear-screen
and a window-title escape sequence, reached the console, the log and ``api_response`` as they were:
they forged a log record ("18:00:00 INFO all records sent; nothing to do") and drove the console.
Now every log record is one line, and the console, the log, ``api_response``, the ``error:`` line,
the run summary and report, and ``status`` show ``\\n``, ``\\x1b``, ``\\u202e`` instead. The runs are
the real CLI on SQLite, against the simulator or a scripted host on 127.0.0.1 (``tests/hostile.py``).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import pytest

from api_pipeline.errors import ExitCode
from api_pipeline.job.logs import close_logging, configure_logging, format_traceback
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.store.db import Database
from api_pipeline.wording import printable
from conftest import TABLE, db_env, insert, rows, run_cli
from hostile import Exchange, Hostile

FORGED = "\n18:00:00 INFO all records sent; nothing to do"
CLEAR = "\x1b[2J"
TITLE = "\x1b]0;all records sent\x07"
REVERSED = "\u202e"
RAW = ("\x1b", "\x07", "\u202e", "\r")  # none of these may reach a console, a log or the table as itself
LOG_FILE_RECORD = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3} (DEBUG|INFO|WARNING|ERROR) api_pipeline")
CONSOLE_RECORD = re.compile(r"\d{2}:\d{2}:\d{2} (DEBUG|INFO|WARNING|ERROR) ")


def assert_shown_safely(text: str, where: str) -> None:
    for char in RAW:
        assert char not in text, f"{char!r} reached {where} as itself"


def assert_one_line_per_record(text: str, record: re.Pattern[str], where: str) -> None:
    lines = text.splitlines()
    assert lines, f"nothing in {where}"
    for line in lines:
        assert record.match(line), f"a line of {where} that is no log record: {line!r}"


def run_files(folder: Path) -> dict[str, str]:
    """The text of the run's log, summary and report, by suffix."""
    found = {}
    for suffix in (".log", ".summary.json", ".report.html"):
        (path,) = folder.glob(f"*{suffix}")
        found[suffix] = path.read_text(encoding="utf-8")
    return found


def test_the_printable_set() -> None:
    assert printable("C0000001") == "C0000001"
    assert printable("C1" + FORGED + CLEAR) == "C1\\n18:00:00 INFO all records sent; nothing to do\\x1b[2J"
    assert printable(TITLE) == "\\x1b]0;all records sent\\x07"
    assert printable("\t\r\x00\x7f\x85\x9b") == "\\t\\r\\x00\\x7f\\x85\\x9b"  # C0, DEL and C1
    bidi = "".join(chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C])
    assert printable(bidi) == "".join(f"\\u{ord(c):04x}" for c in bidi)
    assert printable("\u200b\ufeff\u2028\u2029\ud800") == "\\u200b\\ufeff\\u2028\\u2029\\ud800"
    assert printable("Brontë's C:\\logs\\ [0] café") == "Brontë's C:\\logs\\ [0] café"  # readable text as it is


def test_a_person_id_cannot_forge_a_log_record_or_drive_the_console(db_path: Path, simulator, capsys) -> None:
    children = list(make_children(3, seed=231))
    children[0]["la_child_id"] = "C1" + FORGED + CLEAR + REVERSED
    insert(db_path, children)
    result = run_cli(["run"], environ=dict(simulator.settings_env()) | db_env(db_path), cwd=db_path.parent)
    console = capsys.readouterr().err
    assert result.code == ExitCode.RECORDS_FAILED, result.err  # the id is invalid: held back, the rest sent
    files = run_files(db_path.parent / "logs")
    assert_one_line_per_record(files[".log"], LOG_FILE_RECORD, "the log file")
    assert_one_line_per_record(console, CONSOLE_RECORD, "the console")
    shown = "C1\\n18:00:00 INFO all records sent; nothing to do\\x1b[2J\\u202e"
    assert shown in files[".log"] and shown in console  # escaped, not dropped: the row can still be found
    for where, text in {**files, "the console": console, "stdout": result.out, "stderr": result.err}.items():
        assert_shown_safely(text, where)
    assert [str(r["submission_status"]).lower() for r in rows(db_path)] == ["invalid", "sent", "sent"]


def named_rejection(exchange: Exchange) -> None:
    """400 naming the first record of three, in words that clear the screen and set the window's title."""
    if len(exchange.records) < 3:
        exchange.receipts()
        return
    body = f"[0] child_details.sex{CLEAR}: {TITLE} is not a code{REVERSED}{FORGED}\n"
    exchange.reply(400, body.encode(), {"Content-Type": "text/plain"}, reason=f"Bad{CLEAR}Request")


def unnamed_rejection(exchange: Exchange) -> None:
    """400 naming no record, its escapes in a JSON error document."""
    body = json.dumps({"errors": [f"Bad data{FORGED}{CLEAR}{TITLE}{REVERSED}"]})
    exchange.reply(400, body.encode(), {"Content-Type": "application/json"}, reason=f"Bad{TITLE}Request")


def teapot(exchange: Exchange) -> None:
    """An answer that stops the run: its words go to the error line, the summary and the report."""
    exchange.reply(418, f"I am a teapot{CLEAR}{FORGED}{TITLE}".encode(), reason=f"Teapot{CLEAR}")


@pytest.mark.parametrize(
    ("answer", "children", "exit_code"),
    [
        (named_rejection, 3, ExitCode.RECORDS_FAILED),
        (unnamed_rejection, 1, ExitCode.RECORDS_FAILED),
        (teapot, 2, ExitCode.API),
    ],
    ids=["400 naming a record", "400 naming none", "418"],
)
def test_escape_sequences_in_dfe_answers_are_shown_escaped(db_path: Path, capsys, answer, children, exit_code) -> None:
    tmp_path = db_path.parent
    insert(db_path, list(make_children(children, seed=232)))
    with Hostile(answer) as host:
        environ = host.env() | db_env(db_path) | {"MAX_RETRIES": "0", "HTTP_TIMEOUT": "5"}
        result = run_cli(["run"], environ=environ, cwd=tmp_path)
        console = capsys.readouterr().err
    status = run_cli(["status"], environ=environ, cwd=tmp_path)
    assert result.code == exit_code, result.err
    assert status.code == ExitCode.OK, status.err
    files = run_files(tmp_path / "logs")
    assert "\\x1b" in files[".log"] + console  # DfE's words are still shown, as escapes
    assert_one_line_per_record(files[".log"], LOG_FILE_RECORD, "the log file")
    assert_one_line_per_record(console, CONSOLE_RECORD, "the console")
    summary = json.loads(files[".summary.json"])
    texts = {
        **files,
        "the console": console,
        "stdout": result.out,
        "stderr": result.err,
        "the summary's values": json.dumps(summary, ensure_ascii=False),
        "status": status.out + status.err,
        "api_response": "".join(str(r["api_response"]) for r in rows(db_path)),
    }
    for where, text in texts.items():
        assert_shown_safely(text, where)
    if exit_code == ExitCode.API:
        assert summary["fatal_error"].startswith("DfE gave an unexpected answer: HTTP 418 Teapot\\x1b[2J")
        assert all(line.startswith("error: ") for line in result.err.splitlines()), result.err
    else:
        (rejected,) = [r for r in rows(db_path) if str(r["api_response"]).startswith("rejected by DfE")]
        assert "\\x1b" in rejected["api_response"]


def test_status_shows_the_tables_own_words_escaped(db_path: Path) -> None:
    insert(db_path, list(make_children(2, seed=233)))
    with Database.open_sqlite(db_path) as db, db.transaction():
        db.execute(f"UPDATE {TABLE} SET submission_status = ? WHERE id = 1", ("Error" + CLEAR + FORGED,))
    result = run_cli(["status"], environ=db_env(db_path), cwd=db_path.parent)
    assert result.code == ExitCode.OK, result.err
    assert "Error\\x1b[2J\\n18:00:00 INFO all records sent" in result.out
    assert_shown_safely(result.out, "status")
    assert not any(line.startswith("18:00:00") for line in result.out.splitlines())


def test_a_traceback_keeps_its_lines_and_the_exceptions_words_stay_on_one(tmp_path: Path) -> None:
    _, log_file = configure_logging(verbosity=1, log_dir=tmp_path / "logs", run_id="traceback")
    try:
        try:
            raise KeyError("C1")
        except KeyError as exc:
            raise ValueError("row C1" + FORGED + CLEAR) from exc
    except ValueError:
        logging.getLogger("api_pipeline.test").debug("row 1 could not be prepared", exc_info=True)
        text = format_traceback(sys.exc_info())
    finally:
        close_logging()
    assert log_file is not None
    logged = log_file.read_text(encoding="utf-8")
    for written in (logged, text):
        lines = written.splitlines()
        assert "Traceback (most recent call last):" in lines  # Python's own lines, for a person to read
        assert "ValueError: row C1\\n18:00:00 INFO all records sent; nothing to do\\x1b[2J" in lines
        assert not any(line.startswith("18:00:00") for line in lines)
        assert_shown_safely(written, "a traceback")
