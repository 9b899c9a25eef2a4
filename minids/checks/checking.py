"""The harness every check uses: call the learner's function safely, compare its answer with the
reference, recognise known mistakes, and print a verdict a learner can act on.

Writing a check (a guide for chapter authors)
=============================================

A chapter module `minids/checks/chNN.py` holds one `check_<task>(answer)` per graded task::

    FORBIDDEN = {"causal_attention": ["torch.nn.functional.scaled_dot_product_attention"]}

    def check_causal_attention(causal_attention) -> None:
        with Checker("causal_attention") as c:
            for B, H, T, D in [(1, 1, 1, 8), (2, 3, 7, 16)]:          # every argument varies
                q, k, v = ...
                got = c.call(causal_attention, q, k, v, forbidden=FORBIDDEN["causal_attention"])
                c.close(got, reference(q, k, v), f"(B, H, T, D) = {(B, H, T, D)}", dtype=q.dtype,
                        mistakes=[(no_mask(q, k, v), "the causal mask is missing")])

Rules (the grader and the tests rely on them):

- **Only call the learner's function, with picklable data** (tensors, numbers, strings, tuples,
  lists, dicts, configs, nn.Modules), through `c.call(fn, *args)`. It passes deep copies (so an
  in-place edit cannot corrupt the reference; strides, hence non-contiguous views, are kept),
  checks that the return value is plain data (tensors, numpy arrays, numbers, bools, strings,
  None, and tuples/lists/dicts of those), turns a shape error into a hint (`hint=`), and
  enforces `forbidden=` calls. A check never reads the learner's globals.
- **A task whose answer is a value** (a think question's number, an experiment's
  measurements) takes that value as its argument: `check_kv_bytes(answer)`. `None` (the preset
  in the exercise) reads as "not answered yet". Use `c.number`, `c.choice`, `c.in_range`,
  `c.keys`.
- **Cases**: every argument of the task takes at least two values across the cases (an answer
  that ignores one must fail); include batch 1, T = 1, a non-contiguous input and each dtype a
  learner may use. Compute references in float64 where you can.
- **Declare the dtype contract** where the task has one: `c.close(..., dtype=x.dtype)`
  (float32 in, float32 out) or `c.equal(mask, expected, what, dtype=torch.bool)`. Without
  `dtype=`, any real dtype passes (float64, numpy arrays, lists...).
- **Mistakes**: `mistakes=[(wrong_answer, "what went wrong")]` on `close`/`equal`/`number`.
  A mistake is named only when the learner's answer matches it (same tolerance) AND it differs
  from the expected answer in this case; when several match, all are named. Test the text of
  each hint you list (tests/course/test_exercises_chNN.py, `check_contract`).
- **Forbidden calls**: list them per task in the module's `FORBIDDEN` dict (dotted names:
  "torch.nn.functional.scaled_dot_product_attention", "torch.Tensor.repeat_interleave",
  "minids.attention.repeat_kv"); pass them to `c.call(..., forbidden=...)`. Missing names are
  ignored (a renamed package function does not break a check).
- **Mutation testing** (`python -m minids mutation NN`) mutates each solution function and
  runs its check on every mutant. In the chapter module, `EQUIVALENT_MUTANTS = {"task":
  {"<mutant description>": "why it computes the same function"}}` lists reviewed equivalent
  mutants and `NOT_MUTATED = {"task": "why"}` tasks that are not mutated (experiments that
  train); both are reported, never silently dropped.
- `POINTS = {"task": n}` (optional): the task's weight in the instructors' guide.

Instrumentation (`forbidden=`, and `watch=Watch()`: the op count and the largest tensor storage
a call makes) sees what runs in this process; when the grader runs the learner's function
elsewhere it sees nothing and those checks pass vacuously (the grader enforces `FORBIDDEN` by
itself).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import math
import numbers
from collections.abc import Iterable, Sequence

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

PASS_MARK = "✅"
FAIL_MARK = "❌"


class CheckFailed(AssertionError):
    """A check did not pass; the message says what was expected, what came, and a likely cause."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback through the checker's own code: the verdict
        # with its details has already been printed above the error.
        return [f"CheckFailed: {str(self).splitlines()[0]}  (details above)"]


class ForbiddenCall(CheckFailed):
    """The learner's code called a function the task forbids."""


class NotAnswered(NotImplementedError):
    """A value task's answer is still None."""


