"""`simulate-api` as a council would run it: a real process, a real run pointed at it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from api_pipeline.rehearsal.synthetic import make_children
from conftest import db_env, insert, run_cli


def test_simulate_api_serves_a_rehearsal_run(db_path, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "api_pipeline", "simulate-api", "--port", "0", "--la-code", "846"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        settings: dict[str, str] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(settings) < 7:
            line = proc.stdout.readline()
            if not line:
                break
            name, sep, value = line.strip().partition("=")
            if sep and name.isupper():
                settings[name] = value
        assert {
            "API_ENDPOINT",
            "TOKEN_ENDPOINT",
            "LA_CODE",
            "CLIENT_ID",
            "CLIENT_SECRET",
            "SCOPE",
            "SUPPLIER_KEY",
        } <= set(settings), settings
        assert settings["LA_CODE"] == "846"
        assert settings["API_ENDPOINT"].startswith("http://127.0.0.1:")

        insert(db_path, list(make_children(1, seed=12)))
        result = run_cli(["run"], environ=settings | db_env(db_path), cwd=tmp_path)
        assert result.code == 0, result.err
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0
    # The closing summary counts what it took and holds, one of each in the singular.
    assert "2 requests (1 token, 1 other), 1 record accepted, 1 child held." in rest
