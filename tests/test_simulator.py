"""The DfE simulator, over real loopback HTTP, and its §5 merge model.

Every record here is synthetic: invented ids, names and dates.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
import time
from typing import Any

import pytest
import requests

from api_pipeline.errors import ConfigError
from api_pipeline.rehearsal.demo import run_simulator, serve_forever_cli
from api_pipeline.rehearsal.dfe_model import SimulatedDfeValidator, apply_record, load_default_schema
from api_pipeline.rehearsal.simulator import Fault, Simulator

DFE_RECEIPT = re.compile(
    r"^\d{4}-\d{2}-\d{2}_\d{2}:\d{2}:\d{2}\.\d{2}_[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}\.json$"
)
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}$")


def make_record(child: str = "T1001", **overrides: Any) -> dict:
    """A synthetic child with every kind of collection populated."""
    record: dict[str, Any] = {
        "la_child_id": child,
        "mis_child_id": f"MIS-{child}",
        "child_details": {
            "unique_pupil_number": "Q000000000001",
            "first_name": "Pennyworth",
            "surname": "Testcase",
            "date_of_birth": "2014-05-09",
            "sex": "F",
            "ethnicity": "WOTH",
            "disabilities": ["MOB"],
            "postcode": "ZZ9 9ZZ",
        },
        "health_and_wellbeing": {"sdq_assessments": [{"date": "2023-10-02", "score": 14}]},
        "social_care_episodes": [
            {
                "social_care_episode_id": "EP1",
                "referral_date": "2022-01-11",
                "referral_source": "3A",
                "care_worker_details": [{"worker_id": "W100", "start_date": "2022-01-11"}],
                "child_in_need_plans": [{"child_in_need_plan_id": "CIN1", "start_date": "2022-02-01"}],
                "child_protection_plans": [
                    {"child_protection_plan_id": "CPP1", "start_date": "2022-03-01"},
                    {"child_protection_plan_id": "CPP2", "start_date": "2022-09-01"},
                ],
                "adoption": {"initial_decision_date": "2023-01-05"},
                "care_leavers": {"contact_date": "2024-01-20", "activity": "F1", "accommodation": "B"},
            }
        ],
    }
    record.update(overrides)
    return record


@pytest.fixture
def sim():
    with Simulator(la_code="123") as simulator:
        yield simulator


@pytest.fixture
def session():
    with requests.Session() as s:
        yield s


def get_token(sim: Simulator, session: requests.Session, **overrides: str) -> requests.Response:
    form = {
        "grant_type": "client_credentials",
        "client_id": sim.client_id,
        "client_secret": sim.client_secret,
        "scope": sim.scope,
    }
    form.update(overrides)
    return session.post(sim.token_endpoint, data=form, timeout=5)


def post(
    sim: Simulator,
    session: requests.Session,
    records: object,
    *,
    token: str | None = None,
    la_code: str | None = None,
    timeout: float = 5,
    headers: dict[str, str] | None = None,
) -> requests.Response:
    if token is None:
        token = get_token(sim, session).json()["access_token"]
    sent = {
        "Authorization": f"Bearer {token}",
        "SupplierKey": sim.supplier_key,
        "Content-Type": "application/json",
    }
    sent.update(headers or {})
    url = f"{sim.api_endpoint}/children_social_care_data/{la_code or sim.la_code}/children"
    data = records if isinstance(records, bytes) else json.dumps(records).encode("utf-8")
    return session.post(url, data=data, headers=sent, timeout=timeout)


# --- token endpoint ---


def test_token_success(sim, session):
    response = get_token(sim, session)
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    assert len(body["access_token"]) > 20
    assert sim.token_requests == 1


@pytest.mark.parametrize(
    ("overrides", "status", "error", "code"),
    [
        ({"client_id": "someone-else"}, 400, "unauthorized_client", 700016),
        ({"client_secret": "not-it"}, 401, "invalid_client", 7000215),
        ({"scope": "api://elsewhere/.default"}, 400, "invalid_scope", 70011),
        ({"grant_type": "password"}, 400, "unsupported_grant_type", 70003),
    ],
)
def test_token_errors_carry_aadsts_codes(sim, session, overrides, status, error, code):
    response = get_token(sim, session, **overrides)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}:")


def test_token_wrong_tenant(sim, session):
    url = sim.token_endpoint.replace(sim.tenant, "other-tenant")
    response = session.post(url, data={"grant_type": "client_credentials"}, timeout=5)
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_token_expired_secret(session):
    with Simulator(expired_secret=True) as sim:
        response = get_token(sim, session)
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert response.json()["error_codes"] == [7000222]


def test_token_500_fault_is_consumed_once(sim, session):
    sim.inject("token_500")
    assert get_token(sim, session).status_code == 500
    assert get_token(sim, session).status_code == 200
    assert sim.token_requests == 2


def test_token_expires(session):
    with Simulator(token_ttl=0.2) as sim:
        token = get_token(sim, session).json()["access_token"]
        assert post(sim, session, [make_record()], token=token).status_code == 200
        time.sleep(0.3)
        response = post(sim, session, [make_record()], token=token)
    assert response.status_code == 401


# --- receiver: refusals ---


def test_missing_or_unknown_token_is_401(sim, session):
    assert post(sim, session, [make_record()], token="made-up").status_code == 401
    url = f"{sim.api_endpoint}/children_social_care_data/123/children"
    response = session.post(url, json=[], headers={"SupplierKey": sim.supplier_key}, timeout=5)
    assert response.status_code == 401
    assert response.json()["statusCode"] == 401
    assert sim.snapshot() == {}


def test_bad_supplier_key_is_401(sim, session):
    response = post(sim, session, [make_record()], headers={"SupplierKey": "wrong-key"})
    assert response.status_code == 401
    assert "subscription key" in response.json()["message"]


def test_wrong_la_is_403(sim, session):
    response = post(sim, session, [make_record()], la_code="999")
    assert response.status_code == 403
    assert sim.snapshot() == {}


def test_get_is_405_and_unknown_path_404(sim, session):
    url = f"{sim.api_endpoint}/children_social_care_data/123/children"
    response = session.get(url, timeout=5)
    assert response.status_code == 405
    assert response.headers["Allow"] == "POST"
    assert session.get(f"{sim.base_url}/nowhere", timeout=5).status_code == 404
    assert session.post(f"{sim.api_endpoint}/children", data=b"[]", timeout=5).status_code == 404


def test_wrong_content_type_is_415(sim, session):
    assert post(sim, session, [make_record()], headers={"Content-Type": "text/plain"}).status_code == 415


@pytest.mark.parametrize("body", [b"not json", b'{"la_child_id": "T1"}', b"\xff\xfe[]"])
def test_malformed_body_is_400(sim, session, body):
    assert post(sim, session, body).status_code == 400


def test_empty_array_is_204(sim, session):
    response = post(sim, session, [])
    assert response.status_code == 204
    assert response.content == b""
    assert sim.snapshot() == {}


def test_more_than_100_records_is_413(sim, session):
    response = post(sim, session, [make_record(f"T{n}") for n in range(101)])
    assert response.status_code == 413
    assert sim.snapshot() == {}
    assert sim.request_log()[-1].record_count == 101


def _referral_source_too_long(record):
    record["social_care_episodes"][0]["referral_source"] = "ABC"


def _impossible_date(record):
    record["child_details"]["date_of_birth"] = "2024-02-30"


def _compact_date(record):
    record["child_details"]["date_of_birth"] = "20240101"


def _null(record):
    record["child_details"]["postcode"] = None


def _extra_key(record):
    record["child_details"]["nickname"] = "Penny"


def _purge_on_care_worker(record):
    record["social_care_episodes"][0]["care_worker_details"][0]["purge"] = True


def _missing_item_id(record):
    del record["social_care_episodes"][0]["child_protection_plans"][1]["child_protection_plan_id"]


def _bad_child_id(record):
    record["la_child_id"] = "T-1"


def _bool_as_integer(record):
    record["health_and_wellbeing"]["sdq_assessments"][0]["score"] = True


def _duplicate_disabilities(record):
    record["child_details"]["disabilities"] = ["MOB", "MOB"]


@pytest.mark.parametrize(
    ("spoil", "expected"),
    [
        (_referral_source_too_long, "[1] social_care_episodes[0].referral_source: longer than 2 characters"),
        (_impossible_date, "[1] child_details.date_of_birth: not a valid date"),
        (_compact_date, "[1] child_details.date_of_birth: not a valid date"),
        (_null, "[1] child_details.postcode: null is not allowed"),
        (_extra_key, "[1] child_details.nickname: not allowed"),
        (_purge_on_care_worker, "[1] social_care_episodes[0].care_worker_details[0].purge: not allowed"),
        (
            _missing_item_id,
            "[1] social_care_episodes[0].child_protection_plans[1].child_protection_plan_id: required",
        ),
        (_bad_child_id, "[1] la_child_id: does not match"),
        (_bool_as_integer, "[1] health_and_wellbeing.sdq_assessments[0].score: expected integer"),
        (_duplicate_disabilities, "[1] child_details.disabilities: items are not unique"),
    ],
)
def test_invalid_record_is_400_with_index_and_nothing_stored(sim, session, spoil, expected):
    bad = make_record("T2002")
    spoil(bad)
    response = post(sim, session, [make_record("T2001"), bad, make_record("T2003")])
    assert response.status_code == 400
    lines = response.text.splitlines()
    assert any(line.startswith(expected) for line in lines), lines
    assert re.findall(r"^\[(\d+)\]", response.text, re.M) == ["1"] * len(lines)
    assert "Penny" not in response.text  # field names only, never values
    assert sim.snapshot() == {}


def test_every_failing_record_is_named(sim, session):
    first, third = make_record("T1"), make_record("T3")
    first["mis_child_id"] = "has spaces"
    third["child_details"]["sex"] = "FF"
    response = post(sim, session, [first, make_record("T2"), third])
    assert response.status_code == 400
    assert sorted({int(n) for n in re.findall(r"^\[(\d+)\]", response.text, re.M)}) == [0, 2]


# --- receiver: success ---


def test_200_dfe_receipts_and_store(sim, session):
    records = [make_record("T1"), make_record("T2")]
    response = post(sim, session, records)
    assert response.status_code == 200
    receipts = response.json()
    assert len(receipts) == 2
    assert all(DFE_RECEIPT.match(r) for r in receipts), receipts
    assert len(set(receipts)) == 2
    held = sim.snapshot()
    assert held == {"T1": records[0], "T2": records[1]}
    held["T1"]["child_details"]["sex"] = "X"  # a snapshot is a copy
    assert sim.snapshot()["T1"]["child_details"]["sex"] == "F"
    assert sim.records_accepted == 2


def test_200_uuid_receipts(session):
    with Simulator(receipt_style="uuid") as sim:
        receipts = post(sim, session, [make_record()]).json()
    assert len(receipts) == 1 and UUID.match(receipts[0])


def test_json_stays_utf8(sim, session):
    record = make_record()
    record["child_details"]["surname"] = "O'Brien-Zoë"
    assert post(sim, session, [record]).status_code == 200
    assert sim.snapshot()["T1001"]["child_details"]["surname"] == "O'Brien-Zoë"


def test_purge_over_http_and_recreate(sim, session):
    post(sim, session, [make_record("T1"), make_record("T2")])
    assert post(sim, session, [{"la_child_id": "T1", "purge": True}]).status_code == 200
    assert set(sim.snapshot()) == {"T2"}
    post(sim, session, [make_record("T1")])
    assert sim.snapshot()["T1"] == make_record("T1")


def test_same_child_twice_in_one_batch_applies_in_order(sim, session):
    later = make_record("T1")
    later["child_details"] = {"first_name": "Later"}
    post(sim, session, [make_record("T1"), later])
    assert sim.snapshot()["T1"]["child_details"] == {"first_name": "Later"}


def test_no_validation_when_disabled(session):
    with Simulator(validate=False) as sim:
        response = post(sim, session, [{"la_child_id": "T1", "anything": "goes"}])
        assert response.status_code == 200
        assert post(sim, session, [{"no_id": 1}]).text.startswith("[0] la_child_id")


def test_latency(session):
    with Simulator(latency=0.15) as sim:
        token = get_token(sim, session).json()["access_token"]
        started = time.monotonic()
        post(sim, session, [], token=token)
    assert time.monotonic() - started >= 0.15


def test_request_log_masks_secrets(sim, session):
    post(sim, session, [make_record()])
    token_entry, receiver_entry = sim.request_log()
    assert token_entry.method == "POST" and token_entry.status == 200
    assert sim.client_secret.encode() not in token_entry.body
    assert b"client_secret=***" in token_entry.body
    assert receiver_entry.status == 200 and receiver_entry.record_count == 1
    assert json.loads(receiver_entry.body) == [make_record()]
    assert receiver_entry.headers["Authorization"] == "Bearer ***"
    assert receiver_entry.headers["SupplierKey"] == "***"
    assert receiver_entry.path.endswith("/children_social_care_data/123/children")
    sim.clear_log()
    assert sim.request_log() == []


def test_request_bodies_can_be_dropped(session):
    with Simulator(keep_request_bodies=False) as sim:
        post(sim, session, [make_record()])
        assert [entry.body for entry in sim.request_log()] == [None, None]


def test_settings_env(sim):
    env = sim.settings_env()
    assert env["API_ENDPOINT"] == f"{sim.base_url}/children-in-social-care-data-receiver-test/1"
    assert env["TOKEN_ENDPOINT"] == f"{sim.base_url}/sim-tenant/oauth2/v2.0/token"
    assert env["LA_CODE"] == "123"
    assert env["API_ENDPOINT"].startswith("http://127.0.0.1:")
    assert set(env) == {
        "API_ENDPOINT",
        "LA_CODE",
        "TOKEN_ENDPOINT",
        "CLIENT_ID",
        "CLIENT_SECRET",
        "SCOPE",
        "SUPPLIER_KEY",
    }


def test_concurrent_posts(sim, session):
    token = get_token(sim, session).json()["access_token"]
    statuses: list[int] = []

    def worker(n: int) -> None:
        with requests.Session() as own:
            for k in range(5):
                statuses.append(post(sim, own, [make_record(f"T{n}x{k}")], token=token).status_code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 30
    assert len(sim.snapshot()) == 30


def test_stop_cuts_kept_alive_connections(session):
    sim = Simulator().start()
    assert post(sim, session, []).status_code == 204
    url = sim.token_endpoint
    sim.stop()
    with pytest.raises(requests.ConnectionError):
        session.post(url, data={}, timeout=2)


def test_only_loopback():
    with pytest.raises(ValueError):
        Simulator(host="0.0.0.0")


# --- faults ---


@pytest.mark.parametrize("status", ["500", "502", "503", "403", "413"])
def test_status_faults(sim, session, status):
    sim.inject(status)
    response = post(sim, session, [make_record()])
    assert response.status_code == int(status)
    assert sim.snapshot() == {}
    assert post(sim, session, [make_record()]).status_code == 200


def test_429_with_retry_after(sim, session):
    sim.inject(Fault.TOO_MANY_REQUESTS, retry_after=2)
    response = post(sim, session, [make_record()])
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"


def test_faults_are_fifo_and_counted(sim, session):
    sim.inject("503", times=2)
    sim.inject("429")
    token = get_token(sim, session).json()["access_token"]
    statuses = [post(sim, session, [], token=token).status_code for _ in range(4)]
    assert statuses == [503, 503, 429, 204]


def test_slow_fault_lets_read_timeouts_fire(sim, session):
    sim.inject("slow", seconds=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        post(sim, session, [make_record()], timeout=0.2)
    time.sleep(0.4)  # the slow request still completes and is stored
    assert "T1001" in sim.snapshot()


def test_drop_fault(sim, session):
    sim.inject("drop")
    with pytest.raises(requests.ConnectionError):
        post(sim, session, [make_record()])
    assert sim.request_log()[-1].status == 0
    assert sim.snapshot() == {}
    assert post(sim, session, [make_record()]).status_code == 200


def test_garbage_fault(sim, session):
    sim.inject("garbage")
    response = post(sim, session, [make_record()])
    assert response.status_code == 200
    assert response.text == "<html>gateway error</html>"
    with pytest.raises(ValueError):
        response.json()
    assert sim.snapshot() == {}


def test_short_receipts_fault(sim, session):
    sim.inject("short_receipts")
    response = post(sim, session, [make_record("T1"), make_record("T2"), make_record("T3")])
    assert response.status_code == 200
    assert len(response.json()) == 2
    assert set(sim.snapshot()) == {"T1", "T2", "T3"}


def test_expire_tokens_fault(sim, session):
    token = get_token(sim, session).json()["access_token"]
    sim.inject("expire_tokens")
    assert post(sim, session, [make_record()], token=token).status_code == 401
    assert post(sim, session, [make_record()], token=token).status_code == 401
    assert post(sim, session, [make_record()]).status_code == 200  # a fresh token works


def test_unknown_fault_is_refused(sim):
    with pytest.raises(ValueError):
        sim.inject("teapot")
    with pytest.raises(ValueError):
        sim.inject("500", times=0)


# --- simulate-api ---


def test_serve_forever_cli_prints_settings_and_summary(session):
    lines: list[str] = []
    stop = threading.Event()
    sim = Simulator().start()
    runner = threading.Thread(target=serve_forever_cli, args=(sim, lines.append, stop))
    runner.start()
    post(sim, session, [make_record("T1"), make_record("T2")])
    stop.set()
    runner.join(timeout=5)
    assert f"API_ENDPOINT={sim.api_endpoint}" in lines
    assert "LA_CODE=999" in lines
    assert "2 requests (1 token, 1 other), 2 records accepted, 2 children held" in lines[-1]


def test_run_simulator_refuses_a_busy_port():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(ConfigError, match="--port"):
            run_simulator(port, "123", 0.0, out=lambda line: None)


# --- validator ---


def test_validator_accepts_the_reference_shapes():
    validator = SimulatedDfeValidator(load_default_schema())
    assert validator.errors(make_record()) == []
    assert validator.errors({"la_child_id": "T1", "purge": True}) == []
    assert validator.errors(None) == ["<record>: null is not allowed"]
    assert validator.errors([]) == ["<record>: expected object, got array"]


def test_validator_unwraps_the_openapi_array_schema():
    wrapped = {"type": "array", "maxItems": 100, "items": load_default_schema()}
    assert SimulatedDfeValidator(wrapped).errors({"mis_child_id": "X"}) == ["la_child_id: required but missing"]


def test_validator_checks_the_dates_strictly():
    validator = SimulatedDfeValidator(load_default_schema())
    for bad in ["2024-02-30", "2024-13-01", "24-01-01", "2024-1-01", "2024-01-01T00:00", "２０２４-01-01"]:
        errors = validator.errors({"la_child_id": "T1", "child_details": {"date_of_birth": bad}})
        assert errors == ["child_details.date_of_birth: not a valid date (YYYY-MM-DD)"], bad
    assert validator.errors({"la_child_id": "T1", "child_details": {"date_of_birth": "2024-02-29"}}) == []


# --- the merge model (DESIGN §5) ---


def merged(held: dict | None, sent: dict) -> dict:
    result = apply_record(held, sent)
    assert result is not None
    return result


def test_apply_new_record_is_a_deep_copy():
    sent = make_record()
    held = merged(None, sent)
    assert held == sent
    held["social_care_episodes"][0]["care_worker_details"].append({"worker_id": "W9"})
    assert sent == make_record()


def test_record_purge_and_recreate():
    held = merged(None, make_record())
    assert apply_record(held, {"la_child_id": "T1001", "purge": True}) is None
    assert apply_record(None, {"la_child_id": "T1001", "purge": True}) is None
    assert merged(None, make_record()) == make_record()


def test_identity_scalars_are_exactly_the_sent_ones():
    held = make_record()
    new = merged(held, {"la_child_id": "T1001"})
    assert "mis_child_id" not in new
    assert new["child_details"] == held["child_details"]  # blocks not sent are kept
    assert new["social_care_episodes"] == held["social_care_episodes"]
    assert merged(held, {"la_child_id": "T1001", "purge": False})["purge"] is False


def test_block_replaced_wholly_and_purged():
    held = make_record()
    new = merged(held, {"la_child_id": "T1001", "child_details": {"first_name": "Other"}})
    assert new["child_details"] == {"first_name": "Other"}
    new = merged(held, {"la_child_id": "T1001", "health_and_wellbeing": {"purge": True}})
    assert "health_and_wellbeing" not in new
    assert held["health_and_wellbeing"]  # the held record is never modified


def test_episode_entity_keys_replaced_children_merged():
    held = make_record()
    sent = {
        "la_child_id": "T1001",
        "social_care_episodes": [
            {
                "social_care_episode_id": "EP1",
                "referral_date": "2022-01-12",
                "care_worker_details": [{"worker_id": "W200", "start_date": "2023-04-01"}],
                "child_protection_plans": [
                    {"child_protection_plan_id": "CPP2", "start_date": "2022-09-02"},
                    {"child_protection_plan_id": "CPP3", "start_date": "2023-05-05"},
                ],
            }
        ],
    }
    episode = merged(held, sent)["social_care_episodes"][0]
    assert episode["referral_date"] == "2022-01-12"
    assert "referral_source" not in episode  # an entity key left out is cleared
    assert episode["care_worker_details"] == [{"worker_id": "W200", "start_date": "2023-04-01"}]
    assert episode["child_protection_plans"] == [
        {"child_protection_plan_id": "CPP1", "start_date": "2022-03-01"},
        {"child_protection_plan_id": "CPP2", "start_date": "2022-09-02"},
        {"child_protection_plan_id": "CPP3", "start_date": "2023-05-05"},
    ]
    assert episode["child_in_need_plans"] == held["social_care_episodes"][0]["child_in_need_plans"]
    assert episode["adoption"] == held["social_care_episodes"][0]["adoption"]


def test_id_item_merge_replaces_the_item_wholly():
    held = make_record()
    sent = {
        "la_child_id": "T1001",
        "social_care_episodes": [
            {"social_care_episode_id": "EP1", "child_in_need_plans": [{"child_in_need_plan_id": "CIN1"}]}
        ],
    }
    episode = merged(held, sent)["social_care_episodes"][0]
    assert episode["child_in_need_plans"] == [{"child_in_need_plan_id": "CIN1"}]


def test_item_and_block_purge_inside_an_episode():
    held = make_record()
    sent = {
        "la_child_id": "T1001",
        "social_care_episodes": [
            {
                "social_care_episode_id": "EP1",
                "referral_date": "2022-01-11",
                "child_protection_plans": [
                    {"child_protection_plan_id": "CPP1", "purge": True},
                    {"child_protection_plan_id": "CPP-unknown", "purge": True},
                ],
                "child_in_need_plans": [{"child_in_need_plan_id": "CIN1", "purge": True}],
                "adoption": {"purge": True},
            }
        ],
    }
    episode = merged(held, sent)["social_care_episodes"][0]
    assert [p["child_protection_plan_id"] for p in episode["child_protection_plans"]] == ["CPP2"]
    assert "child_in_need_plans" not in episode  # emptied lists are dropped
    assert "adoption" not in episode
    assert episode["care_leavers"] == held["social_care_episodes"][0]["care_leavers"]


def test_episode_purge_new_episode_and_untouched_episode():
    held = make_record()
    held["social_care_episodes"].append({"social_care_episode_id": "EP2", "referral_date": "2023-03-03"})
    sent = {
        "la_child_id": "T1001",
        "social_care_episodes": [
            {"social_care_episode_id": "EP1", "purge": True},
            {"social_care_episode_id": "EP3", "referral_date": "2024-04-04", "purge": False},
        ],
    }
    episodes = merged(held, sent)["social_care_episodes"]
    assert episodes == [
        {"social_care_episode_id": "EP2", "referral_date": "2023-03-03"},
        {"social_care_episode_id": "EP3", "referral_date": "2024-04-04", "purge": False},
    ]
    everything_gone = {
        "la_child_id": "T1001",
        "social_care_episodes": [{"social_care_episode_id": "EP1", "purge": True}],
    }
    assert "social_care_episodes" not in merged(make_record(), everything_gone)


def test_purged_item_can_come_back():
    held = make_record()
    plans = lambda record: record["social_care_episodes"][0]["child_protection_plans"]  # noqa: E731
    gone = merged(
        held,
        {
            "la_child_id": "T1001",
            "social_care_episodes": [
                {
                    "social_care_episode_id": "EP1",
                    "child_protection_plans": [{"child_protection_plan_id": "CPP1", "purge": True}],
                }
            ],
        },
    )
    back = merged(
        gone,
        {
            "la_child_id": "T1001",
            "social_care_episodes": [
                {
                    "social_care_episode_id": "EP1",
                    "child_protection_plans": [{"child_protection_plan_id": "CPP1"}],
                }
            ],
        },
    )
    assert [p["child_protection_plan_id"] for p in plans(back)] == ["CPP2", "CPP1"]


def test_worked_example_from_design():
    """record4: a care worker added and expected_date_of_birth removed; the delta converges."""
    previous = make_record("T5234")
    previous["child_details"]["expected_date_of_birth"] = "2014-05-01"
    current = copy.deepcopy(previous)
    del current["child_details"]["expected_date_of_birth"]
    current["social_care_episodes"][0]["care_worker_details"].append({"worker_id": "W300", "start_date": "2024-02-10"})
    delta = {
        "la_child_id": "T5234",
        "mis_child_id": "MIS-T5234",
        "child_details": current["child_details"],
        "social_care_episodes": [
            {
                key: value
                for key, value in current["social_care_episodes"][0].items()
                if key in {"social_care_episode_id", "referral_date", "referral_source", "care_worker_details"}
            }
        ],
    }
    assert merged(merged(None, previous), delta) == current
