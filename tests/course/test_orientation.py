"""Chapter 00 quotes the seed article: every Polish quote must appear in it word for word."""

import re

import nbformat
import pytest
from nbutil import ROOT

SEED = ROOT.parent / "shared" / "seed" / "000_625d13c4cb8d337a.txt"


def claims():
    nb = nbformat.read(ROOT / "notebooks/00_orientation.ipynb", as_version=4)
    src = next(c.source for c in nb.cells if c.cell_type == "code" and c.source.lstrip().startswith("CLAIMS"))
    ns = {}
    exec(src, ns)
    return ns["CLAIMS"]


def test_claims_table_has_polish_english_and_report_columns():
    rows = claims()
    assert len(rows) >= 6 and all(len(r) == 3 and all(r) for r in rows)


@pytest.mark.skipif(not SEED.exists(), reason="the seed article lives in ../shared/seed (not in a plain clone)")
def test_polish_quotes_are_verbatim():
    text = re.sub(r"\s+", " ", SEED.read_text(encoding="utf-8"))
    for pl, _, _ in claims():
        assert pl in text, pl
