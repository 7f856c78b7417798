"""TLS for every connection to DfE: whom we trust, and what certificate a host really shows.

Trust comes from the operating system's certificate store through ``truststore`` (on Windows
that is what makes a council's TLS-inspecting firewall work, since IT installs its CA there),
plus ``CA_BUNDLE`` when set. The context is mounted on the run's session only: nothing is
changed process-wide. Verification is never turned off for traffic.

:func:`inspect_certificate` opens one extra connection (through the proxy when there is one)
and reads the certificate the host presents, so ``test-endpoint`` can show who issued it:
a firewall that re-signs traffic shows up as the issuer.
"""

from __future__ import annotations

import base64
import logging
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from requests.adapters import HTTPAdapter

from api_pipeline.dfe.bounded import POOL_CLASSES
from api_pipeline.errors import ConfigError

log = logging.getLogger(__name__)

MAX_PROXY_ANSWER = 64 * 1024  # bytes of a proxy's CONNECT answer we read before giving up


@dataclass(frozen=True)
class TrustedContext:
    """The SSL context for a run and, in words, what it trusts (shown by ``test-endpoint``)."""

    context: ssl.SSLContext
    description: str


def build_ssl_context(ca_bundle: Path | None) -> TrustedContext:
    """The operating system's store (truststore), else certifi's bundle; plus CA_BUNDLE when set."""
    context: ssl.SSLContext
    try:
        import truststore  # optional, and loaded only by commands that talk to DfE (start-up)

        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        description = "the operating system's certificate store"
    except ImportError:
        import certifi  # the fallback, only without truststore

        log.debug("truststore is not available: trusting certifi's CA bundle instead of the system store")
        context = ssl.create_default_context(cafile=certifi.where())
        description = "the public CA bundle built into the program (certifi)"
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_bundle is not None:
        if not ca_bundle.is_file():
            raise ConfigError(f"CA_BUNDLE: {ca_bundle} does not exist or is not a file")
        try:
            context.load_verify_locations(cafile=str(ca_bundle))
        except ssl.SSLError:
            raise ConfigError(
                f"CA_BUNDLE: {ca_bundle} holds no certificate in PEM form (text starting "
                "-----BEGIN CERTIFICATE-----). Ask IT to export the CA certificate as Base-64 encoded X.509"
            ) from None
        except OSError as exc:
            raise ConfigError(f"CA_BUNDLE: cannot read {ca_bundle} ({type(exc).__name__})") from None
        description += f" + CA_BUNDLE {ca_bundle}"
    return TrustedContext(context, description)


