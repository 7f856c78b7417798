"""What an HTTP answer means, for DfE's API and its token endpoint alike (DESIGN §6).

An answer means the same whoever gives it: a redirect is refused (what was sent goes only to
the address configured), a 407 means the proxy wants signing in, a 429 or 5xx means busy or
failing (retried, after ``Retry-After`` when given), and an answer too slow is a transient
network failure (retried) while one too large is not read. :func:`exchange` makes the request
and :func:`refuse_shared` reads those meanings, for both. What the operator is told differs,
since what was sent and the setting to check differ: each :class:`Counterpart` words its own
(DfE's below, the token endpoint's in :mod:`api_pipeline.dfe.auth`).

The rest of DfE's answers (400 naming records, 401, 403, 404, 413) are classified by
:func:`classify`; the token endpoint's refusals by their AADSTS codes, in ``auth``.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests

from api_pipeline import reasons
from api_pipeline.dfe import bounded
from api_pipeline.dfe.bounded import MAX_ANSWER_BYTES, describe_size
from api_pipeline.dfe.transport import (
    AnswerMask,
    body_text,
    mask_answer,
    parse_retry_after,
    proxy_auth_advice,
    reaching,
    redirect_host,
    summarise,
)
from api_pipeline.errors import (
    AnswerTooLarge,
    AnswerTooSlow,
    BatchRejected,
    FatalApiError,
    Forbidden,
    PayloadTooLarge,
    PipelineError,
    RetriableApiError,
    TransientNetworkError,
    Unauthorized,
)

# ---------------------------------------------------------------------------
# What an answer means from either counterpart.
# ---------------------------------------------------------------------------


class Counterpart(ABC):
    """A server the tool sends to, and the operator's advice for the answers that mean the same
    from any server. ``place`` completes "Cannot reach ...": "DfE", "the token endpoint"."""

    place: str

    @abstractmethod
    def redirected(self, status: int, target: str) -> PipelineError:
        """A 3xx to ``target`` (scheme and host only): never followed."""

    @abstractmethod
    def too_large(self, limit: str) -> PipelineError:
        """An answer larger than ``limit`` (MAX_ANSWER_BYTES, in words): not read."""

    @abstractmethod
    def busy(self, response: requests.Response, retry_after: float | None) -> RetriableApiError:
        """A 429 or 5xx: tried again, after ``retry_after`` seconds when the server asked for a wait."""


def is_busy(status: int) -> bool:
    """429 (throttled) or 5xx (failing): worth trying again."""
    return status == 429 or 500 <= status <= 599


def exchange(
    counterpart: Counterpart, session: requests.Session, url: str, *, seconds: float, **kwargs: Any
) -> requests.Response:
    """One POST to ``counterpart`` at ``url`` (``kwargs`` as ``requests``), within ``seconds`` start to
    finish, its answer read whole (at most MAX_ANSWER_BYTES) and never redirected.

    A failed connection is :func:`~api_pipeline.dfe.transport.reaching`'s error (timeouts and
    resets retried, TLS and proxy fatal); an answer too slow is a :class:`TransientNetworkError`;
    one too large is the counterpart's refusal.
    """
    host = urlsplit(url).hostname or url
    try:
        with reaching(counterpart.place, session, url, timeout=seconds):
            return bounded.post(session, url, seconds=seconds, **kwargs)
    except AnswerTooSlow:
        raise TransientNetworkError(
            f"Cannot reach {counterpart.place}: {host} did not finish answering within {seconds:g} seconds "
            "(HTTP_TIMEOUT)",
            cause="timeout",
            detail=f"{host} did not finish answering within {seconds:g} seconds (HTTP_TIMEOUT)",
        ) from None
    except AnswerTooLarge:
        raise counterpart.too_large(describe_size(MAX_ANSWER_BYTES)) from None


def refuse_shared(response: requests.Response, counterpart: Counterpart) -> None:
    """Raise what ``response`` means the same from any counterpart: a redirect (fatal), a 407
    (fatal: the proxy wants signing in) or a 429/5xx (:meth:`Counterpart.busy`, retried).
    Return for every other answer, which is the caller's to read."""
    status = response.status_code
    if 300 <= status <= 399:
        raise counterpart.redirected(status, redirect_host(response))
    if status == 407:
        raise FatalApiError(f"Cannot reach {counterpart.place}: {proxy_auth_advice()}")
    if is_busy(status):
        raise counterpart.busy(response, parse_retry_after(response.headers.get("Retry-After")))


