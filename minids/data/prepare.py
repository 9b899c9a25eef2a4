"""Preparing a token folder (the format of `tokenfiles`) from a corpus: Shakespeare offline, or
larger corpora for readers with a network, through Hugging Face `datasets` (imported only here,
never in tests/CI). Local files go through the same code: a .jsonl/.json, .txt or
.parquet path is read with `datasets.load_dataset(<builder>, data_files=path)` when `datasets`
is installed, else with plain Python (jsonl and txt only)."""

from __future__ import annotations

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from .bpe import BPETokenizer
from .corpus import shakespeare_text
from .tokenfiles import VAL_FRACTION, TokenWriter, token_dtype

ONLINE = {  # name -> (hub id, config, text field)
    "tinystories": ("roneneldan/TinyStories", None, "text"),
    "fineweb-edu": ("HuggingFaceFW/fineweb-edu", "sample-10BT", "text"),
}
_BUILDERS = {".jsonl": "json", ".json": "json", ".txt": "text", ".parquet": "parquet"}


def iter_documents(source: str, text_field: str = "text", max_docs: int | None = None,
                   use_datasets: bool | None = None):
    """Yield documents (str) from an online data set name (see ONLINE) or a local file."""
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
