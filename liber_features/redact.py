"""Credential redaction: one helper for URLs of every kind, and for any text that may hold one.

Users hand us secrets inside URLs (``postgresql+psycopg://user:pw@db/x``, ``redis://:pw@cache:6379``,
``openai:http://user:pw@gpu:8000#model``) and in Feast's Redis form (``host:6379,password=pw``).
Whatever we print, log or store goes through here first, so a password never reaches a
terminal, a log file or a ledger table:

* :func:`redact_url` — the password of a URL's user-info becomes ``***`` (the user name stays:
  it helps debugging and is not a secret); works on malformed URLs too (a bad port, a missing
  slash), because those are exactly the ones that end up in error messages;
* :func:`strip_credentials` — the URL without any user-info at all, for identifiers that must
  not change when a password rotates (the LLM id);
* :func:`redact_text` — every URL-ish user-info and ``password=`` / ``token=`` / ``api_key=``
  style pair inside free text (exception messages, JSON) redacted;
* :func:`redact_obj` — the same over the strings of a JSON-like structure (``runs.params``).
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["MASK", "redact_obj", "redact_text", "redact_url", "strip_credentials"]

MASK = "***"
# scheme ':' then up to two slashes (tolerates 'redis:/:pw@h'), user-info up to the LAST '@'
# before the host part. A password may hold ':' '/' '?' '#' if a user forgot to quote it, so
# the user-info runs to the last '@' before whitespace or a quote.
_USERINFO = re.compile(
    r"(?P<scheme>\b(?:[A-Za-z][A-Za-z0-9+.\-]*:)+/{0,2})(?P<user>[^\s:/@'\"<>]*):(?P<pw>[^\s'\"<>]*)@"
    r"(?=[^\s@'\"<>]*(?:[\s'\"<>]|$))"
)
# The same without a scheme ('user:pw@host/db', a URL missing its 'scheme://').
# Not our own identifiers, which look alike ('fake:hash@1', 'transformers:SmolLM2@771632162d8c':
# a name, a version or a 12-hex fingerprint after the '@', never a host): masking those would make
# the stored LLM id differ from the one its outputs are keyed by.
_BARE_USERINFO = re.compile(
    r"(?<![\w/:@.+-])(?P<user>[A-Za-z0-9._~%+-]+):(?P<pw>[^\s'\"<>/@]+)@"
    r"(?![0-9a-f]{12}(?![\w.:-])|\d+(?![\w.:-]))(?=[A-Za-z0-9\[])")
# key=value secrets: Feast's 'host:6379,password=pw', query strings, libpq 'password=pw'.
_PAIR = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|pass|secret|token|api[_-]?key|access[_-]?key|auth)\s*[=:]\s*)"
    r"(?P<value>(?!\*\*\*)[^\s,&;'\"<>)}\]]+)",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\bBearer\s+)(?P<value>[A-Za-z0-9._~+/=\-]+)")


def redact_text(text: str) -> str:
    """``text`` with every credential we can recognise replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _BARE_USERINFO.sub(lambda m: f"{m['user']}:{MASK}@", text)
    text = _PAIR.sub(lambda m: f"{m['key']}{MASK}", text)
    return _BEARER.sub(lambda m: f"{m['key']}{MASK}", text)


def redact_url(url: str) -> str:
    """A URL (or URL-like spec) safe to print: the password masked, the rest unchanged."""
    return redact_text(str(url))


def strip_credentials(url: str) -> str:
    """A URL with no user-info at all (``http://user:pw@host:1/x`` → ``http://host:1/x``)."""
    return re.sub(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#]*@", r"\g<scheme>",
                  redact_text(str(url)))  # fmt: skip


# Identifiers built credential-free (``strip_credentials``) that outputs are keyed by: stored as is.
_IDENTITY_KEYS = frozenset({"llm_id", "encoder_id", "prompt_version"})


def redact_obj(value: Any) -> Any:
    """``redact_text`` applied to every string inside dicts, lists and tuples (except the
    credential-free identity keys, which must match the rows they key exactly)."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: v if k in _IDENTITY_KEYS and isinstance(v, str) and v == strip_credentials(v)
                else redact_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v) for v in value]
    return value
