"""The run report: one small self-contained HTML page per run, next to its log (DESIGN §9).

Written for someone who does not read logs, such as a data-protection officer:
plain-English headings, what happened to the records, why some were not sent,
how sending went, and a chart of the last 30 runs. Built only from the run
summaries (``*.summary.json``), which hold counts, timings and reason keys, never
record content, identifiers or receipts. Every piece of text is escaped.

The page needs nothing else: inline CSS, an inline SVG chart, no scripts, and a
Content-Security-Policy that forbids loading anything, so opening it contacts
nobody.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from api_pipeline.about import APP_NAME, __version__
from api_pipeline.errors import ExitCode
from api_pipeline.job.run_files import (
    OUTCOME_KEYS,
    PROBLEM_OUTCOMES,
    REPORT_SUFFIX,
    ROW_OUTCOMES,
    make_private_dir,
    read_summaries,
    replace_private,
    report_path_for,
)
from api_pipeline.timestamps import parse_utc
from api_pipeline.wording import duration, plural, printable

CHART_RUNS = 30

OUTCOME_LABELS = (
    ("sent", "Sent to DfE and acknowledged"),
    ("purged", "Deletions sent to DfE and acknowledged"),
    ("unchanged", "Already up to date at DfE, so not sent again"),
    ("adopted", "Recorded as already held by DfE (sent by the earlier tool), so not sent again"),
    ("valid", "Passed the checks (validation only, nothing sent)"),
    ("held_back_passes", "Held back as invalid, but passing the checks now (validation only, nothing sent)"),
    ("dry_run", "Prepared for review only (dry run, nothing sent)"),
    ("invalid", "Not sent: the record fails DfE's rules (the data needs fixing)"),
    ("skipped", "Not sent: a problem with the staging table row (the staging SQL needs fixing)"),
    ("rejected", "Refused by DfE"),
    ("failed", "Not sent this time; will be tried again at the next run"),
    ("in_doubt", "Acknowledged by DfE, but the table could not record it; will be sent whole at the next run"),
)
NOT_REACHED = "Not reached before the run stopped"
RETRY_LABELS = {
    "401": "the access token was renewed (HTTP 401)",
    "403": "DfE's gateway refused or throttled us (HTTP 403)",
    "408": "DfE timed out the request (HTTP 408)",
    "413": "a batch was too large and was split (HTTP 413)",
    "429": "DfE asked us to slow down (HTTP 429)",
}
# A speed is shown only for a run that read at least this many records and took at least this
# long: a handful of records in a fraction of a second gives a number that means nothing.
SPEED_MIN_RECORDS = 100
SPEED_MIN_SECONDS = 1.0
SENT_COLOUR = "#1d70b8"
PROBLEM_COLOUR = "#d4351c"


def exit_code_meanings() -> dict[int, str]:
    """The meaning of each exit code, as the CLI's help gives it (:class:`ExitCode`)."""
    return {code.value: code.meaning for code in ExitCode}


def read_history(log_dir: Path, *, limit: int = CHART_RUNS) -> list[dict[str, Any]]:
    """The newest ``limit`` readable summaries of real runs in ``log_dir``, oldest first.

    Dry runs send nothing, so they are left out of the history (and its chart); so are summaries
    dated in the future, which say nothing true about when a run happened.
    """
    return read_summaries(log_dir, limit, keep=lambda summary: not summary.get("dry_run")).recent[::-1]


def write_report(summary_path: Path, summary: Mapping[str, Any] | None = None) -> Path:
    """Write the report for the run whose summary file is ``summary_path``; returns the report's path.

    ``summary``, when given, is that run's summary, so the report does not depend on the file:
    a run whose summary could not be written (a full disk) still gets its report if there is
    room for that. Written whole or not at all. Raises OSError, or ValueError for a summary file
    that is not JSON.
    """
    if summary is None:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    history = read_history(summary_path.parent)
    if not summary.get("dry_run") and all(h.get("run_id") != summary.get("run_id") for h in history):
        history = [*history, dict(summary)][-CHART_RUNS:]  # this run, whose summary file is missing
    return _write(report_path_for(summary_path), render_report(summary, history, log_name=_log_name(summary_path)))


