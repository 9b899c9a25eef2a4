"""Byte-level BPE, token files (memmaps written atomically) and the data-set loader (chapter 08)."""

import importlib.util
import json
import random

import numpy as np
import pytest

import minids.data as D
from minids.data import (
    BPETokenizer,
    MemmapDataset,
    TokenWriter,
    load_dataset,
    merge_pair,
    prepare_dataset,
    pretokenize,
    read_tokens,
    tokenizer_from_state,
    train_bpe,
    train_bpe_simple,
    write_tokens,
)

TEXT = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
        "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 3


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, 300)


def test_merge_pair():
    assert merge_pair([1, 2, 2, 2, 1, 2], (2, 2), 9) == [1, 9, 2, 1, 2]
    assert merge_pair([1, 2, 1, 2], (1, 2), 7) == [7, 7]


def test_chunks_cover_every_byte_string():
    rng = random.Random(0)
    for n in (0, 1, 7, 100, 1000):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert b"".join(pretokenize(data)) == data
    assert pretokenize(b"the cat's 42 cafe\xcc\x81!!  \n") == [
        b"the", b" cat", b"'s", b" 42", b" cafe\xcc\x81", b"!!", b"  \n"]


def test_round_trip_random_bytes_and_unicode(tok):
    rng = random.Random(1)
    for n in (0, 1, 2, 50, 500, 3000):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert tok.decode_bytes(tok.encode_bytes(data)) == data
    for s in ["", "héllo wörld — ¿qué? 日本語のテキスト 🙂🚀", "Ω≈ç√∫˜µ≤≥÷", "a\x00b\tc\r\n",
              "e\u0301 (combining)", TEXT, "zzzzzzzz" * 40]:
        ids = tok.encode(s)
        assert tok.decode(ids) == s and all(0 <= i < tok.vocab_size for i in ids)
    text = "".join(chr(rng.randrange(0x20, 0x2FFF)) for _ in range(2000))
    assert tok.decode(tok.encode(text)) == text


def test_bpe_compresses_the_text_it_was_trained_on(tok):
    assert tok.vocab_size == 300 and len(tok.merges) == 300 - 257 and tok.eot_id == 299
    assert len(tok.encode(TEXT)) < 0.6 * len(TEXT.encode())      # 43 merges: 516 bytes -> 276 tokens


def test_bpe_training_is_deterministic_and_fast_equals_simple():
    data = TEXT.encode() + "naïve café déjà vu".encode() * 5
    a, b = train_bpe(data, 400), train_bpe(data, 400)
    assert a == b == train_bpe_simple(data, 400)
    assert BPETokenizer.train(TEXT, 300).merges == BPETokenizer.train(TEXT, 300, simple=True).merges


def test_merges_stop_when_nothing_is_left_to_merge():
    merges = train_bpe(b"abab", 1000)
    assert BPETokenizer(merges).encode_bytes(b"abab") == [257]         # ab, then abab
    assert len(merges) == 2


def test_save_load_is_json(tok, tmp_path):
    tok.save(tmp_path / "tok.json")
    state = json.loads((tmp_path / "tok.json").read_text())
    assert state["kind"] == "bpe" and len(state["merges"]) == len(tok.merges)
    again = BPETokenizer.load(tmp_path / "tok.json")
    assert again.encode(TEXT) == tok.encode(TEXT)
    assert tokenizer_from_state(tok.state()).merges == tok.merges


def test_bad_input(tok):
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe(b"abc", 100)
    with pytest.raises(ValueError, match="outside"):
        tok.decode([0, tok.vocab_size])
    with pytest.raises(ValueError, match="not yet defined"):
        BPETokenizer([(300, 1)])


