"""TLS and proxies with real parts: the simulator over HTTPS and a forward proxy, both on loopback.

The simulator's certificate comes from a throwaway CA made here, named like a council firewall's
("CSC Test Firewall CA"), so the tests see what an officer sees when a firewall re-signs traffic.
The CA's private key never leaves this process's memory, and the CA may only vouch for loopback
names (X.509 name constraints), so nothing it signed is of use anywhere else.

The proxy resolves names itself, like a council proxy: the tests address the simulator as
``dfe-sim.test`` and ``login-sim.test`` (the reserved .test domain, which never resolves), so a
request that did not go through the proxy fails, and the session does not bypass the proxy as
it does for 127.0.0.1.
"""

from __future__ import annotations

import base64
import logging
import os
import selectors
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from api_pipeline.dfe.tls import build_ssl_context, parse_certificate
from api_pipeline.dfe.transport import make_session
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from conftest import db_env, insert, run_cli
from local_ca import LocalCA, make_local_ca

x509 = pytest.importorskip("cryptography.x509")
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

SECRET = "tls-client-secret-Do-Not-Show-4d1e"
SUPPLIER_KEY = "tls-supplier-key-Do-Not-Show-8b2f"
PROXY_PASSWORD = "Proxy-Pass-Do-Not-Show-61"  # noqa: S105 - a test value
CA_NAME = "CN=CSC Test Firewall CA, O=Synthetic Council"
API_HOST, TOKEN_HOST = "dfe-sim.test", "login-sim.test"
REPO = Path(__file__).resolve().parents[1]


# -- a throwaway CA and a certificate for the simulator ---------------------------------------------------


@pytest.fixture(scope="module")
def local_ca(tmp_path_factory: pytest.TempPathFactory) -> LocalCA:
    return make_local_ca(tmp_path_factory.mktemp("local-ca"), "CSC Test Firewall CA", API_HOST, (TOKEN_HOST,))


@pytest.fixture
def https_sim(local_ca: LocalCA) -> Iterator[Simulator]:
    with Simulator(client_secret=SECRET, supplier_key=SUPPLIER_KEY, tls_context=local_ca.server_context()) as sim:
        yield sim


def sim_env(sim: Simulator, *, names: bool = False) -> dict[str, str]:
    """The simulator's settings; with ``names``, addressed as dfe-sim.test / login-sim.test (proxy only)."""
    env = sim.settings_env() | {"HTTP_TIMEOUT": "5", "MAX_RETRIES": "1"}
    if names:
        env["API_ENDPOINT"] = env["API_ENDPOINT"].replace("127.0.0.1", API_HOST)
        env["TOKEN_ENDPOINT"] = env["TOKEN_ENDPOINT"].replace("127.0.0.1", TOKEN_HOST)
    return env


# -- a forward proxy ----------------------------------------------------------------------------------------