class TrustStoreAdapter(HTTPAdapter):
    """An HTTPAdapter whose only trust is the given context: no certifi, and no way to stop verifying.

    ``verify=False`` from any caller is ignored; requests' own CA-bundle handling is bypassed so
    certifi's file is never loaded into the context. Its connections tell :mod:`api_pipeline.dfe.bounded`
    which sockets a request uses, so a request's deadline can cut a host that answers too slowly.
    """

    def __init__(self, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        self.ssl_context = ssl_context  # set first: HTTPAdapter.__init__ builds the pool manager
        super().__init__(**kwargs)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = self.ssl_context
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs.setdefault("ssl_context", self.ssl_context)  # to DfE, inside the CONNECT tunnel
        proxy_kwargs.setdefault("proxy_ssl_context", self.ssl_context)  # to an https:// proxy itself
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = POOL_CLASSES
        return manager

    def build_connection_pool_key_attributes(self, request: Any, verify: Any, cert: Any = None) -> Any:
        return super().build_connection_pool_key_attributes(request, True, None)

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if url.lower().startswith("https"):
            conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None


# ---------------------------------------------------------------------------
# What certificate does a host present?
# ---------------------------------------------------------------------------


class ProxyRefused(Exception):
    """The proxy answered CONNECT with something other than 200."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


@dataclass(frozen=True)
class CertificateReport:
    """What ``test-endpoint`` says about one host's certificate."""

    label: str  # "API host", "token host"
    address: str  # host:port
    plain_http: bool = False
    subject: str | None = None
    issuer: str | None = None
    not_after: datetime | None = None
    trusted: bool | None = None
    problem: str | None = None

    def line(self) -> str:
        head = f"certificate, {self.label} {self.address}:"
        if self.plain_http:
            return f"{head} plain HTTP to this machine, no certificate"
        if self.issuer is None:
            return f"{head} not read ({self.problem or 'no certificate'})"
        expires = f", expires {self.not_after:%Y-%m-%d}" if self.not_after else ""
        text = f"{head} {self.subject or '(no common name)'}, issued by {self.issuer}{expires}"
        if self.trusted:
            return f"{text}, trusted"
        return (
            f"{text}, NOT trusted ({self.problem}). If that issuer is your council's firewall or proxy, "
            "put its CA certificate in CA_BUNDLE or ask IT to install it in the Windows certificate store"
        )


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connect(host: str, port: int, proxy: str | None, timeout: float, user_agent: str) -> socket.socket:
    """A TCP connection to host:port, directly or through an http:// proxy's CONNECT tunnel."""
    if proxy is None:
        return socket.create_connection((host, port), timeout=timeout)
    parts = urlsplit(proxy)
    sock = socket.create_connection((parts.hostname or "", parts.port or 80), timeout=timeout)
    try:
        target = _host_port(host, port)
        head = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {user_agent}\r\n"
        if parts.username:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            head += f"Proxy-Authorization: Basic {base64.b64encode(pair).decode('ascii')}\r\n"
        sock.sendall((head + "\r\n").encode("latin-1"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk or len(answer) > MAX_PROXY_ANSWER:
                raise ConnectionError("the proxy closed the connection during CONNECT")
            answer += chunk
        status_line = answer.split(b"\r\n", 1)[0].decode("latin-1").split()
        status = int(status_line[1]) if len(status_line) > 1 and status_line[1].isdigit() else 0
        if status != 200:
            raise ProxyRefused(status)
    except BaseException:
        sock.close()
        raise
    return sock


def _read_certificate(
    host: str, port: int, context: ssl.SSLContext, proxy: str | None, timeout: float, user_agent: str
) -> bytes:
    with _connect(host, port, proxy, timeout, user_agent) as raw, context.wrap_socket(raw, server_hostname=host) as tls:
        return tls.getpeercert(binary_form=True) or b""


def _untrusting_context() -> ssl.SSLContext:
    """Only for reading a certificate we already know is not trusted, to name its issuer; nothing is sent."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def inspect_certificate(
    label: str, url: str, *, context: ssl.SSLContext, proxy: str | None, timeout: float, user_agent: str
) -> CertificateReport:
    """Handshake with the host of ``url`` (through ``proxy`` if given) and report its certificate.

    When the certificate is not trusted, a second handshake that trusts nothing reads it anyway so
    the report can name the issuer; that connection carries no request and is closed at once.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    address = _host_port(host, port)
    if parts.scheme != "https":
        return CertificateReport(label, address, plain_http=True)
    if proxy is not None and urlsplit(proxy).scheme.lower() != "http":
        return CertificateReport(label, address, problem="not inspected: the check cannot go through an https:// proxy")
    via = " through the proxy" if proxy else ""
    problem: str | None = None
    try:
        der = _read_certificate(host, port, context, proxy, timeout, user_agent)
        trusted = True
    except ssl.SSLCertVerificationError as exc:
        trusted, problem = False, exc.verify_message or exc.reason or "certificate verification failed"
        try:
            der = _read_certificate(host, port, _untrusting_context(), proxy, timeout, user_agent)
        except (OSError, ProxyRefused):
            return CertificateReport(label, address, trusted=False, problem=problem)
    except ProxyRefused as exc:
        if exc.status == 407:
            refusal = "the proxy asked for a user and password (HTTP 407)"
        else:
            refusal = (
                f"the proxy refused the tunnel (HTTP {exc.status})" if exc.status else "the proxy's answer was not HTTP"
            )
        return CertificateReport(label, address, problem=refusal)
    except ssl.SSLError as exc:
        return CertificateReport(label, address, problem=f"TLS handshake failed{via} ({exc.reason or 'SSL error'})")
    except TimeoutError:
        return CertificateReport(label, address, problem=f"no answer within {timeout:g} s{via}")
    except OSError as exc:
        return CertificateReport(label, address, problem=f"could not connect{via} ({type(exc).__name__})")
    try:
        info = parse_certificate(der)
    except ValueError:
        return CertificateReport(label, address, trusted=trusted, problem="the certificate could not be read")
    return CertificateReport(
        label,
        address,
        subject=info.subject,
        issuer=info.issuer,
        not_after=info.not_after,
        trusted=trusted,
        problem=problem,
    )


# ---------------------------------------------------------------------------
# Just enough DER to name a certificate's subject, issuer and expiry, for test-endpoint's report.
# The standard library only decodes verified certificates into a dict, and the untrusted ones are
# the interesting ones. cryptography's x509 would read them too, but it is kept out of the exe:
# its Windows wheel is 3.8 MB (10.5 MB unpacked, 9.9 MB of it one native module) and needs cffi,
# about a quarter more on a 17 MB one-file exe, for three fields that are only shown. Nothing
# here decides trust (the ssl module and truststore do); tests check this parser against
# certificates cryptography makes.
# ---------------------------------------------------------------------------

_NAME_ATTRIBUTES = {b"\x55\x04\x03": "CN", b"\x55\x04\x0b": "OU", b"\x55\x04\x0a": "O", b"\x55\x04\x06": "C"}
_NAME_ORDER = ("CN", "OU", "O", "C")
_STRING_CODECS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be", 0x1C: "utf-32-be"}


@dataclass(frozen=True)
class CertificateInfo:
    subject: str
    issuer: str
    not_after: datetime | None


def _element(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at ``pos``."""
    if pos + 2 > len(data):
        raise ValueError("truncated DER")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    if pos + length > len(data):
        raise ValueError("truncated DER")
    return tag, pos, pos + length


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    found = []
    while start < end:
        element = _element(data, start)
        found.append(element)
        start = element[2]
    return found


def _name(data: bytes, start: int, end: int) -> str:
    """``CN=..., OU=..., O=..., C=...`` from an X.501 Name, most specific first."""
    values: dict[str, list[str]] = {}
    for _, set_start, set_end in _children(data, start, end):  # SET OF AttributeTypeAndValue
        for _, pair_start, pair_end in _children(data, set_start, set_end):
            (_, oid_start, oid_end), (value_tag, value_start, value_end) = _children(data, pair_start, pair_end)[:2]
            key = _NAME_ATTRIBUTES.get(data[oid_start:oid_end])
            if key is None:
                continue
            codec = _STRING_CODECS.get(value_tag, "latin-1")
            values.setdefault(key, []).append(data[value_start:value_end].decode(codec, errors="replace"))
    return ", ".join(f"{key}={value}" for key in _NAME_ORDER for value in values.get(key, []))


def _time(data: bytes, tag: int, start: int, end: int) -> datetime | None:
    text = data[start:end].decode("ascii", errors="replace").rstrip("Z")
    # UTCTime (tag 0x17) is YYMMDDHHMMSS; GeneralizedTime is YYYYMMDDHHMMSS, maybe with fractions.
    shape, text = ("%y%m%d%H%M%S", text) if tag == 0x17 else ("%Y%m%d%H%M%S", text[:14])
    try:
        moment = datetime.strptime(text, shape)
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc)


def parse_certificate(der: bytes) -> CertificateInfo:
    """Subject, issuer and expiry of a DER certificate; ValueError if it is not one."""
    _, cert_start, cert_end = _element(der, 0)
    _, tbs_start, tbs_end = _element(der, cert_start)
    fields = _children(der, tbs_start, tbs_end)
    if fields and fields[0][0] == 0xA0:  # explicit version
        fields = fields[1:]
    if len(fields) < 5:
        raise ValueError("not a certificate")
    _serial, _algorithm, issuer, validity, subject = fields[:5]
    times = _children(der, validity[1], validity[2])
    not_after = _time(der, *times[1]) if len(times) == 2 else None
    return CertificateInfo(
        subject=_name(der, subject[1], subject[2]),
        issuer=_name(der, issuer[1], issuer[2]),
        not_after=not_after,
    )
