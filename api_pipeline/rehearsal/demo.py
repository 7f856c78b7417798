"""``demo``: the whole job on synthetic children, SQLite and the built-in simulator; and
``simulate-api``: the simulator alone, as a rehearsal target for a council's own table.

Also the council-SQL stand-ins (load a cohort, apply a night's changes) and the
convergence check, which the tests and benchmarks use too.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from api_pipeline.dfe.payload import records_equal
from api_pipeline.errors import ConfigError, ExitCode
from api_pipeline.job.logs import configure_logging
from api_pipeline.job.run_files import make_private_dir, new_run_id, replace_private, why_not
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.rehearsal.synthetic_changes import mutate
from api_pipeline.settings.config import load_settings
from api_pipeline.settings.context import Context
from api_pipeline.store.columns import BINARY
from api_pipeline.store.db import Database
from api_pipeline.store.staging import StagingTable
from api_pipeline.timestamps import utc_now
from api_pipeline.wording import plural

DEMO_TABLE = "ssd_api_data_staging"
DEMO_MARK = ".csc_api_pipeline_demo"  # in a folder the demo made: it may replace its own files there
DEMO_DATABASE_FILES = ("staging.db", "staging.db-wal", "staging.db-shm", "staging.db-journal")


def _now() -> str:
    return utc_now().isoformat(sep=" ", timespec="seconds")


def load_children(db: Database, table: str, records: Iterable[dict], *, chunk: int = 1000) -> int:
    """Insert records as a council's nightly SQL does for new children: ``Pending``/``New``."""
    sql = (
        f"INSERT INTO {table} (person_id, json_payload, current_hash, submission_status, row_state, last_updated) "
        "VALUES (?, ?, ?, 'Pending', 'New', ?)"
    )
    total, rows = 0, []
    for record in records:
        text = json.dumps(record, ensure_ascii=False)
        rows.append((record["la_child_id"], text, council_hash(text), _now()))
        if len(rows) >= chunk:
            with db.transaction():
                db.executemany(sql, rows, kinds=(None, None, BINARY, None))
            total, rows = total + len(rows), []
    if rows:
        with db.transaction():
            db.executemany(sql, rows, kinds=(None, None, BINARY, None))
        total += len(rows)
    return total


def council_hash(text: str) -> bytes:
    """``current_hash`` as a council's SQL fills it in: SHA-256 of the record's text."""
    return hashlib.sha256(text.encode("utf-8")).digest()


@dataclass
class NightlyChanges:
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)


def apply_nightly_changes(
    db: Database, table: str, rng: random.Random, *, update_fraction: float = 0.2, delete_fraction: float = 0.03
) -> NightlyChanges:
    """Edit and delete children the way a council's nightly SQL marks them (DESIGN §4)."""
    rows = list(
        db.query(f"SELECT id, person_id, json_payload, row_state FROM {table} ORDER BY id")  # noqa: S608
    )
    live = [r for r in rows if (r[3] or "").lower() != "deleted"]
    changes = NightlyChanges()
    picked = rng.sample(live, k=min(len(live), int(len(live) * (update_fraction + delete_fraction))))
    n_update = int(len(live) * update_fraction)
    with db.transaction():
        for row_id, person_id, text, _state in picked[:n_update]:
            new = json.dumps(mutate(rng, json.loads(text)), ensure_ascii=False)
            db.execute(
                f"UPDATE {table} SET previous_json_payload = json_payload, json_payload = ?, "
                "previous_hash = current_hash, current_hash = ?, "
                "submission_status = 'Pending', row_state = 'Updated', last_updated = ? WHERE id = ?",
                (new, council_hash(new), _now(), row_id),
                kinds=(None, BINARY, None, None),
            )
            changes.updated.append(person_id)
        for row_id, person_id, _text, _state in picked[n_update:]:
            db.execute(f"UPDATE {table} SET row_state = 'Deleted', last_updated = ? WHERE id = ?", (_now(), row_id))
            changes.deleted.append(person_id)
    return changes


@dataclass
class Convergence:
    total: int
    matching: int
    mismatched: list[str]

    @property
    def ok(self) -> bool:
        return self.total == self.matching


