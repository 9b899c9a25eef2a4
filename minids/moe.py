"""DeepSeekMoE (V3 report eqs 12-20): shared + fine-grained routed experts, sigmoid routing with
group-limited top-k, aux-loss-free load balancing by a selection-only bias, and the optional
sequence-wise balance loss.

Two dispatches compute the same function (tests hold them to 1e-6 in float32):
  `dispatch_loop`  readable: for each expert, find its tokens, run it, add the weighted result back.
  `dispatch_fast`  sort the (token, expert) pairs by expert once, lay the tokens out in one buffer
                   (rows grouped by expert), run every expert with a few batched matmuls, gather
                   the K results of each token back and sum them. Backends for the matmuls:
                   "bmm"        every expert padded to the same capacity, one torch.bmm (CPU default)
                   "slices"     one matmul per expert on its exact slice (when padding would waste)
                   "grouped_mm" torch._grouped_mm on a CUDA GPU in bf16 (guarded; falls back)
"""

from __future__ import annotations

import math
import warnings

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
        choice = scores + self.bias.float()                                       # eq 16: select only
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
        return F.linear(F.silu(gate) * up, self.down_proj[e])


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


def expert_layout(indices: torch.Tensor, counts: torch.Tensor, capacity: int | None = None,
                  align: int = 1):
    """Where each (token, expert) pair goes in a buffer whose rows are grouped by expert.
    indices: (N, K); counts: (E,) pairs per expert. With `capacity`, every expert gets exactly
    that many rows (for one bmm); else expert e gets counts[e] rows rounded up to `align`.
    Returns row (N*K,) the buffer row of each pair, src (R,) the token of each row (0 on padding
    rows), sizes (E,) rows per expert."""
    N, K = indices.shape
    E = counts.numel()
    e = indices.flatten()                                         # (P,) expert of pair p = t*K + k
    order = e.argsort(stable=True)                                # (P,) pairs sorted by expert
    if capacity is not None:
        sizes = torch.full_like(counts, capacity)
    else:
        sizes = (counts + align - 1) // align * align
        sizes[-1] += N * K + (align - 1) * E - sizes.sum()       # a fixed R: no host sync on GPU
    R = E * capacity if capacity is not None else N * K + (align - 1) * E
    starts = sizes.cumsum(0) - sizes                              # (E,) first row of each expert
    first = counts.cumsum(0) - counts                             # (E,) first sorted pair of each
    e_sorted = e[order]
    rows_sorted = starts[e_sorted] + torch.arange(N * K, device=e.device) - first[e_sorted]
    row = torch.empty_like(order).scatter_(0, order, rows_sorted)                     # (P,)
    src = torch.zeros(R, dtype=torch.long, device=e.device).scatter_(0, rows_sorted, order // K)
    return row, src, sizes


def grouped_linear(x: torch.Tensor, w: torch.Tensor, sizes: torch.Tensor, backend: str) -> torch.Tensor:
    """Rows of x grouped by expert (group g has sizes[g] rows) times w[g]^T.
    x: (R, in), w: (E, out, in) -> (R, out)."""
    if backend == "bmm":                                          # equal sizes: one batched matmul
        E = w.size(0)
        return torch.bmm(x.view(E, x.size(0) // E, x.size(-1)), w.transpose(1, 2)).flatten(0, 1)
    if backend == "grouped_mm":
        offs = sizes.cumsum(0).to(torch.int32)                    # end row of each group
        return torch._grouped_mm(x, w.transpose(1, 2), offs=offs)
    parts = [F.linear(xs, w[g]) for g, xs in enumerate(x.split(sizes.tolist())) if xs.size(0)]
    return torch.cat(parts) if parts else F.linear(x, w[0])


# bmm pads every expert to the busiest one's load. Measured here (1 CPU thread, d=128): bmm beats
# per-expert slices while the padded rows stay below ~2x the real ones (benchmarks/moe.py).
PAD_LIMIT = 2.0
GROUPED_MM_ALIGN = 16          # rows per group rounded up to this for _grouped_mm's kernels
_grouped_mm_failed = False


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return x.dtype


def _grouped_mm_usable(x: torch.Tensor, inter_dim: int = 8) -> bool:
    """torch._grouped_mm exists, we are on a Hopper-class (or newer) GPU, computing in bf16, and
    the rows are a multiple of 16 bytes long (its kernels' alignment rule)."""
    return (not _grouped_mm_failed and x.is_cuda and hasattr(torch, "_grouped_mm")
            and _compute_dtype(x) == torch.bfloat16 and x.size(-1) % 8 == 0 and inter_dim % 8 == 0
            and torch.cuda.get_device_capability(x.device) >= (9, 0))


def choose_backend(x: torch.Tensor, counts: torch.Tensor, inter_dim: int = 8) -> str:
    if _grouped_mm_usable(x, inter_dim):
        return "grouped_mm"
    padded = counts.numel() * int(counts.max()) if counts.numel() else 0
    return "bmm" if padded <= PAD_LIMIT * max(int(counts.sum()), 1) else "slices"


def dispatch_fast(experts: Experts, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                  counts: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """Same result as `dispatch_loop`, with a few big ops instead of a loop over experts."""
    global _grouped_mm_failed
    N, K = indices.shape
    E = experts.n_experts
    if counts is None:
        counts = torch.bincount(indices.flatten(), minlength=E)  # (E,)
    if backend == "auto":
        backend = choose_backend(x, counts, experts.inter_dim)
    if backend not in ("bmm", "slices", "grouped_mm"):
        raise ValueError(f"backend={backend!r} must be 'auto', 'bmm', 'slices' or 'grouped_mm'")
    capacity = int(counts.max()) if backend == "bmm" and N else (0 if backend == "bmm" else None)
    row, src, sizes = expert_layout(indices, counts, capacity,
                                    GROUPED_MM_ALIGN if backend == "grouped_mm" else 1)
    w_rows = weights.new_zeros(src.numel()).index_put((row,), weights.flatten())  # (R,) 0 on padding
    x_rows = x.index_select(0, src)                               # (R, d) tokens grouped by expert
    W1, W2 = experts.gate_up_proj, experts.down_proj
    if backend == "grouped_mm":
        dt = _compute_dtype(x)
        x_rows, W1, W2, w_rows = x_rows.to(dt), W1.to(dt), W2.to(dt), w_rows.to(dt)
    try:
        gate, up = grouped_linear(x_rows, W1, sizes, backend).chunk(2, dim=-1)     # (R, I) each
        # silu on a strided half was 3x slower than on a contiguous copy (CPU, measured);
        # g * down(h) = down(g * h): apply the gate weight on the narrower side
        h = F.silu(gate.contiguous()) * up * w_rows[:, None]
        out = grouped_linear(h, W2, sizes, backend)                              # (R, d)
    except RuntimeError as err:
        if backend != "grouped_mm":
            raise
        _grouped_mm_failed = True                                  # remember, and never try again
        warnings.warn(f"torch._grouped_mm failed ({err}); using bmm/slices from now on", stacklevel=2)
        return dispatch_fast(experts, x, weights, indices, counts)
    if out.is_cuda:     # gather each token's K rows and sum them: no atomics, deterministic
        y = out.index_select(0, row).view(N, K, x.size(-1)).sum(1)                  # (N, d)
    else:               # one pass: add every row into its token (padding rows are exact zeros)
        y = out.new_zeros(N, x.size(-1)).index_add_(0, src, out)                  # (N, d)
    return y.to(x.dtype)


class MoE(nn.Module):
    """h' = u + sum_i FFN^(s)_i(u) + sum_i g_i,t FFN^(r)_i(u)    (eq 12; the block adds u)."""

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
        # Tokens each expert received since the last bias update (fp32, no gradient). A plain
        # tensor, not a buffer: DDP broadcasts buffers from rank 0 before every forward, which
        # would overwrite the other ranks' counts during gradient accumulation.
        self.load = torch.zeros(cfg.n_routed_experts)
        self.last_load: torch.Tensor | None = None      # tokens per expert in the last forward
        self.aux_loss: torch.Tensor | None = None       # sequence-wise balance loss of the last forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        flat = x.reshape(-1, d)                                                  # (N, d)
        weights, indices, scores = self.gate(flat)                               # (N, K) x2, (N, E)
        counts = torch.bincount(indices.flatten(), minlength=self.n_experts)    # (E,)
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
