"""A stand-in for DfE's CSC API, so nothing real is needed to demo, test or rehearse (DESIGN §8).

It serves an Azure-AD-style token endpoint and the receiver endpoint on loopback only, checks
requests the way DfE does (token, SupplierKey, LA code, schema with ``[n]`` errors, 413 over
100 records), keeps what it accepts under the §5 merge model in a store the caller can read,
injects faults on demand and logs every request. Standard library only, so the frozen exe and
the test-suite can run it anywhere.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import re
import secrets
import ssl
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qs, urlsplit

from api_pipeline.dfe.json_text import loads_record
from api_pipeline.dfe.payload import clone
from api_pipeline.rehearsal.dfe_model import SimulatedDfeValidator, apply_record, load_default_schema
from api_pipeline.rehearsal.simulator_http import LoopbackServer, Reply, gateway_reply, json_reply
from api_pipeline.settings.options import LOOPBACK_HOSTS

RECEIVER_BASE_PATH = "/children-in-social-care-data-receiver-test/1"
MAX_RECORDS_PER_REQUEST = 100
LISTEN_HOSTS = LOOPBACK_HOSTS - {"::1"}  # the server is IPv4: it cannot listen on ::1

# How a 200 acknowledges a request: "dfe", a list of one ``date_time_uuid.json`` name per record, in
# order (as the earlier tools read DfE's answers); "uuid", a list of one bare uuid per record;
# "openapi", one uuid for the whole request, as DfE's OpenAPI document declares it (``Receipt``).
RECEIPT_STYLES = ("dfe", "uuid", "openapi")

_RECEIVER_PATH = re.compile(re.escape(RECEIVER_BASE_PATH) + r"/children_social_care_data/([^/]*)/children")
_TOKEN_PATH = re.compile(r"/([^/]+)/oauth2/v2\.0/token")

# --- Faults, log entries, Azure AD's refusals ---


class Fault(str, Enum):
    """Failures the simulator can be told to produce, consumed in order by the next requests."""

    TOO_MANY_REQUESTS = "429"  # params: retry_after (seconds, default 1)
    SERVER_ERROR = "500"
    BAD_GATEWAY = "502"
    SERVICE_UNAVAILABLE = "503"
    FORBIDDEN = "403"
    PAYLOAD_TOO_LARGE = "413"
    SLOW = "slow"  # params: seconds (default 5), then the request is processed normally
    DROP = "drop"  # the connection is closed with no response at all
    GARBAGE = "garbage"  # 200 with an HTML body; nothing stored
    SHORT_RECEIPTS = "short_receipts"  # stored normally, a list one receipt too few (in any receipt style)
    LOST_ANSWER = "lost_answer"  # stored normally, then the connection is closed with no response
    EXPIRE_TOKENS = "expire_tokens"  # every issued token is revoked first
    TOKEN_500 = "token_500"  # noqa: S105 (not a password) - consumed by the next token POST instead


_GATEWAY_MESSAGES = {
    Fault.SERVER_ERROR: "Internal server error",
    Fault.BAD_GATEWAY: "Bad gateway",
    Fault.SERVICE_UNAVAILABLE: "Service unavailable",
    Fault.FORBIDDEN: "Forbidden: the gateway refused this call (rate limit or IP filter)",
    Fault.PAYLOAD_TOO_LARGE: "Too many records",
}


@dataclass(frozen=True)
class LoggedRequest:
    """One request as the simulator saw it. ``status`` is 0 when the connection was dropped."""

    method: str
    path: str
    status: int
    record_count: int
    body: bytes | None
    headers: dict[str, str]
    at: float  # when the answer was ready (wall clock)
    arrived: float = 0.0  # when the request had been read (wall clock)


# Azure AD v2 refusals: (status, error, AADSTS code, description template)
_AAD_ERRORS: dict[str, tuple[int, str, int, str]] = {
    "server_error": (500, "server_error", 50000, "There was an error issuing a token."),
    "bad_tenant": (400, "invalid_request", 90002, "Tenant '{tenant}' not found. Check the tenant ID."),
    "bad_grant": (400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type."),
    "unknown_client": (
        400,
        "unauthorized_client",
        700016,
        "Application with identifier '{client}' was not found.",
    ),
    "wrong_secret": (401, "invalid_client", 7000215, "Invalid client secret provided for app '{client}'."),
    "expired_secret": (
        401,
        "invalid_client",
        7000222,
        "The client secret keys for app '{client}' are expired.",
    ),
    "bad_scope": (
        400,
        "invalid_scope",
        70011,
        "The provided value for the input parameter 'scope' is not valid.",
    ),
}


def _aad_error(kind: str, **fields: str) -> Reply:
    """An error shaped like Azure AD v2's, so clients can be tested on real AADSTS handling."""
    status, error, code, template = _AAD_ERRORS[kind]
    now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")
    trace, correlation = str(uuid.uuid4()), str(uuid.uuid4())
    description = f"AADSTS{code}: {template.format(**fields)} Trace ID: {trace} Correlation ID: {correlation}"
    return json_reply(
        status,
        {
            "error": error,
            "error_description": f"{description} Timestamp: {now}",
            "error_codes": [code],
            "timestamp": now,
            "trace_id": trace,
            "correlation_id": correlation,
        },
    )


