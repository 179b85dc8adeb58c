"""serving/reload.py through a real `liber serve`: `kill -HUP` reloads the model directory off to
the side and swaps it in every worker without a failed request (one worker and two), and a model
whose card disagrees with the repo is refused while the old one keeps serving."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from servekit import free_port

pytestmark = pytest.mark.slow  # a real server process per test: ~10 s to load Feast and the model


def wait_for(cond, what: str, timeout: float = 60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (value := cond()) is not None and value is not False:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def generations(url: str, workers: int) -> dict[int, int]:
    """Each worker's reload generation, from /healthz on fresh connections until all answered."""
    seen: dict[int, int] = {}
    for _ in range(400):
        h = httpx.get(f"{url}/healthz", timeout=10).json()
        seen[h["worker"]] = h["generation"]
        if len(seen) == workers:
            break
    return seen


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_reloads_every_worker_without_a_failed_request_and_refuses_a_bad_card(world, tmp_path, workers):
    model = tmp_path / "model"
    shutil.copytree(world["model_dir"], model)
    port, log = free_port(), tmp_path / "serve.log"
    env = {**os.environ, **world["repo"].env}
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "liber_features.cli.main", "serve", "--model", str(model), "--repo",
             str(world["repo"].root), "--port", str(port), "--workers", str(workers), "--no-access-log",
             "--deadline-ms", "5000"], env=env, stderr=err)
    url = f"http://127.0.0.1:{port}"
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:  # requests all through both reloads
        with httpx.Client(timeout=10) as c:
            while not stop.is_set():
                statuses.append(c.post(f"{url}/score", json={"user_id": "1", "item_ids": ["1", "3"]}).status_code)

    try:
        def healthy():
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False
        wait_for(healthy, "liber serve to answer /healthz", 120)
        assert set(generations(url, workers).values()) == {0}
        t = threading.Thread(target=load)
        t.start()
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: set(generations(url, workers).values()) == {1}, "every worker at generation 1")
        # A deploy that breaks the card: refused, every worker keeps generation 1 and answers.
        card = json.loads((model / "model_card.json").read_text())
        card["memory_slots"] = 8
        (model / "model_card.json").write_text(json.dumps(card))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "refused, the old model keeps serving" in log.read_text(), "the refusal in the log")
        time.sleep(1.5)  # longer than the workers' poll of the announcement (0.5 s)
        assert set(generations(url, workers).values()) == {1}
        stop.set()
        t.join(30)
    finally:
        stop.set()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    text = log.read_text()
    assert f"SIGHUP: reloaded {model} (generation 1)" in text
    assert (f"SIGHUP: reload of {model} refused, the old model keeps serving: model card has "
            "{'M': 8,") in text
    assert len(statuses) > 20 and set(statuses) == {200}, (len(statuses), set(statuses))
    assert "Traceback" not in text
