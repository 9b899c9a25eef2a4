"""Token files. A data set on disk is a folder: train.bin and val.bin (raw token ids, uint16 when
the vocabulary fits, else uint32, read back with np.memmap: nothing is loaded into memory),
tokenizer.json (the tokenizer's state), and meta.json (dtype and counts), written last: a folder
without meta.json is unfinished. Every file is written to a temporary name and renamed into place.

`open_token_folder` trusts nothing it reads: meta.json's dtype must be the one the tokenizer's
vocabulary needs, each file's size a whole number of tokens (and the count meta.json states), no
id may reach the vocabulary size; every error names the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..files import AtomicFile
from .tokenizers import tokenizer_from_state

VAL_FRACTION = 0.1         # held out for validation when a corpus is split by position
SCAN_CHUNK = 1 << 24       # tokens per read when checking the ids of a token file


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class TokenWriter(AtomicFile):
    """Append arrays of token ids to a temporary file; `commit()` renames it into place.
    As a context manager: an exception deletes the temporary file and leaves the old one alone."""

    def __init__(self, path, dtype):
        super().__init__(path)
        self.dtype, self.count = np.dtype(dtype), 0

    def write(self, ids) -> None:
        a = np.asarray(ids)
        if a.size and (a.min() < 0 or a.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids must be in [0, {np.iinfo(self.dtype).max}] for {self.dtype}")
        self.f.write(a.astype(self.dtype, copy=False).tobytes())
        self.count += a.size


def write_tokens(path, ids, dtype=None) -> Path:
    """One array of ids as a raw token file, atomically."""
    ids = np.asarray(ids)
    with TokenWriter(path, dtype or ids.dtype) as w:
        w.write(ids)
    return Path(path)


def read_tokens(path, dtype, count: int | None = None, dtype_from: str = "") -> np.ndarray:
    """A token file as a read-only memmap (an empty file gives an empty array). Its size must be a
    whole number of `dtype` tokens, and `count` tokens if given (`dtype_from`: where the dtype was
    read, for the error)."""
    path, dtype = Path(path), np.dtype(dtype)
    src = f" (the dtype of {dtype_from})" if dtype_from else ""
    if not path.is_file():
        raise FileNotFoundError(f"token file {path} is missing" if not path.exists() else
                                f"token file {path} is not a file")
    size = path.stat().st_size
    if size % dtype.itemsize:
        raise ValueError(f"token file {path} holds {size} bytes, not a whole number of {dtype} tokens{src} "
                         f"({dtype.itemsize} bytes each): truncated, or written with another dtype")
    if count is not None and size // dtype.itemsize != count:
        raise ValueError(f"token file {path} holds {size // dtype.itemsize:,} {dtype} tokens but meta.json "
                         f"says {count:,}: truncated, replaced, or meta.json's dtype is wrong")
    if size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")


def max_token(ids: np.ndarray) -> int:
    """The largest id, read in chunks (a memmap of GBs is never loaded whole); -1 if empty."""
    best = -1
    for i in range(0, len(ids), SCAN_CHUNK):
        best = max(best, int(ids[i:i + SCAN_CHUNK].max()))
    return best


def _read_json(path: Path, what: str):
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} is missing" if not path.exists() else f"{what} {path} is not a file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{what} {path} is not valid JSON ({e})") from None


def open_token_folder(folder) -> tuple[dict, object, np.ndarray, np.ndarray]:
    """(meta, tokenizer, train ids, val ids) of a token folder, every file checked (module doc)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"dataset={str(folder)!r} is not a folder" if folder.exists() else
                         f"dataset={str(folder)!r} does not exist")
    meta_path, tok_path = folder / "meta.json", folder / "tokenizer.json"
    if not meta_path.exists():
        raise ValueError(f"dataset={str(folder)!r} has no meta.json: not a prepared token folder "
                         "(minids.data.prepare_dataset writes one) or its preparation did not finish")
    meta = _read_json(meta_path, "token folder metadata")
    if not isinstance(meta, dict):
        raise ValueError(f"{meta_path} must hold a JSON object, not {type(meta).__name__}")
    state = _read_json(tok_path, "tokenizer file")
    try:
        if not isinstance(state, dict):
            raise TypeError(f"a tokenizer state is a JSON object, not {type(state).__name__}")
        tokenizer = tokenizer_from_state(state)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"tokenizer file {tok_path} does not load ({type(e).__name__}: {e})") from None
    vocab = tokenizer.vocab_size
    if meta.get("vocab_size", vocab) != vocab:
        raise ValueError(f"{meta_path} says vocab_size={meta['vocab_size']!r} but {tok_path} holds a vocabulary "
                         f"of {vocab}: the two files come from different preparations")
    fits = [n for n in ("uint16", "uint32") if np.iinfo(n).max >= vocab - 1]
    if meta.get("dtype") not in fits:
        raise ValueError(f"{meta_path} says dtype={meta.get('dtype')!r}; token ids of a vocabulary of {vocab} are "
                         f"stored as {' or '.join(map(repr, fits))} ({np.dtype(token_dtype(vocab)).name!r} when "
                         "minids prepares them)")
    want = np.dtype(meta["dtype"])
    splits = []
    for split in ("train", "val"):
        count = meta.get(f"{split}_tokens")
        if count is not None and not (isinstance(count, int) and not isinstance(count, bool) and count >= 0):
            raise ValueError(f"{meta_path} says {split}_tokens={count!r}; must be an integer >= 0")
        path = folder / f"{split}.bin"
        ids = read_tokens(path, want, count, dtype_from=str(meta_path))
        if len(ids) < 2:
            raise ValueError(f"token file {path} holds {len(ids)} tokens: too few to train or validate on")
        top = max_token(ids)
        if top >= vocab:
            raise ValueError(f"token file {path} holds id {top} (read as {want.name}, the dtype in {meta_path}), "
                             f"outside the vocabulary of {vocab} "
                             f"({tok_path}): the ids were written for another tokenizer or dtype")
        splits.append(ids)
    return meta, tokenizer, splits[0], splits[1]
