"""Mutation testing of the checks: does each check reject solutions that are *almost* right?

For every graded task of `solutions/NN_*.ipynb`, the code between `### BEGIN SOLUTION` and
`### END SOLUTION` is parsed and changed one small thing at a time (a mutant): an operator
swapped (+ -, * /, < <=, ...), the operands of a non-commutative operator swapped, a term or a
factor dropped, an integer constant off by one, a float constant changed, a slice bound off by
one, a keyword argument dropped, a reduction or a mask swapped for its twin (sum/mean, max/min,
tril/triu, ...), an argument replaced by a constant (its default, or 1), a statement deleted,
a condition negated, an einsum subscript permuted. Each mutant replaces the task's cell, the
check cell runs, and the mutant counts as **rejected** when the check fails (or the mutant
raises, or runs past a time limit).

Mutants that compute the same function as the solution (equivalent mutants) cannot be
rejected by any check: a chapter module lists the reviewed ones with the reason,
`EQUIVALENT_MUTANTS = {"task": {"<description>": "reason"}}`; they are counted apart, never
dropped. `NOT_MUTATED = {"task": "reason"}` lists tasks that are not mutated (an experiment
that trains a model). The score of a check is rejected / (mutants - equivalent).

    python -m minids mutation 01 03        # or: python -m minids.checks.mutate 01 03
    python -m minids mutation -v 04        # also list the surviving mutants
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import importlib
import io
import re
import signal
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CHECK_CALL = re.compile(r"^\s*(check_(\w+)\(.*\))\s*$", re.MULTILINE)
TIME_LIMIT = 10.0                        # seconds per mutant; a mutant that hangs counts as rejected

# twins: a call or method swapped for one that computes something close but wrong
TWINS = {
    "sum": ["mean"], "mean": ["sum"], "max": ["min"], "min": ["max"], "amax": ["amin", "sum"],
    "amin": ["amax"], "argmax": ["argmin"], "argmin": ["argmax"], "softmax": ["log_softmax"],
    "log_softmax": ["softmax"], "tril": ["triu"], "triu": ["tril"], "sqrt": ["rsqrt"], "rsqrt": ["sqrt"],
    "exp": ["log"], "log": ["exp"], "cos": ["sin"], "sin": ["cos"], "floor": ["ceil"], "ceil": ["floor"],
    "all": ["any"], "any": ["all"], "sigmoid": ["softmax"], "cumsum": ["cumprod"],
    "repeat_interleave": ["repeat"], "repeat": ["repeat_interleave"], "cat": ["stack"], "stack": ["cat"],
    "topk": ["sort"], "maximum": ["minimum"], "minimum": ["maximum"], "clamp_min": ["clamp_max"],
    "clamp_max": ["clamp_min"], "sign": ["abs"], "float": ["int"], "ones_like": ["zeros_like"],
    "zeros_like": ["ones_like"], "ones": ["zeros"], "zeros": ["ones"], "index_add_": ["index_copy_"],
    "expand": ["repeat"], "median": ["mean"], "var": ["std"], "std": ["var"], "pow": ["mul"],
    "flip": ["clone"], "argsort": ["sort"], "bincount": ["unique"], "scatter": ["scatter_add"],
    "masked_fill": ["where"], "split": ["chunk"], "chunk": ["split"], "outer": ["mul"],
}
# a method call dropped (`x.float().sum(-1)` -> `x.sum(-1)`): a forgotten step
DROPPABLE = {"float", "double", "contiguous", "clone", "transpose", "t", "permute", "squeeze", "unsqueeze",
             "flatten", "softmax", "log_softmax", "abs", "sqrt", "rsqrt", "exp", "log", "sigmoid", "sum", "mean",
             "tril", "triu", "reshape", "view", "expand", "flip", "neg", "sort", "cumsum", "bool", "long"}
BINOPS = {ast.Add: [ast.Sub], ast.Sub: [ast.Add], ast.Mult: [ast.Div, ast.Add], ast.Div: [ast.Mult, ast.FloorDiv],
          ast.FloorDiv: [ast.Div, ast.Mod], ast.Mod: [ast.FloorDiv], ast.Pow: [ast.Mult], ast.MatMult: [ast.Mult],
          ast.BitAnd: [ast.BitOr], ast.BitOr: [ast.BitAnd], ast.LShift: [ast.RShift], ast.RShift: [ast.LShift]}
NONCOMMUTATIVE = (ast.Sub, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.MatMult)
CMPOPS = {ast.Lt: [ast.LtE, ast.Gt], ast.LtE: [ast.Lt, ast.GtE], ast.Gt: [ast.GtE, ast.Lt],
          ast.GtE: [ast.Gt, ast.LtE], ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq], ast.Is: [ast.IsNot],
          ast.IsNot: [ast.Is], ast.In: [ast.NotIn], ast.NotIn: [ast.In]}
BOOLOPS = {ast.And: ast.Or, ast.Or: ast.And}


# ============================================================================ the tasks
@dataclass
class Task:
    chapter: str
    name: str                          # the task (the check's name without check_)
    cell: int                          # index of the cell holding the solution region
    source: str                        # that cell's source
    call: str                          # the check call, e.g. "check_rms_norm(rms_norm)"
    region: tuple[int, int]            # 1-based line numbers of the BEGIN and END markers


@dataclass
class Result:
    task: str
    total: int = 0
    rejected: int = 0
    equivalent: int = 0
    survivors: list[str] = field(default_factory=list)
    stale_allow: list[str] = field(default_factory=list)   # allow-listed but no longer generated
    skipped: str = ""                                       # why the task was not mutated
    seconds: float = 0.0

    @property
    def score(self) -> float:
        n = self.total - self.equivalent
        return self.rejected / n if n else 1.0


def _code_cells(nb):
    return [(i, c.source) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def _region_lines(src: str) -> list[tuple[int, int]]:
    out, start = [], None
    for n, line in enumerate(src.splitlines(), 1):
        if line.strip() == BEGIN:
            start = n
        elif line.strip() == END and start is not None:
            out.append((start, n))
            start = None
    return out


def _defined_names(src: str, region: tuple[int, int]) -> set[str]:
    """Functions whose body holds the region, and names assigned inside it."""
    names = set()
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return names
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                node.lineno < region[0] <= node.end_lineno:
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and region[0] < node.lineno < region[1]:
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names |= {n.id for n in ast.walk(t) if isinstance(n, ast.Name)}
    return names


def find_tasks(path: str | Path) -> list[Task]:
    """Each check call in the notebook, with the solution cell that defines its argument."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    chapter = str(nb.metadata.get("minids", {}).get("chapter", Path(path).stem[:2]))
    cells = _code_cells(nb)
    regions = []                                            # (cell, region, names), in order
    for i, src in cells:
        for reg in _region_lines(src):
            regions.append((i, reg, _defined_names(src, reg), src))
    tasks = []
    for i, src in cells:
        for call, name in CHECK_CALL.findall(src):
            try:
                args = {n.id for n in ast.walk(ast.parse(call)) if isinstance(n, ast.Name)}
            except SyntaxError:
                continue
            owners = [r for r in regions if r[0] < i and r[2] & args]
            if owners:
                cell, reg, _, csrc = owners[-1]
                tasks.append(Task(chapter, name, cell, csrc, call, reg))
    return tasks


