"""Write `exercises/` from `solutions/`: every `### BEGIN SOLUTION` ... `### END SOLUTION` region
(nbgrader's markers) becomes a stub, outputs are cleared, and the notebook's metadata records
its chapter and graded tasks for the grader."""

from __future__ import annotations

import re
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
