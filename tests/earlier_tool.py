"""A stand-in for the earlier tools (data-to-insight's Python package and PowerShell sender), as far
as what they leave behind matters: the records DfE holds and the table's columns.

Used by the switch-over tests and ``benchmarks/switch_over.py``.
"""

from __future__ import annotations

import json
from typing import Any

import requests

from api_pipeline.store.db import Database


def send_as_earlier_tool(sim: Any, db: Database, table: str) -> int:
    """What the earlier tools did with rows waiting to be sent: POST whole records, 100 at a time,
    then mark each row ``sent`` with ``previous_json_payload = json_payload`` and
    ``previous_hash = current_hash``. Returns how many rows were sent."""
    env = sim.settings_env()
    token = requests.post(
        env["TOKEN_ENDPOINT"],
        data={
            "grant_type": "client_credentials",
            "client_id": env["CLIENT_ID"],
            "client_secret": env["CLIENT_SECRET"],
            "scope": env["SCOPE"],
        },
        timeout=10,
        allow_redirects=False,
    ).json()["access_token"]
    url = f"{env['API_ENDPOINT']}/children_social_care_data/{env['LA_CODE']}/children"
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
