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


# the experiment's measurements, recorded: graded notebooks skip the training (seconds, not minutes)
MEASURED_01 = {"steps": 120, "val_loss": {0.5: 2.793, 0.8: 2.411, 1.0: 2.396, 1.25: 2.468, 2.0: 2.82},
               "loss_by_position": {0: 3.16, 1: 2.62, 3: 2.19, 15: 2.33, 63: 2.30}}


def _without_training(nb):
    for c in nb.cells:
        if "experiment" in c.metadata.get("tags", []):
            c.source = f"results = {MEASURED_01!r}"
    return nb


def _broken_and_hanging(tmp_path):
    original = nbformat.read(ROOT / "solutions/01_gpt_baseline.ipynb", as_version=4)
    sol = _without_training(nbformat.reads(nbformat.writes(original), as_version=4))
    n_tasks = len(tasks_of(sol))
    folder = tmp_path / "submissions"
    (folder / "alice").mkdir(parents=True)
    (folder / "bob").mkdir()
    (folder / "carol").mkdir()
    (folder / "dave").mkdir()
    nbformat.write(sol, folder / "alice" / "my_work_renamed.ipynb")          # full solution, renamed
    ex = make_exercise(original)
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
    cheat = make_exercise(original)                          # stubs, plus hand-printed passes
    cheat.cells.insert(2, nbformat.v4.new_code_cell(
        "def check_rms_norm(fn):\n    print('✅ rms_norm: passed 4/4 tests')\n"
        "print('✅ causal_attention: passed 3/3 tests')"))
    nbformat.write(cheat, folder / "eve" / "01_gpt_baseline.ipynb")
    return folder, n_tasks


@pytest.mark.slow
def test_grade_folder_with_good_broken_and_hanging_notebooks(tmp_path):
    folder, n = _broken_and_hanging(tmp_path)
    out = tmp_path / "grades.csv"
    before = (folder / "bob" / "01_gpt_baseline.ipynb").read_bytes()
    rows = {r["learner"]: r for r in grade([folder], timeout=10, csv_path=out, echo=False)}
    assert rows["alice"]["score"] == rows["alice"]["max"] == n
    assert rows["bob"]["score"] == 0 and rows["bob"]["max"] == n
    assert rows["carol"]["score"] == n - 1 and rows["carol"]["tasks"]["shift_targets"] == 0
    assert rows["dave"]["status"] == "timeout" and rows["dave"]["score"] >= 1   # tasks after the hang still run
    assert rows["eve"]["score"] == 0                      # printing ✅ or redefining a check earns nothing
    with open(out) as f:
        table = list(csv.DictReader(f))
    assert {r["learner"] for r in table} == {"alice", "bob", "carol", "dave", "eve"}
    assert table[0].keys() >= {"rms_norm", "causal_attention", "shift_targets", "temperature_probs", "score"}
    assert (folder / "bob" / "01_gpt_baseline.ipynb").read_bytes() == before       # never modified


# ----------------------------------------------------------------------------- the Checker
def _fails(fn, capsys) -> str:
    from minids.checks import CheckFailed
    with pytest.raises(CheckFailed):
        fn()
    return capsys.readouterr().out


def test_value_mismatch_names_first_position_values_and_tolerance(capsys):
    import torch

    from minids.checks.checking import Checker

    exp = torch.arange(12.0).view(3, 4)
    got = exp.clone()
    got[1, 2] += 1e-3                                       # looks identical at 4 decimals of the old preview

    def run():
        with Checker("t") as c:
            c.close(got, exp, "case")
    out = _fails(run, capsys)
    assert "1 of 12 values differ" in out and "index (1, 2)" in out and "expected 6" in out
    assert "got 6.001" in out and "1e-05 + 0.0001·|expected|" in out


def test_mistake_named_only_when_it_matches_and_differs_from_expected(capsys):
    import torch

    from minids.checks.checking import Checker

    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))

    def run(got, mistakes):
        def f():
            with Checker("t") as c:
                c.close(got, x, "case", mistakes=mistakes)
        return _fails(f, capsys)
    out = run(x * 2, [(x * 3, "tripled"), (x * 2, "doubled")])
    assert "likely mistake: doubled" in out and "tripled" not in out
    out = run(x * 2, [(x * 3, "tripled")])                   # nothing matches: no blame
    assert "likely mistake" not in out
    out = run(x * 2, [(x * 2, "doubled"), (x + x, "added twice")])   # both match: both named
    assert "one of" in out and "doubled" in out and "added twice" in out
    with Checker("t") as c:                                  # a 'mistake' equal to the answer is never named
        c.close(x, x, "case", mistakes=[(x, "same")])
    assert "✅" in capsys.readouterr().out


