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
    # metrics.jsonl was cut back to the checkpoint's step on resume: steps 10-15 are not recorded twice
    assert metric_lines(tmp_path / "b") == metric_lines(tmp_path / "a")


def test_resume_follows_the_new_weight_decay_and_betas(tmp_path, monkeypatch):
    """Loading the optimizer's state loads its groups' settings too; a resumed run must follow the
    TrainConfig it was given (--weight-decay/--beta1/--beta2 with --resume), not the checkpoint's."""
    model = MiniDeepSeek(small_cfg())
    old = T.make_optimizer(model, tc(weight_decay=0.5, beta1=0.8, beta2=0.9))
    opt = T.make_optimizer(model, tc())
    opt.load_state_dict(old.state_dict())
    assert opt.param_groups[0]["weight_decay"] == 0.5                  # what the checkpoint held
    T.apply_settings(opt, tc(weight_decay=0.0, beta1=0.85, beta2=0.95))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.0]
    assert all(g["betas"] == (0.85, 0.95) for g in opt.param_groups)
    ds = synthetic_dataset()                                          # and train() applies it on resume
    T.train(small_cfg(), tc(tmp_path, max_iters=2, weight_decay=0.1), dataset=ds)
    seen = []
    real = T.apply_settings

    def spy(optimizer, c):
        real(optimizer, c)
        seen.append([g["weight_decay"] for g in optimizer.param_groups])

    monkeypatch.setattr(T, "apply_settings", spy)
    T.train(small_cfg(), tc(tmp_path, max_iters=3, weight_decay=0.3), dataset=ds, resume=True)
    assert seen == [[0.3, 0.0]]


def test_seed_outside_the_range_is_one_clear_error():
    with pytest.raises(ValueError, match=r"seed=1180591620717411303424 must be an integer in \[0, 4294967295\]"):
        tc(seed=2**70)


def metric_lines(folder):
    """metrics.jsonl's records without the timings (tokens/s differs from run to run)."""
    recs = [json.loads(s) for s in (folder / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in recs]


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


# ------------------------------------------------------------------------ divergence
def strict_json_lines(path):
    def refuse(c):
        raise ValueError(f"{c} is not strict JSON")
    return [json.loads(s, parse_constant=refuse) for s in path.read_text().splitlines()]


def test_divergence_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """A run that goes NaN (here: an lr schedule that returns NaN from step 8, so step 9's loss is
    NaN) stops at the next logged step with TrainingDiverged; the checkpoint of step 6 is left as it
    was, byte for byte; metrics.jsonl stays strict JSON (NaN written as null)."""
    ds = synthetic_dataset()
    T.train(small_cfg(), tc(tmp_path, max_iters=6), dataset=ds)
    good = (tmp_path / C.CHECKPOINT).read_bytes()
    real = T.lr_at
    monkeypatch.setattr(T, "lr_at", lambda it, c: real(it, c) if it < 8 else float("nan"))
    with pytest.raises(T.TrainingDiverged, match=r"NaN/inf at step 9 .*from step 6 and was left as it is") as e:
        T.train(small_cfg(), tc(tmp_path, max_iters=20), dataset=ds, resume=True)
    assert (e.value.step, e.value.checkpoint_step) == (9, 6)
    assert (tmp_path / C.CHECKPOINT).read_bytes() == good
    recs = strict_json_lines(tmp_path / "metrics.jsonl")
    assert recs[-1]["iter"] == 9 and recs[-1]["main_loss"] is None          # the bad step, as null


def test_divergence_from_the_first_step_writes_no_checkpoint(tmp_path):
    """Weights initialised at 1e30 overflow at once. Without clipping (grad_clip=0) and with logging
    only every 100 steps, the checkpoint step (every step) is where it is noticed."""
    with pytest.raises(T.TrainingDiverged, match="at step 0 .*this run wrote no checkpoint"):
        T.train(small_cfg(initializer_range=1e30), tc(tmp_path, grad_clip=0.0, log_interval=100,
                                                      checkpoint_interval=1), dataset=synthetic_dataset())
    assert not (tmp_path / C.CHECKPOINT).exists()


def test_weights_that_overflow_with_a_finite_loss_are_not_saved(tmp_path, monkeypatch):
    """The loss and gradients of the last step were finite, but its update left an inf weight: the
    checkpoint write refuses (naming the tensor) and the run stops. With checkpoints every step, a
    NaN update is caught the same way: the checkpoint of the step before it is the one kept."""
    real = torch.optim.AdamW.step

    def step(self, *a, **k):
        out = real(self, *a, **k)
        with torch.no_grad():
            self.param_groups[0]["params"][0].fill_(float("inf"))
        return out
    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    with pytest.raises(T.TrainingDiverged, match=r"after step 0: refusing to write .*model\.embed_tokens\.weight"):
        T.train(small_cfg(), tc(tmp_path, max_iters=1), dataset=synthetic_dataset())
    assert not (tmp_path / C.CHECKPOINT).exists()


def test_a_nan_update_with_checkpoints_every_step_keeps_the_one_before(tmp_path, monkeypatch):
    ds = synthetic_dataset()
    real = T.lr_at
    monkeypatch.setattr(T, "lr_at", lambda it, c: real(it, c) if it != 4 else float("nan"))
    with pytest.raises(T.TrainingDiverged, match=r"after step 4: refusing to write .*is from step 4 and was left"):
        T.train(small_cfg(), tc(tmp_path, max_iters=20, checkpoint_interval=1, log_interval=100), dataset=ds)
    assert C.read_checkpoint(tmp_path / C.CHECKPOINT)[1]["iter"] == 4


def test_metrics_are_strict_json():
    assert T.json_record({"a": float("nan"), "b": [1.0, float("inf")], "c": {"d": -float("inf")}, "e": 2}) == \
        '{"a": null, "b": [1.0, null], "c": {"d": null}, "e": 2}'


# ------------------------------------------------------------------------ out_dir
def test_a_second_run_into_the_same_out_dir_is_refused(tmp_path):
    ds = synthetic_dataset()
    T.train(small_cfg(), tc(tmp_path, max_iters=3), dataset=ds)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ValueError, match=r"already holds a run \(ckpt.safetensors, metrics.jsonl\).*--resume.*--overw"):
        T.train(small_cfg(), tc(tmp_path, max_iters=3, seed=7), dataset=ds)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with pytest.raises(ValueError, match="choose one"):
        T.train(small_cfg(), tc(tmp_path, max_iters=3), dataset=ds, resume=True, overwrite=True)