def check_convergence(db: Database, table: str, held: dict[str, dict]) -> Convergence:
    """Does DfE's view (``held``) equal every row's current data? Deleted children must be absent."""
    total, matching, mismatched = 0, 0, []
    for person_id, text, state in db.query(f"SELECT person_id, json_payload, row_state FROM {table}"):
        total += 1
        record = json.loads(text)
        child = record.get("la_child_id") or person_id  # the child as DfE knows it
        deleted = (state or "").lower() == "deleted"
        if (child not in held) if deleted else records_equal(held.get(child), record):
            matching += 1
        else:
            mismatched.append(child)
    return Convergence(total, matching, mismatched)


def prepare_demo_folder(folder: Path) -> None:
    """A new or empty folder, or one an earlier demo made (its database is replaced); nothing else.

    The demo never deletes a folder: ``--dir .`` or a folder of someone's files is refused.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"demo: {folder} is a file; give a new or empty folder for the demo with --dir FOLDER")
    if folder.is_dir():
        if any(folder.iterdir()) and not (folder / DEMO_MARK).is_file():
            raise ConfigError(
                f"demo: {folder} is not empty and was not made by the demo, so it is left alone. "
                "Give a new or empty folder with --dir FOLDER"
            )
        for name in DEMO_DATABASE_FILES:
            (folder / name).unlink(missing_ok=True)
    else:
        try:
            make_private_dir(folder)
        except OSError as exc:
            raise ConfigError(
                f"demo: cannot make the folder {folder}: {why_not(exc)}. Give one you can write to with --dir FOLDER"
            ) from None
    (folder / DEMO_MARK).write_text(
        "Made by the CSC API Pipeline demo, which replaces its staging.db here on its next run.\n", encoding="utf-8"
    )


def run_demo(
    folder: Path,
    ctx: Context,
    *,
    children: int = 300,
    seed: int = 2026,
    verbosity: int = 0,
    quiet: bool = False,
    chosen: bool = True,
) -> int:
    """The ``demo`` command (DESIGN §2). Returns 0 only if DfE's view converged.

    ``chosen``: the folder was given (``--dir``); otherwise it is the default in the user's own
    folder, and the output says so.
    """
    say = ctx.print
    prepare_demo_folder(folder)
    db_path = folder / "staging.db"
    masking, log_file = configure_logging(
        verbosity=verbosity, quiet=not verbosity, log_dir=folder / "logs", run_id=new_run_id()
    )
    say("CSC API Pipeline demo: synthetic children only; nothing leaves this machine.")
    say(f"Demo folder: {folder}" + ("" if chosen else " (in your user folder; --dir FOLDER puts it elsewhere)"))
    with Database.open_sqlite(db_path) as db:
        table = StagingTable(db, DEMO_TABLE)
        table.create_staging_table()
        count = load_children(db, DEMO_TABLE, make_children(children, seed=seed))
    say(f"Staging table: {count} synthetic children in {db_path.name} (status Pending, row_state New)")

    with Simulator() as sim:
        say(f"DfE simulator: {sim.base_url} (loopback only)")
        environ = dict(sim.settings_env())
        environ["DB_CONNECTION_STRING"] = f"sqlite:///{db_path.as_posix()}"
        environ["TABLE_NAME"] = DEMO_TABLE
        settings = load_settings(command="run", environ=environ)
        masking.add(*settings.secrets())

        first = execute_run(settings, run_id="demo-1")
        say(_describe("Run 1 (first load)", first))

        with Database.open_sqlite(db_path) as db:
            changes = apply_nightly_changes(db, DEMO_TABLE, random.Random(seed + 1))
        say(f"Council's nightly SQL: {len(changes.updated)} children updated, {len(changes.deleted)} deleted")

        second = execute_run(settings, run_id="demo-2")
        say(_describe("Run 2 (changes only)", second))
        if first.bytes_sent:
            say(
                f"Run 2 sent {second.bytes_sent:,} bytes, {second.bytes_sent / first.bytes_sent:.0%} of run 1's "
                f"{first.bytes_sent:,}"
            )

        with Database.open_sqlite(db_path) as db:
            result = check_convergence(db, DEMO_TABLE, sim.snapshot())
    verdict = "equals" if result.ok else "DOES NOT equal"
    say(f"Check: DfE view {verdict} staging data for {result.matching}/{result.total} children")
    if log_file:
        say(f"Log: {log_file}")
    say(f"Everything the demo made is in {folder}")
    problems = first.problems + second.problems
    if not result.ok:
        say(f"Children that differ: {', '.join(result.mismatched[:10])}")
        return ExitCode.RECORDS_FAILED
    return ExitCode.RECORDS_FAILED if problems else ExitCode.OK


def _describe(title: str, summary: Any) -> str:
    o = summary.outcomes
    return (
        f"{title}: sent {o['sent']}, purged {o['purged']}, unchanged {o['unchanged']}, invalid {o['invalid']}, "
        f"rejected {o['rejected']}, failed {o['failed']} — {plural(summary.requests, 'request')}, "
        f"{summary.seconds:.2f} s"
    )


# --- simulate-api: the simulator alone, for a rehearsal with the council's own table ---


def serve_forever_cli(
    simulator: Simulator, out: Callable[[str], Any] = print, stop: threading.Event | None = None
) -> int:
    """Run a started-or-not simulator until Ctrl+C (or ``stop`` is set), then summarise."""
    if not simulator.running:
        simulator.start()
    out(f"CSC API simulator listening on {simulator.base_url} (this machine only; nothing is sent anywhere).")
    out("For a rehearsal, put these in your .env (the simulator's own demo credentials, not real ones):")
    out("")
    for name, value in simulator.settings_env().items():
        out(f"{name}={value}")
    out("")
    out("Press Ctrl+C to stop.")
    try:
        while not (stop is not None and stop.is_set()):
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        simulator.stop()
    requests, tokens = len(simulator.request_log()), simulator.token_requests
    out(
        f"Simulator stopped: {plural(requests, 'request')} ({tokens} token, {requests - tokens} other), "
        f"{plural(simulator.records_accepted, 'record')} accepted, {plural(len(simulator.snapshot()), 'child')} held."
    )
    return 0


def run_simulator(
    port: int, la_code: str, latency: float, out: Callable[[str], Any] = print, *, state: Path | None = None
) -> int:
    """Entry for ``simulate-api``: a council's rehearsal target on 127.0.0.1:``port``.

    With ``state``, DfE's view lasts across restarts: the children held are read from that file
    as the simulator starts (when it exists) and written to it when it stops.
    """
    held = load_simulator_state(state) if state is not None else {}
    simulator = Simulator(la_code=la_code, port=port, latency=latency, keep_request_bodies=False)
    simulator.restore(held)
    try:
        simulator.start()
    except OSError as exc:
        raise ConfigError(
            f"Cannot listen on 127.0.0.1:{port} ({exc.strerror or exc}); choose another port with --port."
        ) from exc
    if state is not None:
        out(
            f"Holding {plural(len(held), 'child', 'children')} from {state}, as when the simulator last stopped."
            if held
            else f"Holding no children yet; what it holds is saved in {state} when it stops."
        )
    code = serve_forever_cli(simulator, out)
    if state is not None:
        children = simulator.snapshot()
        save_simulator_state(state, children)
        held_now = plural(len(children), "child", "children")
        out(f"Saved the {held_now} it holds in {state}: start it with --state {state} again to go on from them.")
    return code


STATE_FORMAT = "csc-api-pipeline simulator state 1"


def load_simulator_state(path: Path) -> dict[str, dict]:
    """The children a simulator held when it last stopped (``simulate-api --state``); none for a new file.

    Checked before the simulator starts: a file it could not use now, or save to later, is a
    configuration error, not a surprise at the end.
    """
    if not path.parent.is_dir():
        raise ConfigError(f"--state: the folder {path.parent} does not exist (for {path})")
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        reason = why_not(exc) if isinstance(exc, OSError) else "not JSON"
        raise ConfigError(f"--state: cannot read {path}: {reason}") from None
    children = data.get("children") if isinstance(data, dict) and data.get("format") == STATE_FORMAT else None
    if not isinstance(children, dict) or not all(isinstance(r, dict) for r in children.values()):
        raise ConfigError(
            f"--state: {path} is not a file simulate-api saved; give the name of a new file, or of one it saved"
        )
    return children


def save_simulator_state(path: Path, children: dict[str, dict]) -> None:
    """Write what the simulator holds to ``path``, whole or not at all, readable by this account only
    (a rehearsal's children are made up, but a council could point a copy of real rows at it)."""
    try:
        replace_private(path, json.dumps({"format": STATE_FORMAT, "children": children}, ensure_ascii=False))
    except OSError as exc:
        raise ConfigError(f"--state: could not save what the simulator holds in {path}: {why_not(exc)}") from None
