"""The registry of live secrets: one place that the log filter, the error boundary and the
token's answer masking all read, so a secret learnt in one is hidden in all."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from api_pipeline.dfe.auth import ClientCredentialsAuth
from api_pipeline.job.logs import LOGGER_NAME, close_logging, configure_logging
from api_pipeline.settings.config import Secret
from api_pipeline.settings.context import Context
from api_pipeline.settings.masking import LIVE_SECRETS, MASK, LiveSecrets, known_secrets, remember_secret

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJub25lIn0.token-learnt-during-the-run"


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    logger = logging.getLogger(LOGGER_NAME)
    before = logger.propagate
    close_logging()
    yield
    close_logging()
    logger.propagate = before


def test_the_registry_keeps_what_it_is_given_revealed_and_skips_nothing_else() -> None:
    live = LiveSecrets()
    live.add(Secret("a-setting-secret"), "a-learnt-token", None, "", Secret(""))
    assert live.values() == frozenset({"a-setting-secret", "a-learnt-token"})
    live.add("a-learnt-token")
    assert len(live.values()) == 2
    live.clear()
    assert live.values() == frozenset()


def test_no_secret_is_lost_when_threads_add_at_once() -> None:
    live = LiveSecrets()
    start = threading.Barrier(8)

    def add(thread: int) -> None:
        start.wait()
        for each in range(200):
            live.add(f"token-{thread}-{each}")

    threads = [threading.Thread(target=add, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(live.values()) == 8 * 200


def test_a_secret_remembered_once_is_hidden_in_the_log_the_error_boundary_and_answers(tmp_path: Path) -> None:
    """Remembered after logging started, with no handler searched for and nothing passed around."""
    masking, log_file = configure_logging(quiet=True, log_dir=tmp_path / "logs", run_id="registry")
    remember_secret(TOKEN)

    assert TOKEN in known_secrets() and masking.secrets == LIVE_SECRETS.values()
    logging.getLogger(f"{LOGGER_NAME}.test").warning("DfE said: token %s was refused", TOKEN)
    assert log_file is not None

    ctx = Context(environ={}, cwd=tmp_path, out=io.StringIO(), err=io.StringIO())
    assert ctx.masked(f"error: {TOKEN}") == f"error: {MASK}"

    auth = ClientCredentialsAuth(
        token_endpoint="https://login.example.invalid/t/oauth2/v2.0/token",
        client_id="c",
        client_secret=Secret("the-client-secret"),
        scope="api://x/.default",
        session=requests.Session(),
        timeout=(1.0, 1.0),
    )
    assert TOKEN in auth.live_secrets() and "the-client-secret" in auth.live_secrets()

    for handler in logging.getLogger(LOGGER_NAME).handlers:
        handler.flush()
    written = log_file.read_text(encoding="utf-8")
    assert "was refused" in written and TOKEN not in written and MASK in written


def test_closing_logging_forgets_the_live_secrets() -> None:
    """The command that had them is over: the next command (a test's next main()) starts with none."""
    configure_logging(quiet=True)
    remember_secret(Secret("a-secret-of-the-last-command"))
    assert known_secrets()
    close_logging()
    assert known_secrets() == frozenset()


def test_a_filter_reads_the_registry_when_it_writes() -> None:
    """A secret learnt after the filter was made (the token, mid-run) is hidden too."""
    stream = io.StringIO()
    masking, _ = configure_logging(quiet=False)
    handler = logging.StreamHandler(stream)
    handler.addFilter(masking)
    logger = logging.getLogger(f"{LOGGER_NAME}.test")
    logger.addHandler(handler)
    try:
        remember_secret("learnt-after-the-filter-was-made")
        logger.warning("echoed: learnt-after-the-filter-was-made")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue() == f"echoed: {MASK}\n"
