"""Sending batches to the DfE CSC API (DESIGN §6): retries, token renewal, key rotation, splitting.

:class:`ApiClient` posts batches with tenacity retries and splits them when DfE rejects some of
their records, and each record's fate is an :class:`Outcome`. What DfE's answers mean is
:mod:`api_pipeline.dfe.answers`'s (:func:`~api_pipeline.dfe.answers.classify`), what a receipt
must be :mod:`api_pipeline.dfe.receipts`'s; the HTTP session, proxies, transport failures and the
masking of DfE's answers are :mod:`api_pipeline.dfe.transport`'s. Nothing here logs or raises with a
request body, a token or a secret (DESIGN §9).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from api_pipeline import reasons
from api_pipeline.dfe.answers import DfeAnswers, classify, exchange, names_subscription_key
from api_pipeline.dfe.auth import ClientCredentialsAuth
from api_pipeline.dfe.json_text import frame_body
from api_pipeline.dfe.receipts import parse_receipt_time, parse_receipts
from api_pipeline.dfe.rotation import Rotation
from api_pipeline.dfe.transport import AnswerMask
from api_pipeline.errors import (
    AuthError,
    BatchAborted,
    BatchRejected,
    ConfigError,
    FatalApiError,
    Forbidden,
    PayloadTooLarge,
    PipelineError,
    RetriableApiError,
    RetriesExhausted,
    TransientNetworkError,
    Unauthorized,
)
from api_pipeline.settings.config import Settings

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 300.0  # seconds: never let a server park the run for longer per retry
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
MAX_FORBIDDEN_RETRIES = 3  # 403 is sometimes DfE's throttle, usually a real refusal


# ---------------------------------------------------------------------------
# The one exception that never leaves this module (the others are in errors.py):
# ApiClient.send sends the batch again, and says RetriesExhausted when it runs out.
# ---------------------------------------------------------------------------


class UnusableReceipts(TransientNetworkError):
    """DfE answered 200 without one usable receipt per record: nobody is acknowledged, so the
    batch is sent again (DfE upserts), like any other transient failure. ``response`` is the
    last such answer, for when the retries run out."""

    def __init__(self, message: str, *, response: requests.Response) -> None:
        super().__init__(message, cause="unusable answer")
        self.response = response


# ---------------------------------------------------------------------------
# Results.
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What happened to one record of a batch.

    ``receipt`` set: DfE acknowledged it. ``rejected``: DfE said this record specifically is
    wrong (400 naming it), so mark the row. Otherwise (``error`` only) the row stays pending and
    the next run sends it again.
    """

    index: int
    receipt: str | None = None
    error: str | None = None
    rejected: bool = False

    @property
    def acknowledged(self) -> bool:
        return self.receipt is not None

    @property
    def received_at(self) -> datetime | None:
        return parse_receipt_time(self.receipt) if self.receipt else None


PROMOTE_SECONDARY_KEY_ADVICE = (
    "DfE accepted SUPPLIER_KEY_SECONDARY but not SUPPLIER_KEY: DfE has changed keys. Promote it: put the "
    "secondary key's value in SUPPLIER_KEY and remove SUPPLIER_KEY_SECONDARY (or set it to DfE's next key)"
)


# ---------------------------------------------------------------------------
# The client.
# ---------------------------------------------------------------------------


