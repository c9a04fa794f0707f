"""The README stays a landing page, and no README / docs link points to a missing file or heading.

``mkdocs build --strict`` (run by ``.ci/run``) checks the site's own links and API references;
these tests also cover the README, which is outside the site, and run without MkDocs.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 150

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def _prose(text: str) -> str:
    """Markdown without fenced code blocks and code spans (links there are not links)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def slug(heading: str) -> str:
    """The anchor Python-Markdown's toc extension (MkDocs) gives a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def anchors(path: Path) -> set[str]:
    """The heading anchors of a markdown file."""
    return {slug(h) for h in _HEADING.findall(_FENCE.sub("", path.read_text(encoding="utf-8")))}


def broken_links(path: Path) -> list[str]:
    """'target: why' for each relative link of ``path`` whose file or heading does not exist."""
    problems = []
    for target in _LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if target.startswith(_EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        if not destination.exists():
            problems.append(f"{target}: {destination} does not exist")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            problems.append(f"{target}: {destination.name} has no heading with anchor #{anchor}")
    return problems


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def test_readme_is_a_landing_page() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < MAX_README_LINES, (
        f"README.md has {len(lines)} lines; keep it under {MAX_README_LINES} and move details "
        "to a page in docs/"
    )


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


def nav_pages(node: object) -> set[str]:
    """Every page path named in an mkdocs.yml ``nav`` (nested lists of titles -> paths)."""
    if isinstance(node, str):
        return {node}
    if isinstance(node, dict):
        return set().union(*(nav_pages(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(nav_pages(v) for v in node))
    return set()


def test_every_docs_page_is_in_the_nav() -> None:
    """A page in docs/ that mkdocs.yml's nav does not list is lost to readers of the site."""
    nav = nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
    pages = {page.relative_to(DOCS).as_posix() for page in DOCS.rglob("*.md")}
    assert sorted(pages - nav) == [], "add these pages to nav in mkdocs.yml"
    assert sorted(nav - pages) == [], "nav names pages that docs/ does not have"


def test_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Title\n\n## The global batch\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md) [ok too](other.md#the-global-batch) [here](#page) "
        "[web](https://example.org/x.md)\n\n"
        "[gone](missing.md) [no heading](other.md#the-global-batches) [self](#nowhere)\n\n"
        "```\n[in code](absent.md)\n```\n`[span](absent2.md)`\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert [p.split(":")[0] for p in problems] == [
        "missing.md",
        "other.md#the-global-batches",
        "#nowhere",
    ]


def test_slug_matches_mkdocs_anchors() -> None:
    assert slug("Remaining differences from DeepLab-v2 / deeplab-pytorch") == (
        "remaining-differences-from-deeplab-v2-deeplab-pytorch"
    )
    assert slug("What the paper's configs run") == "what-the-papers-configs-run"
    assert slug("Batch invariance: batched labels (`batch_mode`)") == (
        "batch-invariance-batched-labels-batch_mode"
    )


def test_readme_documents_what_ci_runs() -> None:
    """The README's two set-up commands are the ones .ci/run and the CI workflow run."""
    readme = README.read_text(encoding="utf-8")
    install = 'pip install -q -c constraints.txt -e ".[dev]"'
    tests = "python -m pytest -q -x --timeout 900"
    assert f"{install} && {tests}" in readme
    assert f"{install} && python -m wsss_pl fit --config configs/demo.yaml" in readme
    for ci in (ROOT / ".ci" / "run", ROOT / ".github" / "workflows" / "ci.yml"):
        text = ci.read_text(encoding="utf-8")
        assert install in text and tests in text, f"{ci} no longer runs the README's commands"
        assert "mkdocs build --strict" in text, f"{ci} does not build the documentation"


@pytest.mark.skipif(shutil.which("mkdocs") is None, reason="mkdocs not installed (dev extra)")
def test_site_builds_strict(tmp_path: Path) -> None:
    """Every page, nav entry, link, anchor and API reference resolves (as CI builds it).

    Without ``-q``: MkDocs 1.6 ``--strict -q`` hides the warnings from the strict check.
    """
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert result.returncode == 0 and not warnings, result.stderr[-4000:]
    assert (tmp_path / "reference" / "labelling" / "index.html").is_file()
