"""The training loop: AdamW, warmup + cosine, clipping, gradient accumulation, bf16 autocast on
GPU, optional torch.compile, eval, tqdm progress, metrics as JSON lines, safetensors checkpoints
written atomically with exact resume, tokens/s and MFU."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
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
    fused = tc.device.startswith("cuda")
    return torch.optim.AdamW(groups, lr=tc.learning_rate, betas=(tc.beta1, tc.beta2), fused=fused)


# ------------------------------------------------------------------------------ checkpoints
def save_checkpoint(path: str | Path, model: MiniDeepSeek, optimizer=None, meta: dict | None = None,
                    tensors: dict | None = None) -> None:
    """One safetensors file: weights (+ router biases), optimizer state and RNG states as
    tensors; configs and counters as JSON metadata. Written to a temporary file, then renamed
    over the old one, so a crash never leaves a half-written checkpoint in its place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        out.pop("model.lm_head.weight", None)
    info = {"config": model.config.to_dict(), **(meta or {})}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for i, st in sd["state"].items():
            for name, t in st.items():
                out[f"optim.{i}.{name}"] = t.detach().contiguous().cpu() if torch.is_tensor(t) else torch.tensor(t)
        info["optim_groups"] = sd["param_groups"]
    for k, v in (tensors or {}).items():
        out[k] = v.contiguous().cpu()
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
def estimate_loss(model, dataset, tc: TrainConfig, autocast) -> dict:
    """Mean main-head loss (and MTP loss, if any) on eval_iters fixed batches of each split."""
    model.eval()
    out = {}
    for split in ("train", "val"):
        g = torch.Generator().manual_seed(tc.seed + 1)      # the same batches at every eval
        main, mtp = [], []
        for _ in range(tc.eval_iters):
            x, y = get_batch(dataset.split(split), tc.batch_size, tc.block_size, g, tc.device)
            with autocast:
                o = model(x, y)
            main.append(o.main_loss.item())
            if o.mtp_loss is not None:
                mtp.append(o.mtp_loss.item())
        out[split] = sum(main) / len(main)
        if mtp:
            out[f"{split}_mtp"] = sum(mtp) / len(mtp)
    model.train()
    return out


