"""Grade learners' notebooks so that a notebook can neither forge its own marks nor touch anyone
else's.

Per notebook: the file's bytes are read once, before any notebook runs. Its chapter is recognised
from the file name, else its metadata, else the checks it calls (validated against the course).
Its code cells then run, in order and errors allowed, in a sandbox of their own (`sandbox.py`:
own process tree, HOME and IPython/Jupyter dirs, resource limits, a per-cell timeout; with Linux
namespaces, no view of the grader, of the network, or of other submissions, and a read-only
filesystem). Then, for each task of the chapter's COURSE (the `check_<task>(...)` calls of
`solutions/`, never the submission's metadata), the grader evaluates the check's argument
expressions in the notebook's process and runs the genuine check in its own process: a
function argument becomes a proxy whose calls run in the sandbox and return plain data only
(`remote.py`). A task scores 1 when its check passes there. The notebook's output, hooks,
patches and metadata play no part. A chapter module's `FORBIDDEN` calls are flagged per task.

One bad notebook is one row with a clear status; the CSV is written atomically at the end.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import math
import os
import re
import tempfile
import time
from pathlib import Path

from .build import check_calls, course_tasks
from .forbidden import ALWAYS, static_hits
from .sandbox import KernelDied, KernelTimeout, Limits, ProtocolError, SandboxError, Zygote

MAX_NOTEBOOK_BYTES = 50 << 20
MAX_ATTEMPTS = 3              # fresh kernels per notebook when a cell kills (or hangs) its process


# --- the course ---------------------------------------------------------------------------------


def find_solutions() -> Path:
    """The course's solutions/ folder: beside the minids package (a checkout), else in the
    current folder."""
    import minids
    for cand in (Path(minids.__file__).resolve().parents[1] / "solutions", Path.cwd() / "solutions"):
        if cand.is_dir() and any(cand.glob("*.ipynb")):
            return cand
    raise FileNotFoundError("the grader needs the course's solutions/ folder (it defines the tasks): "
                            "run it from a checkout of the course repository")


def load_course(solutions: str | Path | None = None) -> dict:
    """{chapter: {"notebook", "tasks": [...], "checks": {task: function}, "forbidden": {task: [...]}}}."""
    course = course_tasks(solutions or find_solutions())
    for chapter, info in course.items():
        try:
            module = importlib.import_module(f"minids.checks.ch{chapter}")
        except ImportError:
            module = None
        import minids.checks as package
        info["checks"] = {t["task"]: getattr(module, f"check_{t['task']}", None) or
                          getattr(package, f"check_{t['task']}", None) for t in info["tasks"]}
        raw = getattr(module, "FORBIDDEN", {}) if module else {}
        info["forbidden"] = {t["task"]: [str(x) for x in (raw.get(t["task"], []) if isinstance(raw, dict) else [])]
                             + ALWAYS for t in info["tasks"]}
    return course


# --- reading a submission -------------------------------------------------------------------------


def _code_cells(nb: dict) -> list[str]:
    cells = nb.get("cells")
    if not isinstance(cells, list):
        raise ValueError("its cells are not a list")
    out = []
    for cell in cells:
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        src = cell.get("source", "")
        if isinstance(src, list):
            src = "".join(s for s in src if isinstance(s, str))
        if isinstance(src, str):
            out.append(src)
    return out


def _read(data: bytes) -> tuple[dict, list[str]]:
    """The notebook as JSON and its code cells; ValueError (with the reason) if it is not one."""
    import json
    if len(data) > MAX_NOTEBOOK_BYTES:
        raise ValueError(f"larger than {MAX_NOTEBOOK_BYTES >> 20} MiB")
    try:
        nb = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ValueError(type(e).__name__) from None
    if not isinstance(nb, dict) or "cells" not in nb or "nbformat" not in nb:
        raise ValueError("NotJSONNotebook")
    return nb, _code_cells(nb)


def detect_chapter(name: str, nb: dict, cells: list[str], course: dict) -> str | None:
    """The file name's chapter (`01_...`), else the metadata's (`"minids": {"chapter": "01"}`),
    else the chapter whose checks the notebook calls most; only known chapters."""
    for chapter, info in course.items():
        if name == info["notebook"]:
            return chapter
    m = re.match(r"(\d{1,2})(?!\d)", name)
    if m and m.group(1).zfill(2) in course:
        return m.group(1).zfill(2)
    meta = nb.get("metadata")
    meta = meta.get("minids") if isinstance(meta, dict) else None
    chapter = meta.get("chapter") if isinstance(meta, dict) else None
    if isinstance(chapter, int) and not isinstance(chapter, bool):
        chapter = f"{chapter:02d}"
    if isinstance(chapter, str) and chapter.strip().zfill(2) in course:
        return chapter.strip().zfill(2)
    called = {task for src in cells for task, _, _ in check_calls(src)}
    overlap = sorted(((len(called & {t["task"] for t in info["tasks"]}), ch) for ch, info in course.items()),
                     reverse=True)
    if overlap and overlap[0][0] and (len(overlap) == 1 or overlap[1][0] < overlap[0][0]):
        return overlap[0][1]
    return None


# --- grading one notebook -------------------------------------------------------------------------


def _verdict_line(text: str, task: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in lines:
        if ln.startswith(("✅", "❌")):
            return ln[:300]
    return (lines[0][:300] if lines else "")


def _fetch(kernel, expr: str):
    """Evaluate one argument expression in the notebook's process: a function comes back as a
    proxy, anything else as plain data."""
    from .remote import decode, load_tensors, remote_exception
    m, b = kernel.request({"op": "eval", "expr": expr}, b"", "value")
    if "raised" in m:
        raise remote_exception(m.get("raised"), m.get("message", ""))
    try:
        return decode(m.get("value"), load_tensors(b), kernel)
    except ProtocolError:
        kernel.kill()
        raise


def _arguments(kernel, spec: dict, own: tuple | None):
    """The check's arguments: the course's expressions; where one names nothing in the notebook
    (a renamed function), the expression the notebook's own check call used in that place."""
    def one(expr, fallback):
        try:
            return _fetch(kernel, expr)
        except NameError:
            if fallback and fallback != expr:
                return _fetch(kernel, fallback)
            raise
    own_args, own_kwargs = (own or ([], []))
    own_kwargs = dict(own_kwargs)
    args = [one(e, own_args[i] if i < len(own_args) else None) for i, e in enumerate(spec["args"])]
    kwargs = {k: one(e, own_kwargs.get(k)) for k, e in spec["kwargs"]}
    return args, kwargs


