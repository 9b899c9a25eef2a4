"""The fast MoE dispatch: the function of `moe.dispatch_loop`, with a few big ops instead of a loop
over the experts (tests hold the two equal to 1e-6 in float32, outputs and gradients).

Sort the (token, expert) pairs by expert once, lay the tokens out in one buffer whose rows are
grouped by expert (`expert_layout`), run every expert on its rows with batched matmuls
(`grouped_linear`), then add each row, times its gate weight, back into its token.
Backends for the batched matmuls:
  "bmm"         every expert padded to the busiest one's rows, one torch.bmm (the CPU default)
  "slices"      one matmul per expert on its exact rows (when padding would waste more than it saves)
  "grouped_mm"  torch._grouped_mm, on a Hopper-class (or newer) GPU computing in bf16; if it raises
                (a GPU or build without its kernels), the call warns and uses bmm/slices instead
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

from .layers import swiglu

# bmm pads every expert to the busiest one's load. Measured on CPU (1 thread, d=128): bmm beats
# per-expert slices while the padded rows stay below ~2x the real ones (benchmarks/moe.py).
PAD_LIMIT = 2.0
GROUPED_MM_ALIGN = 16          # rows per group rounded up to this for _grouped_mm's kernels
BACKENDS = ("bmm", "slices", "grouped_mm")


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


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return x.dtype


def grouped_mm_usable(x: torch.Tensor, inter_dim: int) -> bool:
    """On a Hopper-class (or newer) GPU, computing in bf16, rows a multiple of 16 bytes long (the
    alignment rule of _grouped_mm's kernels)."""
    return (x.is_cuda and _compute_dtype(x) == torch.bfloat16 and x.size(-1) % 8 == 0
            and inter_dim % 8 == 0 and torch.cuda.get_device_capability(x.device) >= (9, 0))


def padded_backend(counts: torch.Tensor) -> str:
    """"bmm" while padding every expert to the busiest one's rows costs less than PAD_LIMIT x."""
    padded = counts.numel() * int(counts.max()) if counts.numel() else 0
    return "bmm" if padded <= PAD_LIMIT * max(int(counts.sum()), 1) else "slices"


def choose_backend(x: torch.Tensor, counts: torch.Tensor, inter_dim: int = 8) -> str:
    return "grouped_mm" if grouped_mm_usable(x, inter_dim) else padded_backend(counts)


def dispatch_fast(experts, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                  counts: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """sum_k g_t,k FFN_{i_t,k}(x_t) for every token at once. experts: `moe.Experts`;
    x: (N, d), weights/indices: (N, K), counts: (E,) tokens per expert if known -> (N, d)."""
    N, K = indices.shape
    if counts is None:
        counts = torch.bincount(indices.flatten(), minlength=experts.n_experts)   # (E,)
    if backend == "auto":
        backend = choose_backend(x, counts, experts.inter_dim)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be 'auto', 'bmm', 'slices' or 'grouped_mm'")
    capacity = (int(counts.max()) if N else 0) if backend == "bmm" else None
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
        out = grouped_linear(swiglu(gate.contiguous(), up) * w_rows[:, None], W2, sizes, backend)  # (R, d)
    except RuntimeError as err:
        if backend != "grouped_mm":
            raise
        warnings.warn(f"torch._grouped_mm failed ({err}); this dispatch uses bmm/slices", stacklevel=2)
        return dispatch_fast(experts, x, weights, indices, counts, padded_backend(counts))
    if out.is_cuda:     # gather each token's K rows and sum them: no atomics, deterministic
        y = out.index_select(0, row).view(N, K, x.size(-1)).sum(1)                  # (N, d)
    else:               # one pass: add every row into its token (padding rows are exact zeros)
        y = out.new_zeros(N, x.size(-1)).index_add_(0, src, out)                  # (N, d)
    return y.to(x.dtype)
