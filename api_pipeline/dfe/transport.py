"""The HTTP path to DfE and its token endpoint, shared by ``api`` and ``auth`` (DESIGN §6, §9).

One :class:`requests.Session` per run (:func:`make_session`): keep-alive, an honest User-Agent,
trust and proxy from Settings only. What a failed connection means, in a sentence naming the host
and never a password (:func:`describe_network_error`, :func:`reaching`); how long a server asks us
to wait (:func:`parse_retry_after`); and what of an answer may be shown (:func:`mask_answer`):
DfE's and Azure's answers can echo secrets and record values, so they are masked before they are
logged or raised. Which proxy a request uses: PROXY_URL or HTTPS_PROXY, NO_PROXY, loopback always
direct; NTLM/Kerberos proxies are reached through a local relay such as Px (docs: proxies-and-tls.md).
"""

from __future__ import annotations

import functools
import json
import re
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests

from api_pipeline.about import APP_NAME, __version__
from api_pipeline.dfe.tls import TrustStoreAdapter, build_ssl_context
from api_pipeline.errors import FatalApiError, TransientNetworkError
from api_pipeline.settings.config import Settings
from api_pipeline.settings.masking import mask_secrets
from api_pipeline.settings.options import LOOPBACK_HOSTS
from api_pipeline.wording import printable

SUMMARY_LIMIT = 200  # characters of a (masked) answer we are willing to show


# ---------------------------------------------------------------------------
# Masking what an answer may echo.
# ---------------------------------------------------------------------------

# Every pattern here is matched in linear time: no quantified group can overlap the one after
# it, so a hostile body of any shape costs one pass (an e-mail is found from its "@" outwards).
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_QUOTED = re.compile(r"'[^'\n]*'|\"[^\"\n]*\"|‘[^‘’\n]*’|“[^“”\n]*”")
_DATE = re.compile(r"\b\d{4}-\d{2}-\d{2}(?:[T _]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?\b")
_LOCAL_PART_REVERSED = re.compile(r"[\w.+-]+")
_DOMAIN = re.compile(r"[\w-]+(?:\.[\w-]+)+\b")
_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")
MIN_ECHO_WORD = 2  # single characters of a record (codes like "M", "F") identify nobody and collide with text
ECHO = "…"


def _mask_emails(text: str) -> str:
    """``name@host.example`` → ``<email>``, working outwards from each "@" (one pass)."""
    if "@" not in text:
        return text
    pieces = text.split("@")
    out: list[str] = []
    left = pieces[0]
    for right in pieces[1:]:
        local = _LOCAL_PART_REVERSED.match(left[::-1])
        domain = _DOMAIN.match(right)
        name = local.group()[::-1].lstrip(".+-") if local else ""
        if name and domain:
            out.append(left[: len(left) - len(name)] + "<email>")
            left = right[domain.end() :]
        else:
            out.append(left + "@")
            left = right
    out.append(left)
    return "".join(out)


@dataclass(frozen=True)
class AnswerMask:
    """What must not be echoed from an answer: the run's secrets, and the words of the request sent.

    DfE's and the gateway's messages can repeat the token, the SupplierKey or a record's values
    (a name, a postcode, a UPN), quoted or not. The request's words are read from its body only
    when an answer needs masking, which successful answers never do.
    """

    secrets: tuple[str, ...] = ()
    sent: bytes = b""

    @functools.cached_property
    def words(self) -> frozenset[str]:
        if not self.sent:
            return frozenset()
        try:
            document = json.loads(self.sent.decode("utf-8", errors="replace"))
        except (ValueError, RecursionError):
            document = None
        texts = _strings(document) if document is not None else iter([self.sent.decode("utf-8", "replace")])
        return frozenset(w for text in texts for w in _WORD.findall(text) if len(w) >= MIN_ECHO_WORD)


