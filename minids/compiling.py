"""torch.compile around the training loop: compiling the model, warming it up before the clock
starts, the fused AdamW choice, and V3's MTP weight schedule (0.3, then 0.1) without recompiling.
Kept apart from minids.train so the loop reads the same compiled or eager: it calls these few
functions and never branches on how a compiled graph holds its constants.
"""

from __future__ import annotations

import time

import torch

from .config import TrainConfig
from .model import MiniDeepSeek


def use_fused_adamw(tc: TrainConfig) -> bool:
    """AdamW's fused kernel (one pass over all parameters) on a GPU, and on the CPU in compiled
    runs. It agrees with the default (foreach) AdamW to float rounding (~1e-7 relative per step,
    tests/package/test_compile.py) but not bit for bit, so eager CPU runs keep the default and
    reproduce the course's stored numbers exactly. FSDP2's DTensors take the foreach path."""
    return (tc.device.startswith("cuda") or tc.compile) and not tc.fsdp


def compile_model(module: torch.nn.Module) -> torch.nn.Module:
    """torch.compile (inductor) of the model's forward; AOTAutograd compiles its backward with it.
    On CPU inductor writes C++ kernels (needs a C++ compiler) that fuse the elementwise work of
    RMSNorm, RoPE, SwiGLU, the residual adds and the loss; the matmuls stay library calls. The
    model is written so that the training and the eval forward each trace as ONE graph (no graph
    break; MoE layers dispatch through minids::grouped_mm while compiling)."""
    return torch.compile(module)


def set_mtp_weight(model: MiniDeepSeek, lam: float, compiled: bool) -> None:
    """Give the model this step's MTP weight lambda (V3 schedules it: 0.3, then 0.1). A compiled
    graph holds lambda as a constant, so changing it would recompile the training and the eval
    graph: compiled runs keep the traced value and `step_loss` adds the difference instead. Only a
    switch to or from 0 (which adds or drops the MTP block's balance loss) is passed on."""
    if not len(model.mtp):
        return                                         # no MTP module: lambda is never read
    if compiled and (lam > 0) == (model.mtp_loss_weight > 0):
        return
    model.mtp_loss_weight = lam


def step_loss(out, model: MiniDeepSeek, lam: float) -> torch.Tensor:
    """main + lambda * L_MTP + balance for this step's lambda: out.loss itself unless the compiled
    graph traced another lambda (then the same loss up to float rounding)."""
    if out.mtp_loss is None or lam == model.mtp_loss_weight:
        return out.loss
    return out.loss + (lam - model.mtp_loss_weight) * out.mtp_loss


def warm_up_compiled(fwd_model, model: MiniDeepSeek, x: torch.Tensor, y: torch.Tensor, autocast,
                     device: str) -> float:
    """Compile before the clock starts: one training forward + backward and one eval forward on
    (x, y), then leave no trace (gradients dropped, MoE load counts zeroed, RNG restored).
    Returns the seconds it took: the compile time, reported apart from the step time."""
    t = time.perf_counter()
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        with autocast:
            fwd_model(x, y).loss.backward()
        model.zero_grad(set_to_none=True)
        model.eval()
        with torch.no_grad(), autocast:
            fwd_model(x, y)
        model.train()
    for m in model.moe_layers():
        m.load.zero_()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t
