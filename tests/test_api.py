"""The API client against the real simulator over loopback HTTP.

A small scripted server (``ScriptedDfE``) covers the corners the simulator cannot produce:
a 400 naming no record, an HTTP-date Retry-After, a 204 for a non-empty batch, bare-uuid
receipt mismatches, proxies and TLS. Sleeps are recorded, never slept.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from api_pipeline import __version__
from api_pipeline.cli.diagnostics import check_endpoint
from api_pipeline.dfe.answers import classify, parse_indexes
from api_pipeline.dfe.api import ApiClient
from api_pipeline.dfe.auth import ClientCredentialsAuth
from api_pipeline.dfe.json_text import encode_record
from api_pipeline.dfe.receipts import parse_receipt_time
from api_pipeline.dfe.transport import _bypasses_proxy, make_session, mask_answer, parse_retry_after
from api_pipeline.errors import (
    AuthError,
    BatchRejected,
    ConfigError,
    ExitCode,
    FatalApiError,
    Forbidden,
    PayloadTooLarge,
    RetriableApiError,
    RetriesExhausted,
    Unauthorized,
)
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.settings.config import Secret, Settings, load_settings
from conftest import aborted, encoded

SECRET = "sim-secret-Do-Not-Show-7f3a"
SUPPLIER_KEY = "sim-supplier-key-Do-Not-Show-91c2"
NAME = "Zoë-Synthetic"  # a 'personal' value that must never reach a log line


def child(n: int, **details: str) -> dict:
    """A small synthetic child record, valid against the bundled schema."""
    return {
        "la_child_id": f"T{n:04d}",
        "mis_child_id": f"MIS-{n}",
        "child_details": {"first_name": NAME, "surname": "O'Brien", "date_of_birth": "2015-03-02", "sex": "F"}
        | details,
    }


def bad_child(n: int) -> dict:
    return child(n, date_of_birth="2015-02-31")  # no such day: the simulator names it


class Sleeps(list):
    """Records the waits tenacity asks for, without waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(client_secret=SECRET, supplier_key=SUPPLIER_KEY) as simulator:
        yield simulator


def settings_for(sim: Simulator, **env: str) -> Settings:
    environ = sim.settings_env() | {"MAX_RETRIES": "5", "HTTP_TIMEOUT": "5"} | env
    return load_settings(command="test-endpoint", environ=environ)


def client_for(settings: Settings, sleeps: Sleeps | None = None) -> ApiClient:
    session = make_session(settings)
    sleep = sleeps if sleeps is not None else Sleeps()
    auth = ClientCredentialsAuth.from_settings(settings, session, sleep=sleep)
    return ApiClient(settings, session, auth, sleep=sleep)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(sim: Simulator, sleeps: Sleeps) -> ApiClient:
    return client_for(settings_for(sim), sleeps)


def receiver_calls(sim: Simulator) -> list:
    return [entry for entry in sim.request_log() if "/children_social_care_data/" in entry.path]


Reply = tuple[int, dict[str, str], bytes]


