"""Answers a broken or hostile host might give, and the bounds the tool keeps (issue 15, items 1 and 4).

Every request to DfE and to the token endpoint refuses redirects, ends within HTTP_TIMEOUT
however slowly the answer comes, reads at most MAX_ANSWER_BYTES of it, masks it in linear
time and parses it without recursion limits. The hosts are real servers on 127.0.0.1
(``tests/hostile.py``); the runs are the real CLI.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from api_pipeline.dfe.answers import classify
from api_pipeline.dfe.api import ApiClient
from api_pipeline.dfe.auth import ClientCredentialsAuth
from api_pipeline.dfe.transport import make_session, mask_answer, summarise
from api_pipeline.errors import ApiError, AuthError, ExitCode, FatalApiError
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from conftest import db_env, encoded, insert, rows, run_cli
from hostile import (
    Hostile,
    Trickle,
    answer_with,
    endless_body,
    nested_json,
    redirect_to,
    trickle_body,
    trickle_headers,
)

FAST = {"MAX_RETRIES": "0", "HTTP_TIMEOUT": "1"}


def statuses(db_path: Path) -> list[str]:
    return [str(r["submission_status"]).lower() for r in rows(db_path)]


@pytest.fixture
def catcher():
    """The other host a redirect points at: it records whatever reaches it and hands out receipts."""
    with Hostile(lambda exchange: exchange.receipts()) as host:
        yield host


# -- item 1: redirects are never followed ------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_from_the_receiver_is_fatal_and_sends_nothing_elsewhere(db_path, catcher, status) -> None:
    elsewhere = f"http://localhost:{catcher.port}/collect"
    insert(db_path, list(make_children(3, seed=151)))
    with Hostile(redirect_to(elsewhere, status)) as receiver:
        result = run_cli(["run"], environ=receiver.env() | db_env(db_path) | FAST, cwd=db_path.parent)
        posts = [s for s in receiver.seen if not s.path.endswith("/token")]
    assert result.code == ExitCode.API, result.err
    assert catcher.seen == []  # no record, SupplierKey or token went to the other host
    assert len(posts) == 1  # asked once, not retried
    assert f"HTTP {status}" in result.err and "localhost" in result.err and "redirect" in result.err
    assert statuses(db_path) == ["pending"] * 3  # nothing counted as acknowledged


def test_a_redirect_from_the_token_endpoint_is_fatal_and_the_secret_stays_home(db_path, catcher) -> None:
    insert(db_path, list(make_children(2, seed=152)))
    redirect = redirect_to(f"http://localhost:{catcher.port}/steal/oauth2/v2.0/token")
    with Hostile(lambda exchange: exchange.receipts(), token_answer=redirect) as receiver:
        environ = receiver.env() | db_env(db_path) | FAST
        ran = run_cli(["run"], environ=environ, cwd=db_path.parent)
        checked = run_cli(["test-endpoint"], environ=environ, cwd=db_path.parent)
        receiver_posts = [s for s in receiver.seen if not s.path.endswith("/token")]
    assert catcher.seen == []  # client_secret never left for the other host
    assert receiver_posts == []
    assert ran.code == ExitCode.API and "localhost" in ran.err and "TOKEN_ENDPOINT" in ran.err
    assert checked.code == ExitCode.API and "localhost" in checked.out and "redirect" in checked.out
    assert statuses(db_path) == ["pending"] * 2


def test_test_endpoint_reports_a_redirect_from_the_receiver(tmp_path, catcher) -> None:
    with Hostile(redirect_to(f"https://localhost:{catcher.port}/x")) as receiver:
        result = run_cli(["test-endpoint"], environ=receiver.env() | FAST, cwd=tmp_path)
    assert result.code == ExitCode.API
    assert result.out.startswith("FAIL (endpoint)") and "HTTP 307" in result.out and "localhost" in result.out
    assert catcher.seen == []


def test_classify_names_the_location_host_only() -> None:
    import requests

    answer = requests.Response()
    answer.status_code = 302
    answer._content = b""
    answer.headers["Location"] = "https://user:pw@evil.example:8443/path?token=abc"
    answer.url = "https://dfe.example/children_social_care_data/999/children"
    with pytest.raises(FatalApiError) as caught:
        classify(answer)
    message = str(caught.value)
    assert "evil.example" in message and "not followed" in message
    assert "pw" not in message and "token=abc" not in message and "/path" not in message


# -- item 4: every answer is bounded ----------------------------------------------------------------------


def receiver_posts(host: Hostile) -> int:
    return sum(1 for seen in host.seen if not seen.path.endswith("/token"))


def token_posts(host: Hostile) -> int:
    return sum(1 for seen in host.seen if seen.path.endswith("/token"))


# A trickle lasts 30 s; a client honouring HTTP_TIMEOUT=1 hangs up on each long before. Which of
# the two ended each exchange is what is asserted, not how long the test took.


@pytest.mark.parametrize("trickle", [trickle_body, trickle_headers], ids=["body", "headers"])
def test_a_trickling_receiver_is_cut_off_at_http_timeout(db_path, trickle) -> None:
    insert(db_path, list(make_children(2, seed=153)))
    answer = trickle(seconds=30)
    with Hostile(answer) as receiver:
        environ = receiver.env() | db_env(db_path) | FAST | {"MAX_RUNTIME": "3"}
        result = run_cli(["run"], environ=environ, cwd=db_path.parent)
        # The lock was released: the next run is not refused as "already running".
        again = run_cli(["run"], environ=environ, cwd=db_path.parent)
        ends = answer.wait_for_ends(receiver_posts(receiver))
    assert ends == [Trickle.HUNG_UP] * 2, ends
    assert result.code == ExitCode.API and "HTTP_TIMEOUT" in result.err
    assert again.code == ExitCode.API
    assert statuses(db_path) == ["pending"] * 2


def test_max_runtime_bounds_the_retries_of_a_trickling_receiver(db_path) -> None:
    insert(db_path, list(make_children(2, seed=159)))
    answer = trickle_body(seconds=30)
    with Hostile(answer) as receiver:
        environ = receiver.env() | db_env(db_path) | {"MAX_RETRIES": "5", "HTTP_TIMEOUT": "1", "MAX_RUNTIME": "2"}
        result = run_cli(["run"], environ=environ, cwd=db_path.parent)
        attempts = receiver_posts(receiver)
        ends = answer.wait_for_ends(attempts)
    # MAX_RETRIES=5 alone would make six attempts; MAX_RUNTIME ends them first, each cut off.
    assert 1 <= attempts < 6 and ends == [Trickle.HUNG_UP] * attempts, ends
    assert result.code == ExitCode.API and "MAX_RUNTIME" in result.err
    assert statuses(db_path) == ["pending"] * 2


def test_a_trickling_token_endpoint_is_cut_off_at_http_timeout(tmp_path) -> None:
    answer = trickle_body(seconds=30)
    with Hostile(lambda exchange: exchange.receipts(), token_answer=answer) as host:
        settings = load_settings(command="test-endpoint", environ=host.env() | FAST)
        session = make_session(settings)
        auth = ClientCredentialsAuth.from_settings(settings, session, sleep=lambda s: None)
        with pytest.raises(ApiError, match="HTTP_TIMEOUT"):
            auth.get_token()
        session.close()
        attempts = token_posts(host)
        ends = answer.wait_for_ends(attempts)
    assert attempts >= 1 and ends == [Trickle.HUNG_UP] * attempts, ends


def test_an_endless_answer_is_cut_off_at_the_size_cap(db_path) -> None:
    insert(db_path, list(make_children(2, seed=154)))
    with Hostile(endless_body()) as receiver:
        result = run_cli(["run"], environ=receiver.env() | db_env(db_path) | FAST, cwd=db_path.parent)
    assert result.code == ExitCode.API
    assert "larger than 1 MiB" in result.err and "acknowledged" in result.err
    assert statuses(db_path) == ["pending"] * 2


def test_an_endless_token_answer_is_cut_off_at_the_size_cap() -> None:
    with Hostile(lambda exchange: exchange.receipts(), token_answer=endless_body()) as host:
        settings = load_settings(command="test-endpoint", environ=host.env() | FAST)
        auth = ClientCredentialsAuth.from_settings(settings, make_session(settings), sleep=lambda s: None)
        with pytest.raises(FatalApiError, match="larger than 1 MiB"):
            auth.get_token()


def test_a_receipt_answer_of_100_records_fits_comfortably() -> None:
    from api_pipeline.dfe.bounded import MAX_ANSWER_BYTES

    assert MAX_ANSWER_BYTES == 1024 * 1024
    receipt = "2026-03-01_21:04:33.12_" + "0" * 36 + ".json"
    assert len(json.dumps([receipt] * 100)) * 50 < MAX_ANSWER_BYTES


def test_masking_a_huge_error_body_takes_linear_time() -> None:
    # The old patterns backtracked from every start position: 60,000 characters of each shape
    # below took the old e-mail or quote pattern 20 to 30 seconds; now all of them take milliseconds.
    shapes = [
        "a." * 30_000,  # e-mail: words and dots that never meet an @
        "a-" * 30_000,
        "‘" * 60_000,  # a quote opened again and again, never closed
        "“" * 60_000,
        "x" * 60_000 + "@",  # an @ after a long local part
        "@a" * 30_000,  # many @, no domain dot
    ]
    started = time.monotonic()
    for text in shapes:
        assert len(mask_answer(text, limit=10_000_000)) <= len(text) + 10
    assert time.monotonic() - started < 10


def test_masking_still_hides_what_it_hid() -> None:
    text = "bad value 'Zoë' for date 2015-03-02 from zoe.smith@example.org.uk, see “Jane Doe” and ‘x’"
    masked = mask_answer(text)
    assert "Zoë" not in masked and "2015-03-02" not in masked and "zoe.smith" not in masked
    assert "Jane" not in masked and "<email>" in masked and "<date>" in masked
    assert mask_answer("a@b and c@d.e, f@@g.h") == "a@b and <email>, f@@g.h"


def test_a_huge_error_body_is_masked_and_the_run_goes_on(db_path) -> None:
    insert(db_path, list(make_children(2, seed=155)))
    body = b"a." * 75_000 + b" user@example.org"  # 150 KB: the old e-mail pattern took minutes on it
    with Hostile(answer_with(400, body)) as receiver:
        started = time.monotonic()
        result = run_cli(["run"], environ=receiver.env() | db_env(db_path) | FAST, cwd=db_path.parent)
    assert time.monotonic() - started < 20
    assert result.code == ExitCode.RECORDS_FAILED, result.err
    assert statuses(db_path) == ["error"] * 2
    assert all("user@example.org" not in str(r["api_response"]) for r in rows(db_path))


@pytest.mark.parametrize("status", [400, 403, 500])
def test_a_deeply_nested_error_body_is_read_as_text(status: int) -> None:
    import requests

    answer = requests.Response()
    answer.status_code = status
    answer._content = nested_json()
    answer.url = "https://dfe.example/children_social_care_data/999/children"
    assert summarise(answer).startswith(f"HTTP {status}")
    with pytest.raises(ApiError if status != 400 else Exception) as caught:
        classify(answer)
    assert not isinstance(caught.value, RecursionError)


def test_a_deeply_nested_answer_does_not_crash_a_run(db_path) -> None:
    insert(db_path, list(make_children(2, seed=156)))
    with Hostile(answer_with(400, nested_json(), {"Content-Type": "application/json"})) as receiver:
        result = run_cli(["run"], environ=receiver.env() | db_env(db_path) | FAST, cwd=db_path.parent)
    assert "unexpected" not in result.err and result.code == ExitCode.RECORDS_FAILED, result.err
    assert statuses(db_path) == ["error"] * 2


def test_a_deeply_nested_200_acknowledges_nobody(db_path) -> None:
    insert(db_path, list(make_children(2, seed=157)))
    with Hostile(answer_with(200, b"[" * 100_000 + b"]" * 100_000)) as receiver:
        result = run_cli(["run"], environ=receiver.env() | db_env(db_path) | FAST, cwd=db_path.parent)
    assert "unexpected" not in result.err and result.code == ExitCode.RECORDS_FAILED, result.err
    assert statuses(db_path) == ["pending"] * 2


@pytest.mark.parametrize("status", [200, 400])
def test_a_deeply_nested_token_answer_is_an_auth_error(status: int) -> None:
    with Hostile(lambda exchange: None, token_answer=answer_with(status, nested_json())) as host:
        settings = load_settings(command="test-endpoint", environ=host.env() | FAST)
        auth = ClientCredentialsAuth.from_settings(settings, make_session(settings), sleep=lambda s: None)
        with pytest.raises(AuthError):
            auth.get_token()


def test_test_endpoint_is_bounded_too(tmp_path) -> None:
    answer = trickle_body(seconds=30)
    with Hostile(answer) as receiver:
        result = run_cli(["test-endpoint"], environ=receiver.env() | FAST, cwd=tmp_path)
        ends = answer.wait_for_ends(receiver_posts(receiver))
    assert ends and ends == [Trickle.HUNG_UP] * len(ends), ends
    assert result.code == ExitCode.API and "HTTP_TIMEOUT" in result.out


def test_normal_answers_still_work_with_keep_alive(sim_client) -> None:
    sim, client = sim_client
    records = list(make_children(5, seed=158))
    for n in range(3):
        outcomes = client.send(encoded(records), batch_id=f"b{n}")
        assert all(o.acknowledged for o in outcomes)
    assert len(sim.snapshot()) == 5


@pytest.fixture
def sim_client():
    with Simulator() as sim:
        settings = load_settings(command="test-endpoint", environ=sim.settings_env() | {"HTTP_TIMEOUT": "5"})
        session = make_session(settings)
        auth = ClientCredentialsAuth.from_settings(settings, session)
        yield sim, ApiClient(settings, session, auth, sleep=lambda s: None)
        session.close()
