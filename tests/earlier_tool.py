"""A stand-in for the earlier tools (data-to-insight's Python package and PowerShell sender), as far
as what they leave behind matters: the records DfE holds and the table's columns.

Used by the switch-over tests and ``benchmarks/switch_over.py``. Not a test module: they import it.
"""

from __future__ import annotations

import copy
import json
import random
from typing import TYPE_CHECKING, Any

import requests

from api_pipeline.dfe.payload import STRUCTURE
from api_pipeline.rehearsal.demo import apply_nightly_changes
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.rehearsal.synthetic_changes import mutate
from api_pipeline.store.db import Database
from simulator_client import children_url, simulator_token

if TYPE_CHECKING:  # conftest (pytest's) is not imported by the benchmarks that use this module
    from conftest import Staging


def send_as_earlier_tool(sim: Any, db: Database, table: str) -> int:
    """What the earlier tools did with rows waiting to be sent: POST whole records, 100 at a time,
    then mark each row ``sent`` with ``previous_json_payload = json_payload`` and
    ``previous_hash = current_hash``. Returns how many rows were sent."""
    env = sim.settings_env()
    token = simulator_token(env)
    url = children_url(env)
    headers = {"Authorization": f"Bearer {token}", "SupplierKey": env["SUPPLIER_KEY"]}
    pending = [
        (row_id, text)
        for row_id, text, status in db.query(f"SELECT id, json_payload, submission_status FROM {table} ORDER BY id")
        if str(status).lower() in ("pending", "error")
    ]
    with requests.Session() as session:
        for start in range(0, len(pending), 100):
            chunk = pending[start : start + 100]
            answer = session.post(
                url, json=[json.loads(t) for _, t in chunk], headers=headers, timeout=60, allow_redirects=False
            )
            if answer.status_code != 200:
                raise RuntimeError(f"the simulator refused a batch: HTTP {answer.status_code}")
            with db.transaction():
                db.executemany(
                    f"UPDATE {table} SET submission_status = 'sent', api_response = ?, "
                    "previous_hash = current_hash, previous_json_payload = json_payload, "
                    "row_state = 'unchanged' WHERE id = ?",
                    [(receipt, row_id) for (row_id, _), receipt in zip(chunk, answer.json(), strict=True)],
                )
    return len(pending)


def earlier_env_example(sim, *, sql_conn_str: str, debug: str = "true") -> str:
    """The earlier tool's .env.example as a council fills it in: its keys, order, quoting and comments,
    with the simulator's made-up credentials and a SQLite table instead of DfE and SQL Server."""
    env = sim.settings_env()
    return f"""# Development|Testing
# False if running development or verbose output
DEBUG={debug}
USE_PARTIAL_PAYLOAD=true
# LA ID
LA_CODE={env["LA_CODE"]}
# LA DfE config (1 of 2)
CLIENT_ID="{env["CLIENT_ID"]}"
CLIENT_SECRET="{env["CLIENT_SECRET"]}"
SUPPLIER_KEY="{env["SUPPLIER_KEY"]}"
# LA DfE config (2 of 2)
SCOPE="{env["SCOPE"]}"
TOKEN_ENDPOINT="{env["TOKEN_ENDPOINT"]}"
BATCH_SIZE=100
# LA DB related
USER_SERVER="your_la_reporting_db_server"
USER_DATABASE="your_reporting_instance_name_eg_HDM_Local"
TABLE_NAME="ssd_api_data_staging_anon" # <- TEST | LIVE -> ssd_api_data_staging
# Optional direct db connection str override
SQL_CONN_STR={sql_conn_str}
# Default DfE endpoint
API_ENDPOINT="{env["API_ENDPOINT"]}"
"""


def hand_over(sim, staging: Staging, *, children: int, seed: int) -> dict[str, list[str]]:
    """A table the earlier tool sent, then one night of the council's SQL with removals of every kind."""
    staging.insert(list(make_children(children, seed=seed)))
    with staging.open() as db:
        assert send_as_earlier_tool(sim, db, staging.table) == children
    assert len(sim.snapshot()) == children
    with staging.open() as db:
        night = apply_nightly_changes(db, staging.table, random.Random(seed), update_fraction=0.2, delete_fraction=0.03)
        # Removals the random night may not have made: a whole episode, an id'd item, a block.
        by_id = {p: json.loads(t) for p, t in db.query(f"SELECT person_id, json_payload FROM {staging.table}")}
    untouched = [c for c in by_id if c not in set(night.updated) | set(night.deleted)]
    edits = {}
    with_two = next(c for c in untouched if len(by_id[c].get("social_care_episodes", [])) > 1)
    edits[with_two] = lambda r: r.update(social_care_episodes=r["social_care_episodes"][1:])
    with_item = next(c for c in untouched if c not in edits and _has_episode_item(by_id[c]))

    def drop_item(record: dict) -> None:
        for episode in record["social_care_episodes"]:
            for key, id_key in STRUCTURE["social_care_episodes"].items():
                if id_key and episode.get(key):
                    episode[key] = episode[key][1:]
                    return

    edits[with_item] = drop_item
    with_block = next(c for c in untouched if c not in edits and "health_and_wellbeing" in by_id[c])
    edits[with_block] = lambda r: r.pop("health_and_wellbeing")
    with staging.open() as db, db.transaction():
        for child, edit in edits.items():
            new = copy.deepcopy(by_id[child])
            edit(new)
            db.execute(
                f"UPDATE {staging.table} SET previous_json_payload = json_payload, json_payload = ?, "
                "previous_hash = current_hash, submission_status = 'Pending', row_state = 'Updated' "
                "WHERE person_id = ?",
                (json.dumps(new, ensure_ascii=False), child),
            )
    # New children arrive the same night.
    newcomers = [mutate(random.Random(seed + 7), c) for c in make_children(children // 10, seed=seed + 1000)]
    for i, child in enumerate(newcomers):
        child["la_child_id"] = f"NEW{seed}{i:05d}"
    staging.insert(newcomers)
    return {
        "updated": night.updated + list(edits),
        "deleted": night.deleted,
        "new": [c["la_child_id"] for c in newcomers],
    }


def _has_episode_item(record: dict) -> bool:
    return any(
        id_key and episode.get(key)
        for episode in record.get("social_care_episodes", [])
        for key, id_key in STRUCTURE["social_care_episodes"].items()
    )
