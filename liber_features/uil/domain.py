"""The catalog domain of the prompts: templates as data (TOML), not code.

A :class:`Domain` holds every word of the UIL prompts that depends on what the items are — the
role of the system message, what a summary prompt lists and asks, how one item line reads
(title, categories, rating, event type), what each event type means ("bought", "viewed") and
which event types outrank others when a long partition is cut to ``max_items``. Two presets ship
in ``uil/domains/``: ``movies`` (the default: LIBER's prompts word for word as they were before
domains existed) and ``products`` (a shop or content catalog with implicit feedback). A user's
own file is a TOML with the same keys; ``base = "products"`` in it takes every key it does not
set from that preset.

What the domain cannot change is the framing of untrusted text: the code, not the template,
puts the data between the ``<catalog_data>`` fence lines and appends the fence rule to the
system message, and every quoted value is sanitised (``prompts.sanitize``) whatever the domain.

Templates are checked when the domain loads (a misspelt or missing placeholder would otherwise
surface hours into an encode run as a KeyError, or worse as prompts without their items): each
field accepts only its own placeholders and must contain its required ones.
"""

from __future__ import annotations

import functools
import hashlib
import string
import tomllib
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from liber_features.errors import ConfigError

__all__ = ["FENCE_CLOSE", "FENCE_OPEN", "PRESETS", "Domain", "DomainError", "load_domain", "movies"]

PRESETS = ("movies", "products")
#: The data fence (prompts' module docstring). Here, not in ``prompts``, because the code that
#: places it around a template's data lives here and ``prompts`` imports this module.
FENCE_OPEN, FENCE_CLOSE = "<catalog_data>", "</catalog_data>"
_FENCE_WORD = "catalog_data"  # no template may write the fence's tag: the code places it

#: field → (allowed placeholders, required placeholders). ``noun`` is the domain's own noun.
_PLACEHOLDERS: dict[str, tuple[set[str], set[str]]] = {
    "role": ({"noun"}, set()),
    "summary_intro": ({"noun", "start", "end"}, set()),
    "summary_data": ({"noun", "items", "genres"}, {"items"}),
    "summary_ask": ({"noun"}, set()),
    "shift_intro": ({"noun"}, set()),
    "shift_data": ({"noun", "previous", "current"}, {"previous", "current"}),
    "shift_ask": ({"noun"}, set()),
    "first_shift": ({"noun"}, set()),
    "item_line": ({"title", "categories", "rating", "event"}, {"title"}),
    "rating_text": ({"rating"}, {"rating"}),
    "untitled": (set(), set()),
    "no_categories": (set(), set()),
}


class DomainError(ConfigError):
    """A domain setting or template file is unusable: names the file and the field or placeholder."""


def _placeholders(text: str) -> set[str]:
    """The ``{name}`` fields of a str.format template; a format spec or conversion is refused."""
    names = set()
    for _literal, name, spec, conversion in string.Formatter().parse(text):
        if name is None:
            continue
        if spec or conversion:
            raise ValueError(f"placeholder {{{name}}} has a format spec or conversion; write plain {{{name}}}")
        names.add(name)
    return names


def _braced(names: list[str]) -> str:
    return ", ".join("{" + n + "}" for n in names)