class ForwardProxy:
    """A CONNECT-only proxy on 127.0.0.1 with its own host table, optionally wanting a user and password.

    ``scheme="NTLM"`` behaves like a proxy that only accepts Windows sign-in: every CONNECT is
    answered 407 with NTLM and Negotiate challenges.
    """

    def __init__(self, *, user: str | None = None, password: str | None = None, scheme: str = "Basic") -> None:
        self.hosts = {API_HOST: "127.0.0.1", TOKEN_HOST: "127.0.0.1"}
        self.expected = None
        if user is not None:
            self.expected = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self.scheme = scheme
        self.seen: list[tuple[str, bool]] = []  # (CONNECT target, let through)
        self._stop = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_CONNECT(self) -> None:
                allowed = proxy._allowed(self.headers.get("Proxy-Authorization"))
                proxy.seen.append((self.path, allowed))
                if not allowed:
                    self.send_response(407)
                    for challenge in ["NTLM", "Negotiate"] if proxy.scheme == "NTLM" else ['Basic realm="council"']:
                        self.send_header("Proxy-Authenticate", challenge)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                host, _, port = self.path.rpartition(":")
                address = proxy.hosts.get(host.lower())
                try:
                    if address is None:
                        raise OSError("unknown host")
                    upstream = socket.create_connection((address, int(port)), timeout=5)
                except (OSError, ValueError):
                    self.send_response(502)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200, "Connection established")
                self.end_headers()
                self.close_connection = True
                proxy._relay(self.connection, upstream)

            def do_GET(self) -> None:
                self.send_response(501)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_POST = do_GET

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, credentials: str = "") -> str:
        return f"http://{credentials}127.0.0.1:{self.port}"

    def _allowed(self, header: str | None) -> bool:
        if self.scheme == "NTLM":
            return False
        return self.expected is None or header == self.expected

    def _relay(self, client: socket.socket, upstream: socket.socket) -> None:
        with selectors.DefaultSelector() as selector, upstream:
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not self._stop.is_set():
                for key, _ in selector.select(timeout=0.2):
                    try:
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        key.data.sendall(data)
                    except OSError:
                        return

    def targets(self) -> set[str]:
        return {target for target, allowed in self.seen if allowed}

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def proxies() -> Iterator[type[ForwardProxy]]:
    started: list[ForwardProxy] = []

    class Started(ForwardProxy):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            started.append(self)

    yield Started
    for proxy in started:
        proxy.close()


def written(tmp_path: Path, *results) -> str:
    """Everything the commands printed, plus every log file they wrote."""
    text = "\n".join(r.out + "\n" + r.err for r in results)
    for path in sorted((tmp_path / "logs").glob("*")) if (tmp_path / "logs").exists() else []:
        text += "\n" + path.read_text(encoding="utf-8")
    return text


# -- TLS ------------------------------------------------------------------------------------------------------


def test_untrusted_certificate_fails_naming_ca_bundle_and_the_issuer(https_sim: Simulator, tmp_path: Path) -> None:
    result = run_cli(["test-endpoint"], environ=sim_env(https_sim), cwd=tmp_path)
    assert result.code == 5, result.out + result.err
    assert result.out.startswith("FAIL (token)")
    assert "could not be verified" in result.out and "CA_BUNDLE" in result.out
    cert_lines = [line for line in result.out.splitlines() if line.startswith("certificate, ")]
    assert len(cert_lines) == 2
    for line in cert_lines:
        assert f"issued by {CA_NAME}" in line and "NOT trusted" in line and "CA_BUNDLE" in line
    assert "trusted certificate authorities: the operating system's certificate store" in result.out
    assert https_sim.request_log() == []  # nothing was sent over an untrusted connection


def test_ca_bundle_makes_test_endpoint_and_run_work(https_sim: Simulator, local_ca: LocalCA, db_path: Path) -> None:
    tmp_path = db_path.parent
    env = sim_env(https_sim) | {"CA_BUNDLE": str(local_ca.ca_pem)} | db_env(db_path)
    check = run_cli(["test-endpoint"], environ=env, cwd=tmp_path)
    assert check.code == 0, check.out + check.err
    assert check.out.startswith("PASS")
    assert f"CA_BUNDLE {local_ca.ca_pem}" in check.out
    assert "proxy: none (direct connection)" in check.out
    expires = (datetime.now(timezone.utc) + timedelta(days=1) - timedelta(minutes=5)).strftime("%Y-%m-%d")
    for label in ("token host", "API host"):
        assert (
            f"certificate, {label} 127.0.0.1:{https_sim.base_url.rsplit(':', 1)[1]}: "
            f"CN={API_HOST}, O=Synthetic Council, issued by {CA_NAME}, expires {expires}, trusted"
        ) in check.out

    insert(db_path, list(make_children(4, seed=11)))
    run = run_cli(["run"], environ=env, cwd=tmp_path)
    assert run.code == 0, run.err
    assert len(https_sim.snapshot()) == 4
    assert SECRET not in written(tmp_path, check, run) and SUPPLIER_KEY not in written(tmp_path, check, run)


