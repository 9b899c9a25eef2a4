"""Checkpoints: one safetensors file (plain tensors and JSON, nothing unpickled), written atomically.

Tensors: `model.<name>` the weights (router biases included), `optim.<i>.<name>` the optimizer
state, `rng.*` the random states (of every rank under torchrun). Metadata "minids": the model
config, a CRC-32 of every tensor, and whatever the trainer adds (its config, the tokenizer, the
next iteration). With those, `restore_train_state` resumes a run exactly where
`save_train_state` left it.

What is refused, always with the file's name and the tensor or metadata field at fault:
- writing a tensor that holds NaN or inf (`NonFiniteError`): a diverged run never replaces the
  last good checkpoint;
- reading a file that is truncated, corrupt or not a checkpoint, metadata of the wrong shape or
  type (a config that is not a dict, a negative `iter`, a tokenizer state that does not load),
  a tensor whose bytes no longer match their CRC-32, a tensor holding NaN or inf;
- building a model before its size is checked: `load_model` compares the config in the metadata
  with the shapes stored in the file (on the meta device, nothing allocated) first.

The CRC-32s catch accidental damage after the write (a bit flipped on a disk or in a copy, a block
zeroed by a crash, a file edited by hand), and name the tensor. They are no signature: whoever can
write the file can recompute them, so they prove nothing against a forged checkpoint (safetensors
already guarantees that loading one runs no code).
"""

from __future__ import annotations

import json
import math
import zlib
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


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


class NonFiniteError(ValueError):
    """Tensors holding NaN or inf, named in the message; `names` lists them."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


# ------------------------------------------------------------------------------ tensor checks
def nonfinite_tensors(tensors: dict) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an inf. One flag per tensor is
    computed where the tensor lives (GPU tensors stay there) and read back in one transfer."""
    by_device: dict = {}
    for k, v in tensors.items():
        if v.is_floating_point() or v.is_complex():
            by_device.setdefault(v.device, []).append((k, torch.isfinite(v).all()))
    bad = []
    for items in by_device.values():
        ok = torch.stack([f for _, f in items]).tolist()
        bad += [k for (k, _), good in zip(items, ok, strict=True) if not good]
    return bad


