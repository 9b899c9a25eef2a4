"""minids.fp8: E4M3 rounding, tile/block/tensor scaling, the accumulator model, the FP8 linear."""

import pytest
import torch

from minids import fp8
from minids.config import get_preset
from minids.model import MiniDeepSeek
from minids.moe import Router


def test_e4m3_grid_round_trip_and_saturation():
    grid = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float()
    grid = grid[torch.isfinite(grid)]
    assert torch.equal(fp8.to_e4m3(grid), grid)                    # representable values are exact
    assert fp8.E4M3_MAX == torch.finfo(torch.float8_e4m3fn).max == 448
    assert fp8.to_e4m3(torch.tensor([1000.0, -500.0])).tolist() == [448.0, -448.0]
    x = torch.linspace(0.02, 400, 5000)                             # normal range: 3 mantissa bits
    assert ((fp8.to_e4m3(x) - x).abs() / x).max() <= 2 ** -4 + 1e-7


def test_tilewise_scales_and_bound():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 300) * torch.logspace(-2, 2, 300)         # (B, T, K), K not a multiple of 128
    q, s = fp8.quantize_tilewise(x, 128)
    assert q.dtype == torch.float8_e4m3fn and q.shape == x.shape and s.shape == (3, 5, 3)
    tiles = torch.nn.functional.pad(x, (0, 84)).reshape(3, 5, 3, 128)
    assert torch.allclose(s, tiles.abs().amax(-1) / 448)
    y = fp8.dequantize_tilewise(q, s, 128)
    assert y.abs().amax() <= x.abs().amax() * (1 + 1e-6)
    err = (y - x).abs()
    assert torch.all(err <= 2 ** -4 * x.abs() + 2 ** -10 * s.repeat_interleave(128, -1)[..., :300])
    # a tile of zeros gets scale 1 and stays zero
    q0, s0 = fp8.quantize_tilewise(torch.zeros(2, 128))
    assert s0.tolist() == [[1.0], [1.0]] and q0.float().abs().sum() == 0


def test_tilewise_non_contiguous_and_dtypes():
    x = torch.randn(256, 64).t()                                    # (64, 256), non-contiguous
    q, s = fp8.quantize_tilewise(x)
    q2, s2 = fp8.quantize_tilewise(x.contiguous())
    assert torch.equal(q.float(), q2.float()) and torch.equal(s, s2)
    for dt in (torch.float64, torch.bfloat16):
        qd, sd = fp8.quantize_tilewise(x.to(dt))
        assert sd.dtype == torch.float32 and qd.shape == x.shape


def test_pow2_scales():
    x = torch.randn(4, 256) * 3
    _, s = fp8.quantize_tilewise(x, pow2=True)
    assert torch.equal(torch.exp2(torch.log2(s).round()), s)        # powers of two
    assert torch.all(s >= x.reshape(4, 2, 128).abs().amax(-1) / 448)


def test_blockwise_scales_shapes_and_values():
    torch.manual_seed(1)
    w = torch.randn(200, 300)
    q, s = fp8.quantize_blockwise(w, 128)
    assert q.shape == (200, 300) and s.shape == (2, 3)
    assert torch.isclose(s[1, 2], w[128:, 256:].abs().amax() / 448)
    assert fp8.relative_error(fp8.dequantize_blockwise(q, s), w) < 0.04
    with pytest.raises(ValueError, match="2-D"):
        fp8.quantize_blockwise(torch.randn(2, 3, 4))
    with pytest.raises(ValueError, match="tile"):
        fp8.quantize_tilewise(w, 0)


def test_tiles_survive_outliers_that_break_per_tensor_scaling():
    errs = {}
    for mag in (1e2, 1e5):
        x = fp8.outlier_activations(magnitude=mag)
        clean = torch.ones(x.size(0), dtype=torch.bool)
        clean[::8] = False                                          # rows without an outlier
        errs[mag] = (fp8.relative_error(fp8.fake_quant_tensor(x)[clean], x[clean]),
                     fp8.relative_error(fp8.fake_quant_tiles(x)[clean], x[clean]))
    assert errs[1e2][0] < 0.03 and errs[1e2][1] < 0.03               # mild outliers: both fine
    assert errs[1e5][0] > 0.1 and errs[1e5][1] < 0.03                # massive: per-tensor breaks


