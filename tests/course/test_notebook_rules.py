"""What can be enforced of docs/CONTRIBUTING.md's notebook rules without running the notebooks:
lessons and solutions are committed executed; a cell excluded from nbval's comparison (tag
`nbval-ignore-output`) that prints numbers asserts something; one mechanism (tags, not comments);
and no file of the project names a path of the machine it was written on."""

import re
import subprocess
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[2]

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "solutions").glob("*.ipynb"))
IGNORE = "nbval-ignore-output"
DIGIT = re.compile(r"\d")


def _code_cells(path):
    return [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]


def _printed_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream" and out.get("name") == "stdout":
            parts.append(out.get("text", ""))
        elif "data" in out and "text/plain" in out["data"] and "image/png" not in out["data"] \
                and "application/vnd.jupyter.widget-view+json" not in out["data"]:
            parts.append(out["data"]["text/plain"])
    return "".join(parts)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_notebook_is_committed_executed(path):
    """nbval's strict mode compares only cells with a stored execution count: a notebook stripped
    of its outputs would pass while checking nothing."""
    unexecuted = [i for i, c in enumerate(_code_cells(path)) if c.source.strip() and c.execution_count is None]
    assert not unexecuted, f"code cells never executed (run the notebook and commit it): {unexecuted}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_ignored_outputs_are_asserted_instead(path):
    """A tagged cell is not string-compared; if it prints numbers, it must assert what they show
    (directly, or through a check_...() call that asserts). Timings are the one exception: they
    differ on every machine and are never asserted, and the cell says so in a comment
    ("# timings ... not asserted")."""
    bad = []
    for i, c in enumerate(_code_cells(path)):
        if "NBVAL_IGNORE_OUTPUT" in c.source:
            bad.append(f"cell {i}: use the cell tag {IGNORE!r}, not a comment")
        if IGNORE in c.metadata.get("tags", []) and DIGIT.search(_printed_text(c)):
            if not re.search(r"\bassert\b|\bcheck_\w+\(|assert_close|#.*timings?\b.*\bnot asserted", c.source):
                bad.append(f"cell {i}: prints numbers that nbval no longer compares, and asserts none of them")
    assert not bad, "\n".join(bad)


def _tracked_text_files():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        p = ROOT / name
        if p.suffix in {".png", ".jpg", ".gif", ".ico", ".safetensors", ".bin"} or not p.is_file():
            continue
        try:
            yield name, p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue


def test_no_path_of_this_machine_in_the_project():
    """A learner's clone has none of the paths of the machine that wrote the files: the checkout,
    its parent folder, the home folder, the virtual environment's absolute path."""
    needles = {str(ROOT), str(Path.home()) + "/"}
    if len(ROOT.parent.parts) > 2:          # a deep parent is this machine's; a top-level one (tmp) is anyone's
        needles.add(str(ROOT.parent) + "/")
    needles = {n for n in needles if len(n) > 2}
    found = [f"{name}: {n}" for name, text in _tracked_text_files() for n in needles if n in text]
    assert not found, "machine paths in the project:\n" + "\n".join(found)


def test_each_lesson_s_further_reading_is_in_docs_readings():
    """Every lesson ends with "Further reading"; docs/readings.md collects them, chapter by chapter."""
    doc = (ROOT / "docs" / "readings.md").read_text(encoding="utf-8")
    sections = dict(re.findall(r"^## (\w+) — .*?\n(.*?)(?=^## |\Z)", doc, re.M | re.S))
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown"]
        last = cells[-1].source
        assert last.startswith("## Further reading"), f"{path.name} does not end with Further reading"
        chapter = path.name.split("_")[0]
        assert chapter in sections, f"docs/readings.md has no section for chapter {chapter}"
        cited = set(re.findall(r"arXiv:? ?(\d{4}\.\d{4,5})", last))
        missing = cited - set(re.findall(r"\d{4}\.\d{4,5}", sections[chapter]))
        assert not missing, f"{path.name}: arXiv ids missing from docs/readings.md's chapter {chapter}: {missing}"
