"""Checks for chapter 03 (Multi-head Latent Attention): absorbing W^UK into W^UQ and W^UV into W^O
offline (the merged matrices of V2/V3's §2.1), rope-aware absorbed scores over a latent cache at a
decoding offset; think questions (V3's cache bytes per token; what merging costs); the experiment
(how low-rank are the keys and values a trained model caches?)."""

from __future__ import annotations

import torch

from .checking import Checker, CheckFailed

FORBIDDEN = {
    "merge_weights": [],
    "absorbed_decode_scores": ["minids.attention.MLA._absorb", "minids.attention.MLA.forward",
                               "torch.nn.functional.scaled_dot_product_attention"],
}
POINTS = {"merge_weights": 3, "absorbed_decode_scores": 3, "cache_bytes_v3": 1, "merge_cost": 2,
          "kv_rank_experiment": 2}
NOT_MUTATED = {"kv_rank_experiment": "an experiment: each mutant would re-train the model; its check is tested "
                                     "on made-up and real measurements instead"}
# Reviewed equivalent mutants of the solutions (python -m minids mutation 03 -v lists the survivors).
EQUIVALENT_MUTANTS = {
    "merge_cost": {"`nope * r / (r - nope)` -> `nope * r // (r - nope)`": "170 instead of 170.7: a whole-number "
                   "answer is within the 1% tolerance"},
}

RANKS = (4, 8, 16, 32, 64)


# ----------------------------------------------------------------------------------- merging
def _split(wq_b, wkv_b, wo, H, nope, rope, v):
    q_rank, r, d = wq_b.size(1), wkv_b.size(1), wo.size(0)
    w_uq = wq_b.double().reshape(H, nope + rope, q_rank)[:, :nope]           # (H, nope, q_rank)
    w_kv = wkv_b.double().reshape(H, nope + v, r)
    w_uk, w_uv = w_kv[:, :nope], w_kv[:, nope:]                              # (H, nope, r), (H, v, r)
    w_o = wo.double().reshape(d, H, v).permute(1, 0, 2)                      # (H, d, v)
    return w_uq, w_uk, w_uv, w_o


def check_merge_weights(merge_weights) -> None:
    """merge_weights(wq_b, wkv_b, wo, n_heads, qk_nope_head_dim, qk_rope_head_dim, v_head_dim) ->
    (w_qk, w_ov): w_qk[h] = W^UQ_h^T W^UK_h of shape (q_lora_rank, kv_lora_rank), so that head h's
    content score is c_Q^T w_qk[h] c_KV; w_ov[h] = W^O_h W^UV_h of shape (hidden, kv_lora_rank), so
    that the layer's output is sum_h w_ov[h] o_h with o_h = sum_s a_s c_KV,s. Weights as stored by
    nn.Linear: wq_b (H (nope + rope), q_lora_rank) rows head by head [W^UQ_h; W^QR_h]; wkv_b
    (H (nope + v), kv_lora_rank) rows head by head [W^UK_h; W^UV_h]; wo (hidden, H v), the columns of
    head h are h*v .. (h+1)*v - 1."""
    with Checker("merge_weights") as c:
        g = torch.Generator().manual_seed(31)
        for n, (H, q_rank, r, nope, rope, v, d, dtype) in enumerate([
                (4, 24, 16, 8, 4, 6, 32, torch.float32), (2, 12, 12, 6, 2, 6, 16, torch.float32),
                (1, 8, 10, 4, 6, 5, 12, torch.float32), (3, 16, 8, 8, 4, 8, 24, torch.float64)]):
            wq_b = torch.randn(H * (nope + rope), q_rank, generator=g, dtype=dtype) / q_rank ** 0.5
            wkv_b = torch.randn(H * (nope + v), r, generator=g, dtype=dtype) / r ** 0.5
            wo = torch.randn(d, H * v, generator=g, dtype=dtype) / (H * v) ** 0.5
            if n == 1:                                                 # a non-contiguous weight (a transpose)
                wo = torch.randn(H * v, d, generator=g).T / (H * v) ** 0.5
            w_uq, w_uk, w_uv, w_o = _split(wq_b, wkv_b, wo, H, nope, rope, v)
            exp_qk = w_uq.transpose(1, 2) @ w_uk                        # (H, q_rank, r)
            exp_ov = w_o @ w_uv                                         # (H, d, r)
            got = c.call(merge_weights, wq_b, wkv_b, wo, H, nope, rope, v,
                         hint="per head: (q_lora_rank, nope) @ (nope, kv_lora_rank) and (hidden, v) @ "
                              "(v, kv_lora_rank)")
            what = (f"{H} heads, q_lora_rank={q_rank}, kv_lora_rank={r}, nope={nope}, rope={rope}, v={v}, "
                    f"hidden={d}, {str(dtype)[6:]}" + (" (wo non-contiguous)" if n == 1 else ""))
            if not isinstance(got, (tuple, list)) or len(got) != 2:
                raise CheckFailed(f"{what}: return (w_qk, w_ov), got {type(got).__name__}")
            w_qk, w_ov = got
            flat_uq = wq_b.double()[:H * nope].reshape(H, nope, q_rank)
            w_kv = wkv_b.double().reshape(H, nope + v, r)
            qk_mistakes = [
                (flat_uq.transpose(1, 2) @ w_uk, "the rows of wq_b come head by head, [W^UQ_h; W^QR_h] for each "
                 "head: view it as (n_heads, nope + rope, q_lora_rank) and keep the first nope rows of each"),
                (w_uk.transpose(1, 2) @ w_uq, "w_qk[h] = W^UQ_h^T W^UK_h, of shape (q_lora_rank, kv_lora_rank): c_Q "
                 "on the left, c_KV on the right"),
            ]
            ov_mistakes = [(wo.double().reshape(d, v, H).permute(2, 0, 1) @ w_uv, "the columns of wo come head by "
                            "head: head h owns columns h*v .. (h+1)*v - 1, i.e. wo.view(hidden, n_heads, v)[:, h]"),
                           (wo.double().reshape(H, d, v) @ w_uv, "wo is (hidden, n_heads * v): a head owns COLUMNS; "
                            "view it as (hidden, n_heads, v), not (n_heads, hidden, v)")]
            if nope == v:                             # the key and value rows of wkv_b swapped
                qk_mistakes.append((w_uq.transpose(1, 2) @ w_kv[:, nope:], "W^UK is the FIRST nope rows of each "
                                    "head's block of wkv_b (W^UV the last v rows)"))
                ov_mistakes.append((w_o @ w_kv[:, :nope], "W^UV is the LAST v rows of each head's block of wkv_b "
                                    "(W^UK the first nope rows)"))
            c.close(w_qk, exp_qk, what + ": w_qk", dtype=dtype, mistakes=qk_mistakes)
            c.close(w_ov, exp_ov, what + ": w_ov", dtype=dtype, mistakes=ov_mistakes)


