"""The training loop: AdamW, warmup + cosine, clipping, gradient accumulation, bf16 autocast on
GPU, optional torch.compile, eval, tqdm progress, metrics as JSON lines, safetensors checkpoints
written atomically with exact resume, tokens/s and MFU.

Many GPUs: launch the same command under torchrun (`torchrun --nproc_per_node=8 -m minids train
...`). torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; `train` then joins the process group (NCCL
on GPUs, gloo on CPUs), wraps the model in DDP (or shards it with FSDP2 when `tc.fsdp`), and
every rank reads its own slice of each global batch: `batch_size` is per rank, so a step sees
batch_size * world_size * grad_accum_steps sequences. Rank 0 alone logs and writes checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .config import ModelConfig, TrainConfig
from .data import get_batch, load_dataset, tokenizer_from_state
from .flops import flops_per_token, peak_flops
from .model import MiniDeepSeek
from .moe import max_violation

CHECKPOINT = "ckpt.safetensors"


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
    fused = tc.device.startswith("cuda") and not tc.fsdp        # FSDP2's DTensors: foreach path
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=fused)


def gpu_train_config(name: str = "gpu", **overrides) -> TrainConfig:
    """The suggested run for the chapter-08 presets on one modern GPU (H100/H200 class): bf16
    autocast, torch.compile, 32 x 1,024 tokens per micro-batch, 4 micro-batches per step
    (131,072 tokens), 14,000 steps = 1.84B tokens: ~1.0 h for "gpu" at 35% MFU and ~0.8 h for
    "gpu-dense" at 45% on an H200 (chapter 08 computes it with minids.flops). Under torchrun the
    step grows with the number of GPUs (batch_size is per GPU): divide max_iters by it."""
    if name not in ("gpu", "gpu-dense"):
        raise ValueError(f"name={name!r} must be 'gpu' or 'gpu-dense'")
    base = dict(batch_size=32, block_size=1024, grad_accum_steps=4, max_iters=14_000,
                learning_rate=6e-4, min_lr=6e-5, warmup_iters=500, weight_decay=0.1, beta1=0.9,
                beta2=0.95, grad_clip=1.0, eval_interval=500, eval_iters=20, log_interval=20,
                device="cuda", dtype="bfloat16", compile=True, tokenizer="bpe:8192",
                out_dir=f"out/{name}", checkpoint_interval=1000)
    if name == "gpu":
        base.update(mtp_loss_weight_final=0.1)            # V3: lambda 0.3, then 0.1 (section 4.2)
    return TrainConfig(**{**base, **overrides})


# ------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | Path, model: MiniDeepSeek, optimizer=None, meta: dict | None = None,
                    tensors: dict | None = None, write: bool = True) -> None:
    """One safetensors file: weights (+ router biases), optimizer state and RNG states as
    tensors; configs and counters as JSON metadata. Written to a temporary file, then renamed
    over the old one, so a crash never leaves a half-written checkpoint in its place.
    Sharded (FSDP2) tensors are gathered whole first: every rank must call this then, and only
    the one with `write=True` writes."""
    path = Path(path)
    out = {f"model.{k}": _full(v).detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        out.pop("model.lm_head.weight", None)
    info = {"config": model.config.to_dict(), **(meta or {})}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for i, st in sd["state"].items():
            for name, t in st.items():
                out[f"optim.{i}.{name}"] = (_full(t).detach().contiguous().cpu() if torch.is_tensor(t)
                                            else torch.tensor(t))
        info["optim_groups"] = sd["param_groups"]
    for k, v in (tensors or {}).items():
        out[k] = v.contiguous().cpu()
    if not write:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(out, tmp, metadata={"minids": json.dumps(info)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata). Plain tensors and JSON only: nothing is unpickled."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["minids"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({e}); "
                         "the last complete checkpoint is the one to use") from None
    return tensors, meta


def load_model(path: str | Path, device: str = "cpu") -> tuple[MiniDeepSeek, object, dict]:
    """(model, tokenizer, metadata) from a checkpoint, the model in eval mode."""
    tensors, meta = read_checkpoint(path)
    model = MiniDeepSeek(ModelConfig.from_dict(meta["config"]))
    load_weights(model, tensors, path)
    tok = tokenizer_from_state(meta["tokenizer"]) if "tokenizer" in meta else None
    return model.to(device).eval(), tok, meta


def load_weights(model: MiniDeepSeek, tensors: dict, path="checkpoint") -> None:
    sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if model.config.tie_word_embeddings:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path} was saved for another config: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}, shape mismatch {wrong[:4]}")
    model.load_state_dict(sd)


# ------------------------------------------------------------------------------ the loop
@dataclass
class TrainResult:
    model: MiniDeepSeek
    tokenizer: object
    history: list[dict] = field(default_factory=list)     # one dict per logged/evaluated step
    evals: list[dict] = field(default_factory=list)       # {"iter", "train", "val", ...}
    wall_s: float = 0.0
    tokens_per_s: float = 0.0

    @property
    def final_val_loss(self) -> float:
        return self.evals[-1]["val"] if self.evals else math.nan


@torch.no_grad()
def estimate_loss(model, dataset, tc: TrainConfig, autocast, d: "Dist | None" = None) -> dict:
    """Mean main-head loss (and MTP loss, if any) on eval_iters fixed batches of each split.
    Under torchrun each rank evaluates its slice of every batch and the means are averaged."""
    d = d or Dist()
    model.eval()
    out = {}
    for split in ("train", "val"):
        g = torch.Generator().manual_seed(tc.seed + 1)      # the same batches at every eval
        main, mtp = [], []
        for _ in range(tc.eval_iters):
            x, y = get_batch(dataset.split(split), tc.batch_size, tc.block_size, g, tc.device,
                             d.rank, d.world_size)
            with autocast:
                o = model(x, y)
            main.append(o.main_loss.float())
            if o.mtp_loss is not None:
                mtp.append(o.mtp_loss.float())
        means = _mean_over_ranks([torch.stack(main).mean()] + ([torch.stack(mtp).mean()] if mtp else []), d)
        out[split] = means[0]
        if mtp:
            out[f"{split}_mtp"] = means[1]
    model.train()
    return out


# ------------------------------------------------------------------------------ distributed
@dataclass
class Dist:
    """Where this process stands in a torchrun job (rank 0 of 1 without one)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False        # this process group was started by `train` (which ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "cpu") -> Dist:
    """Join torchrun's process group when RANK and WORLD_SIZE are set (NCCL for CUDA, gloo for
    CPU); reuse a group the caller started; else a single process. Never launches anything."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), local, owns_group=True)


def _mean_over_ranks(values: list, d: "Dist") -> list[float]:
    """Average scalars (tensors or floats) over all ranks in one all-reduce."""
    t = torch.stack([torch.as_tensor(v, dtype=torch.float32).detach().reshape(()).cpu() for v in values])
    if d.world_size > 1:
        dev = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
        t = t.to(dev)
        dist.all_reduce(t)
        t = t / d.world_size
    return t.tolist()


def _full(t: torch.Tensor) -> torch.Tensor:
    """A whole tensor from a sharded DTensor (FSDP2; a collective), else t itself."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _like(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """A whole tensor `t` laid out as `ref`: sharded like it under FSDP2, else on its device."""
    if hasattr(ref, "device_mesh") and hasattr(ref, "placements"):
        try:
            from torch.distributed.tensor import distribute_tensor
        except ImportError:                                   # older layout of the same API
            from torch.distributed._tensor import distribute_tensor
        return distribute_tensor(t.to(ref.device, ref.dtype), ref.device_mesh, ref.placements)
    return t


def fully_shard_fn():
    """FSDP2's `fully_shard` (public since torch 2.6; under `_composable` before that)."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        from torch.distributed._composable.fsdp import fully_shard
    return fully_shard