# ============================================================================ mutants
class _Collect(ast.NodeVisitor):
    """Walk the region's nodes and list every mutation as (node path, kind, payload)."""

    def __init__(self, lo: int, hi: int, params: dict[str, ast.expr | None]):
        self.lo, self.hi, self.params = lo, hi, params
        self.sites: list[tuple] = []
        self.path: list = []

    def _in(self, node) -> bool:
        return hasattr(node, "lineno") and self.lo < node.lineno < self.hi

    def generic_visit(self, node):
        for fname, value in ast.iter_fields(node):
            if isinstance(value, list):
                for k, item in enumerate(value):
                    if isinstance(item, ast.AST):
                        self.path.append((fname, k))
                        self._site(item)
                        self.visit(item)
                        self.path.pop()
            elif isinstance(value, ast.AST):
                self.path.append((fname, None))
                self._site(value)
                self.visit(value)
                self.path.pop()

    def _add(self, *site):
        self.sites.append((tuple(self.path), *site))

    def _site(self, node):                                   # noqa: C901 -- one case per node kind
        if not self._in(node):
            return
        if isinstance(node, ast.BinOp):
            for op in BINOPS.get(type(node.op), []):
                self._add("binop", op)
            if isinstance(node.op, NONCOMMUTATIVE):
                self._add("swap", None)
            self._add("left", None)
            self._add("right", None)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Invert, ast.Not)):
            self._add("unary", None)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1:
            for op in CMPOPS.get(type(node.ops[0]), []):
                self._add("cmp", op)
        elif isinstance(node, ast.BoolOp):
            self._add("boolop", None)
        elif isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool):
                self._add("const", not v)
            elif isinstance(v, int):
                for w in {v + 1, v - 1}:
                    self._add("const", w)
            elif isinstance(v, float):
                self._add("const", v * 2 if v else 1.0)
                if v not in (0.0, 1.0):
                    self._add("const", 1.0)
            elif isinstance(v, str) and "->" in v:
                for w in _einsum_mutants(v):
                    self._add("const", w)
        elif isinstance(node, ast.Slice):
            for part in ("lower", "upper"):
                if getattr(node, part) is not None:
                    self._add("slice", (part, 1))
                    self._add("slice", (part, -1))
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else None
            for twin in TWINS.get(name, []):
                self._add("twin", twin)
            for k, kw in enumerate(node.keywords):
                if kw.arg is not None:
                    self._add("dropkw", k)
            if isinstance(f, ast.Attribute) and name in DROPPABLE:
                self._add("dropcall", None)
        elif isinstance(node, ast.Attribute) and node.attr in ("T", "mT") and isinstance(node.ctx, ast.Load):
            self._add("dropattr", None)
        elif isinstance(node, (ast.List, ast.Tuple)) and isinstance(node.ctx, ast.Load) and len(node.elts) >= 2 \
                and not any(isinstance(e, ast.Starred) for e in node.elts[:2]):
            self._add("swapelts", None)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in self.params:
            default = self.params[node.id]
            self._add("param", default)
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Expr, ast.If, ast.For)) and \
                not isinstance(getattr(node, "value", None), ast.Constant):
            self._add("delete", None)
        if isinstance(node, (ast.If, ast.While)):
            self._add("negate", None)