def _log_name(summary_path: Path) -> str:
    return report_path_for(summary_path).name[: -len(REPORT_SUFFIX)] + ".log"


def _write(path: Path, text: str) -> Path:
    make_private_dir(path.parent)
    replace_private(path, text)  # the report names children (row and child ids): its reader only
    return path


# -- small helpers ------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Text for the page: HTML-escaped, and its control characters shown as escapes (a bidi
    override would otherwise turn the words around it)."""
    return html.escape(printable("" if value is None else str(value)), quote=True)


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError, OverflowError):
        return 0


def _outcomes(summary: Mapping[str, Any]) -> dict[str, int]:
    raw = summary.get("outcomes")
    return {str(k): _int(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}


def sent_count(summary: Mapping[str, Any]) -> int:
    o = _outcomes(summary)
    return o.get("sent", 0) + o.get("purged", 0)


def problem_count(summary: Mapping[str, Any]) -> int:
    o = _outcomes(summary)
    return sum(o.get(k, 0) for k in PROBLEM_OUTCOMES)


def long_time(text: Any) -> str:
    value = parse_utc(text)
    if value is None:
        return "not recorded"
    return f"{value:%A} {value.day} {value:%B %Y} at {value:%H:%M:%S} UTC"


def short_date(text: Any) -> str:
    value = parse_utc(text)
    return "?" if value is None else f"{value.day} {value:%b}"


def chart_labels(started: Sequence[Any]) -> list[str]:
    """One label per run: ``1 Mar``; ``1 Mar 02:00`` where runs share a day; seconds, then a count, if need be."""
    times = [parse_utc(text) for text in started]
    formats = ("", " %H:%M", " %H:%M:%S")

    def label(value: datetime | None, level: int) -> str:
        return "?" if value is None else f"{value.day} {value:%b}" + (f"{value:{formats[level]}}" if level else "")

    labels = [label(t, 0) for t in times]
    for level in (1, 2):
        labels = [label(t, level) if labels.count(labels[i]) > 1 else labels[i] for i, t in enumerate(times)]
    repeated = {text for text in labels if labels.count(text) > 1}  # runs started in one second: number them
    seen: dict[str, int] = {}
    for i, text in enumerate(labels):
        if text in repeated:
            seen[text] = seen.get(text, 0) + 1
            labels[i] = f"{text} ({seen[text]})"
    return labels


def last_runs(count: int) -> str:
    """``the last 12 runs``; ``the last run``; ``no runs yet``."""
    if count == 0:
        return "no runs yet"
    return "the last run" if count == 1 else f"the last {count} runs"


def speed(rows_read: int, seconds: Any) -> str | None:
    """``1,460 records read a second``, or None when the run was too small or too quick for a
    speed to mean anything (:data:`SPEED_MIN_RECORDS`, :data:`SPEED_MIN_SECONDS`)."""
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < SPEED_MIN_SECONDS:
        return None
    if rows_read < SPEED_MIN_RECORDS:
        return None
    rate = rows_read / seconds
    return f"{rate:,.0f} records read a second" if rate >= 10 else f"{rate:.1f} records read a second"


def size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KB"
    return f"{n / (1024 * 1024):.1f} MB"


def retry_label(cause: str) -> str:
    if cause in RETRY_LABELS:
        return RETRY_LABELS[cause]
    if cause.isdigit() and cause.startswith("5"):
        return f"DfE's service had a server error (HTTP {cause})"
    if cause.isdigit():
        return f"HTTP {cause}"
    return cause.replace("_", " ")


def reason_label(key: str) -> str:
    """``schema: child_details.postcode`` → ``the field child_details.postcode does not meet DfE's rules``."""
    if key.startswith("schema: "):
        return f"the field {key[len('schema: ') :]} does not meet DfE's rules"
    return key