def shard_model(model: MiniDeepSeek) -> MiniDeepSeek:
    """FSDP2: every block (main and MTP) becomes one shard unit, then the rest (embedding, head,
    norms, MTP projections) the root unit. Parameters become DTensors split along dim 0 across
    the ranks; each block's full weights exist only while it runs (gathered before, freed after).
    An MTP module's own norms stay in the root unit: `mtp_forward` calls `module.norm` outside
    the module's forward, where a unit of its own would already be sharded again."""
    fully_shard = fully_shard_fn()
    for block in model.layers:
        fully_shard(block)
    for m in model.mtp:
        fully_shard(m.block)
    fully_shard(model)
    return model


def _grad_sync(train_model, sync: bool):
    """Skip the gradient all-reduce on accumulation micro-steps but the last."""
    if isinstance(train_model, torch.nn.parallel.DistributedDataParallel):
        return contextlib.nullcontext() if sync else train_model.no_sync()
    if hasattr(train_model, "set_requires_gradient_sync"):           # FSDP2
        train_model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def train(model_cfg: ModelConfig, tc: TrainConfig, resume: bool = False, dataset=None,
          callback=None) -> TrainResult:
    """Train `model_cfg` as `tc` says. With `resume`, continue exactly from out_dir's checkpoint.
    `callback(it, record)` is called after every logged step (for live plots). Under torchrun,
    every rank runs this and rank r reads slice r of each global batch (see the module doc)."""
    d = setup_distributed(tc.device)
    try:
        return _train(model_cfg, tc, resume, dataset, callback, d)
    finally:
        if d.owns_group:
            dist.destroy_process_group()


