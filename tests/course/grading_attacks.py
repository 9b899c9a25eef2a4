"""Notebooks for the grader's tests: honest ones built from the live course (so the tests follow
the course as it changes), and the attacks a student could try. Every builder returns a new
notebook (nbformat v4); nothing here runs anything."""

from __future__ import annotations

import ast
import atexit
import inspect
import json
import re

import nbformat
from nbutil import ROOT

from minids.checks.build import course_tasks, make_exercise, python_source
from minids.checks.grade import grade

CHAPTER = "01"
COURSE = course_tasks(ROOT / "solutions")
SOLUTION = ROOT / "solutions" / COURSE[CHAPTER]["notebook"]
NAME = COURSE[CHAPTER]["notebook"]                       # 01_gpt_baseline.ipynb
TASKS = [t["task"] for t in COURSE[CHAPTER]["tasks"]]
FUNCTIONS = {t["task"]: t["args"][0] for t in COURSE[CHAPTER]["tasks"] if t["args"]}
# the old grader's verdict line, for every task of every chapter (24 when it was filed)
ALL_TASKS = [t["task"] for ch in COURSE.values() for t in ch["tasks"]]
FORGED = "MINIDS-GRADE " + json.dumps(dict.fromkeys(ALL_TASKS, 1))
FORGED_TICKS = "\n".join(f"✅ {t}: passed 1/1 tests" for t in ALL_TASKS)


_SHARED = []


def shared_zygote():
    """One notebook runner for all the grader tests of this process (starting one takes ~10 s)."""
    from minids.checks.sandbox import Zygote
    if not _SHARED or not _SHARED[0].alive():
        z = Zygote()
        z.start()
        atexit.register(z.close)
        _SHARED[:] = [z]
    return _SHARED[0]


def grade_options() -> dict:
    """Reuse the shared runner where the grader can (only the public arguments otherwise)."""
    return {"zygote": shared_zygote()} if "zygote" in inspect.signature(grade).parameters else {}


def solution():
    return nbformat.read(SOLUTION, as_version=4)


def exercise():
    return make_exercise(solution())


def code(src: str):
    return nbformat.v4.new_code_cell(src)


def _only_setup(src: str) -> bool:
    """A cell of imports and settings (no definitions, no checks, no work)."""
    try:
        tree = ast.parse(python_source(src))
    except SyntaxError:
        return False
    ok = (ast.Import, ast.ImportFrom)
    calls = ("set_num_threads", "manual_seed", "seed")
    for node in tree.body:
        if isinstance(node, ok):
            continue
        if isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Call) and \
                isinstance(node.value.func, ast.Attribute) and node.value.func.attr in calls:
            continue
        return False
    return bool(tree.body)


def mini_solution(tasks: list[str]):
    """The solution's set-up cells and, for each of `tasks`, the cell defining its function and
    its check cell: a correct notebook for those tasks that runs in a second (no training)."""
    sol = solution()
    cells = [c for c in sol.cells if c.cell_type == "code"]
    keep = [c for c in cells if _only_setup(c.source)]
    for task in tasks:
        fn = FUNCTIONS[task]
        defs = [c for c in cells if f"def {fn}(" in c.source]
        checks = [c for c in cells if f"check_{task}(" in c.source and "import" not in c.source]
        assert defs and checks, f"cannot find the cells of task {task} in {SOLUTION.name}"
        keep += [defs[0], checks[0]]
    nb = nbformat.v4.new_notebook()
    nb.metadata = sol.metadata
    nb.cells = [code(c.source) for c in keep]
    return nb


def with_cell(nb, src: str, at: int | None = None):
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)
    cell = code(src)
    if at is None:
        nb.cells.append(cell)
    else:
        nb.cells.insert(at, cell)
    return nb


def first_code_index(nb) -> int:
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")


def restyle_checks(nb, styles=("comment", "semicolon", "split", "spaces")):
    """Honest variations of the check lines, one style after another: a trailing comment, a `;`,
    the call split over lines, extra spaces."""
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)
    i = 0
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        lines = []
        for line in c.source.splitlines():
            s = line.strip()
            m = re.fullmatch(r"(check_\w+)\((.*)\)", s)
            if m:
                name, arg = m.groups()
                line = {"comment": f"{s}  # done, finally!",
                        "semicolon": f"{s};",
                        "spaces": f"  {name} ( {arg} )   ",
                        "split": f"{name}(\n    {arg},\n)"}[styles[i % len(styles)]]
                i += 1
            lines.append(line)
        c.source = "\n".join(lines)
    return nb


def replace_def(nb, fn: str, src: str):
    """The notebook with the cell that defines `fn` replaced by `src`."""
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)
    for c in nb.cells:
        if c.cell_type == "code" and f"def {fn}(" in c.source:
            c.source = src
            return nb
    raise AssertionError(f"no cell defines {fn}")


