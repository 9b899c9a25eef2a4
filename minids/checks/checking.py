"""The small harness every check uses: compare a learner's answer with the reference, recognise
plausible mistakes, and print a clear verdict."""

from __future__ import annotations

import torch

PASS_MARK = "✅"
FAIL_MARK = "❌"


class CheckFailed(AssertionError):
    """A check did not pass; the message says what was expected, what came, and a likely cause."""

    def _render_traceback_(self) -> list[str]:
        # IPython shows this instead of a traceback through the checker's own code: the verdict
        # with its details has already been printed above the error.
        return [f"CheckFailed: {str(self).splitlines()[0]}  (details above)"]


class Checker:
    """Use as `with Checker("rms_norm") as c: c.close(got, expected, "case")`. On leaving, prints
    `✅ rms_norm: passed N/N tests` or `❌ rms_norm: <what went wrong>` and raises CheckFailed."""

    def __init__(self, task: str, points: int = 1):
        self.task, self.points, self.passed = task, points, 0

    def __enter__(self) -> "Checker":
        return self

    def close(self, got, expected, what: str, atol: float = 1e-5, rtol: float = 1e-4,
              mistakes: list[tuple[object, str]] = ()) -> None:
        """Pass if `got` equals `expected` (same shape, allclose). Otherwise, if `got` matches
        one of the known `mistakes` (answer, explanation), say which."""
        got_t = torch.as_tensor(got) if not torch.is_tensor(got) else got
        exp_t = torch.as_tensor(expected) if not torch.is_tensor(expected) else expected
        got_f, exp_f = got_t.detach().double(), exp_t.detach().double()
        if tuple(got_t.shape) != tuple(exp_t.shape):
            msg = f"{what}: expected shape {tuple(exp_t.shape)}, got {tuple(got_t.shape)}"
        elif torch.allclose(got_f, exp_f, atol=atol, rtol=rtol, equal_nan=True):
            self.passed += 1
            return
        else:
            msg = (f"{what}: values differ (max |got - expected| = {(got_f - exp_f).abs().max().item():.3g})\n"
                   f"    expected {_preview(exp_f)}\n    got      {_preview(got_f)}")
        for wrong, why in mistakes:
            w = torch.as_tensor(wrong).detach().double()
            if w.shape == got_f.shape and torch.allclose(got_f, w, atol=atol, rtol=rtol):
                msg += f"\n    likely mistake: {why}"
                break
        raise CheckFailed(msg)

    def true(self, cond: bool, what: str) -> None:
        if not cond:
            raise CheckFailed(what)
        self.passed += 1

    def __exit__(self, etype, exc, tb):
        if etype is None:
            print(f"{PASS_MARK} {self.task}: passed {self.passed}/{self.passed} tests")
            return False
        if etype is NotImplementedError:
            msg = "not implemented yet: replace `raise NotImplementedError` with your code"
        elif etype is CheckFailed:
            msg = str(exc)
        else:
            msg = f"your code raised {etype.__name__}: {exc}"
        print(f"{FAIL_MARK} {self.task}: {msg}")
        raise CheckFailed(f"{self.task}: {msg}") from None


def _preview(t: torch.Tensor, n: int = 4) -> str:
    flat = t.flatten()[:n].tolist()
    more = ", ..." if t.numel() > n else ""
    return "[" + ", ".join(f"{v:.4f}" for v in flat) + more + f"]  shape {tuple(t.shape)}"
