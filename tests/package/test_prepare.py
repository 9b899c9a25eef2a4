"""`python -m minids prepare`: local files through Hugging Face `datasets` (offline: its json, text and
parquet builders read local files), tokenized by the Rust `tokenizers` library into the course's ids
(minids.data.fastbpe), the errors that name the file or the field, and the CLI. Nothing is downloaded."""

import importlib.util
import json
import os

import numpy as np
import pytest

from minids.__main__ import main as cli
from minids.data import BPETokenizer, load_dataset, prepare_dataset, pretokenize, train_bpe
from minids.data import fastbpe as FB
from minids.data.prepare import iter_documents

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")        # local files only, whatever the network
HAS_TOKENIZERS = importlib.util.find_spec("tokenizers") is not None
HAS_DATASETS = importlib.util.find_spec("datasets") is not None
needs_tokenizers = pytest.mark.skipif(not HAS_TOKENIZERS, reason="`tokenizers` not installed (the data extra)")
needs_datasets = pytest.mark.skipif(not HAS_DATASETS, reason="`datasets` not installed (the data extra)")

# text with the cases where two chunkers could disagree: contractions, runs of spaces before a word
# and at the end, tabs, CR, form feed, digits glued to letters, punctuation runs, non-ASCII, emoji
TRICKY = ("It's  they'll\tgo;  we'd\r\n\n  3rd-rate 2024!!...  naïve café — 日本語 🙂\x0b\x0c  end  \n\n"
          "KING:\n  Now?\n\n\n  O!  ") * 3
CORPUS = ("To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n"
          "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n") * 40 + TRICKY


def _docs(n=60):
    rng = np.random.default_rng(0)
    words = "the cat sat on a mat and then it ran far away to see the big red dog naïve café".split()
    return [" ".join(rng.choice(words, rng.integers(5, 40))).capitalize() + f". ({i})" for i in range(n)]


def _jsonl(path, docs, field="text"):
    path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    return path


# ------------------------------------------------------------------ the fast BPE agrees with the course's
@needs_tokenizers
@pytest.mark.parametrize("text", [CORPUS, TRICKY, "a", "aaaaaaaa bbbb aaaa", "\n\n\n   \t"])
def test_chunks_are_the_course_chunks(text):
    assert FB.pretokenize(text) == pretokenize(text.encode())


@needs_tokenizers
def test_safe_cuts_keep_the_chunks():
    s = FB.as_latin1(CORPUS * 20)
    parts = FB.pieces(s, size=500)
    assert len(parts) > 10 and "".join(parts) == s
    assert [c for p in parts for c in FB.pretokenize(p.encode("latin-1"))] == pretokenize(s.encode("latin-1"))


@needs_tokenizers
@pytest.mark.parametrize("vocab", [257, 300, 700])
def test_tokenizers_learns_the_course_merges_and_encodes_to_the_same_ids(vocab):
    data = CORPUS.encode()
    merges = FB.train_bpe_fast(CORPUS, vocab)
    assert merges == train_bpe(data, vocab)
    course, fast = BPETokenizer(merges), FB.FastBPE(merges)
    texts = [CORPUS, TRICKY, "", "x", "unseen: Ωμέγα ∑ 🚀 \x00\x01"]
    assert fast.encode_batch(texts) == [course.encode(t) for t in texts]
    assert course.decode(fast.encode(TRICKY)) == TRICKY


@needs_tokenizers
def test_two_merges_making_one_token_fall_back_to_the_course_encoder():
    # ('a','b') -> ab, ('b','c') -> bc, ('ab','c') -> abc, ('a','bc') -> abc again: two ids for b"abc"
    merges = [(97, 98), (98, 99), (256, 99), (97, 257)]
    with pytest.raises(ValueError, match="same token"):
        FB.FastBPE(merges)


# ------------------------------------------------------------------ datasets on local files
@needs_datasets
@pytest.mark.parametrize("kind", ["jsonl", "parquet", "folder"])
def test_prepare_through_datasets_offline_equals_plain_python(tmp_path, kind):
    docs = _docs()
    plain = _jsonl(tmp_path / "plain.jsonl", docs)
    if kind == "jsonl":
        src = plain
    elif kind == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        src = tmp_path / "docs.parquet"
        pq.write_table(pa.table({"text": docs, "id": list(range(len(docs)))}), src)
    else:                                           # a folder of shards, read in name order
        src = tmp_path / "shards"
        src.mkdir()
        _jsonl(src / "part-000.jsonl", docs[:25])
        _jsonl(src / "part-001.jsonl", docs[25:])
    a = prepare_dataset(str(src), tmp_path / "a", vocab_size=300, use_datasets=True)
    b = prepare_dataset(str(plain), tmp_path / "b", vocab_size=300, use_datasets=False, engine="course")
    da, db = load_dataset(str(a)), load_dataset(str(b))
    assert np.array_equal(da.train, db.train) and np.array_equal(da.val, db.val)
    assert da.tokenizer.merges == db.tokenizer.merges
    meta = json.loads((a / "meta.json").read_text())
    assert meta["documents"] == 60 and meta["bytes"] == sum(len(d.encode()) for d in docs)
    assert meta["engine"].startswith("tokenizers" if HAS_TOKENIZERS else "minids")
    assert da.tokenizer.decode(da.val).split("<|endoftext|>")[:-1] == docs[9::10]


