"""UIL prompt templates, versioned, and the sanitising of untrusted catalog text.

The prompt version is a hash of the templates and of every setting that shapes a prompt, so a
changed template means new outputs (the ledger keys outputs by prompt version and LLM id) and
never a silent mix of old and new texts.

Partition 0 has no predecessor: its shift is the fixed ``FIRST_SHIFT`` text, written without an
LLM call (an LLM asked to compare with nothing invents a change).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections import Counter
from datetime import datetime, timezone
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PromptConfig", "FIRST_SHIFT", "sanitize", "summary_messages", "shift_messages",
           "prompt_version", "ItemLine"]

SYSTEM = ("You describe a movie viewer's tastes for a recommender system. "
          "Answer in one or two plain sentences.")
SUMMARY_TEMPLATE = (
    "Movies this user rated from {start} to {end} (rating out of 5):\n{items}\n"
    "Most frequent genres: {genres}.\n"
    "Describe this user's interests in this period.")
SHIFT_TEMPLATE = (
    "Earlier interests: {previous}\n"
    "Recent interests: {current}\n"
    "Describe how this user's interests changed from the earlier to the recent period.")
FIRST_SHIFT = "First period: there are no earlier interests to compare with."

_SPECIAL = re.compile(r"<\|[^|>]{0,40}\|>|<\||\|>|</?s>")
_SPACE = re.compile(r"\s+")


class PromptConfig(BaseModel):
    """Settings that shape the prompts (all part of the prompt version)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_items: int = Field(20, ge=1, description="items listed per summary prompt (small models "
                                                  "repeat themselves on long lists)")
    title_chars: int = Field(80, ge=8)
    categories_chars: int = Field(60, ge=0)
    text_chars: int = Field(600, ge=40, description="cap on a summary quoted in a shift prompt")
    output_chars: int = Field(1200, ge=40, description="cap on a stored LLM output")


class ItemLine(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str
    categories: str
    rating: float | None
    ts_us: int


def sanitize(value: object, limit: int) -> str:
    """Make catalog/LLM text safe to quote inside a prompt.

    Control and format characters go (a newline in a title could fake a new instruction), chat
    special-token markers are defused, whitespace collapses, and the length is capped.
    """
    text = "" if value is None else str(value)
    text = "".join(" " if unicodedata.category(ch).startswith("C") else ch for ch in text)
    text = _SPECIAL.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    return text if len(text) <= limit else text[: max(limit - 1, 0)].rstrip() + "…"


def _day(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d")


def summary_messages(lines: Sequence[ItemLine], cfg: PromptConfig) -> list[dict[str, str]]:
    """Chat messages asking for the interest summary of one partition."""
    # The best-rated (then most recent) items say most about taste; genres cover the rest.
    chosen = sorted(lines, key=lambda x: (-(x.rating or 0.0), -x.ts_us))[: cfg.max_items]
    items = "\n".join(
        f"- {sanitize(x.title, cfg.title_chars)} [{sanitize(x.categories, cfg.categories_chars)}]"
        + (f": {x.rating:g}" if x.rating is not None else "") for x in chosen)
    genres = Counter(g for x in lines for g in x.categories.split("|") if g.strip())
    top = ", ".join(sanitize(g, 30) for g, _ in genres.most_common(5)) or "unknown"
    body = SUMMARY_TEMPLATE.format(start=_day(min(x.ts_us for x in lines)),
                                   end=_day(max(x.ts_us for x in lines)), items=items, genres=top)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]


def shift_messages(previous: str, current: str, cfg: PromptConfig) -> list[dict[str, str]]:
    """Chat messages asking how interests moved from the previous partition to this one."""
    body = SHIFT_TEMPLATE.format(previous=sanitize(previous, cfg.text_chars),
                                 current=sanitize(current, cfg.text_chars))
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]


def prompt_version(cfg: PromptConfig) -> str:
    """12-hex fingerprint of templates + settings."""
    blob = "\x1e".join([SYSTEM, SUMMARY_TEMPLATE, SHIFT_TEMPLATE, FIRST_SHIFT,
                        cfg.model_dump_json()])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]
