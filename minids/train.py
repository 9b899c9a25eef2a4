"""The training loop: AdamW, warmup + cosine, clipping, gradient accumulation, bf16 autocast on
GPU, eval, tqdm progress, metrics as JSON lines, tokens/s and MFU; checkpoints (minids.checkpoint)
with exact resume. Around it, each in its own module: the optimizer and schedules (minids.optim),
the run folder and its metrics (minids.rundir), what can stop a run (minids.guards) and
torch.compile (minids.compiling).

Many GPUs: launch the same command under torchrun (`torchrun --nproc_per_node=8 -m minids train
...`, see minids.distributed). Every rank runs `train`, wraps the model in DDP (or shards it with
FSDP2 when `tc.fsdp`) and reads its own slice of each global batch: `batch_size` is per rank, so a
step sees batch_size * world_size * grad_accum_steps sequences. Rank 0 alone logs and writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import CHECKPOINT, NonFiniteError, restore_train_state, save_train_state
from .compiling import compile_model, set_mtp_weight, step_loss, use_fused_adamw, warm_up_compiled
from .config import ModelConfig, TrainConfig
from .data import get_batch, load_dataset
from .distributed import World
from .flops import flops_per_token, param_count, peak_flops
from .guards import DivergenceWatch, TrainingDiverged, TrainingOutOfMemory, check_device, diverged_error, explain_oom
from .model import MiniDeepSeek
from .optim import apply_settings, lr_at, make_optimizer, mtp_weight_at, total_grad_norm
from .rundir import LOCK, METRICS, json_record, lock_folder, open_metrics, prepare_out_dir, step_record

__all__ = ["TrainResult", "estimate_loss", "plan_line", "train",
           # re-exported: the CLI, notebooks and tests import these from minids.train
           "apply_settings", "lr_at", "make_optimizer", "mtp_weight_at", "total_grad_norm", "use_fused_adamw",
           "compile_model", "set_mtp_weight", "step_loss", "warm_up_compiled", "check_device", "DivergenceWatch",
           "TrainingDiverged", "TrainingOutOfMemory", "LOCK", "METRICS", "lock_folder", "open_metrics",
           "prepare_out_dir", "json_record"]


def plan_line(model_cfg: ModelConfig, tc: TrainConfig, world_size: int = 1) -> str:
    """What a run will do, in one line (the CLI prints it before training starts)."""
    tokens_per_step = tc.batch_size * tc.block_size * tc.grad_accum_steps * world_size
    total = tokens_per_step * tc.max_iters
    n = param_count(model_cfg).total
    where = f"into {tc.out_dir}/" if tc.out_dir else "writing nothing"
    big = f" ({total:.3g})" if total >= 1e6 else ""
    return (f"plan: {tc.max_iters:,} steps x {tokens_per_step:,} tokens = {total:,} tokens{big}, "
            f"~{n / 1e6:.3g}M parameters (vocabulary from the data), an eval of {tc.eval_iters:,} batches per split "
            f"every {tc.eval_interval:,} steps, on {tc.device}, {where}")


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
    start_iter: int = 0                # the step it started from (a resumed run's checkpoint step)

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
          callback=None, overwrite: bool = False) -> TrainResult:
    """Train `model_cfg` as `tc` says. With `resume`, continue exactly from out_dir's checkpoint;
    an out_dir that already holds a run is refused unless `resume` or `overwrite` (replace it).
    `callback(it, record)` is called after every logged step (for live plots). Under torchrun,
    every rank runs this and rank r reads slice r of each global batch (see the module doc).
    Raises TrainingDiverged (NaN/inf loss or gradients; no checkpoint written after them) and
    TrainingOutOfMemory (with what to change)."""
    check_device(tc.device)
    world = distributed.setup(tc.device)
    try:
        with explain_oom(tc), contextlib.ExitStack() as held:   # held: out_dir's lock, released however it ends
            return _train(model_cfg, tc, resume, dataset, callback, world, overwrite, held)
    finally:
        distributed.teardown(world)


def _train(model_cfg: ModelConfig, tc: TrainConfig, resume, dataset, callback, world: World,
           overwrite: bool = False, held: contextlib.ExitStack | None = None) -> TrainResult:
    out_dir = prepare_out_dir(tc, resume, overwrite, world, held)   # before anything is built
    model_cfg, tc, dataset = _settle(model_cfg, tc, dataset, world)
    model = MiniDeepSeek(model_cfg).to(tc.device)
    if tc.fsdp:
        distributed.shard_model(model)       # before the optimizer: it must hold the sharded params
    optimizer = make_optimizer(model, tc)
    gen = torch.Generator().manual_seed(tc.seed)       # the global batch stream, equal on all ranks
    if world.size > 1:
        torch.manual_seed(tc.seed + world.rank)        # dropout masks differ between ranks
    ckpt = out_dir / CHECKPOINT if out_dir else None
    start = restore_train_state(ckpt, model, optimizer, gen, world) if resume else 0
    apply_settings(optimizer, tc)                       # a resumed run follows tc, not the checkpoint
    saved_at = start if resume else None                # the step of the last good checkpoint
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
    metrics = open_metrics(out_dir, start, resume) if out_dir and world.is_main else None
    result = TrainResult(model, dataset.tokenizer, compile_s=compile_s, start_iter=start)
    meta = {"train_config": dataclasses.asdict(tc), "tokenizer": dataset.tokenizer.state()}

    def log(rec):
        result.history.append(rec)
        if metrics:
            metrics.write(json_record(rec) + "\n")
            metrics.flush()

    def next_batch():                                   # this rank's slice of the next global batch
        return get_batch(dataset.train, tc.batch_size, tc.block_size, gen, tc.device, world.rank, world.size)

    bar = tqdm(range(start, tc.max_iters), initial=start, total=tc.max_iters,
               disable=not (tc.progress and world.is_main),
               desc="train", dynamic_ncols=True, mininterval=1.0)   # few redraws: cheap in notebooks
    t0 = t_log = time.perf_counter()
    tokens_since = 0
    watch = DivergenceWatch(tc.device)
    model.train()
    for it in bar:
        lr = lr_at(it, tc)
        for g in optimizer.param_groups:
            g["lr"] = lr
        lam = mtp_weight_at(it, tc, model_cfg.mtp_loss_weight)
        set_mtp_weight(model, lam, tc.compile)
        out, loss_sum, grad_norm, loads = _step(model, train_model, fwd_model, optimizer, next_batch, lam, tc,
                                                autocast)
        watch.update(it, loss_sum, grad_norm)
        tokens_since += tokens_per_iter
        last = it == tc.max_iters - 1
        logging = it % tc.log_interval == 0 or last
        evaluating = (it + 1) % tc.eval_interval == 0 or last
        saving = ckpt is not None and (last or (tc.checkpoint_interval and (it + 1) % tc.checkpoint_interval == 0))
        first_bad = watch.check(world) if logging or evaluating or saving else None   # synced there anyway
        if logging:
            if on_gpu:
                torch.cuda.synchronize()
            now = time.perf_counter()
            tps = tokens_since / max(now - t_log, 1e-9)
            t_log, tokens_since = now, 0
            rec = step_record(it, out, lr, tps, grad_norm if tc.grad_clip > 0 else None, loads, world)
            if peak:
                rec["mfu"] = tps * fpt / (peak * world.size)         # per-GPU utilisation
            log(rec)
            bar.set_postfix(loss=f"{rec['main_loss']:.3f}", refresh=False)
            if callback and first_bad is None:
                callback(it, rec)
        if first_bad is not None:
            raise diverged_error(tc, first_bad, it, lr, ckpt, saved_at)
        if evaluating:
            ev = {"iter": it + 1, **estimate_loss(fwd_model, dataset, tc, autocast, world)}
            result.evals.append(ev)
            log({"eval": True, **ev})
            bar.set_postfix(loss=f"{out.main_loss.item():.3f}", val=f"{ev['val']:.3f}", refresh=False)
        if saving:
            try:
                save_train_state(ckpt, model, optimizer, gen, it + 1, meta, world)   # rank 0 writes
            except NonFiniteError as e:               # finite loss and gradients, but the weights are not
                raise diverged_error(tc, it, it, lr, ckpt, saved_at, what=f"after step {it}: {e}") from None
            saved_at = it + 1
    bar.close()
    result.wall_s = time.perf_counter() - t0
    result.tokens_per_s = max(tc.max_iters - start, 0) * tokens_per_iter / max(result.wall_s, 1e-9)
    if metrics:
        metrics.close()
    return result


def _settle(model_cfg: ModelConfig, tc: TrainConfig, dataset, world: World):
    """(model_cfg, tc, dataset) as this rank trains them: its threads and GPU, the same init seed
    on every rank, the data loaded and the vocabulary taken from its tokenizer."""
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
    return model_cfg, tc, dataset


def _step(model, train_model, fwd_model, optimizer, next_batch, lam: float, tc: TrainConfig, autocast):
    """One optimizer step: grad_accum_steps micro-batches forward and backward (the gradients
    all-reduced on the last one), clipping, AdamW, the router biases' update (V3's aux-loss-free
    balancing, sec. 2.1.2). Returns the last micro-batch's output, the summed loss and the
    gradient norm (both left on the device: no sync), and this rank's tokens per expert."""
    loss_sum = 0.0
    for micro in range(tc.grad_accum_steps):
        x, y = next_batch()
        with distributed.grad_sync(train_model, micro == tc.grad_accum_steps - 1):
            with autocast:
                out = fwd_model(x, y)
            out.loss = step_loss(out, model, lam)
            (out.loss / tc.grad_accum_steps).backward()
        loss_sum = out.loss.detach() + loss_sum
    grad_norm = total_grad_norm(model, tc)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loads = [m.load.clone() for m in model.moe_layers()]
    model.update_router_biases()                 # all-reduces the loads: equal biases everywhere
    return out, loss_sum, grad_norm, loads


def _device_peak(tc: TrainConfig) -> float | None:
    if not tc.device.startswith("cuda"):
        return None
    try:
        return peak_flops(torch.cuda.get_device_name(), tc.dtype)
    except ValueError:
        return None