def _evaluate(kernel, check, spec: dict, own, forbidden: list[str], timeout: float) -> tuple[int, str]:
    kernel.deadline = time.monotonic() + timeout
    kernel.forbidden, kernel.hits = forbidden, set()
    out = io.StringIO()
    try:
        try:
            args, kwargs = _arguments(kernel, spec, own)
        except (KernelTimeout, KernelDied, ProtocolError) as e:
            return 0, f"could not read the arguments: {e}"
        except Exception as e:                          # noqa: BLE001 -- NameError etc. in the notebook
            return 0, f"{', '.join(spec['args'])}: {type(e).__name__}: {str(e)[:200]}"
        if check is None:
            return 0, "no check function for this task in minids.checks"
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                check(*args, **kwargs)
                ok = 1
            except Exception as e:                      # noqa: BLE001 -- a failed check, or the learner's error
                ok = 0
                if not out.getvalue().strip():
                    print(f"❌ {spec['task']}: {type(e).__name__}: {str(e)[:200]}")
        return ok, _verdict_line(out.getvalue(), spec["task"])
    finally:
        kernel.deadline = float("inf")


def _status(timed_out: bool, died: str | None, errors: int, extra: list[str]) -> str:
    if timed_out:
        s = "timeout"
    elif died:
        s = f"kernel died ({died})"
    elif errors:
        s = f"{errors} cell(s) raised"
    else:
        s = "ok"
    return "; ".join([s, *extra])