def test_overwrite_replaces_the_run(tmp_path):
    ds = synthetic_dataset()
    T.train(small_cfg(), tc(tmp_path, max_iters=5), dataset=ds)
    res = T.train(small_cfg(), tc(tmp_path, max_iters=3, seed=7), dataset=ds, overwrite=True)
    recs = strict_json_lines(tmp_path / "metrics.jsonl")
    assert [r["iter"] for r in recs if not r.get("eval")] == [0, 1, 2]            # only the new run's records
    model, _, meta = C.load_model(tmp_path / C.CHECKPOINT)
    assert meta["iter"] == 3 and all(torch.equal(v, res.model.state_dict()[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("out_dir, words", [("", "must name a folder"), ("afile", "is a file")])
def test_bad_out_dir(tmp_path, out_dir, words):
    (tmp_path / "afile").write_text("x")
    path = str(tmp_path / out_dir) if out_dir else ""
    with pytest.raises(ValueError, match=words):
        T.train(small_cfg(), tc(max_iters=2).replace(out_dir=path), dataset=synthetic_dataset())


# ------------------------------------------------------------------------ device and memory
@pytest.mark.parametrize("device", ["tpu", "cuda:abc", "gpu", ""])
def test_unknown_device(device):
    with pytest.raises(ValueError, match="device="):
        T.train(small_cfg(), tc(device=device), dataset=synthetic_dataset())


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is there")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu(device):
    with pytest.raises(ValueError, match=rf"device='{device}', but (this torch is built for the CPU only|torch sees)"):
        T.train(small_cfg(), tc(device=device), dataset=synthetic_dataset())


def test_a_batch_too_large_to_allocate_is_one_clear_error():
    with pytest.raises(T.TrainingOutOfMemory, match=r"out of memory on cpu .*batch_size=1000000000000 x block_size=16"):
        T.train(small_cfg(), tc(batch_size=10**12), dataset=synthetic_dataset())
    with pytest.raises(ValueError, match=r"batch_size=10{30} x world_size=1 windows"):
        T.train(small_cfg(), tc(batch_size=10**30), dataset=synthetic_dataset())


def test_plan_line():
    line = T.plan_line(small_cfg(), tc(max_iters=10**15, out_dir="runs/a"), world_size=2)
    assert "1,000,000,000,000,000 steps x 128 tokens = 128,000,000,000,000,000 tokens (1.28e+17)" in line
    assert "into runs/a/" in line


def test_a_run_into_a_folder_another_run_is_using_is_refused(tmp_path):
    """Two runs started at once into one out_dir: the second finds the first's lock (the system
    drops it when the first process ends, even killed) and writes nothing."""
    pytest.importorskip("fcntl")
    with T.lock_folder(tmp_path):
        with pytest.raises(ValueError, match="in use by another training run"):
            T.train(small_cfg(), tc(tmp_path), dataset=synthetic_dataset())
    assert sorted(p.name for p in tmp_path.iterdir()) == [T.LOCK]
    T.train(small_cfg(), tc(tmp_path, max_iters=2), dataset=synthetic_dataset())     # free again after


def test_resuming_a_finished_run_trains_nothing_and_reports_no_speed(tmp_path):
    ds = synthetic_dataset()
    T.train(small_cfg(), tc(tmp_path, max_iters=3), dataset=ds)
    res = T.train(small_cfg(), tc(tmp_path, max_iters=2), dataset=ds, resume=True)
    assert (res.start_iter, res.tokens_per_s, res.history) == (3, 0.0, [])