# ----------------------------------------------------------------------------------- rope-aware scores
def _rotate(x, freqs):
    """x (B, T, H, R) real, freqs (T, R/2) complex -> rotated, float64."""
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * freqs.to(torch.complex128)[None, :, None, :]).flatten(-2)


def _scores_ref(q_nope, q_pe, c_kv, k_pe, w_uk, freqs, start, scale, q_pos=None, rotate_k=False,
                rotate_q=True, offset=True, mask=True, scale_rope=True):
    T, S = q_nope.size(1), c_kv.size(1)
    pos = torch.arange(start, start + T) if q_pos is None else q_pos
    qr = _rotate(q_pe, freqs[pos]) if rotate_q else q_pe.double()
    kr = _rotate(k_pe[:, :, None], freqs[:S])[:, :, 0] if rotate_k else k_pe.double()
    content = torch.einsum("bthd,hdc,bsc->bhts", q_nope.double(), w_uk.double(), c_kv.double())
    rope = torch.einsum("bthr,bsr->bhts", qr, kr)
    s = (content + rope) * scale if scale_rope else content * scale + rope
    if mask:
        s = s.masked_fill(~torch.ones(T, S, dtype=torch.bool).tril(S - T if offset else 0), float("-inf"))
    return s


def check_absorbed_decode_scores(absorbed_decode_scores) -> None:
    """absorbed_decode_scores(q_nope, q_pe, c_kv, k_pe, w_uk, freqs_cis, start_pos, scale) -> (B, H, T, S)
    attention scores of T new queries at positions start_pos .. start_pos + T - 1 against the S =
    start_pos + T cached positions, future positions masked with -inf. q_nope (B, T, H, nope); q_pe
    (B, T, H, rope) NOT yet rotated; c_kv (B, S, r) and k_pe (B, S, rope) as MLA caches them (k_pe
    already rotated at its own position); w_uk (H, nope, r); freqs_cis (max_len, rope/2) the complex
    RoPE table. Score = (q_nope . W^UK c_s + RoPE(q_pe) . k_pe_s) * scale, without expanding the cache."""
    with Checker("absorbed_decode_scores") as c:
        g = torch.Generator().manual_seed(32)
        from ..layers import precompute_freqs_cis
        for n, (B, T, start, H, nope, rope, r, scale, dtype) in enumerate([
                (1, 1, 0, 2, 8, 4, 12, 0.29, torch.float32), (2, 1, 6, 4, 8, 4, 12, 0.25, torch.float32),
                (1, 3, 5, 2, 6, 8, 10, 0.3, torch.float32), (2, 2, 0, 3, 4, 4, 8, 0.4, torch.float64),
                (1, 4, 9, 4, 8, 6, 16, 0.2, torch.float32)]):
            S = start + T
            freqs = precompute_freqs_cis(rope, 32, 10000.0 if n % 2 else 500.0)
            q = torch.randn(B, T, H, nope + rope, generator=g, dtype=dtype)
            q_nope, q_pe = q.split([nope, rope], dim=-1)                       # non-contiguous views, as in MLA
            if n != 2:
                q_nope, q_pe = q_nope.contiguous(), q_pe.contiguous()
            c_kv = torch.randn(B, S, r, generator=g, dtype=dtype)
            k_raw = torch.randn(B, S, rope, generator=g, dtype=dtype)
            k_pe = _rotate(k_raw[:, :, None], freqs[:S])[:, :, 0].to(dtype)     # cached keys: already rotated
            w_uk = (torch.randn(H, nope, r, generator=g, dtype=dtype) / r ** 0.5)
            args = (q_nope, q_pe, c_kv, k_pe, w_uk, freqs, start, scale)
            exp = _scores_ref(*args)
            got = c.call(absorbed_decode_scores, *args, forbidden=FORBIDDEN["absorbed_decode_scores"],
                         hint="content: einsum('bthd,hdc->bthc') then with c_kv 'bthc,bsc->bhts'; rope part "
                              "'bthr,bsr->bhts'")
            what = (f"(B, T, start_pos, H, nope, rope, r) = {(B, T, start, H, nope, rope, r)}, scale {scale}, "
                    f"{str(dtype)[6:]}" + (" (q_nope, q_pe non-contiguous)" if n == 2 else ""))
            mistakes = [
                (_scores_ref(*args, q_pos=torch.arange(T)), "rotate the queries at THEIR positions, start_pos .. "
                 "start_pos + T - 1 (freqs_cis[start_pos : start_pos + T]), not 0 .. T - 1"),
                (_scores_ref(*args, rotate_k=True), "the cached k_pe is already rotated (at its own position, when "
                 "its token was written): rotate only the queries"),
                (_scores_ref(*args, rotate_q=False), "rotate q_pe with RoPE (eq 8) before its dot product with the "
                 "cached rope keys"),
                (_scores_ref(*args, scale_rope=False), "scale both parts: (content + rope) * scale"),
            ]
            if S > T:
                mistakes.append((_scores_ref(*args, offset=False), "the T queries are the LAST T of the S "
                                 "positions: query t may see keys <= start_pos + t (tril(S - T))"))
            if T > 1:
                mistakes.append((_scores_ref(*args, mask=False), "mask the future: query t must not see the "
                                 "keys after its own position (fill them with -inf)"))
            c.close(got, exp, what, atol=1e-4, rtol=1e-4, dtype=dtype, mistakes=mistakes)


