"""A corpus -> a token folder (the format of `tokenfiles`): `python -m minids prepare SOURCE OUT`.

Sources: "shakespeare" (offline, the course's smoke-run corpus), an online data set of Hugging Face
`datasets` by name (`ONLINE`), or local .jsonl/.json/.txt/.parquet files: minids.data.sources reads
them (`iter_documents`, importable from here too).

The tokenizer is the course's byte-level BPE (minids.data.bpe), trained on the first
`bpe_sample_bytes` of text. With Hugging Face's Rust `tokenizers` installed (engine "auto" or
"tokenizers"), training and encoding run through it (minids.data.fastbpe): the same merges and the
same ids, on all cores. The folder stores the course's tokenizer either way, so reading it back needs
neither library. `datasets` and `tokenizers` are the `data` extra: `pip install -e .[data]`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

from ..files import atomic_write_bytes
from . import fastbpe
from .bpe import BPETokenizer, train_bpe
from .corpus import shakespeare_text
from .sources import ONLINE, iter_documents
from .tokenfiles import VAL_FRACTION, TokenWriter, token_dtype

ENGINES = ("auto", "tokenizers", "course")


def _engine(engine: str) -> bool:
    """True to use `tokenizers` (fastbpe)."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} must be one of {', '.join(ENGINES)}")
    if engine == "tokenizers" and not fastbpe.available():
        raise RuntimeError("engine='tokenizers' needs `pip install tokenizers`")
    return engine == "tokenizers" or (engine == "auto" and fastbpe.available())


def prepare_dataset(source: str, out_dir, vocab_size: int = 4096, tokenizer=None,
                    text_field: str = "text", max_docs: int | None = None, val_every: int = 10,
                    bpe_sample_bytes: int = 2_000_000, use_datasets: bool | None = None,
                    max_tokens: int | None = None, engine: str = "auto", batch_docs: int = 512,
                    log=None) -> Path:
    """Tokenize `source` into the token-folder format (train.bin, val.bin, tokenizer.json,
    meta.json). Without a `tokenizer`, a BPE of `vocab_size` is trained on the first
    `bpe_sample_bytes` of text. Every document ends with EOT; every `val_every`-th document goes
    to val (if that leaves val empty, the last tenth of train moves there). Reading stops after
    `max_docs` documents or once train holds `max_tokens` tokens. "shakespeare" is the offline
    default: the plays as one document, first 90% train, last 10% val. `engine`: "tokenizers"
    (Rust, same ids), "course" (minids.data.bpe) or "auto" (the first if installed). `log`: a
    function that takes a line of progress (e.g. print)."""
    if not (isinstance(val_every, int) and val_every >= 2):
        raise ValueError(f"val_every={val_every!r} must be an integer >= 2 (every val_every-th document validates)")
    if max_tokens is not None and not (isinstance(max_tokens, int) and max_tokens >= 1):
        raise ValueError(f"max_tokens={max_tokens!r} must be an integer >= 1 or None")
    fast = _engine(engine)
    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs_iter = iter([shakespeare_text()]) if source == "shakespeare" else \
        iter_documents(source, text_field, max_docs, use_datasets)
    head: list[str] = []           # the documents read to train the BPE, tokenized first
    t_bpe = 0.0
    if tokenizer is None:
        tokenizer, head, t_bpe = _train_tokenizer(docs_iter, source, vocab_size, bpe_sample_bytes, fast, log)
    encoder = None
    if fast and isinstance(tokenizer, BPETokenizer):
        try:
            encoder = fastbpe.FastBPE(tokenizer.merges)
        except ValueError:                          # two merges make one token: the course's encoder
            encoder = None
    encode_batch = encoder.encode_batch if encoder else (lambda texts: [tokenizer.encode(t) for t in texts])
    dtype = token_dtype(tokenizer.vocab_size)
    n_docs = n_bytes = 0
    t_log = time.perf_counter()
    with TokenWriter(out / "train.bin", dtype) as tw, TokenWriter(out / "val.bin", dtype) as vw:
        stream = itertools.chain(head, docs_iter)
        while max_tokens is None or tw.count < max_tokens:
            batch = list(itertools.islice(stream, batch_docs))
            if not batch:
                break
            for doc, ids in zip(batch, encode_batch(batch), strict=True):
                ids.append(tokenizer.eot_id)
                (vw if n_docs % val_every == val_every - 1 else tw).write(np.array(ids, dtype=np.int64))
                n_docs += 1
                n_bytes += len(doc.encode("utf-8"))
                if max_tokens is not None and tw.count >= max_tokens:
                    break
            if log and time.perf_counter() - t_log > 10:
                t_log = time.perf_counter()
                log(f"{n_docs:,} documents, {tw.count + vw.count:,} tokens, {t_log - t0:.0f} s")
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
    engine_name = f"tokenizers {_version('tokenizers')}" if encoder else "minids"
    meta = {"source": source, "dtype": np.dtype(dtype).name, "vocab_size": tokenizer.vocab_size,
            "documents": n_docs, "bytes": n_bytes, "train_tokens": tw.count, "val_tokens": vw.count,
            "engine": engine_name, "bpe_seconds": round(t_bpe, 2), "seconds": round(time.perf_counter() - t0, 2)}
    atomic_write_bytes(out / "meta.json", json.dumps(meta, indent=1).encode())
    return out


