"""OAuth2 client credentials against the real simulator's Azure-style token endpoint.

The clock is controlled, sleeps are no-ops, and every test checks that neither the client
secret nor the token leaks into messages or logs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from api_pipeline.dfe.auth import ClientCredentialsAuth, explain_token_error
from api_pipeline.dfe.transport import describe_network_error, make_session
from api_pipeline.errors import AuthError, ExitCode, FatalApiError
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.settings.config import Secret, Settings, load_settings

SECRET = "sim-secret-Do-Not-Show-7f3a"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(client_secret=SECRET) as simulator:
        yield simulator


def settings_for(sim: Simulator, **env: str) -> Settings:
    return load_settings(command="test-endpoint", environ=sim.settings_env() | env)


def make_auth(settings: Settings, **kwargs) -> ClientCredentialsAuth:
    kwargs.setdefault("sleep", lambda seconds: None)
    return ClientCredentialsAuth.from_settings(settings, make_session(settings), **kwargs)


def assert_no_leak(text: str, *values: str) -> None:
    for value in values:
        assert value not in text


# -- caching and renewal ------------------------------------------------------------------


def test_token_is_cached_until_the_renewal_margin(sim: Simulator) -> None:
    clock = Clock()
    auth = make_auth(settings_for(sim), clock=clock)
    first = auth.get_token()
    assert auth.get_token() == first
    assert auth.token_fetches == 1 and sim.token_requests == 1

    clock.now += 3600 - 61  # 61 s left: more than the 60 s margin
    assert auth.get_token() == first
    assert auth.token_fetches == 1

    clock.now += 2  # 59 s left: renew now rather than send a token about to expire
    second = auth.get_token()
    assert second != first
    assert auth.token_fetches == 2 and sim.token_requests == 2


def test_short_lived_token_renews_at_ten_percent_of_its_lifetime() -> None:
    with Simulator(token_ttl=100) as sim:
        clock = Clock()
        auth = make_auth(settings_for(sim), clock=clock)
        auth.get_token()
        clock.now += 89  # 11 s left: min(60 s, 10 s) margin not reached
        auth.get_token()
        assert auth.token_fetches == 1
        clock.now += 2  # 9 s left
        auth.get_token()
        assert auth.token_fetches == 2


def test_invalidate_forces_a_new_token(sim: Simulator) -> None:
    auth = make_auth(settings_for(sim), clock=Clock())
    first = auth.get_token()
    auth.invalidate()
    assert auth.get_token() != first
    assert auth.token_fetches == 2


def test_threads_that_need_a_token_together_fetch_it_once(sim: Simulator) -> None:
    """Batches in flight (MAX_IN_FLIGHT > 1) start together with no token: one fetch serves all."""

    class SlowTokenSession(requests.Session):  # the token endpoint takes a moment, as Azure AD does
        def post(self, url, *args, **kwargs):  # type: ignore[no-untyped-def]
            time.sleep(0.2)
            return super().post(url, *args, **kwargs)

    auth = ClientCredentialsAuth.from_settings(settings_for(sim), SlowTokenSession(), sleep=lambda seconds: None)
    start = threading.Barrier(6)
    tokens: list[str] = []

    def send() -> None:
        start.wait()
        tokens.append(auth.get_token())

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tokens) == 6 and len(set(tokens)) == 1
    assert auth.token_fetches == 1 and sim.token_requests == 1


def test_call_sets_bearer_header_and_form_is_client_credentials(sim: Simulator) -> None:
    auth = make_auth(settings_for(sim))
    prepared = requests.Request("POST", sim.api_endpoint, data=b"[]").prepare()
    auth(prepared)
    assert prepared.headers["Authorization"] == f"Bearer {auth.get_token()}"
    token_call = next(entry for entry in sim.request_log() if entry.path.endswith("/token"))
    assert token_call.method == "POST" and token_call.body is not None
    assert b"grant_type=client_credentials" in token_call.body
    assert b"scope=api%3A%2F%2Fcsc-simulator%2F.default" in token_call.body
    assert "<hidden>" in repr(auth.__dict__["_client_secret"])
    assert SECRET not in repr(auth)


# -- Azure AD refusals become sentences an officer can act on ------------------------------


@pytest.mark.parametrize(
    ("env", "sim_kwargs", "code", "advice"),
    [
        ({"CLIENT_SECRET": "wrong-secret-value"}, {}, "AADSTS7000215", "CLIENT_SECRET is the secret's value"),
        ({}, {"expired_secret": True}, "AADSTS7000222", "Ask DfE for a new client secret"),
        ({"CLIENT_ID": "someone-else"}, {}, "AADSTS700016", "Check CLIENT_ID"),
        ({"SCOPE": "api://csc-simulator/wrong"}, {}, "AADSTS70011", "/.default"),
        ({}, {}, "AADSTS90002", "tenant id in TOKEN_ENDPOINT"),
    ],
)
def test_aadsts_codes_become_actionable_messages(
    env: dict, sim_kwargs: dict, code: str, advice: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with Simulator(client_secret=SECRET, **sim_kwargs) as sim:
        environ = sim.settings_env() | env
        if code == "AADSTS90002":
            environ["TOKEN_ENDPOINT"] = sim.token_endpoint.replace("/sim-tenant/", "/other-tenant/")
        auth = make_auth(load_settings(command="test-endpoint", environ=environ))
        with pytest.raises(AuthError) as caught:
            auth.get_token()
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.AUTH
    assert code in message and advice in message
    # Only the code and a short sentence survive: no trace ids, app ids or echoed values.
    assert "Trace ID" not in message and "Correlation" not in message
    assert "sim-client" not in message and "someone-else" not in message
    assert len(message) < 300
    assert_no_leak(message + caplog.text, SECRET, "wrong-secret-value")


def test_explain_token_error_other_shapes() -> None:
    tenant = explain_token_error(400, {"error": "invalid_request", "error_codes": [900023]})
    assert "TOKEN_ENDPOINT" in tenant and "AADSTS900023" in tenant

    scope = explain_token_error(400, {"error": "invalid_scope", "error_description": "bad scope"})
    assert "SCOPE" in scope and "/.default" in scope

    description = (
        "AADSTS12345: Something odd happened to 'secret-looking-value'. Trace ID: abc Correlation ID: def " + "x" * 500
    )
    other = explain_token_error(400, {"error": "invalid_request", "error_description": description})
    assert "AADSTS12345" in other and "Something odd happened" in other
    assert "secret-looking-value" not in other and "Trace ID" not in other
    assert len(other) < 400

    not_oauth = explain_token_error(404, None)
    assert "HTTP 404" in not_oauth and "TOKEN_ENDPOINT" in not_oauth


# -- the token endpoint failing ------------------------------------------------------------


def test_token_endpoint_5xx_is_retried_then_succeeds(sim: Simulator) -> None:
    sleeps: list[float] = []
    auth = make_auth(settings_for(sim), sleep=sleeps.append)
    sim.inject("token_500", times=2)
    assert auth.get_token()
    assert auth.token_fetches == 3
    assert len(sleeps) == 2 and all(0 < s <= 5 for s in sleeps)


def test_token_endpoint_5xx_every_time_is_fatal(sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    auth = make_auth(settings_for(sim))
    sim.inject("token_500", times=5)
    with pytest.raises(FatalApiError) as caught:
        auth.get_token()
    assert "3 attempts" in str(caught.value) and "HTTP 500" in str(caught.value)
    assert caught.value.exit_code == ExitCode.API
    assert_no_leak(str(caught.value) + caplog.text, SECRET)


def test_connection_refused_names_the_cause() -> None:
    with Simulator() as sim:
        settings = settings_for(sim)
    auth = make_auth(settings)  # the simulator is stopped: nothing listens on its port now
    with pytest.raises(FatalApiError) as caught:
        auth.get_token()
    assert "refused the connection" in str(caught.value)


def test_dns_failure_is_named() -> None:
    exc = requests.ConnectionError(
        "HTTPSConnectionPool(host='login.example'): Max retries exceeded "
        "(Caused by NameResolutionError(\"Failed to resolve 'login.example'\"))"
    )
    cause, sentence = describe_network_error(exc, host="login.example", timeout=5)
    assert cause == "dns" and "DNS" in sentence and "PROXY_URL" in sentence


class _TokenHandler(BaseHTTPRequestHandler):
    """Answers every POST with the class's canned reply."""

    reply: tuple[int, bytes] = (200, b"{}")

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, body = self.reply
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def token_server() -> Iterator[tuple[ThreadingHTTPServer, type[_TokenHandler]]]:
    handler = type("Handler", (_TokenHandler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()


def _auth_for(server: ThreadingHTTPServer, **kwargs) -> ClientCredentialsAuth:
    session = requests.Session()
    return ClientCredentialsAuth(
        token_endpoint=f"http://127.0.0.1:{server.server_address[1]}/t/oauth2/v2.0/token",
        client_id="c",
        client_secret=Secret(SECRET),
        scope="api://x/.default",
        session=session,
        timeout=(2.0, 2.0),
        sleep=lambda seconds: None,
        **kwargs,
    )


def test_answer_without_access_token_is_an_auth_error(token_server) -> None:
    server, handler = token_server
    handler.reply = (200, b'{"token_type": "Bearer"}')
    with pytest.raises(AuthError, match="without an access token"):
        _auth_for(server).get_token()


def test_missing_expires_in_uses_a_short_default(token_server) -> None:
    server, handler = token_server
    handler.reply = (200, json.dumps({"access_token": "tok-abc-123"}).encode())
    clock = Clock()
    auth = _auth_for(server, clock=clock)
    assert auth.get_token() == "tok-abc-123"
    assert auth.expires_in == pytest.approx(300)


def test_html_error_page_does_not_leak_into_the_message(token_server) -> None:
    server, handler = token_server
    handler.reply = (404, b"<html><body>Not here, secret diagnostics " + b"y" * 2000 + b"</body></html>")
    with pytest.raises(AuthError) as caught:
        _auth_for(server).get_token()
    assert "HTTP 404" in str(caught.value) and "TOKEN_ENDPOINT" in str(caught.value)
    assert "diagnostics" not in str(caught.value)


def test_neither_secret_nor_token_appears_in_logs(sim: Simulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    auth = make_auth(settings_for(sim), clock=clock)
    sim.inject("token_500")
    token = auth.get_token()
    clock.now += 4000
    second = auth.get_token()
    logged = caplog.text + "".join(str(record.args) for record in caplog.records)
    assert caplog.records, "expected some log lines to inspect"
    assert_no_leak(logged, SECRET, token, second)
