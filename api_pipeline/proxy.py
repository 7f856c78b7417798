"""Proxy messages: what a 407 or an unreachable proxy means, naming the proxy but never its password.

Which proxy a request uses is decided by the session (``api.make_session``: PROXY_URL or
HTTPS_PROXY, NO_PROXY, loopback always direct); NTLM/Kerberos proxies are reached through a
local relay such as Px (docs: proxies-and-tls.md).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit


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
