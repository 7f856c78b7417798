"""Receipts as DfE may really send them, and as a hostile receiver would (issue 23, item 3).

DfE's OpenAPI document declares the 200 body as one uuid for the request; the earlier tools read a
list of ``date_time_uuid.json`` names, one per record. Both acknowledge every record. Anything
else in a receipt (control characters, a lone surrogate, text of no known shape, too long) is no
receipt, and the warning says what is wrong without repeating it. A receipt's time is believed
only from 2020 to a day ahead of the tool's clock. The answers come from the simulator, or from
``tests/hostile.py``'s server, over loopback HTTP; the runs are the real CLI.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from api_pipeline.errors import ExitCode
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.options import MAX_RECEIPT_LENGTH
from api_pipeline.timestamps import parse_timestamp
from conftest import Staging, insert, ledger, rows, run_cli
from hostile import Answer, Exchange, Hostile, answer_with
from simulator_client import children_url, simulator_token

FAST = {"MAX_RETRIES": "1", "HTTP_TIMEOUT": "5"}
A_UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def reply_json(value: Any) -> Answer:
    """200 with ``value`` as its JSON body, whatever the request."""
    return answer_with(200, json.dumps(value).encode(), {"Content-Type": "application/json"})


def each_record(receipt_of: Any) -> Answer:
    """200 with a list of one receipt per record: ``receipt_of(n)`` for the n-th (0-based)."""

    def answer(exchange: Exchange) -> None:
        made = [receipt_of(n) for n in range(len(exchange.records))]
        exchange.reply(200, json.dumps(made).encode(), {"Content-Type": "application/json"})

    return answer


def statuses(staging: Staging) -> list[str]:
    return [str(r["submission_status"]).lower() for r in rows(staging)]


def receiver_posts(host: Hostile) -> int:
    return sum(1 for seen in host.seen if not seen.path.endswith("/token"))


def run_log(folder: Path) -> str:
    """Every run log in ``folder/logs``, as the run wrote them."""
    return "".join(path.read_text(encoding="utf-8") for path in sorted((folder / "logs").glob("*.log")))


def acknowledged_times(staging: Staging) -> list[datetime]:
    """The ledger's acknowledged_at and the rows' submission_timestamp, as naive UTC datetimes."""
    with staging.open() as db:
        found = [r[0] for r in db.query(f"SELECT acknowledged_at FROM {staging.table}_ledger")]
    found += [r["submission_timestamp"] for r in rows(staging)]
    times = [parse_timestamp(value) for value in found]
    assert all(t is not None for t in times), found
    return [t.replace(tzinfo=None) for t in times if t is not None]


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


# -- DfE's documented answer: one uuid for the request ---------------------------------------------------------


def test_one_uuid_for_the_request_acknowledges_every_record_with_it(staging: Staging, tmp_path: Path) -> None:
    insert(staging, list(make_children(3, seed=231)))
    with Hostile(reply_json(A_UUID)) as host:
        result = run_cli(["run"], environ=host.env() | staging.env | FAST, cwd=tmp_path)
        posts = receiver_posts(host)
    assert result.code == ExitCode.OK, result.err
    assert posts == 1  # acknowledged at once, not sent again as a garbled answer would be
    assert statuses(staging) == ["sent"] * 3
    assert {r["api_response"] for r in rows(staging)} == {A_UUID}
    assert {entry["receipt"] for entry in ledger(staging).values()} == {A_UUID}
    # A bare uuid carries no time: the tool's own clock is recorded, and not reported as odd.
    assert all(abs(t - utc_now()) < timedelta(minutes=5) for t in acknowledged_times(staging))
    assert "not believable" not in run_log(tmp_path)


def test_a_run_against_dfes_documented_answers_converges_and_the_next_run_sends_nothing(
    staging: Staging, tmp_path: Path
) -> None:
    children = list(make_children(30, seed=232))
    insert(staging, children)
    with Simulator(receipt_style="openapi") as sim:
        environ = sim.settings_env() | staging.env | {"BATCH_SIZE": "12"}
        first = run_cli(["run"], environ=environ, cwd=tmp_path)
        sent = [e for e in sim.request_log() if e.path.endswith("/children")]
        sim.clear_log()
        second = run_cli(["run"], environ=environ, cwd=tmp_path)
        again = [e for e in sim.request_log() if e.path.endswith("/children")]
        held = sim.snapshot()
    assert first.code == ExitCode.OK, first.err
    assert [e.status for e in sent] == [200, 200, 200]  # three batches, each acknowledged by one uuid
    assert statuses(staging) == ["sent"] * 30
    receipts = [r["api_response"] for r in rows(staging)]
    assert len(set(receipts)) == 3 and all(uuid.UUID(r) for r in receipts)
    assert set(ledger(staging)) == set(held) == {c["la_child_id"] for c in children}
    assert second.code == ExitCode.OK, second.err
    assert again == []


def test_the_simulator_answers_one_uuid_for_the_request_when_asked() -> None:
    import requests

    with Simulator(receipt_style="openapi") as sim:
        env = sim.settings_env()
        token = simulator_token(env)
        answer = requests.post(
            children_url(env),
            json=list(make_children(2, seed=233)),
            headers={"Authorization": f"Bearer {token}", "SupplierKey": env["SUPPLIER_KEY"]},
            timeout=10,
        )
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/json"
    assert isinstance(answer.json(), str) and str(uuid.UUID(answer.json())) == answer.json()
    with pytest.raises(ValueError, match="'openapi'"):
        Simulator(receipt_style="one")


@pytest.mark.parametrize(
    "body",
    [A_UUID.encode(), f"{A_UUID}\n".encode(), b'"ok"', b'"2026-03-01_21:04:33.12_"'],
    ids=["bare uuid text", "bare uuid line", "a word", "a name with no id"],
)
def test_a_200_that_is_not_one_receipt_as_json_acknowledges_nobody(db_path: Path, body: bytes) -> None:
    """The OpenAPI document says application/json: a uuid not written as a JSON string is not a receipt."""
    insert(db_path, list(make_children(2, seed=234)))
    with Hostile(answer_with(200, body, {"Content-Type": "application/json"})) as host:
        result = run_cli(["run"], environ=host.env() | Staging.sqlite(db_path).env | FAST, cwd=db_path.parent)
    assert result.code == ExitCode.RECORDS_FAILED, result.err
    assert statuses(Staging.sqlite(db_path)) == ["pending"] * 2
    assert ledger(db_path) == {}


# -- only printable text of the known shapes --------------------------------------------------------------------

NAME = f"2026-03-01_21:04:33.12_{A_UUID}.json"
HOSTILE_RECEIPTS = {
    "newline": (f"{NAME}\nINFO all records sent", "holds a control or unprintable character (U+000A)"),
    "ansi escape": (f"\x1b[2J\x1b]0;pwned\x07{A_UUID}", "holds a control or unprintable character (U+001B)"),
    "nul": (f"{A_UUID}\x00", "holds a control or unprintable character (U+0000)"),
    "bell": (f"{A_UUID}\x07", "holds a control or unprintable character (U+0007)"),
    "delete": (f"{A_UUID}\x7f", "holds a control or unprintable character (U+007F)"),
    "next line": (f"{A_UUID}\x85", "holds a control or unprintable character (U+0085)"),
    "line separator": (f"{A_UUID}\u2028", "holds a control or unprintable character (U+2028)"),
    "right-to-left override": (f"\u202e{A_UUID}", "holds a control or unprintable character (U+202E)"),
    "lone surrogate": ("\ud800abc", "holds text that is not valid Unicode (a lone surrogate)"),
    "too long": (
        NAME[:-5] + "a" * (MAX_RECEIPT_LENGTH - len(NAME) + 1) + ".json",
        "is 256 characters long (at most 255)",
    ),
    "spaces": (f" {A_UUID} ", "is neither a uuid nor a date_time_uuid.json name"),
    "no known shape": ("receipt-0001", "is neither a uuid nor a date_time_uuid.json name"),
    "fullwidth digits": ("２０２６-03-01_21:04:33.12_" + A_UUID + ".json", "is neither a uuid"),
    "a path": (f"2026-03-01_21:04:33.12_../../{A_UUID}.json", "is neither a uuid"),
    "empty": ("", "is empty"),
    "a number": (7, "is a number, not text"),
    "null": (None, "is null, not text"),
}


@pytest.mark.parametrize("kind", list(HOSTILE_RECEIPTS))
def test_a_receipt_that_is_not_printable_text_of_a_known_shape_acknowledges_nobody(db_path: Path, kind: str) -> None:
    receipt, described = HOSTILE_RECEIPTS[kind]
    insert(db_path, list(make_children(3, seed=235)))
    # The second record's receipt is the odd one; the others are good.
    with Hostile(each_record(lambda n: receipt if n == 1 else f"2026-03-01_21:04:33.12_{uuid.uuid4()}.json")) as host:
        environ = host.env() | Staging.sqlite(db_path).env | {"MAX_RETRIES": "0"}
        result = run_cli(["run"], environ=environ, cwd=db_path.parent)
    assert result.code == ExitCode.RECORDS_FAILED, result.err
    assert "unexpected" not in result.err
    assert statuses(Staging.sqlite(db_path)) == ["pending"] * 3
    assert ledger(db_path) == {}
    notes = [str(r["api_response"]) for r in rows(db_path)]
    log = run_log(db_path.parent)
    assert f"receipt 2 of 3 {described}" in log and all(described in note for note in notes), log
    if isinstance(receipt, str) and receipt:  # nothing of it is repeated, in the log or the table
        for text in [log, result.err, *notes]:
            assert receipt not in text and not any(c in text for c in "\x1b\x00\x07\x7f\x85\u2028\u202e\ud800")


def test_one_odd_receipt_for_the_request_acknowledges_nobody(db_path: Path) -> None:
    insert(db_path, list(make_children(2, seed=236)))
    with Hostile(reply_json(f"\x1b[31m{A_UUID}")) as host:
        result = run_cli(["run"], environ=host.env() | Staging.sqlite(db_path).env | FAST, cwd=db_path.parent)
    assert result.code == ExitCode.RECORDS_FAILED, result.err
    assert statuses(Staging.sqlite(db_path)) == ["pending"] * 2
    assert "with a receipt that holds a control or unprintable character (U+001B)" in run_log(db_path.parent)
    assert "\x1b" not in run_log(db_path.parent)


def test_the_known_shapes_are_accepted_as_sent(db_path: Path) -> None:
    shapes = [
        A_UUID.upper(),  # a uuid in capitals is still a uuid
        f"2026-03-01_21:04:33_{A_UUID}.json",  # no fraction of a second
        f"2026-03-01_21:04:33.123456_{A_UUID.replace('-', '')}.json",
    ]
    insert(db_path, list(make_children(3, seed=237)))
    with Hostile(each_record(lambda n: shapes[n])) as host:
        result = run_cli(["run"], environ=host.env() | Staging.sqlite(db_path).env | FAST, cwd=db_path.parent)
    assert result.code == ExitCode.OK, result.err
    assert [r["api_response"] for r in rows(db_path)] == shapes


# -- nothing from DfE can crash the write-back ------------------------------------------------------------------


def test_a_lone_surrogate_in_a_receipt_leaves_the_rows_pending_and_the_next_run_sends_them(
    staging: Staging, tmp_path: Path
) -> None:
    insert(staging, list(make_children(3, seed=238)))
    with Hostile(each_record(lambda n: "\ud800abc")) as host:
        result = run_cli(["run"], environ=host.env() | staging.env | FAST, cwd=tmp_path)
    assert result.code == ExitCode.RECORDS_FAILED, result.err
    assert "unexpected" not in result.err
    summary = json.loads(next((tmp_path / "logs").glob("*.summary.json")).read_text(encoding="utf-8"))
    assert summary["outcomes"].get("sent", 0) == 0 and summary["outcomes"]["failed"] == 3
    assert statuses(staging) == ["pending"] * 3
    assert all("lone surrogate" in str(r["api_response"]) for r in rows(staging))
    with Simulator() as sim:
        again = run_cli(["run"], environ=sim.settings_env() | staging.env, cwd=tmp_path)
    assert again.code == ExitCode.OK, again.err
    assert statuses(staging) == ["sent"] * 3


def test_a_lone_surrogate_in_dfes_reason_for_refusing_is_written_back(staging: Staging, tmp_path: Path) -> None:
    refusal = json.dumps({"errors": ["[0] child_details.sex: bad value \ud800 here"]}).encode()
    insert(staging, list(make_children(2, seed=239)))

    def refuse_the_first(exchange: Exchange) -> None:
        if len(exchange.records) == 2:
            exchange.reply(400, refusal, {"Content-Type": "application/json"})
        else:
            exchange.receipts()

    with Hostile(refuse_the_first) as host:
        result = run_cli(["run"], environ=host.env() | staging.env | FAST, cwd=tmp_path)
    assert result.code == ExitCode.RECORDS_FAILED, result.err
    assert "unexpected" not in result.err
    assert statuses(staging) == ["error", "sent"]
    note = str(rows(staging)[0]["api_response"])
    assert "child_details.sex: bad value \ufffd here" in note and "\ud800" not in note


# -- receipt times outside a sane window ------------------------------------------------------------------------


def named(moment: str) -> str:
    return f"{moment}_{uuid.uuid4()}.json"


@pytest.mark.parametrize(
    "moment",
    ["9999-12-31_23:59:59.99", "0001-01-01_00:00:00.00", "2019-12-31_23:59:59", "2026-13-45_25:61:61", "ahead"],
)
def test_a_receipt_time_outside_the_window_is_replaced_by_the_tools_clock(
    staging: Staging, tmp_path: Path, moment: str
) -> None:
    if moment == "ahead":  # two days ahead of this computer's clock
        moment = f"{utc_now() + timedelta(days=2):%Y-%m-%d_%H:%M:%S}"
    insert(staging, list(make_children(3, seed=240)))
    started = utc_now()
    with Hostile(each_record(lambda n: named(moment))) as host:
        result = run_cli(["run"], environ=host.env() | staging.env | FAST, cwd=tmp_path)
    assert result.code == ExitCode.OK, result.err
    assert statuses(staging) == ["sent"] * 3
    times = acknowledged_times(staging)
    assert len(times) == 6 and all(started - timedelta(seconds=5) <= t <= utc_now() for t in times), times
    log = run_log(tmp_path)
    assert log.count("receipts from DfE whose time was not believable") == 1
    assert "ahead of this computer's clock): 3; this computer's time was recorded" in log and moment[:10] not in log
    status = run_cli(["status", "--json"], environ=staging.env, cwd=tmp_path)
    last = parse_timestamp(json.loads(status.out)["ledger"]["last_acknowledged_at"])
    assert last is not None and abs(last.replace(tzinfo=None) - utc_now()) < timedelta(minutes=5)


def test_a_receipt_time_within_the_window_is_kept(staging: Staging, tmp_path: Path) -> None:
    moments = [utc_now() - timedelta(days=400), utc_now() - timedelta(hours=1), utc_now() + timedelta(hours=1)]
    moments = [m.replace(microsecond=120000) for m in moments]
    insert(staging, list(make_children(3, seed=241)))
    with Hostile(each_record(lambda n: named(f"{moments[n]:%Y-%m-%d_%H:%M:%S}.12"))) as host:
        result = run_cli(["run"], environ=host.env() | staging.env | FAST, cwd=tmp_path)
    assert result.code == ExitCode.OK, result.err
    assert sorted(acknowledged_times(staging)) == sorted(moments * 2)
    assert "not believable" not in run_log(tmp_path)


class OddTimes:
    """Stands in for the API client: DfE acknowledges every record, with receipts dated year 1 and 9999."""

    def send(self, bodies: list[bytes], batch_id: str) -> list:
        from api_pipeline.dfe.api import Outcome

        moments = ["0001-01-01_00:00:00.00", "9999-12-31_23:59:59.99"]
        return [Outcome(i, receipt=named(moments[i % 2])) for i in range(len(bodies))]


def test_receipt_times_outside_the_window_never_reach_sql_servers_datetime() -> None:
    """SQL Server's DATETIME holds 1753-01-01 to 9999-12-31 23:59:59.997: year 1 is refused, and
    9999-12-31 23:59:59.99 rounds past it. Every time bound is this computer's own."""
    pytest.importorskip("sqlglot")
    import hashlib

    from api_pipeline.dfe.schema import RecordValidator
    from api_pipeline.job.pipeline import Pipeline, RunOptions
    from api_pipeline.job.run_files import RunSummary
    from api_pipeline.store.staging import StagingTable
    from fake_sql_server import TABLE, Recorder, Wide, connect, every_bound_value, wide

    children = list(make_children(2, seed=242))
    stored = {i + 1: json.dumps(c, ensure_ascii=False).encode("utf-16-le") for i, c in enumerate(children)}
    rec = Recorder()

    def candidate(i: int, column: str) -> Any:
        return {
            "t.id": i,
            "t.person_id": wide(children[i - 1]["la_child_id"]),
            "t.json_payload": Wide(stored[i]),
            "t.submission_status": wide("Pending"),
            "t.row_state": wide("New"),
        }.get(column)

    def answer(sql: str, params: tuple) -> list[tuple] | None:
        if "TOP (?)" in sql:  # the candidate page, as the driver returns it (NULL for the ledger's columns)
            columns = sql.split("TOP (?) ", 1)[1].split(" FROM ", 1)[0].split(", ")
            return [tuple(candidate(i, c) for c in columns) for i in (1, 2) if i > params[1]]
        if "WITH (UPDLOCK, ROWLOCK)" in sql:  # write-back: the hash of what is stored
            return [(i, hashlib.sha256(stored[i]).digest(), wide("New")) for i in params]
        return None

    rec.more = answer
    started = utc_now()
    summary = RunSummary(run_id="r23", mode="partial")
    with connect(rec) as db:
        Pipeline(StagingTable(db, TABLE), OddTimes(), RecordValidator.from_settings(None), RunOptions(), summary).run()
    assert summary.outcomes["sent"] == 2
    bound = [v for v in every_bound_value(rec) if isinstance(v, datetime)]
    assert len(bound) >= 4  # each row's submission_timestamp and each ledger entry's acknowledged_at
    assert all(started - timedelta(seconds=5) <= v.replace(tzinfo=None) <= utc_now() for v in bound), bound
