"""Write `exercises/` from `solutions/`: every `### BEGIN SOLUTION` ... `### END SOLUTION` region
(nbgrader's markers) becomes a stub, outputs are cleared, and the notebook's metadata records
its chapter and graded tasks (for the reader; the grader takes them from the course, see
`course_tasks`)."""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path

import nbformat

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
CHECK_CALL = re.compile(r"^\s*check_(\w+)\(", re.MULTILINE)
STUB = 'raise NotImplementedError("your code here")'


def strip_solutions(source: str, markdown: bool = False) -> str:
    """Replace each marked region by a stub with the indentation of its BEGIN line."""
    out, inside = [], False
    for n, line in enumerate(source.splitlines(), 1):
        mark = line.strip()
        if mark == BEGIN:
            if inside:
                raise ValueError(f"line {n}: {BEGIN} inside another solution region")
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.append(indent + ("YOUR ANSWER HERE" if markdown else f"# YOUR CODE HERE\n{indent}{STUB}"))
        elif mark == END:
            if not inside:
                raise ValueError(f"line {n}: {END} without a {BEGIN}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ValueError(f"a {BEGIN} region is never closed")
    return "\n".join(out)


def tasks_of(nb) -> list[str]:
    """Graded tasks, in order: the `check_<task>(...)` calls of the code cells."""
    found = []
    for cell in nb.cells:
        if cell.cell_type == "code":
            found += [t for t in CHECK_CALL.findall(cell.source) if t not in found]
    return found


def make_exercise(nb):
    """The learner's version of a solution notebook (a new notebook; the input is not changed)."""
    ex = nbformat.from_dict(nb)
    ex = nbformat.from_dict(nbformat.reads(nbformat.writes(ex), as_version=4))
    for cell in ex.cells:
        cell.source = strip_solutions(cell.source, markdown=cell.cell_type == "markdown")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
            cell.metadata.pop("execution", None)          # run timestamps: the exercise would change on every run
    chapter = ex.metadata.get("minids", {}).get("chapter")
    ex.metadata["minids"] = {"chapter": chapter, "tasks": tasks_of(ex), "kind": "exercise"}
    return ex


def build(src: str | Path = "solutions", dst: str | Path = "exercises") -> list[Path]:
    """Regenerate every exercise notebook; returns the paths written."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise FileNotFoundError(f"no solutions folder at {src}")
    dst.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(src.glob("*.ipynb")):
        ex = make_exercise(nbformat.read(path, as_version=4))
        out = dst / path.name
        text = nbformat.writes(ex) + "\n"
        if not out.exists() or out.read_text(encoding="utf-8") != text:
            out.write_text(text, encoding="utf-8")
        written.append(out)
    return written


# --- the course's tasks, for the grader -----------------------------------------------------------

MAGIC = re.compile(r"^(\s*)[%!]")


def python_source(source: str) -> str:
    """A cell's code with IPython syntax neutralised: a cell magic (`%%...`) skips the whole cell,
    a line magic or shell escape (`%...`, `!...`) becomes `pass` (indentation kept)."""
    if source.lstrip().startswith("%%"):
        return ""
    code = "\n".join(MAGIC.sub(r"\1pass  # ", line) if MAGIC.match(line) else line for line in source.splitlines())
    return textwrap.dedent(code)                  # as IPython does for a cell whose first line is indented


def check_calls(source: str) -> list[tuple[str, list[str], list[tuple[str, str]]]]:
    """The `check_<task>(...)` calls of a cell, in order, found in its syntax tree (so comments,
    a trailing `;`, spacing and line breaks do not matter): (task, argument expressions,
    keyword arguments as (name, expression)). A cell that does not parse has none."""
    code = python_source(source)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        if not name or not name.startswith("check_") or len(name) <= 6:
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            continue
        args = [ast.get_source_segment(code, a) for a in node.args]
        kwargs = [(k.arg, ast.get_source_segment(code, k.value)) for k in node.keywords]
        if all(args) and all(v for _, v in kwargs):
            found.append((node.lineno, node.col_offset, name[6:], args, kwargs))
    return [(t, a, k) for _, _, t, a, k in sorted(found, key=lambda x: (x[0], x[1]))]


def course_tasks(src: str | Path = "solutions") -> dict[str, dict]:
    """The graded tasks of every chapter, from the solution notebooks: {chapter: {"notebook":
    file name, "tasks": [{"task", "args", "kwargs"}, ...]}}. The task names, their order and the
    expressions passed to each check are the course's, never a submission's."""
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"no solutions folder at {src}")
    course = {}
    for path in sorted(src.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        meta = nb.metadata.get("minids", {})
        chapter = meta.get("chapter") if isinstance(meta, dict) else None
        if not isinstance(chapter, str) or not chapter:
            m = re.match(r"(\d\d)_", path.name)
            if not m:
                continue
            chapter = m.group(1)
        tasks, seen = [], set()
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            for task, args, kwargs in check_calls(cell.source):
                if task not in seen:
                    seen.add(task)
                    tasks.append({"task": task, "args": args, "kwargs": kwargs})
        if tasks:
            course[chapter] = {"notebook": path.name, "tasks": tasks}
    return course
