import pytest
import torch

from minids.config import get_preset
from minids.model import MiniDeepSeek


def tiny(**kw):
    return get_preset("baseline", vocab_size=50, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=24, **kw)


def test_forward_shapes_and_loss():
    m = MiniDeepSeek(tiny())
    x = torch.randint(0, 50, (3, 24))
    out = m(x, x)
    assert out.logits.shape == (3, 24, 50) and out.hidden.shape == (3, 24, 32)
    assert out.loss.shape == () and torch.equal(out.loss, out.main_loss)
    assert abs(out.loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.3   # ~ uniform at init


def test_ignore_index():
    m = MiniDeepSeek(tiny())
    x = torch.randint(0, 50, (2, 10))
    y = x.clone()
    y[:, 5:] = -1
    full = torch.nn.functional.cross_entropy(m(x).logits[:, :5].reshape(-1, 50), x[:, :5].reshape(-1))
    torch.testing.assert_close(m(x, y).loss, full)


def test_cached_decoding_equals_full_forward():
    torch.manual_seed(0)
    m = MiniDeepSeek(tiny()).eval()
    x = torch.randint(0, 50, (2, 20))
    with torch.no_grad():
        full = m(x).logits
        cache = m.new_cache()
        parts = [m(x[:, :7], cache=cache).logits]
        parts += [m(x[:, t:t + 1], start_pos=t, cache=cache).logits for t in range(7, 20)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_causality():
    m = MiniDeepSeek(tiny()).eval()
    x = torch.randint(0, 50, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 1) % 50
    with torch.no_grad():
        torch.testing.assert_close(m(x).logits[:, :10], m(y).logits[:, :10])


def test_overfits_one_batch():
    torch.manual_seed(0)
    m = MiniDeepSeek(tiny())
    x = torch.randint(0, 50, (4, 24))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(60):
        loss = m(x[:, :-1], x[:, 1:]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.0


def test_too_long_sequence_is_a_clear_error():
    m = MiniDeepSeek(tiny())
    with pytest.raises(ValueError, match="max_position_embeddings=24"):
        m(torch.zeros(1, 25, dtype=torch.long))


def test_token_out_of_vocab_is_a_clear_error():
    m = MiniDeepSeek(tiny())
    with pytest.raises(ValueError, match="vocab_size=50"):
        m(torch.tensor([[1, 2, 50]]))


def test_init_scales_residual_projections():
    m = MiniDeepSeek(get_preset("baseline", vocab_size=65))
    std_q = m.layers[0].attn.q_proj.weight.std().item()
    std_o = m.layers[0].attn.o_proj.weight.std().item()
    assert abs(std_q - 0.02) < 0.002 and abs(std_o - 0.02 / (2 * 4) ** 0.5) < 0.001


def test_tied_embeddings_share_storage():
    m = MiniDeepSeek(tiny(tie_word_embeddings=True))
    assert m.lm_head.weight is m.embed_tokens.weight


def test_dtype_policy_rope_table_complex64_router_biases_fp32():
    """cast_parameters keeps both; Module.to(dtype) keeps the RoPE table (device moves still apply)
    and a cast router bias is a clear error at the next forward, not a silent loss of precision."""
    import warnings

    from minids.config import get_preset as gp
    from minids.model import cast_parameters
    cfg = gp("mini-v3", vocab_size=50)
    x = torch.randint(0, 50, (2, 16))

    def fresh():
        torch.manual_seed(0)
        m = MiniDeepSeek(cfg).eval()
        with torch.no_grad():
            for moe in m.moe_layers():
                moe.router.bias.uniform_(-0.01, 0.01)
        return m

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")                         # no "casting complex to real" warning
        ref = fresh()(x).logits
        d = cast_parameters(fresh(), torch.float64)
        assert d.freqs_cis.dtype == torch.complex64 and d.embed_tokens.weight.dtype == torch.float64
        assert all(moe.router.bias.dtype == torch.float32 for moe in d.moe_layers())
        torch.testing.assert_close(d(x).logits.float(), ref, atol=1e-4, rtol=1e-4)
        b = cast_parameters(fresh(), torch.bfloat16)
        assert b.embed_tokens.weight.dtype == torch.bfloat16 and b.freqs_cis.dtype == torch.complex64
        assert all(moe.router.bias.dtype == torch.float32 for moe in b.moe_layers())
        assert torch.isfinite(b(x).logits.float()).all()
        for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double()):
            m = cast(fresh())
            assert m.freqs_cis.dtype == torch.complex64                # never reached by the cast
            torch.testing.assert_close(m.freqs_cis, fresh().freqs_cis, rtol=0, atol=0)
            with pytest.raises(ValueError, match="router bias dtype=.* must be torch.float32.*cast_parameters"):
                m(x)
        torch.manual_seed(0)
        dense = MiniDeepSeek(gp("baseline", vocab_size=50)).eval()
        dense_ref = dense(x).logits
        torch.testing.assert_close(dense.to(torch.float64)(x).logits.float(), dense_ref, atol=1e-4, rtol=1e-4)
    assert "rope_bits" not in fresh().state_dict()                 # derived from the config, not saved
