"""OAuth2 client credentials for the DfE API (DESIGN §6), as a ``requests`` auth hook.

The token is cached with its expiry and renewed shortly before it runs out, so a long run
never sends an expired token; a 401 from the API makes the client call :meth:`invalidate`
once. Azure AD's ``AADSTS`` error codes become sentences a council officer can act on. The
secret and the token never appear in a log line or an exception message.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from api_pipeline.dfe import transport
from api_pipeline.dfe.answers import Counterpart, exchange, refuse_shared
from api_pipeline.dfe.rotation import Rotation
from api_pipeline.errors import AuthError, ConfigError, FatalApiError, PipelineError, RetriableApiError
from api_pipeline.settings.config import Secret, Settings
from api_pipeline.settings.masking import known_secrets, remember_secret

log = logging.getLogger(__name__)

TOKEN_ATTEMPTS = 3  # a 5xx/429 or dropped connection from the token endpoint is tried this often
TOKEN_BACKOFF_MAX = 5.0  # seconds; the token endpoint is either back quickly or down
DEFAULT_LIFETIME = 300.0  # seconds, when the answer has no usable expires_in
MAX_LIFETIME = 7 * 24 * 3600.0  # a longer expires_in is not believed
_HEADER_SAFE = re.compile(r"[!-~]+")  # visible ASCII: what a bearer token can be made of
_AADSTS = re.compile(r"AADSTS(\d+)")
# Codes meaning "this secret is wrong or expired": the ones worth trying CLIENT_SECRET_SECONDARY for.
SECRET_REFUSED_CODES = frozenset({"7000215", "7000222"})

# AADSTS code -> what to do. Codes from Microsoft's published Entra ID error list.
_ADVICE: dict[str, str] = {
    "7000222": "The client secret has expired. Ask DfE for a new client secret and put it in CLIENT_SECRET.",
    "7000215": (
        "The token endpoint refused the client secret. Check CLIENT_SECRET is the secret's value "
        "(not its ID), copied whole, without quotes or spaces."
    ),
    "700016": (
        "The token endpoint does not know this client. Check CLIENT_ID, and that TOKEN_ENDPOINT names DfE's tenant."
    ),
    "70011": ("The token endpoint refused the scope. Check SCOPE is exactly as DfE issued it; it ends in /.default."),
    "90002": "The token endpoint does not know this tenant. Check the tenant id in TOKEN_ENDPOINT.",
    "900023": "The token endpoint does not know this tenant. Check the tenant id in TOKEN_ENDPOINT.",
}
_ERROR_ADVICE: dict[str, str] = {
    "invalid_scope": _ADVICE["70011"],
    "invalid_client": "The token endpoint refused the client. Check CLIENT_ID and CLIENT_SECRET.",
    "unauthorized_client": (
        "The token endpoint says this client may not use client credentials. Check CLIENT_ID with DfE."
    ),
}


PROMOTE_SECONDARY_CLIENT_ADVICE = (
    "The token endpoint accepted CLIENT_SECRET_SECONDARY but not CLIENT_SECRET: promote it. Put the secondary "
    "secret's value in CLIENT_SECRET and remove CLIENT_SECRET_SECONDARY (or set it to DfE's next secret)"
)


class _TokenEndpointBusy(RetriableApiError):
    """A 5xx/429, timeout or reset from the token endpoint: tried again a couple of times."""


class _TokenEndpoint(Counterpart):
    """The token endpoint as a counterpart: its advice names TOKEN_ENDPOINT, where CLIENT_SECRET goes."""

    place = "the token endpoint"

    def redirected(self, status: int, target: str) -> PipelineError:
        return FatalApiError(
            f"The token endpoint answered HTTP {status}, a redirect to {target}, which is not followed: "
            "CLIENT_SECRET goes only to TOKEN_ENDPOINT. Check TOKEN_ENDPOINT is the OAuth2 v2.0 token URL DfE "
            "gave you, and ask IT whether a proxy or firewall redirects it"
        )

    def too_large(self, limit: str) -> PipelineError:
        return FatalApiError(
            f"The token endpoint's answer was larger than {limit}, so it was not read. "
            "Check TOKEN_ENDPOINT is the OAuth2 v2.0 token URL DfE gave you"
        )

    def busy(self, response: requests.Response, retry_after: float | None) -> RetriableApiError:
        status = response.status_code
        return _TokenEndpointBusy(f"HTTP {status}", status=status, retry_after=retry_after)


_TOKEN_ENDPOINT = _TokenEndpoint()


def _first_sentence(text: str) -> str:
    """Azure's descriptions run on with trace ids and app names; the first sentence is the point."""
    text = text.strip().split("\n", 1)[0]
    match = re.search(r"(?<=[.!?])\s", text)
    return text[: match.start()] if match else text


