"""``liber status --lag URL``: how far a consumer is behind, asked of the broker (stream/lag.py)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from click.testing import CliRunner
from streamkit import broker_url, consume, movielens_slice, publish

from liber_features.cli.main import cli
from liber_features.errors import BrokerError
from liber_features.ledger.store import Ledger
from liber_features.stream.brokers import parse_broker_url
from liber_features.stream.lag import broker_lag

pytestmark = [pytest.mark.usefixtures("drop_streams")]


def _part(lo: int, hi: int):
    s = movielens_slice()
    return dataclasses.replace(s, events=s.events.iloc[lo:hi].reset_index(drop=True), read=hi - lo)


def _broker_time_us(url: str, nth: int) -> int:
    """When the broker stored the nth message (1-based) of the stream, read back with its own client."""
    cfg = parse_broker_url(url)
    if cfg.scheme == "redis":
        import redis

        r = redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db)
        entry_id = r.xrange(cfg.stream, count=nth)[-1][0].decode()
        return int(entry_id.split("-")[0]) * 1000

    import nats

    async def get() -> int:
        nc = await nats.connect(f"nats://{cfg.host}:{cfg.port}")
        try:
            msg = await nc.jetstream().get_msg(cfg.stream, seq=nth)
            return int(msg.time.timestamp() * 1e6)
        finally:
            await nc.close()

    return asyncio.run(get())


@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_lag_counts_what_is_not_committed_and_dates_the_oldest(kind, tmp_path):
    url = broker_url(kind, "lag")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    assert publish(url, _part(0, 300)) == 300
    consume(url, ledger, batch=100)
    caught_up = broker_lag(url, ledger)
    assert (caught_up.messages, caught_up.oldest_us, caught_up.oldest_age_s) == (0, None, None)

    assert publish(url, _part(300, 425)) == 125  # produced while no consumer runs
    behind = broker_lag(url, ledger)
    assert (behind.source, behind.messages) == (parse_broker_url(url).key, 125)
    assert behind.oldest_us == _broker_time_us(url, 301)  # the first message not yet committed
    assert behind.oldest_age_s >= 0

    r = CliRunner().invoke(cli, ["status", "--ledger", ledger.url, "--lag", url])
    assert r.exit_code == 0, r.output
    assert f"  lag {behind.source}: 125 messages not committed, oldest " in r.output
    consume(url, ledger, batch=100)
    assert broker_lag(url, ledger).messages == 0


@pytest.mark.parametrize("kind", ["nats", "redis"])
def test_lag_of_a_consumer_that_never_ran_is_one_error_line(kind, tmp_path):
    url = broker_url(kind, "nolag")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    publish(url, _part(0, 10))
    name = "durable consumer 'd'" if kind == "nats" else "consumer group 'g'"
    with pytest.raises(BrokerError, match=f"no {name} on stream .*: nothing has consumed it yet"):
        broker_lag(url, ledger)
    r = CliRunner().invoke(cli, ["status", "--ledger", ledger.url, "--lag", url])
    assert r.exit_code == 2 and r.output.strip().splitlines()[-1].startswith(f"error: no {name} on stream ")
    assert "Traceback" not in r.output
