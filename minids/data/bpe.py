"""Byte-level BPE (Sennrich et al. 2016, arXiv 1508.07909; byte-level as in GPT-2): start from
the 256 byte values, so every byte sequence is representable, then repeatedly replace the most
frequent adjacent pair of tokens by a new token. Trained here, on the corpus: no downloaded
vocabulary. Text is first cut into chunks (a word with its leading space, a run of digits or
of punctuation, whitespace) and pairs never cross a chunk boundary, so " the" and "the," share
tokens. Bytes >= 128 (the pieces of non-ASCII UTF-8 characters) count as letters: "café" stays
one chunk, and any byte string, valid UTF-8 or not, is cut without loss."""

from __future__ import annotations

import heapq
import json
import re
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

from ..files import atomic_write_bytes

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
    def train(cls, text: str | bytes, vocab_size: int, simple: bool = False) -> BPETokenizer:
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
        atomic_write_bytes(path, json.dumps(self.state()).encode())

    @classmethod
    def load(cls, path) -> BPETokenizer:
        state = json.loads(Path(path).read_text())
        if state.get("kind") != "bpe":
            raise ValueError(f"{path} is not a BPE tokenizer file (kind={state.get('kind')!r})")
        return cls(state["merges"])
