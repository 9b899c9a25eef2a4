"""The training loop: AdamW, warmup + cosine, clipping, gradient accumulation, bf16 autocast on
GPU, optional torch.compile, eval, tqdm progress, metrics as JSON lines, tokens/s and MFU;
checkpoints (minids.checkpoint) with exact resume.

Many GPUs: launch the same command under torchrun (`torchrun --nproc_per_node=8 -m minids train
...`, see minids.distributed). Every rank runs `train`, wraps the model in DDP (or shards it with
FSDP2 when `tc.fsdp`) and reads its own slice of each global batch: `batch_size` is per rank, so a
step sees batch_size * world_size * grad_accum_steps sequences. Rank 0 alone logs and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import CHECKPOINT, restore_train_state, save_train_state
from .config import ModelConfig, TrainConfig
from .data import get_batch, load_dataset
from .distributed import World
from .flops import flops_per_token, peak_flops
from .model import MiniDeepSeek
from .moe import max_violation


def lr_at(it: int, tc: TrainConfig) -> float:
    """Linear warmup to learning_rate, cosine decay to min_lr at lr_decay_iters, then flat."""
    decay_iters = tc.lr_decay_iters or tc.max_iters
    if it < tc.warmup_iters:
        return tc.learning_rate * (it + 1) / (tc.warmup_iters + 1)
    if it >= decay_iters:
        return tc.min_lr
    ratio = (it - tc.warmup_iters) / max(decay_iters - tc.warmup_iters, 1)
    return tc.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (tc.learning_rate - tc.min_lr)


def mtp_weight_at(it: int, tc: TrainConfig, base: float) -> float:
    """V3's lambda schedule: `base` (0.3) first, `mtp_loss_weight_final` (0.1) after the switch."""
    if tc.mtp_loss_weight_final is not None and it >= tc.mtp_loss_switch * tc.max_iters:
        return tc.mtp_loss_weight_final
    return base