# ----------------------------------------------------------------------------------- think
def check_cache_bytes_v3(answer) -> None:
    """answer = {"mla": bytes one token adds to DeepSeek-V3's cache over all 61 layers in bfloat16 when
    decoding with absorption, "mha": the same for MHA with V3's 128 heads of 128}."""
    with Checker("cache_bytes_v3") as c:
        c.answer(answer)
        c.keys(answer, ["mla", "mha"], "the answer")
        mla, mha = (512 + 64) * 61 * 2, 2 * 128 * 128 * 61 * 2
        c.number(answer["mla"], mla, "MLA bytes per token (61 layers, bf16)", integer=True, mistakes=[
            (512 * 61 * 2, "the cache also holds the shared rope key k_R: 512 + 64 values per layer"),
            ((512 + 64 * 128) * 61 * 2, "the rope key is shared by all heads: 64 values, not 128 x 64"),
            ((512 + 64) * 2, "every one of the 61 layers caches its own latent"),
            ((512 + 64) * 61, "bfloat16 takes 2 bytes per value"),
            ((128 * 192 + 128 * 128) * 61 * 2, "that is V3's naive (expanded) cache; with absorption only c_KV "
                                                "and k_R are cached"),
        ])
        c.number(answer["mha"], mha, "MHA bytes per token (61 layers, bf16)", integer=True, mistakes=[
            (mha / 2, "a token caches a key AND a value per head"),
            (mha / 61, "every one of the 61 layers caches its own keys and values")])


