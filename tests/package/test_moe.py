"""DeepSeekMoE (minids/moe.py) against direct transcriptions of the V3 report's eqs 12-20."""

import math

import pytest
import torch

from minids import moe_dispatch
from minids.config import ModelConfig
from minids.layers import MLP
from minids.model import MiniDeepSeek
from minids.moe import (
    MoE,
    Router,
    dispatch_fast,
    dispatch_loop,
    max_violation,
    sequence_balance_loss,
)
from minids.moe_dispatch import choose_backend, grouped_mm_usable, padded_backend


def moe_cfg(**kw):
    base = dict(hidden_size=32, n_routed_experts=8, num_experts_per_tok=2, moe_intermediate_size=16,
                n_shared_experts=1)
    return ModelConfig(**{**base, **kw})


def init_(module, std=0.2, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


# ----------------------------------------------------------------------------- the router
def reference_route(x, weight, bias, K, n_group, topk_group, scoring, norm, scale):
    """Eqs 13-16 token by token, in plain Python: {expert: gate weight} per token."""
    out = []
    E = weight.size(0)
    per_group = E // n_group
    for t in range(x.size(0)):
        u = [float(x[t] @ weight[i]) for i in range(E)]
        if scoring == "sigmoid":
            s = [1 / (1 + math.exp(-v)) for v in u]                                   # eq 15
        else:
            z = sum(math.exp(v) for v in u)
            s = [math.exp(v) / z for v in u]
        c = [s[i] + float(bias[i]) for i in range(E)]                                # eq 16
        allowed = set(range(E))
        if n_group > 1:
            gscore = [sum(sorted(c[g * per_group:(g + 1) * per_group])[-2:]) for g in range(n_group)]
            kept = sorted(range(n_group), key=lambda g: -gscore[g])[:topk_group]
            allowed = {i for i in range(E) if i // per_group in kept}
        chosen = sorted(allowed, key=lambda i: -c[i])[:K]                             # eq 14/16
        total = sum(s[i] for i in chosen) if norm else 1.0
        out.append({i: s[i] / total * scale for i in chosen})                         # eq 13
    return out


@pytest.mark.parametrize("scoring", ["sigmoid", "softmax"])
@pytest.mark.parametrize("groups", [(1, 1, 2), (4, 2, 3), (2, 1, 2), (8, 3, 4)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_router_matches_equations(scoring, groups, with_bias):
    n_group, topk_group, K = groups
    E = 16
    cfg = moe_cfg(n_routed_experts=E, num_experts_per_tok=K, n_group=n_group, topk_group=topk_group,
                  scoring_func=scoring, routed_scaling_factor=2.5)
    r = init_(Router(cfg), std=0.3, seed=K)
    if with_bias:
        r.bias.copy_(torch.randn(E, generator=torch.Generator().manual_seed(5)) * 0.1)
    x = torch.randn(40, 32, generator=torch.Generator().manual_seed(1))
    w, idx, scores = r(x)
    ref = reference_route(x.double(), r.weight.detach().double(), r.bias, K, n_group, topk_group, scoring,
                          True, 2.5)
    for t in range(x.size(0)):
        got = dict(zip(idx[t].tolist(), w[t].tolist(), strict=True))
        assert set(got) == set(ref[t]), (t, got, ref[t])                      # compared as sets
        for i, v in ref[t].items():
            assert abs(got[i] - v) < 1e-5, (t, i, got[i], v)
    assert torch.allclose(w.sum(-1), torch.full((40,), 2.5), atol=1e-5)     # normalised, scaled


def test_router_without_normalisation_uses_raw_scores():
    r = init_(Router(moe_cfg(norm_topk_prob=False, routed_scaling_factor=1.5)))
    x = torch.randn(10, 32)
    w, idx, s = r(x)
    assert torch.allclose(w, s.gather(1, idx) * 1.5)


def test_bias_changes_choice_but_never_gate_values():
    r = init_(Router(moe_cfg(n_routed_experts=8, num_experts_per_tok=2)), std=0.3)
    x = torch.randn(64, 32)
    w0, idx0, s0 = r(x)
    r.bias.copy_(torch.tensor([0.0, 0, 0, 0, 0, 0, 1.0, 1.0]))   # favour experts 6 and 7
    w1, idx1, s1 = r(x)
    assert torch.equal(s0, s1)                                     # scores ignore the bias
    assert (idx0.sort(1).values != idx1.sort(1).values).any()      # the choice changed ...
    assert (idx1 >= 6).all()                                       # ... to the favoured experts
    # ... and the weights are the UNBIASED scores of the chosen experts, normalised
    expect = s1.gather(1, idx1) / s1.gather(1, idx1).sum(-1, keepdim=True)
    assert torch.allclose(w1, expect, atol=1e-6)
    biased = (s1 + r.bias).gather(1, idx1)
    assert not torch.allclose(w1, biased / biased.sum(-1, keepdim=True), atol=1e-3)
    r.bias.copy_(torch.randn(8) * 0.05)                            # a small bias: most choices stay
    w2, idx2, _ = r(x)
    same = (idx0.sort(1).values == idx2.sort(1).values).all(1)     # tokens whose choice is unchanged
    assert 0 < same.sum() < 64
    assert torch.allclose(w0[same].sort(1).values, w2[same].sort(1).values, atol=1e-6)


# ----------------------------------------------------------------------------- dispatch
def _grads(module, x, y):
    probe = torch.linspace(-1, 1, y.numel()).view_as(y)
    return torch.autograd.grad((y * probe).sum(), [x, *module.parameters()], allow_unused=True,
                               retain_graph=True)


BACKENDS = ["auto", "bmm", "slices", "grouped"]


@pytest.mark.parametrize("E,K,n_group,topk_group", [(8, 2, 1, 1), (16, 4, 4, 2), (6, 1, 1, 1)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_fast_dispatch_equals_loop(E, K, n_group, topk_group, backend):
    m = init_(MoE(moe_cfg(n_routed_experts=E, num_experts_per_tok=K, n_group=n_group,
                          topk_group=topk_group)))
    x = torch.randn(37, 32, requires_grad=True)
    w, idx, _ = m.router(x)
    y_loop = dispatch_loop(m.experts, x, w, idx)
    y_fast = dispatch_fast(m.experts, x, w, idx, backend=backend)
    assert (y_fast - y_loop).abs().max() <= 1e-6
    for a, b in zip(_grads(m, x, y_fast), _grads(m, x, y_loop), strict=True):
        if b is None:
            assert a is None or a.abs().max() == 0
        else:
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), (a - b).abs().max()


def test_grouped_mm_backend_matches_loop_where_torch_supports_it():
    """torch._grouped_mm is meant for CUDA; newer CPU builds run it too, so test it where they do."""
    m = init_(MoE(moe_cfg(n_routed_experts=8, num_experts_per_tok=2, hidden_size=32)))
    x = torch.randn(21, 32, requires_grad=True)
    w, idx, _ = m.router(x)
    try:
        y = dispatch_fast(m.experts, x, w, idx, backend="grouped_mm")
        grads = _grads(m, x, y)
    except (RuntimeError, AttributeError, NotImplementedError) as e:
        pytest.skip(f"torch._grouped_mm unavailable here: {e}")
    y_loop = dispatch_loop(m.experts, x, w, idx)
    assert (y - y_loop).abs().max() <= 1e-6
    for a, b in zip(grads, _grads(m, x, y_loop), strict=True):
        if b is not None:
            assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), (a - b).abs().max()


def test_moe_module_fast_equals_loop():
    torch.manual_seed(3)
    fast = init_(MoE(moe_cfg(n_group=2, topk_group=1)))
    loop = MoE(moe_cfg(n_group=2, topk_group=1, moe_dispatch="loop"))
    loop.load_state_dict(fast.state_dict())
    x = torch.randn(2, 9, 32, requires_grad=True)
    yf, yl = fast(x), loop(x)
    assert (yf - yl).abs().max() <= 1e-6
    for a, b in zip(_grads(fast, x, yf), _grads(loop, x, yl), strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-6), (a - b).abs().max()


def test_auto_backend_avoids_padding_when_load_is_skewed():
    assert padded_backend(torch.tensor([10, 10, 9, 11])) == "bmm"
    assert padded_backend(torch.tensor([37, 1, 1, 1])) == "slices"
    x = torch.randn(4, 8)
    if grouped_mm_usable(x, 8):             # this torch runs _grouped_mm on the CPU: exact rows, no padding
        assert choose_backend(x, torch.tensor([37, 1, 1, 1]), 8) == "grouped_mm"
    else:
        assert choose_backend(x, torch.tensor([37, 1, 1, 1]), 8) == "slices"
    # rows that are not 16-byte multiples (fp32 width 7, as mini-v3's experts of 77) never take it
    assert choose_backend(torch.randn(4, 7), torch.tensor([10, 10, 9, 11]), 7) == "bmm"


def test_bad_backend_is_a_value_error():
    m = init_(MoE(moe_cfg()))
    x = torch.randn(4, 32)
    w, idx, _ = m.router(x)
    with pytest.raises(ValueError, match="backend"):
        dispatch_fast(m.experts, x, w, idx, backend="magic")


@pytest.mark.parametrize("dispatch", ["fast", "loop"])
def test_expert_with_no_tokens_gets_zero_but_present_grads(dispatch):
    m = init_(MoE(moe_cfg(moe_dispatch=dispatch)))
    m.router.bias[3] = -100.0                   # expert 3 is never chosen
    x = torch.randn(2, 16, 32)
    y = m(x)
    assert int(m.last_load[3]) == 0 and int(m.last_load.sum()) == 2 * 16 * 2
    y.square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name       # DDP needs every parameter to get a gradient
    assert m.experts.gate_up_proj.grad[3].abs().max() == 0
    assert m.experts.down_proj.grad[3].abs().max() == 0
    others = [e for e in range(8) if e != 3]
    assert (m.experts.gate_up_proj.grad[others].abs().amax(dim=(1, 2)) > 0).all()


def test_every_model_parameter_gets_a_grad_even_with_idle_experts():
    cfg = moe_cfg(num_hidden_layers=2, vocab_size=50, num_attention_heads=4, n_routed_experts=16,
                  num_experts_per_tok=1)
    model = MiniDeepSeek(cfg)
    idx = torch.randint(0, 50, (1, 3))        # 3 tokens, 16 experts: most are idle
    out = model(idx, idx)
    assert any((ld == 0).any() for ld in model.router_loads())
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


# ----------------------------------------------------------------------------- balancing
def test_update_bias_follows_sign_rule():
    m = MoE(moe_cfg(n_routed_experts=4, bias_update_speed=0.01))
    m.load = torch.tensor([10.0, 2.0, 4.0, 4.0])            # mean 5
    m.update_bias()
    assert torch.allclose(m.router.bias, torch.tensor([-0.01, 0.01, 0.01, 0.01]))
    assert m.load.sum() == 0 and m.router.bias.dtype == torch.float32
    m.gamma = 0.0
    m.load = torch.tensor([10.0, 2.0, 4.0, 4.0])
    m.update_bias()                                          # gamma 0: balancing off
    assert torch.allclose(m.router.bias, torch.tensor([-0.01, 0.01, 0.01, 0.01]))


def test_load_counts_only_in_training():
    m = init_(MoE(moe_cfg()))
    x = torch.randn(1, 5, 32)
    m.eval()
    m(x)
    assert m.load.sum() == 0
    m.train()
    m(x)
    m(x)
    assert m.load.sum() == 2 * 5 * 2


def test_bias_update_moves_load_toward_uniform():
    """A router skewed toward a few experts; aux-loss-free updates alone (no gradient) fix it."""
    torch.manual_seed(0)
    E = 8
    m = init_(MoE(moe_cfg(n_routed_experts=E, num_experts_per_tok=2, bias_update_speed=0.01)), std=0.1)
    with torch.no_grad():
        m.router.weight[:2] += 2.0 * torch.ones(32) / 32 ** 0.5    # experts 0, 1 like every token
    g = torch.Generator().manual_seed(1)
    m.train()
    vios = []
    for _ in range(300):
        x = torch.randn(4, 64, 32, generator=g) + 0.3          # a fresh batch every step
        with torch.no_grad():
            m(x)
        vios.append(max_violation(m.load))
        m.update_bias()
    early, late = sum(vios[:10]) / 10, sum(vios[-50:]) / 50
    assert early > 1.5, early                      # badly skewed at first ...
    assert late < 0.25 * early, (early, late)      # ... near uniform after the updates
    assert m.router.bias[:2].max() < m.router.bias[2:].min()     # the favourites were pushed down


def test_max_violation():
    assert max_violation(torch.tensor([2, 2, 2, 2])) == 0
    assert abs(max_violation(torch.tensor([4, 2, 1, 1])) - 1.0) < 1e-6
    assert math.isnan(max_violation(torch.zeros(4)))


def reference_balance_loss(scores, indices, alpha):
    """Eqs 17-20 for each sequence with loops, then the mean over sequences."""
    B, T, E = scores.shape
    K = indices.size(-1)
    total = 0.0
    for b in range(B):
        L = 0.0
        for i in range(E):
            f = E / (K * T) * sum(1 for t in range(T) if i in indices[b, t].tolist())     # eq 18
            P = sum(float(scores[b, t, i] / scores[b, t].sum()) for t in range(T)) / T   # eqs 19-20
            L += f * P
        total += alpha * L                                                              # eq 17
    return total / B


def test_sequence_balance_loss_matches_equations():
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(3, 7, 8, generator=g)
    indices = torch.rand(3, 7, 8, generator=g).topk(2, dim=-1).indices
    got = sequence_balance_loss(scores, indices, 0.01)
    assert abs(float(got) - reference_balance_loss(scores, indices, 0.01)) < 1e-7
    # perfectly balanced routing with uniform scores gives alpha * 1
    uni = torch.full((1, 4, 4), 0.5)
    idx = torch.tensor([[[0, 1], [2, 3], [0, 1], [2, 3]]])
    assert abs(float(sequence_balance_loss(uni, idx, 0.1)) - 0.1) < 1e-7


def test_balance_loss_added_only_when_alpha_positive():
    base = dict(num_hidden_layers=2, vocab_size=40, num_attention_heads=4)
    idx = torch.randint(0, 40, (2, 6))
    torch.manual_seed(1)
    off = MiniDeepSeek(moe_cfg(**base, aux_loss_alpha=0.0))
    out = off(idx, idx)
    assert out.aux_loss is None and torch.equal(out.loss, out.main_loss)
    torch.manual_seed(1)
    on = MiniDeepSeek(moe_cfg(**base, aux_loss_alpha=0.1))
    out = on(idx, idx)
    layers = on.moe_layers()
    expect = 0.0
    for m in layers:           # recompute each layer's loss from its router on its own input
        assert m.aux_loss is not None
    h = on.embed_tokens(idx)
    freqs = on.freqs_cis[:6]
    for layer in on.layers:
        u = layer.ffn_norm(h + layer.attn(layer.attn_norm(h), freqs, 0, None))
        _, ind, sc = layer.ffn.router(u.reshape(-1, 32))
        expect += reference_balance_loss(sc.view(2, 6, -1).detach(), ind.view(2, 6, -1), 0.1)
        h = layer(h, freqs)
    assert abs(out.aux_loss.item() - expect) < 1e-6
    assert torch.allclose(out.loss, out.main_loss + out.aux_loss)
    on.eval()
    assert on(idx, idx).aux_loss is None                # never in evaluation


# ----------------------------------------------------------------------------- config, model
@pytest.mark.parametrize("kw,field", [
    (dict(num_experts_per_tok=9), "num_experts_per_tok"),
    (dict(num_experts_per_tok=0), "num_experts_per_tok"),
    (dict(n_group=3), "n_group"),
    (dict(n_group=2, topk_group=3), "topk_group"),
    (dict(n_group=2, topk_group=0), "topk_group"),
    (dict(n_group=8, topk_group=2), "n_group"),                       # 1 expert per group
    (dict(n_group=4, topk_group=1, num_experts_per_tok=3), "num_experts_per_tok"),
    (dict(moe_intermediate_size=0), "moe_intermediate_size"),
    (dict(n_shared_experts=-1), "n_shared_experts"),
    (dict(routed_scaling_factor=0.0), "routed_scaling_factor"),
    (dict(scoring_func="relu"), "scoring_func"),
    (dict(first_k_dense_replace=5), "first_k_dense_replace"),
    (dict(bias_update_speed=-0.1), "bias_update_speed"),
    (dict(aux_loss_alpha=-1e-4), "aux_loss_alpha"),
    (dict(moe_dispatch="magic"), "moe_dispatch"),
])
def test_invalid_moe_configs_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        moe_cfg(**kw)


def test_first_k_dense_replace_puts_dense_ffns_first():
    cfg = moe_cfg(num_hidden_layers=4, first_k_dense_replace=2, vocab_size=30, num_attention_heads=4)
    model = MiniDeepSeek(cfg)
    kinds = [type(b.ffn) for b in model.layers]
    assert kinds == [MLP, MLP, MoE, MoE]
    assert len(model.moe_layers()) == 2


def test_router_bias_is_saved_and_load_is_not():
    m = MoE(moe_cfg())
    sd = m.state_dict()
    assert "router.bias" in sd and sd["router.bias"].dtype == torch.float32
    assert not any(k.endswith("load") for k in sd)
    assert "load" not in dict(m.named_buffers())    # DDP would broadcast a buffer from rank 0


def test_grouped_mm_failure_falls_back(monkeypatch):
    """If torch._grouped_mm raises, the dispatch warns and uses bmm/slices instead (no global state)."""
    m = init_(MoE(moe_cfg()))
    x = torch.randn(11, 32)
    w, idx, _ = m.router(x)

    def broken(*a, **k):
        raise RuntimeError("no kernel")
    monkeypatch.setattr(torch, "_grouped_mm", broken, raising=False)
    monkeypatch.setattr(moe_dispatch, "grouped_mm_usable", lambda *a: True)
    with pytest.warns(UserWarning, match="_grouped_mm failed"):
        y = dispatch_fast(m.experts, x, w, idx)
    assert (y - dispatch_loop(m.experts, x, w, idx)).abs().max() <= 1e-6
    with pytest.warns(UserWarning, match="_grouped_mm failed"):          # still the same next time
        y = m(x[None])[0]
    assert (y - dispatch_loop(m.experts, x, w, idx) - m.shared_experts(x)).abs().max() <= 1e-6
