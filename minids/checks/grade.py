"""Grade learners' notebooks: run each one in a fresh kernel (a copy, in a temporary folder, so
the learner's file is never touched), then run every check once more in a cell the grader adds
at the end, with the checks imported afresh from `minids.checks` (so a hand-printed ✅ or a
redefined check earns nothing), and write a score table and a CSV. A notebook that raises, hangs
(per-cell timeout) or was renamed is still graded."""

from __future__ import annotations

import csv
import json
import re
import shutil
import tempfile
from pathlib import Path

import nbformat

from .build import tasks_of

CALL = re.compile(r"^\s*check_(\w+)\((.*)\)\s*$", re.MULTILINE)
VERDICT = "MINIDS-GRADE "


def _verification_cell(nb) -> str:
    """Code that re-runs each `check_<task>(<args>)` of the notebook with the genuine check and
    prints one JSON line {task: 0/1}."""
    calls = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            for task, args in CALL.findall(cell.source):
                calls.setdefault(task, args)
    lines = ["import contextlib as _cl, io as _io, json as _js", "import minids.checks as _ex", "_v = {}"]
    for task, args in calls.items():
        lines += ["try:", "    with _cl.redirect_stdout(_io.StringIO()):",
                  f"        _ex.check_{task}({args})", f"    _v[{task!r}] = 1",
                  "except BaseException:", f"    _v[{task!r}] = 0"]
    lines.append(f"print({VERDICT!r} + _js.dumps(_v))")
    return "\n".join(lines)


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out and "text/plain" in out["data"]:
                parts.append(out["data"]["text/plain"])
    return "\n".join(parts)


def grade_notebook(path: str | Path, timeout: int = 120, learner: str | None = None) -> dict:
    """{'learner', 'notebook', 'chapter', 'status', 'tasks': {task: 0/1}, 'score', 'max'}."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError

    path = Path(path)
    row = {"learner": learner or path.stem, "notebook": path.name, "chapter": None, "status": "ok",
           "tasks": {}, "score": 0, "max": 0}
    try:
        nb = nbformat.read(path, as_version=4)
    except Exception as e:                                  # not a notebook at all
        row["status"] = f"unreadable: {type(e).__name__}"
        return row
    meta = nb.metadata.get("minids", {})
    tasks = meta.get("tasks") or tasks_of(nb)
    row["chapter"] = meta.get("chapter")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "submission.ipynb"
        shutil.copy(path, work)
        nb = nbformat.read(work, as_version=4)
        nb.cells.append(nbformat.v4.new_code_cell(_verification_cell(nb)))
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                interrupt_on_timeout=True, resources={"metadata": {"path": tmp}})
        try:
            client.execute()
        except CellTimeoutError:
            row["status"] = "timeout"
        except DeadKernelError:
            row["status"] = "kernel died"
        except Exception as e:                              # noqa: BLE001 -- grading must go on
            row["status"] = f"error: {type(e).__name__}"
        text = _outputs_text(nb)
        errors = [o.get("ename") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        if "KeyboardInterrupt" in errors:                   # interrupted after `timeout` seconds
            row["status"] = "timeout"
        elif row["status"] == "ok" and errors:
            row["status"] = f"{len(errors)} cell(s) raised"
    verdicts = [json.loads(line[len(VERDICT):]) for line in text.splitlines() if line.startswith(VERDICT)]
    verdict = verdicts[-1] if verdicts else {}                # no verdict (kernel died): nothing passed
    row["tasks"] = {t: int(verdict.get(t, 0)) for t in tasks}
    row["score"], row["max"] = sum(row["tasks"].values()), len(tasks)
    return row


def _learner_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def grade(paths: list[str | Path], timeout: int = 120, csv_path: str | Path | None = None,
          echo: bool = True) -> list[dict]:
    """Grade notebooks and/or folders of notebooks (a learner per sub-folder, or per file)."""
    jobs = []
    for p in map(Path, paths):
        if p.is_dir():
            jobs += [(f, _learner_of(f, p)) for f in sorted(p.rglob("*.ipynb"))
                     if ".ipynb_checkpoints" not in f.parts]
        else:
            jobs.append((p, p.stem))
    rows = [grade_notebook(f, timeout, learner) for f, learner in jobs]
    graded = {r["notebook"]: r for r in rows if r["max"]}
    for r in rows:                      # an unreadable file scores 0 on its chapter's tasks, if known
        if not r["max"] and r["notebook"] in graded:
            peer = graded[r["notebook"]]
            r["chapter"], r["tasks"], r["max"] = peer["chapter"], dict.fromkeys(peer["tasks"], 0), peer["max"]
    all_tasks = []
    for r in rows:
        all_tasks += [t for t in r["tasks"] if t not in all_tasks]
    if echo:
        print(f"{'learner':<16} {'notebook':<28} {'score':>7}  status")
        for r in rows:
            print(f"{r['learner']:<16} {r['notebook']:<28} {r['score']:>3}/{r['max']:<3}  {r['status']}")
    if csv_path:
        with open(csv_path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["learner", "notebook", "chapter", *all_tasks, "score", "max", "status"])
            for r in rows:
                w.writerow([r["learner"], r["notebook"], r["chapter"],
                            *[r["tasks"].get(t, "") for t in all_tasks], r["score"], r["max"], r["status"]])
    return rows