def check_merge_cost(answer) -> None:
    """answer = {"unmerged": multiply-adds per token per head to turn c_Q into the absorbed query
    q~ = W^UK^T (W^UQ c_Q) in two steps, "merged": the same with the merged matrix (W^UQ^T W^UK)^T
    c_Q, "cheaper": "unmerged" | "merged", "break_even_q_rank": the q_lora_rank below which merging
    is cheaper} for V3: q_lora_rank 1536, qk_nope_head_dim 128, kv_lora_rank 512."""
    with Checker("merge_cost") as c:
        c.answer(answer)
        c.keys(answer, ["unmerged", "merged", "cheaper", "break_even_q_rank"], "the answer")
        q, nope, r = 1536, 128, 512
        c.number(answer["unmerged"], q * nope + nope * r, "two steps: W^UQ (nope x q_lora_rank), then W^UK^T "
                 "(kv_lora_rank x nope)", integer=True, mistakes=[
                     (q * nope, "count both steps: W^UQ c_Q, then W^UK^T q_C"),
                     (nope * r, "count both steps: W^UQ c_Q, then W^UK^T q_C"),
                     (2 * (q * nope + nope * r), "count multiply-adds (one per matrix entry), not FLOPs")])
        c.number(answer["merged"], q * r, "one step: the merged (q_lora_rank x kv_lora_rank) matrix",
                 integer=True, mistakes=[(2 * q * r, "count multiply-adds (one per matrix entry), not FLOPs")])
        c.choice(answer["cheaper"], "unmerged", ["unmerged", "merged"], "which is cheaper for V3",
                 mistakes={"merged": f"{q} x {r} = {q * r:,} > {q * nope + nope * r:,}: merging multiplies two thin "
                                     "matrices into a fat one"})
        c.number(answer["break_even_q_rank"], nope * r / (r - nope), "q_lora_rank where both cost the same",
                 rtol=0.01, mistakes=[(nope * r / (r + nope), "solve q r = q nope + nope r for q: q = nope r / "
                                                              "(r - nope)")])


# ----------------------------------------------------------------------------------- experiment
def check_kv_rank_experiment(results) -> None:
    """results = {"energy": {"untrained": {r: share}, "trained": {r: share}}, "rank_for_90":
    {"untrained": k, "trained": k}}: for the keys and values that layer 1 of the small baseline
    (hidden 64, 2 layers) caches for a batch of tokens, stacked as a (tokens, 128) matrix, the share
    of its squared singular values in the top r (r = 4, 8, 16, 32, 64), and the smallest k whose
    top-k share reaches 0.9; for the model before and after training."""
    with Checker("kv_rank_experiment") as c:
        c.answer(results)
        c.keys(results, ["energy", "rank_for_90"], "the results")
        c.keys(results["energy"], ["untrained", "trained"], "energy")
        c.keys(results["rank_for_90"], ["untrained", "trained"], "rank_for_90")
        for which in ("untrained", "trained"):
            try:
                e = {int(k): float(v) for k, v in results["energy"][which].items()}
            except (TypeError, ValueError):
                raise CheckFailed(f"energy[{which!r}]: expected {{rank: share}} with numbers") from None
            c.keys(e, RANKS, f"energy[{which!r}]")
            prev = 0.0
            for r in RANKS:
                c.in_range(e[r], r / 128 - 1e-6, 1.0 + 1e-6, f"{which}: share of the top {r} directions",
                           why=f"the top {r} of 128 sorted squared singular values hold at least {r}/128 of the total")
                c.true(e[r] >= prev - 1e-9, f"{which}: the share must grow with r (top {r}: {e[r]:.4f} < {prev:.4f})")
                prev = e[r]
            c.true(e[64] > 0.999, f"{which}: the top 64 directions must hold everything (got {e[64]:.4f}): the "
                   "keys and values are linear maps of a 64-dimensional hidden state, so the (tokens, 128) "
                   "matrix has rank <= 64 — did you stack keys and values of one layer of the hidden-64 model?")
            k = c.in_range(results["rank_for_90"][which], 1, 64, f"{which}: rank_for_90")
            c.true(float(k).is_integer(), f"{which}: rank_for_90 must be a whole number, got {k}")
            for r in RANKS:
                if k <= r:
                    c.true(e[r] >= 0.9 - 1e-6, f"{which}: rank_for_90 = {k:g} but the top {r} hold only {e[r]:.3f}")
                else:
                    c.true(e[r] < 0.9 + 1e-6, f"{which}: the top {r} already hold {e[r]:.3f} >= 0.9, so rank_for_90 "
                           f"cannot be {k:g}")
