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
import errno
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import distributed
from .checkpoint import CHECKPOINT, NonFiniteError, restore_train_state, save_train_state
from .config import ModelConfig, TrainConfig
from .data import get_batch, load_dataset
from .distributed import World, full_tensor
from .files import atomic_write_bytes, remove_stale_temps
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


# ------------------------------------------------------------------------------ what can stop a run
METRICS = "metrics.jsonl"


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


def prepare_out_dir(tc: TrainConfig, resume: bool, overwrite: bool, world: World,
                    held: contextlib.ExitStack | None = None) -> Path | None:
    """Check out_dir before anything is built, and create it. A folder that already holds a run
    (a checkpoint or metrics) is continued only with `resume`, replaced only with `overwrite`
    (its checkpoint and metrics are deleted now), and otherwise refused: a second run never
    silently replaces the first. With `held`, rank 0 also locks the folder for the run (a lock
    the system drops when the process ends, even killed): a run started meanwhile is refused."""
    if tc.out_dir is None:
        if resume:
            raise FileNotFoundError("resume=True but out_dir=None: there is no checkpoint to resume from")
        return None
    if not str(tc.out_dir).strip():
        raise ValueError("out_dir='' must name a folder (out_dir=None writes nothing)")
    if resume and overwrite:
        raise ValueError("resume=True continues the run in out_dir, overwrite=True replaces it: choose one")
    out = Path(tc.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir={tc.out_dir!r} is a file, not a folder")
    ckpt, metrics = out / CHECKPOINT, out / METRICS
    if resume and not ckpt.exists():
        raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt}")
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if held is not None:
            held.enter_context(lock_folder(out))
    existing = [p.name for p in (ckpt, metrics) if p.exists()]
    if existing and not resume and not overwrite:
        raise ValueError(f"out_dir={tc.out_dir!r} already holds a run ({', '.join(existing)}): continue it with "
                         "--resume (resume=True), replace it with --overwrite (overwrite=True), or pick another "
                         "out_dir")
    if world.is_main:
        if overwrite:
            for p in (ckpt, metrics):
                p.unlink(missing_ok=True)
        remove_stale_temps(ckpt)                       # left by a write that was killed
    return out


LOCK = ".minids.lock"


@contextlib.contextmanager
def lock_folder(folder: Path):
    """An exclusive lock on folder/.minids.lock for as long as the context lasts (POSIX flock;
    where fcntl does not exist, e.g. on Windows, no lock)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    f = open(folder / LOCK, "a")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
            f.close()
            raise ValueError(f"out_dir={str(folder)!r} is in use by another training run (it holds the lock "
                             f"{folder / LOCK}); wait for it to end, or pick another out_dir") from None
        # any other error: a file system without locks, the run goes on unlocked
    try:
        yield
    finally:
        f.close()


def open_metrics(out: Path, start: int, resume: bool):
    """metrics.jsonl for appending. On resume, first cut it back to what the checkpoint at `start`
    had seen (step records before `start`, evals up to `start`) and drop a line cut by a crash,
    so the steps the resumed run repeats are not recorded twice."""
    path = out / METRICS
    if resume and path.exists():
        keep = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("iter"), int) and (
                    rec["iter"] < start or (rec.get("eval") and rec["iter"] <= start)):
                keep.append(line + "\n")
        atomic_write_bytes(path, "".join(keep).encode())
    return open(path, "a", encoding="utf-8")


def json_record(rec: dict) -> str:
    """One line of strict JSON: NaN and inf (which json.dumps would write as NaN / Infinity, and
    strict parsers reject) become null."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return json.dumps(clean(rec), allow_nan=False)


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


def total_grad_norm(model: torch.nn.Module, tc: TrainConfig) -> torch.Tensor:
    """Clip to tc.grad_clip and return the norm before clipping; without clipping, the norm alone."""
    if tc.grad_clip > 0:
        return torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])


def _diverged(tc: TrainConfig, first: int, it: int, lr: float, ckpt: Path | None, saved_at: int | None,
              what: str = "") -> TrainingDiverged:
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


