"""Every relative link of README.md, MODEL_ZOO.md and docs/*.md points to a file of the repository,
and every #anchor into a markdown page names one of its headings (GitHub's heading ids)."""
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

import pytest

# Pages written on parallel branches, linked from the README before they are merged: a link to one
# of them is accepted while the file is missing (once it exists it is checked like any other).
PENDING_PAGES: set = set()

FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def markdown_files(repo: Path) -> List[Path]:
    return [repo / "README.md", repo / "MODEL_ZOO.md"] + sorted((repo / "docs").glob("*.md"))


def links(text: str) -> List[str]:
    """Link and image targets outside code blocks and inline code."""
    text = INLINE_CODE.sub("", FENCE.sub("", text))
    return LINK.findall(text)


def heading_ids(text: str) -> Set[str]:
    """GitHub's ids of a page's headings: lower case, punctuation dropped, spaces to hyphens,
    repeats numbered -1, -2, ..."""
    seen: Dict[str, int] = {}
    ids = set()
    for title in HEADING.findall(FENCE.sub("", text)):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        ids.add(slug if n == 0 else f"{slug}-{n}")
    return ids


def broken_links(page: Path, repo: Path, pending: Set[str] = frozenset()) -> List[Tuple[str, str]]:
    """(link, why) of every relative link of ``page`` that does not resolve."""
    out = []
    for target in links(page.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        try:
            rel = file.relative_to(repo).as_posix()
        except ValueError:
            out.append((target, "points outside the repository"))
            continue
        if not file.exists():
            if rel not in pending or anchor:
                out.append((target, f"{rel} does not exist"))
            continue
        if anchor and file.suffix == ".md" and anchor not in heading_ids(file.read_text(encoding="utf-8")):
            out.append((target, f"no heading with id #{anchor} in {rel}"))
    return out


def pytest_generate_tests(metafunc):
    """``page``: every markdown page of the repository (the rootdir, where setup.cfg is), by its
    relative path."""
    if "page" in metafunc.fixturenames:
        repo = Path(metafunc.config.rootpath)
        metafunc.parametrize("page", markdown_files(repo), ids=lambda p: p.relative_to(repo).as_posix())


def test_relative_links_resolve(repo_root, page):
    assert page.is_file(), page
    assert broken_links(page, Path(repo_root).resolve(), PENDING_PAGES) == []


def test_the_readme_links_every_docs_page(repo_root):
    repo = Path(repo_root)
    readme = set(links((repo / "README.md").read_text(encoding="utf-8")))
    pages = {p.relative_to(repo).as_posix() for p in (repo / "docs").glob("*.md")} | PENDING_PAGES
    assert sorted(pages - readme) == []


def test_the_checker_finds_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# Page A\n\n## The `make demo` run (2 CPUs)\n\ntext\n")
    page = tmp_path / "README.md"
    page.write_text(
        "[ok](docs/a.md) [ok](docs/a.md#the-make-demo-run-2-cpus) [ok](#top) [web](https://x.org/y)\n"
        "# Top\n"
        "[gone](docs/b.md) [bad anchor](docs/a.md#nope) ![img](docs/missing.png) [out](../elsewhere.md)\n"
        "[pending](docs/p.md) [pending anchor](docs/p.md#x)\n"
        "`[in code](docs/c.md)`\n```\n[in a block](docs/d.md)\n```\n"
    )
    found = broken_links(page, tmp_path, pending={"docs/p.md"})
    assert [link for link, _ in found] == [
        "docs/b.md", "docs/a.md#nope", "docs/missing.png", "../elsewhere.md", "docs/p.md#x"]
