"""Alerts by webhook: one bounded POST through the run's proxy and trust, never following a redirect.

The session is :func:`~api_pipeline.dfe.transport.make_session`'s, so the alert leaves the machine
as DfE's calls do (PROXY_URL, NO_PROXY, the system's certificate store plus CA_BUNDLE), and the
POST is :func:`~api_pipeline.dfe.bounded.post`'s: a deadline for the whole exchange, a cap on
the answer, no redirect. The address is a secret (Teams Workflows and Slack put a signature in
it): messages name its host only, and an answer that echoes any part of it is masked.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlsplit

import requests

from api_pipeline.dfe.bounded import describe_size, post
from api_pipeline.dfe.transport import (
    AnswerMask,
    body_text,
    describe_network_error,
    make_session,
    mask_answer,
    proxy_address,
    redirect_host,
    session_proxy,
)
from api_pipeline.errors import AnswerTooLarge, AnswerTooSlow, ConfigError, NotDelivered
from api_pipeline.notify.message import Alert, encode, webhook_body
from api_pipeline.settings.config import Settings
from api_pipeline.settings.masking import known_secrets

MAX_WEBHOOK_ANSWER = 64 * 1024  # bytes: Teams answers 202 with nothing, Slack "ok"
_SIGNATURE_PART = 8  # characters: a path segment or query value this long may be (part of) the signature


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of a webhook address that may be its signature: the whole, and every long path
    segment and query value (Slack's is in the path, Teams Workflows' in ``sig=``)."""
    parts = urlsplit(url)
    pieces = [segment for segment in parts.path.split("/") if len(segment) >= _SIGNATURE_PART]
    pieces += [value for _, value in parse_qsl(parts.query) if len(value) >= _SIGNATURE_PART]
    return (url, *pieces)


def send_webhook(settings: Settings, alert: Alert, *, seconds: float) -> str:
    """POST ``alert`` to NOTIFY_WEBHOOK_URL in NOTIFY_WEBHOOK_FORMAT within ``seconds``; returns what
    was done, in words. Raises :class:`NotDelivered` saying why."""
    assert settings.notify_webhook_url is not None
    url = settings.notify_webhook_url.reveal()
    host = urlsplit(url).hostname or "?"
    where = f"the webhook at {host}"
    body = encode(webhook_body(alert, settings.notify_webhook_format))
    try:
        session = make_session(settings)
    except ConfigError as exc:  # CA_BUNDLE missing or not PEM
        raise NotDelivered(str(exc)) from None
    mask = AnswerMask((*known_secrets(), *url_secrets(url)))
    try:
        response = post(
            session,
            url,
            seconds=seconds,
            max_bytes=MAX_WEBHOOK_ANSWER,
            data=body,
            headers={"Content-Type": "application/json; charset=utf-8"},
            timeout=(min(seconds, settings.connect_timeout), seconds),
        )
    except AnswerTooSlow:
        raise NotDelivered(f"{where} did not answer within {seconds:g} seconds") from None
    except AnswerTooLarge:
        raise NotDelivered(f"{where} answered with more than {describe_size(MAX_WEBHOOK_ANSWER)}") from None
    except requests.RequestException as exc:
        proxy = proxy_address(session_proxy(session, url))
        _, sentence = describe_network_error(exc, host=host, timeout=seconds, proxy=proxy)
        raise NotDelivered(sentence) from None
    except OSError as exc:
        raise NotDelivered(f"could not reach {where} ({type(exc).__name__})") from None
    finally:
        session.close()
    status = response.status_code
    if 300 <= status < 400:
        raise NotDelivered(
            f"{where} answered with a redirect (HTTP {status}) to {redirect_host(response)}, which is never "
            "followed: check NOTIFY_WEBHOOK_URL is the address the service gave"
        )
    if not 200 <= status < 300:
        said = mask_answer(body_text(response), 120, mask)
        hint = " (check NOTIFY_WEBHOOK_FORMAT matches the service)" if status in (400, 415, 422) else ""
        raise NotDelivered(f"{where} answered HTTP {status}{hint}" + (f": {said}" if said else ""))
    return f"posted to {where} ({settings.notify_webhook_format} format, HTTP {status})"