def test_accumulator_error_grows_with_k_and_promotion_bounds_it():
    g = torch.Generator().manual_seed(0)
    errs = {}
    for K in (128, 1024, 4096):
        a = fp8.to_e4m3(torch.rand(16, K, generator=g))
        b = fp8.to_e4m3(torch.rand(8, K, generator=g))
        exact = a.double() @ b.double().t()
        errs[K] = (fp8.relative_error(fp8.limited_precision_gemm(a, b, promote_every=None), exact),
                   fp8.relative_error(fp8.limited_precision_gemm(a, b, promote_every=128), exact))
    assert errs[128][0] < errs[1024][0] < errs[4096][0]              # no promotion: grows with K
    assert errs[4096][0] > 0.01                                      # percent level at K = 4096
    assert max(e[1] for e in errs.values()) < 2e-3                   # promotion: flat and small
    a = fp8.to_e4m3(torch.randn(4, 256, generator=g))
    b = fp8.to_e4m3(torch.randn(3, 256, generator=g))
    assert fp8.relative_error(fp8.limited_precision_gemm(a, b, bits=53, promote_every=None),
                              a.double() @ b.double().t()) < 1e-12  # enough bits: exact
    with pytest.raises(ValueError, match="multiple"):
        fp8.limited_precision_gemm(a, b, promote_every=100)
    z = torch.zeros(2, 64)                                           # sums that are exactly 0: no NaN
    assert torch.equal(fp8.limited_precision_gemm(z, z, promote_every=None), torch.zeros(2, 2, dtype=torch.float64))
    c = torch.tensor([[1.0, -1.0] * 64])                             # cancels to 0 mid-way
    assert fp8.limited_precision_gemm(c, torch.ones(1, 128)).item() == 0


def test_fp8_linear_forward_backward_close_to_fp32():
    torch.manual_seed(0)
    x = torch.randn(2, 7, 256, requires_grad=True)
    w = torch.randn(96, 256, requires_grad=True)
    y = fp8.fp8_linear(x, w)
    (y * torch.linspace(-1, 1, 96)).sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    y_ref = x @ w.t()
    (y_ref * torch.linspace(-1, 1, 96)).sum().backward()
    assert y.shape == y_ref.shape and gx.shape == x.shape and gw.shape == w.shape
    assert fp8.relative_error(y.detach(), y_ref.detach()) < 0.06
    assert fp8.relative_error(gx, x.grad) < 0.08 and fp8.relative_error(gw, w.grad) < 0.08


def test_to_fp8_training_keeps_head_router_and_embedding():
    torch.manual_seed(0)
    cfg = get_preset("mini-v3", vocab_size=40, max_position_embeddings=16)
    ref = MiniDeepSeek(cfg)
    model = MiniDeepSeek(cfg)
    model.load_state_dict(ref.state_dict())
    fp8.to_fp8_training(model)
    assert type(model.lm_head) is torch.nn.Linear
    assert all(isinstance(m, Router) for m in model.modules() if "Router" in type(m).__name__)
    assert any(isinstance(m, fp8.FP8Experts) for m in model.modules())
    assert 0.9 < fp8.fp8_gemm_fraction(model) < 1.0
    x = torch.randint(0, 40, (2, 16))
    out, out_ref = model(x, x), ref(x, x)
    out.loss.backward()
    assert abs(out.main_loss.item() - out_ref.main_loss.item()) / out_ref.main_loss.item() < 0.02
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # the MoE really sends its tokens through the FP8 experts
    calls = []
    bank = next(m for m in model.modules() if isinstance(m, fp8.FP8Experts))
    original = bank.expert
    bank.expert = lambda e, h: calls.append(e) or original(e, h)
    model(x)
    assert calls