def _rows(cells: Iterable[tuple[Any, ...]], *, numeric: bool = True) -> str:
    """Table rows; with ``numeric`` every column after the first is right-aligned."""
    return "".join(
        "<tr>"
        + "".join(f'<td class="{"num" if i and numeric else "text"}">{esc(c)}</td>' for i, c in enumerate(row))
        + "</tr>"
        for row in cells
    )


# -- the chart ----------------------------------------------------------------------------------


def _nice_ceiling(value: int) -> int:
    """The next 1, 2 or 5 × 10ⁿ at or above ``value`` (at least 1): tidy axis labels."""
    if value <= 1:
        return 1
    power = 10 ** int(math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


SMALL_BAR = 0.12  # of the plot's height: below this a bar also shows its number
MIN_BAR = 3.0  # pixels: a count of 1 next to one of 10,000 still shows


def render_chart(history: Sequence[Mapping[str, Any]], current_run_id: str | None) -> str:
    """Sent (with purges) and problems per run as grouped bars, newest on the right; inline SVG.

    Dry runs send nothing and are left out. Runs of the same day are told apart by their
    start time; a short bar carries its number, so a small run beside a large one is readable.
    """
    width, height = 1000, 320
    left, right, top, bottom = 56, 16, 24, 64
    plot_w, plot_h = width - left - right, height - top - bottom
    runs = [r for r in history if not r.get("dry_run")][-CHART_RUNS:]
    labels = chart_labels([r.get("started_at") for r in runs])
    top_value = _nice_ceiling(max([max(sent_count(r), problem_count(r)) for r in runs] or [1]))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" role="img" '
        'aria-labelledby="chart-title chart-desc">',
        '<title id="chart-title">Records sent and records with problems, per run</title>',
        f'<desc id="chart-desc">Bar chart of {last_runs(len(runs))}, oldest on the left. Blue bars: records '
        "sent to DfE and acknowledged (including deletions). Red bars: records not sent because of a problem. "
        "Dry runs are not shown.</desc>",
    ]
    for i in range(5):
        value = top_value * i / 4
        y = top + plot_h - plot_h * i / 4
        label = f"{value:g}"
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 8}" y="{y + 4:.1f}" class="axis" text-anchor="end">{esc(label)}</text>')
    if not runs:
        parts.append(f'<text x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle">No runs yet</text>')
    slot = plot_w / max(len(runs), 1)
    bar = min(28.0, slot * 0.36)
    rotate = len(runs) > 12
    for index, run in enumerate(runs):
        x0 = left + slot * index + (slot - 2 * bar) / 2
        this_run = current_run_id is not None and run.get("run_id") == current_run_id
        kind = "dry run" if run.get("dry_run") else "run"
        when = long_time(run.get("started_at"))
        for offset, value, colour, what in (
            (0.0, sent_count(run), SENT_COLOUR, "sent"),
            (bar, problem_count(run), PROBLEM_COLOUR, "with problems"),
        ):
            h = plot_h * value / top_value
            if value and h < MIN_BAR:
                h = MIN_BAR  # a small count stays visible next to a large one
            y = top + plot_h - h
            parts.append(
                f'<rect x="{x0 + offset:.1f}" y="{y:.1f}" width="{bar:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{esc(f'{kind} of {when}: {value} {what}')}</title></rect>"
            )
            if value and h < plot_h * SMALL_BAR:
                bx, by = x0 + offset + bar / 2, y - 3
                turn = f' transform="rotate(-90 {bx:.1f} {by:.1f})"' if rotate else ""
                anchor = "start" if rotate else "middle"
                parts.append(
                    f'<text x="{bx:.1f}" y="{by:.1f}" class="value" text-anchor="{anchor}"{turn}>{value}</text>'
                )
        cx = left + slot * index + slot / 2
        ly = top + plot_h + 16
        label = esc(labels[index])
        weight = ' font-weight="bold"' if this_run else ""
        if rotate:
            parts.append(
                f'<text x="{cx:.1f}" y="{ly:.1f}" class="axis" text-anchor="end"{weight} '
                f'transform="rotate(-40 {cx:.1f} {ly:.1f})">{label}</text>'
            )
        else:
            parts.append(f'<text x="{cx:.1f}" y="{ly:.1f}" class="axis" text-anchor="middle"{weight}>{label}</text>')
        if this_run:
            parts.append(
                f'<rect x="{left + slot * index + 1:.1f}" y="{top}" width="{slot - 2:.1f}" height="{plot_h}" '
                'class="current"/>'
            )
            parts.append(f'<text x="{cx:.1f}" y="{top - 8}" class="axis" text-anchor="middle">this run</text>')
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" class="baseline"/></svg>'
    )
    return "".join(parts)


