"""The documentation points only at files the repository holds."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
MD_NAME = re.compile(r"(?<![\w/.-])([\w./-]+\.md)\b")


def _missing(doc: Path) -> list[str]:
    text = doc.read_text(encoding="utf-8")
    named = {m for m in LINK.findall(text) if "://" not in m and not m.startswith("mailto:")}
    named |= set(MD_NAME.findall(text))
    return sorted(n for n in named if not (doc.parent / n).exists() and not (ROOT / n).exists())


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_file_a_doc_links_to_or_names_is_in_the_repository(doc):
    """A link or a `something.md` mention resolves beside the doc or at the repository root."""
    assert _missing(doc) == []
