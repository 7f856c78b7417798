"""``diagnose``: one zip a council can send to whoever helps it, instead of gathering by hand.

A council asking for help is asked the same things every time: which version, on what, set up
how, what the checks say, and how the last nights went. The bundle answers all of them at once:
versions, the settings with every secret hidden, ``test-db``, ``test-schema`` and (unless
``--offline``) ``test-endpoint`` with their exit codes, the proxy and trust in use, ``status
--json``, and the last few runs' summaries and logs.

It must hold no secret and no record value. The run files already hold ids and counts only,
never record content; even so, every text goes through the masking registry
(:data:`~api_pipeline.settings.masking.LIVE_SECRETS`, with the password and token patterns) as
it is put in the zip, after the checks have run, so a token test-endpoint was issued is hidden
too. Each check runs through its own handler, with its output kept in memory, for a bounded
time; one that fails or hangs is reported and the rest go on: a bundle about a broken set-up is
the one most needed.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import ssl
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

from api_pipeline.about import APP_NAME, __version__
from api_pipeline.cli.error_lines import error_lines
from api_pipeline.dfe.transport import make_session, proxy_address, session_proxy
from api_pipeline.errors import ConfigError, ExitCode, PipelineError
from api_pipeline.job.logs import ERROR_LOG_NAME, format_traceback
from api_pipeline.job.run_files import (
    default_log_dir,
    make_private_dir,
    read_plain,
    replace_private,
    runs_in,
    why_not,
)
from api_pipeline.settings.config import OPTIONS, Secret, Settings, connection_setting
from api_pipeline.settings.context import Context
from api_pipeline.settings.masking import known_secrets, mask_secrets
from api_pipeline.timestamps import utc_now, utc_stamp
from api_pipeline.wording import plural

Handler = Callable[[argparse.Namespace, Context], int]

BUNDLE_PREFIX = "csc_api_pipeline_support_"
CHECK_SECONDS = 120.0  # the longest one check may take before the bundle goes on without its end
RUNS_KEPT = 5  # the newest runs whose summaries and logs go in
LOG_LIMIT = 2 * 1024 * 1024  # bytes of each log (its end): far more than a night's log usually is
SUMMARY_LIMIT = 1024 * 1024
STATUS_RUNS = 10


@dataclass
class CheckResult:
    """One check as the bundle saw it: what it printed, and how it ended."""

    name: str
    exit_code: int | None = None  # None: skipped, or still going when its time was up
    out: str = ""
    err: str = ""
    seconds: float = 0.0
    note: str = ""  # why it was skipped or did not finish

    @property
    def verdict(self) -> str:
        if self.note:
            return f"{self.name} {self.note}"
        return f"{self.name} {'passed' if self.exit_code == 0 else f'FAILED (exit {self.exit_code})'}"

    @property
    def failed(self) -> bool:
        return self.exit_code != 0 and not self.note.startswith("skipped")

    def text(self) -> str:
        code = "none" if self.exit_code is None else str(self.exit_code)
        return (
            f"{self.verdict}\nexit code: {code}\ntook: {self.seconds:.1f} s\n\n"
            f"--- what it printed ---\n{self.out}\n--- its warnings and errors ---\n{self.err}"
        )


@dataclass
class Bundle:
    """The zip's members, by name, as text (masked when added to the zip)."""

    members: dict[str, str] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    runs: int = 0

    def add(self, name: str, text: str) -> None:
        self.members[name] = text


