"""Portability of the notebooks under nbval (docs/CONTRIBUTING.md, "Outputs that depend on float rounding").

A learner's CPU rounds floats differently from the machine that recorded the outputs. PyTorch picks its
CPU kernels by ATEN_CPU_CAPABILITY (avx512, avx2, default...), and the paths round differently, so one
machine can play several CPUs. With MINIDS_NB_CPU_CAPS="avx2 default" each notebook's kernel starts
under one of those values, chosen by the notebook's position in sorted order within its folder (00
avx2, 01 default, 02 avx2, ...; MINIDS_NB_CPU_CAPS_SHIFT=1 swaps them), so a failure reproduces with
`ATEN_CPU_CAPABILITY=<the value in the report> make test-notebooks NB=<notebook>`. Unset: the notebooks
run under the machine's own kernels. The unit tests are never affected.
"""

import os
from pathlib import Path

import pytest

CAPS = os.environ.get("MINIDS_NB_CPU_CAPS", "").split()
SHIFT = int(os.environ.get("MINIDS_NB_CPU_CAPS_SHIFT", "0") or 0)


def capability_for(notebook: Path) -> str | None:
    """The ATEN_CPU_CAPABILITY a notebook's kernel runs under, or None for the machine's own."""
    if not CAPS:
        return None
    siblings = sorted(p.name for p in notebook.parent.glob("*.ipynb"))
    pos = siblings.index(notebook.name) if notebook.name in siblings else 0
    return CAPS[(pos + SHIFT) % len(CAPS)]


def _notebook_of(item) -> Path | None:
    path = Path(str(getattr(item.parent, "path", getattr(item.parent, "fspath", ""))))
    return path if path.suffix == ".ipynb" else None


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_setup(item):
    """Set the variable while nbval starts the notebook's kernel (on its first cell), then restore it."""
    nb = _notebook_of(item)
    cap = capability_for(nb) if nb else None
    if cap is None:
        yield
        return
    old = os.environ.get("ATEN_CPU_CAPABILITY")
    os.environ["ATEN_CPU_CAPABILITY"] = cap
    item.user_properties.append(("ATEN_CPU_CAPABILITY", cap))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("ATEN_CPU_CAPABILITY", None)
        else:
            os.environ["ATEN_CPU_CAPABILITY"] = old


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing notebook cell's report says which CPU kernel path its notebook ran under."""
    outcome = yield
    rep = outcome.get_result()
    nb = _notebook_of(item)
    cap = capability_for(nb) if nb else None
    if cap is not None and rep.failed:
        how = f"ATEN_CPU_CAPABILITY={cap} make test-notebooks NB={nb.parent.name}/{nb.name}"
        rep.sections.append(("CPU kernels", f"this notebook ran under ATEN_CPU_CAPABILITY={cap}; reproduce with {how}"))


def pytest_report_header(config):
    if CAPS:
        return (f"notebook kernels: ATEN_CPU_CAPABILITY alternates {'/'.join(CAPS)} by position in each folder"
                f" (shift {SHIFT}; conftest.py)")
    return None
