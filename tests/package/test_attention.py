"""Attention: MHA / GQA / MQA with a KV cache, MLA (naive, absorb, reexpand), RoPE, KV-cache accounting."""

import copy
import math

import pytest
import torch

from minids.attention import (
    MLA,
    CausalSelfAttention,
    KVCache,
    _grouped_sdpa,
    _one_query_attention,
    causal_mask,
    causal_sdpa,
    mla_cache_values_per_token,
    repeat_kv,
)
from minids.config import ModelConfig, get_preset
from minids.flops import dtype_bytes, kv_cache_bytes, kv_cache_values_per_token
from minids.layers import apply_rotary_emb, precompute_freqs_cis
from minids.model import MiniDeepSeek

BASE = dict(vocab_size=40, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=8, max_position_embeddings=48)
MLA_KW = dict(kv_lora_rank=24, qk_nope_head_dim=8, qk_rope_head_dim=6, v_head_dim=10)
YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
        "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0}

KINDS = {
    "mha": {},
    "gqa": dict(num_key_value_heads=2),
    "mqa": dict(num_key_value_heads=1),
    "mla-naive": dict(MLA_KW, mla_mode="naive"),
    "mla-absorb": dict(MLA_KW, mla_mode="absorb"),
    "mla-reexpand": dict(MLA_KW, mla_mode="reexpand"),
    "mla-naive-qlora": dict(MLA_KW, mla_mode="naive", q_lora_rank=16),
    "mla-absorb-qlora": dict(MLA_KW, mla_mode="absorb", q_lora_rank=16),
    "mla-absorb-yarn": dict(MLA_KW, mla_mode="absorb", q_lora_rank=16, rope_scaling=YARN),
    "mla-reexpand-yarn": dict(MLA_KW, mla_mode="reexpand", q_lora_rank=16, rope_scaling=YARN),
}


def _model(**kw) -> MiniDeepSeek:
    torch.manual_seed(0)
    return MiniDeepSeek(ModelConfig(**{**BASE, **kw})).eval()


