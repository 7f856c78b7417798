"""Secrets and personal data stay out of every exit, not only the log (issue 15, item 5).

The exits: the log file, the console, the stderr ``error:`` line, ``-vv`` tracebacks,
``summary.json``, the HTML report, the ``api_response`` column and ``test-endpoint``'s
output. The secrets include the run's own bearer token, obtained during the run. A host's
answer may echo them, or echo a record's values with no quotes round them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from api_pipeline.cli import diagnostics
from api_pipeline.dfe.schema import RecordValidator, load_bundled_schema
from api_pipeline.errors import ApiError, ExitCode
from api_pipeline.job.logs import close_logging, configure_logging
from api_pipeline.job.runner import execute_run
from api_pipeline.rehearsal.simulator import Simulator
from api_pipeline.rehearsal.synthetic import make_children
from api_pipeline.settings.config import load_settings
from conftest import CliResult, db_env, insert, rows, run_cli
from hostile import Exchange, Hostile

MARKER = {
    "first_name": "Leakcheck",
    "surname": "Leaksurname",
    "postcode": "LK9 9ZZ",
    "unique_pupil_number": "LEAKUPN000001",
}


def everything_written(results: list[CliResult], tmp_path: Path) -> str:
    """Every exit of the runs: console, stderr, and every file the runs left in the log folder."""
    text = "".join(r.out + r.err for r in results)
    for path in sorted((tmp_path / "logs").glob("*")):
        text += path.read_text(encoding="utf-8")
    return text


def marker_children(n: int = 3) -> list[dict]:
    children = list(make_children(n, seed=160))
    for child in children:
        child["child_details"].update(MARKER)
    return children


def echo_credentials(exchange: Exchange) -> None:
    """A gateway that repeats the caller's token and key back, unquoted, in a 403."""
    token = exchange.seen.headers.get("Authorization", "")
    key = exchange.seen.headers.get("SupplierKey", "")
    body = json.dumps({"statusCode": 403, "message": f"Forbidden for {token} with key {key} from 10.1.2.3"})
    exchange.reply(403, body.encode(), {"Content-Type": "application/json", "Retry-After": "0"})


def test_a_403_echoing_the_token_and_key_leaks_them_nowhere(db_path: Path) -> None:
    tmp_path = db_path.parent
    insert(db_path, marker_children())
    with Hostile(echo_credentials) as host:
        environ = host.env() | db_env(db_path) | {"MAX_RETRIES": "1", "HTTP_TIMEOUT": "5"}
        results = [
            run_cli(["-vv", "run"], environ=environ, cwd=tmp_path),
            run_cli(["-vv", "test-endpoint"], environ=environ, cwd=tmp_path),
        ]
        token, key = host.token, environ["SUPPLIER_KEY"]
    assert [r.code for r in results] == [ExitCode.API, ExitCode.API], [r.err for r in results]
    assert any(token in h.headers.get("Authorization", "") for h in host.seen)  # the host had both to echo
    summaries = list((tmp_path / "logs").glob("*.summary.json"))
    reports = list((tmp_path / "logs").glob("*.report.html"))
    assert summaries and reports and "403" in summaries[0].read_text(encoding="utf-8")
    written = everything_written(results, tmp_path)
    assert "10.1.2.3" in written  # the rest of the gateway's answer is still shown
    assert token not in written and key not in written
    for row in rows(db_path):
        assert token not in str(row["api_response"]) and key not in str(row["api_response"])


def test_the_runs_own_token_joins_the_log_mask(tmp_path: Path, db_path: Path) -> None:
    insert(db_path, list(make_children(2, seed=161)))
    with Simulator() as sim:
        settings = load_settings(command="run", environ=sim.settings_env() | db_env(db_path))
        masking, log_file = configure_logging(log_dir=tmp_path / "logs", run_id="token-mask")
        masking.add(*settings.secrets())
        try:
            execute_run(settings, run_id="token-mask")
            (token,) = list(sim._tokens)
            logging.getLogger("api_pipeline.test").warning("a line that happens to hold %s", token)
        finally:
            close_logging()
    assert log_file is not None
    logged = log_file.read_text(encoding="utf-8")
    assert "a line that happens to hold <hidden>" in logged and token not in logged


