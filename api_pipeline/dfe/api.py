"""Sending batches to the DfE CSC API (DESIGN §6): classification, receipts, retries, splitting.

One function turns a response into an outcome (:func:`classify`); :class:`ApiClient` posts
batches with tenacity retries and splits them when DfE rejects some of their records, and each
record's fate is an :class:`Outcome`. The HTTP session, proxies, transport failures and the
masking of DfE's answers are :mod:`api_pipeline.dfe.transport`'s. Nothing here logs or raises with a
request body, a token or a secret (DESIGN §9).
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from api_pipeline import reasons
from api_pipeline.dfe import bounded
from api_pipeline.dfe.auth import ClientCredentialsAuth
from api_pipeline.dfe.bounded import MAX_ANSWER_BYTES, AnswerTooLarge, AnswerTooSlow, describe_size
from api_pipeline.dfe.json_text import frame_body
from api_pipeline.dfe.transport import (
    AnswerMask,
    TransientNetworkError,
    body_text,
    mask_answer,
    parse_json,
    parse_retry_after,
    proxy_auth_advice,
    reaching,
    redirect_host,
    summarise,
)
from api_pipeline.errors import (
    ApiError,
    AuthError,
    ConfigError,
    FatalApiError,
    PipelineError,
    RetriableApiError,
)
from api_pipeline.settings.config import MAX_RECEIPT_LENGTH, Settings

log = logging.getLogger(__name__)

MAX_RETRY_AFTER = 300.0  # seconds: never let a server park the run for longer per retry
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 60.0
MAX_FORBIDDEN_RETRIES = 3  # 403 is sometimes DfE's throttle, usually a real refusal


# ---------------------------------------------------------------------------
# Exceptions specific to the API. They live here because only this module and
# its callers need them; each subclasses the errors.py class with the right
# exit code.
# ---------------------------------------------------------------------------


class BatchRejected(PipelineError):
    """DfE answered 400. ``indexes`` maps each record it named (``[n]``, 0-based) to its masked reason."""

    def __init__(self, indexes: dict[int, str], message: str) -> None:
        super().__init__(message)
        self.indexes = indexes


class Unauthorized(AuthError):
    """DfE answered 401: the token (or the SupplierKey) was refused."""


class Forbidden(RetriableApiError):
    """DfE answered 403: its gateway throttles with 403 too, so it is retried a few times."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=403, retry_after=retry_after)


class PayloadTooLarge(ApiError):
    """DfE answered 413: the batch is too big; halve it."""


class UnusableReceipts(TransientNetworkError):
    """DfE answered 200 without one usable receipt per record: nobody is acknowledged, so the
    batch is sent again (DfE upserts), like any other transient failure. ``response`` is the
    last such answer, for when the retries run out."""

    def __init__(self, message: str, *, response: requests.Response) -> None:
        super().__init__(message, cause="unusable answer")
        self.response = response


class BatchAborted(PipelineError):
    """A batch stopped by an error that stops the run (auth, fatal, retries exhausted).

    ``error`` is that error; ``outcomes`` are the batch's records settled before it, in order
    (DfE's answers for them stand: acknowledged, or rejected). The message and exit code are the error's.
    """

    def __init__(self, error: PipelineError, outcomes: list[Outcome]) -> None:
        super().__init__(str(error))
        self.error = error
        self.outcomes = outcomes
        self.exit_code = error.exit_code


class RetriesExhausted(ApiError):
    """A retriable failure kept happening until the retry budget ran out (exit 5)."""

    def __init__(self, message: str, *, status: int | None, attempts: int) -> None:
        super().__init__(message)
        self.status = status
        self.attempts = attempts


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


# ---------------------------------------------------------------------------
# Classification: the one place a response becomes an outcome.
# ---------------------------------------------------------------------------