def _with_std(model: MiniDeepSeek, std: float = 0.2) -> MiniDeepSeek:
    """Larger random weights than the init, so attention is far from uniform (a stricter test)."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, std)
    return model


# ------------------------------------------------------------------ cached == full forward
@pytest.mark.parametrize("kind", list(KINDS))
def test_cached_decoding_equals_full_forward(kind):
    model = _with_std(_model(**KINDS[kind]))
    idx = torch.randint(0, BASE["vocab_size"], (2, 30))
    full = model(idx).logits
    cache = model.new_cache()
    parts = [model(idx[:, :9], cache=cache).logits]           # prefill
    parts.append(model(idx[:, 9:13], start_pos=9, cache=cache).logits)   # a chunk after a prefix
    for t in range(13, 30):                                   # then one token per step
        parts.append(model(idx[:, t:t + 1], start_pos=t, cache=cache).logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)
    assert cache[0].length == 30


@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa", "mla-naive", "mla-absorb", "mla-reexpand"])
def test_cache_holds_what_the_design_says(kind):
    model = _model(**KINDS[kind])
    cache = model.new_cache()
    model(torch.randint(0, BASE["vocab_size"], (3, 11)), cache=cache)
    cfg = model.config
    got = {k: tuple(v[:, :cache[0].length].shape) for k, v in cache[0].buffers.items()}
    H = cfg.num_attention_heads
    if cfg.is_mla and cfg.mla_mode == "naive":   # V3's naive: every head's key [k_C ; k_R] and value
        assert got == {"k": (3, 11, H, cfg.qk_nope_head_dim + cfg.qk_rope_head_dim),
                       "v": (3, 11, H, cfg.v_head_dim)}
    elif cfg.is_mla:    # only the latent c_KV and the one shared rope key k_R (eqs 1, 3)
        assert got == {"c_kv": (3, 11, cfg.kv_lora_rank), "k_pe": (3, 11, cfg.qk_rope_head_dim)}
    else:
        h = (3, 11, cfg.num_key_value_heads, cfg.head_dim)
        assert got == {"k": h, "v": h}
    values = mla_cache_values_per_token(cfg) if cfg.is_mla else kv_cache_values_per_token(cfg)
    assert cache[0].nbytes() == 3 * 11 * values * 4
    if not (cfg.is_mla and cfg.mla_mode == "naive"):     # flops counts MLA's latent cache
        assert cache[0].nbytes() == kv_cache_bytes(cfg, 11, torch.float32, batch=3) // cfg.num_hidden_layers


def test_mla_cache_values_per_token():
    v3 = get_preset("deepseek-v3")
    assert mla_cache_values_per_token(v3, "naive") == 128 * (128 + 64) + 128 * 128 == 40_960
    assert mla_cache_values_per_token(v3, "absorb") == mla_cache_values_per_token(v3, "reexpand") == 576
    assert mla_cache_values_per_token(v3) == 40_960                     # the preset's mode: naive
    with pytest.raises(ValueError, match="mode"):
        mla_cache_values_per_token(v3, "fast")


def test_a_cache_is_read_in_its_own_layout():
    """naive caches k, v; absorb and reexpand cache c_kv, k_pe: a prefill in one layout can be
    continued in a mode with the same layout (reexpand -> absorb), not in the other."""
    model = _with_std(_model(**KINDS["mla-reexpand"]))
    idx = torch.randint(0, BASE["vocab_size"], (2, 14))
    cache = model.new_cache()
    model(idx[:, :10], cache=cache)
    for m in model.modules():
        if isinstance(m, MLA):
            m.mode = "absorb"
    got = model(idx[:, 10:], start_pos=10, cache=cache).logits
    torch.testing.assert_close(got, model(idx).logits[:, 10:], atol=1e-5, rtol=1e-5)
    for m in model.modules():
        if isinstance(m, MLA):
            m.mode = "naive"
    with pytest.raises(ValueError, match="another cache layout"):
        model(idx[:, 13:], start_pos=13, cache=cache)
    model.layers[0].attn.mode = "fast"
    with pytest.raises(ValueError, match="mode"):
        model(idx)


# ------------------------------------------------------------------ MLA: absorb == naive
def _mla_modes(**kw):
    """The same MLA weights in the three modes."""
    cfg = ModelConfig(**{**BASE, **MLA_KW, **kw})
    torch.manual_seed(1)
    naive = MLA(cfg.replace(mla_mode="naive"))
    with torch.no_grad():
        for p in naive.parameters():
            p.normal_(0.0, 0.3) if p.dim() >= 2 else p.uniform_(0.5, 1.5)
    modes = {"naive": naive.eval()}
    for mode in ("absorb", "reexpand"):
        modes[mode] = copy.deepcopy(naive)
        modes[mode].mode = mode
    return cfg, modes


@pytest.mark.parametrize("q_lora_rank", [0, 16])
@pytest.mark.parametrize("rope_scaling", [None, YARN])
def test_absorb_and_reexpand_equal_naive(q_lora_rank, rope_scaling):
    cfg, modes = _mla_modes(q_lora_rank=q_lora_rank, rope_scaling=rope_scaling)
    freqs = precompute_freqs_cis(cfg.qk_rope_head_dim, 40, cfg.rope_theta, cfg.rope_scaling)
    x = torch.randn(2, 25, cfg.hidden_size)
    full = modes["naive"](x, freqs[:25])
    for mode in ("absorb", "reexpand"):
        torch.testing.assert_close(modes[mode](x, freqs[:25]), full, atol=1e-5, rtol=1e-5)
    # and step by step through a cache, the way decoding uses it (three layouts, one function)
    caches = {mode: KVCache(40) for mode in modes}
    for mode, m in modes.items():
        m(x[:, :10], freqs[:10], 0, caches[mode])
    for t in range(10, 25):
        out = {mode: m(x[:, t:t + 1], freqs[t:t + 1], t, caches[mode]) for mode, m in modes.items()}
        torch.testing.assert_close(out["absorb"], out["naive"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["reexpand"], out["naive"], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out["naive"], full[:, t:t + 1], atol=1e-5, rtol=1e-5)
    assert set(caches["naive"].buffers) == {"k", "v"}
    assert set(caches["absorb"].buffers) == set(caches["reexpand"].buffers) == {"c_kv", "k_pe"}


def test_training_forward_is_the_naive_computation():
    """Without a cache, naive and reexpand run the very same ops (bitwise equal), and so does
    the model's default mode: training numbers do not depend on the cache layout."""
    cfg, modes = _mla_modes(q_lora_rank=16)
    freqs = precompute_freqs_cis(cfg.qk_rope_head_dim, 12)
    x = torch.randn(2, 12, cfg.hidden_size)
    assert torch.equal(modes["naive"](x, freqs), modes["reexpand"](x, freqs))
    assert ModelConfig(**{**BASE, **MLA_KW}).mla_mode == "naive"