def mask_answer(text: str, limit: int = SUMMARY_LIMIT, mask: AnswerMask | None = None) -> str:
    """Hide secrets, quoted values, dates, e-mail addresses and echoed record words; one line, with
    control characters escaped; cap the length.

    DfE's messages can echo the value that failed (a name, a date of birth); what is left
    (field paths, rule names, status words) is enough to act on and safe to log. Every answer
    shown, logged or stored in ``api_response`` passes here, so an escape sequence in one (a clear
    screen, a window title) reaches no console or log as itself.
    """
    text = mask_secrets(text, mask.secrets if mask else ())
    text = _DATE.sub("<date>", text)
    text = _mask_emails(text)
    text = _QUOTED.sub("'…'", text)
    words = mask.words if mask else frozenset()
    if words:
        text = _WORD.sub(lambda m: ECHO if m.group() in words else m.group(), text)
    text = printable(_SPACE.sub(" ", text).strip())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a parsed JSON answer, in document order (no recursion: any depth)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend(reversed(item))


def parse_json(content: bytes) -> Any:
    """An answer's JSON, or None when it is not JSON (or nested deeper than the parser goes)."""
    try:
        return json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None


def body_text(response: requests.Response) -> str:
    """The answer as plain text: JSON error documents are flattened to their strings."""
    try:
        text = response.content.decode("utf-8", errors="replace")
    except requests.RequestException:  # a body we cannot even read says nothing useful
        return ""
    stripped = text.strip()
    if stripped[:1] in ("{", "["):
        try:
            flat = "\n".join(_strings(json.loads(stripped)))
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            return text
        # JSON may escape half a surrogate pair ("\ud800"), which no UTF-8 log line, console or
        # column can hold: shown as U+FFFD, as the bytes' decoding above shows what it cannot read.
        return _LONE_SURROGATE.sub("\ufffd", flat)
    return text


def summarise(response: requests.Response, mask: AnswerMask | None = None) -> str:
    """``HTTP 503 Service Unavailable: <masked first 200 characters>`` for messages and logs."""
    head = f"HTTP {response.status_code}"
    if response.reason:
        head += f" {mask_answer(str(response.reason), 60, mask)}"
    text = mask_answer(body_text(response), mask=mask)
    return f"{head}: {text}" if text else head


# ---------------------------------------------------------------------------
# Retry-After, redirects, and what a failed connection means.
# ---------------------------------------------------------------------------


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds or an HTTP-date."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now())


def _chain(exc: BaseException) -> str:
    """All the text of an exception and its causes, for recognising the cause (never shown)."""
    parts: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    for arg in exc.args:
        if isinstance(arg, BaseException):
            parts.append(f"{type(arg).__name__}: {arg}")
    return " | ".join(parts)


