"""No secret, token, password or personal value reaches a log file, stdout or stderr (DESIGN §9).

Runs the CLI's commands, successful and failing, at every verbosity, with known fake
secrets and a marker child, then searches everything they wrote.
"""

from __future__ import annotations

import contextlib
import json

from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from conftest import MARKER, CliResult, db_env, insert, run_cli

CLIENT_SECRET = "Leak-client-secret-7f3a"
SUPPLIER_KEY = "Leak-supplier-key-91c2"
DB_PASSWORD = "Leak-db-password-55e1"


def marker_children() -> list[dict]:
    children = list(make_children(12, seed=70))
    for child in children[:3]:
        child["child_details"].update(MARKER)
    # One the local schema lets through (see the loose PAYLOAD_SCHEMA below) but DfE rejects,
    # so DfE's own error body is exercised too.
    children[3]["child_details"].update(MARKER)
    children[3]["child_details"]["sex"] = "XX"
    return children


def test_nothing_secret_or_personal_is_written_anywhere(tmp_path):
    db_path = tmp_path / "staging.db"
    from api_pipeline.store.db import Database
    from api_pipeline.store.staging import StagingTable

    with Database.open_sqlite(db_path) as db:
        StagingTable(db, "ssd_api_data_staging").create_staging_table()
    insert(db_path, marker_children())
    loose = tmp_path / "loose.schema.json"
    loose.write_text(json.dumps({"type": "object"}), encoding="utf-8")
    logs = tmp_path / "logs"
    outputs: list[str] = []

    with Simulator(client_secret=CLIENT_SECRET, supplier_key=SUPPLIER_KEY) as sim:
        base = dict(sim.settings_env()) | db_env(db_path) | {"LOG_DIR": str(logs), "MAX_RETRIES": "1"}

        def cli(*argv: str, **env: str) -> int:
            result = run_cli(list(argv), environ=base | env, cwd=tmp_path)
            outputs.extend([result.out, result.err])
            return result.code

        assert cli("validate") == 1  # the marker with a bad sex code is invalid locally
        assert cli("-vv", "run", CLIENT_SECRET="Leak-wrong-secret-0000") == 4
        assert cli("-vv", "run", SUPPLIER_KEY="Leak-wrong-key-0000") == 4
        assert cli("-vv", "run", "--limit", "3") == 0
        with Database.open_sqlite(db_path) as db, db.transaction():  # the council fixes nothing, resets status
            db.execute("UPDATE ssd_api_data_staging SET submission_status = 'Pending' WHERE id = 4")
        sim.inject("429", times=1, retry_after=1)
        assert cli("-vv", "run", PAYLOAD_SCHEMA=str(loose)) == 1  # DfE rejects the bad one with 400
        assert cli("-vv", "test-endpoint") == 0
        assert cli("-vv", "test-endpoint", CLIENT_SECRET="Leak-wrong-secret-0000") == 4
        odbc = f"Driver={{ODBC Driver 18 for SQL Server}};Server=db.invalid;UID=svc;PWD={DB_PASSWORD};"
        assert cli("-vv", "test-db", DB_CONNECTION_STRING=odbc) in (2, 3)
        assert cli("-vv", "run", DB_CONNECTION_STRING=odbc) in (2, 3)
        proxy = "http://svc:Leak-proxy-password-3@127.0.0.1:9/"
        assert cli("-vv", "test-endpoint", HTTPS_PROXY=proxy) == 0  # loopback bypasses the proxy
        tokens = list(sim._tokens)

    written = "\n".join(outputs)
    files = sorted(logs.glob("*"))
    assert any(f.suffix == ".log" for f in files) and any(f.name.endswith(".summary.json") for f in files)
    written += "\n".join(f.read_text(encoding="utf-8") for f in files)
    assert "Leakcheck" not in written and len(written) > 1000
    forbidden = [
        CLIENT_SECRET,
        SUPPLIER_KEY,
        DB_PASSWORD,
        "Leak-wrong-secret-0000",
        "Leak-wrong-key-0000",
        "Leak-proxy-password-3",
        *MARKER.values(),
        *tokens,
    ]
    assert tokens
    for value in forbidden:
        assert value not in written, f"{value!r} leaked"


def test_a_record_that_is_not_utf8_is_written_nowhere_and_stops_nothing(tmp_path):
    """Issue 23.2: a record saved as Windows-1252 in SQLite. sqlite3's own error quotes the start of
    the value it cannot decode; the row is reported by its id and position alone, the others are sent."""
    import sqlite3

    from api_pipeline.store.db import Database
    from api_pipeline.store.staging import StagingTable

    db_path = tmp_path / "staging.db"
    with Database.open_sqlite(db_path) as db:
        StagingTable(db, "ssd_api_data_staging").create_staging_table()
    children = list(make_children(5, seed=71))
    children[2]["child_details"].update(MARKER, first_name="Bront\u00e9")
    insert(db_path, children)
    raw = json.dumps(children[2], ensure_ascii=False).encode("cp1252")
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE ssd_api_data_staging SET json_payload = CAST(? AS TEXT) WHERE id = 3", (raw,))
    logs = tmp_path / "logs"
    outputs: list[str] = []
    with Simulator() as sim:
        base = dict(sim.settings_env()) | db_env(db_path) | {"LOG_DIR": str(logs)}

        def cli(*argv: str) -> CliResult:
            result = run_cli(list(argv), environ=base, cwd=tmp_path)
            outputs.extend([result.out, result.err])
            return result

        checked = cli("validate")
        assert checked.code == 1, checked.err
        assert "checked 5 rows: 4 would be sent" in checked.out and "1 invalid" in checked.out
        (line,) = [line for line in checked.out.splitlines() if "not UTF-8" in line]
        assert line.split() == ["json_payload", "is", "not", "UTF-8", "text", "1", "3"]
        ran = cli("-vv", "run")
        assert ran.code == 1, ran.err  # finished, with a record invalid (docs/exit-codes.md)
        assert set(sim.snapshot()) == {c["la_child_id"] for i, c in enumerate(children) if i != 2}
        assert cli("-vv", "run").code == 0  # nothing left to send

    files = sorted(logs.glob("*"))
    assert {f.suffix for f in files} >= {".log", ".json", ".html"}
    written = "\n".join([*outputs, *(f.read_text(encoding="utf-8") for f in files)])
    assert "json_payload is not UTF-8 text" in written
    for value in [*MARKER.values(), "Bront", '{"la_child_id"', "with text"]:
        assert value not in written, f"{value!r} leaked"
