"""Helpers for tests that use notebooks: run a solution notebook's code to get the reference
answers, and make the stubbed version of a learner's function."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import nbformat

from minids.checks.build import CHECK_CALL, strip_solutions

ROOT = Path(__file__).resolve().parents[2]


def notebook_namespace(path: str | Path, stubbed: bool = False, skip_checks: bool = True,
                       skip_tags: tuple[str, ...] = ("experiment",)) -> dict:
    """Execute the code cells of a notebook (optionally with solutions stripped) in one namespace;
    cells that call a check_...(...) are skipped (they are what the tests exercise), and so are
    cells tagged `experiment` (they train models: nbval runs them; tests check the experiment's
    check on recorded measurements). Cells whose solution was stripped define functions that
    raise NotImplementedError when called."""
    nb = nbformat.read(ROOT / path, as_version=4)
    ns: dict = {"__name__": "__notebook__"}
    for cell in nb.cells:
        if cell.cell_type != "code" or set(cell.metadata.get("tags", [])) & set(skip_tags):
            continue
        src = strip_solutions(cell.source) if stubbed else cell.source
        if skip_checks and CHECK_CALL.search(src):
            continue
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(compile("\n".join(lines), str(path), "exec"), ns)
            except NotImplementedError:
                if not stubbed:
                    raise
    return ns


class Wrong:
    """A plausible wrong answer for check_contract; `named` is text its hint must contain (the
    check must name this mistake, not only say that values differ)."""

    def __init__(self, answer, named: str | None = None):
        self.answer, self.named = answer, named

    def __repr__(self):
        return f"Wrong({getattr(self.answer, '__name__', type(self.answer).__name__)}, named={self.named!r})"


def check_contract(cases: dict, sol: dict, stub: dict):
    """The tests every chapter's checks must pass, for `cases` = {name: (check, [wrong answers])}
    or {name: (check, [wrong answers], [valid alternatives])}: the check passes on the solution's
    function (or value) and on every valid alternative (einsum or loops, NumPy, float64, ...),
    fails on the stub with 'not implemented yet' (a value task missing from the stub's namespace
    is passed as None: 'not answered yet'), and rejects every plausible wrong answer; a wrong
    answer given as `Wrong(answer, named="...")` must also get a hint containing that text.
    Assign the three returned functions to module-level `test_...` names so pytest collects them."""
    import pytest

    from minids.checks import CheckFailed

    names = sorted(cases)

    @pytest.mark.parametrize("name", names)
    def test_check_passes_on_solution(name, capsys):
        check, *rest = cases[name]
        check(sol[name])
        assert "✅" in capsys.readouterr().out
        for k, valid in enumerate(rest[1] if len(rest) > 1 else []):
            try:
                check(valid)
            except CheckFailed as e:
                raise AssertionError(f"{name}: valid alternative #{k} ({getattr(valid, '__name__', valid)!r}) "
                                     f"was rejected: {e}") from None
            assert "✅" in capsys.readouterr().out

    @pytest.mark.parametrize("name", names)
    def test_check_fails_on_stub(name, capsys):
        with pytest.raises(CheckFailed, match="not implemented yet|not answered yet"):
            cases[name][0](stub.get(name))
        assert "❌" in capsys.readouterr().out

    @pytest.mark.parametrize("name", names)
    def test_check_rejects_plausible_mistakes(name, capsys):
        check, wrongs = cases[name][:2]
        assert wrongs, f"{name}: list at least one plausible wrong answer"
        for k, wrong in enumerate(wrongs):
            named = wrong.named if isinstance(wrong, Wrong) else None
            answer = wrong.answer if isinstance(wrong, Wrong) else wrong
            with pytest.raises(CheckFailed):
                check(answer)
            out = capsys.readouterr().out
            if named:
                assert "likely mistake" in out and named in out, \
                    f"{name}: wrong answer #{k} should be named ({named!r}); the check said:\n{out}"

    return test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes
