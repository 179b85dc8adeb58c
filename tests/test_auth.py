"""serving/auth.py: with a serve token, /score and /users/… need it (401 without, 403 wrong), /healthz
and /metrics stay open, refusals are counted and logged without the token, and the admin token
stays separate from it."""

from __future__ import annotations

import asyncio
import io

import httpx
import pytest
from servekit import unconfigure

from liber_features.serving.auth import token_matches
from liber_features.serving.logs import configure_logging
from liber_features.serving.scorer import LiberScorer
from liber_features.serving.service import create_app

TOKEN, ADMIN = "serve-t0ken-81f3", "admin-t0ken-2c9d"


@pytest.fixture(scope="module")
def scorer(world):
    return LiberScorer.load(world["model_dir"], world["repo"].root, store=world["store"])


def test_token_matches_only_the_exact_bearer_value():
    assert [token_matches(h, TOKEN) for h in (None, "", TOKEN, f"bearer {TOKEN}", f"Bearer {TOKEN}x",
                                              f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN}")] == [
        False, False, False, False, False, False, True]


def test_the_data_endpoints_need_the_token_and_the_probes_do_not(scorer):
    stream = io.StringIO()
    handler = configure_logging(stream=stream)
    try:
        app = create_app(scorer, token=TOKEN, admin_token=ADMIN)
        good, wrong = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": "Bearer nope"}
        body = {"user_id": "1", "item_ids": ["1", "3", "6"]}

        async def go():
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l") as c:
                return [await c.post("/score", json=body), await c.post("/score", json=body, headers=wrong),
                        await c.post("/score", json=body, headers=good),
                        await c.get("/users/1/interests"), await c.get("/users/1/interests", headers=good),
                        await c.get("/healthz"), await c.get("/metrics"),
                        # the serve token is not the admin token
                        await c.post("/admin/reload", headers=good)]

        answers = asyncio.run(go())
    finally:
        unconfigure(handler)
    assert [r.status_code for r in answers] == [401, 403, 200, 401, 200, 200, 200, 403]
    assert answers[0].json() == {"error": "token required"} and answers[0].headers["www-authenticate"] == "Bearer"
    assert answers[1].json() == {"error": "wrong token"} and "www-authenticate" not in answers[1].headers
    assert answers[2].json()["scores"] == pytest.approx(scorer.score("1", ["1", "3", "6"]).scores.tolist(), abs=1e-6)
    assert answers[4].json()["user_id"] == "1"
    metrics = answers[6].text
    assert 'liber_requests_total{endpoint="/score",status="401"} 1.0' in metrics
    assert 'liber_requests_total{endpoint="/score",status="403"} 1.0' in metrics
    assert 'liber_requests_total{endpoint="/users/interests",status="401"} 1.0' in metrics
    log = stream.getvalue()
    assert TOKEN not in log and "nope" not in log
    assert [line.split(": ", 1)[1].rsplit(" ", 2)[0] for line in log.splitlines() if "liber.serve.access" in line] == [
        "POST /score 401", "POST /score 403", "POST /score 200", "GET /users/1/interests 401",
        "GET /users/1/interests 200", "GET /healthz 200", "GET /metrics 200", "POST /admin/reload 403"]


def test_without_a_token_the_data_endpoints_stay_open(scorer):
    app = create_app(scorer)

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://l") as c:
            return await c.post("/score", json={"user_id": "5", "item_ids": ["1"]})

    assert asyncio.run(go()).status_code == 200