def _einsum_mutants(spec: str) -> list[str]:
    """Swap two letters of the output (a wrong axis order), and two letters of each input."""
    lhs, _, out = spec.partition("->")
    outs = []
    parts = lhs.split(",") + [out]
    for p, part in enumerate(parts):
        letters = part.replace(" ", "")
        if len(letters) >= 2 and letters[0] != letters[1]:
            swapped = letters[1] + letters[0] + letters[2:]
            new = parts[:p] + [swapped] + parts[p + 1:]
            outs.append(",".join(new[:-1]) + "->" + new[-1])
    return outs


def _get(tree, path):
    node = tree
    for fname, k in path:
        node = getattr(node, fname) if k is None else getattr(node, fname)[k]
    return node


def _set(tree, path, new):
    parent = _get(tree, path[:-1])
    fname, k = path[-1]
    if k is None:
        setattr(parent, fname, new)
    elif new is None:
        del getattr(parent, fname)[k]
    else:
        getattr(parent, fname)[k] = new


def _apply(tree, site) -> tuple[ast.AST, str] | None:
    """A mutated copy of `tree` and a description, or None where the mutation does not apply."""
    tree = copy.deepcopy(tree)
    path, kind, payload = site
    node = _get(tree, path)
    old = ast.unparse(node)
    if kind == "binop":
        node.op = payload()
    elif kind == "swap":
        node.left, node.right = node.right, node.left
    elif kind in ("left", "right"):
        _set(tree, path, getattr(node, kind))
    elif kind == "unary":
        _set(tree, path, node.operand)
    elif kind == "cmp":
        node.ops = [payload()]
    elif kind == "boolop":
        node.op = BOOLOPS[type(node.op)]()
    elif kind == "const":
        node.value = payload
    elif kind == "slice":
        part, d = payload
        bound = getattr(node, part)
        setattr(node, part, ast.BinOp(bound, ast.Add() if d > 0 else ast.Sub(), ast.Constant(1)))
    elif kind == "twin":
        if isinstance(node.func, ast.Attribute):
            node.func.attr = payload
        else:
            node.func.id = payload
    elif kind == "dropkw":
        del node.keywords[payload]
    elif kind == "dropcall":
        _set(tree, path, node.func.value)
    elif kind == "dropattr":
        _set(tree, path, node.value)
    elif kind == "swapelts":
        node.elts[0], node.elts[1] = node.elts[1], node.elts[0]
    elif kind == "param":
        _set(tree, path, copy.deepcopy(payload) if payload is not None else ast.Constant(1))
    elif kind == "delete":
        parent = _get(tree, path[:-1])
        fname, k = path[-1]
        if k is None:
            return None
        body = getattr(parent, fname)
        if len(body) < 2:
            body[k] = ast.Pass()
        else:
            del body[k]
    elif kind == "negate":
        node.test = ast.UnaryOp(ast.Not(), node.test)
    new = ast.unparse(_get(tree, path)) if kind not in ("delete",) else "(deleted)"
    if kind == "delete":
        desc = f"delete `{_short(old)}`"
    elif kind == "negate":
        desc = f"negate `if {_short(ast.unparse(node.test.operand))}`"
    else:
        desc = f"`{_short(old)}` -> `{_short(new)}`"
    ast.fix_missing_locations(tree)
    return tree, desc


