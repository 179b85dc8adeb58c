"""``liber serve``'s HTTP API: answers, validation (422), no 5xx under schemathesis, metrics, and
503 naming the store when the online store is down."""

from __future__ import annotations

import os
import socket

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from prometheus_client.parser import text_string_to_metric_families

from liber_features.serving.admission import Limits
from liber_features.serving.fetch import FeastFetcher
from liber_features.serving.scorer import LiberScorer, ScorerConfig
from liber_features.serving.service import create_app


@pytest.fixture(scope="module")
def app(world):
    scorer = LiberScorer.load(world["model_dir"], world["repo"].root, store=world["store"],
                              config=ScorerConfig(on_store_error="degrade"))
    return create_app(scorer, world["ledger"])


@pytest.fixture(scope="module")
def client(app):
    return TestClient(app, raise_server_exceptions=False)


@pytest.fixture(scope="module")
def dead_client(world):
    """The same model in front of a Redis online store nothing listens on (degrade policy)."""
    from liber_features.features.repo import open_store

    with socket.socket() as s:  # a port that was free a moment ago: connections are refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, **world["repo"].env, "LIBER_REDIS_URL": f"redis://127.0.0.1:{port}/0",
           "LIBER_REDIS_CONNECTION": f"127.0.0.1:{port},db=0"}
    store = open_store(world["repo"].root, environ=env)
    good = LiberScorer.load(world["model_dir"], world["repo"].root, store=world["store"])
    scorer = LiberScorer(good.card, good.session, FeastFetcher(store), ScorerConfig(on_store_error="degrade"))
    # Feast's own Redis client retries a refused connect with backoff (seconds): a deadline this
    # long lets the degraded answer through (the deadline itself: test_serve_load).
    return TestClient(create_app(scorer, world["ledger"], limits=Limits(deadline_ms=60_000)),
                      raise_server_exceptions=False)


def metric(client, name: str, **labels: str) -> float:
    """One sample of ``/metrics`` (0 when the labelled series does not exist yet)."""
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return 0.0


def counts(client) -> dict[str, float]:
    return {"score_200": metric(client, "liber_requests_total", endpoint="/score", status="200"),
            "interests_200": metric(client, "liber_requests_total", endpoint="/users/interests", status="200"),
            "interests_503": metric(client, "liber_requests_total", endpoint="/users/interests", status="503"),
            "latency_count": metric(client, "liber_score_latency_seconds_count"),
            "degraded": metric(client, "liber_degraded_total")}


def moved(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in before}


def test_score_answers_in_candidate_order_with_provenance(client, world):
    r = client.post("/score", json={"user_id": "1", "item_ids": ["1", "3", "zz-unknown"]})
    assert r.status_code == 200
    body = r.json()
    assert len(body["scores"]) == 3 and all(0 < s < 1 for s in body["scores"])
    assert body["unknown_items"] == [2] and body["cold_start"] is False and body["degraded"] is False
    assert body["model"] == "din+liber:both" and body["encoder_version"] is not None
    scorer = LiberScorer.load(world["model_dir"], world["repo"].root, store=world["store"])
    assert body["scores"] == pytest.approx(scorer.score("1", ["1", "3", "zz-unknown"]).scores.tolist(), abs=1e-7)
    new = client.post("/score", json={"user_id": "someone-new", "item_ids": ["1"]}).json()
    assert new["cold_start"] is True and new["encoder_version"] is None


@pytest.mark.parametrize("body, where", [
    ({"user_id": 1, "item_ids": ["1"]}, "user_id"),
    ({"user_id": "1", "item_ids": []}, "item_ids"),
    ({"user_id": "1", "item_ids": ["x"] * 1001}, "item_ids"),
    ({"user_id": "1", "item_ids": [1, 2]}, "item_ids"),
    ({"user_id": "1"}, "item_ids"),
    ({"user_id": "1", "item_ids": ["1"], "extra": True}, "extra"),
])
def test_bad_requests_answer_422_naming_the_field(client, body, where):
    r = client.post("/score", json=body)
    assert r.status_code == 422
    assert where in str(r.json()["detail"]) and "Traceback" not in r.text


def test_interests_show_partitions_with_their_texts(client):
    body = client.get("/users/1/interests").json()
    assert body["partition_count"] == 23 and len(body["partitions"]) == 23
    p0 = body["partitions"][0]
    assert p0["seq"] == 0 and p0["n_events"] == 10 and p0["summary"].startswith("summary ")
    assert body["latest_summary"] == body["partitions"][-1]["summary"]


def test_healthz_and_metrics_move_by_what_was_served(client):
    h = client.get("/healthz")
    assert h.status_code == 200 and h.json()["store_reachable"] is True
    # The series exist from registration on: only their movement proves the requests were counted.
    before = counts(client)
    for user in ("1", "5", "someone-new"):
        assert client.post("/score", json={"user_id": user, "item_ids": ["1", "3"]}).status_code == 200
    assert client.get("/users/8/interests").status_code == 200
    assert moved(before, counts(client)) == {"score_200": 3, "interests_200": 1, "interests_503": 0,
                                             "latency_count": 3, "degraded": 0}


def test_store_down_interests_answer_503_naming_the_store(dead_client):
    before = counts(dead_client)
    r = dead_client.get("/users/1/interests")
    assert r.status_code == 503 and "Traceback" not in r.text
    assert r.json()["error"].startswith("Feast online store (redis): ConnectionError: ")
    # /score answers as configured (degrade): scored without LIBER features, and said so.
    for _ in range(2):
        s = dead_client.post("/score", json={"user_id": "1", "item_ids": ["1", "3"]})
        assert s.status_code == 200 and s.json()["degraded"] is True and s.json()["encoder_version"] is None
    h = dead_client.get("/healthz")
    assert h.status_code == 503 and h.json()["store_reachable"] is False
    # Counted once each, with the status they were answered with (the failed read is no 200).
    assert moved(before, counts(dead_client)) == {"score_200": 2, "interests_200": 0, "interests_503": 1,
                                                  "latency_count": 2, "degraded": 2}


def test_no_5xx_for_any_request_the_schema_allows(app):
    """schemathesis generates requests from the service's own /openapi.json (bounded examples)."""
    from hypothesis import given
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [op.ok() for op in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
        "POST /score", "GET /users/{user_id}/interests", "GET /healthz", "GET /metrics"}
    seen = []

    @given(data=st.data())
    @settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
    def check(data):
        op = data.draw(st.sampled_from(operations))
        mode = data.draw(st.sampled_from([GenerationMode.POSITIVE, GenerationMode.NEGATIVE]))
        case = data.draw(op.as_strategy(generation_mode=mode))
        response = case.call()
        seen.append(response.status_code)
        assert response.status_code < 500, (case.method, case.path, response.text)

    check()
    assert 200 in seen and 422 in seen  # it reached both valid and invalid requests
