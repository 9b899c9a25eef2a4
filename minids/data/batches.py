"""What training reads: a corpus as token ids with a train/val split (`TokenDataset`, or
`MemmapDataset` for a prepared token folder), `load_dataset` by name, and `get_batch`'s random
windows (the same global batch on every rank, each rank reading its slice)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from ..files import AtomicFile
from .corpus import cache_dir, shakespeare_text
from .prepare import prepare_dataset
from .tokenfiles import VAL_FRACTION, max_token, open_token_folder
from .tokenizers import CharTokenizer


class TokenDataset:
    """A corpus as token ids with a fixed split: the first 90% trains, the last 10% validates."""

    def __init__(self, ids: np.ndarray, tokenizer, val_fraction: float = VAL_FRACTION):
        n = int(len(ids) * (1 - val_fraction))
        self.train, self.val, self.tokenizer = ids[:n], ids[n:], tokenizer

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "val"):
            raise ValueError(f"split={name!r} must be 'train' or 'val'")
        return self.train if name == "train" else self.val


class MemmapDataset(TokenDataset):
    """A prepared folder (see `prepare_dataset`): train/val as memmaps, the tokenizer from JSON.
    Every file is checked on opening (tokenfiles.open_token_folder); errors name the file."""

    def __init__(self, folder):
        self.meta, self.tokenizer, self.train, self.val = open_token_folder(folder)


def content_key(text: str, tokenizer_state: dict | None = None) -> str:
    """16 hex digits of the SHA-256 of the text (and the tokenizer's state): the name of what is
    cached from them, so a changed text or tokenizer never meets the ids of the old one."""
    h = hashlib.sha256(text.encode("utf-8"))
    if tokenizer_state is not None:
        h.update(json.dumps(tokenizer_state, sort_keys=True).encode())
    return h.hexdigest()[:16]


def _cached_char_ids(text: str, tok: CharTokenizer) -> np.ndarray:
    """The text's ids under `tok`, cached as shakespeare.char.<key>.npy; a cache file that does not
    load or does not fit the text (length, dtype, ids) is rebuilt, never trusted."""
    path = cache_dir() / f"shakespeare.char.{content_key(text, tok.state())}.npy"
    if path.is_file():
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
            if (ids.dtype == np.uint16 and ids.shape == (len(text),) and max_token(ids) < tok.vocab_size
                    and tok.decode(ids[:64]) == text[:64] and tok.decode(ids[-64:]) == text[-64:]):
                return ids
        except (OSError, ValueError, EOFError):
            pass
        print(f"minids: rebuilding the damaged token cache {path}", file=sys.stderr)
    lut = np.zeros(max(map(ord, tok.chars)) + 1, dtype=np.uint16)
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    lut[[ord(c) for c in tok.chars]] = np.arange(tok.vocab_size)
    ids = lut[codes]
    with AtomicFile(path) as a:
        np.save(a.f, ids)
    for old in cache_dir().glob("shakespeare.char*.npy"):      # ids of another text: stale for good
        if old != path:
            old.unlink(missing_ok=True)
    return ids


def load_dataset(name: str = "shakespeare", tokenizer: str = "char") -> TokenDataset:
    """The corpus, tokenized. Token ids are cached next to the text, under a name derived from the
    text's hash (content_key), and checked when read back.
    `name` may also be a token folder written by `prepare_dataset` (its own tokenizer is used);
    `tokenizer="bpe"` (or "bpe:N", N = vocabulary size, default 4096) trains a byte-level BPE on
    Shakespeare once and caches the token folder (also keyed by the text's hash)."""
    if name != "shakespeare":
        if Path(name).exists():
            return MemmapDataset(name)
        raise ValueError(f"dataset={name!r} must be 'shakespeare' or a token folder (prepare_dataset)")
    if tokenizer == "bpe" or tokenizer.startswith("bpe:"):
        n = int(tokenizer[4:]) if tokenizer.startswith("bpe:") and tokenizer[4:].isdigit() else 4096
        if tokenizer not in ("bpe", f"bpe:{n}"):
            raise ValueError(f"tokenizer={tokenizer!r} must be 'char', 'bpe' or 'bpe:N' (N = vocab size)")
        text = shakespeare_text()
        folder = cache_dir() / f"shakespeare-bpe{n}-{content_key(text)}"
        if (folder / "meta.json").exists():
            try:
                return MemmapDataset(folder)
            except (ValueError, OSError) as e:
                print(f"minids: rebuilding the damaged token folder {folder} ({e})", file=sys.stderr)
        prepare_dataset("shakespeare", folder, vocab_size=n, bpe_sample_bytes=10**9)
        return MemmapDataset(folder)
    if tokenizer != "char":
        raise ValueError(f"tokenizer={tokenizer!r} must be 'char', 'bpe' or 'bpe:N' (N = vocab size)")
    text = shakespeare_text()
    tok = CharTokenizer.from_text(text)
    return TokenDataset(np.asarray(_cached_char_ids(text, tok)), tok)


def get_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator,
              device: str | torch.device = "cpu", rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x = data[i : i+T], y = data[i+1 : i+T+1], both (B, T) int64.
    The generator is the data position: saving its state resumes the exact same batches.
    With `world_size` > 1 (multi-GPU), every rank draws the same batch_size * world_size window
    starts and reads only its slice [rank*B, (rank+1)*B): the ranks' batches together are
    exactly the batch one process would draw with batch_size * world_size."""
    if len(data) <= block_size + 1:
        raise ValueError(f"block_size={block_size} must be < {len(data) - 1} (the split's length - 1)")
    if batch_size * world_size * (block_size + 1) >= 2**62:
        raise ValueError(f"batch_size={batch_size} x world_size={world_size} windows of block_size={block_size} "
                         "+ 1 tokens cannot even be indexed (>= 2**62 tokens)")
    ix = torch.randint(len(data) - block_size - 1, (batch_size * world_size,), generator=generator)
    ix = ix[rank * batch_size:(rank + 1) * batch_size]
    offsets = ix[:, None].numpy() + np.arange(block_size + 1)
    chunk = torch.from_numpy(np.asarray(data[offsets], dtype=np.int64))   # (B, T+1)
    x, y = chunk[:, :-1], chunk[:, 1:]
    if str(device).startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
