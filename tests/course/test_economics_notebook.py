"""Chapter 07 quotes the seed article's cost claims: each Polish quote (parts split at "[...]")
must appear in the article word for word."""

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]
SEED = ROOT.parent / "shared" / "seed" / "000_625d13c4cb8d337a.txt"


def _quotes() -> list[str]:
    nb = nbformat.read(ROOT / "notebooks" / "07_economics.ipynb", as_version=4)
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    return re.findall(r"„(.*?)”", text)


def test_the_lesson_quotes_the_cost_claims():
    quotes = " ".join(_quotes())
    for needle in ("6 milionów dolarów", "2048 GPU", "50 000 GPU", "1,6 miliarda", "944 mln",
                   "500 milionów", "100 milionów"):
        assert needle in quotes, needle


@pytest.mark.skipif(not SEED.exists(), reason="the seed article is in ../shared/seed")
def test_polish_quotes_are_verbatim():
    article = re.sub(r"\s+", " ", SEED.read_text(encoding="utf-8"))
    for q in _quotes():
        for part in q.split("[...]"):
            part = re.sub(r"\s+", " ", part).strip()
            assert part and part in article, part
