"""Helpers for tests that use notebooks: run a solution notebook's code to get the reference
answers, and make the stubbed version of a learner's function."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import nbformat

from minids.checks.build import CHECK_CALL, strip_solutions

ROOT = Path(__file__).resolve().parents[2]


def notebook_namespace(path: str | Path, stubbed: bool = False, skip_checks: bool = True) -> dict:
    """Execute the code cells of a notebook (optionally with solutions stripped) in one namespace;
    cells that call a check_...(...) are skipped (they are what the tests exercise). Cells whose
    solution was stripped define functions that raise NotImplementedError when called."""
    nb = nbformat.read(ROOT / path, as_version=4)
    ns: dict = {"__name__": "__notebook__"}
    for cell in nb.cells:
        if cell.cell_type != "code":
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


def check_contract(cases: dict, sol: dict, stub: dict):
    """The three tests every chapter's checks must pass, for `cases` = {name: (check, [wrong
    answers])}: the check passes on the solution's function, fails on the stub with 'not
    implemented yet', and rejects every plausible wrong answer. Assign the returned functions to
    module-level `test_...` names so pytest collects them."""
    import pytest

    from minids.checks import CheckFailed

    names = sorted(cases)

    @pytest.mark.parametrize("name", names)
    def test_check_passes_on_solution(name, capsys):
        cases[name][0](sol[name])
        assert "✅" in capsys.readouterr().out

    @pytest.mark.parametrize("name", names)
    def test_check_fails_on_stub(name, capsys):
        with pytest.raises(CheckFailed, match="not implemented yet"):
            cases[name][0](stub[name])
        assert "❌" in capsys.readouterr().out

    @pytest.mark.parametrize("name", names)
    def test_check_rejects_plausible_mistakes(name):
        check, wrongs = cases[name]
        assert wrongs, f"{name}: list at least one plausible wrong answer"
        for wrong in wrongs:
            with pytest.raises(CheckFailed):
                check(wrong)

    return test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes
