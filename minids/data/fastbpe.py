"""The course's byte-level BPE (minids.data.bpe), trained and applied by Hugging Face's Rust
`tokenizers` library: the same merges and the same token ids, fast enough for corpora of billions
of tokens (several threads, no Python loop per chunk). An optional extra: `pip install tokenizers`.

How the two are made to agree. `tokenizers` works on text (str), the course on bytes. The text is
handed over as the latin-1 reading of its UTF-8 bytes (byte b becomes the character U+00b), so one
character is one byte and character order is byte order; the course's chunk regex is rewritten for
those characters (`CHUNK_PATTERN`). Trained with the 256 characters as its initial alphabet,
`tokenizers` numbers them 0-255 by code point (= byte value), numbers the merges 256, 257, ... in
the order it learns them, and breaks a tie between equally frequent pairs by the smaller pair of ids:
the course's rule (`train_bpe_simple`). So the merge lists are equal, and encoding with the same
merges gives the same ids (tests/package/test_prepare.py; docs/LOG.md for all of Shakespeare).

With the library's usual `ByteLevel` pre-tokenizer (GPT-2's byte-to-character map) they would NOT
agree: that map numbers the printable bytes first and moves the space, the newline and the other
control bytes behind them, so the first tie between a pair with a space and one without is broken
the other way (on Shakespeare at merge 49: (' ', 'in') and ('s', 'e') are equally frequent; the
course takes ' in' first, ByteLevel 'se'), and from there on the lists differ in order (7,933 of
7,935 merges in common at vocab 8,192).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable

from .bpe import EOT, BPETokenizer

_WS = r" \t\n\r\x0b\x0c"                      # what the course's bytes regex calls \s
_LETTER = r"A-Za-z\x{80}-\x{ff}"              # ASCII letters and every byte >= 128
# minids.data.bpe._CHUNK, for latin-1 characters (Oniguruma syntax: \x{..})
CHUNK_PATTERN = (rf"'(?:s|t|re|ve|m|ll|d)| ?[{_LETTER}]+| ?[0-9]+| ?[^{_WS}{_LETTER}0-9]+"
                 rf"|[{_WS}]+(?![^{_WS}])|[{_WS}]+")
# Where a long text may be cut without changing its chunks: between a newline that follows a
# non-space and an ASCII letter (both regexes cut there, whatever comes before or after).
_SAFE_CUT = re.compile(r"(?<=[^ \t\n\r\x0b\x0c]\n)(?=[A-Za-z])")
PIECE_CHARS = 1 << 16                          # long texts are cut into pieces of about this size


def available() -> bool:
    return importlib.util.find_spec("tokenizers") is not None


def _require():
    if not available():
        raise RuntimeError("the fast BPE needs Hugging Face's `tokenizers`: pip install tokenizers "
                           "(or pip install -e .[data])")
    import tokenizers
    return tokenizers


def as_latin1(text: str | bytes) -> str:
    """UTF-8 bytes as latin-1 characters: one character per byte, in byte order."""
    return (text.encode("utf-8") if isinstance(text, str) else bytes(text)).decode("latin-1")


def pieces(s: str, size: int = PIECE_CHARS) -> list[str]:
    """Cut a long latin-1 string at safe points into pieces of about `size` characters (pieces
    tokenize independently and in parallel; their chunks are exactly the whole string's)."""
    if len(s) <= size:
        return [s]
    out, start = [], 0
    while len(s) - start > size:
        m = _SAFE_CUT.search(s, start + size)
        if m is None:
            break
        out.append(s[start:m.start()])
        start = m.start()
    out.append(s[start:])
    return out


def _pre_tokenizer(tokenizers):
    return tokenizers.pre_tokenizers.Split(tokenizers.Regex(CHUNK_PATTERN), "isolated")


def pretokenize(text: str | bytes) -> list[bytes]:
    """The chunks as `tokenizers` cuts them (equal to minids.data.bpe.pretokenize)."""
    tk = _require()
    return [w.encode("latin-1") for w, _ in _pre_tokenizer(tk).pre_tokenize_str(as_latin1(text))]


def train_bpe_fast(texts: str | bytes | Iterable[str | bytes], vocab_size: int) -> list[tuple[int, int]]:
    """The merges `minids.data.bpe.train_bpe` learns on the same text, computed by `tokenizers`.
    `texts`: one text, or several (as if they were joined: every text is cut at safe points only;
    pass a single text to reproduce train_bpe on that exact string)."""
    tk = _require()
    from .bpe import _check_vocab_size
    _check_vocab_size(vocab_size)
    if isinstance(texts, (str, bytes, bytearray)):
        texts = [texts]
    model = tk.Tokenizer(tk.models.BPE())
    model.pre_tokenizer = _pre_tokenizer(tk)
    trainer = tk.trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=[chr(b) for b in range(256)],
                                     show_progress=False, min_frequency=0)
    model.train_from_iterator((p for t in texts for p in pieces(as_latin1(t))), trainer)
    vocab = model.get_vocab()
    if any(vocab.get(chr(b)) != b for b in range(256)):
        raise RuntimeError("tokenizers numbered the 256 byte characters out of byte order: this version "
                           "does not sort its initial alphabet by code point")
    import json
    merges = json.loads(model.to_str())["model"]["merges"]
    pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    out = [(vocab[a], vocab[b]) for a, b in pairs]
    if any(vocab[a + b] != 256 + r for r, (a, b) in enumerate(pairs)):
        raise RuntimeError("tokenizers learned a merge whose token already existed: its ids differ from "
                           "the course's from there on")
    return out


class FastBPE:
    """Encodes like `BPETokenizer(merges)` (same ids), with `tokenizers`: `encode_batch` runs on all
    cores. Raises ValueError when two merges make the same byte string (the course then keeps two
    ids for it, which a `tokenizers` vocabulary cannot): use the course's encoder."""

    def __init__(self, merges: list[tuple[int, int]]):
        tk = _require()
        self.course = BPETokenizer(merges)
        strings = [b.decode("latin-1") for b in self.course.vocab[:self.course.eot_id]]
        vocab = {s: i for i, s in enumerate(strings)}
        if len(vocab) != len(strings):
            raise ValueError("two merges make the same token: encode with minids.data.BPETokenizer")
        pairs = [(strings[a], strings[b]) for a, b in self.course.merges]
        self.model = tk.Tokenizer(tk.models.BPE(vocab=vocab, merges=pairs))
        self.model.pre_tokenizer = _pre_tokenizer(tk)
        self.eot_id, self.vocab_size = self.course.eot_id, self.course.vocab_size

    def encode_batch(self, texts: list[str | bytes]) -> list[list[int]]:
        """Token ids of each text (no EOT added), equal to BPETokenizer.encode of each."""
        cut = [pieces(as_latin1(t)) for t in texts]
        flat = self.model.encode_batch([p for ps in cut for p in ps], add_special_tokens=False)
        out, k = [], 0
        for ps in cut:
            ids: list[int] = []
            for e in flat[k:k + len(ps)]:
                ids.extend(e.ids)
            out.append(ids)
            k += len(ps)
        return out

    def encode(self, text: str | bytes) -> list[int]:
        return self.encode_batch([text])[0]

    def state(self) -> dict:
        return self.course.state()


__all__ = ["CHUNK_PATTERN", "EOT", "FastBPE", "as_latin1", "available", "pieces", "pretokenize", "train_bpe_fast"]
