"""The command line's parser: one small function per command, beside the handler it dispatches to.

Each command is a handler, ``cmd_*(args, ctx) -> exit code``, and a function that adds its
arguments to the parser (pipx's style); :data:`COMMANDS` lists them in the order ``--help``
shows. Adding a command is those two functions and its line in :data:`COMMANDS` here, and its
work in a module of its own. The docs generator and the tests use this same :func:`build_parser`.

Each handler imports its command's module when it runs (start-up time): --help, --version and
every command load only what they use, not requests, jsonschema or the simulator for all of them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from api_pipeline.about import APP_NAME, __version__
from api_pipeline.cli.credentials import DEFAULT_SERVICE, keyring_variables, set_secret_command
from api_pipeline.cli.error_lines import error_lines, leave_a_trace
from api_pipeline.errors import ConfigError, ExitCode, PipelineError
from api_pipeline.settings.context import Context
from api_pipeline.store.dialects import DIALECTS

Handler = Callable[[argparse.Namespace, Context], int]

EXIT_CODES_HELP = "exit codes:\n" + "".join(f"  {code.value:<4} {code.meaning}\n" for code in ExitCode)

# Each command's help points at the one list of exit codes, on the top-level help.
COMMAND_EPILOG = f"The exit codes are listed once, by '{APP_NAME} --help'."

DEMO_FOLDER = "csc_api_pipeline_demo"  # in the user's own folder, unless --dir says otherwise


@dataclass
class Commands:
    """Adds a command to the parser, with the options every command shares and the pointer to the exit codes."""

    subparsers: argparse._SubParsersAction[argparse.ArgumentParser]
    common: argparse.ArgumentParser

    def add(
        self, name: str, handler: Handler, help_text: str, description: str, **extra: Any
    ) -> argparse.ArgumentParser:
        sub = self.subparsers.add_parser(
            name,
            parents=[self.common],
            help=help_text,
            description=description,
            epilog=COMMAND_EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            **extra,
        )
        sub.set_defaults(func=handler)
        return sub


def cmd_run(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.job.runner import run_command  # start-up: only for this command

    overrides: dict[str, Any] = {}
    if args.mode is not None:
        overrides["use_partial_payload"] = args.mode == "partial"
    if args.live:
        overrides["allow_live"] = True
    if args.purge_many_orphans and not args.purge_orphans:
        raise ConfigError("--purge-many-orphans confirms --purge-orphans: give both, or neither")
    settings = ctx.settings(args, "run", **overrides)
    return run_command(
        settings,
        ctx,
        limit=args.limit,
        dry_run_dir=args.dry_run,
        verbosity=args.verbose,
        quiet=args.quiet,
        resend_all=args.resend_all,
        purge_orphans=args.purge_orphans,
        purge_many_orphans=args.purge_many_orphans,
    )


def _add_run(commands: Commands) -> None:
    run = commands.add(
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
    run.add_argument(
        "--purge-orphans",
        action="store_true",
        help="After the rows, purge at DfE the children the ledger says DfE holds that no row of the table produces "
        "any more (a row deleted outright instead of marked deleted, or re-keyed). Without it a run only warns of "
        "them; status lists them. With --dry-run, the purges are written for review and nothing is sent.",
    )
    run.add_argument(
        "--purge-many-orphans",
        action="store_true",
        help="With --purge-orphans: purge them even when they are so many of the children DfE holds that "
        "--purge-orphans alone refuses, as they look like a table emptied by mistake (see how-it-works).",
    )


def cmd_validate(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.job.runner import validate_command  # start-up: only for this command

    return validate_command(ctx.settings(args, "validate"), ctx, all_rows=args.all, limit=args.limit)


def _add_validate(commands: Commands) -> None:
    validate = commands.add(
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


def cmd_test_endpoint(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.diagnostics import test_endpoint  # start-up: only for this command

    return test_endpoint(ctx.settings(args, "test-endpoint"), ctx)


def _add_test_endpoint(commands: Commands) -> None:
    commands.add(
        "test-endpoint",
        cmd_test_endpoint,
        "Check the token, credentials and API address by sending an empty list (no records).",
        "Gets a token and POSTs an empty array [] to your council's endpoint. This proves the token endpoint, "
        "CLIENT_ID, CLIENT_SECRET, SCOPE, SUPPLIER_KEY, API_ENDPOINT, LA_CODE, proxy and TLS in one go. "
        "It never sends a record.",
    )


def cmd_test_db(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.diagnostics import test_db  # start-up: only for this command

    return test_db(ctx.settings(args, "test-db"), ctx)


def _add_test_db(commands: Commands) -> None:
    commands.add(
        "test-db",
        cmd_test_db,
        "Check the database connection.",
        "Connects with DB_CONNECTION_STRING, runs SELECT 1 and reports the database system and version.",
        aliases=["test-db-connection"],
    )


def cmd_test_schema(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.diagnostics import test_schema  # start-up: only for this command

    return test_schema(ctx.settings(args, "test-schema"), ctx)


def _add_test_schema(commands: Commands) -> None:
    commands.add(
        "test-schema",
        cmd_test_schema,
        "Check the staging table and ledger have the columns the tool needs.",
        "Checks TABLE_NAME exists with the required columns, and the submission ledger and the in-flight and "
        "in-doubt tables beside it; lists anything missing and how to fix it.",
    )


def cmd_test_notify(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.notify.channels import test_notify  # start-up: only for this command

    return test_notify(ctx.settings(args, "test-notify"), ctx)


def _add_test_notify(commands: Commands) -> None:
    commands.add(
        "test-notify",
        cmd_test_notify,
        "Send a test alert through each channel set up (e-mail, webhook).",
        "Sends a test alert by e-mail (SMTP_HOST, NOTIFY_EMAIL_FROM, NOTIFY_EMAIL_TO) and to NOTIFY_WEBHOOK_URL, "
        "whichever are set up, and says for each whether it was taken, or why not. Exits 0 only if every one "
        "took it; 5 if one did not; 2 if none is set up. The alert names no run, record or secret.",
    )


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
            lines = [f"error: {line}" for line in error_lines(ctx, exc)]
            for line in lines:
                print(line, file=ctx.err, flush=True)
            code = exc.exit_code
            if code == ExitCode.USAGE:
                leave_a_trace(ctx, f"'{name}' (in run-smoke)", lines)
        results.append((name, code))
        ctx.print()
    ctx.print(
        "run-smoke: "
        + "; ".join(f"{name} {'passed' if code == 0 else f'FAILED (exit {code})'}" for name, code in results)
    )
    return next((code for _, code in results if code != 0), ExitCode.OK)


def _add_run_smoke(commands: Commands) -> None:
    commands.add(
        "run-smoke",
        cmd_run_smoke,
        "The earlier tool's smoke test: test-db, test-endpoint and test-schema, in that order.",
        "Runs test-db, test-endpoint and test-schema one after the other, as the earlier Python tool's "
        "run-smoke checked the database, a token and a POST, and the staging table. Each runs whatever the "
        "others found; a summary line says which passed. Sends no record. Exit code: the first failure's, "
        "in that order, else 0.",
    )


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


def _add_demo(commands: Commands) -> None:
    demo = commands.add(
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


def cmd_init_db(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.diagnostics import init_db  # start-up: only for this command

    # --print with --dialect needs no connection, so no DB_CONNECTION_STRING either.
    command = "init-db --print" if args.print and args.dialect else "init-db"
    return init_db(
        ctx.settings(args, command), ctx, args.print, dialect=args.dialect, sample=args.sample, append=args.append
    )


def _add_init_db(commands: Commands) -> None:
    init = commands.add(
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


def cmd_status(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.status import status_command  # start-up: only for this command

    return status_command(ctx.settings(args, "status"), ctx, runs=args.runs, as_json=args.json)


def _add_status(commands: Commands) -> None:
    status = commands.add(
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


def cmd_diagnose(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.cli.diagnose import diagnose_command  # start-up: only for this command

    checks = (("test-db", cmd_test_db), ("test-schema", cmd_test_schema), ("test-endpoint", cmd_test_endpoint))
    return diagnose_command(args, ctx, checks=checks, status=cmd_status)


def _add_diagnose(commands: Commands) -> None:
    diagnose = commands.add(
        "diagnose",
        cmd_diagnose,
        "Gather what a helper needs into one zip: versions, settings (secrets hidden), checks, status, recent runs.",
        "Runs test-db, test-schema and (unless --offline) test-endpoint, each for two minutes at most and "
        "whatever the others found, and status --json, and writes one zip, readable by this account only, "
        "holding: the versions of the tool, Python, the system and the ODBC drivers; every setting, each secret "
        "only as set or not set (a connection string with its password hidden); what each check printed and its "
        "exit code; the proxy and certificate authorities in use; and the newest runs' summaries and logs. "
        "It never holds a secret, a token or record content. Prints where the zip is and what it holds. "
        "Exit 0 when the zip was written, even if checks failed (it says which); 2 when it could not be written.",
    )
    diagnose.add_argument(
        "--out",
        type=Path,
        metavar="FILE.zip",
        help="Write the zip here (a folder: a new zip in it). Default: a new csc_api_pipeline_support_<time>.zip "
        "in the log folder, else in the current folder. A file already there is replaced.",
    )
    diagnose.add_argument(
        "--offline",
        action="store_true",
        help="Do not run test-endpoint: nothing is sent to DfE or the token endpoint, nor any connection made to them.",
    )


def cmd_simulate_api(args: argparse.Namespace, ctx: Context) -> int:
    from api_pipeline.rehearsal.demo import run_simulator  # start-up: only for this command

    state = ctx.path(args.state) if args.state is not None else None
    return run_simulator(port=args.port, la_code=args.la_code, latency=args.latency, out=ctx.print, state=state)


def _add_simulate_api(commands: Commands) -> None:
    sim = commands.add(
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


def cmd_set_secret(args: argparse.Namespace, ctx: Context) -> int:
    return set_secret_command(args.name, ctx, service=args.service)


def _add_set_secret(commands: Commands) -> None:
    secret = commands.add(
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


# The commands, in the order --help lists them.
COMMANDS: tuple[Callable[[Commands], None], ...] = (
    _add_run,
    _add_validate,
    _add_test_endpoint,
    _add_test_db,
    _add_test_schema,
    _add_test_notify,
    _add_run_smoke,
    _add_demo,
    _add_init_db,
    _add_status,
    _add_diagnose,
    _add_simulate_api,
    _add_set_secret,
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
    commands = Commands(parser.add_subparsers(dest="command", metavar="COMMAND", title="commands"), common)
    for add_command in COMMANDS:
        add_command(commands)
    return parser