def _describe_nonfinite(tensors: dict, names: list[str]) -> str:
    parts = []
    for k in names[:5]:
        v = tensors[k].detach()
        nan, inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
        parts.append(f"{k} ({nan} NaN, {inf} inf of {v.numel()})")
    return ", ".join(parts) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def tensor_crc32(t: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's bytes (any dtype)."""
    return zlib.crc32(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


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
                             f"{_describe_nonfinite(out, bad)}; the file on disk was left as it was", bad)
    if not write:
        return
    out = {k: v.contiguous().cpu() for k, v in out.items()}
    info["crc32"] = {k: tensor_crc32(v) for k, v in out.items()}
    with AtomicFile(path) as a:
        save_file(out, a.tmp, metadata={"minids": json.dumps(info)})


# ------------------------------------------------------------------------------ reading
def _corrupt(path, e) -> CheckpointError:
    return CheckpointError(f"checkpoint {path} is truncated or corrupt ({e}); "
                           "the last complete checkpoint is the one to use")


def read_header(path: str | Path) -> tuple[dict, dict[str, tuple[int, ...]]]:
    """(metadata, {tensor name: shape}) from the file's header, without reading any tensor."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a file")
    try:
        with safe_open(str(path), "pt") as f:
            raw = (f.metadata() or {}).get("minids")
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, e) from None
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no 'minids' metadata: not a minids checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise _corrupt(path, e) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its metadata must be a JSON object, not {type(meta).__name__}")
    return meta, shapes


def _field_error(path, field: str, why: str) -> CheckpointError:
    return CheckpointError(f"checkpoint {path}: metadata field {field!r} {why}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_meta(meta: dict, path, *, tokenizer: bool = False, train_state: bool = False) -> ModelConfig:
    """Check the metadata's fields and types (nothing is built); the model config it describes.
    `tokenizer`: one must be stored; `train_state`: what resuming needs (iter, optimizer groups)."""
    cfg = model_config_from(meta.get("config"), f"checkpoint {path}: metadata field 'config'")
    if "tokenizer" in meta or tokenizer:
        tokenizer_from_metadata(meta, path)
    if "iter" in meta or train_state:
        if not _is_int(meta.get("iter")) or meta["iter"] < 0:
            raise _field_error(path, "iter", f"must be an integer >= 0 (the next step), not {meta.get('iter')!r}")
    if "world_size" in meta and (not _is_int(meta["world_size"]) or meta["world_size"] < 1):
        raise _field_error(path, "world_size", f"must be an integer >= 1, not {meta['world_size']!r}")
    if train_state:
        groups = meta.get("optim_groups")
        if not (isinstance(groups, list) and groups and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                            for g in groups)):
            raise _field_error(path, "optim_groups", "must be the optimizer's parameter groups (a list of dicts "
                               f"with 'params'), not {str(groups)[:80]}")
    crc = meta.get("crc32")
    if crc is not None and not (isinstance(crc, dict) and all(_is_int(v) for v in crc.values())):
        raise _field_error(path, "crc32", "must map tensor names to integers")
    return cfg


def model_config_from(d, where: str) -> ModelConfig:
    """A ModelConfig from a dict read from a file; errors start with `where` (the file and field)."""
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be a JSON object of ModelConfig fields, not {type(d).__name__}")
    try:
        return ModelConfig.from_dict(d)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def tokenizer_from_metadata(meta: dict, path):
    state = meta.get("tokenizer")
    if not isinstance(state, dict):
        why = "is missing" if state is None else f"must be a tokenizer state (a dict), not {type(state).__name__}"
        raise _field_error(path, "tokenizer", f"{why}: the checkpoint cannot encode a prompt")
    try:
        return tokenizer_from_state(state)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise _field_error(path, "tokenizer", f"does not load ({type(e).__name__}: {e})") from None


def check_model_shapes(cfg: ModelConfig, shapes: dict, path) -> None:
    """The model `cfg` describes must be the one whose weights the file stores: compared on the
    meta device (no memory allocated), after a bound on its size that needs no model at all."""
    stored = {k[len("model."):]: s for k, s in shapes.items() if k.startswith("model.")}
    where = f"checkpoint {path}: metadata field 'config'"
    if cfg.num_hidden_layers + cfg.num_nextn_predict_layers > len(stored):
        raise ValueError(f"{where} describes {cfg.num_hidden_layers} layers + {cfg.num_nextn_predict_layers} MTP "
                         f"modules but the file stores {len(stored)} weight tensors")
    from .flops import param_count

    need, have = param_count(cfg).total, sum(math.prod(s) for s in stored.values())
    if need > have:
        raise ValueError(f"{where} describes a model of {need:,} parameters but the file stores {have:,} "
                         "weights; nothing was built")
    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in MiniDeepSeek(cfg).state_dict().items()}
    if cfg.tie_word_embeddings:
        own.pop("lm_head.weight", None)
    missing, unexpected = sorted(set(own) - set(stored)), sorted(set(stored) - set(own))
    wrong = [f"{k}: {stored[k]} stored vs {own[k]}" for k in own if k in stored and stored[k] != own[k]]
    if missing or unexpected or wrong:
        raise ValueError(f"{where} does not match the weights stored: missing {missing[:4]}, "
                         f"unexpected {unexpected[:4]}, shape mismatch {wrong[:4]}")


def read_checkpoint(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata). Plain tensors and JSON only: nothing is unpickled. Checks the header,
    every tensor's CRC-32 (checkpoints written before the CRCs were added have none) and that
    no floating-point tensor holds NaN or inf."""
    path = Path(path)
    meta, _ = read_header(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise _corrupt(path, e) from None
    crc = meta.get("crc32")
    if isinstance(crc, dict):
        damaged = [k for k, v in tensors.items() if k in crc and tensor_crc32(v) != crc[k]]
        unlisted = sorted(set(tensors) ^ set(crc))
        if damaged or unlisted:
            raise CheckpointError(f"checkpoint {path} is damaged: the bytes of {damaged[:4]} no longer match their "
                                  f"CRC-32{f', tensors {unlisted[:4]} added or removed' if unlisted else ''}; "
                                  "the last good copy is the one to use")
    bad = nonfinite_tensors(tensors)
    if bad:
        raise CheckpointError(f"checkpoint {path} holds non-finite values in {_describe_nonfinite(tensors, bad)}; "
                              "refusing to load it")
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
        raise _field_error(path, "optim_groups", f"and the optim.* tensors do not fit this optimizer ({e})") from None
    try:
        torch.set_rng_state(tensors["rng.torch" + suffix])
        gen.set_state(tensors["rng.data"])
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}: a stored random state does not load ({e})") from None
    if "rng.cuda" + suffix in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors["rng.cuda" + suffix])
    return int(meta["iter"])