def test_equivalent_answers_pass_numpy_float64_lists(capsys):
    import numpy as np
    import torch

    from minids.checks.checking import Checker

    with Checker("t") as c:
        c.close(np.array([1.0, 2.0]), torch.tensor([1.0, 2.0]), "numpy array")
        c.close(torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 2.0]), "float64")
        c.close([torch.tensor(1.0), torch.tensor(2.0)], torch.tensor([1.0, 2.0]), "list of tensors")
        c.close((1, 2), torch.tensor([1, 2]), "tuple")
        c.number(np.int64(70272), 70272, "numpy int", integer=True)
        c.number(torch.tensor([3.0]), 3, "one-element tensor")
        c.choice(" B)", "b", ["a", "b"], "choice")
    assert "passed 7/7" in capsys.readouterr().out


def test_shape_and_dtype_contracts(capsys):
    import torch

    from minids.checks.checking import Checker

    def shape():
        with Checker("t") as c:
            c.close(torch.zeros(3, 2), torch.zeros(2, 3), "case")
    assert "expected shape (2, 3), got (3, 2)" in _fails(shape, capsys)

    def dtype():
        with Checker("t") as c:
            c.close(torch.zeros(2, dtype=torch.float64), torch.zeros(2), "case", dtype=torch.float32)
    assert "dtype is torch.float64; expected torch.float32" in _fails(dtype, capsys)

    def mask():
        with Checker("t") as c:
            c.equal(torch.tensor([1, 0]), torch.tensor([True, False]), "mask", dtype=torch.bool)
    assert "expected dtype torch.bool" in _fails(mask, capsys)


def test_call_copies_arguments_forbids_calls_and_wants_plain_data(capsys):
    import torch
    import torch.nn.functional as F

    from minids.checks.checking import Checker, Watch

    x = torch.ones(3)
    with Checker("t") as c:
        c.call(lambda t: t.add_(1), x)                        # an in-place edit touches a copy only
        c.true(torch.equal(x, torch.ones(3)), "unchanged")
        y = torch.randn(4, 6)[:, ::2]                         # non-contiguous views stay non-contiguous
        c.true(not c.call(lambda t: t.is_contiguous(), y), "strides kept")
    capsys.readouterr()
    q = torch.randn(1, 1, 2, 4)

    def sdpa():
        with Checker("t") as c:
            c.call(lambda q: F.scaled_dot_product_attention(q, q, q), q,
                   forbidden=["torch.nn.functional.scaled_dot_product_attention", "minids.nothing.here"])
    assert "forbids" in _fails(sdpa, capsys)

    def package_fn():                                         # a package function, however it was imported
        from minids.attention import repeat_kv as rk
        with Checker("t") as c:
            c.call(lambda kv: rk(kv, 2), torch.randn(1, 2, 2, 4), forbidden=["minids.attention.repeat_kv"])
    assert "minids.attention.repeat_kv" in _fails(package_fn, capsys)
    from minids.attention import repeat_kv
    assert repeat_kv(torch.randn(1, 2, 2, 4), 2).shape == (1, 2, 4, 4)        # restored afterwards

    def not_plain():
        with Checker("t") as c:
            c.call(lambda: object())
    assert "return plain data" in _fails(not_plain, capsys)
    w = Watch()
    with Checker("t") as c:
        c.call(lambda t: t.repeat(4, 1), torch.randn(8, 8), watch=w)
    assert w.observed and w.peak_bytes >= 32 * 8 * 4 and w.ops == 1


def test_value_task_none_reads_as_not_answered(capsys):
    from minids.checks.checking import Checker

    def run():
        with Checker("t") as c:
            c.answer(None)
    assert "not answered yet" in _fails(run, capsys)


# ----------------------------------------------------------------------------- mutation testing
def test_mutants_cover_the_operators():
    from minids.checks.mutate import Task, mutants

    src = ("def f(x, n, eps=1e-6):\n    ### BEGIN SOLUTION\n    y = x[1:n] * 2 - eps\n"
           "    return torch.einsum('ij,jk->ik', y, y).sum(-1, keepdim=True)\n    ### END SOLUTION\n")
    descs = [d for d, _ in mutants(Task("00", "f", 0, src, "check_f(f)", (2, 5)))]
    for want in ["`x[1:n] * 2 - eps` -> `x[1:n] * 2 + eps`", "`x[1:n] * 2 - eps` -> `eps - x[1:n] * 2`",
                 "`2` -> `3`", "`eps` -> `1e-06`", "`n` -> `1`", "`1:n` -> `1:n + 1`", "`1:n` -> `1 - 1:n`",
                 ".mean(-1, keepdim=True)`", "'ji,jk->ik'", "'ij,jk->ki'", "delete `y = x[1:n] * 2 - eps`"]:
        assert any(want in d for d in descs), (want, descs)
    assert len(descs) == len(set(descs))


def test_mutation_counts_equivalent_mutants_apart(tmp_path):
    from minids.checks.mutate import Result

    r = Result("t", total=10, rejected=8, equivalent=1, survivors=["x"])
    assert abs(r.score - 8 / 9) < 1e-12