def aadsts_code(payload: Any) -> str:
    """The AADSTS number of a token endpoint's error answer, or ""."""
    if not isinstance(payload, dict):
        return ""
    codes = payload.get("error_codes")
    if isinstance(codes, list) and codes and isinstance(codes[0], (int, str)) and str(codes[0]).isdigit():
        return str(codes[0])
    description = payload.get("error_description")
    match = _AADSTS.search(description) if isinstance(description, str) else None
    return match.group(1) if match else ""


def explain_token_error(status: int, payload: Any, mask: transport.AnswerMask | None = None) -> str:
    """A sentence for a refused token request, built from the AADSTS code and ``error``.

    Only the code and the masked first sentence of ``error_description`` are kept: the rest of
    Azure's answer names app and tenant ids and trace ids, which help nobody here.
    """
    if not isinstance(payload, dict):
        return (
            f"The token endpoint answered HTTP {status} without an OAuth error. Check TOKEN_ENDPOINT "
            "(for Azure AD it looks like https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token)."
        )
    description = payload.get("error_description")
    description = description if isinstance(description, str) else ""
    error = payload.get("error")
    error = error if isinstance(error, str) else ""
    code = aadsts_code(payload)
    label = f"AADSTS{code}" if code else (transport.mask_answer(error, 60, mask) or f"HTTP {status}")
    advice = _ADVICE.get(code) or _ERROR_ADVICE.get(error)
    if advice:
        return f"{advice} ({label})"
    said = transport.mask_answer(_AADSTS.sub("", _first_sentence(description)).strip(" :"), limit=160, mask=mask)
    said = f": {said}" if said else ""
    return (
        f"The token endpoint refused the request ({label}{said}). Check CLIENT_ID, CLIENT_SECRET, "
        "SCOPE and TOKEN_ENDPOINT against what DfE issued."
    )