# ------------------------------------------------------------------------ converting answers
_PLAIN = (torch.Tensor, str, bytes, bool, numbers.Number, type(None))


def _is_plain(x, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if isinstance(x, _PLAIN) or type(x).__module__ == "numpy":
        return True
    if isinstance(x, (tuple, list)):
        return all(_is_plain(v, depth + 1) for v in x)
    if isinstance(x, dict):
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in x.items())
    return False


def as_tensor(x, what: str = "your answer") -> torch.Tensor:
    """A learner's answer as a tensor: tensors as they are (detached), NumPy arrays and scalars,
    Python numbers and bools, and (nested) lists/tuples of those."""
    if torch.is_tensor(x):
        return x.detach()
    if type(x).__module__ == "numpy":                     # np.ndarray, np.int64, np.float32, ...
        import numpy as np
        return torch.from_numpy(np.array(x, copy=True))
    if isinstance(x, (bool, numbers.Number)) and not isinstance(x, complex):
        return torch.tensor(x)
    if isinstance(x, (list, tuple)):
        try:
            if x and all(torch.is_tensor(v) or type(v).__module__ == "numpy" for v in x):
                return torch.stack([as_tensor(v, what) for v in x])
            return torch.tensor(x)
        except (TypeError, ValueError, RuntimeError) as e:
            raise CheckFailed(f"{what}: could not read it as an array of numbers ({e})") from None
    if x is None:
        raise CheckFailed(f"{what}: got None: did you forget a `return`?")
    raise CheckFailed(f"{what}: expected a tensor (or numbers), got {type(x).__name__}")


def as_bool(x, what: str = "your answer") -> bool:
    """A yes/no answer: a Python bool, a NumPy bool, or a one-element bool tensor/array."""
    if isinstance(x, bool):
        return x
    if torch.is_tensor(x) and x.dtype == torch.bool and x.numel() == 1:
        return bool(x)
    if type(x).__module__ == "numpy" and str(getattr(x, "dtype", "")) == "bool" and getattr(x, "size", 0) == 1:
        return bool(x)
    raise CheckFailed(f"{what}: return True or False, got {x!r}")


def _torch_dtype(x) -> torch.dtype:
    return as_tensor(x).dtype


def _fmt(v: float, digits: int) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (isinstance(v, float) and v.is_integer() and abs(v) < 1e15):
        return f"{int(v):,}" if isinstance(v, int) or abs(v) >= 1e4 else f"{v:.{max(digits - 4, 1)}f}"
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.{digits}g}"


def fmt_pair(expected, got) -> tuple[str, str]:
    """Two numbers printed with enough digits that different values never look identical."""
    for digits in (6, 8, 10, 13, 17):
        e, g = _fmt(expected, digits), _fmt(got, digits)
        if e != g or expected == got:
            return e, g
    return repr(expected), repr(got)


def _tolerance(atol: float, rtol: float) -> str:
    if atol == 0 and rtol == 0:
        return "exact"
    parts = [f"{atol:g}"] if atol else []
    if rtol:
        parts.append(f"{rtol:g}·|expected|")
    return "|got - expected| <= " + " + ".join(parts)


def _index(flat: int, shape: Sequence[int]) -> tuple[int, ...]:
    out = []
    for n in reversed(shape):
        out.append(flat % n)
        flat //= n
    return tuple(reversed(out))


def differences(got: torch.Tensor, expected: torch.Tensor, atol: float, rtol: float) -> str:
    """Where two same-shape arrays differ: how many values, the first position, and the values
    there (printed with enough digits to tell them apart), and the tolerance."""
    g, e = got.double(), expected.double()
    bad = ~torch.isclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
    n_bad, n = int(bad.sum()), bad.numel()
    first = int(bad.flatten().nonzero()[0, 0]) if n_bad else 0
    ev, gv = e.flatten()[first].item(), g.flatten()[first].item()
    if expected.dtype == torch.bool or not expected.is_floating_point():
        ev, gv = (bool(ev), bool(gv)) if expected.dtype == torch.bool else (int(ev), int(gv))
    es, gs = fmt_pair(ev, gv)
    where = f" at index {_index(first, tuple(got.shape))}" if got.dim() else ""
    count = f"{n_bad} of {n} values differ" if got.dim() else "the value differs"
    return f"{count} ({_tolerance(atol, rtol)}); first{where}: expected {es}, got {gs}"