def train(model_cfg: ModelConfig, tc: TrainConfig, resume: bool = False, dataset=None,
          callback=None) -> TrainResult:
    """Train `model_cfg` as `tc` says. With `resume`, continue exactly from out_dir's checkpoint.
    `callback(it, record)` is called after every logged step (for live plots)."""
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    torch.manual_seed(tc.seed)
    dataset = dataset or load_dataset(tc.dataset, tc.tokenizer)
    model_cfg = model_cfg.replace(vocab_size=dataset.tokenizer.vocab_size)
    if tc.block_size > model_cfg.max_position_embeddings:
        raise ValueError(f"block_size={tc.block_size} must be <= max_position_embeddings="
                         f"{model_cfg.max_position_embeddings}")
    model = MiniDeepSeek(model_cfg).to(tc.device)
    optimizer = make_optimizer(model, tc)
    gen = torch.Generator().manual_seed(tc.seed)
    start = 0
    ckpt = Path(tc.out_dir) / CHECKPOINT if tc.out_dir else None
    if resume:
        if ckpt is None or not ckpt.exists():
            raise FileNotFoundError(f"resume=True but there is no checkpoint at {ckpt}")
        start = _restore(ckpt, model, optimizer, gen)
    fwd_model = torch.compile(model) if tc.compile else model
    device_type = "cuda" if tc.device.startswith("cuda") else "cpu"
    use_amp = tc.dtype != "float32" and device_type == "cuda"
    autocast = (torch.autocast(device_type, dtype=getattr(torch, tc.dtype)) if use_amp
                else contextlib.nullcontext())
    tokens_per_iter = tc.batch_size * tc.block_size * tc.grad_accum_steps
    fpt = flops_per_token(model_cfg, tc.block_size)
    peak = _device_peak(tc)
    if tc.out_dir:
        Path(tc.out_dir).mkdir(parents=True, exist_ok=True)
    metrics = open(Path(tc.out_dir) / "metrics.jsonl", "a") if tc.out_dir else None
    result = TrainResult(model, dataset.tokenizer)
    meta = {"train_config": dataclasses.asdict(tc), "tokenizer": dataset.tokenizer.state()}

    def log(rec):
        result.history.append(rec)
        if metrics:
            metrics.write(json.dumps(rec) + "\n")
            metrics.flush()

    bar = tqdm(range(start, tc.max_iters), initial=start, total=tc.max_iters, disable=not tc.progress,
               desc="train", dynamic_ncols=True, mininterval=1.0)   # few redraws: cheap in notebooks
    t0 = t_log = time.perf_counter()
    tokens_since = 0
    model.train()
    for it in bar:
        lr = lr_at(it, tc)
        for g in optimizer.param_groups:
            g["lr"] = lr
        model.mtp_loss_weight = mtp_weight_at(it, tc, model_cfg.mtp_loss_weight)
        for _ in range(tc.grad_accum_steps):
            x, y = get_batch(dataset.train, tc.batch_size, tc.block_size, gen, tc.device)
            with autocast:
                out = fwd_model(x, y)
            (out.loss / tc.grad_accum_steps).backward()
        grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                     if tc.grad_clip > 0 else None)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loads = [m.load.clone() for m in model.moe_layers()]
        model.update_router_biases()
        tokens_since += tokens_per_iter
        last = it == tc.max_iters - 1
        if it % tc.log_interval == 0 or last:
            if device_type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            tps = tokens_since / max(now - t_log, 1e-9)
            t_log, tokens_since = now, 0
            rec = {"iter": it, "loss": out.loss.item(), "main_loss": out.main_loss.item(), "lr": lr,
                   "tokens_per_s": tps}
            if out.mtp_loss is not None:
                rec["mtp_loss"] = out.mtp_loss.item()
            if out.aux_loss is not None:
                rec["aux_loss"] = out.aux_loss.item()
            if grad_norm is not None:
                rec["grad_norm"] = float(grad_norm)
            if loads:
                rec["max_vio"] = [max_violation(ld) for ld in loads]
                rec["expert_load"] = [ld.tolist() for ld in loads]   # tokens per expert, per layer
            if peak:
                rec["mfu"] = tps * fpt / peak
            log(rec)
            bar.set_postfix(loss=f"{rec['main_loss']:.3f}", refresh=False)
            if callback:
                callback(it, rec)
        if (it + 1) % tc.eval_interval == 0 or last:
            ev = {"iter": it + 1, **estimate_loss(model, dataset, tc, autocast)}
            result.evals.append(ev)
            log({"eval": True, **ev})
            bar.set_postfix(loss=f"{out.main_loss.item():.3f}", val=f"{ev['val']:.3f}", refresh=False)
        if ckpt and (last or (tc.checkpoint_interval and (it + 1) % tc.checkpoint_interval == 0)):
            _save(ckpt, model, optimizer, gen, it + 1, meta)
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


def _save(path, model, optimizer, gen, next_iter, meta):
    rng = {"rng.torch": torch.get_rng_state(), "rng.data": gen.get_state()}
    if torch.cuda.is_available():
        rng["rng.cuda"] = torch.cuda.get_rng_state()
    save_checkpoint(path, model, optimizer, {**meta, "iter": next_iter}, rng)


def _restore(path, model, optimizer, gen) -> int:
    tensors, meta = read_checkpoint(path)
    saved = ModelConfig.from_dict(meta["config"])
    if saved.to_dict() != model.config.to_dict():
        diff = {k: (v, model.config.to_dict().get(k)) for k, v in saved.to_dict().items()
                if model.config.to_dict().get(k) != v}
        raise ValueError(f"checkpoint {path} was saved for another config (saved vs now): {diff}")
    load_weights(model, tensors, path)
    sd = {"param_groups": meta["optim_groups"], "state": {}}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            sd["state"].setdefault(int(i), {})[name] = v
    optimizer.load_state_dict(sd)
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.data"])
    if "rng.cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda"])
    return int(meta["iter"])