class Domain(BaseModel):
    """Every domain-dependent word of the prompts (module docstring); frozen, checked on creation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="shown in run parameters; not part of the prompts")
    noun: str = Field(min_length=1, description="what the items are, plural ('movies', 'courses'): {noun}")
    role: str = Field(description="the system message before the fence rule the code appends")
    summary_intro: str = Field(description="the summary prompt's line before the data fence ('' = none)")
    summary_data: str = Field(description="inside the fence: {items} (one line per item), {genres}")
    summary_ask: str = Field(description="the summary prompt's line after the fence")
    shift_intro: str = Field("", description="the shift prompt's line before the fence ('' = none)")
    shift_data: str = Field(description="inside the fence: {previous} and {current} summaries")
    shift_ask: str = Field(description="the shift prompt's line after the fence")
    first_shift: str = Field(description="partition 0's shift, stored without an LLM call")
    item_line: str = Field(description="one item: {title} [{categories}] {rating} {event}; a field "
                                       "left out is not shown")
    rating_text: str = Field(description="what {rating} in item_line becomes when the event has one")
    untitled: str = Field(description="the title of an item whose title sanitises to nothing")
    no_categories: str = Field(description="{genres} when no item has a category")
    event_text: dict[str, str] = Field(default_factory=dict,
                                       description="event type → what {event} becomes ('' for others)")
    event_rank: list[str] = Field(default_factory=list,
                                  description="event types, strongest first: which items a long "
                                              "partition lists (unlisted types rank last)")

    @model_validator(mode="after")
    def _templates_are_complete(self) -> Domain:
        problems = []
        for field, (allowed, required) in _PLACEHOLDERS.items():
            text = getattr(self, field)
            try:
                names = _placeholders(text)
            except ValueError as exc:
                problems.append(f"{field}: {exc}")
                continue
            if missing := sorted(required - names):
                problems.append(f"{field} lacks placeholder(s) {_braced(missing)}")
            if unknown := sorted(names - allowed):
                problems.append(f"{field} has unknown placeholder(s) {_braced(unknown)}"
                                f" (allowed: {', '.join(sorted(allowed)) or 'none'})")
        texts = [getattr(self, f) for f in _PLACEHOLDERS] + list(self.event_text.values())
        if any(_FENCE_WORD in t for t in texts):
            problems.append(f"a template writes the data fence '{_FENCE_WORD}': the code places it")
        if any("{" in t or "}" in t for t in self.event_text.values()):
            problems.append("event_text values are plain text, without placeholders")
        # Ingest stores event types lower-case: a 'Purchase' key here would never match one.
        if odd := sorted({t for t in [*self.event_text, *self.event_rank] if t != t.strip().lower() or not t}):
            problems.append(f"event types in event_text / event_rank must be lower-case: {odd}")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def fingerprint(self) -> str:
        """12 hex digits of the sha256 of every field: two domains that differ anywhere differ here."""
        return hashlib.sha256(self.model_dump_json().encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        """What an encode run records as its domain (``liber status`` and the report show it): a
        preset's name when the domain is that preset exactly, else ``name@fingerprint`` — a
        template file (even one that kept a preset's ``name``) is told apart by its content."""
        if self.name in PRESETS and self == load_domain(self.name):
            return self.name
        return f"{self.name}@{self.fingerprint}"

    def summary_template(self) -> str:
        """The user message of a summary prompt, the fence placed by the code around the data."""
        return _fenced(self.summary_intro, self.summary_data, self.summary_ask)

    def shift_template(self) -> str:
        return _fenced(self.shift_intro, self.shift_data, self.shift_ask)


def _fenced(intro: str, data: str, ask: str) -> str:
    return "\n".join([*([intro] if intro else []), FENCE_OPEN, data, FENCE_CLOSE, ask])


@functools.cache
def _preset_text(name: str) -> str:
    return resources.files("liber_features.uil").joinpath("domains", f"{name}.toml").read_text("utf-8")


def _preset_data(name: str) -> dict:
    return tomllib.loads(_preset_text(name))


def _build(data: dict, where: str) -> Domain:
    try:
        return Domain(**data)
    except ValidationError as exc:
        parts = [(f"{'.'.join(str(x) for x in e['loc'])}: " if e["loc"] else "")
                 + e["msg"].removeprefix("Value error, ") for e in exc.errors(include_url=False)]
        raise DomainError(f"domain {where}: " + "; ".join(parts)) from None


def load_domain(spec: str | Path | None) -> Domain:
    """A preset by name (``movies``, ``products``) or a TOML file's domain; None = ``movies``."""
    spec = "movies" if spec is None or str(spec).strip() == "" else str(spec).strip()
    if spec in PRESETS:
        return _build(_preset_data(spec), f"preset '{spec}'")
    path = Path(spec).expanduser()
    if path.suffix != ".toml":
        raise DomainError(f"domain '{spec}': not a preset ({', '.join(PRESETS)}) nor a .toml file")
    try:
        data = tomllib.loads(path.read_text("utf-8"))
    except OSError as exc:
        raise DomainError(f"domain file {path}: cannot be read ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise DomainError(f"domain file {path}: not valid TOML ({exc})") from None
    base = data.pop("base", None)
    if base is not None:
        if base not in PRESETS:
            raise DomainError(f"domain file {path}: base '{base}' is not a preset ({', '.join(PRESETS)})")
        data = {**_preset_data(base), **data}
    return _build(data, f"file {path}")


def movies() -> Domain:
    """The default domain (LIBER's original movie prompts)."""
    return load_domain("movies")