class ClientCredentialsAuth(requests.auth.AuthBase):
    """Adds ``Authorization: Bearer <token>``, fetching and renewing the token as needed.

    ``clock`` and ``sleep`` are injectable so tests control time and never wait.
    """

    def __init__(
        self,
        *,
        token_endpoint: str,
        client_id: str,
        client_secret: Secret,
        scope: str,
        session: requests.Session,
        timeout: tuple[float, float],
        clock: Callable[[], float] = time.monotonic,
        renew_margin: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        secondary_secret: Secret | None = None,
    ) -> None:
        self.token_endpoint = token_endpoint
        self.client_id = client_id
        self._client_secret = Rotation(client_secret, secondary_secret)
        self.scope = scope
        self.session = session
        self.timeout = timeout
        self.clock = clock
        self.renew_margin = renew_margin
        self.sleep = sleep
        self.host = urlsplit(token_endpoint).hostname or token_endpoint
        self.token_fetches = 0
        self._token: Secret | None = None
        self._expires_at = 0.0
        self._lifetime = 0.0
        # Batches in flight share the token: one thread fetches it, the others wait for that one.
        self._fetching = threading.RLock()

    @classmethod
    def from_settings(cls, settings: Settings, session: requests.Session, **kwargs: Any) -> ClientCredentialsAuth:
        """Built from the run's Settings; ``kwargs`` (clock, sleep, renew_margin) are for tests."""
        if not (settings.token_endpoint and settings.client_id and settings.client_secret and settings.scope):
            raise ConfigError("TOKEN_ENDPOINT, CLIENT_ID, CLIENT_SECRET and SCOPE are needed to get a token")
        return cls(
            token_endpoint=settings.token_endpoint,
            client_id=settings.client_id,
            client_secret=settings.client_secret,
            scope=settings.scope,
            session=session,
            timeout=(settings.connect_timeout, settings.http_timeout),
            secondary_secret=settings.client_secret_secondary,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth(token_endpoint={self.token_endpoint!r}, client_id={self.client_id!r})"

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.get_token()}"
        return request

    # -- the cache -----------------------------------------------------------------
    def _needs_renewal(self) -> bool:
        if self._token is None:
            return True
        margin = min(self.renew_margin, 0.1 * self._lifetime)
        return self._expires_at - self.clock() < margin

    def get_token(self) -> str:
        """The cached token, or a fresh one when it is missing or about to expire.

        Thread-safe: send threads that find the token missing together make one request for
        it between them."""
        token = self._token
        if self._needs_renewal():
            with self._fetching:
                if self._needs_renewal():  # not fetched by another thread while this one waited
                    self._fetch()
                token = self._token
        assert token is not None
        return token.reveal()

    def invalidate(self) -> None:
        """Forget the token so the next request fetches a new one (after a 401)."""
        with self._fetching:
            self._token = None
            self._expires_at = 0.0

    def live_secrets(self) -> tuple[str, ...]:
        """The client secrets and every secret live in the process, each token issued so far among
        them (:data:`~api_pipeline.settings.masking.LIVE_SECRETS`): what no answer may echo."""
        secrets = [self._client_secret.current.reveal(), *known_secrets()]
        if self._client_secret.secondary is not None:
            secrets.append(self._client_secret.secondary.reveal())
        return tuple(secrets)

    @property
    def secondary_in_use(self) -> bool:
        """Whether this run has switched to CLIENT_SECRET_SECONDARY."""
        return self._client_secret.on_secondary

    @property
    def expires_in(self) -> float | None:
        """Seconds the cached token has left, for diagnostics; None if there is none."""
        return None if self._token is None else self._expires_at - self.clock()

    # -- the token request -----------------------------------------------------------
    def _fetch(self) -> None:
        retrying = Retrying(
            retry=retry_if_exception_type(_TokenEndpointBusy),
            stop=stop_after_attempt(TOKEN_ATTEMPTS),
            wait=self._wait,
            sleep=self.sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            retrying(self._request_token)
        except _TokenEndpointBusy as exc:
            raise FatalApiError(
                f"The token endpoint did not give a token after {TOKEN_ATTEMPTS} attempts: {exc}. "
                "The sign-in service may be down; try again later"
            ) from None

    def _use_secondary(self) -> bool:
        """After CLIENT_SECRET was refused as wrong or expired: switch to the secondary, once. False if none."""
        if not self._client_secret.switch():
            return False
        log.warning("the token endpoint refused CLIENT_SECRET as wrong or expired; trying CLIENT_SECRET_SECONDARY")
        return True

    @staticmethod
    def _wait(retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RetriableApiError) and exc.retry_after is not None:
            return min(exc.retry_after, TOKEN_BACKOFF_MAX)
        return float(wait_exponential(multiplier=0.5, max=TOKEN_BACKOFF_MAX)(retry_state))

    def _log_retry(self, retry_state: RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        log.warning("token request attempt %d failed (%s); retrying in %.1f s", retry_state.attempt_number, exc, wait)

    def _request_token(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret.current.reveal(),
            "scope": self.scope,
        }
        self.token_fetches += 1
        asked_at = self.clock()  # the lifetime counts from the ask, so we renew a little early
        try:
            response = exchange(
                _TOKEN_ENDPOINT,
                self.session,
                self.token_endpoint,
                seconds=self.timeout[1],
                data=form,
                timeout=self.timeout,
                headers={"Accept": "application/json"},
            )
        except transport.TransientNetworkError as exc:
            if exc.cause in {"dns", "connection refused"}:
                raise FatalApiError(str(exc)) from None
            raise _TokenEndpointBusy(f"{exc.cause}: {exc.detail}") from None

        refuse_shared(response, _TOKEN_ENDPOINT)
        status = response.status_code
        payload = transport.parse_json(response.content)
        if status != 200 and aadsts_code(payload) in SECRET_REFUSED_CODES and self._use_secondary():
            self._request_token()
            log.warning("%s", PROMOTE_SECONDARY_CLIENT_ADVICE)
            return
        if status != 200:
            refused = explain_token_error(status, payload, transport.AnswerMask(self.live_secrets()))
            if self.secondary_in_use:
                refused = f"CLIENT_SECRET_SECONDARY was refused too. {refused}"
            raise AuthError(f"Could not get a token: {refused}")
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token:
            raise AuthError(
                "The token endpoint answered 200 without an access token. Check TOKEN_ENDPOINT is the "
                "OAuth2 v2.0 token URL DfE gave you"
            )
        if not _HEADER_SAFE.fullmatch(token):
            raise AuthError(
                "The token endpoint answered 200 with an access token that cannot be sent in a header (it has "
                "spaces or characters outside plain ASCII). Check TOKEN_ENDPOINT is the OAuth2 v2.0 token URL "
                "DfE gave you"
            )
        try:
            lifetime = float(payload.get("expires_in", DEFAULT_LIFETIME))
        except (TypeError, ValueError, OverflowError):
            lifetime = DEFAULT_LIFETIME
        if not 0 < lifetime < MAX_LIFETIME:  # NaN, zero, negative or absurd: ask again soon
            lifetime = DEFAULT_LIFETIME
        self._token = Secret(token)
        remember_secret(token)  # hidden from now on in every log line, message and answer
        self._lifetime = lifetime
        self._expires_at = asked_at + lifetime
        log.debug("token obtained from %s, valid for %d s", self.host, int(lifetime))
