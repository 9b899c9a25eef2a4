"""The builder (solutions/ -> exercises/) and the grader."""

import csv

import nbformat
import pytest
from nbutil import ROOT

from minids.checks.build import build, make_exercise, strip_solutions, tasks_of
from minids.checks.grade import grade


def test_strip_solutions_keeps_indentation():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x + 1\n    ### END SOLUTION\n\nprint(1)"
    assert strip_solutions(src) == ('def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError("your code here")'
                                    '\n\nprint(1)')


@pytest.mark.parametrize("src", ["### BEGIN SOLUTION\nx", "### END SOLUTION",
                                 "### BEGIN SOLUTION\n### BEGIN SOLUTION\n### END SOLUTION"])
def test_unbalanced_markers_are_errors(src):
    with pytest.raises(ValueError, match="SOLUTION"):
        strip_solutions(src)


def test_exercises_are_regenerated_from_solutions(tmp_path):
    """exercises/ must equal what the builder writes from solutions/ (never edited by hand)."""
    written = build(ROOT / "solutions", tmp_path)
    assert written, "no solution notebooks"
    for p in written:
        committed = ROOT / "exercises" / p.name
        assert committed.exists(), f"exercises/{p.name} missing: run `python -m minids exercises`"
        assert committed.read_text() == p.read_text(), f"exercises/{p.name} is stale: run `python -m minids exercises`"
    assert sorted(x.name for x in (ROOT / "exercises").glob("*.ipynb")) == sorted(p.name for p in written)


@pytest.mark.parametrize("path", sorted((ROOT / "solutions").glob("*.ipynb")), ids=lambda p: p.name)
def test_every_solution_notebook_has_three_graded_tasks_with_stubs(path):
    sol = nbformat.read(path, as_version=4)
    assert sol.metadata.get("minids", {}).get("chapter"), "solutions need metadata minids.chapter"
    ex = make_exercise(sol)
    assert len(tasks_of(ex)) >= 3
    stubs = sum(c.source.count("raise NotImplementedError") for c in ex.cells if c.cell_type == "code")
    assert stubs >= 3
    assert all(not c.get("outputs") for c in ex.cells if c.cell_type == "code")
    executed = [c for c in sol.cells if c.cell_type == "code" and c.execution_count]
    assert executed, "solutions are committed executed (strict nbval compares their outputs)"


def _broken_and_hanging(tmp_path):
    sol = nbformat.read(ROOT / "solutions/01_gpt_baseline.ipynb", as_version=4)
    folder = tmp_path / "submissions"
    (folder / "alice").mkdir(parents=True)
    (folder / "bob").mkdir()
    (folder / "carol").mkdir()
    (folder / "dave").mkdir()
    nbformat.write(sol, folder / "alice" / "my_work_renamed.ipynb")          # full solution, renamed
    ex = make_exercise(sol)
    nbformat.write(ex, folder / "bob" / "01_gpt_baseline.ipynb")              # untouched stubs
    broken = nbformat.reads(nbformat.writes(sol), as_version=4)
    broken.cells.insert(2, nbformat.v4.new_code_cell("1/0"))
    for c in broken.cells:                                                    # and one wrong task
        if "def make_example" in c.source:
            c.source = "def make_example(ids, i, T):\n    return ids[i:i+T], ids[i:i+T]"
    nbformat.write(broken, folder / "carol" / "01_gpt_baseline.ipynb")
    hanging = nbformat.reads(nbformat.writes(sol), as_version=4)
    hanging.cells.insert(5, nbformat.v4.new_code_cell("import time\nwhile True:\n    time.sleep(0.1)"))
    nbformat.write(hanging, folder / "dave" / "01_gpt_baseline.ipynb")
    (folder / "eve").mkdir()
    cheat = make_exercise(sol)                               # stubs, plus hand-printed passes
    cheat.cells.insert(2, nbformat.v4.new_code_cell(
        "def check_rms_norm(fn):\n    print('✅ rms_norm: passed 4/4 tests')\n"
        "print('✅ causal_attention: passed 3/3 tests')"))
    nbformat.write(cheat, folder / "eve" / "01_gpt_baseline.ipynb")
    return folder


@pytest.mark.slow
def test_grade_folder_with_good_broken_and_hanging_notebooks(tmp_path):
    folder = _broken_and_hanging(tmp_path)
    out = tmp_path / "grades.csv"
    before = (folder / "bob" / "01_gpt_baseline.ipynb").read_bytes()
    rows = {r["learner"]: r for r in grade([folder], timeout=10, csv_path=out, echo=False)}
    assert rows["alice"]["score"] == rows["alice"]["max"] == 4
    assert rows["bob"]["score"] == 0 and rows["bob"]["max"] == 4
    assert rows["carol"]["score"] == 3 and rows["carol"]["tasks"]["shift_targets"] == 0
    assert rows["dave"]["status"] == "timeout" and rows["dave"]["score"] >= 1   # tasks after the hang still run
    assert rows["eve"]["score"] == 0                      # printing ✅ or redefining a check earns nothing
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert {r["learner"] for r in table} == {"alice", "bob", "carol", "dave", "eve"}
    assert table[0].keys() >= {"rms_norm", "causal_attention", "shift_targets", "temperature_probs", "score"}
    assert (folder / "bob" / "01_gpt_baseline.ipynb").read_bytes() == before       # never modified
