"""Multi-Token Prediction (V3 report eqs 21-25): D sequential modules; depth k predicts the token
k+1 steps ahead from depth k-1's hidden state and the embedding of the token k steps ahead,
through one transformer block and the main model's own (shared) embedding and output head."""

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
    weights (`shared_head.norm`), each module has its own final RMSNorm before the shared head."""

    def __init__(self, cfg: ModelConfig, block: nn.Module):
        super().__init__()
        d = cfg.hidden_size
        self.enorm = RMSNorm(d, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(d, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * d, d, bias=False)      # M_k
        self.block = block                                   # TRM_k
        self.norm = RMSNorm(d, cfg.rms_norm_eps)             # before the shared OutHead (eq 23)

    def forward(self, h_prev, emb_next, freqs_cis, start_pos: int = 0, cache=None):
        """h_prev, emb_next: (B, T, d) -> h^k: (B, T, d)."""
        h = self.eh_proj(torch.cat([self.enorm(emb_next), self.hnorm(h_prev)], dim=-1))
        return self.block(h, freqs_cis, start_pos, cache)


def mtp_losses(model, h: torch.Tensor, idx: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
    """Cross-entropy L^k of every depth k = 1..D (eq 24), unweighted.
    h: (B, T, d) final hidden state of the main model (before its final norm); idx, targets: (B, T)
    with targets[:, i] = idx[:, i+1]. Depth k sees positions i < T - k: it embeds t_{i+k} =
    idx[:, i+k] and predicts t_{i+k+1} = targets[:, i+k]. Target -1 is ignored."""
    losses = []
    T = idx.size(1)
    for k, module in enumerate(model.mtp, start=1):
        n = T - k                                            # positions that still have a target
        if n <= 0:
            break
        emb_next = model.embed_tokens(idx[:, k:])            # (B, n, d)  shared embedding
        h = module(h[:, :n], emb_next, model.freqs_cis[:n])  # (B, n, d)
        logits = model.lm_head(module.norm(h))               # shared output head (eq 23)
        losses.append(F.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                      targets[:, k:].reshape(-1), ignore_index=-1))
    return losses
