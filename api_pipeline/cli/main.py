"""Command line: the one error boundary, around the parser (``cli.parser``) and its commands.

``main`` is the only place that catches: a :class:`PipelineError` becomes one
line on stderr and its exit code (DESIGN §10); Ctrl+C becomes 130, and so do SIGTERM,
SIGHUP and Windows' console close, logoff and shutdown events, which stop a command the
same way while it runs (:mod:`api_pipeline.stopping`); anything else is reported as an
unexpected error, with a traceback only at ``-vv``. Output whose reader stops reading
(``status | head``) is dropped from then on and the command carries on, so that a closed
pipe is never mistaken for the command's own outcome (:class:`api_pipeline.cli.console.ConsoleMayFail`).
"""

from __future__ import annotations

import codecs
import contextlib
import io
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from api_pipeline.about import APP_NAME, __version__
from api_pipeline.cli.console import consoles_may_fail, unwritten
from api_pipeline.cli.error_lines import error_lines, leave_a_trace
from api_pipeline.cli.parser import build_parser
from api_pipeline.errors import ExitCode, Interrupted, PipelineError
from api_pipeline.job.logs import append_error_log, close_logging, format_traceback, log_to_files_only
from api_pipeline.settings.context import Context
from api_pipeline.stopping import stopping_on_signals
from api_pipeline.wording import printable

log = logging.getLogger("api_pipeline.cli.main")


def main(argv: Sequence[str] | None = None, *, context: Context | None = None) -> int:
    """Parse, dispatch, and turn every error into one line and an exit code.

    Without a ``context`` (the program itself, not a test), standard output and standard error
    are :class:`~api_pipeline.cli.console.ConsoleMayFail`: a console that cannot be written to, or a
    reader that stops reading (``status | head``), loses
    what the command writes to it, never the command's outcome. The run's log file notes it, and
    an error line the console could not take is put in the error log.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if context is not None:
        return _main(argv, context)
    _tolerant_console(os.environ)
    with consoles_may_fail(on_failure=_note_in_the_run_log) as (out, err):
        return _main(argv, Context(environ=os.environ, cwd=Path.cwd(), out=out, err=err))


def _main(argv: list[str], ctx: Context) -> int:
    parser = build_parser()
    usage = io.StringIO()
    try:
        with contextlib.redirect_stderr(usage):
            args = parser.parse_args(argv)
            if not getattr(args, "func", None):  # no command means run (DESIGN §2)
                args = parser.parse_args([*argv, "run"])
                ctx.implied_run = True
    except SystemExit as exc:  # argparse: --help/--version exit 0, usage errors exit 2
        code = int(exc.code or 0)
        if code == ExitCode.USAGE:  # the error log first: the console may fail, and must not decide what is kept
            leave_a_trace(ctx, "the command line", usage.getvalue().splitlines())
        ctx.err.write(usage.getvalue())
        return code
    try:
        with stopping_on_signals(ctx.stop):
            return int(args.func(args, ctx))
    except PipelineError as exc:
        warnings = [printable(ctx.masked(line)) for line in getattr(exc, "warnings", [])]
        lines = error_lines(ctx, exc)
        said = [f"warning: {line}" for line in warnings] + [f"error: {line}" for line in lines]
        traced = exc.exit_code == ExitCode.USAGE
        if traced:  # before the console, which may fail
            leave_a_trace(ctx, f"'{args.command}'", said)
        _tell(ctx, said, f"'{args.command}'", exc.exit_code, traced=traced)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        reason = exc.reason if isinstance(exc, Interrupted) else "Ctrl+C"
        print(f"stopped by {reason}: rows not yet acknowledged stay pending and are sent next run", file=ctx.err)
        return ExitCode.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one boundary that must not crash
        if args.verbose >= 2:
            _keep_the_traceback(ctx, args.command, sys.exc_info())
        said = [f"unexpected error: {exc.__class__.__name__}. Run again with -vv for details."]
        _tell(ctx, said, f"'{args.command}'", ExitCode.RECORDS_FAILED, traced=args.verbose >= 2)
        return ExitCode.RECORDS_FAILED
    finally:
        close_logging()


def _tell(ctx: Context, lines: list[str], what: str, code: int, *, traced: bool) -> None:
    """The error lines on stderr; when stderr could not take them, in the error log instead
    (unless they are there already), so that a run nobody could see still says why it stopped."""
    for line in lines:
        print(line, file=ctx.err, flush=True)
    failure = unwritten(ctx.err)
    if failure is not None and not traced:
        leave_a_trace(ctx, what, lines, code=code, why=f"the console could not show this ({failure})")


def _note_in_the_run_log(stream: str, failure: str) -> None:
    log_to_files_only(
        f"the console could not be written to ({stream}: {failure}): this command goes on, and what it "
        "would have shown there is in this file only",
        level=logging.WARNING,
    )


def _keep_the_traceback(ctx: Context, command: str, exc_info: Any) -> None:
    """``-vv``: the traceback on the console, in the run's log file and in the error log, masked in each.

    Under Task Scheduler nobody sees the console: the files are where "-vv for details" is read.
    """
    text = ctx.masked(format_traceback(exc_info), patterns=True)
    log_to_files_only(f"unexpected error: {exc_info[0].__name__}; its traceback (-vv):", exc_info)
    header = f"{APP_NAME} {__version__}: '{command}' stopped with an unexpected error (exit code 1); traceback (-vv):"
    log_dir = [ctx.loaded.log_dir] if ctx.loaded is not None and ctx.loaded.log_dir is not None else []
    append_error_log(
        [*log_dir, *ctx.error_log_folders()],
        [header, *text.split("\n")],
        warn=lambda message: print(f"warning: {message}", file=ctx.err, flush=True),
    )
    print(text, file=ctx.err, flush=True)  # last: the files must not wait for a console that may fail


def _tolerant_console(environ: Mapping[str, str]) -> None:
    """Output redirected to a file or a pipe is UTF-8, and a character a stream cannot show is a '?',
    not a crashed night run.

    Windows writes redirected output (``> status.txt``, a pipe) in the ANSI code page, where
    ``Łódź`` becomes ``?ód?``; the console itself takes Unicode. So output that is not a terminal
    and not already UTF-8 is switched to UTF-8, unless PYTHONIOENCODING names an encoding, which
    is then used (by the exe too, which would otherwise ignore it).
    """
    chosen = environ.get("PYTHONIOENCODING", "").strip()
    encoding, _, errors = chosen.partition(":")
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is None:
            continue
        with contextlib.suppress(ValueError, OSError, LookupError):
            if encoding:
                reconfigure(encoding=encoding, errors=errors or "replace")
            elif _redirected_in_a_code_page(stream):
                reconfigure(encoding="utf-8", errors="replace")
            else:
                reconfigure(errors="replace")


def _redirected_in_a_code_page(stream: TextIO) -> bool:
    """Not a terminal, and written in an encoding that cannot hold every character (not UTF-8)."""
    try:
        if stream.isatty():
            return False
    except (OSError, ValueError):
        return False
    name = codecs.lookup(getattr(stream, "encoding", None) or "ascii").name
    return name not in ("utf-8", "utf-8-sig", "utf-16", "utf-32")
