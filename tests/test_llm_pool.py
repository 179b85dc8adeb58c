"""The LLM server pool (``openai:URL1,URL2,...#model``): identity from the servers, calls spread
over them, failover when one dies — over real HTTP to local OpenAI-compatible servers
(``testing.FakeOpenAIServer``), and through the real encode loop for the failover's cost.
"""

from __future__ import annotations

import contextlib
import socket

import pytest
from sqlalchemy import select

from encoders.uil.llm import load_llm
from encoders.uil.openai_pool import OpenAIPool
from liber_features.errors import ConfigError, LLMUnavailable
from liber_features.ingest.job import ingest
from liber_features.ingest.partition import PartitionRule
from liber_features.ledger.store import Ledger, interests
from liber_features.testing import FakeOpenAIServer, HashEncoder, event_log
from liber_features.uil.interest import EncodeConfig, load_partitions, run_encode


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def spec(*servers: FakeOpenAIServer, model: str = "tiny") -> str:
    return "openai:" + ",".join(s.url for s in servers) + f"#{model}"


def free_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_the_id_is_the_model_the_servers_report_not_their_urls() -> None:
    root = "/models/tiny/snapshots/0a1b2c"
    with FakeOpenAIServer(root=root) as a, FakeOpenAIServer(root=root) as b, FakeOpenAIServer() as plain:
        one, two = load_llm(spec(a)), load_llm(spec(a, b))
        assert one.llm_id == two.llm_id == f"openai:tiny@{root}"  # a replica more re-encodes nothing
        assert load_llm(spec(plain)).llm_id == "openai:tiny"  # root == id (or none): the name alone
        with pytest.raises(ConfigError, match="serve different models: .* → openai:tiny@/models.* → openai:tiny$"):
            load_llm(spec(a, plain))
        with pytest.raises(ConfigError, match=f"{plain.url}/v1/chat/completions serves tiny, not 'big'"):
            load_llm(spec(plain, model="big"))
    assert (a.model_queries, a.seen) == (3, 0)  # identity asked at load; no completion yet


def test_a_server_down_at_start_is_set_aside_and_none_up_is_one_error() -> None:
    down = free_url()
    with FakeOpenAIServer() as up:
        pool = load_llm(f"openai:{down},{up.url}#tiny")
        assert pool.llm_id == "openai:tiny"
        assert [g.text for g in pool.generate([chat(f"p{i}") for i in range(4)])] == [f"echo:p{i}" for i in range(4)]
        assert up.seen == 4  # the one that answers got them all, nothing was lost on the other
    with pytest.raises(LLMUnavailable, match="no server of the LLM pool answers GET /v1/models: http://127.0.0.1"):
        load_llm(f"openai:{down}#tiny")


def test_calls_are_spread_round_robin_and_bounded_per_server() -> None:
    with FakeOpenAIServer(delay_s=0.05) as a, FakeOpenAIServer(delay_s=0.05) as b, \
            FakeOpenAIServer(delay_s=0.05) as c:
        pool = OpenAIPool([a.url, b.url, c.url], "tiny", max_concurrency=2)
        gens = pool.generate([chat(f"p{i}") for i in range(12)])
        more = pool.generate([chat("q0"), chat("q1")])  # the next call goes on where this one left
    assert [g.text for g in gens] == [f"echo:p{i}" for i in range(12)]  # order kept
    assert [g.text for g in more] == ["echo:q0", "echo:q1"]
    assert (a.seen, b.seen, c.seen) == (5, 5, 4) and max(a.peak, b.peak, c.peak) == 2
    assert sorted(x["messages"][-1]["content"] for x in a.bodies) == ["p0", "p3", "p6", "p9", "q0"]


def test_a_server_back_with_another_model_stays_out(monkeypatch) -> None:
    with FakeOpenAIServer() as a, FakeOpenAIServer() as b:
        pool = OpenAIPool([a.url, b.url], "tiny", revive_s=0.0)
        b.root = "/other/checkpoint"  # b was redeployed with another revision of the model
        b_server = pool.servers[1]
        b_server.down_until = 1e-9  # as if it had failed: it is asked for its id before any prompt
        pool.generate([chat("x"), chat("y")])
    assert (a.seen, b.seen) == (2, 0)


def test_one_server_killed_mid_run_costs_one_batch_at_most_and_loses_nothing(tmp_path) -> None:
    """Three replicas, one dies on its 5th request (dropped unanswered). The encode finishes on the
    others: requests made = the calls the partitions need + the requests the dead server held."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    ingest(event_log(6, 12), ledger, PartitionRule(k=3), progress=False)  # 4 partitions each: 24
    need = sum(x.calls for x in load_partitions(ledger, None))
    with contextlib.ExitStack() as stack:
        a, b = (stack.enter_context(FakeOpenAIServer()) for _ in range(2))
        dying = stack.enter_context(FakeOpenAIServer(die_after=5))
        llm = OpenAIPool([a.url, b.url, dying.url], "tiny", max_concurrency=1, retries=1, backoff_s=0.01)
        s = run_encode(ledger, llm, HashEncoder(), EncodeConfig(batch_size=6), progress=False)
    made = a.seen + b.seen + dying.seen
    assert (need, s.partitions_done, s.failed, s.llm_calls) == (42, 24, 0, 42)
    # One request in flight on the dead server (max_concurrency=1) was lost, and only that one.
    assert (dying.seen, dying.answered, made) == (5, 4, need + 1)
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(interests.c.llm_id, interests.c.status)).all()
    assert set(rows) == {("openai:tiny", "done")} and len(rows) == 24