def grade_notebook(path: str | Path, timeout: float = 120, learner: str | None = None, *, course: dict | None = None,
                   zygote: Zygote | None = None, data: bytes | None = None, grace: float = 5.0,
                   limits: Limits | None = None, level: str = "auto") -> dict:
    """One row: {'learner', 'notebook', 'chapter', 'status', 'tasks': {task: 0/1}, 'score', 'max',
    'flags': [...], 'messages': {task: verdict line}}. Never raises for a bad notebook."""
    path = Path(path)
    row = {"learner": learner or path.stem, "notebook": path.name, "chapter": None, "status": "ok", "tasks": {},
           "score": 0, "max": 0, "flags": [], "messages": {}}
    own_zygote = None
    try:
        if data is None:
            try:
                if path.stat().st_size > MAX_NOTEBOOK_BYTES:
                    raise ValueError(f"larger than {MAX_NOTEBOOK_BYTES >> 20} MiB")
                data = path.read_bytes()
            except OSError as e:
                row["status"] = f"unreadable: {type(e).__name__}"
                return row
            except ValueError as e:
                row["status"] = f"unreadable: {e}"
                return row
        course = course if course is not None else load_course()
        try:
            nb, cells = _read(data)
        except ValueError as e:
            row["status"] = f"unreadable: {e}"
            chapter = detect_chapter(path.name, {}, [], course)
            if chapter:
                row["chapter"] = chapter
                row["tasks"] = {t["task"]: 0 for t in course[chapter]["tasks"]}
                row["max"] = len(row["tasks"])
            return row
        chapter = detect_chapter(path.name, nb, cells, course)
        if chapter is None:
            row["status"] = "unknown chapter"
            return row
        info = course[chapter]
        row["chapter"] = chapter
        row["tasks"] = {t["task"]: 0 for t in info["tasks"]}
        row["max"] = len(row["tasks"])
        if zygote is None:
            own_zygote = zygote = Zygote(limits or Limits(), [], level)
            zygote.start()
        _run(row, cells, info, zygote, timeout, grace)
    except Exception as e:                              # noqa: BLE001 -- one notebook never stops the run
        row["status"] = f"error: {type(e).__name__}: {str(e)[:200]}"
    finally:
        if own_zygote is not None:
            own_zygote.close()
        row["score"] = sum(row["tasks"].values())
    return row


def _run(row: dict, cells: list[str], info: dict, zygote: Zygote, timeout: float, grace: float) -> None:
    own_calls = {}
    for src in cells:
        for task, args, kwargs in check_calls(src):
            own_calls[task] = (args, kwargs)
    remaining = [t for t in info["tasks"]]
    skip: set[int] = set()
    timed_out, died, errors, extra = False, None, 0, []
    hits: dict[str, set] = {}
    for _attempt in range(MAX_ATTEMPTS):
        try:
            kernel = zygote.spawn()
        except SandboxError as e:
            extra.append(f"error: {e}"[:300])
            break
        kernel.grace = grace
        try:
            errors, restart = 0, False
            for i, src in enumerate(cells):
                if i in skip or not src.strip():
                    continue
                r = kernel.run_cell(src, timeout)
                if r == "timeout":
                    timed_out = True
                elif r.startswith("error:"):
                    errors += 1
                elif r in ("killed", "died"):
                    skip.add(i)
                    timed_out = timed_out or r == "killed"
                    died = died or (None if r == "killed" else f"cell {i + 1} ended the process")
                    restart = True
                    break
            if restart:
                continue
            while remaining:
                spec = remaining.pop(0)
                task = spec["task"]
                ok, message = _evaluate(kernel, info["checks"].get(task), spec, own_calls.get(task),
                                        info["forbidden"].get(task, []), timeout)
                if kernel.hits:                 # as in the notebook, where the check raises ForbiddenCall
                    hits.setdefault(task, set()).update(f"{h} (called)" for h in kernel.hits)
                    called = ", ".join(sorted(kernel.hits))
                    ok, message = 0, f"❌ {task}: your code calls {called}, which this task forbids"
                row["tasks"][task], row["messages"][task] = ok, message
                timed_out = timed_out or kernel.timed_out
                if kernel.dead:
                    break
            if not remaining:
                break
        finally:
            kernel.close()
    for spec in remaining:
        row["messages"][spec["task"]] = "not graded: the notebook's process kept failing"
    for spec in info["tasks"]:
        task = spec["task"]
        names = [e for e in spec["args"] if e.isidentifier()]
        names += [e for e in own_calls.get(task, ([], []))[0] if e.isidentifier()]
        for h in static_hits(cells, names, info["forbidden"].get(task, [])):
            hits.setdefault(task, set()).add(f"{h} (in the source)")
    row["flags"] = [f"{task}: {h}" for task in row["tasks"] for h in sorted(hits.get(task, ()))]
    row["status"] = _status(timed_out, died, errors, extra)


# --- many notebooks ---------------------------------------------------------------------------------


def _learner_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root)
    return rel.parts[0] if len(rel.parts) > 1 else path.stem


