"""The README and the docs/ pages stay true to the code.

Docs drift silently: a module is added and the tree no longer lists it, a page is renamed and a link
dangles, a flag is renamed and the README still shows the old one. Each test here reads the pages
as text and checks one kind of claim against the repository itself:

- the module tree under "## Layout" in docs/architecture.md lists exactly the modules on disk;
- every relative link (and its #anchor) in README.md, feature_repo/README.md and docs/*.md resolves;
- every repository file the pages cite in backticks (``encoders/uil/checkpoints.py``) exists;
- every ``liber`` command and flag the pages show exists, and the README lists every command.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import click
import pytest

from liber_features.cli.main import cli

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "feature_repo" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PACKAGES = ("liber_features", "encoders")
# Not modules with a role of their own: package markers and entry points.
UNLISTED = {"__init__.py", "__main__.py"}

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
CODE_SPAN = re.compile(r"`([^`\n]+)`")
CITED_FILE = re.compile(r"^[\w.\-/]+\.(?:py|md|yaml|toml)$")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)
LIBER_CALL = re.compile(r"(?<![\w./-])liber ([a-z][a-z-]*)(.*)")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _fences(text: str) -> list[str]:
    """The bodies of the fenced code blocks, line continuations (`\\`) joined."""
    return [block.split("\n", 1)[1].rsplit("```", 1)[0].replace("\\\n", " ") for block in FENCE.findall(text)]


def _prose(text: str) -> str:
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    return {_slug(h) for h in HEADING.findall(_prose(_text(page)))}


# --- the module tree -------------------------------------------------------------------------

def _layout_block() -> list[str]:
    text = _text(ROOT / "docs" / "architecture.md")
    _, sep, after = text.partition("\n## Layout\n")
    assert sep, "docs/architecture.md has no '## Layout' section"
    blocks = _fences(after)
    assert blocks, "the Layout section has no fenced block"
    return [line for line in blocks[0].splitlines() if line.strip()]


def _layout() -> dict[str, str]:
    """path → role, from lines like ``liber_features/ingest/partition.py  UBSP: ...``."""
    entries: dict[str, str] = {}
    for line in _layout_block():
        path, _, role = line.strip().partition(" ")
        assert path not in entries, f"{path} is listed twice in the Layout tree"
        entries[path] = role.strip()
    return entries


def _on_disk() -> tuple[set[str], set[str]]:
    modules: set[str] = set()
    folders: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            rel = path.relative_to(ROOT)
            if "__pycache__" in rel.parts:
                continue
            folders.add(rel.parent.as_posix() + "/")
            if path.name not in UNLISTED:
                modules.add(rel.as_posix())
    return modules, folders


def _tree_problems(listed: dict[str, str], modules: set[str], folders: set[str]) -> list[str]:
    listed_modules = {p for p in listed if p.endswith(".py")}
    listed_folders = {p for p in listed if p.endswith("/")}
    return ([f"listed, not on disk: {p}" for p in sorted(listed_modules - modules)]
            + [f"on disk, not listed: {p}" for p in sorted(modules - listed_modules)]
            + [f"folder listed, not on disk: {p}" for p in sorted(listed_folders - folders)]
            + [f"folder on disk, not listed: {p}" for p in sorted(folders - listed_folders)]
            + [f"neither a module nor a folder: {p}" for p in sorted(set(listed) - listed_modules - listed_folders)]
            + [f"no role: {p}" for p, role in sorted(listed.items()) if len(role.split()) < 2])


def test_layout_lists_exactly_the_modules_on_disk():
    """Add a module, add its line to docs/architecture.md's Layout (and remove it with the module)."""
    assert _tree_problems(_layout(), *_on_disk()) == []


def test_tree_check_fails_both_ways():
    """A module without a line, a line without a module, a folder left out, a line without a role."""
    listed = {"pkg/": "the package", "pkg/a.py": "module a", "pkg/gone.py": "a removed module", "pkg/c.py": ""}
    modules, folders = {"pkg/a.py", "pkg/b.py", "pkg/c.py", "pkg/sub/d.py"}, {"pkg/", "pkg/sub/"}
    assert _tree_problems(listed, modules, folders) == [
        "listed, not on disk: pkg/gone.py",
        "on disk, not listed: pkg/b.py",
        "on disk, not listed: pkg/sub/d.py",
        "folder on disk, not listed: pkg/sub/",
        "no role: pkg/c.py",
    ]


# --- links and cited files -------------------------------------------------------------------