def make_optimizer(model: torch.nn.Module, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases or embeddings' 1-D params)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=use_fused_adamw(tc))


def use_fused_adamw(tc: TrainConfig) -> bool:
    """AdamW's fused kernel (one pass over all parameters) on a GPU, and on the CPU in compiled
    runs. It agrees with the default (foreach) AdamW to float rounding (~1e-7 relative per step,
    tests/package/test_compile.py) but not bit for bit, so eager CPU runs keep the default and
    reproduce the course's stored numbers exactly. FSDP2's DTensors take the foreach path."""
    return (tc.device.startswith("cuda") or tc.compile) and not tc.fsdp


# ------------------------------------------------------------------------------ torch.compile
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


# ------------------------------------------------------------------------------ the loop
@dataclass
class TrainResult:
    model: MiniDeepSeek
    tokenizer: object
    history: list[dict] = field(default_factory=list)     # one dict per logged/evaluated step
    evals: list[dict] = field(default_factory=list)       # {"iter", "train", "val", ...}
    wall_s: float = 0.0                # the training loop (evals included), compile_s not included
    tokens_per_s: float = 0.0          # trained tokens / wall_s
    compile_s: float = 0.0             # torch.compile's warm-up (tc.compile), before the loop

    @property
    def final_val_loss(self) -> float:
        return self.evals[-1]["val"] if self.evals else math.nan


@torch.no_grad()
def estimate_loss(model, dataset, tc: TrainConfig, autocast, world: World | None = None) -> dict:
    """Mean main-head loss (and MTP loss, if any) on eval_iters fixed batches of each split.
    Under torchrun each rank evaluates its slice of every batch and the means are averaged."""
    world = world or World()
    model.eval()
    out = {}
    for split in ("train", "val"):
        g = torch.Generator().manual_seed(tc.seed + 1)      # the same batches at every eval
        main, mtp = [], []
        for _ in range(tc.eval_iters):
            x, y = get_batch(dataset.split(split), tc.batch_size, tc.block_size, g, tc.device,
                             world.rank, world.size)
            with autocast:
                o = model(x, y)
            main.append(o.main_loss.float())
            if o.mtp_loss is not None:
                mtp.append(o.mtp_loss.float())
        means = distributed.mean_over_ranks([torch.stack(main).mean()] + ([torch.stack(mtp).mean()] if mtp else []),
                                            world)
        out[split] = means[0]
        if mtp:
            out[f"{split}_mtp"] = means[1]
    model.train()
    return out


def train(model_cfg: ModelConfig, tc: TrainConfig, resume: bool = False, dataset=None,
          callback=None) -> TrainResult:
    """Train `model_cfg` as `tc` says. With `resume`, continue exactly from out_dir's checkpoint.
    `callback(it, record)` is called after every logged step (for live plots). Under torchrun,
    every rank runs this and rank r reads slice r of each global batch (see the module doc)."""
    world = distributed.setup(tc.device)
    try:
        return _train(model_cfg, tc, resume, dataset, callback, world)
    finally:
        distributed.teardown(world)


def _train(model_cfg: ModelConfig, tc: TrainConfig, resume, dataset, callback, world: World) -> TrainResult:
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if tc.device == "cuda" and world.size > 1:
        tc = tc.replace(device=f"cuda:{world.local_rank}")          # one GPU per rank
    if tc.fsdp and world.size == 1:
        raise ValueError("fsdp=True needs several processes: launch with torchrun --nproc_per_node=N")
    torch.manual_seed(tc.seed)                                       # the same init on every rank
    dataset = dataset or load_dataset(tc.dataset, tc.tokenizer)
    model_cfg = model_cfg.replace(vocab_size=dataset.tokenizer.vocab_size)
    if tc.block_size > model_cfg.max_position_embeddings:
        raise ValueError(f"block_size={tc.block_size} must be <= max_position_embeddings="
                         f"{model_cfg.max_position_embeddings}")
    model = MiniDeepSeek(model_cfg).to(tc.device)
    if tc.fsdp:
        distributed.shard_model(model)       # before the optimizer: it must hold the sharded params
    optimizer = make_optimizer(model, tc)
    gen = torch.Generator().manual_seed(tc.seed)       # the global batch stream, equal on all ranks
    if world.size > 1:
        torch.manual_seed(tc.seed + world.rank)        # dropout masks differ between ranks
    start = 0
    ckpt = Path(tc.out_dir) / CHECKPOINT if tc.out_dir else None
    if resume:
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt}")
        start = restore_train_state(ckpt, model, optimizer, gen, world)
    train_model = distributed.wrap_ddp(model, tc.device, world) if world.size > 1 and not tc.fsdp else model
    fwd_model = compile_model(train_model) if tc.compile else train_model   # used for train and eval
    on_gpu = tc.device.startswith("cuda")
    autocast = (torch.autocast("cuda", dtype=getattr(torch, tc.dtype)) if on_gpu and tc.dtype != "float32"
                else contextlib.nullcontext())
    compile_s = 0.0
    if tc.compile and start < tc.max_iters:
        set_mtp_weight(model, mtp_weight_at(start, tc, model_cfg.mtp_loss_weight), compiled=False)
        xw, yw = get_batch(dataset.val, tc.batch_size, tc.block_size, torch.Generator().manual_seed(tc.seed + 1),
                           tc.device, world.rank, world.size)
        compile_s = warm_up_compiled(fwd_model, model, xw, yw, autocast, tc.device)
    tokens_per_iter = tc.batch_size * tc.block_size * tc.grad_accum_steps * world.size
    fpt, peak = flops_per_token(model_cfg, tc.block_size), _device_peak(tc)
    if tc.out_dir and world.is_main:
        Path(tc.out_dir).mkdir(parents=True, exist_ok=True)
    metrics = open(Path(tc.out_dir) / "metrics.jsonl", "a") if tc.out_dir and world.is_main else None
    result = TrainResult(model, dataset.tokenizer, compile_s=compile_s)
    meta = {"train_config": dataclasses.asdict(tc), "tokenizer": dataset.tokenizer.state()}

    def log(rec):
        result.history.append(rec)
        if metrics:
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()

    bar = tqdm(range(start, tc.max_iters), initial=start, total=tc.max_iters,
               disable=not (tc.progress and world.is_main),
               desc="train", dynamic_ncols=True, mininterval=1.0)   # few redraws: cheap in notebooks
    t0 = t_log = time.perf_counter()
    tokens_since = 0
    model.train()
    for it in bar:
        lr = lr_at(it, tc)
        for g in optimizer.param_groups:
            g["lr"] = lr
        lam = mtp_weight_at(it, tc, model_cfg.mtp_loss_weight)
        set_mtp_weight(model, lam, tc.compile)
        for micro in range(tc.grad_accum_steps):
            x, y = get_batch(dataset.train, tc.batch_size, tc.block_size, gen, tc.device,
                             world.rank, world.size)                # this rank's slice
            with distributed.grad_sync(train_model, micro == tc.grad_accum_steps - 1):
                with autocast:
                    out = fwd_model(x, y)
                out.loss = step_loss(out, model, lam)
                (out.loss / tc.grad_accum_steps).backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                     if tc.grad_clip > 0 else None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loads = [m.load.clone() for m in model.moe_layers()]       # this rank's tokens per expert
        model.update_router_biases()                 # all-reduces the loads: equal biases everywhere
        tokens_since += tokens_per_iter
        last = it == tc.max_iters - 1
        if it % tc.log_interval == 0 or last:
            if on_gpu:
                torch.cuda.synchronize()
            now = time.perf_counter()
            tps = tokens_since / max(now - t_log, 1e-9)
            t_log, tokens_since = now, 0
            rec = _step_record(it, out, lr, tps, grad_norm, loads, world)
            if peak:
                rec["mfu"] = tps * fpt / (peak * world.size)         # per-GPU utilisation
            log(rec)
            bar.set_postfix(loss=f"{rec['main_loss']:.3f}", refresh=False)
            if callback:
                callback(it, rec)
        if (it + 1) % tc.eval_interval == 0 or last:
            ev = {"iter": it + 1, **estimate_loss(fwd_model, dataset, tc, autocast, world)}
            result.evals.append(ev)
            log({"eval": True, **ev})
            bar.set_postfix(loss=f"{out.main_loss.item():.3f}", val=f"{ev['val']:.3f}", refresh=False)
        if ckpt and (last or (tc.checkpoint_interval and (it + 1) % tc.checkpoint_interval == 0)):
            save_train_state(ckpt, model, optimizer, gen, it + 1, meta, world)   # rank 0 writes
    bar.close()
    result.wall_s = time.perf_counter() - t0
    result.tokens_per_s = (tc.max_iters - start) * tokens_per_iter / max(result.wall_s, 1e-9)
    if metrics:
        metrics.close()
    return result


def _step_record(it, out, lr, tps, grad_norm, loads, world: World) -> dict:
    """What a logged step reports: the losses (means over the ranks' slices: the global batch's),
    lr, tokens/s, the gradient norm, and per MoE layer MaxVio and this rank's tokens per expert."""
    names = [k for k in ("loss", "main_loss", "mtp_loss", "aux_loss") if getattr(out, k) is not None]
    vals = distributed.mean_over_ranks([getattr(out, k) for k in names], world)
    rec = {"iter": it, **dict(zip(names[:2], vals[:2], strict=True)), "lr": lr, "tokens_per_s": tps}
    rec.update(zip(names[2:], vals[2:], strict=True))
    if grad_norm is not None:
        rec["grad_norm"] = float(grad_norm)
    if loads:
        rec["max_vio"] = [max_violation(ld) for ld in loads]
        rec["expert_load"] = [ld.tolist() for ld in loads]
    return rec


def _device_peak(tc: TrainConfig) -> float | None:
    if not tc.device.startswith("cuda"):
        return None
    try:
        return peak_flops(torch.cuda.get_device_name(), tc.dtype)
    except ValueError:
        return None
