"""Token files. A data set on disk is a folder: train.bin and val.bin (raw token ids, uint16 when
the vocabulary fits, else uint32, read back with np.memmap: nothing is loaded into memory),
tokenizer.json (the tokenizer's state), and meta.json (dtype and counts), written last: a folder
without meta.json is unfinished. Every file is written to a temporary name and renamed into place."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..files import AtomicFile

VAL_FRACTION = 0.1         # held out for validation when a corpus is split by position


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


def read_tokens(path, dtype) -> np.ndarray:
    """A token file as a read-only memmap (an empty file gives an empty array)."""
    path = Path(path)
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r")
