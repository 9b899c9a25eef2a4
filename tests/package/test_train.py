import json

import numpy as np
import pytest
import torch

import minids.checkpoint as C
import minids.train as T
from minids.config import TrainConfig, get_preset
from minids.data import CharTokenizer, TokenDataset
from minids.model import MiniDeepSeek


def small_cfg(**kw):
    base = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=16)
    return get_preset("baseline", **{**base, **kw})


def synthetic_dataset(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    # a learnable pattern: mostly "counting" mod 20 with some noise
    ids = (np.arange(n) + (rng.random(n) < 0.1) * rng.integers(0, 20, n)) % 20
    return TokenDataset(ids.astype(np.uint16), CharTokenizer("abcdefghijklmnopqrst"))


def tc(tmp_path=None, **kw):
    base = dict(batch_size=4, block_size=16, max_iters=20, warmup_iters=2, eval_interval=10,
                eval_iters=2, log_interval=1, progress=False, out_dir=str(tmp_path) if tmp_path else None)
    return TrainConfig(**{**base, **kw})


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_lr_schedule():
    c = TrainConfig(max_iters=1000, warmup_iters=100, learning_rate=1e-3, min_lr=1e-4)
    assert T.lr_at(0, c) < T.lr_at(50, c) < T.lr_at(99, c) <= 1e-3
    assert abs(T.lr_at(100, c) - 1e-3) < 1e-12
    assert abs(T.lr_at(550, c) - 5.5e-4) < 1e-9           # halfway down the cosine
    assert abs(T.lr_at(1000, c) - 1e-4) < 1e-12 and T.lr_at(5000, c) == 1e-4


def test_training_reduces_loss_and_writes_metrics(tmp_path):
    res = T.train(small_cfg(), tc(tmp_path, max_iters=40, learning_rate=3e-3), dataset=synthetic_dataset())
    assert res.evals[-1]["val"] < res.evals[0]["val"] - 0.3
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("eval") for r in lines) and all("iter" in r for r in lines)
    assert (tmp_path / C.CHECKPOINT).exists()


def test_resume_equals_uninterrupted_run(tmp_path):
    ds = synthetic_dataset()
    full = T.train(small_cfg(dropout=0.1), tc(tmp_path / "a"), dataset=ds)

    class Crash(Exception):
        pass

    def crash_at_15(it, rec):
        if it == 15:
            raise Crash

    with pytest.raises(Crash):
        T.train(small_cfg(dropout=0.1), tc(tmp_path / "b", checkpoint_interval=10), dataset=ds,
                callback=crash_at_15)
    resumed = T.train(small_cfg(dropout=0.1), tc(tmp_path / "b", checkpoint_interval=10), dataset=ds,
                      resume=True)
    a, b = weights(full.model), weights(resumed.model)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert [r["main_loss"] for r in full.history if r["iter"] >= 10 and "main_loss" in r] == \
           [r["main_loss"] for r in resumed.history if "main_loss" in r]


def test_grad_accumulation_equals_big_batch():
    ds = synthetic_dataset()
    big = T.train(small_cfg(), tc(batch_size=8, max_iters=3), dataset=ds)
    acc = T.train(small_cfg(), tc(batch_size=4, grad_accum_steps=2, max_iters=3), dataset=ds)
    for k, v in weights(big.model).items():
        torch.testing.assert_close(weights(acc.model)[k], v, atol=2e-6, rtol=1e-5, msg=k)


def test_checkpoint_round_trip_restores_weights_and_tokenizer(tmp_path):
    res = T.train(small_cfg(), tc(tmp_path, max_iters=5), dataset=synthetic_dataset())
    model, tok, meta = C.load_model(tmp_path / C.CHECKPOINT)
    for k, v in weights(res.model).items():
        assert torch.equal(model.state_dict()[k], v), k
    assert tok.chars == res.tokenizer.chars and meta["iter"] == 5


def test_crash_during_checkpoint_write_keeps_the_last_good_one(tmp_path, monkeypatch):
    model = MiniDeepSeek(small_cfg(vocab_size=20))
    path = tmp_path / C.CHECKPOINT
    C.save_checkpoint(path, model, meta={"iter": 1})
    good = path.read_bytes()

    def half_write(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 100)
        raise OSError("disk full")

    monkeypatch.setattr(C, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        C.save_checkpoint(path, model, meta={"iter": 2})
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == [C.CHECKPOINT]       # no temp file left behind


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    model = MiniDeepSeek(small_cfg(vocab_size=20))
    path = tmp_path / C.CHECKPOINT
    C.save_checkpoint(path, model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        C.load_model(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="truncated or corrupt"):
        C.load_model(path)


def test_checkpoint_from_another_config_is_a_clear_error(tmp_path):
    ds = synthetic_dataset()
    T.train(small_cfg(), tc(tmp_path, max_iters=2), dataset=ds)
    with pytest.raises(ValueError, match="another config"):
        T.train(small_cfg(hidden_size=64), tc(tmp_path, max_iters=4), dataset=ds, resume=True)
    tensors, _ = C.read_checkpoint(tmp_path / C.CHECKPOINT)
    with pytest.raises(ValueError, match="another config"):
        C.load_weights(MiniDeepSeek(small_cfg(vocab_size=20, num_hidden_layers=3)), tensors)


def test_checkpoint_is_safetensors_not_pickle(tmp_path):
    model = MiniDeepSeek(small_cfg(vocab_size=20))
    C.save_checkpoint(tmp_path / "c.safetensors", model)
    raw = (tmp_path / "c.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + header_len])
    assert "__metadata__" in header and b"\x80\x04" not in raw[:2]        # no pickle protocol header


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        T.train(small_cfg(), tc(tmp_path), dataset=synthetic_dataset(), resume=True)


def test_block_size_longer_than_context():
    with pytest.raises(ValueError, match="block_size"):
        T.train(small_cfg(), tc(block_size=32), dataset=synthetic_dataset())


def test_autocast_is_off_on_cpu():
    res = T.train(small_cfg(), tc(max_iters=2, dtype="bfloat16"), dataset=synthetic_dataset())
    assert all(p.dtype == torch.float32 for p in res.model.parameters())
