"""The one exception tree of liber-features.

Every error the package raises on purpose is a ``LiberError``; the CLI turns it into a message
on stderr and a non-zero exit, never a traceback.

    LiberError
    ├── ConfigError          a setting is missing, malformed or contradictory
    │   └── LedgerMismatch   a Feast repo's data directory holds another ledger's files
    ├── InputError           an input as a whole is unusable (no such file, no required column)
    ├── LedgerError          the SQL ledger is unreachable or inconsistent
    ├── EncoderError         the LLM or the text encoder cannot run or returned something unusable
    │   └── LLMUnavailable   an LLM backend (e.g. an OpenAI-compatible server) cannot be reached
    ├── VectorShapeError     a vector of the wrong length was about to be written
    ├── FeatureStoreError    Feast / the online store refused or cannot be reached
    │   └── OnlineStoreError an online read failed, timed out or returned a wrong-shaped value
    ├── BrokerError          a message broker (NATS, Redis Streams, Kafka) is unreachable or refused
    └── MissingDependency    an optional dependency is not installed (names the extra to install)

Row-level problems in input data are *not* exceptions: they go to the quarantine table with the
row's position and a reason, and the rest of the input is processed.
"""

from __future__ import annotations

__all__ = [
    "LiberError",
    "ConfigError",
    "LedgerMismatch",
    "InputError",
    "LedgerError",
    "EncoderError",
    "LLMUnavailable",
    "VectorShapeError",
    "FeatureStoreError",
    "OnlineStoreError",
    "BrokerError",
    "MissingDependency",
]


class LiberError(Exception):
    """Base class of every error liber-features raises on purpose."""

    exit_code = 2


class ConfigError(LiberError):
    """A setting is missing, malformed or contradictory."""


class LedgerMismatch(ConfigError):
    """A data directory holds files another ledger (or one of unknown identity) wrote; nothing is
    read or written there, so two ledgers' data are never mixed silently."""


class InputError(LiberError):
    """An input as a whole is unusable; the message names the file and the column or field."""


class LedgerError(LiberError):
    """The SQL ledger is unreachable, or its contents contradict themselves."""


class EncoderError(LiberError):
    """The LLM or text encoder could not run, or produced something unusable."""


class LLMUnavailable(EncoderError):
    """An LLM backend could not be reached (after retries)."""


class VectorShapeError(LiberError):
    """A vector does not have the configured length; it is never written."""


class FeatureStoreError(LiberError):
    """Feast or the online store refused an operation or cannot be reached."""


class OnlineStoreError(FeatureStoreError):
    """An online read for scoring failed, timed out or returned a wrong-shaped value; names the store."""


class BrokerError(LiberError):
    """A message broker is unreachable, or refused an operation; names the broker URL (redacted)."""


class MissingDependency(LiberError):
    """An optional dependency is missing; the message names the pip extra that brings it."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(
            f"{package!r} is not installed; install it with: pip install 'liber-features[{extra}]'"
        )
        self.package = package
        self.extra = extra
