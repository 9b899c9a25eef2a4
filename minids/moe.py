"""DeepSeekMoE (V3 report eqs 12-20): shared + fine-grained routed experts, sigmoid routing with
group-limited top-k, aux-loss-free load balancing by a selection-only bias, and the optional
sequence-wise balance loss.

    h'_t = u_t + sum_i FFN^(s)_i(u_t) + sum_i g_i,t FFN^(r)_i(u_t)          eq 12   `MoE`
    g_i,t = g'_i,t / sum_j g'_j,t  for the K chosen experts                  eq 13   `Router`
    chosen: top-K of s_i,t + b_i, b_i for selection only                     eqs 14, 16
    s_i,t = sigmoid(u_t . e_i)                                               eq 15
    L_Bal = alpha sum_i f_i P_i                                              eqs 17-20 `sequence_balance_loss`
    b_i <- b_i + gamma sign(mean load - load_i), after each step                       `MoE.update_bias`

Two dispatches compute the routed sum of eq 12 (tests hold them to 1e-6 in float32):
`dispatch_loop` (here: for each expert, find its tokens, run it, add the weighted result back)
and `dispatch_fast` (in `moe_dispatch`: sorted by expert, batched matmuls), which MoE uses unless
the config says moe_dispatch="loop".
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig
from .layers import MLP, swiglu
from .moe_dispatch import dispatch_fast, expert_counts


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
        if self.bias.dtype != torch.float32:          # the dtype policy of minids.model
            raise ValueError(f"router bias dtype={self.bias.dtype} must be torch.float32 (V3 keeps it in "
                             "fp32: gamma=0.001 steps vanish in bf16); cast a model with "
                             "minids.model.cast_parameters(model, dtype), not model.to(dtype)")
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
        indices = choice.topk(self.top_k, dim=-1).indices                        # (N, K)  eq 14/16
        weights = scores.gather(1, indices)                                      # unbiased s_i,t
        if self.norm_topk_prob:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)          # eq 13
        return (weights * self.scale).to(x.dtype), indices, scores


class Experts(nn.Module):
    """E SwiGLU experts stored as stacked weights (as Hugging Face's DeepseekV3 stores them).
    One Parameter per matrix for all experts: an expert that got no tokens in a step still
    receives a (zero) gradient, so DDP never sees an unused parameter."""

    def __init__(self, n_experts: int, dim: int, inter_dim: int):
        super().__init__()
        self.n_experts, self.inter_dim = n_experts, inter_dim
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * inter_dim, dim))  # (E, 2I, d)
        self.down_proj = nn.Parameter(torch.empty(n_experts, dim, inter_dim))         # (E, d, I)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on tokens x: (n, d) -> (n, d)."""
        gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
        return F.linear(swiglu(gate, up), self.down_proj[e])


# =========================================================================== dispatch
def dispatch_loop(experts: Experts, x: torch.Tensor, weights: torch.Tensor,
                  indices: torch.Tensor) -> torch.Tensor:
    """sum_k g_t,k FFN_{i_t,k}(x_t), one expert at a time. x: (N, d), weights/indices: (N, K)."""
    y = torch.zeros_like(x)
    for e in range(experts.n_experts):
        tok, slot = torch.where(indices == e)                  # the tokens that chose e, and in which slot
        if tok.numel() == 0:
            continue
        y.index_add_(0, tok, experts.expert(e, x[tok]) * weights[tok, slot, None])
    return y


class MoE(nn.Module):
    """h' = u + sum_i FFN^(s)_i(u) + sum_i g_i,t FFN^(r)_i(u)    (eq 12; the block adds u)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_routed_experts, cfg.num_experts_per_tok
        self.router = Router(cfg)
        self.experts = Experts(cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size)
        self.shared_experts = (MLP(cfg.hidden_size, cfg.n_shared_experts * cfg.moe_intermediate_size)
                               if cfg.n_shared_experts else None)
        self.dispatch = cfg.moe_dispatch
        self.alpha = cfg.aux_loss_alpha
        self.gamma = cfg.bias_update_speed
        # Tokens each expert received since the last bias update (fp32, no gradient). A plain
        # tensor, not a buffer: DDP broadcasts buffers from rank 0 before every forward, which
        # would overwrite the other ranks' counts during gradient accumulation.
        self.load = torch.zeros(cfg.n_routed_experts)
        self.last_load: torch.Tensor | None = None      # tokens per expert in the last forward
        self.aux_loss: torch.Tensor | None = None       # sequence-wise balance loss of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        flat = x.reshape(-1, d)                                                  # (N, d)
        weights, indices, scores = self.router(flat)                               # (N, K) x2, (N, E)
        counts = expert_counts(indices, self.n_experts)                          # (E,)
        self.last_load = counts.detach()
        if self.training:
            if self.load.device != counts.device:
                self.load = self.load.to(counts.device)
            self.load += counts.float()
        self.aux_loss = (sequence_balance_loss(scores.view(B, T, -1), indices.view(B, T, -1),
                                               self.alpha) if self.training and self.alpha > 0 else None)
        if self.dispatch == "loop":
            y = dispatch_loop(self.experts, flat, weights, indices)
        else:
            y = dispatch_fast(self.experts, flat, weights, indices, counts)
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        return y.view(B, T, d)

    # ------------------------------------------------------------------ balancing
    @torch.no_grad()
    def update_bias(self) -> None:
        """Aux-loss-free balancing: b_i += gamma * sign(mean load - load_i), after each step."""
        load = self.load
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)                     # every rank must apply the same update
        if self.gamma > 0 and load.sum() > 0:
            self.router.bias += self.gamma * torch.sign(load.mean() - load)
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
