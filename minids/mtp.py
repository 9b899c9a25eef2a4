"""Multi-Token Prediction (V3 report eqs 21-25): D sequential modules; depth k predicts the token
k+1 steps ahead from depth k-1's hidden state and the embedding of the token k steps ahead,
through one transformer block and the main model's own (shared) embedding and output head.

Indexing (0-based, as in the code): the main model reads t_0 .. t_{T-1} and predicts t_{i+1} at
position i with hidden state h^0_i. Depth k at position i reads h^{k-1}_i and t_{i+k} and
predicts t_{i+k+1}; it exists for i = 0 .. T-k-1 only (t_{i+k} must be an input token)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import RMSNorm


class MTPModule(nn.Module):
    """h'_i^k = M_k [RMSNorm(h_i^{k-1}) ; RMSNorm(Emb(t_{i+k}))]  (eq 21),  h^k = TRM_k(h'^k)  (eq 22).
    Note: the paper writes [hidden; embedding]; the released V3 weights (and this code) concatenate
    [embedding; hidden] -- the same function with M_k's columns swapped. As in the released
    weights (`shared_head.norm`), each module has its own final RMSNorm before the shared head.
    The module owns no embedding and no output head: those are the main model's (eqs 21, 23)."""

    def __init__(self, cfg: ModelConfig, block: nn.Module):
        super().__init__()
        d = cfg.hidden_size
        self.enorm = RMSNorm(d, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)      # M_k: (d, 2d)
        self.block = block                                   # TRM_k
        self.norm = RMSNorm(d, cfg.rms_norm_eps)             # before the shared OutHead (eq 23)

    def forward(self, h_prev, emb_next, freqs_cis, start_pos: int = 0, cache=None):
        """h_prev: (B, T, d) = h^{k-1}_i, emb_next: (B, T, d) = Emb(t_{i+k}) -> h^k: (B, T, d)."""
        h = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h_prev)], dim=-1))   # eq 21
        return self.block(h, freqs_cis, start_pos, cache)                                  # eq 22


def mtp_forward(model, k: int, h_prev: torch.Tensor, next_tokens: torch.Tensor, start_pos: int = 0,
                cache=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth k (1-based) at positions start_pos .. start_pos+T-1: h_prev (B, T, d) is h^{k-1} there,
    next_tokens (B, T) holds t_{i+k}. Returns (h^k (B, T, d), logits (B, T, vocab)) where the
    logits at position i predict t_{i+k+1} (eq 23). Embedding and head are the main model's."""
    module = model.mtp[k - 1]
    T = next_tokens.size(1)
    emb = model.embed_tokens(next_tokens)                             # shared embedding
    h = module(h_prev, emb, model.freqs_cis[start_pos:start_pos + T], start_pos, cache)
    return h, model.lm_head(module.norm(h))                           # shared output head, eq 23


def mtp_losses(model, h: torch.Tensor, idx: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
    """Cross-entropy L^k of every depth k = 1..D (eq 24), unweighted.
    h: (B, T, d) final hidden state of the main model (before its final norm); idx, targets: (B, T)
    with targets[:, i] = idx[:, i+1]. Depth k sees positions i < T - k: it embeds t_{i+k} =
    idx[:, i+k] and predicts t_{i+k+1} = targets[:, i+k]. Target -1 is ignored.
    Each L^k is the mean over depth k's T-k predictions; eq 24 writes the factor 1/T instead,
    which is the same loss times (T-k)/T (0.98 at T = 64): a rescaling of lambda, not another
    objective. Depths whose window is empty (T <= k) are left out."""
    losses = []
    T = idx.size(1)
    for k in range(1, len(model.mtp) + 1):
        n = T - k                                            # positions that still have a target
        if n <= 0:
            break
        h, logits = mtp_forward(model, k, h[:, :n], idx[:, k:])          # (B, n, d), (B, n, V)
        losses.append(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                      targets[:, k:].reshape(-1), ignore_index=-1))   # eq 24
    return losses