def describe_network_error(
    exc: requests.RequestException, *, host: str, timeout: float, proxy: str | None = None
) -> tuple[str, str]:
    """A short cause label and a sentence naming what failed and what to check.

    Only fixed sentences, the host name and the proxy's ``host:port`` are returned: ``str(exc)``
    can carry a proxy URL with its password, so it is read but never shown.
    """
    detail = _chain(exc)
    lowered = detail.lower()
    if isinstance(exc, requests.exceptions.SSLError):
        if "certificate" in lowered or "verify" in lowered:
            return "tls", (
                f"the TLS certificate of {host} could not be verified. If your network inspects TLS "
                "(a firewall or proxy that re-signs traffic), set CA_BUNDLE to a PEM file with its "
                "certificate authority, or ask IT to install it in the Windows certificate store; "
                "test-endpoint shows who issued the certificate. TLS verification is never turned off"
            )
        return "tls", (
            f"the TLS handshake with {host} failed. Check PROXY_URL and CA_BUNDLE, and ask IT "
            "whether a firewall inspects or blocks TLS to this host"
        )
    if isinstance(exc, requests.exceptions.ProxyError):
        return "proxy", describe_proxy_error(detail, host, proxy)
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "connect timeout", (
            f"no connection to {host} within the connect timeout. Check the network, firewall and "
            "whether a proxy is needed (PROXY_URL)"
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return "timeout", f"{host} did not answer within {timeout:g} seconds (HTTP_TIMEOUT)"
    if any(
        word in lowered
        for word in (
            "name or service not known",
            "nodename nor servname",
            "getaddrinfo",
            "name resolution",
            "failed to resolve",
            "no address associated",
        )
    ):
        return "dns", (
            f"the host name {host} could not be resolved (DNS). Check the URL, the network, and "
            "whether a proxy is needed (PROXY_URL)"
        )
    if "refused" in lowered:
        return "connection refused", (
            f"{host} refused the connection. Check the URL and port, and whether a proxy or firewall is in the way"
        )
    if any(
        word in lowered
        for word in (
            "reset",
            "aborted",
            "remotedisconnected",
            "broken pipe",
            "connection closed",
            "connection broken",
            "without response",
        )
    ):
        return "connection reset", f"the connection to {host} was dropped before an answer came"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return "connection error", f"could not talk to {host} (network error)"
    return "request error", f"the request to {host} could not be made ({type(exc).__name__})"


def redirect_host(response: requests.Response) -> str:
    """The host a 3xx answer points at (its ``Location``), for the message; never its path or credentials."""
    location = response.headers.get("Location", "").strip()
    if not location:
        return "nowhere (no Location header)"
    try:
        parts = urlsplit(urljoin(response.url or "", location))
        host = parts.hostname or ""
    except ValueError:
        host = ""
    if not host:
        return "an address that is not a URL"
    return printable(f"{parts.scheme}://{host}" if parts.scheme in ("http", "https") else host)


@contextmanager
def reaching(place: str, session: requests.Session, url: str, *, timeout: float) -> Iterator[None]:
    """Turn a failed request to ``place`` ("DfE", "the token endpoint") at ``url`` into the error that
    says what to do.

    Timeouts, resets and other connection failures are :class:`TransientNetworkError` (retried);
    TLS, proxy and anything else :class:`FatalApiError`, the cause named by
    :func:`describe_network_error` with the host and the proxy ``session`` uses for ``url``. An
    answer too slow or too large (``bounded``) is the caller's.
    """

    def describe(exc: requests.RequestException) -> tuple[str, str]:
        proxy = proxy_address(session_proxy(session, url))
        return describe_network_error(exc, host=urlsplit(url).hostname or url, timeout=timeout, proxy=proxy)

    try:
        yield
    except (requests.exceptions.SSLError, requests.exceptions.ProxyError) as exc:
        _, sentence = describe(exc)
        raise FatalApiError(f"Cannot reach {place}: {sentence}") from None
    except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
        cause, sentence = describe(exc)
        raise TransientNetworkError(f"Cannot reach {place}: {sentence}", cause=cause, detail=sentence) from None
    except requests.RequestException as exc:
        _, sentence = describe(exc)
        raise FatalApiError(f"Cannot reach {place}: {sentence}") from None
    except OSError as exc:  # e.g. an unreadable CA bundle, raised by the TLS layer
        raise FatalApiError(
            f"Cannot reach {place}: a local file needed for TLS could not be used ({type(exc).__name__}). "
            "Check CA_BUNDLE"
        ) from None


# ---------------------------------------------------------------------------
# Proxies.
# ---------------------------------------------------------------------------


def proxy_auth_advice() -> str:
    """What to do about a 407, the same wherever one is met."""
    return (
        "the proxy asked for a user and password (HTTP 407). If it takes a user and password, put them "
        "in PROXY_URL (http://user:password@proxy:port; keep it in the Credential Manager with set-secret). If it "
        "uses Windows sign-in (NTLM or Kerberos), run a local relay such as Px and set "
        "PROXY_URL=http://127.0.0.1:3128. Or ask IT to let this server reach DfE without proxy sign-in"
    )


def proxy_address(proxy_url: str | None) -> str | None:
    """``host:port`` of a proxy URL, never its user or password."""
    if not proxy_url:
        return None
    parts = urlsplit(proxy_url if "://" in proxy_url else f"http://{proxy_url}")
    try:
        port = parts.port
    except ValueError:
        port = None
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port or (443 if parts.scheme == 'https' else 80)}"


_TUNNEL_STATUS = re.compile(r"tunnel connection failed: (\d{3})", re.IGNORECASE)