def test_verification_cannot_be_turned_off_by_a_caller(https_sim: Simulator) -> None:
    session = make_session(load_settings(command="test-endpoint", environ=sim_env(https_sim)))
    with pytest.raises(requests.exceptions.SSLError):
        session.post(https_sim.token_endpoint, data={}, verify=False, timeout=5)
    assert https_sim.request_log() == []


def test_falls_back_to_certifi_when_truststore_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, local_ca: LocalCA
) -> None:
    monkeypatch.setitem(sys.modules, "truststore", None)  # import truststore -> ImportError
    monkeypatch.setattr(logging.getLogger("api_pipeline"), "propagate", True)  # a CLI test may have unset it
    caplog.set_level("DEBUG", logger="api_pipeline")
    trusted = build_ssl_context(local_ca.ca_pem)
    assert "certifi" in trusted.description and "CA_BUNDLE" in trusted.description
    assert type(trusted.context) is ssl.SSLContext and trusted.context.verify_mode == ssl.CERT_REQUIRED
    # Said at debug level only (a handler left by an earlier test may capture it twice).
    assert {r.levelname for r in caplog.records if "truststore" in r.getMessage()} == {"DEBUG"}


def test_certificate_fields_are_read_from_der(local_ca: LocalCA) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Ærøskøbing Borough Council"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "ICT"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Proxy Inspection CA"),
        ]
    )
    late = datetime(2051, 6, 30, 12, 0, tzinfo=timezone.utc)  # after 2049: GeneralizedTime
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2**150)  # long-form DER lengths
        .not_valid_before(datetime(2025, 1, 1, tzinfo=timezone.utc))
        .not_valid_after(late)
        .sign(key, hashes.SHA256())
    )
    info = parse_certificate(cert.public_bytes(serialization.Encoding.DER))
    assert info.subject == "CN=Proxy Inspection CA, OU=ICT, O=Ærøskøbing Borough Council, C=GB"
    assert info.issuer == info.subject and info.not_after == late

    pem = x509.load_pem_x509_certificate(local_ca.cert_pem.read_bytes())
    info = parse_certificate(pem.public_bytes(serialization.Encoding.DER))
    assert info.subject == f"CN={API_HOST}, O=Synthetic Council" and info.issuer == CA_NAME
    with pytest.raises(ValueError):
        parse_certificate(b"\x30\x03\x02\x01")


def _namespace_problem() -> str | None:
    if sys.platform != "linux" or os.geteuid() != 0:
        return "needs Linux and root (private mount namespace)"
    for tool in ("unshare", "mount", "update-ca-certificates", "openssl"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if not Path("/etc/ssl/certs/ca-certificates.crt").is_file():
        return "needs Debian's /etc/ssl/certs store"
    probe = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, check=False)
    return None if probe.returncode == 0 else "this machine does not allow mount namespaces"


def test_ca_installed_in_the_system_store_is_trusted_without_ca_bundle(
    https_sim: Simulator, local_ca: LocalCA, tmp_path: Path
) -> None:
    """Debian's own procedure (copy to /usr/local/share/ca-certificates, update-ca-certificates), run in a
    private mount namespace over copies of the store, so the machine's real store is never written."""
    problem = _namespace_problem()
    if problem:
        pytest.skip(f"system-store test skipped: {problem}")
    store, local, hooks = tmp_path / "etc-ssl-certs", tmp_path / "local-cas", tmp_path / "no-hooks"
    hooks.mkdir()
    env_file = tmp_path / ".env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in sim_env(https_sim).items()), encoding="utf-8")
    script = f"""
set -e
cp -a /etc/ssl/certs "{store}"
cp -a /usr/local/share/ca-certificates "{local}"
cp "{local_ca.ca_pem}" "{local}/csc-test-firewall-ca.crt"
mount --bind "{store}" /etc/ssl/certs
mount --bind "{local}" /usr/local/share/ca-certificates
update-ca-certificates --hooksdir "{hooks}" > /dev/null
exec "{sys.executable}" -m api_pipeline test-endpoint --env-file "{env_file}"
"""
    environ = {k: v for k, v in os.environ.items() if not k.endswith(("_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"))}
    environ["TMPDIR"] = str(tmp_path)
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=environ,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("PASS")
    assert "trusted certificate authorities: the operating system's certificate store\n" in result.stdout
    assert f"issued by {CA_NAME}" in result.stdout and ", trusted" in result.stdout
    # The machine's own store never saw the test CA.
    body = "".join(local_ca.ca_pem.read_text().splitlines()[1:-1])
    real_store = "".join(Path("/etc/ssl/certs/ca-certificates.crt").read_text().splitlines())
    assert body not in real_store
    assert not Path("/usr/local/share/ca-certificates/csc-test-firewall-ca.crt").exists()


