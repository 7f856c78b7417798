"""A progress bar for ``run`` and ``validate``, on a terminal only (DESIGN §9).

On a terminal: one ``tqdm`` bar with records done, records/second and, when the
number of rows is known, the time left. Anywhere else (Task Scheduler, a pipe,
a file, ``--quiet``) nothing at all: the log lines are the record of the run.

``tqdm`` rather than ``rich``: one small pure-Python package with no
dependencies, which PyInstaller freezes without hooks or data files, and which
picks ASCII or Unicode bar characters by what the console can show.

In a Jupyter (or Microsoft Fabric) notebook, which is no terminal, the Python API asks for
the bar anyway (``anywhere``): ``tqdm.auto`` draws it as a notebook widget when ``ipywidgets``
is installed, else as text, which a notebook's output shows in place. Neither is a dependency
of the tool: without a notebook nothing changes.

While a bar is on screen, console log lines are written above it instead of
through it. The console handler itself is kept (its level, format and the
secret-masking filter), only its stream is wrapped, and it is restored on close.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

from api_pipeline.errors import DatabaseError
from api_pipeline.job.logs import LOGGER_NAME

log = logging.getLogger(__name__)

# Outcomes shown next to the bar, in this order, when non-zero.
SHOWN_OUTCOMES = (
    ("sent", "sent"),
    ("purged", "purged"),
    ("valid", "valid"),
    ("dry_run", "written"),
    ("unchanged", "up to date"),
    ("adopted", "already held by DfE"),  # sent by the earlier tool: recorded, not sent
)
KNOWN_TOTAL_FORMAT = (
    "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} records [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
)
UNKNOWN_TOTAL_FORMAT = "{desc}: {n_fmt} records [{elapsed}, {rate_fmt}{postfix}]"


class SummaryLike(Protocol):
    """What the bar reads from runs.RunSummary after each batch."""

    @property
    def rows_read(self) -> int: ...

    @property
    def outcomes(self) -> Mapping[str, int]: ...

    @property
    def problems(self) -> int: ...


def is_terminal(stream: Any) -> bool:
    """True only for an interactive console; a closed or odd stream counts as not one."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class _AboveTheBar:
    """A stream wrapper that lifts the bar, writes a log line, and puts the bar back."""

    def __init__(self, stream: TextIO, bar_class: Any) -> None:
        self.stream = stream
        self._bar_class = bar_class

    def write(self, text: str) -> int:
        with self._bar_class.external_write_mode(file=self.stream):
            written = self.stream.write(text)
            self.stream.flush()
        return written

    def flush(self) -> None:
        self.stream.flush()


class Progress:
    """Records done, rate and time left for one run; does nothing when ``enabled`` is False.

    ``update`` is given to ``Pipeline(on_progress=...)``, which calls it after every
    batch with the run's summary. Use as a context manager, or call ``close``.
    """

    def __init__(
        self, total: int | None, stream: TextIO, enabled: bool = True, *, description: str = "working"
    ) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self._bar: Any = None
        self._swapped: list[tuple[logging.StreamHandler, Any]] = []
        if not enabled:
            return
        tqdm = _bar_class(stream)
        self._bar = tqdm(
            total=total,
            file=stream,
            desc=description,
            unit=" records",
            unit_scale=False,
            dynamic_ncols=True,
            mininterval=0.5,
            smoothing=0.2,
            leave=True,
            bar_format=KNOWN_TOTAL_FORMAT if total else UNKNOWN_TOTAL_FORMAT,
        )
        if hasattr(tqdm, "external_write_mode") and is_terminal(stream):
            self._lift_console_logging(tqdm)

    def _lift_console_logging(self, bar_class: Any) -> None:
        for handler in logging.getLogger(LOGGER_NAME).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                original = handler.stream
                handler.setStream(_AboveTheBar(original, bar_class))  # type: ignore[arg-type]
                self._swapped.append((handler, original))

    def update(self, summary: SummaryLike) -> None:
        """Move the bar to ``summary.rows_read`` and show the outcomes so far."""
        if self._bar is None:
            return
        done = int(summary.rows_read)
        if self._bar.total is not None and done > self._bar.total:
            self._bar.total = done  # rows added to the table during the run
        parts = [
            f"{label} {summary.outcomes.get(key, 0)}" for key, label in SHOWN_OUTCOMES if summary.outcomes.get(key)
        ]
        parts.append(f"problems {summary.problems}")
        self._bar.set_postfix_str(", ".join(parts), refresh=False)
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        """Leave the finished bar on screen and give the console log its stream back."""
        for handler, original in self._swapped:
            handler.setStream(original)
        self._swapped = []
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def in_a_notebook() -> bool:
    """Whether this is a Jupyter kernel (Jupyter, VS Code's notebooks, Microsoft Fabric): IPython
    is loaded and its shell runs in a kernel. Nothing is imported to find out."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    shell = get_ipython() if get_ipython is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _bar_class(stream: Any) -> Any:
    """tqdm's bar for a terminal; in a notebook, ``tqdm.auto``'s (a widget when ipywidgets is there)."""
    from tqdm import tqdm  # start-up: only when a bar is shown

    if is_terminal(stream) or not in_a_notebook():
        return tqdm
    with warnings.catch_warnings():  # without ipywidgets: a text bar, which is fine, and no warning about it
        warnings.simplefilter("ignore")
        from tqdm.auto import tqdm as auto_tqdm

    return auto_tqdm


def make_progress(
    total: int | None, *, stream: TextIO | None, quiet: bool = False, description: str = "working"
) -> Progress:
    """A bar on ``stream`` when it is a terminal and not ``quiet``; otherwise a no-op.

    ``stream=None`` means no bar at all (library callers, tests, the demo).
    """
    enabled = stream is not None and not quiet and is_terminal(stream)
    return Progress(total, stream if stream is not None else sys.stderr, enabled=enabled, description=description)


def progress_for(
    table: Any,
    *,
    stream: TextIO | None,
    quiet: bool = False,
    all_rows: bool = False,
    held_back: bool = False,
    limit: int | None = None,
    description: str = "working",
    anywhere: bool = False,
) -> Progress:
    """:func:`make_progress` for a run over ``table`` (a StagingTable), its total from one COUNT query.

    The COUNT runs only when a bar will be shown, so unattended runs pay nothing.
    If it fails the bar simply has no total (no percentage or time left).
    ``anywhere``: on ``stream`` even when it is no terminal (the Python API, for a notebook).
    """
    if stream is None or quiet or not (anywhere or is_terminal(stream)):
        return make_progress(None, stream=None)
    total: int | None
    try:
        total = table.count_candidates(all_rows=all_rows, held_back=held_back, limit=limit)
    except DatabaseError:
        log.debug("counting the rows to send failed; the progress bar has no total", exc_info=True)
        total = None
    return Progress(total, stream, enabled=True, description=description)