def test_a_400_echoing_record_content_unquoted_leaks_it_nowhere(db_path: Path) -> None:
    tmp_path = db_path.parent
    insert(db_path, marker_children())

    def echo_records(exchange: Exchange) -> None:
        lines = []
        for index, record in enumerate(exchange.records):
            details = record.get("child_details", {})
            values = " ".join(str(details.get(key, "")) for key in MARKER)
            lines.append(f"[{index}] child_details.postcode: value {values} is not acceptable")
        exchange.reply(400, "\n".join(lines).encode(), {"Content-Type": "text/plain"})

    with Hostile(echo_records) as host:
        environ = host.env() | db_env(db_path) | {"MAX_RETRIES": "0", "HTTP_TIMEOUT": "5"}
        results = [run_cli(["-vv", "run"], environ=environ, cwd=tmp_path)]
    assert results[0].code == ExitCode.RECORDS_FAILED, results[0].err
    responses = [str(row["api_response"]) for row in rows(db_path)]
    assert all("child_details.postcode" in r and "not acceptable" in r for r in responses), responses
    written = everything_written(results, tmp_path) + "".join(responses)
    for value in [*MARKER.values(), "LK9", "9ZZ"]:
        assert value not in written, f"{value!r} leaked"


def test_schema_messages_name_the_path_never_the_value_or_an_unknown_key() -> None:
    validator = RecordValidator(load_bundled_schema())
    record = next(iter(make_children(1, seed=162)))
    record["child_details"]["sex"] = "Leakvalue99"
    record["child_details"]["ethnicity"] = "Leakethnic"
    record["child_details"]["Leakkey_by_mistake"] = "x"
    record["Leaktoplevel_key"] = 1
    problems = validator.problems(record)
    text = "; ".join(f"{path}: {message}" for path, message in problems)
    assert "child_details.sex" in text and "child_details.ethnicity" in text and "a value" in text
    assert "not allowed by the schema" in text
    for leaked in ("Leakvalue99", "Leakethnic", "Leakkey_by_mistake", "Leaktoplevel_key"):
        assert leaked not in text, text


def test_invalid_records_show_no_value_in_the_table_or_the_log(db_path: Path) -> None:
    tmp_path = db_path.parent
    children = list(make_children(2, seed=163))
    children[0]["child_details"]["sex"] = "Leakvalue99"
    children[1]["child_details"]["Leakkey_by_mistake"] = "x"
    insert(db_path, children)
    with Simulator() as sim:
        environ = sim.settings_env() | db_env(db_path)
        results = [
            run_cli(["validate"], environ=environ, cwd=tmp_path),
            run_cli(["-vv", "run"], environ=environ, cwd=tmp_path),
        ]
    assert [r.code for r in results] == [1, 1]
    responses = [str(row["api_response"]) for row in rows(db_path)]
    assert all(r.startswith("invalid:") for r in responses), responses
    written = everything_written(results, tmp_path) + "".join(responses)
    assert "child_details.sex" in written
    assert "Leakvalue99" not in written and "Leakkey_by_mistake" not in written


def test_vv_tracebacks_and_error_lines_are_masked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with Simulator() as sim:
        environ = sim.settings_env()
        secret, key = environ["CLIENT_SECRET"], environ["SUPPLIER_KEY"]

        def crash(settings, ctx):  # a fault inside the tool whose message carries secrets
            raise RuntimeError(f"boom with {secret} and Bearer abc.def-123 and {key}")

        monkeypatch.setattr(diagnostics, "test_endpoint", crash)
        crashed = run_cli(["-vv", "test-endpoint"], environ=environ, cwd=tmp_path)

        def refuse(settings, ctx):
            raise ApiError(f"refused, said the host, for {key} and {secret}")

        monkeypatch.setattr(diagnostics, "test_endpoint", refuse)
        refused = run_cli(["test-endpoint"], environ=environ, cwd=tmp_path)
    assert crashed.code == 1 and "Traceback" in crashed.err and "RuntimeError" in crashed.err
    assert refused.code == ExitCode.API and refused.err.startswith("error: refused")
    for text in (crashed.err, refused.err):
        assert secret not in text and key not in text and "abc.def-123" not in text


def test_an_answer_is_masked_with_the_words_of_the_request_it_answers() -> None:
    from api_pipeline.dfe.answers import parse_indexes
    from api_pipeline.dfe.transport import AnswerMask, mask_answer

    sent = json.dumps([{"la_child_id": "C1", "child_details": {"first_name": "Jo", "postcode": "N1 9GU"}}]).encode()
    mask = AnswerMask(("a-secret-token",), sent)
    text = "[0] child_details.first_name: Jo (N1 9GU) refused for a-secret-token; sex: F"
    masked = mask_answer(text, mask=mask)
    assert "Jo" not in masked and "N1" not in masked and "9GU" not in masked and "a-secret-token" not in masked
    assert "child_details.first_name" in masked and "refused" in masked
    assert parse_indexes(text, mask) == {0: mask_answer(text[4:], mask=mask)}