def test_yarn_changes_the_scale_and_absorb_keeps_it():
    cfg, modes = _mla_modes(rope_scaling=YARN)
    naive = modes["naive"]
    qk = MLA_KW["qk_nope_head_dim"] + MLA_KW["qk_rope_head_dim"]
    mscale = 0.1 * math.log(YARN["factor"]) + 1.0
    assert naive.scale == pytest.approx(qk ** -0.5 * mscale ** 2)


def test_absorb_gradients_equal_naive():
    cfg, modes = _mla_modes(q_lora_rank=16)
    freqs = precompute_freqs_cis(cfg.qk_rope_head_dim, 12)
    x = torch.randn(2, 12, cfg.hidden_size)
    for m in modes.values():
        m(x, freqs).pow(2).sum().backward()
    for mode in ("absorb", "reexpand"):
        for (name, pn), pa in zip(modes["naive"].named_parameters(), modes[mode].parameters(), strict=True):
            err = (pa.grad - pn.grad).abs().max() / pn.grad.abs().max()      # float32 round-off only
            assert err < 1e-5, (mode, name, err.item())


# ------------------------------------------------------------------ MHA / GQA / MQA
def _reference_mha(x, wq, wk, wv, wo, H, freqs):
    """Plain multi-head attention written out: every head has its own key and value."""
    B, T, _ = x.shape
    q, k, v = ((x @ w.T).view(B, T, H, -1) for w in (wq, wk, wv))
    q, k = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))                     # (B, H, T, D)
    s = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1) @ wo.T


