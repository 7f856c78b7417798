"""DfE's API spoken to by hand, as a client other than this tool: the earlier tool's stand-in,
a test that looks at the simulator's raw answers, and the benchmark's floor (``benchmarks/suite.py``).

Not a test module: they import it (the benchmarks put tests/ on their path).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import requests


def simulator_token(env: Mapping[str, str], *, session: Any = None, timeout: float = 10) -> str:
    """A bearer token from the token endpoint: the client_credentials POST every DfE client makes.

    ``env`` is the settings' names (``Simulator.settings_env()``). Through ``session`` when given,
    so that the requests after it reuse its connection."""
    http = session if session is not None else requests
    answer = http.post(
        env["TOKEN_ENDPOINT"],
        data={
            "grant_type": "client_credentials",
            "client_id": env["CLIENT_ID"],
            "client_secret": env["CLIENT_SECRET"],
            "scope": env["SCOPE"],
        },
        timeout=timeout,
        allow_redirects=False,
    )
    return str(answer.json()["access_token"])


def children_url(env: Mapping[str, str]) -> str:
    """Where the children's records go: ``/children_social_care_data/{LA_CODE}/children``."""
    return f"{env['API_ENDPOINT'].rstrip('/')}/children_social_care_data/{env['LA_CODE']}/children"