# ---------------------------------------------------------------------------
# DfE's answers.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DfeAnswers(Counterpart):
    """DfE's API as a counterpart: its advice names API_ENDPOINT, and says that nothing sent in
    the request counts as acknowledged. ``mask`` is what its answers must not echo."""

    mask: AnswerMask | None = None
    place = "DfE"

    def redirected(self, status: int, target: str) -> PipelineError:
        return FatalApiError(
            f"DfE's endpoint answered HTTP {status}, a redirect to {target}, which is not "
            "followed: records, SupplierKey and token go only to API_ENDPOINT. Nothing is counted as "
            "acknowledged. Check API_ENDPOINT is the address DfE gave you, and ask IT whether a proxy or "
            "firewall redirects it"
        )

    def too_large(self, limit: str) -> PipelineError:
        return FatalApiError(
            f"DfE's answer was larger than {limit}, so it was not read: nothing is "
            "counted as acknowledged. Check API_ENDPOINT is DfE's receiver"
        )

    def busy(self, response: requests.Response, retry_after: float | None) -> RetriableApiError:
        summary = summarise(response, self.mask)
        return RetriableApiError(
            f"DfE is busy or failing: {summary}", status=response.status_code, retry_after=retry_after
        )


# A record marker is "[n]" not glued to a name: "[3] child_details.sex: ..." names record 3,
# while "social_care_episodes[0]" inside the path is an item index and is not a record.
_INDEX_MARKER = re.compile(r"(?<![\w\]])\[(\d+)\]")


def parse_indexes(text: str, mask: AnswerMask | None = None) -> dict[int, str]:
    """Map each record DfE names in a 400 answer (``[n] path: message`` lines) to its masked message."""
    found: dict[int, str] = {}
    for line in text.splitlines():
        marker = _INDEX_MARKER.search(line)
        if marker is None:
            continue
        index = int(marker.group(1))
        message = mask_answer(line[marker.end() :].strip(" :-;,"), mask=mask)
        if not message:
            found.setdefault(index, "rejected by DfE (no reason given)")
        elif index in found:
            found[index] = mask_answer(f"{found[index]}; {message}")
        else:
            found[index] = message
    return found


def classify(response: requests.Response, mask: AnswerMask | None = None) -> None:
    """Return for 200/204; otherwise raise the exception that says what the caller should do.

    ``mask`` says what the answer must not echo into a message (see :class:`AnswerMask`).
    """
    status = response.status_code
    if status in (200, 204):
        return
    refuse_shared(response, DfeAnswers(mask))
    summary = summarise(response, mask)
    if status == 400:
        raise BatchRejected(parse_indexes(body_text(response), mask), f"{reasons.DFE_REJECTED_REQUEST}: {summary}")
    if status == 401:
        raise Unauthorized(f"DfE refused the credentials: {summary}")
    if status == 403:
        raise Forbidden(
            f"DfE refused access: {summary}",
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    if status == 404:
        raise FatalApiError(
            f"DfE's endpoint was not found ({summary}). Check API_ENDPOINT and LA_CODE (the URL is {response.url})"
        )
    if status == 413:
        raise PayloadTooLarge(f"DfE said the batch is too large: {summary}")
    raise FatalApiError(f"DfE gave an unexpected answer: {summary}")


def names_subscription_key(response: requests.Response) -> bool:
    """Azure API Management says "invalid subscription key" when it is the SupplierKey, not the token."""
    return "subscription key" in body_text(response).lower()