def _train_tokenizer(docs_iter, source: str, vocab_size: int, bpe_sample_bytes: int, fast: bool, log):
    """A BPE trained on the first `bpe_sample_bytes` of the documents: (tokenizer, the documents
    read for it, seconds). `tokenizers` trains it when `fast` and it reproduces the course's merges."""
    head, size = [], 0
    for d in docs_iter:            # read documents until the BPE sample is big enough
        head.append(d)
        size += len(d)
        if size >= bpe_sample_bytes:
            break
    sample = "".join(head).encode("utf-8")[:bpe_sample_bytes]
    if not sample:
        raise ValueError(f"source={source!r} holds no text to train a tokenizer on")
    t = time.perf_counter()
    merges = None
    if fast:
        try:
            merges = fastbpe.train_bpe_fast(sample, vocab_size)
        except RuntimeError as e:              # a tokenizers version that numbers differently
            if log:
                log(f"tokenizers could not reproduce the course's merges ({e}); training with minids")
    tokenizer = BPETokenizer(merges if merges is not None else train_bpe(sample, vocab_size))
    t_bpe = time.perf_counter() - t
    if log:
        log(f"BPE of {tokenizer.vocab_size} tokens trained on {len(sample):,} bytes in {t_bpe:.1f} s")
    return tokenizer, head, t_bpe


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(name)
    except PackageNotFoundError:
        return "?"


def main(argv=None) -> None:
    """`python -m minids prepare SOURCE OUT [options]`."""
    ap = argparse.ArgumentParser(
        prog="python -m minids prepare", description="Tokenize a corpus into a token folder for "
        "`python -m minids train --dataset OUT`. SOURCE: shakespeare (offline), " + ", ".join(sorted(ONLINE)) +
        " (Hugging Face `datasets`, streamed), or local .jsonl/.json/.txt/.parquet file(s): a file, a folder "
        "or a glob.",
        epilog="Example (the chapter-08 GPU run, about 20 tokens per parameter of gpu-dense): python -m minids "
               "prepare fineweb-edu data/fineweb-edu-bpe8192 --vocab-size 8192 --max-tokens 2000000000 "
               "--val-every 100 --bpe-sample-bytes 100000000")
    ap.add_argument("source")
    ap.add_argument("out_dir")
    ap.add_argument("--vocab-size", type=int, default=8192,
                    help="BPE vocabulary: 256 bytes + merges + EOT (default 8192)")
    ap.add_argument("--text-field", default="text", help="the column that holds the text (local files; default text)")
    ap.add_argument("--max-docs", type=int, default=None, help="stop after this many documents")
    ap.add_argument("--max-tokens", type=int, default=None, help="stop once train holds this many tokens")
    ap.add_argument("--val-every", type=int, default=10, help="every N-th document validates (default 10)")
    ap.add_argument("--bpe-sample-bytes", type=int, default=20_000_000,
                    help="train the BPE on this many bytes of the first documents (default 20,000,000)")
    ap.add_argument("--engine", default="auto", choices=ENGINES,
                    help="tokenizers (Rust, same ids as the course's BPE), course, or auto (default)")
    ap.add_argument("--no-datasets", action="store_true", help="read local jsonl/txt files without `datasets`")
    args = ap.parse_args(argv)
    try:
        out = prepare_dataset(args.source, args.out_dir, vocab_size=args.vocab_size, text_field=args.text_field,
                              max_docs=args.max_docs, val_every=args.val_every,
                              bpe_sample_bytes=args.bpe_sample_bytes, use_datasets=False if args.no_datasets else None,
                              max_tokens=args.max_tokens, engine=args.engine, log=lambda s: print(s, flush=True))
    except RuntimeError as e:                     # a missing optional package: one line, no traceback
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {out}: {(out / 'meta.json').read_text()}")
