"""Helpers for tests that use notebooks: run a solution notebook's code to get the reference
answers, and make the stubbed version of a learner's function."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import nbformat

from minids.exercises.build import CHECK_CALL, strip_solutions

ROOT = Path(__file__).resolve().parents[1]


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
