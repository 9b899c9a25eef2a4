import math

import torch

from minids.layers import MLP, RMSNorm, apply_rotary_emb, precompute_freqs_cis, rope_frequencies, yarn_mscale


def test_rmsnorm_formula():
    x = torch.randn(3, 5, 16) * 4 + 2
    n = RMSNorm(16, eps=1e-6)
    n.weight.data.uniform_(0.5, 1.5)
    expected = x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6) * n.weight
    torch.testing.assert_close(n(x), expected)


def test_rmsnorm_keeps_dtype_and_is_stable_in_bf16():
    x = torch.randn(4, 32, dtype=torch.bfloat16) * 1000
    y = RMSNorm(32)(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()


def test_rope_rotates_consecutive_pairs():
    # the complex-pair layout of the V3 reference: (x0, x1) is one complex number
    freqs = precompute_freqs_cis(4, 8)
    x = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4).expand(1, 8, 1, 4)
    y = apply_rotary_emb(x, freqs)
    theta0 = 1.0                                  # base^0
    m = 3
    torch.testing.assert_close(y[0, m, 0, :2], torch.tensor([math.cos(m * theta0), math.sin(m * theta0)]))


def test_rope_scores_depend_only_on_relative_position():
    D, T = 16, 32
    freqs = precompute_freqs_cis(D, T)
    q, k = torch.randn(D), torch.randn(D)
    qs = apply_rotary_emb(q.expand(1, T, 1, D).contiguous(), freqs)[0, :, 0]
    ks = apply_rotary_emb(k.expand(1, T, 1, D).contiguous(), freqs)[0, :, 0]
    s = qs @ ks.T                                   # s[m, n] depends on m - n only
    for delta in (0, 3, 7):
        diag = torch.diagonal(s, offset=-delta)
        torch.testing.assert_close(diag, diag[0].expand_as(diag), atol=1e-4, rtol=1e-4)


def test_rope_preserves_norm():
    x = torch.randn(2, 10, 3, 8)
    y = apply_rotary_emb(x, precompute_freqs_cis(8, 10))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))


def test_yarn_keeps_high_and_interpolates_low_frequencies():
    scaling = {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
               "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}
    plain, yarn = rope_frequencies(64), rope_frequencies(64, rope_scaling=scaling)
    torch.testing.assert_close(yarn[0], plain[0])                    # fastest pair untouched
    torch.testing.assert_close(yarn[-1], plain[-1] / 40)              # slowest pair divided by factor
    assert (yarn <= plain + 1e-12).all()
    assert abs(yarn_mscale(scaling) - (0.1 * math.log(40) + 1)) < 1e-12
    assert yarn_mscale(None) == 1.0


def test_swiglu():
    m = MLP(8, 12)
    x = torch.randn(5, 8)
    expected = m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))
    torch.testing.assert_close(m(x), expected)
