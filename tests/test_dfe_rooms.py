"""The DfE side (issue 27): one home for what an answer means, and one for switching to the secondary credential."""

from __future__ import annotations

import ast
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from api_pipeline.dfe.answers import Counterpart, DfeAnswers, refuse_shared
from api_pipeline.dfe.auth import ClientCredentialsAuth, _TokenEndpoint
from api_pipeline.dfe.rotation import Rotation
from api_pipeline.errors import FatalApiError, RetriableApiError
from api_pipeline.settings.config import Secret

PACKAGE = Path(__file__).resolve().parent.parent / "api_pipeline"

# ---------------------------------------------------------------------------
# One home for what an answer means (answers.py), for DfE and the token endpoint
# ---------------------------------------------------------------------------


def _answer(status: int, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update(headers)
    response._content = b'{"message": "busy"}'
    response.url = "https://dfe.example/children"
    return response


COUNTERPARTS = [pytest.param(DfeAnswers(), id="DfE"), pytest.param(_TokenEndpoint(), id="token endpoint")]


@pytest.mark.parametrize("counterpart", COUNTERPARTS)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_refused_by_both_in_their_own_words(counterpart: Counterpart, status: int) -> None:
    with pytest.raises(FatalApiError) as caught:
        refuse_shared(_answer(status, Location="https://elsewhere.example/x?secret=1"), counterpart)
    assert f"HTTP {status}, a redirect to https://elsewhere.example, which is not followed" in str(caught.value)
    assert "secret" not in str(caught.value).replace("CLIENT_SECRET", "")


@pytest.mark.parametrize("counterpart", COUNTERPARTS)
def test_a_407_names_the_place_and_the_proxy_advice(counterpart: Counterpart) -> None:
    with pytest.raises(FatalApiError) as caught:
        refuse_shared(_answer(407), counterpart)
    assert str(caught.value).startswith(f"Cannot reach {counterpart.place}: the proxy asked for a user and password")


@pytest.mark.parametrize("counterpart", COUNTERPARTS)
@pytest.mark.parametrize("status", [429, 500, 502, 503, 599])
def test_throttled_or_failing_is_retried_after_retry_after(counterpart: Counterpart, status: int) -> None:
    with pytest.raises(RetriableApiError) as caught:
        refuse_shared(_answer(status, **{"Retry-After": "7"}), counterpart)
    assert caught.value.status == status and caught.value.retry_after == 7.0


@pytest.mark.parametrize("counterpart", COUNTERPARTS)
@pytest.mark.parametrize("status", [200, 204, 400, 401, 403, 404, 413, 600])
def test_every_other_answer_is_the_callers_to_read(counterpart: Counterpart, status: int) -> None:
    assert refuse_shared(_answer(status), counterpart) is None


def test_only_answers_py_reads_the_shared_statuses() -> None:
    """A second home for the 3xx/407/429/5xx meanings (auth.py once had its own) shows as a status
    literal compared in the API client or the token request."""
    shared = {300, 399, 407, 429, 500, 599}
    found = {}
    for path in (PACKAGE / "dfe" / "api.py", PACKAGE / "dfe" / "auth.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                literals = {c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, int)}
                if literals & shared:
                    found[path.name] = sorted(literals & shared)
    assert found == {}


# ---------------------------------------------------------------------------
# One home for switching to the secondary credential (rotation.py)
# ---------------------------------------------------------------------------


def test_the_switch_to_the_secondary_happens_once() -> None:
    rotation = Rotation(Secret("old"), Secret("new"))
    assert rotation.current.reveal() == "old" and not rotation.on_secondary
    assert rotation.switch() is True
    assert rotation.current.reveal() == "new" and rotation.on_secondary
    assert rotation.switch() is False and rotation.current.reveal() == "new"


@pytest.mark.parametrize("secondary", [None, Secret(""), Secret("same")])
def test_no_secondary_an_empty_one_or_the_primary_again_is_no_switch(secondary: Secret | None) -> None:
    rotation = Rotation(Secret("same"), secondary)
    assert rotation.switch() is False
    assert rotation.current.reveal() == "same" and not rotation.on_secondary


def test_batches_refused_together_switch_once_between_them() -> None:
    rotation = Rotation(Secret("old"), Secret("new"))
    start = threading.Barrier(8)

    def refused() -> bool:
        start.wait()
        return rotation.switch()

    with ThreadPoolExecutor(8) as pool:
        switched = list(pool.map(lambda _: refused(), range(8)))
    assert switched.count(True) == 1


def test_the_token_and_the_api_client_both_switch_through_a_rotation() -> None:
    secondary = Secret("next-secret")
    auth = ClientCredentialsAuth(
        token_endpoint="https://login.example/t/oauth2/v2.0/token",
        client_id="client",
        client_secret=Secret("secret"),
        scope="api://x/.default",
        session=requests.Session(),
        timeout=(1.0, 1.0),
        secondary_secret=secondary,
    )
    assert isinstance(auth.__dict__["_client_secret"], Rotation)
    assert auth._use_secondary() and auth.secondary_in_use and not auth._use_secondary()
    assert "next-secret" in auth.live_secrets()