# -- the page -----------------------------------------------------------------------------------


def _outcomes_html(summary: Mapping[str, Any], outcomes: Mapping[str, int], rows_read: int) -> str:
    """What became of the records read, one row per outcome, adding up to the records read; then
    the rows changed during the run (already counted once) and those not reached (never read)."""
    labels = dict(OUTCOME_LABELS)
    rows: list[tuple[str, int]] = [(labels[key], outcomes[key]) for key in ROW_OUTCOMES if outcomes.get(key)]
    rows += [(key.replace("_", " "), n) for key, n in sorted(outcomes.items()) if key not in OUTCOME_KEYS and n]
    if rows:
        parts = (
            '<table><tr><th>What happened</th><th class="num">Records</th></tr>'
            + _rows(rows)
            + f'<tr><th>Records read from the staging table</th><th class="num">{rows_read}</th></tr></table>'
        )
    else:
        parts = "<p>No records needed sending in this run.</p>"
    changed = outcomes.get("changed_during_run", 0)
    if changed:
        parts += (
            f"<p>{esc(plural(changed, 'record'))} of these {'was' if changed == 1 else 'were'} changed in the table "
            f"during the run; {'it' if changed == 1 else 'they'} will be sent at the next run.</p>"
        )
    if summary.get("not_reached_unknown") is True:  # the database was gone: the rows left could not be counted
        parts += f"<p>{NOT_REACHED}: an unknown number of records (the database could not be asked).</p>"
    elif outcomes.get("not_reached"):
        left = outcomes["not_reached"]
        parts += (
            f"<p>{NOT_REACHED}: {esc(plural(left, 'more record'))}, not among those read; "
            f"{'it' if left == 1 else 'they'} will be sent at the next run.</p>"
        )
    return parts


CSS = """
body{font-family:"Segoe UI",Arial,Helvetica,sans-serif;color:#0b0c0c;background:#fff;margin:0;line-height:1.45}
main{max-width:1040px;margin:0 auto;padding:24px 32px 48px}
h1{font-size:1.9rem;margin:0 0 4px}
h2{font-size:1.35rem;margin:32px 0 8px;border-bottom:2px solid #b1b4b6;padding-bottom:4px}
.sub{color:#505a5f;margin:0 0 16px}
.verdict{padding:14px 18px;border-left:8px solid;margin:16px 0;font-size:1.1rem}
.ok{border-color:#00703c;background:#e8f5ee}.warn{border-color:#f47738;background:#fef3e8}
.bad{border-color:#d4351c;background:#fbeae8}
.note{background:#f3f2f1;padding:12px 18px;margin:16px 0}
.note h2{border:0;margin:4px 0;font-size:1.1rem}.note ul{margin:6px 0;padding-left:22px}
table{border-collapse:collapse;width:100%;margin:8px 0}
th,td{padding:6px 10px;border-bottom:1px solid #b1b4b6;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th{background:#f3f2f1}
.legend span{display:inline-block;width:14px;height:14px;margin:0 6px 0 16px;vertical-align:-2px}
svg .grid{stroke:#dddddd;stroke-width:1}svg .baseline{stroke:#0b0c0c;stroke-width:1}
svg .axis{font-size:12px;fill:#505a5f}svg .current{fill:none;stroke:#0b0c0c;stroke-dasharray:4 3}
svg .value{font-size:10px;fill:#0b0c0c}
footer{color:#505a5f;font-size:.9rem;margin-top:32px}
"""