def _broken_links(text: str, page: Path) -> list[str]:
    broken = []
    for target in LINK.findall(CODE_SPAN.sub("", _prose(text))):  # a link inside code is no link
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading #{anchor}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path):
    assert _broken_links(_text(page), page) == []


def test_link_check_catches_a_missing_page_and_anchor():
    page = ROOT / "docs" / "testing.md"
    text = ("[ok](architecture.md#layout) [gone](missing.md) [bad](architecture.md#no-such-part) "
            "[web](https://feast.dev) `[in code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n")
    assert _broken_links(text, page) == [
        "missing.md: no such file", "architecture.md#no-such-part: no heading #no-such-part"]


@functools.cache
def _repo_files() -> tuple[set[str], set[str]]:
    """Every file path in the checkout and every file name, hidden folders (.venv, .git) pruned."""
    paths: set[str] = set()
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != "__pycache__"]
        rel = Path(folder).relative_to(ROOT)
        paths.update((rel / name).as_posix() for name in files)
    return paths, {p.rsplit("/", 1)[-1] for p in paths}


def _missing_citations(text: str, page: Path, paths: set[str], names: set[str]) -> list[str]:
    """Backticked file names (`DESIGN.md`, `encoders/uil/llm.py`) that are not in the repository."""
    missing = []
    for span in CODE_SPAN.findall(_prose(text)):
        if not CITED_FILE.match(span):
            continue
        if "/" in span:
            here = (page.parent / span).resolve()
            found = span in paths or (here.is_file() and here.is_relative_to(ROOT))
        else:
            found = span in names
        if not found:
            missing.append(span)
    return missing


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_cited_repository_files_exist(page: Path):
    assert _missing_citations(_text(page), page, *_repo_files()) == []


def test_citation_check_catches_files_outside_the_repository():
    text = "`DESIGN.md` `MODELS.md` `encoders/checkpoints.py` `encoders/uil/checkpoints.py` `din.py` `model.onnx`"
    assert _missing_citations(text, ROOT / "README.md", *_repo_files()) == [
        "DESIGN.md", "MODELS.md", "encoders/checkpoints.py"]


# --- commands and flags ----------------------------------------------------------------------

def _commands() -> dict[str, click.Command]:
    ctx = click.Context(cli)
    return {name: cli.get_command(ctx, name) for name in cli.list_commands(ctx)}


def _flags(command: click.Command) -> set[str]:
    flags = {"--help"}
    for param in command.params:
        flags.update(o for o in (*param.opts, *param.secondary_opts) if o.startswith("--"))
    return flags


def _calls(text: str) -> list[tuple[str, str, bool]]:
    """(command word, the rest of its line, whether it stands in a fenced block's command line)."""
    calls = []
    snippets = [(line, True) for block in _fences(text) for line in block.splitlines()]
    snippets += [(span, False) for span in CODE_SPAN.findall(_prose(text))]
    for snippet, fenced in snippets:
        for match in LIBER_CALL.finditer(snippet):
            rest = re.split(r"\s#\s|&&|;", match.group(2))[0]
            at_start = fenced and re.match(r"^\s*(?:\w+=\S*\s+)*$", snippet[: match.start()]) is not None
            calls.append((match.group(1), rest, at_start))
    return calls


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_shown_commands_and_flags_exist(page: Path):
    commands = _commands()
    wrong = []
    for word, rest, at_start in _calls(_text(page)):
        if word not in commands:
            if at_start:  # a shell line that runs `liber WORD`: WORD must be a command
                wrong.append(f"liber {word}: no such command")
            continue
        wrong += [f"liber {word} {flag}" for flag in FLAG.findall(rest) if flag not in _flags(commands[word])]
    assert wrong == []


def test_readme_lists_every_command():
    shown = {word for word, _, at_start in _calls(_text(ROOT / "README.md")) if at_start}
    assert sorted(set(_commands()) - shown) == []


def test_flag_check_catches_a_renamed_flag():
    commands = _commands()
    (word, rest, _), = _calls("```bash\nliber materialize --repo feature_repo --rebuilt\n```\n")
    assert [f for f in FLAG.findall(rest) if f not in _flags(commands[word])] == ["--rebuilt"]


def test_configuration_section_holds_the_generated_table_markers():
    text = _text(ROOT / "README.md")
    config = text.partition("\n## Configuration\n")[2].partition("\n## ")[0]
    start, end = config.find("<!-- settings-table:start -->"), config.find("<!-- settings-table:end -->")
    assert 0 <= start < end
    assert "python -m liber_features.settings" in config
