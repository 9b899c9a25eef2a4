"""torch.compile of the training step on CPU, with the real inductor backend: the dense and the
mini-V3 step each trace as one graph (no graph break) plus one eval graph, nothing recompiles during
training (not even when the MTP weight lambda switches), and compiled training computes what eager
training computes. Fused AdamW (used by compiled runs) agrees with the default AdamW.
Nothing here is timed: speed is `python -m minids bench baseline` / `bench profile`."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import minids.train as T
from minids.config import TrainConfig, get_preset
from minids.data import CharTokenizer, TokenDataset
from minids.model import MiniDeepSeek

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16)
CONFIGS = {
    "dense": get_preset("baseline", **TINY, intermediate_size=64),
    "mini-v3": get_preset("mini-v3", **TINY, intermediate_size=48, moe_intermediate_size=16),
}


def dataset(n=5000, seed=0):
    rng = np.random.default_rng(seed)
    ids = (np.arange(n) + (rng.random(n) < 0.1) * rng.integers(0, 20, n)) % 20
    return TokenDataset(ids.astype(np.uint16), CharTokenizer("abcdefghijklmnopqrst"))


def train_config(**kw):
    base = dict(batch_size=4, block_size=16, max_iters=12, warmup_iters=2, eval_interval=6, eval_iters=2,
                learning_rate=3e-3, progress=False, mtp_loss_weight_final=0.1, mtp_loss_switch=0.5)
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_compiled_training_step_one_graph_no_recompiles(name):
    """Graph breaks, graphs and compiled frames, counted by torch._dynamo over a whole run: the
    warm-up compiles the training graph (forward + backward) and the eval graph; then 12 steps,
    two evals and a lambda switch (0.3 -> 0.1 at step 6) compile nothing more."""
    ds = dataset()
    eager = T.train(CONFIGS[name], train_config(), dataset=ds)
    torch._dynamo.reset()
    counters.clear()
    res = T.train(CONFIGS[name], train_config(compile=True), dataset=ds)
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert counters["stats"]["unique_graphs"] == 2                  # training, eval
    assert counters["frames"]["total"] == 2                           # no recompilation
    assert res.compile_s > 0
    # the same training, up to float rounding (fused AdamW, fused kernels, lambda added outside)
    for a, b in zip(res.evals, eager.evals, strict=True):
        assert abs(a["val"] - b["val"]) < 2e-3, (a, b)
    torch._dynamo.reset()


def test_fused_adamw_agrees_with_default_adamw():
    torch.manual_seed(0)
    cfg = CONFIGS["mini-v3"].replace(vocab_size=20)
    a, b = MiniDeepSeek(cfg), MiniDeepSeek(cfg)
    b.load_state_dict(a.state_dict())
    opts = [T.make_optimizer(m, train_config(compile=c)) for m, c in ((a, False), (b, True))]
    assert not opts[0].defaults["fused"] and opts[1].defaults["fused"]
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randint(0, 20, (2, 16), generator=g)
        for m, opt in zip((a, b), opts, strict=True):
            m(x, x).loss.backward()
            opt.step()
            opt.zero_grad()
    worst = max((pa - pb).abs().max().item() / pa.abs().max().item()
                for pa, pb in zip(a.parameters(), b.parameters(), strict=True))
    assert 0 < worst < 1e-5, worst                         # not bitwise, but float rounding apart


def test_fused_adamw_policy():
    assert not T.use_fused_adamw(TrainConfig())                       # eager CPU: the exact default
    assert T.use_fused_adamw(TrainConfig(compile=True))
    assert T.use_fused_adamw(TrainConfig(device="cuda"))
    assert not T.use_fused_adamw(TrainConfig(device="cuda", fsdp=True))


def test_compiled_runs_keep_the_traced_lambda_and_add_the_difference():
    model = MiniDeepSeek(CONFIGS["mini-v3"].replace(vocab_size=20))
    model.mtp_loss_weight = 0.3
    out = SimpleNamespace(loss=torch.tensor(2.0 + 0.3 * 1.5), mtp_loss=torch.tensor(1.5))
    T.set_mtp_weight(model, 0.1, compiled=True)
    assert model.mtp_loss_weight == 0.3                                # no new constant: no recompile
    assert T.step_loss(out, model, 0.1).item() == pytest.approx(2.0 + 0.1 * 1.5)
    T.set_mtp_weight(model, 0.0, compiled=True)                       # 0 drops a loss term: passed on
    assert model.mtp_loss_weight == 0.0
    T.set_mtp_weight(model, 0.1, compiled=False)                      # eager: always the attribute
    assert model.mtp_loss_weight == 0.1 and T.step_loss(out, model, 0.1) is out.loss
    dense = MiniDeepSeek(CONFIGS["dense"].replace(vocab_size=20))
    before = dense.mtp_loss_weight
    T.set_mtp_weight(dense, 0.1, compiled=False)                      # no MTP module: never read
    assert dense.mtp_loss_weight == before