def _out_of_memory(tc: TrainConfig, e: BaseException) -> TrainingOutOfMemory:
    msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    return TrainingOutOfMemory(
        f"out of memory on {tc.device} ({msg}): the model or the micro-batch (batch_size={tc.batch_size} x "
        f"block_size={tc.block_size} tokens) does not fit; lower batch_size (raise grad_accum_steps to keep "
        "the tokens per step) or block_size, or train a smaller model")


_ALLOC_ERRORS = ("can't allocate memory", "out of memory", "Overflow when unpacking long")


def plan_line(model_cfg: ModelConfig, tc: TrainConfig, world_size: int = 1) -> str:
    """What a run will do, in one line (the CLI prints it before training starts)."""
    from .flops import param_count
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
        with contextlib.ExitStack() as held:             # out_dir's lock, released however the run ends
            return _train(model_cfg, tc, resume, dataset, callback, world, overwrite, held)
    except (MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)) as e:
        if isinstance(e, TrainingOutOfMemory):
            raise
        raise _out_of_memory(tc, e) from None
    except RuntimeError as e:
        if any(s in str(e) for s in _ALLOC_ERRORS):
            raise _out_of_memory(tc, e) from None
        raise
    finally:
        distributed.teardown(world)


def _train(model_cfg: ModelConfig, tc: TrainConfig, resume, dataset, callback, world: World,
           overwrite: bool = False, held: contextlib.ExitStack | None = None) -> TrainResult:
    out_dir = prepare_out_dir(tc, resume, overwrite, world, held)   # before anything is built
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
    ckpt = out_dir / CHECKPOINT if out_dir else None
    if resume:
        start = restore_train_state(ckpt, model, optimizer, gen, world)
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
        loss_sum = 0.0
        for micro in range(tc.grad_accum_steps):
            x, y = get_batch(dataset.train, tc.batch_size, tc.block_size, gen, tc.device,
                             world.rank, world.size)                # this rank's slice
            with distributed.grad_sync(train_model, micro == tc.grad_accum_steps - 1):
                with autocast:
                    out = fwd_model(x, y)
                out.loss = step_loss(out, model, lam)
                (out.loss / tc.grad_accum_steps).backward()
            loss_sum = out.loss.detach() + loss_sum                  # stays on the device: no sync
        grad_norm = total_grad_norm(model, tc)
        watch.update(it, loss_sum, grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loads = [m.load.clone() for m in model.moe_layers()]       # this rank's tokens per expert
        model.update_router_biases()                 # all-reduces the loads: equal biases everywhere
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
            rec = _step_record(it, out, lr, tps, grad_norm if tc.grad_clip > 0 else None, loads, world)
            if peak:
                rec["mfu"] = tps * fpt / (peak * world.size)         # per-GPU utilisation
            log(rec)
            bar.set_postfix(loss=f"{rec['main_loss']:.3f}", refresh=False)
            if callback and first_bad is None:
                callback(it, rec)
        if first_bad is not None:
            raise _diverged(tc, first_bad, it, lr, ckpt, saved_at)
        if evaluating:
            ev = {"iter": it + 1, **estimate_loss(fwd_model, dataset, tc, autocast, world)}
            result.evals.append(ev)
            log({"eval": True, **ev})
            bar.set_postfix(loss=f"{out.main_loss.item():.3f}", val=f"{ev['val']:.3f}", refresh=False)
        if saving:
            try:
                save_train_state(ckpt, model, optimizer, gen, it + 1, meta, world)   # rank 0 writes
            except NonFiniteError as e:               # finite loss and gradients, but the weights are not
                raise _diverged(tc, it, it, lr, ckpt, saved_at, what=f"after step {it}: {e}") from None
            saved_at = it + 1
    bar.close()
    result.wall_s = time.perf_counter() - t0
    result.tokens_per_s = max(tc.max_iters - start, 0) * tokens_per_iter / max(result.wall_s, 1e-9)
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