def _verdict(summary: Mapping[str, Any], meanings: Mapping[int, str]) -> tuple[str, str]:
    code = summary.get("exit_code")
    if summary.get("fatal_error") and code in (0, 1, None):  # stopped by something unexpected
        return "bad", "The run stopped early on an error (below). Records not yet sent are sent at the next run."
    if summary.get("stopped_early") and code in (0, 1):
        return "warn", (
            "The run stopped at its time limit (MAX_RUNTIME). Records it did not reach are sent at the next run."
        )
    if code == 0:
        return "ok", "The run finished normally: everything due was sent, or there was nothing to send."
    if code == 1:
        return "warn", "The run finished, but some records were not sent. The reasons are listed below."
    if code is None:
        return "warn", "The run did not record an exit code."
    meaning = meanings.get(int(code), "see the log file")
    return "bad", (
        f"The run stopped early with exit code {code}, meaning: {meaning}. "
        "Records not yet sent are sent at the next run."
    )


def _exit_meaning(summary: Mapping[str, Any], meanings: Mapping[int, str]) -> str:
    code = _int(summary.get("exit_code"))
    if summary.get("fatal_error") and code == 1:
        return "the run stopped on an unexpected error"
    return meanings.get(code, "")


def render_report(
    summary: Mapping[str, Any], history: Sequence[Mapping[str, Any]], *, log_name: str | None = None
) -> str:
    """The whole page as text. ``history``: run summaries for the chart, oldest first."""
    meanings = exit_code_meanings()
    outcomes = _outcomes(summary)
    run_id = str(summary.get("run_id") or "")
    dry = bool(summary.get("dry_run"))
    kind = "Dry run (nothing sent)" if dry else "Run"
    verdict_class, verdict = _verdict(summary, meanings)
    seconds = summary.get("seconds")
    rows_read = _int(summary.get("rows_read"))
    code = summary.get("exit_code")
    outcomes_html = _outcomes_html(summary, outcomes, rows_read)

    reasons = summary.get("invalid_reasons")
    reason_items = sorted(
        ((str(k), _int(v)) for k, v in (reasons.items() if isinstance(reasons, Mapping) else [])),
        key=lambda kv: (-kv[1], kv[0]),
    )
    reasons_html = (
        "<p>Each reason names the data field or the kind of problem; the values themselves are never shown.</p>"
        '<table><tr><th>Reason</th><th class="num">Records</th></tr>'
        + _rows((reason_label(k), n) for k, n in reason_items)
        + "</table>"
        if reason_items
        else "<p>No record was held back by a problem with its data.</p>"
    )

    retries = summary.get("retries")
    retry_items = sorted(
        ((str(k), _int(v)) for k, v in (retries.items() if isinstance(retries, Mapping) else [])),
        key=lambda kv: (-kv[1], kv[0]),
    )
    retries_html = (
        "<p>Requests that had to be tried again, by cause:</p>"
        '<table><tr><th>Cause</th><th class="num">Retries</th></tr>'
        + _rows((retry_label(k), n) for k, n in retry_items)
        + "</table>"
        if retry_items
        else "<p>No request had to be tried again.</p>"
    )

    sending_rows = [
        ("Records read from the staging table", rows_read),
        ("Batches", _int(summary.get("batches"))),
        ("Requests to DfE (including retries and split batches)", _int(summary.get("requests"))),
        ("Data sent", size(_int(summary.get("bytes_sent")))),
    ]
    timing_rows = [
        ("Started", long_time(summary.get("started_at"))),
        ("Finished", long_time(summary.get("finished_at"))),
        ("Time taken", duration(seconds)),
        *([("Speed", rate)] if (rate := speed(rows_read, seconds)) else []),
        ("Kind of run", f"{kind}, {'partial (changes only)' if summary.get('mode') == 'partial' else 'full records'}"),
        ("Exit code", "not recorded" if code is None else f"{code}: {_exit_meaning(summary, meanings)}"),
    ]
    stopped = ""
    if summary.get("fatal_error"):
        first_line = str(summary.get("fatal_error")).splitlines()[0]
        stopped = f"<p><strong>Why the run stopped:</strong> {esc(first_line)}</p>"

    charted = [r for r in history if not r.get("dry_run")][-CHART_RUNS:]
    chart_rows = [
        (
            long_time(r.get("started_at")) + (" (this run)" if r.get("run_id") == run_id else ""),
            sent_count(r),
            problem_count(r),
            "-" if r.get("exit_code") is None else r.get("exit_code"),
        )
        for r in reversed(charted)
    ]
    dry_note = " This dry run, like every dry run, is not in the chart: it sent nothing." if dry else ""
    log_note = f" ({esc(log_name)})" if log_name else ""
    title = f"{APP_NAME} run report: {short_date(summary.get('started_at'))}"
    return f"""<!DOCTYPE html>
<html lang="en-GB">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{CSS}</style>
</head>
<body><main>
<h1>Children's social care data sent to the DfE: run report</h1>
<p class="sub">{esc(kind)} started {esc(long_time(summary.get("started_at")))}; run reference {esc(run_id)}</p>
<div class="verdict {verdict_class}">{esc(verdict)}</div>
{stopped}
<section class="note" aria-labelledby="about">
<h2 id="about">What this report contains, and what it does not</h2>
<ul>
<li>It contains <strong>only counts, times and the names of data fields</strong> that failed a check, for one
nightly run of the tool that sends children's social care records to the Department for Education (DfE).</li>
<li>It contains <strong>no personal data</strong>: no names, dates of birth, addresses or postcodes, no child or
case identifiers, no record content, and no values of any field, not even the ones that failed a check.</li>
<li>Which records were affected is written only in the run's log file{log_note}, which stays on this computer.
Only the newest 30 logs and reports are kept.</li>
<li>The page is self-contained: opening it loads nothing from the internet.</li>
</ul>
</section>

<h2>What happened to the records</h2>
{outcomes_html}

<h2>Why some records were not sent</h2>
{reasons_html}

<h2>How sending went</h2>
<table>{_rows(sending_rows, numeric=False)}</table>
{retries_html}

<h2>Timings</h2>
<table>{_rows(timing_rows, numeric=False)}</table>

<h2>{esc(last_runs(len(charted)).capitalize())}</h2>
<p>Runs that sent records, oldest on the left. Dry runs are left out.{esc(dry_note)}</p>
<p class="legend"><span style="background:{SENT_COLOUR}"></span>sent and acknowledged (including deletions)
<span style="background:{PROBLEM_COLOUR}"></span>not sent because of a problem (invalid, refused, skipped or to be
retried)</p>
{render_chart(list(history), run_id or None)}
<details><summary>The numbers behind the chart</summary>
<table><tr><th>Run started</th><th class="num">Sent</th><th class="num">Problems</th><th class="num">Exit code</th></tr>
{_rows(chart_rows)}</table>
</details>

<footer>Made by {esc(APP_NAME)} {esc(__version__)} from the run summary files in the log folder.</footer>
</main></body>
</html>
"""