def classify(response: requests.Response, mask: AnswerMask | None = None) -> None:
    """Return for 200/204; otherwise raise the exception that says what the caller should do.

    ``mask`` says what the answer must not echo into a message (see :class:`AnswerMask`).
    """
    status = response.status_code
    if status in (200, 204):
        return
    if 300 <= status <= 399:
        raise FatalApiError(
            f"DfE's endpoint answered HTTP {status}, a redirect to {redirect_host(response)}, which is not "
            "followed: records, SupplierKey and token go only to API_ENDPOINT. Nothing is counted as "
            "acknowledged. Check API_ENDPOINT is the address DfE gave you, and ask IT whether a proxy or "
            "firewall redirects it"
        )
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
    if status == 407:
        raise FatalApiError(f"Cannot reach DfE: {proxy_auth_advice()}")
    if status == 413:
        raise PayloadTooLarge(f"DfE said the batch is too large: {summary}")
    if status == 429 or 500 <= status <= 599:
        raise RetriableApiError(
            f"DfE is busy or failing: {summary}",
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    raise FatalApiError(f"DfE gave an unexpected answer: {summary}")


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


def _names_subscription_key(response: requests.Response) -> bool:
    """Azure API Management says "invalid subscription key" when it is the SupplierKey, not the token."""
    return "subscription key" in body_text(response).lower()


# Receipts (DESIGN §6). DfE's OpenAPI document declares the 200 body as one uuid for the request;
# the earlier tools and their guidance read a list with one ``date_time_uuid.json`` name per record,
# like ``2026-03-01_21:04:33.12_<uuid>.json``. A receipt is one of those two shapes, exactly (plain
# ASCII, so no line break, escape, NUL or lone surrogate ever reaches a log line or a column).
_RECEIPT_UUID = re.compile("[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RECEIPT_NAME = re.compile(
    r"([0-9]{4}-[0-9]{2}-[0-9]{2})_([0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.([0-9]{1,6}))?_[0-9A-Za-z][0-9A-Za-z-]*\.json"
)
# A receipt's time is believed only within this window; outside it the tool's own clock is recorded.
# DfE's API did not exist before 2020, and DfE's clock may be minutes ahead of this computer's, not days.
EARLIEST_RECEIPT_TIME = datetime(2020, 1, 1, tzinfo=timezone.utc)
RECEIPT_CLOCK_AHEAD = timedelta(days=1)


def _receipt_problem(item: object) -> str | None:
    """Why ``item`` is not a receipt, in words that repeat none of it (DfE's text may be hostile); None if it is one."""
    if not isinstance(item, str):
        return f"is {_json_kind(item)}, not text"
    if not item:
        return "is empty"
    if len(item) > MAX_RECEIPT_LENGTH:
        return f"is {len(item)} characters long (at most {MAX_RECEIPT_LENGTH})"
    if _RECEIPT_UUID.fullmatch(item) or _RECEIPT_NAME.fullmatch(item):
        return None  # the shapes are plain ASCII: nothing unprintable in them
    odd = next((c for c in item if not c.isprintable()), None)
    if odd is not None and 0xD800 <= ord(odd) <= 0xDFFF:
        return "holds text that is not valid Unicode (a lone surrogate)"
    if odd is not None:
        return f"holds a control or unprintable character (U+{ord(odd):04X})"
    return "is neither a uuid nor a date_time_uuid.json name"


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    return "a list" if isinstance(value, list) else "an object"


def parse_receipt_time(receipt: str) -> datetime | None:
    """The UTC time in a DfE-style receipt (``2026-03-01_21:04:33.12_<uuid>.json``); None for a bare uuid,
    or when the name's date and time are not a real moment."""
    match = _RECEIPT_NAME.fullmatch(receipt)
    if not match:
        return None
    return _receipt_moment(*match.groups())


def recorded_time(receipt: str, now: datetime) -> tuple[datetime, bool]:
    """When to record ``receipt`` as received: the time in its name, else ``now`` (this computer's
    clock, naive UTC). True when the name held a time that was set aside: not a real moment,
    before 2020, or more than a day ahead of ``now`` (a year-9999 receipt would otherwise be the
    "last acknowledgement" for ever, and year 1 does not fit SQL Server's DATETIME)."""
    match = _RECEIPT_NAME.fullmatch(receipt)
    if match is None:
        return now, False  # a bare uuid carries no time
    moment = _receipt_moment(*match.groups())
    clock = now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)
    if moment is None or not EARLIEST_RECEIPT_TIME <= moment <= clock + RECEIPT_CLOCK_AHEAD:
        return now, True
    return moment, False