class Pacer:
    """Spaces the starts of POSTs at least ``interval`` seconds apart (MIN_REQUEST_INTERVAL_MS),
    whichever thread sends them: retries, split halves and batches in flight together included.

    ``clock`` (monotonic seconds) and ``sleep`` are injectable, so that a test can prove the
    spacing on a clock of its own, whatever the machine's speed.
    """

    def __init__(
        self,
        interval: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self._lock = threading.Lock()
        self._last_start = float("-inf")

    def wait_turn(self) -> float:
        """Wait until ``interval`` has passed since the previous start; returns this start's time.

        The start is read after the wait (a sleep may overrun), under the lock that orders them.
        """
        if self.interval <= 0:
            return self.clock()
        with self._lock:
            wait = self._last_start + self.interval - self.clock()
            if wait > 0:
                self.sleep(wait)
            self._last_start = self.clock()
            return self._last_start


@dataclass
class _Attempt:
    """Per-call state shared by tenacity's attempts."""

    batch_id: str
    renewed: bool = False
    expected: int = 0  # records in the request: a 200 must carry as many receipts


class ApiClient:
    """Sends batches to the LA's DfE endpoint: retries, token renewal, splitting, receipts."""

    def __init__(
        self,
        settings: Settings,
        session: requests.Session,
        auth: ClientCredentialsAuth,
        *,
        sleep: Callable[[float], None] = time.sleep,
        logger: logging.Logger = log,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not settings.api_endpoint or not settings.la_code or settings.supplier_key is None:
            raise ConfigError("API_ENDPOINT, LA_CODE and SUPPLIER_KEY are needed to talk to DfE")
        self.settings = settings
        self.session = session
        self.auth = auth
        self.sleep = sleep
        self.clock = clock  # monotonic seconds: MAX_RUNTIME's bound on retries, and request pacing
        self.logger = logger
        base = settings.api_endpoint.rstrip("/")
        self.url = f"{base}/children_social_care_data/{settings.la_code}/children"
        self.host = urlsplit(self.url).hostname or self.url
        self.timeout = (settings.connect_timeout, settings.http_timeout)
        # Counters for the run summary: HTTP requests to the receiver (retries included),
        # retries by cause ("429", "503", "timeout", "401", ...), request body bytes sent.
        self.requests = 0
        self.retries: dict[str, int] = {}
        self.bytes_sent = 0
        self._supplier_key = Rotation(settings.supplier_key, settings.supplier_key_secondary)
        # MIN_REQUEST_INTERVAL_MS spaces every POST (retries and split halves too), across threads.
        self.pacer = Pacer(settings.min_request_interval_ms / 1000, clock=clock, sleep=sleep)
        # MAX_RUNTIME bounds retries too: past it, a failing batch is not tried again (the client
        # is made as the run starts, so its clock is the run's).
        self._retry_deadline = clock() + settings.max_runtime

    # -- one HTTP exchange ---------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"SupplierKey": self._supplier_key.current.reveal(), "Content-Type": "application/json"}

    @property
    def secondary_key_in_use(self) -> bool:
        """Whether this run has switched to SUPPLIER_KEY_SECONDARY."""
        return self._supplier_key.on_secondary

    def _use_secondary_key(self) -> bool:
        """After DfE refused SUPPLIER_KEY: switch to SUPPLIER_KEY_SECONDARY, once per run. False if there is none."""
        if not self._supplier_key.switch():
            return False
        self.logger.warning("DfE refused SUPPLIER_KEY (HTTP 401); trying SUPPLIER_KEY_SECONDARY")
        return True

    def _after_key_switch(self, response: requests.Response) -> None:
        if response.status_code == 401:
            raise AuthError(
                "DfE refused both SUPPLIER_KEY and SUPPLIER_KEY_SECONDARY (HTTP 401): check both with DfE, "
                "and that CLIENT_ID and SCOPE are the ones DfE issued for this API"
            )
        self.logger.warning("%s", PROMOTE_SECONDARY_KEY_ADVICE)

    def _pace(self) -> None:
        """Wait until MIN_REQUEST_INTERVAL_MS has passed since the previous POST started."""
        if self.pacer.interval <= 0:
            return
        self.auth.get_token()  # a token fetch must not eat into the spacing of the POST after it
        self.pacer.wait_turn()

    def _request(self, body: bytes) -> requests.Response:
        """One POST, within HTTP_TIMEOUT start to finish, its answer read whole (at most MAX_ANSWER_BYTES).

        Transport failures become retriable or fatal errors with the cause named. Redirects are
        never followed (a 3xx is classified as fatal).
        """
        self._pace()
        self.auth.get_token()  # any token request first, so it takes none of this request's time
        self.requests += 1
        self.bytes_sent += len(body)
        return exchange(
            DfeAnswers(),
            self.session,
            self.url,
            seconds=self.settings.http_timeout,
            data=body,
            headers=self._headers(),
            auth=self.auth,
            timeout=self.timeout,
        )

    def probe(self, body: bytes) -> requests.Response:
        """One POST with no retries and no classification, for test-endpoint: a 401 switches to
        SUPPLIER_KEY_SECONDARY once, as a run would. Transport failures raise as in a run."""
        response = self._request(body)
        if response.status_code == 401 and self._use_secondary_key():
            response = self._request(body)
        return response

    def answer_mask(self, sent: bytes = b"") -> AnswerMask:
        """What an answer to ``sent`` must not echo: the run's secrets (live tokens too) and the request's words."""
        secrets = [secret.reveal() for secret in self.settings.secrets()]
        secrets.extend(self.auth.live_secrets())
        return AnswerMask(tuple(secrets), sent)

    def _attempt(self, body: bytes, state: _Attempt) -> requests.Response:
        """One tenacity attempt: POST, renew the token once on 401 (or switch key), classify."""
        response = self._request(body)
        if response.status_code == 401 and not state.renewed:
            state.renewed = True
            self._count_retry("401")
            if names_subscription_key(response) and self._use_secondary_key():
                response = self._request(body)
                self._after_key_switch(response)
            else:
                self.logger.warning(
                    "batch %s: DfE answered 401; renewing the token and trying once more", state.batch_id
                )
                self.auth.invalidate()
                response = self._request(body)
        if response.status_code == 401 and self._use_secondary_key():
            response = self._request(body)
            self._after_key_switch(response)
        try:
            classify(response, self.answer_mask(body))
        except Unauthorized:
            raise AuthError(
                "DfE refused our credentials (HTTP 401) even with a fresh token: check SUPPLIER_KEY "
                "(the subscription key DfE issued), CLIENT_ID and SCOPE"
            ) from None
        if response.status_code == 200 and state.expected:
            receipts, reason = parse_receipts(response, state.expected)
            if receipts is None:  # a garbled answer: send the records again within this run
                raise UnusableReceipts(reason, response=response)
        return response

    # -- retries ---------------------------------------------------------------------
    def _count_retry(self, cause: str) -> None:
        self.retries[cause] = self.retries.get(cause, 0) + 1

    @staticmethod
    def _cause(exc: BaseException | None) -> str:
        if isinstance(exc, TransientNetworkError):
            return exc.cause
        if isinstance(exc, RetriableApiError) and exc.status is not None:
            return str(exc.status)
        return type(exc).__name__

    def _stop(self, retry_state: RetryCallState) -> bool:
        """Stop after MAX_RETRIES retries (403: at most three), or once MAX_RUNTIME has passed."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        limit = self.settings.max_retries
        if isinstance(exc, Forbidden):
            limit = min(limit, MAX_FORBIDDEN_RETRIES)
        return retry_state.attempt_number > limit or self._out_of_time()

    def _out_of_time(self) -> bool:
        return self.clock() >= self._retry_deadline

    _backoff = wait_exponential_jitter(initial=BACKOFF_INITIAL, max=BACKOFF_MAX, jitter=BACKOFF_INITIAL)

    def _wait(self, retry_state: RetryCallState) -> float:
        """The server's Retry-After when it gave one (capped), else exponential backoff with jitter."""
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, RetriableApiError) and exc.retry_after is not None:
            wait = min(exc.retry_after, MAX_RETRY_AFTER)
        else:
            wait = min(float(self._backoff(retry_state)), BACKOFF_MAX)
        return max(0.0, min(wait, self._retry_deadline - self.clock()))  # never wait past MAX_RUNTIME

    def _before_sleep(self, state: _Attempt) -> Callable[[RetryCallState], None]:
        def log_retry(retry_state: RetryCallState) -> None:
            exc = retry_state.outcome.exception() if retry_state.outcome else None
            cause = self._cause(exc)
            self._count_retry(cause)
            wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
            self.logger.warning(
                "batch %s: attempt %d failed (%s); retrying in %.1f s",
                state.batch_id,
                retry_state.attempt_number,
                cause,
                wait,
            )

        return log_retry

    def post(self, body: bytes, *, batch_id: str, record_count: int) -> requests.Response:
        """POST one already-encoded body, retrying only what is worth retrying.

        Returns the 200/204 response; raises :class:`BatchRejected` (400),
        :class:`PayloadTooLarge` (413), :class:`AuthError` (401 twice), :class:`FatalApiError`
        (403 after retries, 404, 407, TLS, proxy) or :class:`RetriesExhausted`.
        """
        state = _Attempt(batch_id=batch_id, expected=record_count)
        retrying = Retrying(
            retry=retry_if_exception_type(RetriableApiError),
            stop=self._stop,
            wait=self._wait,
            sleep=self.sleep,
            before_sleep=self._before_sleep(state),
            reraise=True,
        )
        started = time.monotonic()
        try:
            response = retrying(self._attempt, body, state)
        except Forbidden as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            raise FatalApiError(
                f"batch {batch_id}: DfE refused access (HTTP 403) {attempts} times. DfE's gateway answers "
                "403 when this machine's public IP address is not on its allow-list, when SUPPLIER_KEY is "
                "wrong, or when LA_CODE in the URL is not your council's: check each with DfE. "
                f"Last answer: {exc}"
            ) from None
        except UnusableReceipts as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            self.logger.warning(
                "batch %s: DfE answered 200 without usable receipts %d times; its records stay pending",
                batch_id,
                attempts,
            )
            response = exc.response  # the records are marked as not acknowledged, and the run goes on
        except RetriableApiError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            why = ", as MAX_RUNTIME was reached" if self._out_of_time() else ""
            raise RetriesExhausted(
                f"batch {batch_id}: gave up after {attempts} attempts{why}. {exc}. The records stay pending "
                "and are sent next run",
                status=exc.status,
                attempts=attempts,
            ) from None
        self.logger.debug(
            "batch %s: %d records, %d bytes -> HTTP %d in %.2f s",
            batch_id,
            record_count,
            len(body),
            response.status_code,
            time.monotonic() - started,
        )
        return response

    # -- batches ---------------------------------------------------------------------
    def send(self, bodies: list[bytes], batch_id: str) -> list[Outcome]:
        """Send up to 100 records, each already encoded (``json_text.encode_record``), so splits never
        re-serialise; one :class:`Outcome` per record, in order.

        A 400 naming records rejects just those and re-sends the rest; a 400 naming none, or a
        413, halves the batch until single records. An error that stops the run (auth, fatal,
        retries exhausted) is raised as :class:`BatchAborted`, with the outcomes settled before it.
        """
        outcomes: dict[int, Outcome] = {}
        try:
            if bodies:
                self._send_positions(list(range(len(bodies))), bodies, batch_id, outcomes)
        except PipelineError as exc:
            raise BatchAborted(exc, [outcomes[i] for i in sorted(outcomes)]) from exc
        return [outcomes[i] for i in range(len(bodies))]

    def _send_positions(
        self, positions: list[int], bodies: list[bytes], batch_id: str, outcomes: dict[int, Outcome]
    ) -> None:
        body = frame_body(bodies[p] for p in positions)
        try:
            response = self.post(body, batch_id=batch_id, record_count=len(positions))
        except BatchRejected as exc:
            self._after_rejection(positions, bodies, batch_id, outcomes, exc)
            return
        except PayloadTooLarge as exc:
            if len(positions) == 1:
                outcomes[positions[0]] = Outcome(
                    positions[0],
                    error=f"{reasons.TOO_LARGE_ALONE}: {exc}",
                    rejected=True,
                )
                return
            self.logger.warning("batch %s: DfE said too large (413); halving %d records", batch_id, len(positions))
            self._split(positions, bodies, batch_id, outcomes)
            return

        if response.status_code == 204:
            reason = "DfE answered 204 (nothing stored); sent again next run"
            self.logger.warning("batch %s: %s", batch_id, reason)
            for p in positions:
                outcomes[p] = Outcome(p, error=reason)
            return
        receipts, reason = parse_receipts(response, len(positions))
        if receipts is None:
            self.logger.warning("batch %s: %s", batch_id, reason)
            for p in positions:
                outcomes[p] = Outcome(p, error=reason)
            return
        for p, receipt in zip(positions, receipts, strict=True):
            outcomes[p] = Outcome(p, receipt=receipt)
        self.logger.debug("batch %s: %d records acknowledged", batch_id, len(positions))

    def _after_rejection(
        self,
        positions: list[int],
        bodies: list[bytes],
        batch_id: str,
        outcomes: dict[int, Outcome],
        exc: BatchRejected,
    ) -> None:
        named = {i: reason for i, reason in exc.indexes.items() if 0 <= i < len(positions)}
        if not named:
            if len(positions) == 1:
                outcomes[positions[0]] = Outcome(positions[0], error=str(exc), rejected=True)
                self.logger.warning("batch %s: DfE rejected the record (400)", batch_id)
                return
            self.logger.warning(
                "batch %s: DfE rejected the batch (400) naming no record; halving %d records",
                batch_id,
                len(positions),
            )
            self._split(positions, bodies, batch_id, outcomes)
            return
        for i, reason in named.items():
            outcomes[positions[i]] = Outcome(
                positions[i], error=f"{reasons.DFE_REJECTED_RECORD}{reason}", rejected=True
            )
        rest = [p for i, p in enumerate(positions) if i not in named]
        self.logger.warning(
            "batch %s: DfE rejected %d of %d records (400); re-sending the other %d",
            batch_id,
            len(named),
            len(positions),
            len(rest),
        )
        if rest:
            self._send_positions(rest, bodies, f"{batch_id}.1", outcomes)

    def _split(self, positions: list[int], bodies: list[bytes], batch_id: str, outcomes: dict[int, Outcome]) -> None:
        middle = len(positions) // 2
        self._send_positions(positions[:middle], bodies, f"{batch_id}.1", outcomes)
        self._send_positions(positions[middle:], bodies, f"{batch_id}.2", outcomes)
