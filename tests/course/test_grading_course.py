"""The whole course through the grader: every solution notebook scores full marks and the exercise
notebook generated from it scores 0. This runs every chapter's checks through the remote proxy
(functions, think-question values, experiments' measurements, callbacks, modules)."""

import grading_attacks as A
import nbformat
import pytest
from nbutil import ROOT

from minids.checks.build import make_exercise
from minids.checks.grade import grade

SOLUTIONS = sorted((ROOT / "solutions").glob("*.ipynb"))


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("course")
    for path in SOLUTIONS:
        nb = nbformat.read(path, as_version=4)
        (folder / "solution").mkdir(exist_ok=True)
        (folder / "exercise").mkdir(exist_ok=True)
        nbformat.write(nb, folder / "solution" / path.name)
        nbformat.write(make_exercise(nb), folder / "exercise" / path.name)
    graded = grade([folder], timeout=120, echo=False, **A.grade_options())
    return {(r["learner"], r["notebook"]): r for r in graded}


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_every_solution_scores_full_marks(rows, path):
    r = rows[("solution", path.name)]
    assert r["max"] >= 3 and r["score"] == r["max"], r["messages"]
    assert r["status"] == "ok" and r["flags"] == [], (r["status"], r["flags"])


@pytest.mark.slow
@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_every_generated_exercise_scores_zero(rows, path):
    r = rows[("exercise", path.name)]
    assert r["max"] == rows[("solution", path.name)]["max"] and r["score"] == 0, r["messages"]
