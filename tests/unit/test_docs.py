"""The documentation stands alone: every relative link in the Markdown pages points at a file of the
repository (and, with ``#anchor``, at a heading of that page), and no page, module, test or bench
refers to design documents that are not part of the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "tests" / "README.md", *(ROOT / "docs").glob("*.md")]
    + ([ROOT / "bench" / "README.md"] if (ROOT / "bench" / "README.md").exists() else [])
)
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
# Names of documents that live outside the repository (kept apart so this file does not match itself).
OUTSIDE = re.compile(
    "|".join(["DESIGN" + r"\.md", "STYLE" + r"\.md", r"\bseeds" + "/", r"\bthe seed" + r"(?:'s|s')?\b"]),
    re.IGNORECASE,
)
SOURCES = ("docs", "pytest_vpstest", "suites", "tests", "bench")


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    fenced = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(page: Path) -> list[str]:
    out: list[str] = []
    fenced = False
    for line in page.read_text().splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            out.extend(LINK.findall(re.sub(r"`[^`]*`", "", line)))
    return out


def test_slug_follows_githubs_rules() -> None:
    assert slug("The state machine (`loop/machine.py`; pure)") == "the-state-machine-loopmachinepy-pure"
    assert slug("Project config additions (all optional; the base schema loads unchanged)") == (
        "project-config-additions-all-optional-the-base-schema-loads-unchanged"
    )
    assert slug("Plugin ↔ loop") == "plugin--loop"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto: not checked here
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert broken == []


def module_map() -> dict[str, set[str]]:
    """The modules the map at the top of docs/internals.md names, by folder (``""`` is the package)."""
    text = (ROOT / "docs" / "internals.md").read_text()
    block = text.split("## Module map", 1)[1].split("```", 2)[1]
    named: dict[str, set[str]] = {}
    top = sub = ""
    for line in block.splitlines():
        if m := re.match(r"(\w+)/\s", line):
            top, sub = ("" if m.group(1) == "pytest_vpstest" else m.group(1)), ""
        elif m := re.match(r"  (\w+)/\s", line):
            sub = m.group(1)
        elif m := re.match(r"( +)([\w, .]+\.py)\b", line):
            folder = "/".join(x for x in (top, sub if len(m.group(1)) > 2 else "") if x)
            for name in re.findall(r"\w+\.py", m.group(2)):
                named.setdefault(folder, set()).add(name)
    return named


def test_the_module_map_names_every_module() -> None:
    named = module_map()
    sources = {ROOT / "pytest_vpstest": "", ROOT / "suites": "suites"}
    missing = []
    for folder, prefix in sources.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder)
            where = "/".join(x for x in (prefix, *rel.parent.parts) if x)
            if where.startswith("lab/agent") or (path.name == "__init__.py" and where):
                continue  # the agent has its own map in docs/agent.md; packages are their folder line
            if path.name not in named.get(where, set()):
                missing.append(str(path.relative_to(ROOT)))
    assert sorted(missing) == []


def test_the_agent_code_map_names_every_agent_module() -> None:
    text = (ROOT / "docs" / "agent.md").read_text().split("## Code map", 1)[1]
    named = set(re.findall(r"`(\w+\.py)`", text))
    modules = {p.name for p in (ROOT / "pytest_vpstest" / "lab" / "agent").glob("*.py")}
    assert modules - {"__init__.py", "__main__.py"} - named == set()


def test_nothing_refers_to_documents_outside_the_repository() -> None:
    kinds = (".py", ".md", ".yaml", ".json")
    files = [*PAGES, *(p for d in SOURCES for p in (ROOT / d).rglob("*") if p.suffix in kinds)]
    hits = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in sorted(set(files))
        if path.is_file()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert hits == []