def diagnose_command(
    args: argparse.Namespace,
    ctx: Context,
    *,
    checks: Sequence[tuple[str, Handler]],
    status: Handler,
    check_seconds: float = CHECK_SECONDS,
) -> int:
    """The ``diagnose`` command: gather, mask, write the zip privately, say where and what it holds.

    ``checks`` are the test commands' handlers (given by the parser, which owns them), run in
    that order; ``status`` is status's, run with ``--json``. Exit 0 when the zip was written,
    whatever the checks found; a zip that cannot be written raises ConfigError (exit 2).
    """
    settings, problems = _load(args, ctx)
    bundle = Bundle()
    for name, handler in checks:
        if name == "test-endpoint" and args.offline:
            bundle.checks.append(CheckResult(name, note="skipped (--offline)"))
            continue
        bundle.checks.append(run_check(name, handler, args, ctx, check_seconds))
    status_args = argparse.Namespace(**vars(args) | {"json": True, "runs": STATUS_RUNS})
    status_result = run_check("status", status, status_args, ctx, check_seconds)
    bundle.checks.append(status_result)

    log_dir = _log_dir(args, ctx, settings)
    bundle.add("versions.txt", versions_text(ctx))
    bundle.add("settings.txt", settings_text(ctx, settings, problems))
    bundle.add("network.txt", network_text(settings, offline=args.offline))
    for result in bundle.checks:
        bundle.add(f"checks/{result.name}.txt", result.text())
    if status_result.exit_code == 0:
        bundle.add("status.json", status_result.out)
    _add_runs(bundle, log_dir)
    bundle.add("README.txt", readme_text(bundle, log_dir, offline=args.offline))

    data = zip_bytes(bundle, bundle_masker(settings))
    path = _write(data, args, ctx, log_dir)
    _say(ctx, path, bundle, len(data))
    return ExitCode.OK


def _load(args: argparse.Namespace, ctx: Context) -> tuple[Settings | None, list[str]]:
    """The settings, or the problems that stopped them loading (the checks will show them too)."""
    try:
        return ctx.settings(args, "diagnose"), []
    except ConfigError as exc:
        return None, [*exc.problems]


def run_check(name: str, handler: Handler, args: argparse.Namespace, ctx: Context, seconds: float) -> CheckResult:
    """Run one command's handler with its output kept in memory, for at most ``seconds``.

    It runs on a thread of its own, so one that hangs (a database server that never answers)
    holds the bundle up for ``seconds`` at most; its thread is left to end by its own timeouts.
    An error is said as the command line would say it.
    """
    out, err = io.StringIO(), io.StringIO()
    own = Context(
        environ=ctx.environ,
        cwd=ctx.cwd,
        out=out,
        err=err,
        executable_dir=ctx.executable_dir,
        frozen=ctx.frozen,
        stop=ctx.stop,
    )
    result = CheckResult(name)

    def check() -> None:
        try:
            result.exit_code = int(handler(args, own))
        except PipelineError as exc:
            for line in [f"warning: {w}" for w in getattr(exc, "warnings", [])] + error_lines(own, exc):
                print(line if line.startswith("warning: ") else f"error: {line}", file=err)
            result.exit_code = exc.exit_code
        except Exception as exc:  # noqa: BLE001 - one check's failure must not stop the bundle
            print(f"unexpected error: {exc.__class__.__name__}", file=err)
            if getattr(args, "verbose", 0) >= 2:  # as the command would show it at -vv; masked with the rest
                print(format_traceback(sys.exc_info()), file=err)
            result.exit_code = ExitCode.RECORDS_FAILED

    started = time.monotonic()
    worker = threading.Thread(target=check, name=f"diagnose {name}", daemon=True)
    worker.start()
    worker.join(seconds)
    result.seconds = time.monotonic() - started
    if worker.is_alive():
        result.exit_code = None
        result.note = f"did not finish within {seconds:g} seconds (what it printed by then is kept)"
    result.out, result.err = out.getvalue(), err.getvalue()
    return result


def versions_text(ctx: Context) -> str:
    """The tool, Python, the system, TLS and SQLite libraries, and the ODBC drivers pyodbc can see."""
    lines = [
        f"{APP_NAME} {__version__}" + (" (the Windows program)" if ctx.frozen else " (Python package)"),
        f"Python {platform.python_version()} ({platform.python_implementation()}, {sys.executable or '?'})",
        f"system: {platform.platform()} ({platform.machine() or '?'})",
        f"TLS library: {ssl.OPENSSL_VERSION}",
        f"bundle made: {utc_stamp()} (this computer's clock; local time {time.strftime('%Y-%m-%d %H:%M %z')})",
    ]
    import sqlite3

    lines.append(f"SQLite library: {sqlite3.sqlite_version}")
    try:
        import pyodbc
    except ImportError as exc:
        lines.append(f"pyodbc: not importable ({exc.__class__.__name__}), so no ODBC drivers listed")
        return "\n".join(lines) + "\n"
    lines.append(f"pyodbc {getattr(pyodbc, 'version', '?')}")
    try:
        drivers = list(pyodbc.drivers())
    except Exception as exc:  # noqa: BLE001 - a broken driver manager is itself worth reporting
        lines.append(f"ODBC drivers: could not be listed ({exc.__class__.__name__})")
    else:
        lines.append("ODBC drivers: " + (", ".join(drivers) if drivers else "none installed"))
    return "\n".join(lines) + "\n"


