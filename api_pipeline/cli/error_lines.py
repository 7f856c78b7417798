"""What a failed command says: its error lines, secrets hidden, and the trace it leaves in the error log.

The error boundary (``cli.main``) says them for every command; ``run-smoke`` says them for
each of its three checks, which carry on whatever the others found.
"""

from __future__ import annotations

from api_pipeline.about import APP_NAME, __version__
from api_pipeline.errors import ConfigError, DatabaseError, ExitCode, PipelineError
from api_pipeline.job.logs import append_error_log
from api_pipeline.settings.context import Context
from api_pipeline.wording import printable

NO_COMMAND_NOTE = "no command was given, so 'run' was started (as the earlier tool did); --help lists every command"


def error_lines(ctx: Context, exc: PipelineError) -> list[str]:
    """What an error says on stderr, a line each (after ``error: ``): secrets hidden, control
    characters escaped, the SQLite file named, and first a note when 'run' was started for no command."""
    lines = str(exc).split("\n") if str(exc) else [exc.__class__.__name__]
    if isinstance(exc, DatabaseError):
        lines += _where_the_database_is(ctx, str(exc))
    if isinstance(exc, ConfigError) and ctx.implied_run:
        lines.insert(0, NO_COMMAND_NOTE)  # what was started, before what it lacks
    return [printable(ctx.masked(line)) for line in lines]  # one line each, whatever they quote


def _where_the_database_is(ctx: Context, message: str) -> list[str]:
    """A database error names the SQLite file it is about, as an absolute path."""
    path = ctx.loaded.sqlite_file if ctx.loaded is not None else None
    if path is None or str(path) in message:
        return []
    return [f"(the SQLite database: {path})"]


def leave_a_trace(ctx: Context, what: str, lines: list[str], *, code: int = ExitCode.USAGE, why: str = "") -> None:
    """Exit 2 happens before any run log exists: copy the messages to the error log as well as stderr.

    Also where an error's message could not be shown on the console (``why`` says so), whatever its exit code.
    """
    source = f"settings from {ctx.env_file}" if ctx.env_file is not None else "no .env found"
    because = f"; {why}" if why else ""
    header = f"{APP_NAME} {__version__}: {what} stopped with exit code {code} ({source}; started in {ctx.cwd}){because}"
    append_error_log(
        ctx.error_log_folders(),
        [header, *lines],
        warn=lambda message: print(f"warning: {message}", file=ctx.err, flush=True),
    )
