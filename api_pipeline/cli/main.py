"""Command line: one parser, one small function per command, one error boundary.

``main`` is the only place that catches: a :class:`PipelineError` becomes one
line on stderr and its exit code (DESIGN §10); Ctrl+C becomes 130, and so do SIGTERM,
SIGHUP and Windows' console close, logoff and shutdown events, which stop a command the
same way while it runs (:mod:`api_pipeline.stopping`); anything else is reported as an
unexpected error, with a traceback only at ``-vv``. Output whose reader stops reading
(``status | head``) is dropped from then on and the command carries on, so that a closed
pipe is never mistaken for the command's own outcome (:class:`api_pipeline.cli.console.ConsoleMayFail`).
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import io
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from api_pipeline import APP_NAME, __version__
from api_pipeline.cli.console import consoles_may_fail, unwritten
from api_pipeline.cli.credentials import DEFAULT_SERVICE, keyring_variables, set_secret_command
from api_pipeline.errors import ConfigError, DatabaseError, ExitCode, Interrupted, PipelineError
from api_pipeline.job.logs import append_error_log, close_logging, format_traceback, known_secrets, log_to_files_only
from api_pipeline.settings.config import Settings, load_settings
from api_pipeline.settings.envfile import executable_dir, find_env_file, no_env_file_found
from api_pipeline.settings.masking import hide_secrets, mask_secrets
from api_pipeline.stopping import StopRequest, stopping_on_signals
from api_pipeline.store.dialects import DIALECTS
from api_pipeline.wording import printable

log = logging.getLogger("api_pipeline.cli.main")

EXIT_CODES_HELP = "exit codes:\n" + "".join(f"  {code.value:<4} {code.meaning}\n" for code in ExitCode)

# Each command's help points at the one list of exit codes, on the top-level help.
COMMAND_EPILOG = f"The exit codes are listed once, by '{APP_NAME} --help'."

DEMO_FOLDER = "csc_api_pipeline_demo"  # in the user's own folder, unless --dir says otherwise


@dataclass
class Context:
    """What a command handler needs from the outside world; tests build their own."""

    environ: Mapping[str, str]
    cwd: Path
    out: TextIO
    err: TextIO
    executable_dir: Path = field(default_factory=executable_dir)
    # The secrets of the settings built so far: masked in the error line and traceback main prints.
    secrets: list[str] = field(default_factory=list)
    frozen: bool = field(default_factory=lambda: bool(getattr(sys, "frozen", False)))
    # What the command loaded, for messages about it: the .env read, and the settings.
    env_file: Path | None = None
    loaded: Settings | None = None
    implied_run: bool = False  # started with no command, so running 'run'
    # Ctrl+C or the system asking the command to stop: main installs the signal handlers that note it.
    stop: StopRequest = field(default_factory=StopRequest)
    warned: set[str] = field(default_factory=set)  # the warnings said already, each said once

    def path(self, path: Path) -> Path:
        """A path given on the command line, relative to the folder the command was started in."""
        return path if path.is_absolute() else self.cwd / path

    def user_folder(self) -> Path:
        """The user's own folder (%USERPROFILE% on Windows, else $HOME), whatever folder the command started in."""
        names = ("USERPROFILE", "HOME") if sys.platform == "win32" else ("HOME",)
        for name in names:
            if self.environ.get(name, "").strip():
                return Path(self.environ[name].strip())
        return Path.home()

    def settings(self, args: argparse.Namespace, command: str, **overrides: Any) -> Settings:
        explicit = None if args.env_file is None else self.path(args.env_file)
        self.env_file = find_env_file(explicit, self.cwd, self.executable_dir)
        if args.log_dir is not None:
            overrides["log_dir"] = self.path(args.log_dir)
        if args.verbose:
            overrides["debug"] = True
        try:
            settings = load_settings(
                command=command, environ=self.environ, env_file=self.env_file, overrides=overrides, cwd=self.cwd
            )
        except ConfigError as exc:
            if self.env_file is None and explicit is None:
                raise ConfigError([no_env_file_found(self.cwd, self.executable_dir), *exc.problems]) from None
            raise
        if command != "run":  # a run writes them in its log, on the console and in the log file
            for warning in settings.warnings:
                self.warn(warning)
        self.loaded = settings
        self.secrets.extend(secret.reveal() for secret in settings.secrets())
        return settings

    def error_log_folders(self) -> list[Path]:
        """Where a failed start leaves its trace: the default log folder, else beside the exe, else here."""
        folders = []
        if self.env_file is not None:
            folders.append(self.env_file.parent / "logs")
        if self.frozen:
            folders.append(self.executable_dir / "logs")
        folders.append(self.cwd / "logs")
        return list(dict.fromkeys(folders))

    def masked(self, text: str, *, patterns: bool = False) -> str:
        """``text`` with every secret known to this process hidden: the settings', and any learnt since (tokens).

        ``patterns`` also hides what looks like a password or a bearer token (for a traceback,
        whose text the tool did not write).
        """
        secrets = [*self.secrets, *known_secrets()]
        return mask_secrets(text, secrets) if patterns else hide_secrets(text, secrets)

    def warn(self, text: str) -> None:
        """A warning on stderr: one line, secrets hidden, before the command's own output; said once
        (run-smoke loads the settings for each of its three checks)."""
        if text in self.warned:
            return
        self.warned.add(text)
        print(f"warning: {printable(self.masked(text))}", file=self.err, flush=True)

    def print(self, text: str = "") -> None:
        """Print a command's output: its lines as they are, any other control character escaped."""
        print("\n".join(printable(line) for line in text.split("\n")), file=self.out, flush=True)


