"""Alerts (issue 28, part 1; DESIGN §13): one message per run, by e-mail and by webhook, tested against
a real SMTP server (aiosmtpd, STARTTLS with a throwaway CA) and a real HTTP receiver, both on 127.0.0.1.

NOTIFY_ON decides which runs send one; each webhook format has its shape; a relay whose certificate
is not trusted gets nothing; a receiver that redirects, hangs or fails costs a warning and a few
seconds, never the run's exit code; and neither message carries a secret or a record's value.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from conftest import MARKER, db_env, insert, run_cli
from local_ca import LocalCA, make_local_ca

aiosmtpd_controller = pytest.importorskip("aiosmtpd.controller", reason="aiosmtpd is in the test extra")
x509 = pytest.importorskip("cryptography.x509")
from aiosmtpd.smtp import AuthResult, LoginPassword  # noqa: E402

CLIENT_SECRET = "Notify-client-secret-Do-Not-Show-3c1a"
SUPPLIER_KEY = "Notify-supplier-key-Do-Not-Show-77b0"
SMTP_USER = "csc-alerts"
SMTP_PASSWORD = "Notify-smtp-password-Do-Not-Show-91e4"  # noqa: S105 - a test value
SIGNATURE = "NotifyWebhookSignatureDoNotShow5d2e"
FROM, TO = "csc-pipeline@council.example", "csc-team@council.example, duty@council.example"


# -- a throwaway CA and a certificate for 127.0.0.1 --------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    """The CA's certificate (what CA_BUNDLE names), and the relay's certificate and key."""
    return make_local_ca(tmp_path_factory.mktemp("notify-ca"), "Synthetic Council Mail CA", "localhost")


# -- a mail relay: aiosmtpd on 127.0.0.1, STARTTLS required, a login required ---------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Relay:
    """A real SMTP server that takes mail only after STARTTLS and a login, and keeps what it is given."""

    def __init__(self, certificates: LocalCA) -> None:
        self.messages: list[bytes] = []
        self.logins: list[tuple[bytes, bytes]] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificates.cert_pem, certificates.key_pem)
        relay = self

        class Handler:
            async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
                relay.messages.append(envelope.original_content or envelope.content)
                return "250 OK"

        def authenticate(server, session, envelope, mechanism, auth_data) -> AuthResult:
            if isinstance(auth_data, LoginPassword):
                relay.logins.append((auth_data.login, auth_data.password))
                ok = auth_data.login == SMTP_USER.encode() and auth_data.password == SMTP_PASSWORD.encode()
                return AuthResult(success=ok)
            return AuthResult(success=False)

        self.port = _free_port()
        self.controller = aiosmtpd_controller.Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            tls_context=context,
            require_starttls=True,
            authenticator=authenticate,
            auth_required=True,
            auth_require_tls=True,
        )
        self.controller.start()

    def env(self, certificates: LocalCA | None) -> dict[str, str]:
        env = {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(self.port),
            "SMTP_USER": SMTP_USER,
            "SMTP_PASSWORD": SMTP_PASSWORD,
            "NOTIFY_EMAIL_FROM": FROM,
            "NOTIFY_EMAIL_TO": TO,
        }
        if certificates is not None:
            env["CA_BUNDLE"] = str(certificates.ca_pem)
        return env

    def parsed(self) -> list[EmailMessage]:
        return [email.message_from_bytes(raw, policy=email.policy.default) for raw in self.messages]  # type: ignore[misc]

    def close(self) -> None:
        self.controller.stop()


@pytest.fixture
def relay(certificates: LocalCA) -> Iterator[Relay]:
    found = Relay(certificates)
    try:
        yield found
    finally:
        found.close()


# -- a webhook receiver: http.server on 127.0.0.1 -----------------------------------------------------------


class Receiver:
    """An HTTP receiver that records each POST and answers as ``mode`` says: ok (202), redirect (302 to
    ``redirect_to``), hang (no answer until closed), fail (500, echoing the address it was called at)."""

    def __init__(self, mode: str = "ok", redirect_to: str = "") -> None:
        self.mode, self.redirect_to = mode, redirect_to
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver.posts.append((self.path, dict(self.headers), body))
                if receiver.mode == "hang":
                    receiver.release.wait(30)
                    return
                if receiver.mode == "redirect":
                    self.send_response(302)
                    self.send_header("Location", receiver.redirect_to)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                echo = f"no flow for {self.path.rpartition('&')[2]} at {self.path}".encode()  # sig=... first
                status, answer = (500, echo) if receiver.mode == "fail" else (202, b"")
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        port = self.server.server_address[1]
        return (
            f"http://127.0.0.1:{port}/workflows/0a1b2c/triggers/manual/paths/invoke"
            f"?api-version=2016-06-01&sp=%2Ftriggers%2Fmanual%2Frun&sig={SIGNATURE}"
        )

    def bodies(self) -> list[dict]:
        return [json.loads(body) for _, _, body in self.posts]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    try:
        yield found
    finally:
        found.close()


# -- runs ----------------------------------------------------------------------------------------------------


@pytest.fixture
def sim() -> Iterator[Simulator]:
    with Simulator(client_secret=CLIENT_SECRET, supplier_key=SUPPLIER_KEY) as found:
        yield found


def _invalid(child: dict) -> dict:
    child["child_details"]["sex"] = "XX"  # not a code the schema allows: invalid, not sent
    return child


def base_env(sim: Simulator, db_path: Path, tmp_path: Path, **env: str) -> dict[str, str]:
    return (
        dict(sim.settings_env())
        | db_env(db_path)
        | {"LOG_DIR": str(tmp_path / "logs"), "MAX_RETRIES": "1", "HTTP_TIMEOUT": "5"}
        | env
    )


def summaries(tmp_path: Path) -> list[dict]:
    found = sorted((tmp_path / "logs").glob("*.summary.json"), key=lambda p: p.stat().st_mtime)
    return [json.loads(path.read_text(encoding="utf-8")) for path in found]


def all_logs(tmp_path: Path) -> str:
    return "\n".join(path.read_text(encoding="utf-8") for path in (tmp_path / "logs").glob("*.log"))


# Which of three runs NOTIFY_ON sends an alert for: a clean one (exit 0), one with an invalid row
# (exit 1) and one DfE's sign-in refuses (exit 4).
EXPECTED = {
    "never": [False, False, False],
    "failure": [False, True, True],
    "problems": [False, True, True],
    "always": [True, True, True],
}


@pytest.mark.parametrize("notify_on", list(EXPECTED))
def test_notify_on_decides_which_runs_send_an_alert(
    notify_on: str, sim: Simulator, db_path: Path, tmp_path: Path, receiver: Receiver
) -> None:
    env = base_env(
        sim, db_path, tmp_path, NOTIFY_ON=notify_on, NOTIFY_WEBHOOK_URL=receiver.url, NOTIFY_WEBHOOK_FORMAT="json"
    )
    children = list(make_children(4, seed=28))
    insert(db_path, children[:2])
    codes, sent = [], []
    assert run_cli(["run"], environ=env, cwd=tmp_path).code == 0
    sent.append(len(receiver.posts))
    insert(db_path, [_invalid(children[2])])
    assert run_cli(["run"], environ=env, cwd=tmp_path).code == 1
    sent.append(len(receiver.posts))
    insert(db_path, [children[3]])
    assert run_cli(["run"], environ=env | {"CLIENT_SECRET": "Notify-wrong-secret-0000"}, cwd=tmp_path).code == 4
    sent.append(len(receiver.posts))
    codes = [s.get("exit_code") for s in summaries(tmp_path)]
    assert codes == [0, 1, 4]

    alerted = [after > before for before, after in zip([0, *sent], sent)]
    assert alerted == EXPECTED[notify_on]
    bodies = receiver.bodies()
    assert [b["exit_code"] for b in bodies] == [c for c, a in zip(codes, alerted) if a]
    for body, summary in zip(bodies, [s for s, a in zip(summaries(tmp_path), alerted) if a]):
        assert body["run_id"] == summary["run_id"]
        assert body["la_code"] == sim.la_code
        assert summary["alerts_sent"] == ["webhook"] and summary["alert_failures"] == []
        assert Path(body["log"]).is_file() and Path(body["report"]).is_file()
    if notify_on == "always":
        clean, invalid, refused = bodies
        assert clean["level"] == "ok" and clean["counts"] == {"sent": 2}
        assert invalid["level"] == "problems" and invalid["counts"]["invalid"] == 1
        assert [p["field"] for p in invalid["problems"]] and all(p["rows"] == 1 for p in invalid["problems"])
        assert refused["level"] == "failed" and refused["exit_meaning"].startswith("authentication error")
        assert any("test-endpoint" in step for step in refused["next_steps"])


def test_a_run_alert_by_e_mail_goes_through_starttls_and_names_the_problems_by_field(
    sim: Simulator, db_path: Path, tmp_path: Path, relay: Relay, certificates: LocalCA
) -> None:
    children = list(make_children(3, seed=29))
    insert(db_path, [*children[:2], _invalid(children[2])])
    env = base_env(sim, db_path, tmp_path, NOTIFY_ON="problems") | relay.env(certificates)
    assert run_cli(["run"], environ=env, cwd=tmp_path).code == 1

    (message,) = relay.parsed()
    assert relay.logins == [(SMTP_USER.encode(), SMTP_PASSWORD.encode())]  # over TLS: the relay requires it
    assert message["From"] == FROM and message["To"] == TO
    assert f"LA {sim.la_code}: run finished with problems" in message["Subject"]
    text = message.get_content()
    (summary,) = summaries(tmp_path)
    assert summary["run_id"] in text
    assert "1: finished, but some records failed or are invalid" in text
    assert "Problems by field (rows):" in text and "child_details" in text
    assert "What to do next:" in text and str(tmp_path / "logs") in text
    assert summary["alerts_sent"] == ["e-mail"]


def test_test_notify_sends_through_each_channel(
    sim: Simulator, tmp_path: Path, relay: Relay, receiver: Receiver, certificates: LocalCA
) -> None:
    env = relay.env(certificates) | {"NOTIFY_WEBHOOK_URL": receiver.url, "LA_CODE": "846"}
    result = run_cli(["test-notify"], environ=env, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "e-mail: sent: e-mailed to 2 addresses" in result.out
    assert "webhook: sent: posted to the webhook at 127.0.0.1 (teams format, HTTP 202)" in result.out
    assert "NOTIFY_ON is never" in result.out  # and so runs send nothing yet
    (message,) = relay.parsed()
    assert message["Subject"] == "CSC API Pipeline, LA 846: test alert"
    assert len(receiver.posts) == 1


@pytest.mark.parametrize("form", ["teams", "slack", "json"])
def test_each_webhook_format_has_its_shape(form: str, tmp_path: Path, receiver: Receiver) -> None:
    env = {"NOTIFY_WEBHOOK_URL": receiver.url, "NOTIFY_WEBHOOK_FORMAT": form, "LA_CODE": "846"}
    assert run_cli(["test-notify"], environ=env, cwd=tmp_path).code == 0
    ((path, headers, _),) = receiver.posts
    assert path.endswith(f"sig={SIGNATURE}")
    assert headers["Content-Type"].startswith("application/json")
    (body,) = receiver.bodies()
    title = "CSC API Pipeline, LA 846: test alert"
    if form == "teams":  # a Teams Workflows trigger takes a message with an Adaptive Card attached
        assert body["type"] == "message"
        (attachment,) = body["attachments"]
        assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
        card = attachment["content"]
        assert card["type"] == "AdaptiveCard" and card["body"][0]["text"] == title
        assert {"title": "LA code", "value": "846"} in card["body"][1]["facts"]
    elif form == "slack":  # Slack's incoming webhook: fallback text and blocks
        assert body["text"] == title
        assert body["blocks"][0] == {"type": "header", "text": {"type": "plain_text", "text": title}}
        assert "*LA code:* 846" in body["blocks"][1]["text"]["text"]
    else:
        assert body["title"] == title and body["la_code"] == "846" and body["test"] is True
        assert body["tool"] == "csc-api-pipeline" and title in body["text"]


def test_a_relay_whose_certificate_is_not_trusted_gets_nothing(
    sim: Simulator, db_path: Path, tmp_path: Path, relay: Relay
) -> None:
    env = relay.env(None)  # no CA_BUNDLE: the throwaway CA is trusted by nobody
    result = run_cli(["test-notify"], environ=env, cwd=tmp_path)
    assert result.code == 5
    assert "e-mail: NOT sent: the TLS certificate of the mail relay 127.0.0.1" in result.out
    assert "CA_BUNDLE" in result.out
    assert relay.messages == [] and relay.logins == []  # the password never left

    insert(db_path, list(make_children(2, seed=30)))
    run = run_cli(["run"], environ=base_env(sim, db_path, tmp_path, NOTIFY_ON="always") | env, cwd=tmp_path)
    assert run.code == 0  # the run's own exit code
    (summary,) = summaries(tmp_path)
    assert summary["exit_code"] == 0 and summary["alerts_sent"] == []
    (failure,) = summary["alert_failures"]
    assert "could not be verified" in failure
    assert "WARNING" in all_logs(tmp_path) and "alert e-mail: NOT sent" in all_logs(tmp_path)
    assert relay.messages == []


def test_a_login_is_never_sent_without_starttls(tmp_path: Path, relay: Relay) -> None:
    env = relay.env(None) | {"SMTP_STARTTLS": "false"}
    result = run_cli(["test-notify"], environ=env, cwd=tmp_path)
    assert result.code == 2
    assert "SMTP_STARTTLS is false" in result.err
    assert relay.logins == []


@pytest.mark.parametrize("mode", ["redirect", "hang", "fail"])
def test_a_receiver_that_redirects_hangs_or_fails_costs_a_warning_not_the_exit_code(
    mode: str, sim: Simulator, db_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("api_pipeline.notify.channels.ALERT_SECONDS", 2.0)
    elsewhere = Receiver()
    bad = Receiver(mode, redirect_to=elsewhere.url)
    try:
        insert(db_path, list(make_children(2, seed=31)))
        env = base_env(sim, db_path, tmp_path, NOTIFY_ON="always", NOTIFY_WEBHOOK_URL=bad.url)
        started = time.monotonic()
        result = run_cli(["run"], environ=env, cwd=tmp_path)
        took = time.monotonic() - started
    finally:
        bad.close()
        elsewhere.close()
    assert result.code == 0
    assert len(bad.posts) == 1 and elsewhere.posts == []  # one try; a redirect is never followed
    (summary,) = summaries(tmp_path)
    assert summary["exit_code"] == 0 and summary["alerts_sent"] == []
    (failure,) = summary["alert_failures"]
    expected = {
        "redirect": "answered with a redirect (HTTP 302) to http://127.0.0.1, which is never followed",
        "hang": "did not answer within 2 seconds",
        "fail": "answered HTTP 500",
    }[mode]
    assert expected in failure
    assert expected in all_logs(tmp_path)
    assert took < 15  # the run itself is quick: the alert took its two seconds at most, not a hang's thirty


def test_neither_message_carries_a_secret_or_a_record_value(
    sim: Simulator, db_path: Path, tmp_path: Path, relay: Relay, certificates: LocalCA
) -> None:
    children = list(make_children(4, seed=32))
    for child in children[:2]:
        child["child_details"].update(MARKER)
    _invalid(children[1])  # a child with the marker's values that fails the schema: its field is named
    insert(db_path, children)
    echoing = Receiver("fail")  # a 500 that echoes the address it was called at, signature and all
    plain = Receiver()
    said: list[str] = []  # what the commands printed
    try:
        for webhook in (plain, echoing):
            env = base_env(sim, db_path, tmp_path, NOTIFY_ON="always", NOTIFY_WEBHOOK_URL=webhook.url)
            env |= relay.env(certificates)
            for argv, extra in (
                (["-vv", "run"], {}),
                (["-vv", "run"], {"CLIENT_SECRET": "Notify-wrong-secret-4411"}),
                (["test-notify"], {}),
            ):
                result = run_cli(argv, environ=env | extra, cwd=tmp_path)
                said += [result.out, result.err]
    finally:
        echoing.close()
        plain.close()

    assert len(relay.messages) == 6 and len(plain.posts) == 3 and len(echoing.posts) == 3
    carried = [raw.decode("utf-8", "replace") for raw in relay.messages]
    carried += [body.decode("utf-8") for _, _, body in plain.posts + echoing.posts]
    assert any("child_details" in text for text in carried)  # the invalid row's field is named...
    written = carried + said + [all_logs(tmp_path)] + [json.dumps(s) for s in summaries(tmp_path)]
    planted = [CLIENT_SECRET, SUPPLIER_KEY, SMTP_PASSWORD, SIGNATURE, "Notify-wrong-secret-4411", *MARKER.values()]
    for text in written:
        for value in planted:
            assert value not in text  # ...but no secret, no signature and no value of any record
    assert any("answered HTTP 500" in line and "<hidden>" in line for line in all_logs(tmp_path).splitlines())
    assert any("webhook: NOT sent" in text and "<hidden>" in text for text in said)  # test-notify's line too