def describe_proxy_error(detail: str, host: str, proxy: str | None) -> str:
    """A sentence for a failed proxy connection, from the exception text ``detail`` (read, never shown).

    ``proxy`` is the proxy's ``host:port``; ``host`` is where we were going.
    """
    lowered = detail.lower()
    where = f"the proxy {proxy}" if proxy else "the proxy"
    if "407" in detail:
        return proxy_auth_advice()
    tunnel = _TUNNEL_STATUS.search(detail)
    if tunnel:
        return (
            f"{where} refused to open a connection to {host} (HTTP {tunnel.group(1)}). Ask IT to allow "
            f"{host} through the proxy for this server"
        )
    if "timed out" in lowered or "timeout" in lowered:
        why = "no answer within the connect timeout"
    elif "refused" in lowered:
        why = "connection refused: nothing listens there"
    elif any(word in lowered for word in ("name or service not known", "getaddrinfo", "resolve", "nodename")):
        why = "its name could not be resolved"
    else:
        why = "the connection failed"
    return (
        f"{where} could not be reached ({why}). Check PROXY_URL (or HTTPS_PROXY), that the proxy or local relay "
        "is running, and NO_PROXY"
    )


def _bypasses_proxy(host: str, no_proxy: str | None) -> bool:
    """Loopback, ``*`` and ``NO_PROXY`` entries (``host``, ``.suffix``, ``suffix``, CIDR) go direct."""
    host = host.lower().strip("[]")
    if host in LOOPBACK_HOSTS:
        return True
    for entry in (no_proxy or "").replace(";", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        if "/" in entry and requests.utils.is_valid_cidr(entry):
            if requests.utils.is_ipv4_address(host) and requests.utils.address_in_network(host, entry):
                return True
            continue
        entry = entry.split(":")[0] if entry.count(":") == 1 else entry  # host:port
        suffix = entry.lstrip(".")
        if host == suffix or host.endswith("." + suffix):
            return True
    return False


def session_proxy(session: requests.Session, url: str) -> str | None:
    """The proxy URL ``session`` uses for ``url``; works for a plain Session too (tests build those)."""
    chooser = getattr(session, "proxy_for", None)
    if chooser is not None:
        return chooser(url)
    return session.proxies.get(urlsplit(url).scheme) or None


# ---------------------------------------------------------------------------
# The session.
# ---------------------------------------------------------------------------


class _PipelineSession(requests.Session):
    """A Session whose proxy and CA choices come from Settings only, never the environment."""

    def __init__(self, no_proxy: str | None) -> None:
        super().__init__()
        self._no_proxy = no_proxy
        self.ssl_context: ssl.SSLContext | None = None
        self.trust = ""

    def proxy_for(self, url: str) -> str | None:
        """The proxy URL this session uses for ``url`` (with its credentials), or None for a direct connection."""
        if _bypasses_proxy(urlsplit(url).hostname or "", self._no_proxy):
            return None
        return self.proxies.get(urlsplit(url).scheme) or None

    def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
        merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if _bypasses_proxy(urlsplit(url).hostname or "", self._no_proxy):
            merged["proxies"] = {}
        return merged


def user_agent() -> str:
    """An honest User-Agent: the tool, its version and the HTTP library (DESIGN §6)."""
    return f"{APP_NAME}/{__version__} (+python-requests/{requests.__version__})"


def make_session(settings: Settings) -> requests.Session:
    """The one HTTP session for a run: keep-alive, User-Agent, trust and proxy from Settings.

    Trust is the operating system's certificate store plus ``CA_BUNDLE`` (see :mod:`api_pipeline.dfe.tls`),
    on this session only. ``trust_env`` is off so that Settings (flags > environment > .env) is the
    only source of proxy and CA choices; TLS verification is always on.
    """
    trusted = build_ssl_context(settings.ca_bundle)
    session = _PipelineSession(settings.no_proxy)
    session.trust_env = False
    session.headers["User-Agent"] = user_agent()
    session.verify = True
    session.ssl_context, session.trust = trusted.context, trusted.description
    adapter = TrustStoreAdapter(trusted.context)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    if settings.https_proxy is not None and settings.https_proxy:
        proxy = settings.https_proxy.reveal()
        session.proxies = {"https": proxy, "http": proxy}
    return session