# -- proxies --------------------------------------------------------------------------------------------------


def test_run_and_test_endpoint_go_through_the_proxy(
    https_sim: Simulator, local_ca: LocalCA, db_path: Path, proxies
) -> None:
    tmp_path = db_path.parent
    proxy = proxies(user="svc-csc", password=PROXY_PASSWORD)
    env = (
        sim_env(https_sim, names=True)
        | {"CA_BUNDLE": str(local_ca.ca_pem), "PROXY_URL": proxy.url(f"svc-csc:{PROXY_PASSWORD}@")}
        | db_env(db_path)
    )
    check = run_cli(["-v", "test-endpoint"], environ=env, cwd=tmp_path)
    assert check.code == 0, check.out + check.err
    assert f"proxy: 127.0.0.1:{proxy.port}" in check.out
    port = https_sim.base_url.rsplit(":", 1)[1]
    assert f"certificate, API host {API_HOST}:{port}: CN={API_HOST}" in check.out
    assert f"certificate, token host {TOKEN_HOST}:{port}:" in check.out
    assert check.out.count(", trusted") == 2
    assert proxy.targets() == {f"{API_HOST}:{port}", f"{TOKEN_HOST}:{port}"}

    proxy.seen.clear()
    insert(db_path, list(make_children(3, seed=5)))
    run = run_cli(["-v", "run"], environ=env, cwd=tmp_path)
    assert run.code == 0, run.err
    assert len(https_sim.snapshot()) == 3
    assert proxy.targets() == {f"{API_HOST}:{port}", f"{TOKEN_HOST}:{port}"}
    assert all(allowed for _, allowed in proxy.seen)
    text = written(tmp_path, check, run)
    for value in (PROXY_PASSWORD, SECRET, SUPPLIER_KEY):
        assert value not in text


def test_proxy_url_wins_over_https_proxy(https_sim: Simulator, local_ca: LocalCA, tmp_path: Path, proxies) -> None:
    good, other = proxies(), proxies()
    env_file = tmp_path / ".env"
    env_file.write_text(f"PROXY_URL={good.url()}\n", encoding="utf-8")
    environ = sim_env(https_sim, names=True) | {"CA_BUNDLE": str(local_ca.ca_pem), "HTTPS_PROXY": other.url()}
    result = run_cli(["test-endpoint", "--env-file", str(env_file)], environ=environ, cwd=tmp_path)
    assert result.code == 0, result.out + result.err
    assert good.targets() and not other.seen