@functools.lru_cache(maxsize=256)  # a batch's receipts share a handful of timestamps
def _receipt_moment(date: str, clock: str, fraction: str | None) -> datetime | None:
    try:  # the fields are fixed-width digits: building the datetime directly is ~10x cheaper than strptime
        moment = datetime(int(date[:4]), int(date[5:7]), int(date[8:]), int(clock[:2]), int(clock[3:5]), int(clock[6:]))
    except ValueError:  # e.g. month 13: as strptime, no time
        return None
    micro = int((fraction or "0").ljust(6, "0"))
    return moment.replace(microsecond=micro, tzinfo=timezone.utc)


def _parse_receipts(response: requests.Response, expected: int) -> tuple[list[str] | None, str]:
    """One receipt per record, else None and the reason (which repeats nothing of the answer).

    The answer is one receipt for the whole request (a JSON string, as DfE's OpenAPI document
    declares it), which every record then shares, or a JSON list of one receipt per record, in
    order (as the earlier tools read it). A bare uuid that is not a JSON string is not JSON.
    """
    answer = parse_json(response.content)
    if answer is None:
        return None, "DfE answered 200 but the body was not JSON; nothing is counted as acknowledged"
    if isinstance(answer, str):
        problem = _receipt_problem(answer)
        if problem is not None:
            return None, f"DfE answered 200 with a receipt that {problem}; nothing is counted as acknowledged"
        return [answer] * expected, ""
    if not isinstance(answer, list):
        return None, "DfE answered 200 but not with a receipt or a list of receipts; nothing is counted as acknowledged"
    if len(answer) != expected:
        return None, (
            f"DfE returned {len(answer)} receipts for {expected} records; "
            "nothing is counted as acknowledged (sent again next run)"
        )
    for number, item in enumerate(answer, 1):
        problem = _receipt_problem(item)
        if problem is not None:
            return None, (
                f"DfE answered 200, but receipt {number} of {expected} {problem}; nothing is counted as acknowledged"
            )
    return answer, ""


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
        self._supplier_key = settings.supplier_key
        self.secondary_key_in_use = False
        # MIN_REQUEST_INTERVAL_MS spaces every POST (retries and split halves too), across threads.
        self.pacer = Pacer(settings.min_request_interval_ms / 1000, clock=clock, sleep=sleep)
        # MAX_RUNTIME bounds retries too: past it, a failing batch is not tried again (the client
        # is made as the run starts, so its clock is the run's).
        self._retry_deadline = clock() + settings.max_runtime

    # -- one HTTP exchange ---------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        return {"SupplierKey": self._supplier_key.reveal(), "Content-Type": "application/json"}

    def _use_secondary_key(self) -> bool:
        """After DfE refused SUPPLIER_KEY: switch to SUPPLIER_KEY_SECONDARY, once per run. False if there is none."""
        secondary = self.settings.supplier_key_secondary
        if self.secondary_key_in_use or secondary is None or not secondary or secondary == self._supplier_key:
            return False
        self._supplier_key, self.secondary_key_in_use = secondary, True
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
        try:
            with reaching("DfE", self.session, self.url, timeout=self.settings.http_timeout):
                return bounded.post(
                    self.session,
                    self.url,
                    seconds=self.settings.http_timeout,
                    data=body,
                    headers=self._headers(),
                    auth=self.auth,
                    timeout=self.timeout,
                )
        except AnswerTooSlow:
            raise TransientNetworkError(
                f"Cannot reach DfE: {self.host} did not finish answering within "
                f"{self.settings.http_timeout:g} seconds (HTTP_TIMEOUT)",
                cause="timeout",
            ) from None
        except AnswerTooLarge:
            raise FatalApiError(
                f"DfE's answer was larger than {describe_size(MAX_ANSWER_BYTES)}, so it was not read: nothing is "
                "counted as acknowledged. Check API_ENDPOINT is DfE's receiver"
            ) from None

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
            if _names_subscription_key(response) and self._use_secondary_key():
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
            receipts, reason = _parse_receipts(response, state.expected)
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
        receipts, reason = _parse_receipts(response, len(positions))
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