# ---------------------------------------------------------------------------
# Command handlers: each takes (args, context) and returns an exit code.
#
# Each imports its command's module when it runs (start-up time): --help, --version and every
# command load only what they use, not requests, jsonschema or the simulator for all of them.
# ---------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.job.runner import run_command  # start-up: only for this command

    overrides: dict[str, Any] = {}
    if args.mode is not None:
        overrides["use_partial_payload"] = args.mode == "partial"
    if args.live:
        overrides["allow_live"] = True
    settings = ctx.settings(args, "run", **overrides)
    return run_command(
        settings,
        ctx,
        limit=args.limit,
        dry_run_dir=args.dry_run,
        verbosity=args.verbose,
        quiet=args.quiet,
        resend_all=args.resend_all,
    )


def cmd_validate(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.job.runner import validate_command  # start-up: only for this command

    return validate_command(ctx.settings(args, "validate"), ctx, all_rows=args.all, limit=args.limit)


def cmd_init_db(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.diagnostics import init_db  # start-up: only for this command

    # --print with --dialect needs no connection, so no DB_CONNECTION_STRING either.
    command = "init-db --print" if args.print and args.dialect else "init-db"
    return init_db(
        ctx.settings(args, command), ctx, args.print, dialect=args.dialect, sample=args.sample, append=args.append
    )


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.status import status_command  # start-up: only for this command

    return status_command(ctx.settings(args, "status"), ctx, runs=args.runs, as_json=args.json)


def cmd_set_secret(args: argparse.Namespace, ctx: Context) -> int:
    return set_secret_command(args.name, ctx, service=args.service)


def cmd_test_endpoint(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.diagnostics import test_endpoint  # start-up: only for this command

    return test_endpoint(ctx.settings(args, "test-endpoint"), ctx)


def cmd_test_db(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.diagnostics import test_db  # start-up: only for this command

    return test_db(ctx.settings(args, "test-db"), ctx)


def cmd_test_schema(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.diagnostics import test_schema  # start-up: only for this command

    return test_schema(ctx.settings(args, "test-schema"), ctx)


# The earlier Python tool's run-smoke checked the database, then a token and a POST, then the
# staging table: the same checks as these three commands, run here in that order.
SMOKE_CHECKS = (("test-db", cmd_test_db), ("test-endpoint", cmd_test_endpoint), ("test-schema", cmd_test_schema))


def cmd_run_smoke(args: argparse.Namespace, ctx: Context) -> int:
    """The earlier tool's ``run-smoke``: test-db, test-endpoint and test-schema, each run whatever
    the others found; the exit code is the first failure's (in that order), else 0."""
    results: list[tuple[str, int]] = []
    for name, check in SMOKE_CHECKS:
        ctx.print(f"== {name} ==")
        try:
            code = int(check(args, ctx))
        except PipelineError as exc:
            for warning in getattr(exc, "warnings", []):
                ctx.warn(warning)
            lines = [f"error: {line}" for line in _error_lines(ctx, exc)]
            for line in lines:
                print(line, file=ctx.err, flush=True)
            code = exc.exit_code
            if code == ExitCode.USAGE:
                _leave_a_trace(ctx, f"'{name}' (in run-smoke)", lines)
        results.append((name, code))
        ctx.print()
    ctx.print(
        "run-smoke: "
        + "; ".join(f"{name} {'passed' if code == 0 else f'FAILED (exit {code})'}" for name, code in results)
    )
    return next((code for _, code in results if code != 0), ExitCode.OK)


def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.rehearsal.demo import run_demo  # start-up: only for this command

    # Not the current folder by default: that is System32 in an administrator's command prompt.
    folder = ctx.path(args.dir) if args.dir is not None else ctx.user_folder() / DEMO_FOLDER
    return run_demo(
        folder,
        ctx,
        children=args.children,
        seed=args.seed,
        verbosity=args.verbose,
        quiet=args.quiet,
        chosen=args.dir is not None,
    )


def cmd_simulate_api(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.rehearsal.demo import run_simulator  # start-up: only for this command

    state = ctx.path(args.state) if args.state is not None else None
    return run_simulator(port=args.port, la_code=args.la_code, latency=args.latency, out=ctx.print, state=state)


# ---------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _mode(text: str) -> str:
    """``--mode``: ``deltas``, the earlier sender's name for partial, is accepted as it."""
    value = text.strip().lower()
    return "partial" if value == "deltas" else value


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Options accepted before or after the command name."""

    def default(value: Any) -> Any:
        return argparse.SUPPRESS if suppress else value

    parser.add_argument(
        "--env-file",
        type=Path,
        default=default(None),
        metavar="PATH",
        help="Read settings from this .env file. Default: .env in the current folder, else next to the program.",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default(0),
        help="More detail in the log (-vv adds tracebacks). Never shows record content. Env: DEBUG.",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default(False), help="Only warnings and errors on the console."
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        default=default(None),
        metavar="PATH",
        help="Folder for this run's log file and summary. Env: LOG_DIR. Default: 'logs' next to the .env file.",
    )


def build_parser() -> argparse.ArgumentParser:
    """The whole command line. The docs generator and the tests use this same function."""
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)

    parser = argparse.ArgumentParser(
        prog=APP_NAME,
        description="Send children's social care records from your staging table to the DfE CSC API.",
        epilog=EXIT_CODES_HELP + "\nRun 'COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"{APP_NAME} {__version__}", help="Print the version and exit."
    )
    _global_options(parser, suppress=False)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    def add(name: str, handler: Callable[..., int], help_text: str, description: str, **extra: Any) -> Any:
        sub = commands.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=description,
            epilog=COMMAND_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **extra,
        )
        sub.set_defaults(func=handler)
        return sub

    run = add(
        "run",
        cmd_run,
        "Send what DfE has not yet seen, and record the outcome in the table.",
        "Read the staging table, build full or partial (delta) records and purges, validate them against "
        "DfE's schema, send them in batches and write each outcome back to the table.",
    )
    run.add_argument(
        "--dry-run",
        nargs="?",
        const=Path("dry_run"),
        type=Path,
        metavar="FOLDER",
        help="Build and validate, and write the request bodies to FOLDER (default: ./dry_run) for review. "
        "Sends nothing and changes no status. The files contain personal data: delete them after review.",
    )
    run.add_argument("--limit", type=_positive_int, metavar="N", help="Process at most N rows this run (default: all).")
    run.add_argument(
        "--live",
        action="store_true",
        help="Allow sending to DfE's live receiver (an API_ENDPOINT without '-test' in its host name or path). "
        "Env: ALLOW_LIVE. Never allowed for a table whose name ends in _anon.",
    )
    run.add_argument(
        "--mode",
        type=_mode,
        choices=("full", "partial"),
        help="full: whole records; partial: only what changed (the earlier tool's 'deltas' means the same). "
        "Env: USE_PARTIAL_PAYLOAD (default: partial).",
    )
    run.add_argument(
        "--resend-all",
        action="store_true",
        help="Send every child's whole record again, with purges for all the ledger says DfE holds and the record "
        "lacks, and every deleted child's purge, whatever the table and the ledger say was sent. For once after "
        "restoring an older copy of the database (see the troubleshooting guide).",
    )

    validate = add(
        "validate",
        cmd_validate,
        "Check the records waiting to be sent, and those held back as invalid, against DfE's schema; sends "
        "nothing, changes nothing.",
        "Builds the request for every row waiting to be sent, and every row a run marked invalid (which stays "
        "so until your SQL changes it and sets it back to Pending), exactly as run would, or for every row with "
        "--all, and validates it and the child's whole record against DfE's schema. Prints how many records "
        "fail on each field, with example row ids. Sends nothing and changes no status. Exit 1 if any are "
        "invalid.",
    )
    validate.add_argument(
        "--all",
        action="store_true",
        help="Check every row, not only those waiting to be sent or held back as invalid.",
    )
    validate.add_argument("--limit", type=_positive_int, metavar="N", help="Check at most N rows (default: all).")

    add(
        "test-endpoint",
        cmd_test_endpoint,
        "Check the token, credentials and API address by sending an empty list (no records).",
        "Gets a token and POSTs an empty array [] to your council's endpoint. This proves the token endpoint, "
        "CLIENT_ID, CLIENT_SECRET, SCOPE, SUPPLIER_KEY, API_ENDPOINT, LA_CODE, proxy and TLS in one go. "
        "It never sends a record.",
    )
    add(
        "test-db",
        cmd_test_db,
        "Check the database connection.",
        "Connects with DB_CONNECTION_STRING, runs SELECT 1 and reports the database system and version.",
        aliases=["test-db-connection"],
    )
    add(
        "test-schema",
        cmd_test_schema,
        "Check the staging table and ledger have the columns the tool needs.",
        "Checks TABLE_NAME exists with the required columns, and the submission ledger and the in-flight and "
        "in-doubt tables beside it; lists anything missing and how to fix it.",
    )
    add(
        "run-smoke",
        cmd_run_smoke,
        "The earlier tool's smoke test: test-db, test-endpoint and test-schema, in that order.",
        "Runs test-db, test-endpoint and test-schema one after the other, as the earlier Python tool's "
        "run-smoke checked the database, a token and a POST, and the staging table. Each runs whatever the "
        "others found; a summary line says which passed. Sends no record. Exit code: the first failure's, "
        "in that order, else 0.",
    )
    demo = add(
        "demo",
        cmd_demo,
        "Run the whole pipeline on synthetic data against the built-in DfE simulator (no setup).",
        "Creates a SQLite staging table of synthetic children in a demo folder, starts the built-in DfE "
        "simulator on 127.0.0.1, runs the pipeline, applies a round of realistic changes, runs again, and "
        "checks the simulator's view of every child equals the staging table. Sends nothing anywhere else.",
    )
    demo.add_argument(
        "--children", type=_positive_int, default=300, metavar="N", help="Synthetic children (default: 300)."
    )
    demo.add_argument(
        "--dir",
        type=Path,
        metavar="FOLDER",
        help="Demo folder: a new or empty one, or one an earlier demo made, whose database is replaced "
        f"(default: {DEMO_FOLDER} in your user folder, %%USERPROFILE%% or $HOME, whichever folder you start in). "
        "A folder holding anything else is refused, never deleted.",
    )
    demo.add_argument("--seed", type=int, default=2026, help="Random seed for the synthetic data (default: 2026).")

    init = add(
        "init-db",
        cmd_init_db,
        "Create the staging table, ledger, in-flight, in-doubt and run lock tables where missing.",
        "Creates only what is missing, for SQL Server, PostgreSQL or SQLite: the staging table (with an index on "
        "person_id, unique except on SQL Server), the submission ledger, the in-flight and in-doubt tables and the "
        "run lock table. Never drops or alters a table. The only command that creates a new SQLite database file. "
        "With --sample N, then adds N synthetic children for a rehearsal.",
    )
    init.add_argument("--print", action="store_true", help="Print the DDL for a DBA to review instead of running it.")
    init.add_argument(
        "--sample",
        type=_positive_int,
        metavar="N",
        help="Then fill the staging table with N synthetic children, as your council's SQL adds new ones "
        "(Pending, New), for a rehearsal. Only into an empty table whose name ends in _anon, which is never "
        "sent to DfE's live receiver.",
    )
    init.add_argument(
        "--append",
        action="store_true",
        help="With --sample: add the sample children to a table that already has rows.",
    )
    init.add_argument(
        "--dialect",
        choices=tuple(DIALECTS),
        help="With --print: write the DDL for this database system without connecting "
        "(default: the one DB_CONNECTION_STRING reaches).",
    )

    status = add(
        "status",
        cmd_status,
        "Show what is waiting, what was not sent and why, and how the last runs went (changes nothing).",
        "Counts the staging table's rows by submission_status and row_state, lists invalid and rejected rows "
        "by reason (field names only, never record content), shows how long the oldest waiting row has waited, "
        "what the submission ledger holds, and the last runs from the run summaries in the log folder. "
        "Read-only: it never creates or changes a table. A log folder that cannot be reached (a network share "
        "that is down) or read stops it with exit code 2 before the database is opened, rather than showing "
        "no runs.",
    )
    status.add_argument(
        "--runs", type=_positive_int, default=10, metavar="N", help="How many recent runs to list (default: 10)."
    )
    status.add_argument(
        "--json",
        action="store_true",
        help="Print one JSON object instead, for monitoring tools. Its keys are listed in the documentation's "
        "command-line reference, under 'status --json'.",
    )

    sim = add(
        "simulate-api",
        cmd_simulate_api,
        "Run the built-in DfE simulator on this machine, for a rehearsal.",
        "Serves a DfE CSC API stand-in (token endpoint and receiver) on 127.0.0.1 until Ctrl+C, and prints "
        "the settings to point a .env at it. Nothing leaves this machine. It accepts only its own made-up "
        "credentials: CLIENT_ID=sim-client, CLIENT_SECRET=sim-secret, SCOPE=api://csc-simulator/.default and "
        "SUPPLIER_KEY=sim-supplier-key, tokens from TOKEN_ENDPOINT=http://127.0.0.1:PORT/sim-tenant/oauth2/v2.0/token, "
        "and records for LA_CODE=999 (or --la-code) at "
        "API_ENDPOINT=http://127.0.0.1:PORT/children-in-social-care-data-receiver-test/1.",
    )
    sim.add_argument("--port", type=int, default=8765, help="Port on 127.0.0.1 (default: 8765).")
    sim.add_argument("--la-code", default="999", help="LA code the simulator accepts (default: 999).")
    sim.add_argument(
        "--latency",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="How long each POST takes to answer, the simulator's own work included (default: 0).",
    )
    sim.add_argument(
        "--state",
        type=Path,
        metavar="FILE",
        help="Keep DfE's view across restarts: hold the children saved in FILE (if it exists) when starting, and "
        "save those held there when stopped (Ctrl+C, or its window closing). Without it, the simulator starts "
        "empty every time. The file is readable by this account only.",
    )
    secret = add(
        "set-secret",
        cmd_set_secret,
        "Store a secret in the Windows Credential Manager, so the .env file holds none.",
        "Checks there is a keyring, asks for the secret twice without showing it, stores it in the Windows "
        "Credential Manager (the keyring of the account running this command) as a generic credential of its "
        "own named SERVICE/NAME, reads it back, and prints the NAME=keyring:SERVICE/NAME line to put in .env "
        "instead of the secret. Run it as the account that runs the scheduled task: only that account "
        "can read the secret. With no console to type at (a deployment script, input redirected), it reads the "
        "secret from the first line of standard input instead, for example 'type secret.txt | csc_api_pipeline.exe "
        "set-secret CLIENT_SECRET', and stops at once (exit code 2) when there is none. Reads no settings and "
        "sends nothing.",
    )

    names = keyring_variables()
    secret.add_argument(
        "name",
        metavar="NAME",
        help=f"The name to store it under: the setting's, one of {', '.join(names)} (any case), or any other "
        "name a keyring:SERVICE/NAME value in .env ends with (as written there, such as live_client_secret).",
    )
    secret.add_argument(
        "--service",
        default=DEFAULT_SERVICE,
        metavar="SERVICE",
        help="The keyring service name to store it under (default: csc-api-pipeline).",
    )
    return parser


NO_COMMAND_NOTE = "no command was given, so 'run' was started (as the earlier tool did); --help lists every command"


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
            _leave_a_trace(ctx, "the command line", usage.getvalue().splitlines())
        ctx.err.write(usage.getvalue())
        return code
    try:
        with stopping_on_signals(ctx.stop):
            return int(args.func(args, ctx))
    except PipelineError as exc:
        warnings = [printable(ctx.masked(line)) for line in getattr(exc, "warnings", [])]
        lines = _error_lines(ctx, exc)
        said = [f"warning: {line}" for line in warnings] + [f"error: {line}" for line in lines]
        traced = exc.exit_code == ExitCode.USAGE
        if traced:  # before the console, which may fail
            _leave_a_trace(ctx, f"'{args.command}'", said)
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


def _error_lines(ctx: Context, exc: PipelineError) -> list[str]:
    """What an error says on stderr, a line each (after ``error: ``): secrets hidden, control
    characters escaped, the SQLite file named, and first a note when 'run' was started for no command."""
    lines = str(exc).split("\n") if str(exc) else [exc.__class__.__name__]
    if isinstance(exc, DatabaseError):
        lines += _where_the_database_is(ctx, str(exc))
    if isinstance(exc, ConfigError) and ctx.implied_run:
        lines.insert(0, NO_COMMAND_NOTE)  # what was started, before what it lacks
    return [printable(ctx.masked(line)) for line in lines]  # one line each, whatever they quote


def _tell(ctx: Context, lines: list[str], what: str, code: int, *, traced: bool) -> None:
    """The error lines on stderr; when stderr could not take them, in the error log instead
    (unless they are there already), so that a run nobody could see still says why it stopped."""
    for line in lines:
        print(line, file=ctx.err, flush=True)
    failure = unwritten(ctx.err)
    if failure is not None and not traced:
        _leave_a_trace(ctx, what, lines, code=code, why=f"the console could not show this ({failure})")


def _note_in_the_run_log(stream: str, failure: str) -> None:
    log_to_files_only(
        f"the console could not be written to ({stream}: {failure}): this command goes on, and what it "
        "would have shown there is in this file only",
        level=logging.WARNING,
    )


def _where_the_database_is(ctx: Context, message: str) -> list[str]:
    """A database error names the SQLite file it is about, as an absolute path."""
    path = ctx.loaded.sqlite_file if ctx.loaded is not None else None
    if path is None or str(path) in message:
        return []
    return [f"(the SQLite database: {path})"]


def _leave_a_trace(ctx: Context, what: str, lines: list[str], *, code: int = ExitCode.USAGE, why: str = "") -> None:
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
