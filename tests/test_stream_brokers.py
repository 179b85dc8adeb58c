"""Broker URLs: what each part means, and loud errors (password masked) for what does not parse."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from liber_features.cli.main import cli
from liber_features.errors import BrokerError, ConfigError
from liber_features.stream.brokers import KafkaConfig, NatsConfig, RedisStreamConfig, parse_broker_url
from liber_features.stream.connect import open_publisher, open_source


def test_nats_url_names_server_stream_subject_durable_and_ack_wait():
    cfg = parse_broker_url("nats://app:s3cret@nats.local:4333/EVENTS?subject=ev.0&durable=shard0&ack_wait=2.5")
    assert isinstance(cfg, NatsConfig)
    assert (cfg.host, cfg.port, cfg.user, cfg.password.get_secret_value()) == ("nats.local", 4333, "app", "s3cret")
    assert (cfg.stream, cfg.subject, cfg.durable, cfg.ack_wait_s) == ("EVENTS", "ev.0", "shard0", 2.5)
    assert cfg.key == "nats:EVENTS:shard0"
    assert cfg.safe_url == "nats://app:***@nats.local:4333/EVENTS?subject=ev.0&durable=shard0&ack_wait=2.5"


def test_nats_defaults_subject_to_the_stream_and_durable_to_liber():
    cfg = parse_broker_url("nats://127.0.0.1/EVENTS")
    assert (cfg.port, cfg.subject, cfg.durable, cfg.ack_wait_s) == (4222, "EVENTS", "liber", 30.0)


def test_redis_url_names_db_stream_group_consumer():
    cfg = parse_broker_url("redis://:pw@cache:6380/3?stream=ev&group=g1&consumer=c2&claim_idle=5")
    assert isinstance(cfg, RedisStreamConfig)
    assert (cfg.host, cfg.port, cfg.db, cfg.stream, cfg.group, cfg.consumer, cfg.claim_idle_s) == (
        "cache", 6380, 3, "ev", "g1", "c2", 5.0)
    assert cfg.password.get_secret_value() == "pw" and cfg.key == "redis:3:ev:g1"


def test_kafka_url_names_topic_and_group():
    cfg = parse_broker_url("kafka://broker:9093/events?group=liber1")
    assert isinstance(cfg, KafkaConfig) and (cfg.host, cfg.port, cfg.topic, cfg.group) == (
        "broker", 9093, "events", "liber1")


@pytest.mark.parametrize(("url", "message"), [
    ("nats://u:hunter2@h:4222/S?durabel=x", r"nats://u:\*\*\*@h:4222/S\?durabel=x: unknown parameter 'durabel'"),
    ("redis://:hunter2@h:6379/0", r"redis://:\*\*\*@h:6379/0: stream: Field required"),
    ("nats://h:4222/", r"stream: String should match pattern"),
    ("nats://h:4222/A.B", r"stream: String should match pattern"),
    ("amqp://h/q", r"unknown broker URL scheme in amqp://h/q"),
    ("nats://h:99999/S", r"malformed broker URL nats://h:99999/S"),
    ("nats:///S", r"names no host"),
    ("redis://h/x?stream=s", r"db: Input should be a valid integer"),
])
def test_bad_urls_are_one_config_error_with_the_password_masked(url, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_broker_url(url)
    assert "hunter2" not in str(info.value)


def test_unreachable_brokers_are_broker_errors_naming_them():
    with pytest.raises(BrokerError, match=r"cannot reach broker nats://127.0.0.1:1/S"):
        open_source("nats://127.0.0.1:1/S", 10)
    with pytest.raises(BrokerError, match=r"cannot reach broker redis://:\*\*\*@127.0.0.1:1/0\?stream=s"):
        open_publisher("redis://:hunter2@127.0.0.1:1/0?stream=s")


@pytest.mark.parametrize("url", ["nats://u:hunter2@127.0.0.1:1/S", "redis://:hunter2@127.0.0.1:1/0?stream=s",
                                 "kafka://u:hunter2@127.0.0.1:1/t?group=g"])
def test_cli_unreachable_broker_is_one_error_line_exit_2_and_no_ledger(url, tmp_path):
    led = tmp_path / "ledger.db"
    r = CliRunner().invoke(cli, ["stream", "--from", url, "--ledger", f"sqlite:///{led}"])
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: cannot reach broker ")
    assert "hunter2" not in r.stderr and "***" in r.stderr
    assert not led.exists()  # an unreachable broker leaves no new empty ledger behind
    r = CliRunner().invoke(cli, ["produce", "--events", str(tmp_path), "--to", url])
    assert r.exit_code == 2 and r.stderr.startswith("error: ")


def test_unreachable_kafka_is_a_broker_error_naming_it():
    with pytest.raises(BrokerError, match=r"cannot reach broker kafka://127.0.0.1:1/t\?group=g"):
        open_source("kafka://127.0.0.1:1/t?group=g", 10)
