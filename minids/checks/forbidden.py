"""Forbidden calls, found in the submitted notebook's source (the grader's side of the flag; the
sandbox adds the calls it sees at run time).

A chapter's checks module may declare, per task, library calls its task text forbids:

    FORBIDDEN = {"causal_attention": ["torch.nn.functional.scaled_dot_product_attention", "minids.attention"]}

An entry names a function (flagged when the learner's function, or a notebook function it calls,
refers to it under any import alias, or names it in a string, as in `getattr(F, "...")`) or a
module (flagged for any of its attributes). Every task also flags `minids.checks`: the checks'
own reference code.
"""

from __future__ import annotations

import ast
import importlib

from .build import python_source

ALWAYS = ["minids.checks"]


def _is_module(name: str) -> bool:
    try:
        importlib.import_module(name)
        return True
    except Exception:                                   # noqa: BLE001 -- not a module: a function
        return False


def _trees(cells: list[str]) -> list[ast.Module]:
    out = []
    for src in cells:
        try:
            out.append(ast.parse(python_source(src)))
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            pass
    return out


def _aliases(trees: list[ast.Module]) -> dict[str, str]:
    """Every import of the notebook, as {bound name: dotted name}."""
    names: dict[str, str] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.asname:
                        names[a.asname] = a.name
                    else:
                        top = a.name.split(".")[0]
                        names.setdefault(top, top)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for a in node.names:
                    if a.name != "*":
                        names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _definitions(trees: list[ast.Module]) -> dict[str, list[ast.AST]]:
    defs: dict[str, list[ast.AST]] = {}
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defs.setdefault(node.name, []).append(node)
            elif isinstance(node, ast.Assign) and isinstance(node.value, (ast.Lambda, ast.Attribute, ast.Name)):
                for t in node.targets:
                    if isinstance(t, ast.Name):
                        defs.setdefault(t.id, []).append(node.value)
    return defs


def _dotted(node: ast.AST) -> tuple[str, list[str]] | None:
    attrs = []
    while isinstance(node, ast.Attribute):
        attrs.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return node.id, attrs[::-1]
    return None


def static_hits(cells: list[str], names: list[str], forbidden: list[str]) -> set[str]:
    """The forbidden entries (as the dotted names used) that the notebook functions `names`,
    and the notebook functions they call, refer to."""
    if not forbidden or not names:
        return set()
    trees = _trees(cells)
    aliases, defs = _aliases(trees), _definitions(trees)
    used: set[str] = set()
    strings: set[str] = set()
    todo, seen = [n for n in names if n in defs], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for d in defs.get(name, []):
            local = dict(aliases)
            local.update(_aliases([ast.Module(body=[d], type_ignores=[])]))
            for node in ast.walk(d):
                if isinstance(node, ast.Call):          # getattr(F, "scaled_..."), import_module("...")
                    for a in node.args:
                        if isinstance(a, ast.Constant) and isinstance(a.value, str) and len(a.value) < 200:
                            strings.update({a.value, a.value.rsplit(".", 1)[-1]})
                found = _dotted(node) if isinstance(node, (ast.Attribute, ast.Name)) else None
                if found is None:
                    continue
                root, attrs = found
                if root in defs and root not in seen and not attrs:
                    todo.append(root)
                used.add(".".join([local.get(root, root), *attrs]))
    hits = set()
    for f in forbidden:
        last = f.rsplit(".", 1)[-1]
        for d in used:
            if d == f or d.startswith(f + "."):
                hits.add(d if d.startswith(f) else f)
        if f in strings:
            hits.add(f)
        if not _is_module(f):
            # the same name reached through another path (F = torch.nn.functional; F.sdpa...), but not
            # a plain local variable that happens to share the name (a parameter called gpu_hours)
            if any("." in d and d.rsplit(".", 1)[-1] == last for d in used) or last in strings:
                hits.add(f)
    hits = {h for h in hits if any(h == f or h.startswith(f + ".") for f in forbidden)}
    return {h for h in hits if not any(o.startswith(h + ".") for o in hits)}      # the most specific name
