"""Secrets stay secret: a password in any URL the CLI takes (ledger, Feast registry, Redis, LLM
endpoint) never reaches stdout, stderr or a ledger table — for unreachable and malformed
addresses alike — and a malformed URL is one line and exit 2, never a traceback (issue 10)."""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PG_URL, REPO
from sqlalchemy import MetaData, select
from tinymodels import tiny_bert_dir  # noqa: F401  (session fixture)

from encoders.uil.llm import OpenAICompatLLM
from liber_features.cli.main import cli
from liber_features.ledger.store import Ledger, interests, prompt_audit
from liber_features.redact import redact_text, redact_url, strip_credentials
from liber_features.testing import FakeOpenAIServer

SECRET = f"Pw0rd{uuid.uuid4().hex[:10]}"


def free_port() -> int:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ledger_text(url: str, schema: str | None = None) -> str:
    """Every row of every table of a ledger, as one text."""
    led = Ledger(url, schema=schema)
    meta = MetaData(schema=schema)
    with led.engine.connect() as conn:
        meta.reflect(conn)
        text = "\n".join(str(row) for table in meta.sorted_tables
                         for row in conn.execute(select(table)))  # fmt: skip
    led.engine.dispose()
    return text


def run(args: list[str], env: dict[str, str] | None = None, code: int = 2):
    result = CliRunner().invoke(cli, args, env=env)
    out = result.stdout + result.stderr
    assert result.exit_code == code, out
    assert SECRET not in out, out
    assert "Traceback" not in out
    if code == 2:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, result.stderr
    return result


@pytest.fixture
def events(tmp_path) -> Path:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n1,10,1000000000\n1,11,1000000001\n2,10,1000000002\n")
    return path


def test_redaction_helper_on_every_url_kind() -> None:
    cases = {
        f"postgresql+psycopg://feast:{SECRET}@db:5432/x": "postgresql+psycopg://feast:***@db:5432/x",
        f"redis://:{SECRET}@cache:6379/0": "redis://:***@cache:6379/0",
        f"redis:/:{SECRET}@cache:6379": "redis:/:***@cache:6379",  # a slash missing
        f"rediss://user:{SECRET}@cache:abc/0": "rediss://user:***@cache:abc/0",  # a bad port
        f"openai:http://me:{SECRET}@gpu:8000#m": "openai:http://me:***@gpu:8000#m",
        f"https://me:p@ss{SECRET}@host/v1": "https://me:***@host/v1",  # an '@' in the password
        f"cache:6379,db=0,password={SECRET},ssl=true": "cache:6379,db=0,password=***,ssl=true",
        f"http://h/x?api_key={SECRET}&q=1": "http://h/x?api_key=***&q=1",
    }
    for url, shown in cases.items():
        assert redact_url(url) == shown
    shown = redact_text(f"error: cannot open 'redis://:{SECRET}@h' now")
    assert shown == "error: cannot open 'redis://:***@h' now"
    assert strip_credentials(f"http://me:{SECRET}@gpu:8000") == "http://gpu:8000"


@pytest.mark.parametrize("url", [
    f"postgresql+psycopg://liber:{SECRET}@127.0.0.1:1/db",  # unreachable
    f"postgresql+psycopg://liber:{SECRET}@127.0.0.1:abc/db",  # malformed port
    f"liber:{SECRET}@127.0.0.1/db",  # no scheme
])  # fmt: skip
def test_ledger_url_password_never_shown(events, url) -> None:
    result = run(["ingest", "--events", str(events), "--ledger", url])
    assert "***" in result.stderr


def test_reachable_postgres_ledger_with_password_stores_none(events, unique_name) -> None:
    host = PG_URL.split("://", 1)[1].split("@", 1)[1]
    url = f"postgresql+psycopg://postgres:{SECRET}@{host}"  # trust auth ignores the password
    try:
        run(["ingest", "--events", str(events), "--ledger", url, "--ledger-schema", unique_name,
             "--json"], code=0)
        status = run(["status", "--ledger", url, "--ledger-schema", unique_name], code=0)
        assert f"postgres:***@{host}" in status.stdout
        assert SECRET not in ledger_text(url, unique_name)
    finally:
        Ledger(url, schema=unique_name).drop_schema()