class ScriptedDfE:
    """A token endpoint plus a receiver whose answers a test scripts, on 127.0.0.1."""

    def __init__(self, answer: Callable[[list], Reply], tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.calls: list[list] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                headers: dict[str, str] = {}
                if self.path.endswith("/token"):
                    status, out = 200, b'{"access_token": "scripted-token-55", "expires_in": 3600}'
                else:
                    records = json.loads(body)
                    scripted.calls.append(records)
                    status, headers, out = scripted.answer(records)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        port = self.server.server_address[1]
        scheme = "https" if tls is not None else "http"
        self.settings = Settings(
            api_endpoint=f"{scheme}://127.0.0.1:{port}/api",
            la_code="999",
            token_endpoint=f"{scheme}://127.0.0.1:{port}/tenant/oauth2/v2.0/token",
            client_id="scripted-client",
            client_secret=Secret(SECRET),
            scope="api://scripted/.default",
            supplier_key=Secret(SUPPLIER_KEY),
            max_retries=3,
            http_timeout=5.0,
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedDfE]]:
    servers: list[ScriptedDfE] = []

    def start(answer: Callable[[list], Reply], tls: ssl.SSLContext | None = None) -> ScriptedDfE:
        servers.append(ScriptedDfE(answer, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def receipt_of(la_child_id: str) -> str:
    """A uuid that names the child, so a test can tell which receipt went to which record."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, la_child_id))


def receipts_for(records: list) -> Reply:
    return (
        200,
        {"Content-Type": "application/json"},
        json.dumps([receipt_of(r["la_child_id"]) for r in records]).encode(),
    )


def response(status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> requests.Response:
    """A real requests.Response, as the transport would build it."""
    made = requests.Response()
    made.status_code = status
    made._content = body
    made.headers.update(headers or {})
    made.url = "https://dfe.example/children_social_care_data/999/children"
    return made


# -- the session -----------------------------------------------------------------------------


def test_session_has_honest_user_agent_and_verifies_tls(sim: Simulator) -> None:
    session = make_session(settings_for(sim))
    assert session.headers["User-Agent"] == f"csc-api-pipeline/{__version__} (+python-requests/{requests.__version__})"
    assert session.verify is True
    assert session.trust_env is False
    assert not session.proxies


def test_session_uses_ca_bundle_and_proxy_from_settings(sim: Simulator, tmp_path: Path, tls_files) -> None:
    bundle, _ = tls_files
    settings = settings_for(sim).replace(
        ca_bundle=bundle, https_proxy=Secret("http://user:pw@proxy.example:8080"), no_proxy="intranet.local"
    )
    session = make_session(settings)
    assert session.verify is True  # the bundle is loaded into the session's own SSL context instead
    assert "CA_BUNDLE" in session.trust and str(bundle) in session.trust
    assert session.proxies == {
        "https": "http://user:pw@proxy.example:8080",
        "http": "http://user:pw@proxy.example:8080",
    }

    with pytest.raises(ConfigError, match="CA_BUNDLE"):
        make_session(settings.replace(ca_bundle=tmp_path / "missing.pem"))
    garbage = tmp_path / "not-a-certificate.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigError, match="CA_BUNDLE: .* holds no certificate in PEM form"):
        make_session(settings.replace(ca_bundle=garbage))


@pytest.mark.parametrize(
    ("host", "no_proxy", "bypass"),
    [
        ("127.0.0.1", None, True),
        ("localhost", None, True),
        ("pp-api.education.gov.uk", None, False),
        ("pp-api.education.gov.uk", "education.gov.uk", True),
        ("pp-api.education.gov.uk", ".gov.uk, other", True),
        ("notgov.uk", "gov.uk", False),
        ("10.1.2.3", "10.0.0.0/8", True),
        ("11.1.2.3", "10.0.0.0/8", False),
        ("anything", "*", True),
    ],
)
def test_no_proxy_matching(host: str, no_proxy: str | None, bypass: bool) -> None:
    assert _bypasses_proxy(host, no_proxy) is bypass


# -- classification ----------------------------------------------------------------------------


def test_classify_success() -> None:
    classify(response(200, b'["r"]'))  # no exception: success
    classify(response(204))


def test_classify_400_parses_record_indexes_and_masks_values() -> None:
    body = (
        b"[3] child_details.date_of_birth: 'Zo\xc3\xab' is not a valid date 2015-02-31\n"
        b"[3] social_care_episodes[0].start_date: bad\n"
        b"[12] la_child_id: does not match pattern ^[A-Za-z0-9]+$\n"
    )
    with pytest.raises(BatchRejected) as caught:
        classify(response(400, body))
    assert set(caught.value.indexes) == {3, 12}
    assert "Zoë" not in caught.value.indexes[3] and "2015-02-31" not in caught.value.indexes[3]
    assert "social_care_episodes[0].start_date" in caught.value.indexes[3]
    assert "Zoë" not in str(caught.value)


def test_classify_400_in_json_and_without_indexes() -> None:
    json_body = json.dumps({"errors": ["[0] la_child_id: required", "[2] purge: not allowed"]}).encode()
    with pytest.raises(BatchRejected) as caught:
        classify(response(400, json_body))
    assert set(caught.value.indexes) == {0, 2}
    with pytest.raises(BatchRejected) as caught:
        classify(response(400, b"Payload was malformed"))
    assert caught.value.indexes == {}


@pytest.mark.parametrize(
    ("status", "error", "words"),
    [
        (401, Unauthorized, []),
        (403, Forbidden, []),
        (404, FatalApiError, ["API_ENDPOINT", "LA_CODE"]),
        (407, FatalApiError, ["PROXY_URL", "Px"]),
        (413, PayloadTooLarge, []),
        (429, RetriableApiError, []),
        (500, RetriableApiError, []),
        (503, RetriableApiError, []),
        (418, FatalApiError, ["unexpected"]),
    ],
)
def test_classify_statuses(status: int, error: type, words: list[str]) -> None:
    with pytest.raises(error) as caught:
        classify(response(status, b"some answer"))
    assert f"HTTP {status}" in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_classify_truncates_long_bodies_and_reads_retry_after() -> None:
    with pytest.raises(RetriableApiError) as caught:
        classify(response(503, b"x" * 5000, {"Retry-After": "12"}))
    assert caught.value.retry_after == 12 and caught.value.status == 503
    assert len(str(caught.value)) < 300


def test_unauthorized_is_an_auth_error_and_forbidden_is_retriable() -> None:
    assert issubclass(Unauthorized, AuthError) and Unauthorized("x").exit_code == ExitCode.AUTH
    assert Forbidden("x").status == 403 and isinstance(Forbidden("x"), RetriableApiError)


def test_parse_retry_after() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("30") == 30
    assert parse_retry_after(formatdate(now + 45, usegmt=True), now=lambda: now) == pytest.approx(45)
    assert parse_retry_after(formatdate(now - 45, usegmt=True), now=lambda: now) == 0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_parse_receipt_time() -> None:
    when = parse_receipt_time("2026-03-01_21:04:33.12_0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0.json")
    assert when == datetime(2026, 3, 1, 21, 4, 33, 120000, tzinfo=timezone.utc)
    assert parse_receipt_time("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0") is None


def test_mask_text() -> None:
    masked = mask_answer('name "Zoë O\'Brien" born 2015-03-02, mail a.b@example.org ' + "z" * 400)
    assert "Zoë" not in masked and "2015-03-02" not in masked and "example.org" not in masked
    assert len(masked) <= 200


def test_parse_indexes_ignores_item_indexes_inside_paths() -> None:
    assert parse_indexes("social_care_episodes[4].x: bad\n  [1] child_details: bad") == {1: "child_details: bad"}


# -- sending against the simulator -------------------------------------------------------------


def test_send_acknowledges_every_record_with_exact_bytes(sim: Simulator, client: ApiClient) -> None:
    records = [child(n) for n in range(10)]
    bodies = [encode_record(r) for r in records]
    outcomes = client.send(bodies, batch_id="run-1")
    assert [o.index for o in outcomes] == list(range(10))
    assert all(o.acknowledged and not o.rejected and o.error is None for o in outcomes)
    assert all(o.received_at is not None for o in outcomes)
    assert set(sim.snapshot()) == {r["la_child_id"] for r in records}
    assert sim.snapshot()["T0003"]["child_details"]["first_name"] == NAME
    (call,) = receiver_calls(sim)
    assert call.body == b"[" + b",".join(bodies) + b"]"
    assert "Zoë".encode() in call.body and b"O'Brien" in call.body
    assert call.headers["SupplierKey"] == "***" and call.headers["Content-Type"] == "application/json"
    assert client.requests == 1 and client.bytes_sent == len(call.body) and client.retries == {}


def test_bare_uuid_receipts_are_accepted(sleeps: Sleeps) -> None:
    with Simulator(receipt_style="uuid") as sim:
        outcomes = client_for(settings_for(sim), sleeps).send(encoded([child(1), child(2)]), batch_id="b")
    assert all(o.acknowledged and o.received_at is None for o in outcomes)


def test_expired_token_is_renewed_once_on_401(sim: Simulator, client: ApiClient) -> None:
    client.auth.get_token()
    sim.inject("expire_tokens")
    outcomes = client.send(encoded([child(1)]), batch_id="b")
    assert outcomes[0].acknowledged
    assert client.auth.token_fetches == 2
    assert client.retries == {"401": 1}
    assert [c.status for c in receiver_calls(sim)] == [401, 200]


def test_second_401_is_an_auth_error_naming_the_supplier_key(sim: Simulator, sleeps: Sleeps) -> None:
    client = client_for(settings_for(sim, SUPPLIER_KEY="not-the-key-xyz"), sleeps)
    with aborted(AuthError) as caught:
        client.send(encoded([child(1)]), batch_id="b")
    assert caught.value.exit_code == ExitCode.AUTH
    assert "SUPPLIER_KEY" in str(caught.value) and "CLIENT_ID" in str(caught.value)
    assert "not-the-key-xyz" not in str(caught.value)
    assert client.auth.token_fetches == 2
    assert len(receiver_calls(sim)) == 2


def test_429_waits_as_long_as_the_server_asks(sim: Simulator, client: ApiClient, sleeps: Sleeps) -> None:
    sim.inject("429", retry_after=7)
    assert client.send(encoded([child(1)]), batch_id="b")[0].acknowledged
    assert sleeps == [7.0]
    assert client.retries == {"429": 1}


def test_three_500s_then_success(
    sim: Simulator, client: ApiClient, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="api_pipeline")
    sim.inject("500", times=3)
    assert client.send(encoded([child(1), child(2)]), batch_id="night-7")[1].acknowledged
    assert len(sleeps) == 3
    assert all(0 < s <= 60 for s in sleeps)
    assert sleeps[2] >= 4  # exponential: 1, 2, 4 (+ jitter)
    assert client.retries == {"500": 3} and client.requests == 4
    retry_lines = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retry_lines) == 3
    assert all("night-7" in line and "500" in line for line in retry_lines)
    assert "attempt 3" in retry_lines[2]


@pytest.mark.parametrize("fault", ["502", "503"])
def test_gateway_errors_are_retried(sim: Simulator, client: ApiClient, fault: str) -> None:
    sim.inject(fault)
    assert client.send(encoded([child(1)]), batch_id="b")[0].acknowledged
    assert client.retries == {fault: 1}


def test_retries_run_out(sim: Simulator, sleeps: Sleeps) -> None:
    client = client_for(settings_for(sim, MAX_RETRIES="2"), sleeps)
    sim.inject("503", times=5)
    with aborted(RetriesExhausted) as caught:
        client.send(encoded([child(1)]), batch_id="b-9")
    assert caught.value.exit_code == ExitCode.API
    assert "b-9" in str(caught.value) and "3 attempts" in str(caught.value) and "503" in str(caught.value)
    assert len(sleeps) == 2 and client.requests == 3


def test_dropped_connection_is_retried(sim: Simulator, client: ApiClient) -> None:
    sim.inject("drop")
    assert client.send(encoded([child(1)]), batch_id="b")[0].acknowledged
    assert client.retries == {"connection reset": 1}


def test_read_timeout_is_retried(sim: Simulator, sleeps: Sleeps) -> None:
    client = client_for(settings_for(sim, HTTP_TIMEOUT="0.3"), sleeps)
    client.auth.get_token()
    sim.inject("slow", seconds=0.8)
    assert client.send(encoded([child(1)]), batch_id="b")[0].acknowledged
    assert client.retries == {"timeout": 1}


def test_a_garbage_answer_is_sent_again_within_the_run(sim: Simulator, client: ApiClient) -> None:
    sim.inject("garbage")
    outcomes = client.send(encoded([child(1), child(2)]), batch_id="b")
    assert all(o.acknowledged for o in outcomes)
    assert len(receiver_calls(sim)) == 2 and client.retries == {"unusable answer": 1}


def test_short_receipts_are_sent_again_within_the_run(sim: Simulator, client: ApiClient) -> None:
    sim.inject("short_receipts")
    outcomes = client.send(encoded([child(n) for n in range(3)]), batch_id="b")
    assert all(o.acknowledged for o in outcomes)
    assert len(receiver_calls(sim)) == 2 and client.retries == {"unusable answer": 1}


def test_garbage_answers_past_the_retries_acknowledge_nobody(sim: Simulator, sleeps: Sleeps) -> None:
    client = client_for(settings_for(sim, MAX_RETRIES="2"), sleeps)
    sim.inject("garbage", times=3)
    outcomes = client.send(encoded([child(1), child(2)]), batch_id="b")
    assert all(not o.acknowledged and not o.rejected for o in outcomes)
    assert "not JSON" in (outcomes[0].error or "")
    assert len(receiver_calls(sim)) == 3 and len(sleeps) == 2


def test_one_bad_record_among_ten(sim: Simulator, client: ApiClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    records = [child(n) for n in range(10)]
    records[6] = bad_child(6)
    outcomes = client.send(encoded(records), batch_id="b")
    assert [o.index for o in outcomes] == list(range(10))
    assert sum(o.acknowledged for o in outcomes) == 9
    assert outcomes[6].rejected and not outcomes[6].acknowledged
    assert "child_details.date_of_birth" in (outcomes[6].error or "")
    assert "T0006" not in sim.snapshot() and len(sim.snapshot()) == 9
    assert [c.record_count for c in receiver_calls(sim)] == [10, 9]
    assert "b.1" in caplog.text
    assert NAME not in caplog.text


def test_several_bad_records_map_back_to_their_positions(sim: Simulator, client: ApiClient) -> None:
    records = [child(n) for n in range(12)]
    for n in (0, 5, 11):
        records[n] = bad_child(n)
    outcomes = client.send(encoded(records), batch_id="b")
    assert [o.index for o in outcomes if o.rejected] == [0, 5, 11]
    assert sum(o.acknowledged for o in outcomes) == 9


def test_413_halves_the_batch(sim: Simulator, client: ApiClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    sim.inject("413")
    outcomes = client.send(encoded([child(n) for n in range(7)]), batch_id="b")
    assert all(o.acknowledged for o in outcomes)
    assert [c.record_count for c in receiver_calls(sim)] == [7, 3, 4]
    assert "413" in caplog.text


def test_413_for_a_single_record_rejects_it(sim: Simulator, client: ApiClient) -> None:
    sim.inject("413", times=2)
    outcomes = client.send(encoded([child(1), child(2)]), batch_id="b")
    assert outcomes[0].rejected and "too large" in (outcomes[0].error or "")
    assert outcomes[1].acknowledged


def test_403_is_retried_a_bounded_number_of_times_then_fatal(sim: Simulator, client: ApiClient, sleeps: Sleeps) -> None:
    sim.inject("403", times=20)
    with aborted(FatalApiError) as caught:
        client.send(encoded([child(1)]), batch_id="b")
    message = str(caught.value)
    assert caught.value.exit_code == ExitCode.API
    assert "allow-list" in message and "SUPPLIER_KEY" in message and "LA_CODE" in message
    assert len(sleeps) == 3 and len(receiver_calls(sim)) == 4  # MAX_RETRIES is 5, 403 gets 3


def test_403_once_is_throttling(sim: Simulator, client: ApiClient) -> None:
    sim.inject("403")
    assert client.send(encoded([child(1)]), batch_id="b")[0].acknowledged
    assert client.retries == {"403": 1}


def test_wrong_path_is_404_naming_the_settings(sim: Simulator, sleeps: Sleeps) -> None:
    client = client_for(settings_for(sim, API_ENDPOINT=sim.base_url + "/wrong/1"), sleeps)
    with aborted(FatalApiError) as caught:
        client.send(encoded([child(1)]), batch_id="b")
    assert "API_ENDPOINT" in str(caught.value) and "LA_CODE" in str(caught.value)
    assert sleeps == []


# -- corners the simulator cannot produce --------------------------------------------------------


def test_400_naming_no_record_splits_down_to_the_bad_one(scripted) -> None:
    def answer(records: list) -> Reply:
        if any(r.get("mis_child_id") == "MIS-BAD" for r in records):
            return 400, {}, b"Payload was malformed"
        return receipts_for(records)

    server = scripted(answer)
    records = [child(n) for n in range(5)]
    records[3]["mis_child_id"] = "MIS-BAD"
    outcomes = client_for(server.settings).send(encoded(records), batch_id="b")
    assert [o.index for o in outcomes if o.rejected] == [3]
    assert [o.receipt for o in outcomes if o.acknowledged] == [receipt_of(f"T000{n}") for n in (0, 1, 2, 4)]
    assert [len(call) for call in server.calls] == [5, 2, 3, 1, 2, 1, 1]


def test_http_date_retry_after_and_cap(scripted) -> None:
    answers: Iterator[Reply] = iter(
        [
            (429, {"Retry-After": formatdate(time.time() + 30, usegmt=True)}, b""),
            (503, {"Retry-After": "99999"}, b""),
        ]
    )
    server = scripted(lambda records: next(answers, None) or receipts_for(records))
    sleeps = Sleeps()
    assert client_for(server.settings, sleeps).send(encoded([child(1)]), batch_id="b")[0].acknowledged
    assert 28 <= sleeps[0] <= 31
    assert sleeps[1] == 300


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ((204, {}, b""), "nothing stored"),
        (
            (200, {}, b'["0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0", "1f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"]'),
            "2 receipts for 3 records",
        ),
        ((200, {}, b"[1, 2, 3]"), "receipt 1 of 3 is a number, not text"),
        ((200, {}, b'{"ok": true}'), "not with a receipt or a list of receipts"),
    ],
)
def test_unusable_success_answers_acknowledge_nobody(scripted, reply: Reply, reason: str) -> None:
    server = scripted(lambda records: reply)
    outcomes = client_for(server.settings).send(encoded([child(n) for n in range(3)]), batch_id="b")
    assert all(not o.acknowledged and not o.rejected and reason in (o.error or "") for o in outcomes)
    # A 204 stored nothing and is not sent again within the run; a garbled 200 is, MAX_RETRIES times.
    assert len(server.calls) == (1 if reply[0] == 204 else 1 + server.settings.max_retries)


def test_run_stopping_error_carries_the_outcomes_settled_so_far(scripted) -> None:
    answers: Iterator[Reply] = iter([(400, {}, b"[0] la_child_id: bad")])
    server = scripted(lambda records: next(answers, None) or (403, {}, b"Forbidden"))
    with aborted(FatalApiError) as caught:
        client_for(server.settings).send(encoded([child(1), child(2)]), batch_id="b")
    (settled,) = caught.value.outcomes
    assert settled.index == 0 and settled.rejected


def test_proxy_asking_for_credentials(tmp_path: Path) -> None:
    class Proxy(BaseHTTPRequestHandler):
        def do_CONNECT(self) -> None:
            self.send_response(407)
            self.send_header("Proxy-Authenticate", 'Basic realm="council"')
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_CONNECT

        def log_message(self, *args) -> None:
            pass

    proxy = ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        proxy_url = f"http://officer:proxy-pw-77@127.0.0.1:{proxy.server_address[1]}"
        settings = Settings(
            api_endpoint="https://dfe.example/csc/1",
            la_code="999",
            token_endpoint="https://login.example/tenant/oauth2/v2.0/token",
            client_id="c",
            client_secret=Secret(SECRET),
            scope="api://x/.default",
            supplier_key=Secret(SUPPLIER_KEY),
            https_proxy=Secret(proxy_url),
            http_timeout=5.0,
        )
        check = check_endpoint(client_for(settings))
        assert not check.ok and check.stage == "token" and check.exit_code == ExitCode.API
        assert "407" in check.message and "PROXY_URL" in check.message
        assert "proxy-pw-77" not in "\n".join(check.lines())

        plain = settings.replace(api_endpoint="http://dfe.example/csc/1")
        client = client_for(plain)
        client.auth._token = Secret("pretend-token")  # skip the token: test the receiver through the proxy
        client.auth._expires_at = client.auth.clock() + 3600
        client.auth._lifetime = 3600
        with aborted(FatalApiError, match="PROXY_URL"):
            client.send(encoded([child(1)]), batch_id="b")
    finally:
        proxy.shutdown()
        proxy.server_close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a throwaway certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def test_tls_failure_suggests_ca_bundle_and_ca_bundle_fixes_it(scripted, tls_files) -> None:
    cert, key = tls_files
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    https = scripted(receipts_for, tls=context).settings
    check = check_endpoint(client_for(https))
    assert not check.ok and "CA_BUNDLE" in check.message and "certificate" in check.message

    trusted = client_for(https.replace(ca_bundle=cert))
    assert trusted.send(encoded([child(1)]), batch_id="b")[0].acknowledged


def test_tls_error_on_the_receiver_is_fatal(scripted) -> None:
    server = scripted(receipts_for)
    settings = server.settings.replace(api_endpoint=server.settings.api_endpoint.replace("http://", "https://"))
    client = client_for(settings)
    with aborted(FatalApiError) as caught:
        client.send(encoded([child(1)]), batch_id="b")  # an https handshake against a plain-http server
    assert "TLS" in str(caught.value)
    assert client.retries == {}


# -- test-endpoint --------------------------------------------------------------------------------


def test_endpoint_check_passes_and_sends_no_record(sim: Simulator, client: ApiClient) -> None:
    check = check_endpoint(client)
    assert check.ok and check.status == 204 and check.exit_code == ExitCode.OK
    assert "PASS" in check.lines()[0]
    calls = receiver_calls(sim)
    assert [(c.method, c.body) for c in calls] == [("POST", b"[]")]
    assert all(entry.method == "POST" for entry in sim.request_log())


def test_endpoint_check_400_on_empty_body_is_a_pass_with_note(scripted) -> None:
    server = scripted(lambda records: (400, {}, b"Payload was malformed: at least one record is required"))
    check = check_endpoint(client_for(server.settings))
    assert check.ok and check.status == 400 and "auth works, body refused" in check.message
    assert check.note and "empty" in check.note


@pytest.mark.parametrize(
    ("env", "stage", "status", "exit_code", "words"),
    [
        ({"CLIENT_SECRET": "wrong"}, "token", None, ExitCode.AUTH, ["AADSTS7000215", "CLIENT_SECRET"]),
        ({"SUPPLIER_KEY": "wrong-key"}, "endpoint", 401, ExitCode.AUTH, ["SUPPLIER_KEY"]),
        ({"LA_CODE": "998"}, "endpoint", 403, ExitCode.API, ["allow-list", "LA_CODE"]),
        ({"API_ENDPOINT": "{base}/nowhere"}, "endpoint", 404, ExitCode.API, ["API_ENDPOINT"]),
    ],
)
def test_endpoint_check_failures_name_the_cause(
    sim: Simulator, env: dict, stage: str, status: int | None, exit_code: int, words: list[str]
) -> None:
    env = {k: v.format(base=sim.base_url) for k, v in env.items()}
    check = check_endpoint(client_for(settings_for(sim, **env)))
    assert not check.ok and check.stage == stage and check.status == status and check.exit_code == exit_code
    for word in words:
        assert word in check.message
    assert "wrong-key" not in "\n".join(check.lines())


def test_endpoint_check_network_failure(sleeps: Sleeps) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, never listening: refused, and no other server can take it
        port = sock.getsockname()[1]
        settings = Settings(
            api_endpoint=f"http://127.0.0.1:{port}/api",
            la_code="999",
            token_endpoint=f"http://127.0.0.1:{port}/t/oauth2/v2.0/token",
            client_id="c",
            client_secret=Secret(SECRET),
            scope="s/.default",
            supplier_key=Secret(SUPPLIER_KEY),
            http_timeout=2.0,
        )
        check = check_endpoint(client_for(settings, sleeps))
    assert not check.ok and check.stage == "token" and "refused" in check.message


# -- nothing secret or personal in logs or messages ----------------------------------------------


def test_no_secret_token_or_record_content_in_logs(
    sim: Simulator, sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = client_for(settings_for(sim, MAX_RETRIES="1"), sleeps)
    records = [child(n) for n in range(4)]
    records[2] = bad_child(2)
    sim.inject("expire_tokens")
    sim.inject("429", retry_after=1)
    client.send(encoded(records), batch_id="b")
    sim.inject("500", times=3)
    messages: list[str] = []
    with aborted(RetriesExhausted) as caught:
        client.send(encoded([child(9)]), batch_id="c")
    messages.append(str(caught.value))
    bad = client_for(settings_for(sim, SUPPLIER_KEY="wrong-key-Do-Not-Show"), sleeps)
    with aborted(AuthError) as auth_error:
        bad.send(encoded([child(1)]), batch_id="d")
    messages.append(str(auth_error.value))
    messages.extend(o.error or "" for o in client.send(encoded([bad_child(5)]), batch_id="e"))

    token = client.auth.get_token()
    text = caplog.text + "\n".join(messages)
    assert caplog.records
    for value in (SECRET, SUPPLIER_KEY, "wrong-key-Do-Not-Show", token, NAME, "O'Brien", "2015-02-31"):
        assert value not in text
