"""The fast MoE dispatch: the function of `moe.dispatch_loop`, with a few big ops instead of a loop
over the experts (tests hold the two equal to 1e-6 in float32, outputs and gradients).

Sort the (token, expert) pairs by expert once, lay the tokens out in one buffer whose rows are
grouped by expert (`expert_layout`), run every expert on its rows with batched matmuls
(`grouped_linear`), then add each row, times its gate weight, back into its token.
Backends for the batched matmuls (`auto` picks, in this order, where they apply):
  "grouped_mm"  torch._grouped_mm: every expert's exact rows in one call, no padding, no host sync.
                On a Hopper-class (or newer) GPU in bf16, and eagerly on CPUs whose torch build runs
                it (2.13 does, fp32 too) when rows are 16-byte multiples; if it raises, the call
                warns and uses bmm/slices instead
  "grouped"     (while compiling, see below)
  "bmm"         every expert padded to the busiest one's rows, one torch.bmm
  "slices"      one matmul per expert on its exact rows (when padding would waste more than it saves)
  "grouped"     the custom op minids::grouped_mm: each expert's exact rows through torch.mm into
                one output buffer, with its own backward. Its shapes never depend on the routing,
                so torch.compile traces the whole MoE layer in one graph (no graph break) and
                fuses the elementwise work around it: `auto` picks it while compiling on CPU
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F

from .layers import swiglu

# bmm pads every expert to the busiest one's load. Measured on CPU (1 thread, d=128): bmm beats
# per-expert slices while the padded rows stay below ~2x the real ones (benchmarks/moe.py).
PAD_LIMIT = 2.0
GROUPED_MM_ALIGN = 16          # rows per group rounded up to this for _grouped_mm's CUDA kernels
BACKENDS = ("bmm", "slices", "grouped_mm", "grouped")


# ------------------------------------------------------------------ minids::grouped_mm
# A grouped matmul as one custom op: torch.compile sees an opaque call with a fixed output shape
# (R, out) and traces the rest of the layer around it. Inside, plain torch.mm per group.
def _group_bounds(offs: torch.Tensor) -> list[tuple[int, int, int]]:
    bounds, start = [], 0
    for g, end in enumerate(offs.tolist()):
        if end > start:
            bounds.append((g, start, end))
        start = end
    return bounds


@torch.library.custom_op("minids::grouped_mm", mutates_args=())
def grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """out[rows of g] = x[rows of g] @ w[g]^T. x: (R, in) rows grouped by g, w: (G, out, in),
    offs: (G,) int64, the end row of each group (offs[-1] == R) -> (R, out)."""
    out = x.new_empty(x.size(0), w.size(1))
    for g, a, b in _group_bounds(offs):
        torch.mm(x[a:b], w[g].t(), out=out[a:b])
    if offs.numel() and int(offs[-1]) < x.size(0):
        out[int(offs[-1]):] = 0
    return out


@grouped_mm.register_fake
def _(x, w, offs):
    return x.new_empty(x.size(0), w.size(1))


@torch.library.custom_op("minids::grouped_mm_weight_grad", mutates_args=())
def grouped_mm_weight_grad(grad: torch.Tensor, x: torch.Tensor, offs: torch.Tensor, n_groups: int) -> torch.Tensor:
    """dw[g] = grad[rows of g]^T @ x[rows of g]: (G, out, in); zero for a group with no rows."""
    dw = grad.new_zeros(n_groups, grad.size(1), x.size(1))
    for g, a, b in _group_bounds(offs):
        torch.mm(grad[a:b].t(), x[a:b], out=dw[g])
    return dw


@grouped_mm_weight_grad.register_fake
def _(grad, x, offs, n_groups):
    return grad.new_empty(n_groups, grad.size(1), x.size(1))


def _grouped_mm_setup(ctx, inputs, output):
    x, w, offs = inputs
    ctx.save_for_backward(x, w, offs)


def _grouped_mm_backward(ctx, grad):
    x, w, offs = ctx.saved_tensors
    dx = grouped_mm(grad, w.transpose(1, 2), offs) if ctx.needs_input_grad[0] else None
    dw = grouped_mm_weight_grad(grad, x, offs, w.size(0)) if ctx.needs_input_grad[1] else None
    return dx, dw, None


grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


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
    if backend == "grouped":
        return grouped_mm(x, w, sizes.cumsum(0))
    parts = [F.linear(xs, w[g]) for g, xs in enumerate(x.split(sizes.tolist())) if xs.size(0)]
    return torch.cat(parts) if parts else F.linear(x, w[0])


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    if x.is_cuda and torch.is_autocast_enabled("cuda"):
        return torch.get_autocast_dtype("cuda")
    return x.dtype


def grouped_mm_usable(x: torch.Tensor, inter_dim: int) -> bool:
    """torch._grouped_mm applies: on a Hopper-class (or newer) GPU computing in bf16, or eagerly on
    the CPU where this torch build runs it (fp32 too); rows a multiple of 16 bytes long either way
    (the alignment rule of its kernels: d and the expert width I times the element size)."""
    if x.is_cuda:
        return (_compute_dtype(x) == torch.bfloat16 and x.size(-1) % 8 == 0 and inter_dim % 8 == 0
                and torch.cuda.get_device_capability(x.device) >= (9, 0))
    row_bytes = x.element_size()
    return (x.device.type == "cpu" and not torch.compiler.is_compiling()   # its CPU meta kernel wants bf16
            and x.size(-1) * row_bytes % 16 == 0 and inter_dim * row_bytes % 16 == 0
            and _cpu_grouped_mm_works(x.dtype))


@functools.cache
def _cpu_grouped_mm_works(dtype: torch.dtype) -> bool:
    """Whether this torch build runs _grouped_mm on the CPU (newer builds do; measured on 2.13:
    faster than bmm at mini-v3's shape, no padding, no host sync; benchmarks/moe.py)."""
    try:
        x, w = torch.ones(4, 4, dtype=dtype, requires_grad=True), torch.ones(2, 4, 4, dtype=dtype)
        y = torch._grouped_mm(x, w, offs=torch.tensor([2, 4], dtype=torch.int32))
        y.backward(torch.ones(4, 4, dtype=dtype))       # (a stride-0 gradient, as from y.sum(), is refused)
        return bool(torch.allclose(y.detach().float(), torch.full((4, 4), 4.0)))
    except (RuntimeError, AttributeError, NotImplementedError, TypeError):
        return False


def padded_backend(counts: torch.Tensor) -> str:
    """"bmm" while padding every expert to the busiest one's rows costs less than PAD_LIMIT x."""
    padded = counts.numel() * int(counts.max()) if counts.numel() else 0
    return "bmm" if padded <= PAD_LIMIT * max(int(counts.sum()), 1) else "slices"


def choose_backend(x: torch.Tensor, counts: torch.Tensor, inter_dim: int = 8) -> str:
    if grouped_mm_usable(x, inter_dim):
        return "grouped_mm"
    if torch.compiler.is_compiling():   # bmm's padding and slices' sizes would read counts: a graph break
        return "grouped"
    return padded_backend(counts)


def expert_counts(indices: torch.Tensor, n_experts: int) -> torch.Tensor:
    """(token, expert) pairs per expert: (E,) int64. The same numbers as torch.bincount(indices,
    minlength=E), with a shape that does not depend on the data (so torch.compile keeps one graph)."""
    flat = indices.flatten()
    return torch.zeros(n_experts, dtype=torch.long, device=indices.device).index_add_(
        0, flat, torch.ones_like(flat))


def gather_rows(x: torch.Tensor, weights: torch.Tensor, row: torch.Tensor, src: torch.Tensor):
    """The tokens in expert order, and each row's gate weight (0 on padding rows).
    x: (N, d), weights: (N, K) -> x_rows (R, d), w_rows (R,)."""
    w_rows = weights.new_zeros(src.numel()).index_put((row,), weights.flatten())  # (R,) 0 on padding
    return x.index_select(0, src), w_rows


def expert_ffn(x_rows: torch.Tensor, w_rows: torch.Tensor, W1: torch.Tensor, W2: torch.Tensor,
               sizes: torch.Tensor, backend: str) -> torch.Tensor:
    """Every expert's SwiGLU on its rows, times the row's gate weight: (R, d) -> (R, d)."""
    gate, up = grouped_linear(x_rows, W1, sizes, backend).chunk(2, dim=-1)     # (R, I) each
    # silu on a strided half was 3x slower than on a contiguous copy (CPU, measured);
    # g * down(h) = down(g * h): apply the gate weight on the narrower side
    return grouped_linear(swiglu(gate.contiguous(), up) * w_rows[:, None], W2, sizes, backend)


def combine(out: torch.Tensor, row: torch.Tensor, src: torch.Tensor, N: int, K: int) -> torch.Tensor:
    """Each token's K expert rows summed: (R, d) -> (N, d)."""
    if out.is_cuda:     # gather each token's K rows and sum them: no atomics, deterministic
        return out.index_select(0, row).view(N, K, out.size(-1)).sum(1)
    # CPU: one pass, every row added into its token (padding rows are exact zeros)
    return out.new_zeros(N, out.size(-1)).index_add_(0, src, out)


# the stages of dispatch_fast, by name, for `python -m minids bench profile`
PROFILE_LABELS = {"expert_layout": "MoE layout (sort)", "gather_rows": "MoE gather",
                  "expert_ffn": "MoE expert matmuls", "combine": "MoE combine (scatter)"}


def dispatch_fast(experts, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                  counts: torch.Tensor | None = None, backend: str = "auto") -> torch.Tensor:
    """sum_k g_t,k FFN_{i_t,k}(x_t) for every token at once. experts: `moe.Experts`;
    x: (N, d), weights/indices: (N, K), counts: (E,) tokens per expert if known -> (N, d)."""
    N, K = indices.shape
    if counts is None:
        counts = expert_counts(indices, experts.n_experts)                          # (E,)
    if backend == "auto":
        backend = choose_backend(x, counts, experts.inter_dim)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be 'auto' or one of {BACKENDS}")
    capacity = (int(counts.max()) if N else 0) if backend == "bmm" else None
    row, src, sizes = expert_layout(indices, counts, capacity,
                                    GROUPED_MM_ALIGN if backend == "grouped_mm" and x.is_cuda else 1)
    x_rows, w_rows = gather_rows(x, weights, row, src)           # (R, d), (R,)
    W1, W2 = experts.gate_up_proj, experts.down_proj
    if backend == "grouped_mm":
        dt = _compute_dtype(x)
        x_rows, W1, W2, w_rows = x_rows.to(dt), W1.to(dt), W2.to(dt), w_rows.to(dt)
    try:
        out = expert_ffn(x_rows, w_rows, W1, W2, sizes, backend)                  # (R, d)
    except RuntimeError as err:
        if backend != "grouped_mm":
            raise
        warnings.warn(f"torch._grouped_mm failed ({err}); this dispatch uses bmm/slices", stacklevel=2)
        return dispatch_fast(experts, x, weights, indices, counts, padded_backend(counts))
    return combine(out, row, src, N, K).to(x.dtype)                               # (N, d)
