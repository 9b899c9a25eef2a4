"""DeepSeekMoE (V3 report eqs 12-20): shared + fine-grained routed experts, sigmoid routing with
group-limited top-k, aux-loss-free load balancing by a selection-only bias, and the optional
sequence-wise balance loss."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import MLP


class Router(nn.Module):
    """Scores every expert, picks K per token; returns gate weights, expert ids and the scores.
    `bias` (V3: e_score_correction_bias) changes WHICH experts are picked, never their weights."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_routed_experts, cfg.num_experts_per_tok
        self.n_group, self.topk_group = cfg.n_group, cfg.topk_group
        self.scoring_func, self.norm_topk_prob = cfg.scoring_func, cfg.norm_topk_prob
        self.scale = cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.n_experts, cfg.hidden_size))   # centroids e_i
        self.register_buffer("bias", torch.zeros(self.n_experts, dtype=torch.float32))  # b_i

    def forward(self, x: torch.Tensor):
        """x: (N, d) -> weights (N, K), indices (N, K), scores (N, E)."""
        logits = F.linear(x.float(), self.weight.float())                         # (N, E), fp32
        scores = logits.sigmoid() if self.scoring_func == "sigmoid" else logits.softmax(-1)  # eq 15
        choice = scores + self.bias                                               # eq 16: select only
        if self.n_group > 1:                   # keep the topk_group groups whose 2 best sum highest
            N = x.size(0)
            grouped = choice.view(N, self.n_group, -1)                           # (N, G, E/G)
            group_scores = grouped.topk(2, dim=-1).values.sum(-1)                # (N, G)
            keep = group_scores.topk(self.topk_group, dim=-1).indices           # (N, topk_group)
            group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            choice = grouped.masked_fill(~group_mask[..., None], float("-inf")).view(N, -1)
        indices = choice.topk(self.top_k, dim=-1).indices                        # (N, K)
        weights = scores.gather(1, indices)                                      # unbiased s_i,t
        if self.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)          # eq 13
        return (weights * self.scale).to(x.dtype), indices, scores


class Experts(nn.Module):
    """E SwiGLU experts stored as stacked weights (as Hugging Face's DeepseekV3 stores them)."""

    def __init__(self, n_experts: int, dim: int, inter_dim: int):
        super().__init__()
        self.inter_dim = inter_dim
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * inter_dim, dim))  # (E, 2I, d)
        self.down_proj = nn.Parameter(torch.empty(n_experts, dim, inter_dim))         # (E, d, I)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on tokens x: (n, d) -> (n, d)."""
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        return F.linear(F.silu(gate) * up, self.down_proj[e])


def grouped_experts(experts: Experts, x_sorted: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Every expert on its own contiguous slice of tokens sorted by expert: (n, d) -> (n, d)."""
    outs = [experts.expert(e, xs) for e, xs in enumerate(x_sorted.split(counts)) if xs.numel()]
    return torch.cat(outs) if outs else x_sorted


class MoE(nn.Module):
    """h' = u + sum_i FFN^(s)_i(u) + sum_i g_i,t FFN^(r)_i(u)    (eq 12)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_routed_experts, cfg.num_experts_per_tok
        self.gate = Router(cfg)
        self.experts = Experts(cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        self.shared_experts = (MLP(cfg.hidden_size, cfg.n_shared_experts * cfg.moe_intermediate_size)
                               if cfg.n_shared_experts else None)
        self.dispatch = cfg.moe_dispatch
        self.alpha = cfg.aux_loss_alpha
        self.gamma = cfg.bias_update_speed
        # tokens each expert received since the last bias update (fp32, no gradient)
        self.register_buffer("load", torch.zeros(cfg.n_routed_experts), persistent=False)
        self.last_load: torch.Tensor | None = None      # tokens per expert in the last forward
        self.aux_loss: torch.Tensor | None = None       # sequence-wise balance loss of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        flat = x.reshape(-1, d)                                                  # (N, d)
        weights, indices, scores = self.gate(flat)                               # (N, K) x2, (N, E)
        counts = torch.bincount(indices.flatten(), minlength=self.n_experts)
        self.last_load = counts.detach()
        if self.training:
            self.load += counts.float()
        self.aux_loss = (sequence_balance_loss(scores.view(B, T, -1), indices.view(B, T, -1),
                                               self.alpha) if self.training and self.alpha > 0 else None)
        route = self._dispatch_loop if self.dispatch == "loop" else self._dispatch_fast
        y = route(flat, weights, indices, counts)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        return y.view(B, T, d)

    def _dispatch_loop(self, flat, weights, indices, counts):
        """Readable: for each expert, find its tokens, run it, add the weighted result back."""
        y = torch.zeros_like(flat)
        for e in range(self.n_experts):
            tok, slot = torch.where(indices == e)
            if tok.numel() == 0:
                continue
            out = self.experts.expert(e, flat[tok]) * weights[tok, slot, None]
            y.index_add_(0, tok, out)
        return y

    def _dispatch_fast(self, flat, weights, indices, counts):
        """Sort the N*K (token, expert) pairs by expert once, run each expert on one contiguous
        slice, then un-sort and sum the K results of each token (no atomics, deterministic)."""
        N, K = indices.shape
        order = indices.flatten().argsort(stable=True)                          # (N*K,)
        x_sorted = flat[order // K]                                              # (N*K, d)
        out_sorted = grouped_experts(self.experts, x_sorted, counts.tolist())
        out = torch.empty_like(out_sorted)
        out[order] = out_sorted * weights.flatten()[order, None]
        return out.view(N, K, -1).sum(1)

    # ------------------------------------------------------------------ balancing
    @torch.no_grad()
    def update_bias(self) -> None:
        """Aux-loss-free balancing: b_i += gamma * sign(mean load - load_i), after each step."""
        load = self.load
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)                     # every rank must apply the same update
        if self.gamma > 0 and load.sum() > 0:
            self.gate.bias += self.gamma * torch.sign(load.mean() - load)
        load.zero_()


def sequence_balance_loss(scores: torch.Tensor, indices: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eqs 17-20, averaged over sequences. scores: (B, T, E), indices: (B, T, K).
    f_i = E / (K T) * #tokens routed to i;  P_i = mean_t s_i,t / sum_j s_j,t;  L = alpha sum f_i P_i."""
    B, T, E = scores.shape
    K = indices.size(-1)
    chosen = torch.zeros(B, T, E, device=scores.device).scatter_(2, indices, 1.0)   # 1(i in top-K)
    f = chosen.sum(1) * E / (K * T)                                                # (B, E)  eq 18
    P = (scores / scores.sum(-1, keepdim=True)).mean(1)                            # (B, E)  eqs 19-20
    return alpha * (f * P).sum(-1).mean()                                          # eq 17


def max_violation(load: torch.Tensor) -> float:
    """MaxVio = max_i load_i / mean load - 1 (0 when perfectly balanced)."""
    load = load.float()
    return float(load.max() / load.mean() - 1) if load.sum() > 0 else math.nan
