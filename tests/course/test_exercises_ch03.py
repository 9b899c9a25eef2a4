"""Every chapter-03 check passes on the solution, fails on the stub, and rejects plausible mistakes."""

import pytest
import torch
from nbutil import check_contract, notebook_namespace

from minids.checks import (
    CheckFailed,
    check_absorbed_output,
    check_absorbed_scores,
    check_mla_latents,
    check_split_wkv_b,
)
from minids.layers import apply_rotary_emb

SOL = notebook_namespace("solutions/03_mla.ipynb")
STUB = notebook_namespace("solutions/03_mla.ipynb", stubbed=True)


def _latents_no_norm(h, wkv_a, w, r, freqs):
    c, k = (h @ wkv_a.T).split([r, wkv_a.size(0) - r], -1)
    return c, apply_rotary_emb(k.unsqueeze(2), freqs).squeeze(2)


def _latents_no_rope(h, wkv_a, w, r, freqs):
    c, k = (h @ wkv_a.T).split([r, wkv_a.size(0) - r], -1)
    return c * torch.rsqrt(c.pow(2).mean(-1, keepdim=True) + 1e-6) * w, k


def _split_flat(w, H, nope, v):               # first H*nope rows as keys: ignores the per-head layout
    return w[:H * nope].view(H, nope, -1), w[H * nope:].view(H, v, -1)


def _split_transposed(w, H, nope, v):         # views (H, r, nope+v): wrong axis order
    t = w.view(H, nope + v, -1).transpose(1, 2).reshape(H, nope + v, -1)
    return t[:, :nope], t[:, nope:]


def _scores_no_rope(q_nope, q_pe, c_kv, k_pe, w_uk, scale):
    return torch.einsum("bthd,hdc,bsc->bhts", q_nope, w_uk, c_kv) * scale


def _scores_rope_unscaled(q_nope, q_pe, c_kv, k_pe, w_uk, scale):
    return (torch.einsum("bthd,hdc,bsc->bhts", q_nope, w_uk, c_kv) * scale
            + torch.einsum("bthr,bsr->bhts", q_pe, k_pe))


def _output_one_head(attn, c_kv, w_uv):
    return torch.einsum("bhts,bsc,vc->bthv", attn, c_kv, w_uv[0])


def _output_heads_first(attn, c_kv, w_uv):
    return torch.einsum("bhts,bsc,hvc->bhtv", attn, c_kv, w_uv)


CASES = {
    "mla_latents": (check_mla_latents, [_latents_no_norm, _latents_no_rope]),
    "split_wkv_b": (check_split_wkv_b, [_split_flat, _split_transposed]),
    "absorbed_scores": (check_absorbed_scores, [_scores_no_rope, _scores_rope_unscaled]),
    "absorbed_output": (check_absorbed_output, [_output_one_head, _output_heads_first]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_mistakes_are_named():
    with pytest.raises(CheckFailed, match="RMSNorm"):
        check_mla_latents(_latents_no_norm)
    with pytest.raises(CheckFailed, match="grouped per head"):
        check_split_wkv_b(_split_flat)
    with pytest.raises(CheckFailed, match="rope part"):
        check_absorbed_scores(_scores_no_rope)
    with pytest.raises(CheckFailed, match="its own W_UV"):
        check_absorbed_output(_output_one_head)


def test_checks_leave_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    check_mla_latents(SOL["mla_latents"])
    check_split_wkv_b(SOL["split_wkv_b"])
    assert torch.equal(torch.get_rng_state(), before)
