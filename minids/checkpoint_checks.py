"""What a checkpoint must satisfy before it is trusted, checked without building anything: the
header (a safetensors file holding "minids" metadata), the metadata's fields and types, the stored
shapes against the model config they describe (on the meta device, nothing allocated), every
tensor's CRC-32 and finiteness. Kept apart from minids.checkpoint, which reads and writes: the
checks are most of the lines and none of the format.

What is refused, always with the file's name and the tensor or metadata field at fault: writing
a tensor that holds NaN or inf (`NonFiniteError`: a diverged run never replaces the last good
checkpoint); reading a file that is truncated, corrupt or not a checkpoint, metadata of the wrong
shape or type (a config that is not a dict, a negative `iter`, a tokenizer state that does not
load), a tensor whose bytes no longer match their CRC-32, a tensor holding NaN or inf; building a
model before its size is checked.

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

from .config import ModelConfig
from .data import tokenizer_from_state
from .model import MiniDeepSeek


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what is wrong with it."""


class NonFiniteError(ValueError):
    """Tensors holding NaN or inf, named in the message; `names` lists them."""

    def __init__(self, message: str, names: list[str]):
        super().__init__(message)
        self.names = names


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


def describe_nonfinite(tensors: dict, names: list[str]) -> str:
    """'name (3 NaN, 0 inf of 64), ...' for the first five of `names`."""
    parts = []
    for k in names[:5]:
        v = tensors[k].detach()
        nan, inf = int(torch.isnan(v).sum()), int(torch.isinf(v).sum())
        parts.append(f"{k} ({nan} NaN, {inf} inf of {v.numel()})")
    return ", ".join(parts) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def tensor_crc32(t: torch.Tensor) -> int:
    """CRC-32 of a CPU tensor's bytes (any dtype)."""
    return zlib.crc32(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def check_tensors(tensors: dict, meta: dict, path) -> None:
    """Every tensor read matches its CRC-32 (checkpoints written before the CRCs were added have
    none) and no floating-point tensor holds NaN or inf."""
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
        raise CheckpointError(f"checkpoint {path} holds non-finite values in {describe_nonfinite(tensors, bad)}; "
                              "refusing to load it")


# ------------------------------------------------------------------------------ metadata and shapes
def corrupt_error(path, e) -> CheckpointError:
    """A file safetensors or JSON cannot read: truncated by a crash, or damaged."""
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
        raise corrupt_error(path, e) from None
    if raw is None:
        raise CheckpointError(f"checkpoint {path} has no 'minids' metadata: not a minids checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise corrupt_error(path, e) from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path}: its metadata must be a JSON object, not {type(meta).__name__}")
    return meta, shapes


def field_error(path, field: str, why: str) -> CheckpointError:
    """The error for one metadata field: the file, the field, what is wrong."""
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
            raise field_error(path, "iter", f"must be an integer >= 0 (the next step), not {meta.get('iter')!r}")
    if "world_size" in meta and (not _is_int(meta["world_size"]) or meta["world_size"] < 1):
        raise field_error(path, "world_size", f"must be an integer >= 1, not {meta['world_size']!r}")
    if train_state:
        groups = meta.get("optim_groups")
        if not (isinstance(groups, list) and groups and all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                            for g in groups)):
            raise field_error(path, "optim_groups", "must be the optimizer's parameter groups (a list of dicts "
                               f"with 'params'), not {str(groups)[:80]}")
    crc = meta.get("crc32")
    if crc is not None and not (isinstance(crc, dict) and all(_is_int(v) for v in crc.values())):
        raise field_error(path, "crc32", "must map tensor names to integers")
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
    """The tokenizer stored in the metadata; a CheckpointError naming the field if it is missing or broken."""
    state = meta.get("tokenizer")
    if not isinstance(state, dict):
        why = "is missing" if state is None else f"must be a tokenizer state (a dict), not {type(state).__name__}"
        raise field_error(path, "tokenizer", f"{why}: the checkpoint cannot encode a prompt")
    try:
        return tokenizer_from_state(state)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise field_error(path, "tokenizer", f"does not load ({type(e).__name__}: {e})") from None


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
