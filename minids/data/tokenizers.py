"""Tokenizers: characters (here) and byte-level BPE (`bpe`), both trained on the corpus itself, no
downloaded vocabulary. A tokenizer saves itself as a JSON-able `state()` (a "kind" and its data);
`tokenizer_from_state` reads any kind back (checkpoints and token folders store it)."""

from __future__ import annotations

from .bpe import BPETokenizer


class CharTokenizer:
    """One token per character; the vocabulary is the sorted set of characters of the corpus."""

    def __init__(self, chars: str | list[str]):
        self.chars = sorted(set(chars))
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
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


TOKENIZER_KINDS = {"char": lambda st: CharTokenizer(st["chars"]),
                   "bpe": lambda st: BPETokenizer(st["merges"])}


def tokenizer_from_state(state: dict):
    kind = state.get("kind")
    if kind not in TOKENIZER_KINDS:
        raise ValueError(f"unknown tokenizer kind {kind!r}; known: {', '.join(map(repr, TOKENIZER_KINDS))}")
    return TOKENIZER_KINDS[kind](state)
