"""Checkpoints: one safetensors file (plain tensors and JSON, nothing unpickled), written atomically.

Tensors: `model.<name>` the weights (router biases included), `optim.<i>.<name>` the optimizer
state, `rng.*` the random states (of every rank under torchrun). Metadata "minids": the model
config, a CRC-32 of every tensor, and whatever the trainer adds (its config, the tokenizer, the
next iteration). With those, `restore_train_state` resumes a run exactly where
`save_train_state` left it.

Everything read is checked first, by minids.checkpoint_checks (what is refused, and what the
CRC-32s do and do not prove, is in its docstring); its names are importable from here too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .checkpoint_checks import (
    CheckpointError,
    NonFiniteError,
    check_meta,
    check_model_shapes,
    check_tensors,
    corrupt_error,
    describe_nonfinite,
    field_error,
    model_config_from,
    nonfinite_tensors,
    read_header,
    tensor_crc32,
    tokenizer_from_metadata,
)
from .config import ModelConfig
from .distributed import World, full_tensor, gather_objects, shard_like
from .files import AtomicFile
from .model import MiniDeepSeek

__all__ = ["CHECKPOINT", "load_model", "load_weights", "read_checkpoint", "restore_train_state", "save_checkpoint",
           "save_train_state",
           # re-exported from minids.checkpoint_checks
           "CheckpointError", "NonFiniteError", "check_meta", "check_model_shapes", "check_tensors",
           "model_config_from", "nonfinite_tensors", "read_header", "tensor_crc32", "tokenizer_from_metadata"]

CHECKPOINT = "ckpt.safetensors"


# ------------------------------------------------------------------------------ writing
def save_checkpoint(path: str | Path, model: MiniDeepSeek, optimizer=None, meta: dict | None = None,
                    tensors: dict | None = None, write: bool = True) -> None:
    """Weights, optimizer state, extra `tensors` and `meta` in one file at `path`. Sharded (FSDP2)
    tensors are gathered whole first: every rank must call this then, and only the one with
    `write=True` writes. Raises NonFiniteError, and writes nothing, if a tensor holds NaN or inf
    (every rank sees the same whole tensors, so every rank raises alike)."""
    out = {f"model.{k}": full_tensor(v).detach() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        out.pop("model.lm_head.weight", None)
    info = {"config": model.config.to_dict(), **(meta or {})}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for i, st in sd["state"].items():
            for name, t in st.items():
                out[f"optim.{i}.{name}"] = full_tensor(t).detach() if torch.is_tensor(t) else torch.tensor(t)
        info["optim_groups"] = sd["param_groups"]
    out.update(tensors or {})
    bad = nonfinite_tensors(out)
    if bad:
        raise NonFiniteError(f"refusing to write checkpoint {path}: non-finite values in "
                             f"{describe_nonfinite(out, bad)}; the file on disk was left as it was", bad)
    if not write:
        return
    out = {k: v.contiguous().cpu() for k, v in out.items()}
    info["crc32"] = {k: tensor_crc32(v) for k, v in out.items()}
    with AtomicFile(path) as a:
        save_file(out, a.tmp, metadata={"minids": json.dumps(info)})


# ------------------------------------------------------------------------------ reading
def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata). Plain tensors and JSON only: nothing is unpickled. Checks the header,
    every tensor's CRC-32 (checkpoints written before the CRCs were added have none) and that
    no floating-point tensor holds NaN or inf."""
    path = Path(path)
    meta, _ = read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise corrupt_error(path, e) from None
    check_tensors(tensors, meta, path)
    return tensors, meta


def load_weights(model: MiniDeepSeek, tensors: dict, path="checkpoint") -> None:
    """The `model.*` tensors into `model`; a clear error if they were saved for another config."""
    sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    if model.config.tie_word_embeddings and "embed_tokens.weight" in sd:
        sd["lm_head.weight"] = sd["embed_tokens.weight"]
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = [f"{k}: {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in own
             if k in sd and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ValueError(f"{path} was saved for another config: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}, shape mismatch {wrong[:4]}")
    kinds = [f"{k}: {sd[k].dtype} vs {own[k].dtype}" for k in own
             if sd[k].is_floating_point() != own[k].is_floating_point() or sd[k].is_complex() != own[k].is_complex()]
    if kinds:
        raise CheckpointError(f"checkpoint {path} stores tensors of another kind of dtype: {kinds[:4]}")
    model.load_state_dict({k: shard_like(v, own[k]) for k, v in sd.items()})   # FSDP2: into shards


def load_model(path: str | Path, device: str = "cpu") -> tuple[MiniDeepSeek, object, dict]:
    """(model, tokenizer, metadata) from a checkpoint, the model in eval mode. The metadata and the
    stored shapes are checked before any model is built; the tokenizer must be stored."""
    meta, shapes = read_header(path)
    cfg = check_meta(meta, path, tokenizer=True)
    check_model_shapes(cfg, shapes, path)
    tensors, meta = read_checkpoint(path)
    model = MiniDeepSeek(cfg)
    load_weights(model, tensors, path)
    return model.to(device).eval(), tokenizer_from_metadata(meta, path), meta


# ------------------------------------------------------------------------------ training state
def save_train_state(path, model, optimizer, gen: torch.Generator, next_iter: int, meta: dict,
                     world: World | None = None) -> None:
    """A checkpoint to resume from: + the RNG states (each rank's own dropout stream) and the data
    position (`gen`, equal on all ranks). Every rank calls it; rank 0 writes."""
    world = world or World()
    rng = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["rng.cuda"] = torch.cuda.get_rng_state()
    if world.size > 1:
        for r, st in enumerate(gather_objects(rng, world)):
            rng.update({f"{k}.rank{r}": v for k, v in st.items()})
    rng["rng.data"] = gen.get_state()
    save_checkpoint(path, model, optimizer, {**meta, "iter": next_iter, "world_size": world.size},
                    rng, write=world.is_main)


def restore_train_state(path, model, optimizer, gen: torch.Generator, world: World | None = None) -> int:
    """Load what `save_train_state` wrote into model, optimizer and generators; the next iteration."""
    world = world or World()
    meta, _ = read_header(path)
    check_meta(meta, path, train_state=True)
    tensors, meta = read_checkpoint(path)
    saved, now = ModelConfig.from_dict(meta["config"]).to_dict(), model.config.to_dict()
    if saved != now:
        diff = {k: (v, now.get(k)) for k, v in saved.items() if now.get(k) != v}
        raise ValueError(f"checkpoint {path} was saved for another config (saved vs now): {diff}")
    suffix = f".rank{world.rank}" if meta.get("world_size", 1) == world.size > 1 else ""
    need = ["rng.torch" + suffix, "rng.data"]
    if [k for k in need if k not in tensors]:
        raise CheckpointError(f"checkpoint {path} lacks the random states {[k for k in need if k not in tensors]}: "
                              "it was not written by save_train_state and cannot resume a run exactly")
    load_weights(model, tensors, path)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    try:
        sd = {"param_groups": meta["optim_groups"], "state": {}}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, name = k.split(".", 2)
                ref = params[int(i)] if int(i) < len(params) else v
                sd["state"].setdefault(int(i), {})[name] = shard_like(v, ref) if v.shape == ref.shape else v
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        raise field_error(path, "optim_groups", f"and the optim.* tensors do not fit this optimizer ({e})") from None
    try:
        torch.set_rng_state(tensors["rng.torch" + suffix])
        gen.set_state(tensors["rng.data"])
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: a stored random state does not load ({e})") from None
    if "rng.cuda" + suffix in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda" + suffix])
    return int(meta["iter"])