def _check_args(paths, timeout, csv_path) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
            or timeout <= 0:
        raise ValueError(f"--timeout must be a positive number of seconds, not {timeout!r}")
    if csv_path is not None:
        p = Path(csv_path)
        if str(csv_path) == "" or p.is_dir():
            raise ValueError(f"--csv {str(csv_path)!r} is a folder: name a file, e.g. {p / 'grades.csv'}")
        parent = p.parent if str(p.parent) else Path(".")
        if not parent.is_dir():
            raise FileNotFoundError(f"--csv {csv_path}: no folder {parent} to write it in")
        if not os.access(parent, os.W_OK):
            raise ValueError(f"--csv {csv_path}: the folder {parent} is not writable")
    if not paths:
        raise ValueError("name at least one notebook or folder to grade")
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"no such file or folder: {p}")


def _jobs(paths) -> tuple[list[tuple[Path, str, bytes | None, str | None]], list[Path], list[Path]]:
    """(file, learner, bytes or None, reason it is unreadable or None), the folders, the files.
    Every file is read here, before any notebook runs."""
    jobs, roots, files = [], [], []
    for p in map(Path, paths):
        if p.is_dir():
            roots.append(p)
            for f in sorted(p.rglob("*.ipynb")):
                if ".ipynb_checkpoints" in f.parts or f.is_dir():
                    continue
                files.append(f)
                if f.is_symlink():
                    jobs.append((f, _learner_of(f, p), None, "unreadable: a symbolic link"))
                    continue
                jobs.append((f, _learner_of(f, p), *_snapshot(f)))
        else:
            files.append(p)
            jobs.append((p, p.stem, *_snapshot(p)))
    return jobs, roots, files


def _snapshot(f: Path) -> tuple[bytes | None, str | None]:
    try:
        if f.stat().st_size > MAX_NOTEBOOK_BYTES:
            return None, f"unreadable: larger than {MAX_NOTEBOOK_BYTES >> 20} MiB"
        return f.read_bytes(), None
    except OSError as e:
        return None, f"unreadable: {type(e).__name__}"


def _cell(text: str) -> str:
    """A name a student chose (file or folder) never starts a spreadsheet formula."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_csv(rows: list[dict], path: str | Path, tasks: list[str]) -> None:
    """All at once: a temporary file in the same folder, flushed to disk, then renamed over `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["learner", "notebook", "chapter", *tasks, "score", "max", "status", "flags"])
            for r in rows:
                w.writerow([_cell(r["learner"]), _cell(r["notebook"]), r["chapter"] or "",
                            *[r["tasks"].get(t, "") for t in tasks], r["score"], r["max"], r["status"],
                            "; ".join(r["flags"])])
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def grade(paths: list[str | Path], timeout: float = 120, csv_path: str | Path | None = None, echo: bool = True, *,
          limits: Limits | None = None, level: str = "auto", solutions: str | Path | None = None,
          grace: float = 5.0, zygote: Zygote | None = None) -> list[dict]:
    """Grade notebooks and/or folders of notebooks (a learner per sub-folder, or per file).
    Bad arguments (a missing path, `timeout <= 0`, `csv_path` a folder or in a missing folder)
    raise ValueError / FileNotFoundError before anything runs. `zygote`: a runner to reuse
    (its limits and level apply; it is left running), else one is started for this call."""
    _check_args(paths, timeout, csv_path)
    course = load_course(solutions)
    jobs, roots, files = _jobs(paths)
    from .sandbox import hide_list
    rows = []
    own = zygote is None
    if own:
        zygote = Zygote(limits or Limits(), hide_list(roots, files), level)
    else:
        zygote.hide = hide_list(roots, files)
    try:
        for f, learner, data, reason in jobs:
            if reason is not None:
                row = grade_notebook(f, timeout, learner, course=course, data=b"", grace=grace)
                row["status"] = reason
            else:
                row = grade_notebook(f, timeout, learner, course=course, zygote=zygote, data=data, grace=grace)
            rows.append(row)
    finally:
        if own:
            zygote.close()
    order = [t["task"] for ch in sorted(course) for t in course[ch]["tasks"]]
    present = {t for r in rows for t in r["tasks"]}
    tasks = [t for t in order if t in present]
    if echo:
        iso = zygote.level or "not started"
        if zygote.level == "basic" and zygote.why_basic:
            why = zygote.why_basic
            iso += " (requested)" if why == "requested" else f" (namespaces unavailable: {why})"
        print(f"isolation: {iso}")
        print(f"{'learner':<16} {'notebook':<28} {'score':>7}  status")
        for r in rows:
            print(f"{r['learner']:<16} {r['notebook']:<28} {r['score']:>3}/{r['max']:<3}  {r['status']}"
                  + (f"  [flags: {'; '.join(r['flags'])}]" if r["flags"] else ""))
    if csv_path:
        write_csv(rows, csv_path, tasks)
    return rows
