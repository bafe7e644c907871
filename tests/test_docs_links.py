"""The documentation's links and the code's citations of it point at things that exist.

In the spirit of submitit's own README link test (submitit/test_documentation.py): every relative
link of README.md and docs/*.md names a file of the repository (and, with ``#anchor``, a heading of
that file); every ``docs/<file>`` mentioned in the README or the code exists; every section a
citation names (``docs/method.md "E-step, exactly"``) is a heading of that document; and nothing
cites the design notes by their old bare names, which live outside this repository.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
MARKDOWN = [ROOT / "README.md", *DOCS]
# where the README and the code mention docs/...: the brief's folders plus the tests and configs
CODE_DIRS = ("platform", "experiments", "launchers", "dashboard", "benchmarks", "tests", "conf", "scripts")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".sh", ".toml", ".txt", ".sql", ".cfg"}
SKIP_DIRS = {"__pycache__", "results", ".cache", "screenshots"}

LINK = re.compile(r"!?\[(?P<text>[^\]\n]*)\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
REF_LINK = re.compile(r"^\s*\[[^\]\n]+\]:\s*(?P<target>\S+)", re.M)
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.M)
DOCS_REF = re.compile(r"(?<![A-Za-z0-9_./-])docs/[A-Za-z0-9_./-]+")
CITATION = re.compile(r"(?<![A-Za-z0-9_./-])(?P<doc>docs/[A-Za-z0-9_./-]+?\.md)\s+(?P<names>\"[^\"\n]+\"(?:,\s*\"[^\"\n]+\")*)")
BARE_NOTES = re.compile(r"(?<![A-Za-z0-9_./-])(?:PAPER|DESIGN)\.md")


def _code_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml", ROOT / "conftest.py", *DOCS]
    for top in CODE_DIRS:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and path.suffix in TEXT_SUFFIXES and not SKIP_DIRS & set(path.relative_to(ROOT).parts):
                files.append(path)
    return [f for f in files if f.exists() and f.resolve() != Path(__file__).resolve()]


def _prose(md: str) -> str:
    """Markdown without code blocks and code spans: what a reader sees as links and headings."""
    return INLINE_CODE.sub("", FENCE.sub("", md))


def _slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in HEADING.finditer(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = _slug(m.group("title"))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _titles(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {m.group("title").replace("`", "").strip() for m in HEADING.finditer(text)}


def _links(path: Path) -> list[str]:
    text = _prose(path.read_text(encoding="utf-8"))
    return [m.group("target") for m in LINK.finditer(text)] + [m.group("target") for m in REF_LINK.finditer(text)]


def test_the_docs_exist_and_link_somewhere():
    assert {p.name for p in DOCS} >= {"method.md", "design.md"}
    assert sum(len(_links(p)) for p in MARKDOWN) > 5, "there should be several links"


@pytest.mark.parametrize("md", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_markdown_links_resolve(md):
    broken = []
    for target in _links(md):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:: not checked offline
            continue
        file_part, _, anchor = target.partition("#")
        dest = (md.parent / file_part).resolve() if file_part else md
        if not dest.exists():
            broken.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(ROOT)}")
    assert not broken, f"broken links in {md.relative_to(ROOT)}:\n" + "\n".join(broken)


def test_every_docs_reference_in_readme_and_code_exists():
    missing = []
    for path in _code_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for ref in DOCS_REF.findall(line):
                ref = ref.rstrip(".")  # the end of a sentence
                if not (ROOT / ref).exists():
                    missing.append(f"{path.relative_to(ROOT)}:{n}: {ref}")
    assert not missing, "references to files under docs/ that do not exist:\n" + "\n".join(missing)


def test_cited_sections_are_headings_of_the_cited_doc():
    unknown, cited = [], 0
    for path in _code_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in CITATION.finditer(line):
                doc = ROOT / m.group("doc")
                if not doc.exists():
                    continue  # reported by the test above
                titles = _titles(doc)
                for name in re.findall(r"\"([^\"]+)\"", m.group("names")):
                    cited += 1
                    if name.replace("`", "") not in titles:  # headings are compared without code spans
                        unknown.append(f"{path.relative_to(ROOT)}:{n}: {m.group('doc')} has no section {name!r}")
    assert cited > 10, f"expected the code to cite sections of docs/ by name, found {cited}"
    assert not unknown, "citations of sections that do not exist:\n" + "\n".join(unknown)


def test_nothing_cites_the_design_notes_by_their_bare_names():
    bare = []
    for path in _code_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if BARE_NOTES.search(line):
                bare.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bare, ("PAPER.md / DESIGN.md are not part of this repository; cite docs/method.md or "
                      "docs/design.md instead:\n" + "\n".join(bare))
