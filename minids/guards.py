"""What can stop a training run, said in words a user can act on: a device this torch cannot use,
a loss or gradients gone NaN/inf (noticed without a host sync per step), an allocation that
failed. Kept apart from minids.train so the loop shows the watch and the two exceptions, not the
wording of their messages.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from . import distributed
from .config import TrainConfig
from .distributed import World, full_tensor


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN/inf: the run stopped and wrote no checkpoint after it.
    `step`: the first bad step; `checkpoint_step`: the step of the last good checkpoint (or None)."""

    def __init__(self, message: str, step: int, checkpoint_step: int | None):
        super().__init__(message)
        self.step, self.checkpoint_step = step, checkpoint_step


class TrainingOutOfMemory(MemoryError):
    """An allocation failed (the model or the batch does not fit); the message says what to change."""


def check_device(device: str) -> None:
    """`device` names a device this torch can use: "cpu", "cuda", "cuda:N" (a visible GPU) or "mps"."""
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device={device!r} must be 'cpu', 'cuda' or 'cuda:N'") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is built for the CPU only" if torch.version.cuda is None
                   else "torch sees no CUDA GPU here")
            raise ValueError(f"device={device!r}, but {why}; use device='cpu'")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}, but only {torch.cuda.device_count()} GPU(s) are visible")
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={device!r}, but MPS is not available here; use device='cpu'")
    elif d.type != "cpu":
        raise ValueError(f"device={device!r} must be 'cpu', 'cuda' or 'cuda:N'")


class DivergenceWatch:
    """Notices a non-finite loss or gradient without a host sync per step. Each step adds a few
    device ops: isfinite of the step's summed loss and of the gradient norm (which every NaN/inf
    gradient reaches), folded into `first_bad`, the first bad step (-1: none). The host reads that
    one number only at steps where it waits for the device anyway: logged, evaluated and
    checkpointed steps. So a run that diverges stops at the next such step, before any checkpoint."""

    def __init__(self, device):
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def update(self, it: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        ok = torch.isfinite(loss.detach().float()) & torch.isfinite(full_tensor(grad_norm).detach().float())
        self.first_bad = torch.where(~ok & (self.first_bad < 0), it, self.first_bad)

    def check(self, world: World) -> int | None:
        """The first bad step (on any rank: every rank gets the same answer), or None."""
        bad = [f for f in distributed.gather_objects(int(self.first_bad), world) if f >= 0]
        return min(bad) if bad else None


def diverged_error(tc: TrainConfig, first: int, it: int, lr: float, ckpt: Path | None, saved_at: int | None,
                   what: str = "") -> TrainingDiverged:
    """The error a diverged run stops with: where it went bad, what was kept, what to change."""
    if ckpt is None:
        kept = "nothing is written (out_dir=None)"
    elif saved_at is None:
        kept = "this run wrote no checkpoint"
    else:
        kept = f"the last good checkpoint, {ckpt}, is from step {saved_at} and was left as it is"
    return TrainingDiverged(
        f"training diverged: {what or f'the loss or the gradients became NaN/inf at step {first} (seen at step {it})'}"
        f"; stopped, {kept}. Lower the learning rate (now {lr:.3g}), lengthen the warmup or clip the gradients "
        "(grad_clip), then resume.", first, saved_at)


_ALLOC_ERRORS = ("can't allocate memory", "out of memory", "Overflow when unpacking long")


@contextlib.contextmanager
def explain_oom(tc: TrainConfig):
    """An allocation that fails inside (torch's OutOfMemoryError, a MemoryError, or a RuntimeError
    that says so) leaves as TrainingOutOfMemory, naming the sizes to lower."""
    try:
        yield
    except TrainingOutOfMemory:
        raise
    except (MemoryError, torch.OutOfMemoryError) as e:
        raise _out_of_memory(tc, e) from None
    except RuntimeError as e:
        if any(s in str(e) for s in _ALLOC_ERRORS):
            raise _out_of_memory(tc, e) from None
        raise


def _out_of_memory(tc: TrainConfig, e: BaseException) -> TrainingOutOfMemory:
    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return TrainingOutOfMemory(
        f"out of memory on {tc.device} ({msg}): the model or the micro-batch (batch_size={tc.batch_size} x "
        f"block_size={tc.block_size} tokens) does not fit; lower batch_size (raise grad_accum_steps to keep "
        "the tokens per step) or block_size, or train a smaller model")