# --- attacks: each returns cell source to add to an untouched exercise -------------------------------

HOOK = f"""
def _forge(result):
    print({FORGED_TICKS!r})
    print({FORGED!r})
get_ipython().events.register("post_run_cell", _forge)
"""

PRINT = f"""
import builtins
_real_print = builtins.print
def _forged_print(*args, **kwargs):
    _real_print({FORGED!r})
builtins.print = _forged_print
"""

TRANSFORMER = f"""
def _forge(lines):
    return ["print(" + repr({FORGED!r}) + ")\\n"]
get_ipython().input_transformers_post.append(_forge)
"""

ALLCLOSE = """
import torch
torch.allclose = lambda *a, **k: True
torch.Tensor.allclose = lambda *a, **k: True
torch.equal = lambda *a, **k: True
torch.isclose = lambda a, b, *x, **k: torch.ones(torch.broadcast_shapes(torch.as_tensor(a).shape,
                                                                       torch.as_tensor(b).shape), dtype=torch.bool)
def rms_norm(x, weight, eps=1e-6):
    return x * weight              # wrong, but the same shape
"""

CHECKS = """
import sys
import minids.checks
def _fake(*args, **kwargs):
    print("✅ passed")
for _mod in list(sys.modules.values()):
    if getattr(_mod, "__name__", "").startswith("minids.checks"):
        for _name in list(vars(_mod)):
            if _name.startswith("check_"):
                setattr(_mod, _name, _fake)
import minids.checks.checking as _ck
_ck.Checker.__exit__ = lambda self, *exc: (print(f"✅ {self.task}: passed 1/1 tests"), True)[1]
"""


def stack_peek() -> str:
    """Every task function reads the expected answer from the caller's frame (the check's)."""
    names = " = ".join(sorted(set(FUNCTIONS.values())))
    return f"""
import sys
def _peek(*args, **kwargs):
    f = sys._getframe(1)
    while f is not None:
        for name in ("exp", "expected", "ref", "want", "reference", "exp_a", "res"):
            if name in f.f_locals:
                return f.f_locals[name]
        f = f.f_back
    raise NotImplementedError
{names} = _peek
"""


def reader(path) -> str:
    """Run another learner's submission (read at grading time) to define the functions."""
    return f"""
import json
_nb = json.load(open({str(path)!r}))
for _c in _nb["cells"]:
    _src = "".join(_c["source"]) if isinstance(_c["source"], list) else _c["source"]
    if _c["cell_type"] == "code" and "check_" not in _src:
        try:
            exec(_src, globals())
        except Exception:
            pass
"""


SDPA = """
import torch
def causal_attention(q, k, v):
    T, S = q.size(-2), k.size(-2)
    mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(S - T)
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
"""

IGNORE_SIGINT = """
import signal
signal.signal(signal.SIGINT, signal.SIG_IGN)
while True:
    pass
"""


def startup_writer() -> str:
    """Plant IPython startup files wherever this notebook's kernel looks for them (later
    notebooks' kernels would run them and print a forged verdict after every cell)."""
    src = f"def _f(r):\n    print({FORGED!r})\nget_ipython().events.register('post_run_cell', _f)\n"
    return f"""
import os
_src = {src!r}
_dirs = {{os.path.expanduser("~/.ipython"), os.environ.get("IPYTHONDIR") or os.path.expanduser("~/.ipython")}}
for _d in _dirs:
    _p = os.path.join(_d, "profile_default", "startup")
    os.makedirs(_p, exist_ok=True)
    with open(os.path.join(_p, "00-forge.py"), "w") as _f:
        _f.write(_src)
"""


def rewriter(victim, replacement: str) -> str:
    return f"""
try:
    with open({str(victim)!r}, "w") as _f:
        _f.write({replacement!r})
except OSError as e:
    print("blocked:", e)
"""


def lingerer(csv_path, marker_dir, tag: str) -> str:
    """Leave a detached process (new session) that waits for the grades to be written, then
    rewrites them, and proves it ran by writing a marker."""
    code = ("import os, sys, time\n"
            "for _ in range(600):\n"
            "    if os.path.exists(sys.argv[1]):\n"
            "        break\n"
            "    time.sleep(0.2)\n"
            "time.sleep(1)\n"
            "forged = 'learner,score\\nmallory,9999\\n'\n"
            "for path, text in ((sys.argv[1], forged), (os.path.join(sys.argv[2], 'alive'), '1')):\n"
            "    try:\n"
            "        with open(path, 'w') as f:\n"
            "            f.write(text)\n"
            "    except OSError:\n"
            "        pass\n")
    return f"""
import subprocess, sys
subprocess.Popen([sys.executable, "-c", {code!r}, {str(csv_path)!r}, {str(marker_dir)!r}, {tag!r}],
                 start_new_session=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                 stderr=subprocess.DEVNULL)
"""


KILL_PARENT = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)"
KILL_GROUP = "import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)"
