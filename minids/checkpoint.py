"""Checkpoints: one safetensors file (plain tensors and JSON, nothing unpickled), written atomically.

Tensors: `model.<name>` the weights (router biases included), `optim.<i>.<name>` the optimizer
state, `rng.*` the random states (of every rank under torchrun). Metadata "minids": the model
config, and whatever the trainer adds (its config, the tokenizer, the next iteration). With
those, `restore_train_state` resumes a run exactly where `save_train_state` left it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .config import ModelConfig
from .data import tokenizer_from_state
from .distributed import World, full_tensor, gather_objects, shard_like
from .files import AtomicFile
from .model import MiniDeepSeek

CHECKPOINT = "ckpt.safetensors"


def save_checkpoint(path: str | Path, model: MiniDeepSeek, optimizer=None, meta: dict | None = None,
                    tensors: dict | None = None, write: bool = True) -> None:
    """Weights, optimizer state, extra `tensors` and `meta` in one file at `path`. Sharded (FSDP2)
    tensors are gathered whole first: every rank must call this then, and only the one with
    `write=True` writes."""
    out = {f"model.{k}": full_tensor(v).detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        out.pop("model.lm_head.weight", None)
    info = {"config": model.config.to_dict(), **(meta or {})}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for i, st in sd["state"].items():
            for name, t in st.items():
                out[f"optim.{i}.{name}"] = (full_tensor(t).detach().contiguous().cpu() if torch.is_tensor(t)
                                            else torch.tensor(t))
        info["optim_groups"] = sd["param_groups"]
    for k, v in (tensors or {}).items():
        out[k] = v.contiguous().cpu()
    if write:
        with AtomicFile(path) as a:
            save_file(out, a.tmp, metadata={"minids": json.dumps(info)})


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata). Plain tensors and JSON only: nothing is unpickled."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["minids"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError, ValueError) as e:
        raise ValueError(f"checkpoint {path} is truncated or corrupt ({e}); "
                         "the last complete checkpoint is the one to use") from None
    return tensors, meta


def load_weights(model: MiniDeepSeek, tensors: dict, path="checkpoint") -> None:
    """The `model.*` tensors into `model`; a clear error if they were saved for another config."""
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
    model.load_state_dict({k: shard_like(v, own[k]) for k, v in sd.items()})   # FSDP2: into shards


def load_model(path: str | Path, device: str = "cpu") -> tuple[MiniDeepSeek, object, dict]:
    """(model, tokenizer, metadata) from a checkpoint, the model in eval mode."""
    tensors, meta = read_checkpoint(path)
    model = MiniDeepSeek(ModelConfig.from_dict(meta["config"]))
    load_weights(model, tensors, path)
    tok = tokenizer_from_state(meta["tokenizer"]) if "tokenizer" in meta else None
    return model.to(device).eval(), tok, meta


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
    tensors, meta = read_checkpoint(path)
    saved, now = ModelConfig.from_dict(meta["config"]).to_dict(), model.config.to_dict()
    if saved != now:
        diff = {k: (v, now.get(k)) for k, v in saved.items() if now.get(k) != v}
        raise ValueError(f"checkpoint {path} was saved for another config (saved vs now): {diff}")
    load_weights(model, tensors, path)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    sd = {"param_groups": meta["optim_groups"], "state": {}}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, i, name = k.split(".", 2)
            ref = params[int(i)] if int(i) < len(params) else v
            sd["state"].setdefault(int(i), {})[name] = shard_like(v, ref) if v.shape == ref.shape else v
    optimizer.load_state_dict(sd)
    suffix = f".rank{world.rank}" if meta.get("world_size", 1) == world.size > 1 else ""
    torch.set_rng_state(tensors["rng.torch" + suffix])
    gen.set_state(tensors["rng.data"])
    if "rng.cuda" + suffix in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda" + suffix])
    return int(meta["iter"])