def settings_text(ctx: Context, settings: Settings | None, problems: list[str]) -> str:
    """Every setting, a line each: its value, or for a secret only whether it is set (a connection
    string with its password hidden, a proxy's host and port)."""
    lines = [f".env file read: {ctx.env_file or 'none found'}"]
    if settings is None:
        lines.append("The settings could not be loaded:")
        lines.extend(f"  {problem}" for problem in problems)
        return "\n".join(lines) + "\n"
    for option in OPTIONS:
        value = getattr(settings, option.attr)
        lines.append(f"{option.env}: {_shown(option.attr, value, option.default)}")
    lines.extend(f"warning: {warning}" for warning in settings.warnings)
    return "\n".join(lines) + "\n"


def _shown(attr: str, value: object, default: object) -> str:
    if value is None:
        return "not set"
    if isinstance(value, Secret):
        if attr == "db_connection_string":
            return f"set (from {connection_setting(value)}; any password hidden): {mask_secrets(value.reveal())}"
        if attr == "https_proxy":
            return f"set (proxy {proxy_address(value.reveal())}; any user and password hidden)"
        return "set (hidden)"
    return f"{value}{' (the default)' if value == default else ''}"


def network_text(settings: Settings | None, *, offline: bool) -> str:
    """The proxy each DfE host is reached through and the certificate authorities trusted, worked
    out from the settings without connecting. test-endpoint adds each host's certificate."""
    if settings is None:
        return "Not worked out: the settings could not be loaded (settings.txt says why).\n"
    lines = []
    try:
        session = make_session(settings)
    except PipelineError as exc:
        return f"Not worked out: {exc}\n"
    try:
        for label, url in (("token endpoint", settings.token_endpoint), ("API endpoint", settings.api_endpoint)):
            if not url:
                lines.append(f"{label}: not set")
                continue
            proxy = proxy_address(session_proxy(session, url))
            host = urlsplit(url).hostname or "?"
            lines.append(f"{label} {host}: " + (f"through the proxy {proxy}" if proxy else "direct (no proxy)"))
        lines.append(f"NO_PROXY: {settings.no_proxy or 'not set'}")
        lines.append(f"trusted certificate authorities: {getattr(session, 'trust', '') or '?'}")
    finally:
        session.close()
    where = "not checked (--offline)" if offline else "in checks/test-endpoint.txt"
    lines.append(f"each host's certificate and issuer: {where}")
    return "\n".join(lines) + "\n"


def _log_dir(args: argparse.Namespace, ctx: Context, settings: Settings | None) -> Path:
    if settings is not None:
        return default_log_dir(settings, ctx.cwd)
    if args.log_dir is not None:
        return ctx.path(args.log_dir)
    return (ctx.env_file.parent if ctx.env_file is not None else ctx.cwd) / "logs"


def _add_runs(bundle: Bundle, log_dir: Path) -> None:
    """The newest runs' summaries and logs (the end of a long log), and the end of the error log.

    Only plain files are read (a link or a pipe put in the folder is named, never followed or
    waited on); the HTML reports are left out, as they say again what the summaries say.
    """
    notes: list[str] = []
    try:
        runs = [run for run in runs_in(log_dir) if not run.in_future][:RUNS_KEPT]
    except OSError as exc:
        bundle.add("runs/README.txt", f"The log folder {log_dir} could not be read ({why_not(exc)}).\n")
        return
    for run in runs:
        for path in run.paths:
            if path.name.endswith(".summary.json"):
                _add_file(bundle, path, SUMMARY_LIMIT, notes, keep_end=False)
            elif path.name.endswith(".log"):
                _add_file(bundle, path, LOG_LIMIT, notes, keep_end=True)
    bundle.runs = len(runs)
    error_log = log_dir / ERROR_LOG_NAME
    if error_log.exists() or error_log.is_symlink():
        _add_file(bundle, error_log, LOG_LIMIT, notes, keep_end=True)
    head = (
        f"The newest {plural(len(runs), 'run')} in {log_dir} (at most {RUNS_KEPT}): their summaries and logs."
        if runs
        else f"No runs' files in {log_dir}."
    )
    bundle.add("runs/README.txt", "\n".join([head, *notes]) + "\n")