def _matches(got: torch.Tensor, wrong, atol: float, rtol: float) -> bool:
    try:
        w = as_tensor(wrong)
    except CheckFailed:
        return False
    if tuple(w.shape) != tuple(got.shape):
        return False
    if w.dtype == torch.bool or got.dtype == torch.bool:
        return torch.equal(w.bool(), got.bool())
    return bool(torch.allclose(got.double(), w.double(), atol=atol, rtol=rtol, equal_nan=True))


# ------------------------------------------------------------------------ forbidden calls
def _resolve(name: str):
    """'torch.nn.functional.scaled_dot_product_attention' -> the object, or None if absent."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        try:
            for p in parts[i:]:
                obj = getattr(obj, p)
        except AttributeError:
            return None
        return obj
    return None


class _Forbid(TorchFunctionMode):
    def __init__(self, banned: dict):
        super().__init__()
        self.banned = banned                         # object -> dotted name

    def __torch_function__(self, func, types, args=(), kwargs=None):
        try:
            name = self.banned.get(func)           # Tensor methods arrive as torch.Tensor.<name>
        except TypeError:                          # an unhashable callable: never banned
            name = None
        if name is not None:
            raise ForbiddenCall(f"your code calls `{name}`, which this task forbids: write it with "
                                "plain tensor operations")
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def forbid(names: Iterable[str]):
    """While active, calling any of `names` raises ForbiddenCall: torch functions and Tensor
    methods through a TorchFunctionMode, Python functions (e.g. the package's own) by swapping
    their code, so that every reference to them is caught, however it was imported."""
    torch_objs, py_funcs = {}, []
    for name in names:
        obj = _resolve(name)
        if obj is None:
            continue
        inner = inspect.unwrap(obj) if callable(obj) else obj      # e.g. under @torch.no_grad()
        if getattr(inner, "__code__", None) is not None and not inner.__code__.co_freevars:
            obj = inner                                             # the wrapper calls this very function
        code = getattr(obj, "__code__", None)
        if code is not None and not code.co_freevars:
            py_funcs.append((obj, code, name))
        else:
            torch_objs[obj] = name
    try:
        for obj, _, name in py_funcs:
            obj.__code__ = _swap_code(name)
        with _Forbid(torch_objs) if torch_objs else contextlib.nullcontext():
            yield
    finally:
        for obj, code, _ in py_funcs:
            obj.__code__ = code


def _swap_code(name: str):
    # a code object without free variables (a function's __code__ may only be replaced by one
    # with the same number of free variables): the name travels in a default-free constant
    msg = f"your code calls `{name}`, which this task forbids: write it yourself"
    src = ("def forbidden(*args, **kwargs):\n"
           "    from minids.checks.checking import ForbiddenCall\n"
           f"    raise ForbiddenCall({msg!r})\n")
    ns: dict = {}
    exec(compile(src, "<forbidden>", "exec"), ns)
    return ns["forbidden"].__code__


# ------------------------------------------------------------------------ watching work
class Watch(TorchDispatchMode):
    """Counts the tensor operations a call runs and the largest tensor storage it creates (a
    materialised copy shows up; a view or a broadcast does not). `observed` is False when
    nothing ran here (e.g. the grader ran the function in another process)."""

    def __init__(self):
        super().__init__()
        self.ops, self.peak_bytes = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for o in (out if isinstance(out, (tuple, list)) else (out,)):
            if isinstance(o, torch.Tensor) and o.device.type != "meta":
                try:
                    self.peak_bytes = max(self.peak_bytes, o.untyped_storage().nbytes())
                except (RuntimeError, NotImplementedError):
                    pass
        return out

    @property
    def observed(self) -> bool:
        return self.ops > 0


# ------------------------------------------------------------------------ the checker
_SHAPE_ERRORS = ("size of tensor", "shape", "mat1 and mat2", "Expected size", "must match", "dimension")


class Checker:
    """Use as `with Checker("rms_norm") as c: ...`. On leaving, prints `✅ rms_norm: passed N/N
    tests` or `❌ rms_norm: <what went wrong>` and raises CheckFailed."""

    def __init__(self, task: str, points: int = 1):
        self.task, self.points, self.passed = task, points, 0

    def __enter__(self) -> "Checker":
        return self

    # -------------------------------------------------------------- calling the learner
    def call(self, fn, *args, hint: str | None = None, forbidden: Iterable[str] = (), watch: Watch | None = None,
             error_hints: dict[str, str] | None = None, **kwargs):
        """fn(*args, **kwargs) on deep copies of the arguments; the result must be plain data.
        A shape-like RuntimeError names `hint` as the likely mistake; `error_hints` maps other
        error-message fragments to hints. With `watch` (a Watch()), the call's tensor operations
        are counted (watch.ops, watch.peak_bytes)."""
        if fn is None:
            raise NotAnswered("not implemented yet")
        if not callable(fn):
            raise CheckFailed(f"expected your function, got {type(fn).__name__}: pass the function "
                              "itself, without calling it")
        args, kwargs = copy.deepcopy(args), copy.deepcopy(kwargs)
        try:
            with forbid(forbidden), (watch if watch is not None else contextlib.nullcontext()):
                out = fn(*args, **kwargs)
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            for fragment, why in (error_hints or {}).items():
                if fragment in str(e):
                    raise CheckFailed(f"your code raised {type(e).__name__}: {e}\n    likely mistake: {why}") from None
            if hint and isinstance(e, RuntimeError) and any(s in str(e) for s in _SHAPE_ERRORS):
                raise CheckFailed(f"your code raised RuntimeError: {e}\n    likely mistake: {hint}") from None
            raise
        if not _is_plain(out):
            raise CheckFailed(f"return plain data (tensors, NumPy arrays, numbers, strings, or tuples/"
                              f"lists/dicts of those), got {type(out).__name__}")
        return out

    def answer(self, value):
        """A value task's answer: None means not answered yet."""
        if value is None:
            raise NotAnswered("not answered yet")
        if not _is_plain(value):
            raise CheckFailed(f"the answer must be plain data (numbers, strings, lists, dicts), got "
                              f"{type(value).__name__}")
        return value

    # -------------------------------------------------------------- comparisons
    def close(self, got, expected, what: str, atol: float = 1e-5, rtol: float = 1e-4,
              mistakes: Iterable[tuple[object, str]] = (), dtype: torch.dtype | None = None) -> None:
        """Pass if `got` equals `expected` in shape and values (allclose). Otherwise say where they
        first differ and, if `got` matches one of the known `mistakes` (answer, explanation) that
        differs from `expected` here, name it. With `dtype`, the answer must have that dtype."""
        got_t, exp_t = as_tensor(got, what), as_tensor(expected, what)
        msg = None
        if tuple(got_t.shape) != tuple(exp_t.shape):
            msg = f"{what}: expected shape {tuple(exp_t.shape)}, got {tuple(got_t.shape)}"
            if got_t.numel() == exp_t.numel() and _matches(got_t.reshape(exp_t.shape), exp_t, atol, rtol):
                msg += " (the right values in the wrong layout: check the order of the dimensions)"
        elif got_t.is_complex() != exp_t.is_complex():
            msg = f"{what}: expected {'complex' if exp_t.is_complex() else 'real'} values, got {got_t.dtype}"
        elif not _matches(got_t, exp_t, atol, rtol):
            msg = f"{what}: {differences(got_t, exp_t, atol, rtol)}"
        elif dtype is not None and got_t.dtype != dtype:
            raise CheckFailed(f"{what}: the values are right but the dtype is {got_t.dtype}; expected "
                              f"{dtype} (return the dtype of the input)")
        if msg is None:
            self.passed += 1
            return
        raise CheckFailed(msg + self._mistake(got_t, exp_t, mistakes, atol, rtol))

    def equal(self, got, expected, what: str, mistakes: Iterable[tuple[object, str]] = (),
              dtype: torch.dtype | None = None) -> None:
        """Exact comparison (integers, bools, indices)."""
        got_t, exp_t = as_tensor(got, what), as_tensor(expected, what)
        if dtype is not None and got_t.dtype != dtype and tuple(got_t.shape) == tuple(exp_t.shape):
            hint = " (a mask: compare, don't multiply)" if dtype == torch.bool else ""
            raise CheckFailed(f"{what}: expected dtype {dtype}, got {got_t.dtype}{hint}")
        self.close(got_t, exp_t, what, atol=0.0, rtol=0.0, mistakes=mistakes)

    def number(self, got, expected: float, what: str, rtol: float = 1e-6, atol: float = 0.0,
               integer: bool = False, mistakes: Iterable[tuple[object, str]] = ()) -> None:
        """One number (a Python or NumPy scalar, or a one-element tensor/array)."""
        got_v = self._scalar(got, what)
        if integer and not float(got_v).is_integer():
            raise CheckFailed(f"{what}: expected a whole number, got {got_v!r}")
        exp_v = float(expected)
        if math.isclose(float(got_v), exp_v, rel_tol=rtol, abs_tol=atol) or (math.isinf(exp_v) and got_v == exp_v):
            self.passed += 1
            return
        es, gs = fmt_pair(int(exp_v) if integer and exp_v.is_integer() else exp_v,
                          int(got_v) if integer and float(got_v).is_integer() else float(got_v))
        msg = f"{what}: expected {es}, got {gs} ({_tolerance(atol, rtol)})"
        named = [why for wrong, why in mistakes if math.isclose(float(got_v), float(wrong), rel_tol=rtol, abs_tol=atol)
                 and not math.isclose(float(wrong), exp_v, rel_tol=rtol, abs_tol=atol)]
        raise CheckFailed(msg + _name(named))

    def choice(self, got, expected: str, options: Sequence[str], what: str,
               mistakes: dict[str, str] | None = None) -> None:
        """One of `options` (case and surrounding spaces/brackets ignored: 'B', ' b)' read as 'b')."""
        g = str(got).strip().strip("()[]. ").lower() if got is not None else ""
        opts = [o.lower() for o in options]
        if g not in opts:
            raise CheckFailed(f"{what}: answer one of {', '.join(map(repr, options))}, got {got!r}")
        if g == expected.lower():
            self.passed += 1
            return
        hint = (mistakes or {}).get(g) or (mistakes or {}).get(g.upper())
        raise CheckFailed(f"{what}: {got!r} is not right" + _name([hint] if hint else []))

    def in_range(self, got, lo: float, hi: float, what: str, why: str = "") -> float:
        """A measurement that must lie in [lo, hi]; returns it as a float."""
        v = float(self._scalar(got, what))
        if not (lo <= v <= hi) or math.isnan(v):
            raise CheckFailed(f"{what}: {v:.6g} is outside the plausible range [{lo:g}, {hi:g}]"
                              + (f": {why}" if why else ""))
        self.passed += 1
        return v

    def keys(self, got, required: Iterable, what: str) -> None:
        """A dict answer holding (at least) the `required` keys."""
        if not isinstance(got, dict):
            raise CheckFailed(f"{what}: expected a dict, got {type(got).__name__}")
        missing = [k for k in required if k not in got]
        if missing:
            raise CheckFailed(f"{what}: missing key(s) {', '.join(map(repr, missing))} (has "
                              f"{', '.join(map(repr, got))})")
        self.passed += 1

    def true(self, cond: bool, what: str) -> None:
        if not cond:
            raise CheckFailed(what)
        self.passed += 1

    # -------------------------------------------------------------- helpers
    @staticmethod
    def _scalar(got, what: str):
        t = as_tensor(got, what)
        if t.numel() != 1:
            raise CheckFailed(f"{what}: expected one number, got shape {tuple(t.shape)}")
        if t.dtype == torch.bool:
            raise CheckFailed(f"{what}: expected a number, got a bool")
        v = t.reshape(()).item()
        return v

    @staticmethod
    def _mistake(got_t, exp_t, mistakes, atol, rtol) -> str:
        named = [why for wrong, why in mistakes
                 if _matches(got_t, wrong, atol, rtol) and not _same(wrong, exp_t, atol, rtol)]
        return _name(named)

    def __exit__(self, etype, exc, tb):
        if etype is None:
            print(f"{PASS_MARK} {self.task}: passed {self.passed}/{self.passed} tests")
            return False
        if etype is NotAnswered:
            msg = f"{exc}: replace `raise NotImplementedError` with your answer"
        elif etype is NotImplementedError:
            msg = "not implemented yet: replace `raise NotImplementedError` with your code"
        elif issubclass(etype, CheckFailed):
            msg = str(exc)
        else:
            msg = f"your code raised {etype.__name__}: {exc}"
        print(f"{FAIL_MARK} {self.task}: {msg}")
        raise CheckFailed(f"{self.task}: {msg}") from None


def _same(wrong, exp_t, atol, rtol) -> bool:
    try:
        return _matches(exp_t, wrong, atol, rtol)
    except Exception:  # noqa: BLE001 -- an unreadable mistake answer is simply not the same
        return False


def _name(named: list[str]) -> str:
    named = list(dict.fromkeys(named))
    if not named:
        return ""
    if len(named) == 1:
        return f"\n    likely mistake: {named[0]}"
    return "\n    likely mistake, one of:" + "".join(f"\n      - {w}" for w in named)
