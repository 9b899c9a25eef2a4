"""A class of students attacks the grader (chapter 01 of the live course; only the public
`grade(paths, timeout, csv_path, echo)` is used, so these tests run against any grader):
forged verdicts in every way the notebook's own process allows, odd metadata, honest work in
unusual spelling, a forbidden library call, a task that raises."""

import csv

import grading_attacks as A
import nbformat
import pytest

from minids.checks.grade import grade

MINI = ["rms_norm", "causal_attention", "shift_targets"]      # a correct notebook for these three tasks


def _write(folder, learner, nb, name=A.NAME):
    (folder / learner).mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / learner / name)
    return folder / learner / name


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    folder = tmp / "submissions"
    honest = _write(folder, "a_honest", A.mini_solution(MINI))
    _write(folder, "b_styled", A.restyle_checks(A.mini_solution(MINI)))
    ex = A.exercise()
    _write(folder, "c_hook", A.with_cell(ex, A.HOOK, at=A.first_code_index(ex) + 1))
    _write(folder, "d_print", A.with_cell(ex, A.PRINT, at=A.first_code_index(ex) + 1))
    _write(folder, "e_transformer", A.with_cell(ex, A.TRANSFORMER, at=A.first_code_index(ex) + 1))
    _write(folder, "f_allclose", A.with_cell(ex, A.ALLCLOSE))
    _write(folder, "g_checks", A.with_cell(ex, A.CHECKS, at=A.first_code_index(ex) + 1))
    forged = A.with_cell(ex, A.HOOK, at=A.first_code_index(ex) + 1)
    forged.metadata["minids"] = {"chapter": A.CHAPTER, "tasks": A.ALL_TASKS, "kind": "exercise"}
    _write(folder, "h_metadata", forged)
    _write(folder, "i_stack", A.with_cell(ex, A.stack_peek()))
    _write(folder, "j_reader", A.with_cell(ex, A.reader(honest)))
    odd = A.exercise()
    odd.metadata["minids"] = A.CHAPTER                                  # a string, not a dict
    _write(folder, "k_meta_str", odd)
    odd = A.exercise()
    odd.metadata["minids"] = {"chapter": A.CHAPTER, "tasks": 5}         # tasks: a number
    _write(folder, "l_meta_tasks", odd)
    odd = A.mini_solution(MINI)
    odd.metadata["minids"] = {"chapter": int(A.CHAPTER), "tasks": {"x": 1}}
    _write(folder, "m_renamed", odd, name="my lab, final version.ipynb")  # renamed; chapter as an int
    _write(folder, "n_sdpa", A.replace_def(A.mini_solution(MINI), "causal_attention", A.SDPA))
    broken = A.replace_def(A.mini_solution(MINI), A.FUNCTIONS["rms_norm"],
                           "def rms_norm(x, weight, eps=1e-6):\n    return 1 / 0")
    _write(folder, "o_raises", broken)
    before = {p: p.read_bytes() for p in folder.rglob("*.ipynb")}
    out = tmp / "grades.csv"
    rows = {r["learner"]: r for r in grade([folder], timeout=60, csv_path=out, echo=False, **A.grade_options())}
    with open(out, newline="") as f:
        table = {r["learner"]: r for r in csv.DictReader(f)}
    return rows, table, before


def _score(table, learner, task=None):
    row = table[learner]
    return int(row[task]) if task else int(row["score"])


N = len(A.TASKS)


@pytest.mark.slow
def test_honest_notebooks_score_what_they_solve_and_every_row_has_the_courses_maximum(graded):
    rows, table, before = graded
    assert _score(table, "a_honest") == len(MINI)
    assert all(int(r["max"]) == N for r in table.values()), {k: r["max"] for k, r in table.items()}
    assert all(p.read_bytes() == data for p, data in before.items())   # submissions are never modified


@pytest.mark.slow
def test_check_lines_with_a_comment_a_semicolon_spaces_or_line_breaks_still_score(graded):
    rows, table, _ = graded
    assert _score(table, "b_styled") == len(MINI), rows["b_styled"]["messages"]


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["c_hook", "d_print", "e_transformer", "g_checks", "i_stack"])
def test_forged_verdicts_earn_nothing(graded, learner):
    """An untouched exercise plus a post_run_cell hook / patched print / input transformer /
    replaced checks / a function that reads the expected value from the check's frame."""
    rows, table, _ = graded
    assert _score(table, learner) == 0, rows[learner]["messages"]


@pytest.mark.slow
def test_patched_allclose_earns_nothing(graded):
    rows, table, _ = graded
    assert _score(table, "f_allclose", "rms_norm") == 0 and _score(table, "f_allclose") == 0


@pytest.mark.slow
def test_task_names_in_the_metadata_are_ignored(graded):
    """The old grader took the tasks from the notebook's metadata: 24/24 with a forged verdict."""
    rows, table, _ = graded
    assert _score(table, "h_metadata") == 0 and int(table["h_metadata"]["max"]) == N
    assert set(rows["h_metadata"]["tasks"]) == set(A.TASKS)


@pytest.mark.slow
def test_another_learners_submission_cannot_be_read_while_grading(graded):
    rows, table, _ = graded
    assert _score(table, "j_reader") == 0, rows["j_reader"]["messages"]


@pytest.mark.slow
def test_odd_metadata_gives_a_graded_row(graded):
    rows, table, _ = graded
    for learner in ("k_meta_str", "l_meta_tasks"):
        assert table[learner]["chapter"] == A.CHAPTER and not table[learner]["status"].startswith(("error", "unknown"))
    assert table["m_renamed"]["chapter"] == A.CHAPTER and _score(table, "m_renamed") == len(MINI)


@pytest.mark.slow
def test_a_forbidden_call_is_flagged(graded):
    rows, table, _ = graded
    flags = table["n_sdpa"]["flags"]
    assert "causal_attention: torch.nn.functional.scaled_dot_product_attention" in flags, flags
    assert _score(table, "n_sdpa", "causal_attention") == 0 and _score(table, "n_sdpa", "rms_norm") == 1
    assert table["a_honest"]["flags"] == ""


@pytest.mark.slow
def test_a_task_whose_code_raises_scores_zero_for_that_task_only(graded):
    rows, table, _ = graded
    assert _score(table, "o_raises", "rms_norm") == 0
    assert _score(table, "o_raises") == len(MINI) - 1
    assert "cell(s) raised" in table["o_raises"]["status"]
