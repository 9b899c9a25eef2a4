"""Multi-Token Prediction (V3 eqs 21-25): targets and masks at sequence ends, causality, the
shared embedding and head, lambda = 0 leaves training untouched, the loss weighting."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from minids.config import ModelConfig, TrainConfig, get_preset
from minids.data import CharTokenizer, TokenDataset
from minids.model import MiniDeepSeek
from minids.mtp import MTPModule, mtp_forward, mtp_losses
from minids.train import mtp_weight_at, train

V = 23


def small(**kw):
    base = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=32, num_nextn_predict_layers=2)
    return ModelConfig(**{**base, **kw})


def small_moe(**kw):
    return get_preset("mini-v3", vocab_size=V, hidden_size=32, num_hidden_layers=2,
                      max_position_embeddings=32, **kw)


def transcribed_mtp_losses(model, x, y):
    """Eqs 21-24 written out position by position (1-based as in the paper): the model reads
    t_1 .. t_T = x, and y holds the targets t_2 .. t_{T+1} (-1 = not scored). Depth k at
    position i combines h_i^{k-1} with Emb(t_{i+k}) and is scored on t_{i+k+1}."""
    B, T = x.shape
    t = lambda b, i: int(x[b, i - 1]) if i <= T else int(y[b, T - 1])  # noqa: E731  input t_i
    target = lambda b, i: int(y[b, i - 2])                   # noqa: E731  t_i as a target
    h = {0: model(x).hidden}                                 # h^0_i at [:, i-1]
    out = []
    for k in range(1, len(model.mtp) + 1):
        m = model.mtp[k - 1]
        n = T - k                                            # eq 22: positions 1 .. T-k
        if n <= 0:
            break
        rows = []
        for i in range(1, n + 1):
            emb = model.embed_tokens.weight[[t(b, i + k) for b in range(B)]]           # Emb(t_{i+k})
            rows.append(m.eh_proj(torch.cat([m.enorm(emb), m.hnorm(h[k - 1][:, i - 1])], -1)))  # eq 21
        h[k] = m.block(torch.stack(rows, 1), model.freqs_cis[:n])                       # eq 22
        nll, count = 0.0, 0
        for b in range(B):
            for i in range(1, n + 1):
                tgt = target(b, i + k + 1)                   # P^k_{i+k+1} is scored on t_{i+k+1}
                if tgt < 0:
                    continue
                logp = F.log_softmax(model.lm_head(m.norm(h[k][b, i - 1])), -1)        # eq 23
                nll, count = nll - logp[tgt], count + 1
        out.append(nll / count)                              # eq 24 (mean over the scored terms)
    return out


@pytest.mark.parametrize("make", [small, small_moe])
def test_mtp_losses_match_a_per_position_transcription(make):
    model = MiniDeepSeek(make() if make is small else make(num_nextn_predict_layers=2)).eval()
    tokens = torch.randint(0, V, (3, 11))
    x, y = tokens[:, :-1], tokens[:, 1:]
    y_ignored = y.clone()
    y_ignored[0, -1] = -1                                    # an ignored target at the very end
    y_ignored[2, 4] = -1
    for targets in (y, y_ignored):
        got = mtp_losses(model, model(x).hidden, x, targets)
        exp = transcribed_mtp_losses(model, x, targets)
        assert len(got) == len(exp) == 2
        for g, e in zip(got, exp, strict=True):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_depths_with_no_positions_left_are_dropped():
    model = MiniDeepSeek(small(num_nextn_predict_layers=3)).eval()
    for T, n_losses in [(1, 0), (2, 1), (3, 2), (4, 3), (9, 3)]:
        x = torch.randint(0, V, (2, T))
        y = torch.randint(0, V, (2, T))
        out = model(x, y)
        assert len(out.mtp_losses) == n_losses, T
        if n_losses == 0:
            assert out.mtp_loss is None and torch.equal(out.loss, out.main_loss)
    # T = k + 1: depth k has exactly one position: it reads t_k (idx[:, k]) and scores y[:, k]
    x, y = torch.randint(0, V, (1, 3)), torch.randint(0, V, (1, 3))
    h1, logits1 = mtp_forward(model, 1, model(x).hidden[:, :2], x[:, 1:])
    _, logits2 = mtp_forward(model, 2, h1[:, :1], x[:, 2:])
    torch.testing.assert_close(mtp_losses(model, model(x).hidden, x, y)[1],
                               F.cross_entropy(logits2[0], y[0, 2:]))


def test_depth_k_never_sees_tokens_after_t_i_plus_k():
    model = MiniDeepSeek(small()).eval()
    x = torch.randint(0, V, (1, 12))

    def depth_logits(x):
        h, res = model(x).hidden, []
        for k in (1, 2):
            n = x.size(1) - k
            h, logits = mtp_forward(model, k, h[:, :n], x[:, k:])
            res.append(logits)
        return res

    base = depth_logits(x)
    j = 7
    x2 = x.clone()
    x2[0, j] = (x2[0, j] + 1) % V
    changed = depth_logits(x2)
    for k, (a, b) in enumerate(zip(base, changed, strict=True), start=1):
        # depth k at position i reads t_0 .. t_{i+k}: positions i < j - k cannot change
        torch.testing.assert_close(a[:, :j - k], b[:, :j - k])
        assert not torch.allclose(a[:, j - k], b[:, j - k])


def test_mtp_shares_embedding_and_head_no_copies():
    cfg = small(num_nextn_predict_layers=2)
    model = MiniDeepSeek(cfg)
    base = MiniDeepSeek(cfg.replace(num_nextn_predict_layers=0))
    # the MTP modules own no embedding and no head: the extra parameters are exactly theirs
    per_module = [sum(p.numel() for p in m.parameters()) for m in model.mtp]
    assert model.num_params() - base.num_params() == sum(per_module)
    d = cfg.hidden_size
    block = sum(p.numel() for p in model.mtp[0].block.parameters())
    assert per_module[0] == 3 * d + 2 * d * d + block       # enorm, hnorm, norm; eh_proj; TRM_k
    assert not any(V in p.shape for p in model.mtp.parameters())
    # and they really use the main model's tensors: count calls during the MTP loss
    calls = {"embed": [], "head": []}
    model.embed_tokens.register_forward_hook(lambda m, i, o: calls["embed"].append(m.weight.data_ptr()))
    model.lm_head.register_forward_hook(lambda m, i, o: calls["head"].append(m.weight.data_ptr()))
    x, y = torch.randint(0, V, (2, 10)), torch.randint(0, V, (2, 10))
    h = model(x).hidden.detach()
    calls = {"embed": [], "head": []}
    loss = sum(mtp_losses(model, h, x, y))
    assert calls["embed"] == [model.embed_tokens.weight.data_ptr()] * 2
    assert calls["head"] == [model.lm_head.weight.data_ptr()] * 2
    loss.backward()                                          # the MTP loss trains the shared tensors
    assert model.lm_head.weight.grad.abs().sum() > 0
    rows = model.embed_tokens.weight.grad.abs().sum(-1)
    assert (rows[x[:, 1:].unique()] > 0).all()               # embedded t_{i+k}, k >= 1
    unused = torch.ones(V, dtype=torch.bool)
    unused[x[:, 1:].unique()] = False
    assert (rows[unused] == 0).all()


def test_mtp_block_is_numbered_after_the_main_layers():
    model = MiniDeepSeek(small_moe(first_k_dense_replace=2))  # both main layers dense
    assert all(type(layer.ffn).__name__ == "MLP" for layer in model.layers)
    assert type(model.mtp[0].block.ffn).__name__ == "MoE"    # layer id L >= first_k_dense_replace
    assert isinstance(model.mtp[0], MTPModule)


def test_total_loss_is_main_plus_lambda_times_mean_depth_loss():
    model = MiniDeepSeek(small(num_nextn_predict_layers=2, mtp_loss_weight=0.3))
    x, y = torch.randint(0, V, (2, 10)), torch.randint(0, V, (2, 10))
    out = model(x, y)
    torch.testing.assert_close(out.mtp_loss, (out.mtp_losses[0] + out.mtp_losses[1]) / 2)   # eq 25
    torch.testing.assert_close(out.loss, out.main_loss + 0.3 * out.mtp_loss)
    tc = TrainConfig(max_iters=100, mtp_loss_weight_final=0.1, mtp_loss_switch=0.7)
    assert [mtp_weight_at(i, tc, 0.3) for i in (0, 69, 70, 99)] == [0.3, 0.3, 0.1, 0.1]


def _tiny_dataset():
    rng = np.random.default_rng(0)
    words = ["to be", "or not", "that is", "the question", "whether", "tis nobler"]
    text = " ".join(rng.choice(words, 400)) + "\n"
    tok = CharTokenizer.from_text(text)
    return TokenDataset(np.array(tok.encode(text), dtype=np.int64), tok)


def small_moe_with_balance_loss(**kw):
    return small_moe(aux_loss_alpha=0.01, **kw)


@pytest.mark.parametrize("make", [small, small_moe, small_moe_with_balance_loss])
@pytest.mark.parametrize("clip", [0.0, 1.0])
def test_lambda_zero_trains_the_main_model_exactly_as_without_mtp(make, clip):
    """Same seed -> same main init (building the MTP modules does not shift the RNG); with
    lambda = 0 the MTP path adds exact zeros to every main gradient. Gradient clipping computes
    one global norm over all gradients, the MTP's zeros included: the same number, but summed
    in another order, so with clipping the weights agree to rounding, not bit for bit."""
    ds = _tiny_dataset()
    tc = TrainConfig(max_iters=4, batch_size=4, block_size=16, warmup_iters=1, eval_interval=100,
                     eval_iters=1, progress=False, seed=3, grad_clip=clip)
    with_mtp = make(num_nextn_predict_layers=1, mtp_loss_weight=0.0)
    without = with_mtp.replace(num_nextn_predict_layers=0)
    a = train(with_mtp, tc, dataset=ds).model.state_dict()
    b = train(without, tc, dataset=ds).model.state_dict()
    assert set(b) < set(a) and all(k.startswith("mtp.") for k in set(a) - set(b))
    for k in b:
        if clip == 0:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-7, msg=k)
    # ... and lambda > 0 does change the main model (the test can fail)
    c = train(with_mtp.replace(mtp_loss_weight=0.3), tc, dataset=ds).model.state_dict()
    assert (c["layers.0.attn_norm.weight"] - b["layers.0.attn_norm.weight"]).abs().max() > 1e-4


def test_same_seed_same_main_init_with_or_without_mtp():
    torch.manual_seed(5)
    a = MiniDeepSeek(small(num_nextn_predict_layers=2)).state_dict()
    torch.manual_seed(5)
    b = MiniDeepSeek(small(num_nextn_predict_layers=0)).state_dict()
    for k in b:
        assert torch.equal(a[k], b[k]), k