def _mask_headers(headers: dict[str, str]) -> dict[str, str]:
    masked = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered == "authorization":
            scheme = value.split(" ", 1)[0] if " " in value else ""
            value = f"{scheme} ***".strip()
        elif lowered in {"supplierkey", "ocp-apim-subscription-key"}:
            value = "***"
        masked[name] = value
    return masked


# --- The simulator ---


class Simulator:
    """DfE's token and receiver endpoints on loopback, with a readable store and fault injection.

    Use as a context manager, or ``start()``/``stop()``. All public methods are thread-safe.
    With ``tls_context`` (``ssl.PROTOCOL_TLS_SERVER`` with a certificate loaded) it serves HTTPS.
    ``receipt_style`` is how a 200 acknowledges a request (:data:`RECEIPT_STYLES`).
    """

    def __init__(
        self,
        *,
        la_code: str = "999",
        client_id: str = "sim-client",
        client_secret: str = "sim-secret",  # noqa: S107 - the simulator's own demo value
        supplier_key: str = "sim-supplier-key",
        scope: str = "api://csc-simulator/.default",
        tenant: str = "sim-tenant",
        token_ttl: float = 3600.0,
        receipt_style: str = "dfe",
        latency: float = 0.0,
        validate: bool = True,
        schema: dict | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        keep_request_bodies: bool = True,
        expired_secret: bool = False,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        if host not in LISTEN_HOSTS:
            raise ValueError("the simulator listens on loopback only (127.0.0.1 or localhost)")
        if receipt_style not in RECEIPT_STYLES:
            raise ValueError("receipt_style must be " + " or ".join(f"'{style}'" for style in RECEIPT_STYLES))
        self.la_code, self.client_id, self.client_secret = la_code, client_id, client_secret
        self.supplier_key, self.scope, self.tenant = supplier_key, scope, tenant
        self.token_ttl, self.receipt_style, self.latency = token_ttl, receipt_style, latency
        self.expired_secret, self.keep_request_bodies = expired_secret, keep_request_bodies
        self.host, self.port = host, port
        self.tls_context = tls_context  # a server-side context with a certificate: serve HTTPS
        self._validator = SimulatedDfeValidator(schema or load_default_schema()) if validate else None
        self._lock = threading.Lock()
        self._store: dict[str, dict] = {}
        self._tokens: dict[str, float] = {}
        self._faults: deque[tuple[Fault, dict[str, Any]]] = deque()
        self._token_faults: deque[tuple[Fault, dict[str, Any]]] = deque()
        self._log: list[LoggedRequest] = []
        self._token_requests = 0
        self._records_accepted = 0
        self._stopping = threading.Event()
        self._server: LoopbackServer | None = None
        self._thread: threading.Thread | None = None
        self._bound_port: int | None = None  # kept after stop() so summaries can still name it

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Simulator:
        """Bind and serve on a background daemon thread; returns self for chaining."""
        if self._server is not None:
            raise RuntimeError("simulator already started")
        self._stopping.clear()
        self._server = LoopbackServer((self.host, self.port), self._handle, self.tls_context)
        self._bound_port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="csc-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut open connections; the store and log stay readable."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_connections()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- addresses and settings -----------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self._bound_port is None:
            raise RuntimeError("simulator not started")
        scheme = "https" if self.tls_context is not None else "http"
        return f"{scheme}://{self.host}:{self._bound_port}"

    @property
    def api_endpoint(self) -> str:
        return f"{self.base_url}{RECEIVER_BASE_PATH}"

    @property
    def token_endpoint(self) -> str:
        return f"{self.base_url}/{self.tenant}/oauth2/v2.0/token"

    def settings_env(self) -> dict[str, str]:
        """The environment a client needs to talk to this simulator."""
        return {
            "API_ENDPOINT": self.api_endpoint,
            "LA_CODE": self.la_code,
            "TOKEN_ENDPOINT": self.token_endpoint,
            "CLIENT_ID": self.client_id,
            "CLIENT_SECRET": self.client_secret,
            "SCOPE": self.scope,
            "SUPPLIER_KEY": self.supplier_key,
        }

    # -- inspection and control -----------------------------------------------------------

    def snapshot(self) -> dict[str, dict]:
        """A deep copy of what 'DfE' holds: la_child_id -> record."""
        with self._lock:
            return clone(self._store)

    def restore(self, held: dict[str, dict]) -> None:
        """Hold ``held`` (la_child_id -> record, as :meth:`snapshot` gives it) in place of what it holds."""
        with self._lock:
            self._store = clone(held)

    def request_log(self) -> list[LoggedRequest]:
        with self._lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def token_requests(self) -> int:
        with self._lock:
            return self._token_requests

    @property
    def records_accepted(self) -> int:
        """Records acknowledged with a receipt since start (purges included)."""
        with self._lock:
            return self._records_accepted

    def inject(self, fault: str, times: int = 1, **params: Any) -> None:
        """Queue a fault for the next ``times`` receiver POSTs (token faults: token POSTs)."""
        kind = Fault(fault)
        if times < 1:
            raise ValueError("times must be at least 1")
        queue = self._token_faults if kind is Fault.TOKEN_500 else self._faults
        with self._lock:
            queue.extend((kind, dict(params)) for _ in range(times))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()
            self._token_faults.clear()

    # -- request handling -----------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> Reply:
        """Route one request, answer it and log it (the log entry is written before replying)."""
        arrived, started = time.time(), time.monotonic()
        path = urlsplit(raw_path).path
        receiver, token = _RECEIVER_PATH.fullmatch(path), _TOKEN_PATH.fullmatch(path)
        try:
            if receiver and method == "POST":
                reply = self._receive(receiver.group(1), headers, body, started)
            elif token and method == "POST":
                reply = self._issue_token(token.group(1), body)
            elif receiver or token:
                reply = gateway_reply(405, "Method not allowed", Allow="POST")
            else:
                reply = gateway_reply(404, "Resource not found")
        except Exception as exc:  # a simulator bug must not look like a network failure
            reply = gateway_reply(500, f"Simulator error: {type(exc).__name__}")
        is_token = bool(token) and method == "POST"
        kept: bytes | None = None
        if self.keep_request_bodies:
            kept = re.sub(rb"(client_secret=)[^&]*", rb"\1***", body) if is_token else body
        status = 0 if reply.drop else reply.status
        entry = LoggedRequest(method, path, status, reply.records, kept, _mask_headers(headers), time.time(), arrived)
        with self._lock:
            self._log.append(entry)
            self._token_requests += is_token
        return reply

    def _next_fault(self, queue: deque[tuple[Fault, dict[str, Any]]]) -> tuple[Fault | None, dict[str, Any]]:
        with self._lock:
            return queue.popleft() if queue else (None, {})

    def _issue_token(self, tenant: str, body: bytes) -> Reply:
        form = parse_qs(body.decode("utf-8", "replace"))
        grant, client, secret, scope = (
            form.get(key, [""])[0] for key in ("grant_type", "client_id", "client_secret", "scope")
        )
        fault, _ = self._next_fault(self._token_faults)
        if fault is Fault.TOKEN_500:
            return _aad_error("server_error")
        if tenant != self.tenant:
            return _aad_error("bad_tenant", tenant=tenant[:64])
        if grant != "client_credentials":
            return _aad_error("bad_grant")
        if client != self.client_id:
            return _aad_error("unknown_client", client=client[:64])
        if not secrets.compare_digest(secret.encode(), self.client_secret.encode()):
            return _aad_error("wrong_secret", client=self.client_id)
        if self.expired_secret:
            return _aad_error("expired_secret", client=self.client_id)
        if scope != self.scope:
            return _aad_error("bad_scope")
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + self.token_ttl
        ttl = int(self.token_ttl)
        payload = {"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl, "access_token": token}
        return json_reply(200, payload, **{"Cache-Control": "no-store"})

    def _receive(self, la_code: str, headers: dict[str, str], body: bytes, started: float) -> Reply:
        records: Any = None
        with contextlib.suppress(ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            records = loads_record(body)
        fault, params = self._next_fault(self._faults)
        if fault is Fault.SLOW:
            self._stopping.wait(float(params.get("seconds", 5)))
        reply = self._answer(la_code, headers, records, fault, params)
        reply.records = len(records) if isinstance(records, list) else 0
        # ``latency`` is how long DfE takes to answer a POST, its own work included: the answer
        # leaves ``latency`` seconds after the request arrived, however long this simulator's
        # parsing and merging took (less, on a fast machine; never more unless it is overloaded).
        remaining = started + self.latency - time.monotonic()
        if remaining > 0:
            self._stopping.wait(remaining)
        return reply

    def _answer(self, la_code: str, headers: dict[str, str], records: Any, fault: Fault | None, params: dict) -> Reply:
        if fault is Fault.TOO_MANY_REQUESTS:
            seconds = params.get("retry_after", 1)
            message = f"Rate limit is exceeded. Try again in {seconds} seconds."
            return gateway_reply(429, message, **{"Retry-After": str(seconds)})
        if fault is not None and fault in _GATEWAY_MESSAGES:
            return gateway_reply(int(fault.value), _GATEWAY_MESSAGES[fault])
        if fault is Fault.DROP:
            return Reply(0, drop=True)
        if fault is Fault.GARBAGE:
            return Reply(200, b"<html>gateway error</html>", "text/html")
        if fault is Fault.EXPIRE_TOKENS:
            with self._lock:
                self._tokens.clear()
        refusal = self._refuse(la_code, headers)
        if refusal is not None:
            return refusal
        if not isinstance(records, list):
            return gateway_reply(400, "Payload was malformed: send a JSON array of records")
        if not records:
            return Reply(204)
        if len(records) > MAX_RECORDS_PER_REQUEST:
            return gateway_reply(413, f"Too many records: at most {MAX_RECORDS_PER_REQUEST} per request")
        problems = self._problems(records) or self._store_batch(records)
        if problems:
            return Reply(400, "\n".join(problems).encode("utf-8"), "text/plain; charset=utf-8")
        if fault is Fault.LOST_ANSWER:
            return Reply(0, drop=True)
        if self.receipt_style == "openapi" and fault is not Fault.SHORT_RECEIPTS:
            return json_reply(200, str(uuid.uuid4()))  # one receipt for the whole request
        receipts = [self._receipt() for _ in records]
        if fault is Fault.SHORT_RECEIPTS:
            receipts.pop()
        return json_reply(200, receipts)

    def _refuse(self, la_code: str, headers: dict[str, str]) -> Reply | None:
        """The gateway's checks, in order: token, subscription key, LA code, media type."""
        lowered = {name.lower(): value for name, value in headers.items()}
        scheme, _, token = lowered.get("authorization", "").partition(" ")
        with self._lock:
            expiry = self._tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if expiry is None or expiry <= time.monotonic():
            return gateway_reply(401, "Unauthorized. Access token is missing, invalid or expired.")
        if not secrets.compare_digest(lowered.get("supplierkey", "").encode(), self.supplier_key.encode()):
            return gateway_reply(
                401,
                "Access denied due to invalid subscription key. "
                "Make sure to provide a valid key for an active subscription.",
            )
        if la_code != self.la_code:
            return gateway_reply(403, f"Forbidden: no access to submit for LA code {la_code[:8]}")
        media = lowered.get("content-type", "").split(";", 1)[0].strip().lower()
        if media != "application/json":
            return gateway_reply(415, "Unsupported media type: send application/json")
        return None

    def _problems(self, records: list) -> list[str]:
        problems = []
        for index, record in enumerate(records):
            if not isinstance(record, dict) or not isinstance(record.get("la_child_id"), str):
                problems.append(f"[{index}] la_child_id: required but missing")
            elif self._validator is not None:
                problems.extend(f"[{index}] {line}" for line in self._validator.errors(record))
        return problems

    def _store_batch(self, records: list[dict]) -> list[str]:
        """Apply the whole batch or none of it, as DfE does."""
        with self._lock:
            staged: dict[str, dict | None] = {}
            for index, record in enumerate(records):
                child = record["la_child_id"]
                held = staged[child] if child in staged else self._store.get(child)
                try:
                    # The store never changes a record in place and snapshot() copies it,
                    # and ``record`` was parsed for this request alone: sharing is safe.
                    staged[child] = apply_record(held, record, share=True)
                except (AttributeError, TypeError) as exc:
                    return [f"[{index}] <record>: cannot be applied ({type(exc).__name__})"]
            for child, new in staged.items():
                if new is None:
                    self._store.pop(child, None)
                else:
                    self._store[child] = new
            self._records_accepted += len(records)
        return []

    def _receipt(self) -> str:
        receipt = str(uuid.uuid4())
        if self.receipt_style == "uuid":
            return receipt
        now = dt.datetime.now(dt.timezone.utc)
        return f"{now:%Y-%m-%d_%H:%M:%S}.{now.microsecond // 10000:02d}_{receipt}.json"