def _short(s: str, n: int = 70) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _params(tree, region) -> dict:
    """Parameters (name -> default node or None) of the function that holds the region."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.lineno < region[0] <= node.end_lineno:
            a = node.args
            pos = a.posonlyargs + a.args
            defaults = [None] * (len(pos) - len(a.defaults)) + list(a.defaults)
            out = dict(zip([p.arg for p in pos], defaults, strict=True))
            out.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True)})
            return out
    return {}


def mutants(task: Task) -> list[tuple[str, str]]:
    """(description, mutated cell source) for every distinct mutant of the task's region; the
    description gets '#2', '#3', ... where the same change appears at several places."""
    tree = ast.parse(task.source)
    params = _params(tree, task.region)
    col = _Collect(*task.region, params)
    col._site(tree)
    col.visit(tree)
    original = ast.unparse(tree)
    seen, out, count = {original}, [], {}
    for site in col.sites:
        try:
            res = _apply(tree, site)
        except (AttributeError, IndexError, TypeError, ValueError):
            continue
        if res is None:
            continue
        mtree, desc = res
        try:
            src = ast.unparse(mtree)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                compile(src, "<mutant>", "exec")
        except (SyntaxError, ValueError, TypeError):
            continue
        if src in seen:
            continue
        seen.add(src)
        count[desc] = count.get(desc, 0) + 1
        out.append((desc if count[desc] == 1 else f"{desc} #{count[desc]}", src))
    return out


# ============================================================================ running
class _Timeout(BaseException):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    if not hasattr(signal, "setitimer") or seconds <= 0:
        yield
        return
    def alarm(*_):
        raise _Timeout()

    try:
        old = signal.signal(signal.SIGALRM, alarm)
    except ValueError:                                       # not the main thread: no limit
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def notebook_namespace(path: str | Path, skip_cells: set[int] = frozenset()) -> dict:
    """Run the notebook's code cells in one namespace: not the check calls, not `skip_cells`, not
    cells tagged `experiment` or `mutation-skip` (they train models or need their results)."""
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    ns: dict = {"__name__": "__mutation__"}
    for i, src in _code_cells(nb):
        tags = nb.cells[i].metadata.get("tags", [])
        if i in skip_cells or CHECK_CALL.search(src) or "experiment" in tags or "mutation-skip" in tags:
            continue
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            try:
                exec(compile("\n".join(lines), f"{path}:cell{i}", "exec"), ns)
            except Exception as e:  # noqa: BLE001 -- a broken demo cell must not stop the run
                ns.setdefault("__cell_errors__", []).append(f"cell {i}: {type(e).__name__}: {e}")
    return ns


def bound_names(src: str) -> set[str]:
    """Names a cell binds at its top level (defs, classes, assignments, loop targets, imports)."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return set()
    out = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            out.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            out |= {(a.asname or a.name).split(".")[0] for a in node.names}
        else:
            for sub in ast.walk(node):
                if isinstance(sub, ast.Name) and isinstance(sub.ctx, ast.Store):
                    out.add(sub.id)
    return out


def _passes(ns: dict, cell_src: str | None, call: str, forget: set[str] = frozenset()) -> bool:
    import torch
    scope = {k: v for k, v in ns.items() if k not in forget}        # the task cell's own names start afresh
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            with _time_limit(TIME_LIMIT):
                if cell_src is not None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        code = compile(cell_src, "<mutant>", "exec")
                    exec(code, scope)
                eval(compile(call, "<check>", "eval"), scope)
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 -- any failure (check, error, timeout) rejects the mutant
            return False
    return True


def chapter_module(chapter: str):
    try:
        return importlib.import_module(f"minids.checks.ch{chapter}")
    except ImportError:
        return None