@pytest.mark.parametrize("redis_url,registry_url", [
    (f"redis:/:{SECRET}@127.0.0.1:6379/0", f"postgresql+psycopg://feast:{SECRET}@127.0.0.1:1/f"),
    (f"redis://:{SECRET}@127.0.0.1:abc/0", f"postgresql+psycopg://feast:{SECRET}@127.0.0.1:1/f"),
    (f"redis://:{SECRET}@127.0.0.1:1/0", f"postgresql+psycopg://feast:{SECRET}@127.0.0.1:1/f"),
    (f"redis://:{SECRET}@127.0.0.1:1/0", f"postgresql+psycopg://feast:{SECRET}@127.0.0.1:abc/f"),
])  # fmt: skip
def test_redis_and_registry_password_never_shown_or_stored(events, tmp_path, redis_url,
                                                           registry_url) -> None:  # fmt: skip
    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    env = {"FEAST_FS_YAML_FILE_PATH": str(REPO / "feature_repo/feature_store.redis.yaml"),
           "LIBER_REDIS_URL": redis_url, "LIBER_REDIS_CONNECTION": "",
           "LIBER_REGISTRY_URL": registry_url, "LIBER_DATA_DIR": str(tmp_path / "data")}
    run(["ingest", "--events", str(events), "--ledger", ledger, "--push",
         "--repo", str(REPO / "feature_repo")], env=env)
    if (tmp_path / "ledger.db").exists():
        assert SECRET not in ledger_text(ledger)


@pytest.fixture
def sealed_ledger(events, tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    run(["ingest", "--events", str(events), "--ledger", url, "--k", "1", "--json"], code=0)
    return url


def test_llm_endpoint_password_unreachable_and_malformed(sealed_ledger, tiny_bert_dir,  # noqa: F811
                                                         monkeypatch) -> None:  # fmt: skip
    monkeypatch.setitem(OpenAICompatLLM.__init__.__kwdefaults__, "backoff_s", 0.001)
    monkeypatch.setitem(OpenAICompatLLM.__init__.__kwdefaults__, "retries", 1)
    base = ["encode", "--ledger", sealed_ledger, "--text-encoder", str(tiny_bert_dir), "--no-table"]
    unreachable = run([*base, "--llm", f"openai:http://me:{SECRET}@127.0.0.1:{free_port()}#m"])
    assert "me:***@127.0.0.1" in unreachable.stderr
    malformed = run([*base, "--llm", f"openai:http://me:{SECRET}@127.0.0.1:abc#m"])
    assert "malformed LLM server URL" in malformed.stderr
    assert SECRET not in ledger_text(sealed_ledger)


def test_llm_endpoint_password_kept_out_of_a_successful_run(sealed_ledger,
                                                            tiny_bert_dir) -> None:  # noqa: F811
    with FakeOpenAIServer(reply=lambda user: ("Likes comedy.", 9)) as server:
        spec = server.url.replace("http://", f"openai:http://me:{SECRET}@") + "#tiny"
        run(["encode", "--ledger", sealed_ledger, "--text-encoder", str(tiny_bert_dir),
             "--no-table", "--llm", spec, "--json"], code=0)
    assert SECRET not in ledger_text(sealed_ledger)
    led = Ledger(sealed_ledger)
    with led.engine.connect() as conn:
        ids = set(conn.execute(select(interests.c.llm_id)).scalars())
        audited = conn.execute(select(prompt_audit.c.llm_id)).scalars().all()
    # The id names the model the server reports (encoders/uil/openai_pool.py), never a host or
    # credentials; the server still got them (basic auth).
    assert server.auth and all(a.startswith("Basic ") for a in server.auth)
    assert ids == {"openai:tiny"} and set(audited) == ids and len(audited) == 4


@pytest.mark.parametrize("liber_key, openai_key, sent", [
    (f"sk-{SECRET}", "sk-other", f"Bearer sk-{SECRET}"),  # LIBER_LLM_API_KEY wins
    ("  ", "sk-other", "Bearer sk-other"),  # blank = unset: OPENAI_API_KEY
    (None, None, ""),  # no key, no header
])  # fmt: skip
def test_llm_api_key_comes_from_the_settings(monkeypatch, liber_key, openai_key, sent) -> None:
    from encoders.uil.llm import load_llm

    for name, value in (("LIBER_LLM_API_KEY", liber_key), ("OPENAI_API_KEY", openai_key)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with FakeOpenAIServer(reply=lambda user: ("Likes comedy.", 3)) as server:
        llm = load_llm(f"openai:{server.url}#tiny")
        assert [g.text for g in llm.generate([[{"role": "user", "content": "x"}]])] == ["Likes comedy."]
    assert server.auth == [sent]
