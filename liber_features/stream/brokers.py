"""Broker URLs → typed configs (pydantic, ``extra="forbid"``): one URL names the server, the stream
and the durable consumer, so a command line, a test and a deployment say it the same way.

    nats://[USER:PASS@]HOST[:4222]/STREAM?subject=SUBJ&durable=NAME[&ack_wait=SECONDS]
    redis://[:PASS@]HOST[:6379][/DB]?stream=KEY&group=NAME[&consumer=NAME][&claim_idle=SECONDS]
    kafka://HOST[:9092]/TOPIC?group=NAME[&session_timeout=SECONDS]

A URL that does not parse, or names an unknown parameter, is a ``ConfigError`` naming the URL with
its password masked: a typo (``durabel=``) must not silently create a second consumer.
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from liber_features.errors import ConfigError
from liber_features.redact import redact_url

__all__ = ["BrokerConfig", "KafkaConfig", "NatsConfig", "RedisStreamConfig", "parse_broker_url"]

_NAME = r"^[A-Za-z0-9_\-]+$"  # NATS stream and durable names: no dots, wildcards or spaces


class _Broker(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    url: str
    """The URL as given (kept for messages only through ``safe_url``)."""
    host: str
    port: int
    user: str | None = None
    password: SecretStr | None = None

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)


class NatsConfig(_Broker):
    """A NATS JetStream durable pull consumer (and the stream it reads)."""

    scheme: Literal["nats"] = "nats"
    port: int = 4222
    stream: str = Field(pattern=_NAME)
    """The JetStream stream; created (subjects: ``subject`` and ``subject.*``) if missing."""
    subject: str
    """The subject this consumer reads (its filter); the producer publishes here."""
    durable: str = Field("liber", pattern=_NAME)
    """The durable consumer's name: processes naming the same one share its messages."""
    ack_wait_s: float = Field(30.0, gt=0)
    """Seconds before an unacked message is redelivered (a dead consumer's, at the latest)."""
    ordered: bool = True
    """Keep stream order across a consumer's death: while another holds unacked messages of the
    durable, hand batches back until they are redelivered (``nats_source``). One process per
    durable; ``ordered=0`` lets several share a durable, and a user's events may then reach the
    ledger out of order (docs/streaming.md)."""

    @property
    def key(self) -> str:
        return f"nats:{self.stream}:{self.durable}"


class RedisStreamConfig(_Broker):
    """A Redis Streams consumer group."""

    scheme: Literal["redis"] = "redis"
    port: int = 6379
    db: int = Field(0, ge=0)
    stream: str = Field(min_length=1)
    """The stream key."""
    group: str = Field("liber", min_length=1)
    """The consumer group: processes naming the same one share its entries."""
    consumer: str = Field("liber", min_length=1)
    """This process's name in the group: a restarted process with the same name reads its own
    pending entries first; a dead one's are claimed by others after ``claim_idle_s``."""
    claim_idle_s: float = Field(30.0, gt=0)

    @property
    def key(self) -> str:
        return f"redis:{self.db}:{self.stream}:{self.group}"


class KafkaConfig(_Broker):
    """A Kafka consumer group (positions per partition are kept in the ledger)."""

    scheme: Literal["kafka"] = "kafka"
    port: int = 9092
    topic: str = Field(min_length=1)
    group: str = Field("liber", min_length=1)
    session_timeout_s: float = Field(10.0, ge=1)
    """Seconds before the group gives a silent member's partitions to another (librdkafka's default
    45 s would stall a restarted consumer that long after a crash)."""

    @property
    def key(self) -> str:
        return f"kafka:{self.topic}:{self.group}"


BrokerConfig = NatsConfig | RedisStreamConfig | KafkaConfig

# URL query parameter → config field, per scheme
_PARAMS = {
    "nats": {"subject": "subject", "durable": "durable", "ack_wait": "ack_wait_s", "ordered": "ordered"},
    "redis": {"stream": "stream", "group": "group", "consumer": "consumer", "claim_idle": "claim_idle_s"},
    "kafka": {"group": "group", "session_timeout": "session_timeout_s"},
}


def parse_broker_url(url: str) -> BrokerConfig:
    """The config a broker URL names (module docstring); ``ConfigError`` naming it otherwise."""
    safe = redact_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"malformed broker URL {safe}: {redact_url(str(exc))}") from None
    scheme = parts.scheme.lower()
    if scheme not in _PARAMS:
        raise ConfigError(f"unknown broker URL scheme in {safe}: expected nats://, redis:// or kafka://")
    if not parts.hostname:
        raise ConfigError(f"broker URL {safe} names no host")
    values: dict[str, object] = {"url": url, "host": parts.hostname}
    if port is not None:
        values["port"] = port
    if parts.username:
        values["user"] = unquote(parts.username)
    if parts.password is not None:
        values["password"] = unquote(parts.password)
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        field = _PARAMS[scheme].get(name)
        if field is None:
            known = ", ".join(sorted(_PARAMS[scheme]))
            raise ConfigError(f"broker URL {safe}: unknown parameter {name!r} (known: {known})")
        values[field] = value
    path = unquote(parts.path.strip("/"))
    if scheme == "nats":
        values["stream"] = path
        values.setdefault("subject", path)
    elif scheme == "kafka":
        values["topic"] = path
    elif path:
        values["db"] = path
    model = {"nats": NatsConfig, "redis": RedisStreamConfig, "kafka": KafkaConfig}[scheme]
    try:
        return model(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'url'}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"broker URL {safe}: {problems}") from None