def run_chapter(path: str | Path, only: set[str] | None = None, progress=None, every: int = 1) -> list[Result]:
    """Mutation results for every task of one solution notebook; with `every` = n, only every n-th
    mutant of each task (in generation order; a quicker, deterministic sample)."""
    tasks = find_tasks(path)
    if not tasks:
        return []
    mod = chapter_module(tasks[0].chapter)
    equivalent = getattr(mod, "EQUIVALENT_MUTANTS", {}) if mod else {}
    not_mutated = getattr(mod, "NOT_MUTATED", {}) if mod else {}
    skip = {t.cell for t in tasks if t.name in not_mutated}
    ns = notebook_namespace(path, skip)
    results = []
    for task in tasks:
        if only and task.name not in only:
            continue
        res = Result(task.name)
        if task.name in not_mutated:
            res.skipped = not_mutated[task.name]
            results.append(res)
            continue
        t0 = time.perf_counter()
        forget = bound_names(task.source)
        if not _passes(ns, task.source, task.call, forget):
            res.skipped = "the check fails on the solution itself"
            results.append(res)
            continue
        allow = equivalent.get(task.name, {})
        generated = set()
        for desc, src in mutants(task)[::every]:
            generated.add(desc)
            res.total += 1
            if desc in allow:
                res.equivalent += 1
            elif not _passes(ns, src, task.call, forget):
                res.rejected += 1
            else:
                res.survivors.append(desc)
            if progress:
                progress()
        res.stale_allow = sorted(set(allow) - generated) if every == 1 else []
        res.seconds = time.perf_counter() - t0
        results.append(res)
    return results


def solution_paths(chapters: list[str], folder: str | Path | None = None) -> list[Path]:
    folder = Path(folder) if folder else _default_solutions()
    paths = sorted(folder.glob("[0-9][0-9]_*.ipynb"))
    if chapters:
        paths = [p for p in paths if p.name[:2] in {c.zfill(2) for c in chapters}]
    return paths


def _default_solutions() -> Path:
    here = Path("solutions")
    return here if here.is_dir() else Path(__file__).resolve().parents[2] / "solutions"


def table(rows: list[tuple[str, Result]], verbose: bool = False) -> str:
    lines = [f"{'ch':<3}{'task':<28}{'mutants':>8}{'rejected':>9}{'equiv.':>7}{'survived':>9}{'score':>8}"]
    tot = [0, 0, 0]
    for ch, r in rows:
        if r.skipped:
            lines.append(f"{ch:<3}{r.task:<28}{'':>8}  not mutated: {r.skipped}")
            continue
        lines.append(f"{ch:<3}{r.task:<28}{r.total:>8}{r.rejected:>9}{r.equivalent:>7}{len(r.survivors):>9}"
                     f"{r.score:>8.1%}")
        tot[0] += r.total
        tot[1] += r.rejected
        tot[2] += r.equivalent
        if verbose:
            lines += [f"{'':<6}survived: {s}" for s in r.survivors]
        lines += [f"{'':<6}stale allow-list entry (no such mutant now): {s}" for s in r.stale_allow]
    n = tot[0] - tot[2]
    lines.append(f"{'':<3}{'all':<28}{tot[0]:>8}{tot[1]:>9}{tot[2]:>7}{n - tot[1]:>9}"
                 f"{(tot[1] / n if n else 1.0):>8.1%}")
    return "\n".join(lines)


def chapter_scores(rows: list[tuple[str, Result]]) -> dict[str, float]:
    """Score per chapter: rejected / (mutants - equivalent) over its mutated tasks."""
    acc: dict[str, list[int]] = {}
    for ch, r in rows:
        if not r.skipped:
            a = acc.setdefault(ch, [0, 0])
            a[0] += r.rejected
            a[1] += r.total - r.equivalent
    return {ch: (a[0] / a[1] if a[1] else 1.0) for ch, a in acc.items()}


def run(chapters: list[str] = (), folder=None, tasks: set[str] | None = None,
        every: int = 1) -> list[tuple[str, Result]]:
    rows = []
    for path in solution_paths(list(chapters), folder):
        rows += [(path.name[:2], r) for r in run_chapter(path, tasks, every=every)]
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids mutation",
                                 description="Mutate each exercise solution and report, per check, the "
                                             "share of mutants it rejects.")
    ap.add_argument("chapters", nargs="*", help="chapter numbers, e.g. 01 04 (default: all)")
    ap.add_argument("--solutions", default=None, help="the solutions folder (default: ./solutions)")
    ap.add_argument("--task", action="append", default=None, help="only this task (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true", help="list the surviving mutants")
    ap.add_argument("--every", type=int, default=1, help="only every n-th mutant of each task (a quick sample)")
    args = ap.parse_args(argv)
    import torch
    torch.set_num_threads(1)
    paths = solution_paths(args.chapters, args.solutions)
    if not paths:
        raise SystemExit(f"no solution notebooks for chapters {args.chapters} in {args.solutions or 'solutions'}")
    t0 = time.perf_counter()
    if args.every < 1:
        raise SystemExit(f"error: --every={args.every} must be >= 1")
    rows = run(args.chapters, args.solutions, set(args.task) if args.task else None, args.every)
    print(table(rows, args.verbose))
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main(sys.argv[1:])