def _train(model_cfg: ModelConfig, tc: TrainConfig, resume, dataset, callback, d: Dist) -> TrainResult:
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if tc.device == "cuda" and d.world_size > 1:
        tc = tc.replace(device=f"cuda:{d.local_rank}")              # one GPU per rank
    if tc.fsdp and not (dist.is_available() and dist.is_initialized()):
        raise ValueError("fsdp=True needs several processes: launch with torchrun --nproc_per_node=N")
    torch.manual_seed(tc.seed)                                       # the same init on every rank
    dataset = dataset or load_dataset(tc.dataset, tc.tokenizer)
    model_cfg = model_cfg.replace(vocab_size=dataset.tokenizer.vocab_size)
    if tc.block_size > model_cfg.max_position_embeddings:
        raise ValueError(f"block_size={tc.block_size} must be <= max_position_embeddings="
                         f"{model_cfg.max_position_embeddings}")
    model = MiniDeepSeek(model_cfg).to(tc.device)
    if tc.fsdp:
        shard_model(model)                   # before the optimizer: it must hold the sharded params
    optimizer = make_optimizer(model, tc)
    gen = torch.Generator().manual_seed(tc.seed)       # the global batch stream, equal on all ranks
    if d.world_size > 1:
        torch.manual_seed(tc.seed + d.rank)            # dropout masks differ between ranks
    start = 0
    ckpt = Path(tc.out_dir) / CHECKPOINT if tc.out_dir else None
    if resume:
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt}")
        start = _restore(ckpt, model, optimizer, gen, d)
    train_model = model
    if d.world_size > 1 and not tc.fsdp:
        # router biases stay equal on all ranks by MoE.update_bias's all-reduce: no buffer broadcast
        DDP = torch.nn.parallel.DistributedDataParallel
        no_buffer_sync = ({"forward_sync_buffers": False}            # torch >= 2.13's name
                          if "forward_sync_buffers" in inspect.signature(DDP).parameters
                          else {"broadcast_buffers": False})
        train_model = DDP(model, device_ids=[d.local_rank] if tc.device.startswith("cuda") else None,
                          **no_buffer_sync)
    fwd_model = torch.compile(train_model) if tc.compile else train_model   # used for train and eval
    device_type = "cuda" if tc.device.startswith("cuda") else "cpu"
    use_amp = tc.dtype != "float32" and device_type == "cuda"
    autocast = (torch.autocast(device_type, dtype=getattr(torch, tc.dtype)) if use_amp
                else contextlib.nullcontext())
    tokens_per_iter = tc.batch_size * tc.block_size * tc.grad_accum_steps * d.world_size
    fpt = flops_per_token(model_cfg, tc.block_size)
    peak = _device_peak(tc)
    if tc.out_dir and d.is_main:
        Path(tc.out_dir).mkdir(parents=True, exist_ok=True)
    metrics = open(Path(tc.out_dir) / "metrics.jsonl", "a") if tc.out_dir and d.is_main else None
    result = TrainResult(model, dataset.tokenizer)
    meta = {"train_config": dataclasses.asdict(tc), "tokenizer": dataset.tokenizer.state()}

    def log(rec):
        result.history.append(rec)
        if metrics:
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()

    bar = tqdm(range(start, tc.max_iters), initial=start, total=tc.max_iters,
               disable=not (tc.progress and d.is_main),
               desc="train", dynamic_ncols=True, mininterval=1.0)   # few redraws: cheap in notebooks
    t0 = t_log = time.perf_counter()
    tokens_since = 0
    model.train()
    for it in bar:
        lr = lr_at(it, tc)
        for g in optimizer.param_groups:
            g["lr"] = lr
        model.mtp_loss_weight = mtp_weight_at(it, tc, model_cfg.mtp_loss_weight)
        for micro in range(tc.grad_accum_steps):
            x, y = get_batch(dataset.train, tc.batch_size, tc.block_size, gen, tc.device,
                             d.rank, d.world_size)                  # this rank's slice
            with _grad_sync(train_model, micro == tc.grad_accum_steps - 1):
                with autocast:
                    out = fwd_model(x, y)
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
            if device_type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            tps = tokens_since / max(now - t_log, 1e-9)
            t_log, tokens_since = now, 0
            names = [k for k in ("loss", "main_loss", "mtp_loss", "aux_loss") if getattr(out, k) is not None]
            vals = _mean_over_ranks([getattr(out, k) for k in names], d)   # the global batch's means
            rec = {"iter": it, **dict(zip(names[:2], vals[:2], strict=True)), "lr": lr, "tokens_per_s": tps}
            rec.update(zip(names[2:], vals[2:], strict=True))
            if grad_norm is not None:
                rec["grad_norm"] = float(grad_norm)
            if loads:
                rec["max_vio"] = [max_violation(ld) for ld in loads]
                rec["expert_load"] = [ld.tolist() for ld in loads]   # tokens per expert, per layer
            if peak:
                rec["mfu"] = tps * fpt / (peak * d.world_size)        # per-GPU utilisation
            log(rec)
            bar.set_postfix(loss=f"{rec['main_loss']:.3f}", refresh=False)
            if callback:
                callback(it, rec)
        if (it + 1) % tc.eval_interval == 0 or last:
            ev = {"iter": it + 1, **estimate_loss(fwd_model, dataset, tc, autocast, d)}
            result.evals.append(ev)
            log({"eval": True, **ev})
            bar.set_postfix(loss=f"{out.main_loss.item():.3f}", val=f"{ev['val']:.3f}", refresh=False)
        if ckpt and (last or (tc.checkpoint_interval and (it + 1) % tc.checkpoint_interval == 0)):
            _save(ckpt, model, optimizer, gen, it + 1, meta, d)      # every rank: gathers; rank 0 writes
    bar.close()
    result.wall_s = time.perf_counter() - t0
    done = tc.max_iters - start
    result.tokens_per_s = done * tokens_per_iter / max(result.wall_s, 1e-9)
    if metrics:
        metrics.close()
    return result


