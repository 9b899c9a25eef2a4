"""One student must not change anyone else's grade: `python -m minids grade` (in a subprocess of
its own session, so that a notebook killing its grader cannot take the tests down) over a class
in which the first notebooks plant IPython startup files, rewrite a classmate's submission, leave
a detached process that rewrites the grades after the grader exits, kill the grader (its parent
or its process group), or ignore SIGINT in an endless loop; the classmates graded after them
must get exactly their marks."""

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time

import grading_attacks as A
import nbformat
import pytest
from nbutil import ROOT

MINI = ["rms_norm", "causal_attention", "shift_targets"]
TAG = "minids-linger-probe-7f3a"


def _write(folder, learner, nb):
    (folder / learner).mkdir(parents=True, exist_ok=True)
    path = folder / learner / A.NAME
    nbformat.write(nb, path)
    return path


def _alive(tag: str) -> list[int]:
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/cmdline", "rb") as f:
                    if tag.encode() in f.read():
                        pids.append(int(p))
            except OSError:
                pass
    return pids


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("isolation")
    folder, out, marker = tmp / "class", tmp / "grades.csv", tmp / "markers"
    marker.mkdir()
    home = tmp / "grader-home"                  # the grader's own HOME / IPYTHONDIR (a seatbelt: never the real ones)
    (home / "ipython").mkdir(parents=True)
    ex = A.exercise()
    victim_sol = folder / "h_victim_solution" / A.NAME
    _write(folder, "a_startup", A.with_cell(ex, A.startup_writer(), at=A.first_code_index(ex) + 1))
    _write(folder, "b_rewriter", A.with_cell(ex, A.rewriter(victim_sol, '{"cells": []}')))
    _write(folder, "c_linger", A.with_cell(ex, A.lingerer(out, marker, TAG)))
    _write(folder, "d_kill_parent", A.with_cell(ex, A.KILL_PARENT, at=A.first_code_index(ex) + 1))
    _write(folder, "e_kill_group", A.with_cell(ex, A.KILL_GROUP, at=A.first_code_index(ex) + 1))
    mini = A.mini_solution(MINI)
    _write(folder, "f_ignores_sigint", A.with_cell(mini, A.IGNORE_SIGINT, at=A.first_code_index(mini) + 1))
    _write(folder, "g_victim_exercise", ex)
    _write(folder, "h_victim_solution", mini)
    victim_bytes = victim_sol.read_bytes()
    env = {**os.environ, "HOME": str(home), "IPYTHONDIR": str(home / "ipython"), "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "minids", "grade", str(folder), "--csv", str(out), "--timeout", "8"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
    wall = time.monotonic() - t0
    digest = hashlib.sha256(out.read_bytes()).hexdigest() if out.exists() else None
    time.sleep(4)                               # the lingering process would act 1 s after the CSV appears
    assert out.exists(), f"no CSV (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    with open(out, newline="") as f:
        table = {r["learner"]: r for r in csv.DictReader(f)}
    yield {"proc": proc, "table": table, "digest": digest, "out": out, "marker": marker, "home": home,
           "victim": (victim_sol, victim_bytes), "wall": wall}
    for pid in _alive(TAG):                     # never leave a process behind, even when a test failed
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_the_grader_survives_notebooks_that_kill_it(run):
    proc, table = run["proc"], run["table"]
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(table) == 8 and "h_victim_solution" in table
    for learner in ("d_kill_parent", "e_kill_group"):
        assert int(table[learner]["max"]) == len(A.TASKS) and table[learner]["score"] == "0"


@pytest.mark.slow
def test_a_cell_ignoring_sigint_does_not_outlive_the_timeout(run):
    table = run["table"]
    assert table["f_ignores_sigint"]["status"].startswith("timeout")
    assert int(table["f_ignores_sigint"]["score"]) == len(MINI)          # the cells after it still ran
    assert run["wall"] < 300


@pytest.mark.slow
def test_startup_files_planted_by_one_notebook_reach_no_other(run):
    table, home = run["table"], run["home"]
    assert table["g_victim_exercise"]["score"] == "0"
    assert not [p for p in home.rglob("*") if p.is_file()], "a notebook wrote into the grader's HOME"


@pytest.mark.slow
def test_a_classmates_submission_cannot_be_rewritten(run):
    table = run["table"]
    path, data = run["victim"]
    assert int(table["h_victim_solution"]["score"]) == len(MINI)
    assert path.read_bytes() == data


@pytest.mark.slow
def test_no_process_outlives_its_notebook_and_the_grades_stay_as_written(run):
    assert not _alive(TAG)
    assert not (run["marker"] / "alive").exists()
    assert hashlib.sha256(run["out"].read_bytes()).hexdigest() == run["digest"]
    assert "mallory" not in run["out"].read_text()