@needs_datasets
def test_text_file_is_one_document_through_datasets(tmp_path):
    (tmp_path / "a.txt").write_text(CORPUS, encoding="utf-8")
    a = load_dataset(str(prepare_dataset(str(tmp_path / "a.txt"), tmp_path / "a", vocab_size=280, use_datasets=True)))
    b = load_dataset(str(prepare_dataset(str(tmp_path / "a.txt"), tmp_path / "b", vocab_size=280,
                                         use_datasets=False, engine="course")))
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val) and a.meta["documents"] == 1
    # read as text: "\r\n" becomes "\n" on both paths (universal newlines)
    assert a.tokenizer.decode(np.concatenate([a.train, a.val]))[:-len("<|endoftext|>")] == CORPUS.replace("\r\n", "\n")


def test_max_tokens_and_max_docs_stop_reading(tmp_path):
    src = _jsonl(tmp_path / "d.jsonl", _docs(200))
    m = json.loads((prepare_dataset(str(src), tmp_path / "a", vocab_size=300, use_datasets=False, max_tokens=500)
                    / "meta.json").read_text())
    assert 500 <= m["train_tokens"] < 700 and m["documents"] < 200
    m = json.loads((prepare_dataset(str(src), tmp_path / "b", vocab_size=300, use_datasets=False, max_docs=30)
                    / "meta.json").read_text())
    assert m["documents"] == 30


# ------------------------------------------------------------------ errors name the file and the field
@pytest.mark.parametrize("use_datasets", [False, pytest.param(True, marks=needs_datasets)])
def test_errors_name_the_file_and_the_field(tmp_path, use_datasets):
    good = _jsonl(tmp_path / "good.jsonl", _docs(5))
    missing = r"text_field='body' is not a column of .*good\.jsonl.*columns: \['id', 'text'\]"
    with pytest.raises(ValueError, match=missing):
        list(iter_documents(str(good), text_field="body", use_datasets=use_datasets))
    bad_type = tmp_path / "num.jsonl"
    bad_type.write_text('{"text": "ok"}\n{"text": 42}\n')
    with pytest.raises(ValueError, match=r"num\.jsonl, row 1: field 'text' holds int, not text"):
        list(iter_documents(str(bad_type), use_datasets=use_datasets))


def test_errors_without_datasets(tmp_path):
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "fine"}\n{"text": "unterminated\n')
    with pytest.raises(ValueError, match=r"broken\.jsonl, line 2: not valid JSON"):
        list(iter_documents(str(broken), use_datasets=False))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="folder without"):
        list(iter_documents(str(tmp_path / "empty"), use_datasets=False))
    (tmp_path / "mixed").mkdir()
    _jsonl(tmp_path / "mixed" / "a.jsonl", ["x"])
    (tmp_path / "mixed" / "b.txt").write_text("y")
    with pytest.raises(ValueError, match="mixes file kinds"):
        list(iter_documents(str(tmp_path / "mixed"), use_datasets=False))
    with pytest.raises(ValueError, match="source='nope.jsonl'"):
        list(iter_documents("nope.jsonl", use_datasets=False))
    with pytest.raises(RuntimeError, match="datasets"):
        list(iter_documents("tinystories", use_datasets=False))
    src = _jsonl(tmp_path / "d.jsonl", _docs(5))
    with pytest.raises(ValueError, match="engine='rust'"):
        prepare_dataset(str(src), tmp_path / "o", vocab_size=300, engine="rust")
    with pytest.raises(ValueError, match="val_every=1"):
        prepare_dataset(str(src), tmp_path / "o", vocab_size=300, val_every=1)
    (tmp_path / "blank.jsonl").write_text('{"text": ""}\n')
    with pytest.raises(ValueError, match="no text"):
        prepare_dataset(str(tmp_path / "blank.jsonl"), tmp_path / "o", vocab_size=300, use_datasets=False)


# ------------------------------------------------------------------ the command line
def test_cli_prepares_a_folder_training_reads(tmp_path, capsys):
    src = _jsonl(tmp_path / "d.jsonl", _docs(40))
    cli(["prepare", str(src), str(tmp_path / "tok"), "--vocab-size", "300", "--no-datasets"])
    out = capsys.readouterr().out
    assert "wrote" in out and '"documents": 40' in out
    ds = load_dataset(str(tmp_path / "tok"))
    assert ds.tokenizer.vocab_size == 300 and len(ds.val) > 0
    with pytest.raises(SystemExit, match="error: .*text_field='body'"):
        cli(["prepare", str(src), str(tmp_path / "x"), "--text-field", "body", "--no-datasets"])
    with pytest.raises(SystemExit, match="error: .*needs `pip install datasets`"):
        cli(["prepare", "fineweb-edu", str(tmp_path / "y"), "--no-datasets"])