def _device_peak(tc: TrainConfig) -> float | None:
    if not tc.device.startswith("cuda"):
        return None
    try:
        return peak_flops(torch.cuda.get_device_name(), tc.dtype)
    except ValueError:
        return None


def _save(path, model, optimizer, gen, next_iter, meta, d: Dist | None = None):
    d = d or Dist()
    rng = {"rng.torch": torch.get_rng_state(), "rng.data": gen.get_state()}
    if torch.cuda.is_available():
        rng["rng.cuda"] = torch.cuda.get_rng_state()
    if d.world_size > 1:                    # each rank's own dropout stream, for an exact resume
        states = [None] * d.world_size
        dist.all_gather_object(states, {k: v for k, v in rng.items() if k != "rng.data"})
        for r, st in enumerate(states):
            rng.update({f"{k}.rank{r}": v for k, v in st.items()})
    save_checkpoint(path, model, optimizer, {**meta, "iter": next_iter, "world_size": d.world_size},
                    rng, write=d.is_main)


def _restore(path, model, optimizer, gen, d: Dist | None = None) -> int:
    d = d or Dist()
    tensors, meta = read_checkpoint(path)
    saved = ModelConfig.from_dict(meta["config"])
    if saved.to_dict() != model.config.to_dict():
        diff = {k: (v, model.config.to_dict().get(k)) for k, v in saved.to_dict().items()
                if model.config.to_dict().get(k) != v}
        raise ValueError(f"checkpoint {path} was saved for another config (saved vs now): {diff}")
    own = model.state_dict()
    tensors = {k: (_like(v, own[k[6:]]) if k.startswith("model.") and k[6:] in own else v)
               for k, v in tensors.items()}                         # FSDP2: back into shards
    load_weights(model, tensors, path)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sd = {"param_groups": meta["optim_groups"], "state": {}}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            ref = params[int(i)] if int(i) < len(params) else v
            sd["state"].setdefault(int(i), {})[name] = _like(v, ref) if v.shape == ref.shape else v
    optimizer.load_state_dict(sd)
    suffix = f".rank{d.rank}" if meta.get("world_size", 1) == d.world_size > 1 else ""
    torch.set_rng_state(tensors["rng.torch" + suffix])
    gen.set_state(tensors["rng.data"])
    if "rng.cuda" + suffix in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda" + suffix])
    return int(meta["iter"])
