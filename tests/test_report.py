"""The HTML run report: built from a real run, free of personal data, and rendered by headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from api_pipeline.errors import ExitCode
from api_pipeline.job.report import CHART_RUNS, PROBLEM_COLOUR, SENT_COLOUR, read_history, render_report, write_report
from api_pipeline.job.run_files import REPORT_SUFFIX, replace_private, report_path_for
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.synthetic import make_children
from conftest import insert, ledger, settings_for

MARKERS = {
    "first_name": "Zqxmarkerfirst",
    "surname": "Zqxmarkersurname",
    "postcode": "ZQ9 9QZ",
}
BAD_POSTCODE = "ZQXMARKERPC9"  # too long: the record is invalid on a personal field
BAD_SEX = "Zqxmarkersex"  # too long: invalid on a field whose value the validator may quote


def strings_in(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(strings_in(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(strings_in(v) for v in value)) if value else set()
    return set()


def old_summary(log_dir: Path, day: int, sent: int, problems: int, code: int) -> None:
    run_id = f"202602{day:02d}T020000Z"
    data = {
        "run_id": run_id,
        "mode": "partial",
        "dry_run": False,
        "started_at": f"2026-02-{day:02d}T02:00:00Z",
        "seconds": 30.0,
        "rows_read": sent + problems,
        "outcomes": {"sent": sent, "invalid": problems},
        "invalid_reasons": {"schema: child_details.sex": problems},
        "batches": 1,
        "requests": 1,
        "retries": {},
        "bytes_sent": 0,
        "exit_code": code,
    }
    (log_dir / f"csc_api_pipeline_{run_id}.summary.json").write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture
def real_run(simulator, db_path, tmp_path) -> tuple[Path, list[dict]]:
    """A real run over marker children (3 invalid, a 503 retried), its summary beside 20 older ones."""
    children = list(make_children(40, seed=31))
    for child in children:
        child["child_details"].update(MARKERS)
    children[3]["child_details"]["postcode"] = BAD_POSTCODE
    children[4]["child_details"]["sex"] = BAD_SEX
    children[5]["child_details"]["sex"] = BAD_SEX
    insert(db_path, children)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    for day in range(1, 21):
        old_summary(log_dir, day, sent=(day * 37) % 90 + 5, problems=day % 4, code=1 if day % 4 else 0)
    simulator.inject("503", times=1)
    summary = execute_run(settings_for(simulator, db_path, BATCH_SIZE="10"), sleep=lambda _s: None)
    summary.exit_code = ExitCode.RECORDS_FAILED if summary.problems else ExitCode.OK
    path = log_dir / f"csc_api_pipeline_{summary.run_id}.summary.json"
    path.write_text(json.dumps(summary.to_dict(), indent=2), encoding="utf-8")
    assert summary.outcomes["sent"] == 37 and summary.outcomes["invalid"] == 3
    assert summary.retries.get("503") == 1
    return path, children


def test_report_is_written_next_to_the_log_with_the_runs_numbers(real_run):
    summary_path, _ = real_run
    report = write_report(summary_path)
    assert report == summary_path.with_name(summary_path.name.replace(".summary.json", ".report.html"))
    text = report.read_text(encoding="utf-8")
    assert "What this report contains, and what it does not" in text
    assert 'Sent to DfE and acknowledged</td><td class="num">37' in text
    assert "the field child_details.postcode does not meet DfE&#x27;s rules" in text
    assert 'the field child_details.sex does not meet DfE&#x27;s rules</td><td class="num">2' in text
    assert 'DfE&#x27;s service had a server error (HTTP 503)</td><td class="num">1' in text
    assert "The last 21 runs" in text and "this run</text>" in text
    assert text.count("<rect ") >= 21 * 2  # two bars per run
    # Self-contained: nothing is loaded from anywhere.
    assert "<script" not in text and "http://" not in text.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in text and "@import" not in text and "url(" not in text


def test_report_contains_no_personal_field_values(real_run, db_path):
    summary_path, children = real_run
    text = write_report(summary_path).read_text(encoding="utf-8")
    for marker in [*MARKERS.values(), BAD_POSTCODE, BAD_SEX]:
        assert marker not in text
    for child in children:
        assert child["la_child_id"] not in text
    for entry in ledger(db_path).values():
        assert entry["receipt"] not in text
    values = set().union(*(strings_in(c) for c in children))
    leaked = sorted(v for v in values if len(v) >= 5 and v in text)
    assert leaked == []


def test_everything_shown_is_escaped(tmp_path):
    hostile = {
        "run_id": "<b>x</b>",
        "started_at": "2026-03-01T02:00:00Z",
        "exit_code": 1,
        "outcomes": {"invalid": 1, "<img src=x>": 2},
        "invalid_reasons": {"schema: <script>alert(1)</script>": 1},
        "retries": {"<i>": 1},
        "fatal_error": "stopped <iframe>",
    }
    text = render_report(hostile, [hostile])
    for raw in ("<b>x</b>", "<img", "<script", "<i>", "<iframe"):
        assert raw not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "stopped &lt;iframe&gt;" in text


def write_report_for(summary: Mapping[str, Any], log_dir: Path) -> Path:
    """A report from a summary dict (``RunSummary.to_dict()``), for a run whose summary file is not written."""
    run_id = str(summary.get("run_id") or "unknown")
    history = [h for h in read_history(log_dir) if h.get("run_id") != run_id]
    history = history[-(CHART_RUNS - 1) :] + [dict(summary)] if not summary.get("dry_run") else history
    path = log_dir / f"csc_api_pipeline_{run_id}{REPORT_SUFFIX}"
    replace_private(path, render_report(summary, history, log_name=f"csc_api_pipeline_{run_id}.log"))
    return path


def test_report_from_a_summary_dict_and_history_order(tmp_path):
    for day in (3, 1, 2):
        old_summary(tmp_path, day, sent=10, problems=1, code=1)
    assert [h["run_id"][6:8] for h in read_history(tmp_path)] == ["01", "02", "03"]
    assert len(read_history(tmp_path, limit=2)) == 2
    summary = {"run_id": "20260304T020000Z", "started_at": "2026-03-04T02:00:00Z", "exit_code": 0, "outcomes": {}}
    path = write_report_for(summary, tmp_path)
    assert path.name == "csc_api_pipeline_20260304T020000Z.report.html"
    text = path.read_text(encoding="utf-8")
    assert "The last 4 runs" in text and "No records needed sending" in text
    assert report_path_for(tmp_path / "csc_api_pipeline_x.summary.json").name == "csc_api_pipeline_x.report.html"


# ---------------------------------------------------------------------------
# Rendering in a real browser
# ---------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit RGB or RGBA PNG, with the standard library only."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = body
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6), f"unexpected PNG format {depth}/{colour}"
    channels = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(idat), width * channels
    rows, previous, i = [], bytearray(stride), 0
    for _ in range(height):
        kind, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = previous[x]
            c = previous[x - channels] if x >= channels else 0
            if kind == 1:
                line[x] = (line[x] + a) & 255
            elif kind == 2:
                line[x] = (line[x] + b) & 255
            elif kind == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def colours(path: Path) -> tuple[int, int, dict[bytes, int]]:
    width, height, rows = png_pixels(path)
    channels = len(rows[0]) // width
    counts: dict[bytes, int] = {}
    for row in rows:
        for x in range(0, len(row), channels):
            pixel = row[x : x + 3]
            counts[pixel] = counts.get(pixel, 0) + 1
    return width, height, counts


def rgb(hex_colour: str) -> bytes:
    return bytes.fromhex(hex_colour.lstrip("#"))


def test_report_renders_in_headless_chromium(real_run, tmp_path):
    """Skips without Chromium, or fails when CSC_TEST_CHROMIUM_REQUIRED is set (for CI that installs it).

    CSC_TEST_KEEP_SCREENSHOT=path keeps the screenshot for a person to look at.
    """
    if CHROMIUM is None:
        reason = "headless Chromium is not installed (Debian package: chromium)"
        if os.environ.get("CSC_TEST_CHROMIUM_REQUIRED"):
            pytest.fail(reason)
        pytest.skip(reason)
    summary_path, _ = real_run
    report = write_report(summary_path)
    shot = tmp_path / "report.png"
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        f"--screenshot={shot}",
        "--window-size=1200,2000",
        report.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert shot.exists(), f"no screenshot (exit {done.returncode}): {done.stderr[-2000:]}"
    assert shot.stat().st_size > 20_000
    width, height, counts = colours(shot)
    assert (width, height) == (1200, 2000)
    total = width * height
    white = counts.get(b"\xff\xff\xff", 0)
    assert white < total * 0.97, "the page is blank"
    assert len(counts) > 50, "too few colours for text, tables and a chart"
    # The chart's bars are drawn: solid areas in both bar colours.
    assert counts.get(rgb(SENT_COLOUR), 0) > 2000
    assert counts.get(rgb(PROBLEM_COLOUR), 0) > 200
    keep = os.environ.get("CSC_TEST_KEEP_SCREENSHOT")
    if keep:
        shutil.copyfile(shot, keep)


def test_the_report_and_the_progress_bar_use_the_run_summarys_outcome_keys():
    from api_pipeline.job.progress import SHOWN_OUTCOMES
    from api_pipeline.job.report import OUTCOME_LABELS
    from api_pipeline.job.run_files import OUTCOME_KEYS, PROBLEM_OUTCOMES

    assert {key for key, _ in OUTCOME_LABELS} <= set(OUTCOME_KEYS)
    assert {key for key, _ in SHOWN_OUTCOMES} <= set(OUTCOME_KEYS)
    assert set(PROBLEM_OUTCOMES) <= set(OUTCOME_KEYS)


@pytest.mark.parametrize(
    "rows_read, seconds, taken, speed",
    [
        (11, 0.0038, "under 0.01 seconds", None),  # a handful of records: no speed, and not "0.0 seconds"
        (11, 0.04, "0.04 seconds", None),
        (5000, 0.6, "0.60 seconds", None),  # under a second: too quick for a speed to mean anything
        (60, 4.0, "4.00 seconds", None),  # too few records
        (1460, 192.4, "3 min 12 s", "7.6 records read a second"),
        (1460, 12.5, "12.5 seconds", "117 records read a second"),
        (120000, 40.0, "40.0 seconds", "3,000 records read a second"),
    ],
)
def test_time_taken_has_sensible_precision_and_speed_is_shown_only_when_it_means_something(
    rows_read, seconds, taken, speed
):
    summary = {"run_id": "r", "started_at": "2026-03-01T02:00:00Z", "seconds": seconds, "rows_read": rows_read}
    summary |= {"outcomes": {"sent": rows_read}, "exit_code": 0}
    text = render_report(summary, [summary])
    assert f'Time taken</td><td class="text">{taken}</td>' in text
    if speed is None:
        assert "Speed" not in text
    else:
        assert f'Speed</td><td class="text">{speed}</td>' in text