def test_gqa_with_all_kv_heads_is_mha():
    cfg = ModelConfig(**BASE, num_key_value_heads=BASE["num_attention_heads"])
    attn = CausalSelfAttention(cfg).eval()
    freqs = precompute_freqs_cis(cfg.head_dim, 16)
    x = torch.randn(2, 16, cfg.hidden_size)
    ref = _reference_mha(x, attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight,
                         attn.o_proj.weight, cfg.num_attention_heads, freqs)
    torch.testing.assert_close(attn(x, freqs), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("n_kv", [1, 2, 4])
def test_gqa_equals_mha_with_shared_kv_weights(n_kv):
    """GQA is MHA whose heads in a group share one key/value projection: copy each KV head's
    rows to its group's heads and an MHA module gives the same output."""
    cfg = ModelConfig(**BASE, num_key_value_heads=n_kv)
    gqa = CausalSelfAttention(cfg).eval()
    mha = CausalSelfAttention(cfg.replace(num_key_value_heads=cfg.num_attention_heads)).eval()
    D, rep = cfg.head_dim, cfg.num_attention_heads // n_kv
    with torch.no_grad():
        mha.q_proj.weight.copy_(gqa.q_proj.weight)
        mha.o_proj.weight.copy_(gqa.o_proj.weight)
        for name in ("k_proj", "v_proj"):
            w = getattr(gqa, name).weight.view(n_kv, D, -1)
            getattr(mha, name).weight.copy_(w.repeat_interleave(rep, 0).reshape(-1, w.size(-1)))
    freqs = precompute_freqs_cis(D, 16)
    x = torch.randn(2, 16, cfg.hidden_size)
    torch.testing.assert_close(gqa(x, freqs), mha(x, freqs), atol=1e-5, rtol=1e-5)


def test_repeat_kv_order():
    x = torch.arange(2 * 3 * 2 * 1.0).view(1, 3, 2, 2)                  # (B, S, n_kv=2, D)
    y = repeat_kv(x, 3)
    assert y.shape == (1, 3, 6, 2)
    for h in range(6):                                                   # heads 0-2 <- kv 0, 3-5 <- kv 1
        torch.testing.assert_close(y[:, :, h], x[:, :, h // 3])
    assert repeat_kv(x, 1) is x


@pytest.mark.parametrize("T, S", [(1, 9), (3, 9), (9, 9)])
@pytest.mark.parametrize("n_kv", [1, 2, 8])
def test_grouped_sdpa_equals_repeated_kv(T, S, n_kv):
    q = torch.randn(2, T, 8, 6)
    k, v = torch.randn(2, S, n_kv, 6), torch.randn(2, S, n_kv, 5)
    ref = causal_sdpa(q, repeat_kv(k, 8 // n_kv), repeat_kv(v, 8 // n_kv), 0.3)
    torch.testing.assert_close(_grouped_sdpa(q, k, v, 0.3), ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dv", [6, 4])
def test_one_query_attention_equals_sdpa(dv):
    """The decoding path (one query, any value width) reads a strided cache view in place."""
    q = torch.randn(3, 1, 8, 6)
    kbuf, vbuf = torch.randn(3, 12, 8, 6), torch.randn(3, 12, 8, dv)
    k, v = kbuf[:, :9], vbuf[:, :9]                         # a cache's filled part, as decoding sees it
    torch.testing.assert_close(_one_query_attention(q, k, v, 0.3), causal_sdpa(q, k, v, 0.3), atol=1e-6, rtol=1e-5)


def test_bench_decode_counts_the_cache_exactly(capsys):
    from minids.benchmarks import decode
    rows = decode.measure([16, 40], [1, 2], steps=2, repeats=1, heads=4, head_dim=8)
    # values per token and layer: MHA 2*4*8, GQA (1 KV head) 2*8, naive 4*(8+4) + 4*8, latent 32 + 4
    per_layer = {"MHA": 64, "GQA": 16, "MLA naive": 80, "MLA absorb": 36, "MLA reexpand": 36}
    assert len(rows) == 5 * 2 * 2
    for r in rows:
        vals = per_layer[r["attention"]]
        assert r["values_per_token_layer"] == vals and r["bytes_per_token"] == 2 * vals * 4
        assert r["cache_bytes"] == r["batch"] * r["context"] * 2 * vals * 4
        assert r["tokens_per_s"] > 0
    decode.main(["--contexts", "16,40", "--batches", "1,2", "--steps", "2", "--repeats", "1",
                 "--heads", "4", "--head-dim", "8"])
    out = capsys.readouterr().out
    assert "absorb / naive" in out and "0.450" in out                 # 36 / 80 values: the cache ratio


def test_decode_cost_model_for_deepseek_v3():
    """Per new token, layer and sequence at 32K context, bf16: naive reads 71x the bytes that
    absorb reads, absorb does 3.4x naive's FLOPs; reexpand re-expands 32K latents per step."""
    from minids.benchmarks.decode import attention_decode_cost
    v3, S = get_preset("deepseek-v3"), 32768
    naive, absorb = attention_decode_cost(v3, S, "naive"), attention_decode_cost(v3, S, "absorb")
    assert naive == {"flops": 2 * 128 * S * 320, "bytes": S * 40_960 * 2}
    assert absorb == {"flops": 2 * (128 * 128 * 512 * 2 + 128 * S * (576 + 512)), "bytes": S * 576 * 2}
    assert naive["bytes"] / absorb["bytes"] == pytest.approx(40_960 / 576)
    assert 3.3 < absorb["flops"] / naive["flops"] < 3.5
    assert attention_decode_cost(v3, S, "reexpand")["flops"] == naive["flops"] + 2 * S * 512 * 128 * 256
    mha = get_preset("deepseek-v3", kv_lora_rank=0, head_dim=128)
    assert attention_decode_cost(mha, S) == {"flops": 4 * 128 * S * 128, "bytes": 2 * 128 * S * 128 * 2}


def test_causal_mask_with_a_prefix():
    m = causal_mask(3, 5, "cpu")                          # 3 new queries after 2 cached keys
    assert m.tolist() == [[True, True, True, False, False],
                          [True, True, True, True, False],
                          [True, True, True, True, True]]
    assert causal_mask(1, 7, "cpu") is None


# ------------------------------------------------------------------ RoPE
@pytest.mark.parametrize("rope_scaling", [None, YARN])
def test_rope_scores_depend_only_on_relative_position(rope_scaling):
    D, L = 16, 64
    freqs = precompute_freqs_cis(D, L, rope_scaling=rope_scaling)
    q, k = torch.randn(D), torch.randn(D)

    def score(m, n):
        qm = apply_rotary_emb(q.view(1, 1, 1, D), freqs[m:m + 1])
        kn = apply_rotary_emb(k.view(1, 1, 1, D), freqs[n:n + 1])
        return (qm * kn).sum().item()

    for m, n in [(5, 2), (9, 9), (20, 3)]:
        for shift in (1, 7, 30):
            assert score(m + shift, n + shift) == pytest.approx(score(m, n), abs=1e-4)
    assert abs(score(5, 2) - score(5, 4)) > 1e-3         # ... and it does depend on the distance


def test_rope_keeps_norms():
    freqs = precompute_freqs_cis(8, 10)
    x = torch.randn(2, 10, 3, 8)
    torch.testing.assert_close(apply_rotary_emb(x, freqs).norm(dim=-1), x.norm(dim=-1))


# ------------------------------------------------------------------ invalid configurations
@pytest.mark.parametrize("kw, field", [
    (dict(num_key_value_heads=3), "num_key_value_heads"),            # does not divide 8 heads
    (dict(num_key_value_heads=16), "num_key_value_heads"),           # more KV than query heads
    (dict(num_key_value_heads=0), "num_key_value_heads"),
    (dict(head_dim=7), "head_dim"),                                    # RoPE needs pairs
    (dict(num_attention_heads=0), "num_attention_heads"),
    (dict(MLA_KW, qk_rope_head_dim=5), "qk_rope_head_dim"),
    (dict(MLA_KW, qk_rope_head_dim=0), "qk_rope_head_dim"),
    (dict(MLA_KW, qk_nope_head_dim=0), "qk_nope_head_dim"),
    (dict(MLA_KW, v_head_dim=0), "v_head_dim"),
    (dict(MLA_KW, q_lora_rank=-1), "q_lora_rank"),
    (dict(MLA_KW, kv_lora_rank=-4), "kv_lora_rank"),
    (dict(MLA_KW, mla_mode="fast"), "mla_mode"),
    (dict(MLA_KW, mla_mode="expand"), "mla_mode"),
])
def test_invalid_heads_and_ranks_name_the_field(kw, field):
    with pytest.raises(ValueError, match=field):
        ModelConfig(**{**BASE, **kw})


# ------------------------------------------------------------------ KVCache
def test_kv_cache_append_and_crop():
    c = KVCache(6)
    a = torch.arange(1.0, 5.0).view(1, 4, 1)
    (k,) = c.update(0, k=a)
    assert c.length == 4 and k.tolist() == a.tolist()
    (k,) = c.update(4, k=torch.tensor([[[9.0]]]))                     # append one position
    assert c.length == 5 and k.flatten().tolist() == [1, 2, 3, 4, 9]
    assert c.nbytes() == 5 * 4
    c.crop(2)                                                         # roll back
    assert c.length == 2 and c.buffers["k"][0, 2:, 0].tolist() == [0, 0, 0, 0]
    (k,) = c.update(2, k=torch.tensor([[[7.0]]]))
    assert k.flatten().tolist() == [1, 2, 7]
    c.crop(0)
    assert c.nbytes() == 0


@pytest.mark.parametrize("call, match", [
    (lambda c: c.update(4, k=torch.zeros(1, 1, 1)), "start_pos"),            # a gap
    (lambda c: c.update(2, k=torch.zeros(1, 5, 1)), "max_len"),              # too long
    (lambda c: c.crop(3), "length"),                                          # beyond what is cached
    (lambda c: c.crop(-1), "length"),
    (lambda c: c.update(2, k=torch.zeros(2, 1, 1)), "batch size"),           # batch changed mid-way
    (lambda c: c.update(2, k=torch.zeros(1, 1, 1, dtype=torch.float64)), "dtype"),
])
def test_kv_cache_rejects_misuse(call, match):
    c = KVCache(6)
    c.update(0, k=torch.zeros(1, 2, 1))
    with pytest.raises(ValueError, match=match):
        call(c)


def test_kv_cache_max_len_is_checked():
    with pytest.raises(ValueError, match="max_len"):
        KVCache(0)


@pytest.mark.parametrize("kind", ["gqa", "mla-naive", "mla-absorb", "mla-reexpand"])
def test_crop_then_redecode_is_exact(kind):
    """Speculative decoding rolls the cache back; decoding again must match a fresh run."""
    model = _with_std(_model(**KINDS[kind]))
    idx = torch.randint(0, BASE["vocab_size"], (1, 20))
    cache = model.new_cache()
    model(idx[:, :12], cache=cache)
    model(torch.randint(0, BASE["vocab_size"], (1, 5)), start_pos=12, cache=cache)  # a rejected draft
    for c in cache:
        c.crop(12)
    got = model(idx[:, 12:], start_pos=12, cache=cache).logits
    torch.testing.assert_close(got, model(idx).logits[:, 12:], atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------ KV-cache accounting
def test_kv_cache_numbers_for_deepseek_v3():
    v3 = get_preset("deepseek-v3")
    mha = get_preset("deepseek-v3", kv_lora_rank=0, head_dim=128)     # 128 heads of 128, no MLA
    assert kv_cache_values_per_token(v3) == 512 + 64 == 576
    assert kv_cache_values_per_token(mha) == 2 * 128 * 128 == 32_768
    ctx = 128 * 1024
    b_mla, b_mha = kv_cache_bytes(v3, ctx), kv_cache_bytes(mha, ctx)
    assert b_mla == ctx * 61 * 576 * 2
    assert round(b_mla / 1e9, 2) == 9.21 and round(b_mla / 2**30, 2) == 8.58    # GB, GiB
    assert round(b_mha / 1e9) == 524
    assert b_mha / b_mla == pytest.approx(32_768 / 576)                     # ~ 56.9x smaller
    assert kv_cache_bytes(v3, ctx, "float32", batch=2) == 4 * b_mla


def test_kv_cache_values_for_gqa_and_mqa():
    assert kv_cache_values_per_token(ModelConfig(**BASE)) == 2 * 8 * 8
    assert kv_cache_values_per_token(ModelConfig(**BASE, num_key_value_heads=2)) == 2 * 2 * 8
    assert kv_cache_values_per_token(ModelConfig(**BASE, num_key_value_heads=1)) == 2 * 8


@pytest.mark.parametrize("kw, match", [
    (dict(context_len=-1), "context_len"), (dict(context_len=1.5), "context_len"),
    (dict(context_len=8, batch=0), "batch"), (dict(context_len=8, dtype="int3"), "dtype"),
])
def test_kv_cache_bytes_rejects_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        kv_cache_bytes(ModelConfig(**BASE), **kw)


def test_dtype_bytes():
    assert dtype_bytes("bfloat16") == 2 and dtype_bytes(torch.float32) == 4 and dtype_bytes("float8") == 1