# ------------------------------------------------------------------------ token files
def test_token_files_round_trip_as_memmaps(tmp_path):
    ids = np.arange(70000) % 65536
    write_tokens(tmp_path / "a.bin", ids, np.uint16)
    back = read_tokens(tmp_path / "a.bin", np.uint16)
    assert isinstance(back, np.memmap) and np.array_equal(back, ids)
    with pytest.raises(ValueError, match="token ids"):
        write_tokens(tmp_path / "b.bin", np.array([70000]), np.uint16)
    assert not (tmp_path / "b.bin").exists()


def test_token_file_writing_is_atomic(tmp_path):
    path = tmp_path / "train.bin"
    write_tokens(path, np.arange(10), np.uint32)
    good = path.read_bytes()
    with pytest.raises(RuntimeError, match="crash"):
        with TokenWriter(path, np.uint32) as w:
            w.write(np.arange(1000))
            raise RuntimeError("crash while writing")
    assert path.read_bytes() == good                                   # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["train.bin"]       # no temporary file left


# ------------------------------------------------------------------------ data sets
def _jsonl(tmp_path, n=40):
    rng = random.Random(0)
    words = "the cat sat on a mat and then it ran far away to see the big red dog".split()
    docs = [" ".join(rng.choice(words) for _ in range(rng.randrange(5, 30))).capitalize() + "."
            for _ in range(n)]
    path = tmp_path / "stories.jsonl"
    path.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(docs)))
    return path, docs


def test_online_loader_on_a_local_jsonl_file(tmp_path):
    path, docs = _jsonl(tmp_path)
    out = prepare_dataset(str(path), tmp_path / "tok", vocab_size=300, use_datasets=False)
    ds = load_dataset(str(out))
    assert isinstance(ds, MemmapDataset) and ds.meta["documents"] == 40
    eot = ds.tokenizer.eot_id
    val_docs = ds.tokenizer.decode_bytes(ds.val).split(b"<|endoftext|>")[:-1]
    assert [d.decode() for d in val_docs] == docs[9::10]               # every 10th document
    assert int((np.asarray(ds.train) == eot).sum()) == 36 and ds.train.dtype == np.uint16
    assert ds.tokenizer.decode(ds.train[: len(ds.tokenizer.encode(docs[0]))]) == docs[0]
    assert set(p.name for p in out.iterdir()) == {"train.bin", "val.bin", "tokenizer.json", "meta.json"}


def test_online_loader_text_file_and_bad_sources(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT * 10)
    ds = load_dataset(str(prepare_dataset(str(tmp_path / "a.txt"), tmp_path / "t", vocab_size=280,
                                          use_datasets=False)))
    assert abs(len(ds.val) / (len(ds.train) + len(ds.val)) - 0.1) < 0.01   # one document: 90/10 split
    assert ds.tokenizer.decode(np.concatenate([ds.train, ds.val]))[:-len(D.EOT)] == TEXT * 10
    with pytest.raises(ValueError, match="source"):
        list(D.iter_documents("no-such-dataset"))
    with pytest.raises(RuntimeError, match="datasets"):
        list(D.iter_documents("tinystories", use_datasets=False))
    with pytest.raises(ValueError, match="text_field"):
        list(D.iter_documents(str(_jsonl(tmp_path)[0]), text_field="body", use_datasets=False))
    with pytest.raises(ValueError, match="meta.json"):
        load_dataset(str(tmp_path))


@pytest.mark.skipif(not importlib.util.find_spec("datasets"), reason="`datasets` not installed")
def test_online_loader_through_datasets_matches_plain_python(tmp_path):
    path, _ = _jsonl(tmp_path)
    a = load_dataset(str(prepare_dataset(str(path), tmp_path / "a", vocab_size=300, use_datasets=True)))
    b = load_dataset(str(prepare_dataset(str(path), tmp_path / "b", vocab_size=300, use_datasets=False)))
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)


def test_bpe_tokenizer_option_names():
    with pytest.raises(ValueError, match="tokenizer"):
        load_dataset("shakespeare", "bpe:abc")
    with pytest.raises(ValueError, match="tokenizer"):
        load_dataset("shakespeare", "words")
