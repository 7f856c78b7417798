"""The run lock's heartbeat during a run (store.lock.Heartbeat): one way in, at its three moments."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api_pipeline.errors import RunLocked, RunStopped
from api_pipeline.stopping import StopRequest
from api_pipeline.store.db import Database
from api_pipeline.store.lock import BEAT_EVERY, Heartbeat, RunLock
from api_pipeline.store.staging import StagingTable

TABLE = "staging"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def a_beat_later(self) -> None:
        self.now += BEAT_EVERY.total_seconds() + 1


class Client:
    """What sends a batch, recording what it was given."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def send(self, bodies: list[bytes], batch_id: str) -> list[Any]:
        self.sent.append(batch_id)
        return [f"answer {batch_id}"]


@pytest.fixture
def db(tmp_path: Path) -> Any:
    with Database.open_sqlite(tmp_path / "s.db") as db:
        StagingTable(db, TABLE).create_staging_table()
        yield db


def beats(db: Database) -> list[Any]:
    return [row[0] for row in db.query(f"SELECT heartbeat_at FROM {TABLE}_run_lock")]  # noqa: S608


def test_every_moment_beats_through_the_one_heartbeat(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, client, seen = Clock(), Client(), []
    with RunLock(db, TABLE, run_id="r1", monotonic=clock) as lock:
        written: list[str] = []
        monkeypatch.setattr(lock, "heartbeat", lambda **_: written.append("beat"))
        with Heartbeat(lock, client, on_progress=seen.append) as heartbeat:
            assert db.while_waiting == heartbeat.beat  # between the tries of work another session holds up
            assert heartbeat.send([b"{}"], "b1") == ["answer b1"]  # before each send
            heartbeat.after_batch("so far")  # after each batch
            db.while_waiting()
        assert db.while_waiting is None
    assert written == ["beat", "beat", "beat"] and client.sent == ["b1"] and seen == ["so far"]


def test_the_heartbeat_writes_at_most_once_a_minute(db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    clock, client, statements = Clock(), Client(), []
    execute = db.execute
    monkeypatch.setattr(db, "execute", lambda sql, *a, **k: statements.append(sql) or execute(sql, *a, **k))
    with RunLock(db, TABLE, run_id="r1", monotonic=clock) as lock, Heartbeat(lock, client) as heartbeat:
        written = lambda: [sql for sql in statements if "SET heartbeat_at" in sql]  # noqa: E731
        heartbeat.send([b"{}"], "b1")
        heartbeat.after_batch(None)
        assert written() == []  # too soon after taking the lock: nothing written
        clock.a_beat_later()
        heartbeat.after_batch(None)
        heartbeat.send([b"{}"], "b2")
        assert len(written()) == 1 and len(beats(db)) == 1


def test_no_batch_is_sent_once_the_run_is_asked_to_stop(db: Database) -> None:
    client, stop = Client(), StopRequest()
    try:
        with RunLock(db, TABLE, run_id="r1") as lock, Heartbeat(lock, client, stop=stop) as heartbeat:
            stop.note("Ctrl+C")
            with pytest.raises(RunStopped, match="Ctrl\\+C"):
                heartbeat.send([b"{}"], "b1")
    finally:
        stop.close()
    assert client.sent == []


def test_a_run_that_lost_the_lock_sends_nothing_more_and_waits_without_beating(db: Database) -> None:
    clock, client = Clock(), Client()
    with RunLock(db, TABLE, run_id="r1", monotonic=clock) as lock, Heartbeat(lock, client) as heartbeat:
        with db.transaction():
            db.execute(f"UPDATE {TABLE}_run_lock SET holder = 'elsewhere pid 1 run r2'")
        clock.a_beat_later()
        with pytest.raises(RunLocked, match="took over"):
            heartbeat.send([b"{}"], "b1")
        assert db.while_waiting is None
        with pytest.raises(RunLocked):
            heartbeat.after_batch(None)
    assert client.sent == []