def _add_file(bundle: Bundle, path: Path, limit: int, notes: list[str], *, keep_end: bool) -> None:
    try:
        size = path.lstat().st_size
        data = read_plain(path, limit, keep_end=keep_end)
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name}: left out: {exc if isinstance(exc, ValueError) else why_not(exc)}")
        return
    if size > len(data):
        notes.append(f"{path.name}: only its last {plural(len(data), 'byte')} of {size} are here")
    bundle.add(f"runs/{path.name}", data.decode("utf-8", errors="replace"))


def readme_text(bundle: Bundle, log_dir: Path, *, offline: bool) -> str:
    names = "\n".join(f"  {name}" for name in sorted({*bundle.members, "README.txt"}))
    return (
        f"{APP_NAME} support bundle, made {utc_stamp()} by version {__version__}.\n\n"
        "It holds versions, the settings (every secret shown only as set or not set, a connection string with "
        "its password hidden), what test-db, test-schema"
        + ("" if offline else " and test-endpoint")
        + " and status --json said, with their exit codes, the proxy and trust in use, and the newest runs' "
        f"summaries and logs from {log_dir}.\n"
        "It holds no secret, no token and no record content: every text in it was masked as it was added.\n\n"
        "Checks: " + "; ".join(result.verdict for result in bundle.checks) + "\n\nFiles:\n" + names + "\n"
    )


def bundle_masker(settings: Settings | None) -> Callable[[str], str]:
    """Every secret known to this process hidden, and the password and token patterns.

    The connection string is the one secret shown, with its password hidden
    (:func:`settings_text`); it is left out of the values hidden whole for that reason only.
    """
    shown = {settings.db_connection_string.reveal()} if settings and settings.db_connection_string else set()
    secrets = {form for secret in known_secrets() - shown for form in _written_forms(secret)}
    return lambda text: mask_secrets(text, secrets)


def _written_forms(secret: str) -> set[str]:
    """A secret as it could be written in a text: as it is, URL-encoded (a form body, an address)
    and JSON-escaped."""
    return {
        secret,
        quote(secret, safe=""),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
    }


def zip_bytes(bundle: Bundle, mask: Callable[[str], str]) -> bytes:
    """The zip, every member's text masked, in memory: it is written to disk whole or not at all."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(bundle.members):
            archive.writestr(name, mask(bundle.members[name]).encode("utf-8"))
    return buffer.getvalue()


def _write(data: bytes, args: argparse.Namespace, ctx: Context, log_dir: Path) -> Path:
    """Write the zip privately (as the run files are): ``--out`` (a file, or a folder to put it in),
    else the log folder, else the current folder. Raises ConfigError when it cannot be written."""
    name = f"{BUNDLE_PREFIX}{utc_now():%Y%m%dT%H%M%SZ}.zip"
    if args.out is not None:
        target = ctx.path(args.out)
        places = [target / name if target.is_dir() else target]
    else:
        places = [log_dir / name, ctx.cwd / name]
    tried = []
    for path in places:
        try:
            if args.out is None:
                make_private_dir(path.parent)
            replace_private(path, data)
        except OSError as exc:
            tried.append(f"{path}: {why_not(exc)}")
            continue
        return path
    raise ConfigError(
        [f"the support bundle could not be written: {'; '.join(tried)}"]
        + ([] if args.out is not None else ["give --out a file in a folder this account can write to"])
    )


def _say(ctx: Context, path: Path, bundle: Bundle, size: int) -> None:
    ctx.print(f"Support bundle written: {path} ({size // 1024 + 1} KB, readable by this account only)")
    ctx.print("It holds:")
    for name in sorted(bundle.members):
        ctx.print(f"  {name}")
    failed = [result for result in bundle.checks if result.failed]
    ctx.print("Checks: " + "; ".join(result.verdict for result in bundle.checks))
    if failed:
        ctx.print(
            f"{plural(len(failed), 'check')} did not pass ({', '.join(r.name for r in failed)}): the bundle says "
            "what each printed, which is what a helper needs to see."
        )
    ctx.print(
        "It holds no secret and no record content. Send it to whoever is helping you (see 'diagnose' in the "
        "troubleshooting guide)."
    )