@pytest.mark.parametrize(("scheme", "credentials"), [("Basic", ""), ("Basic", "svc-csc:wrong-password@"), ("NTLM", "")])
def test_proxy_wanting_sign_in_gives_the_documented_407_message(
    https_sim: Simulator, local_ca: LocalCA, db_path: Path, proxies, scheme: str, credentials: str
) -> None:
    tmp_path = db_path.parent
    proxy = proxies(user="svc-csc", password=PROXY_PASSWORD, scheme=scheme)
    env = (
        sim_env(https_sim, names=True)
        | {"CA_BUNDLE": str(local_ca.ca_pem), "PROXY_URL": proxy.url(credentials)}
        | db_env(db_path)
    )
    check = run_cli(["test-endpoint"], environ=env, cwd=tmp_path)
    assert check.code == 5 and check.out.startswith("FAIL (token)")
    for words in ("HTTP 407", "PROXY_URL", "http://user:password@proxy:port", "NTLM or Kerberos", "Px"):
        assert words in check.out
    assert "the proxy asked for a user and password (HTTP 407)" in check.out.split("certificate, ", 1)[1]

    insert(db_path, list(make_children(2, seed=3)))
    run = run_cli(["run"], environ=env, cwd=tmp_path)
    assert run.code == 5
    assert "HTTP 407" in run.err and "Px" in run.err
    assert https_sim.request_log() == [] and proxy.seen and not proxy.targets()
    assert "wrong-password" not in written(tmp_path, check, run)


def test_unreachable_proxy_is_named_without_its_password(https_sim: Simulator, tmp_path: Path) -> None:
    with socket.socket() as sock:
        # Bound but never listening: connections are refused, and while the socket is held no
        # other server (another test's proxy) can be given this port.
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        env = sim_env(https_sim, names=True) | {"PROXY_URL": f"http://svc-csc:{PROXY_PASSWORD}@127.0.0.1:{port}"}
        result = run_cli(["test-endpoint"], environ=env, cwd=tmp_path)
    assert result.code == 5
    assert f"the proxy 127.0.0.1:{port} could not be reached (connection refused" in result.out
    assert "PROXY_URL" in result.out and PROXY_PASSWORD not in result.out + result.err


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("socks5://proxy:1080", "SOCKS is not supported"),
        ("http://proxy:port", "port that is not a number"),
        ("http://:8080", "no host name"),
    ],
)
def test_bad_proxy_url_is_reported_without_echoing_it(value: str, words: str) -> None:
    from api_pipeline.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        load_settings(command="test-endpoint", environ={"PROXY_URL": value})
    problems = [p for p in caught.value.problems if p.startswith("PROXY_URL")]
    assert len(problems) == 1 and words in problems[0] and value not in problems[0]


def test_bare_host_and_port_means_http() -> None:
    settings = load_settings(command="demo", environ={"HTTPS_PROXY": "proxy.council.local:8080"})
    assert settings.https_proxy is not None
    assert settings.https_proxy.reveal() == "http://proxy.council.local:8080"


@pytest.mark.parametrize(
    ("detail", "words"),
    [
        ("ProxyError: Unable to connect to proxy | OSError: Tunnel connection failed: 407 Proxy Auth", "HTTP 407"),
        ("OSError: Tunnel connection failed: 403 Forbidden", "refused to open a connection to dfe.example (HTTP 403)"),
        ("NewConnectionError: Failed to establish a new connection: [Errno 111] Connection refused", "refused"),
        ("ConnectTimeoutError: Connection to proxy.local timed out. (connect timeout=5)", "connect timeout"),
        ("NameResolutionError: Failed to resolve 'proxy.local'", "could not be resolved"),
    ],
)
def test_proxy_failures_are_explained(detail: str, words: str) -> None:
    from api_pipeline.dfe.transport import describe_proxy_error

    sentence = describe_proxy_error(detail, "dfe.example", "proxy.local:8080")
    assert words in sentence


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://svc:pw%40x@proxy.local:8080", "proxy.local:8080"),
        ("http://proxy.local", "proxy.local:80"),
        ("https://proxy.local", "proxy.local:443"),
        ("proxy.local:3128", "proxy.local:3128"),
        ("http://[::1]:3128", "[::1]:3128"),
    ],
)
def test_proxy_address_never_shows_credentials(url: str, shown: str) -> None:
    from api_pipeline.dfe.transport import proxy_address

    assert proxy_address(url) == shown
