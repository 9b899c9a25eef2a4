"""Expert parallelism and the memory plan of DeepSeek-V3's training (V3 report, arXiv 2412.19437,
sections 3.1-3.3): what crosses the network per token, and what every GPU holds.

The cluster and the layout (report section and our reading where the report is silent):
    2,048 H800 GPUs = 256 nodes x 8, NVLink inside a node, InfiniBand between nodes     (3.1)
    16-way pipeline parallelism (DualPipe), 64-way expert parallelism over 8 nodes,
    ZeRO-1 data parallelism, no tensor parallelism                                      (3.2)
    NVLink 160 GB/s, IB 50 GB/s; a token goes to at most 4 nodes; 20 of 132 SMs talk   (3.2.2, 3.5.1)
    master weights and gradients FP32, AdamW moments BF16                              (3.3.3)
    dispatch in FP8, combine in BF16                                                   (3.3.3)
Inferred here, not stated: 2,048 / 16 = 128 GPUs hold each pipeline stage, so a routed expert
lives on 128 / 64 = 2 of them and everything else on all 128; the working copy of the weights is
BF16 (FP8 GEMM inputs are quantized from it online).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import ModelConfig
from .flops import param_count

GB = 1e9                      # memory in GB (10^9 bytes), as GPU data sheets state it


@dataclass(frozen=True)
class Cluster:
    """DeepSeek-V3's training cluster and parallel layout (defaults: the report's)."""
    gpus: int = 2048
    gpus_per_node: int = 8
    pp: int = 16                   # pipeline stages (DualPipe ranks)
    ep: int = 64                   # expert-parallel group: GPUs that share one layer's experts
    ib_GBps: float = 50.0          # InfiniBand per GPU
    nvlink_GBps: float = 160.0     # NVLink per GPU
    max_nodes_per_token: int = 4   # M of node-limited routing
    sms: int = 132                 # streaming multiprocessors of an H800
    comm_sms: int = 20             # of them doing all-to-all communication
    hbm_GB: float = 80.0           # H800 memory (80 GB HBM3)

    @property
    def nodes(self) -> int:
        return self.gpus // self.gpus_per_node

    @property
    def ep_nodes(self) -> int:
        return self.ep // self.gpus_per_node

    @property
    def dp(self) -> int:
        """GPUs that hold the same pipeline stage (data-parallel replicas of its dense part)."""
        return self.gpus // self.pp

    @property
    def expert_dp(self) -> int:
        """GPUs that hold the same routed expert."""
        return self.dp // self.ep

    @property
    def free_experts_per_node(self) -> float:
        """NVLink / IB: how many GPUs of a node one IB copy of a token can be forwarded to in the
        time IB delivers it (3.2 for V3, section 3.2.2)."""
        return self.nvlink_GBps / self.ib_GBps


V3_CLUSTER = Cluster()


def _check_pos_int(name, v):
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name}={v!r} must be a positive integer")


# ============================================================================ all-to-all
def nodes_per_token(indices: torch.Tensor, experts_per_node: int) -> torch.Tensor:
    """Distinct nodes each token's chosen experts live on (experts are laid out in order, node n
    holding experts n*experts_per_node ...). indices: (N, K) -> (N,) int64."""
    _check_pos_int("experts_per_node", experts_per_node)
    node = torch.as_tensor(indices).long() // experts_per_node                 # (N, K)
    hit = torch.zeros(node.size(0), int(node.max()) + 1 if node.numel() else 1, dtype=torch.bool)
    hit.scatter_(1, node, True)
    return hit.sum(1)


def gpus_per_token(indices: torch.Tensor, experts_per_gpu: int) -> torch.Tensor:
    """Distinct GPUs each token's chosen experts live on. (N, K) -> (N,)."""
    return nodes_per_token(indices, experts_per_gpu)


def alltoall_bytes(indices: torch.Tensor, experts_per_node: int, experts_per_gpu: int, hidden: int,
                   dispatch_bytes: float = 1.0, combine_bytes: float = 2.0, scale_group: int = 128,
                   scale_bytes: int = 4) -> dict:
    """Bytes one MoE layer moves for a batch of routing decisions, in V3's scheme (section 3.2.2):
    dispatch sends each token once over IB to every target node, then over NVLink to every target
    GPU in it; combine comes back the same way, the outputs of one node summed before IB.
    Dispatched values are FP8 (`dispatch_bytes` = 1) with one scale per `scale_group` values
    (`scale_bytes` each); combined values BF16 (2). Every target node is counted as remote (the
    upper bound; a token's own node needs no IB). Returns totals and per-token means."""
    _check_pos_int("experts_per_gpu", experts_per_gpu)
    _check_pos_int("hidden", hidden)
    if experts_per_node % experts_per_gpu:
        raise ValueError(f"experts_per_node={experts_per_node} must be a multiple of experts_per_gpu={experts_per_gpu}")
    idx = torch.as_tensor(indices).long()
    nodes = nodes_per_token(idx, experts_per_node).sum().item()
    gpus = gpus_per_token(idx, experts_per_gpu).sum().item()
    scales = math.ceil(hidden / scale_group) * scale_bytes if dispatch_bytes < 2 else 0
    d_vec, c_vec = hidden * dispatch_bytes + scales, hidden * combine_bytes
    out = {"tokens": idx.size(0), "nodes": nodes, "gpus": gpus,
           "ib_dispatch": nodes * d_vec, "ib_combine": nodes * c_vec,
           "nvlink_dispatch": gpus * d_vec, "nvlink_combine": gpus * c_vec}
    out["ib"] = out["ib_dispatch"] + out["ib_combine"]
    out["nvlink"] = out["nvlink_dispatch"] + out["nvlink_combine"]
    n = max(out["tokens"], 1)
    out["ib_per_token"], out["nvlink_per_token"] = out["ib"] / n, out["nvlink"] / n
    return out


def v3_ib_bytes_per_token(hidden: int = 7168, nodes: int = 4, dispatch_bytes: float = 1.0,
                          combine_bytes: float = 2.0, scale_group: int = 128, scale_bytes: int = 4) -> float:
    """The most IB bytes one token costs per MoE layer (forward): `nodes` copies out (FP8 plus
    scales) and `nodes` partial sums back (BF16)."""
    scales = math.ceil(hidden / scale_group) * scale_bytes if dispatch_bytes < 2 else 0
    return nodes * (hidden * dispatch_bytes + scales + hidden * combine_bytes)


def compute_comm_ratio(cfg: ModelConfig, seq_len: int = 4096, mfu: float = 0.455, peak: float = 989e12,
                       cluster: Cluster = V3_CLUSTER) -> dict:
    """Time one token spends in one MoE layer's compute (forward: attention + router + shared and
    K routed experts, at `mfu` of `peak`) against the time its all-to-all takes on IB (forward:
    dispatch + combine to max_nodes_per_token nodes at ib_GBps). Both are per GPU (each GPU has its
    own IB link and computes its own tokens). The backward doubles both, so the ratio holds."""
    d, I = cfg.hidden_size, cfg.moe_intermediate_size
    qk, v = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim
    H = cfg.num_attention_heads
    attn = (d * cfg.q_lora_rank + cfg.q_lora_rank * H * qk + d * (cfg.kv_lora_rank + cfg.qk_rope_head_dim)
            + cfg.kv_lora_rank * H * (cfg.qk_nope_head_dim + v) + H * v * d)
    moe = cfg.n_routed_experts * d + (cfg.n_shared_experts + cfg.num_experts_per_tok) * 3 * d * I
    flops = 2 * (attn + moe) + 2 * H * seq_len * (qk + v)              # attention over seq_len keys
    t_compute = flops / (mfu * peak)
    ib = v3_ib_bytes_per_token(d, cluster.max_nodes_per_token)
    t_comm = ib / (cluster.ib_GBps * 1e9)
    return {"flops": flops, "t_compute_s": t_compute, "ib_bytes": ib, "t_comm_s": t_comm,
            "comm_per_compute": t_comm / t_compute}


# ============================================================================ memory plan
# Bytes per parameter (section 3.3.3 for V3; ZeRO, arXiv 1910.02054 section 3.1, for the usual
# mixed-precision Adam: fp16 weight 2 + fp16 grad 2 + fp32 master, momentum and variance 12).
RECIPES = {
    "V3": {"weight": 2, "grad": 4, "master": 4, "adam_m": 2, "adam_v": 2},
    "mixed-precision Adam (ZeRO paper)": {"weight": 2, "grad": 2, "master": 4, "adam_m": 4, "adam_v": 4},
}


def param_split(cfg: ModelConfig) -> dict:
    """Parameters of the whole model (MTP modules included): routed experts vs everything else."""
    per_expert = 3 * cfg.hidden_size * cfg.moe_intermediate_size
    L = cfg.num_hidden_layers + cfg.num_nextn_predict_layers
    moe_layers = sum(cfg.is_moe_layer(i) for i in range(L))
    routed = moe_layers * cfg.n_routed_experts * per_expert
    total = param_count(cfg).total
    return {"total": total, "routed_experts": routed, "other": total - routed, "moe_layers": moe_layers,
            "layers": L, "embedding": cfg.vocab_size * cfg.hidden_size}


def activation_bytes_per_token_layer(cfg: ModelConfig, v3_tricks: bool = True) -> int:
    """An estimate of what one MoE block keeps per token for its backward pass.
    v3_tricks=True (sections 3.2.3, 3.3.3): RMSNorm outputs and MLA up-projections recomputed, so
    only the block input, the query latent (FP8), the KV latent and rope key (BF16), the attention
    output (E5M6, 1.5 B), softmax statistics, the residual after attention, the FP8 copies sent to
    the K routed experts and their SwiGLU inputs (FP8), the shared expert's FP8 input and SwiGLU
    input, and the router's scores (FP32) are kept. v3_tricks=False: everything in BF16, with the
    norm outputs, the expanded per-head q, k, v and the SwiGLU outputs stored."""
    d, H, I = cfg.hidden_size, cfg.num_attention_heads, cfg.moe_intermediate_size
    qk, v, K, S = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.num_experts_per_tok, \
        cfg.n_shared_experts
    latent_kv = cfg.kv_lora_rank + cfg.qk_rope_head_dim
    if v3_tricks:
        return int(2 * d + 1 * cfg.q_lora_rank + 2 * latent_kv + 1.5 * H * v + 4 * H
                   + 2 * d + K * (1 * d + 1 * 2 * I) + S * (1 * d + 1 * 2 * I) + 4 * cfg.n_routed_experts)
    return int(2 * (d + d + cfg.q_lora_rank + latent_kv + H * qk * 2 + H * v + H * v) + 4 * H
               + 2 * (d + d) + K * 2 * (d + 2 * I + I) + S * 2 * (d + 2 * I + I) + 4 * cfg.n_routed_experts)


def memory_per_gpu(cfg: ModelConfig, cluster: Cluster = V3_CLUSTER, dualpipe: bool = True,
                   recipe: str = "V3", tokens_per_microbatch: int = 4096, v3_tricks: bool = True,
                   zero1: bool = True) -> dict:
    """GB (10^9 bytes) one GPU holds on average under a PP x EP x DP layout (no tensor parallelism):
    layers split evenly over `cluster.pp` stages (DualPipe: two stages per GPU), each MoE layer's
    routed experts over `cluster.ep` GPUs, everything else replicated on the stage's DP GPUs.
    weights/grads: every parameter a GPU holds. master/adam: sharded by ZeRO-1 over all GPUs holding
    the parameter. activations: in-flight micro-batches (DualPipe PP + 1, 1F1B PP; Table 2) x
    tokens_per_microbatch x layers per stage x activation_bytes_per_token_layer. The embedding
    and head sit on one rank in reality; here they are averaged over the stages."""
    c = cluster
    for name, v in (("gpus", c.gpus), ("pp", c.pp), ("ep", c.ep), ("tokens_per_microbatch", tokens_per_microbatch)):
        _check_pos_int(name, v)
    if c.gpus % c.pp or c.dp % c.ep:
        raise ValueError(f"gpus={c.gpus} must be divisible by pp={c.pp}, and gpus/pp={c.dp} by ep={c.ep}")
    if recipe not in RECIPES:
        raise ValueError(f"recipe={recipe!r} must be one of {sorted(RECIPES)}")
    ps = param_split(cfg)
    copies = 2 if dualpipe else 1
    other = copies * ps["other"] / c.pp
    experts = copies * ps["routed_experts"] / (c.pp * c.ep)
    holders_other = copies * c.dp if zero1 else 1                 # GPUs holding one dense parameter
    holders_expert = copies * c.expert_dp if zero1 else 1
    b = RECIPES[recipe]
    opt = b["master"] + b["adam_m"] + b["adam_v"]
    layers_per_stage = ps["layers"] / c.pp
    in_flight = c.pp + 1 if dualpipe else c.pp
    act = in_flight * tokens_per_microbatch * layers_per_stage * activation_bytes_per_token_layer(cfg, v3_tricks)
    bill = {
        "params (billions)": (other + experts) / 1e9,
        "weights": (other + experts) * b["weight"] / GB,
        "gradients": (other + experts) * b["grad"] / GB,
        "master + AdamW": (ps["other"] * copies / c.pp / holders_other
                           + ps["routed_experts"] * copies / (c.pp * c.ep) / holders_expert) * opt / GB,
        "activations": act / GB,
    }
    bill["total"] = sum(v for k, v in bill.items() if k != "params (billions)")
    return bill


def describe_memory(pp: int = 16, ep: int = 64, gpus: int = 2048, tokens_per_microbatch: int = 4096,
                    dualpipe: bool = True, v3_tricks: bool = True, cfg: ModelConfig | None = None) -> str:
    """One line per item of `memory_per_gpu` (the widget's text; also called directly)."""
    from .config import get_preset
    cfg = cfg or get_preset("deepseek-v3")
    try:
        cl = Cluster(gpus=gpus, pp=pp, ep=ep)
        bill = memory_per_gpu(cfg, cl, dualpipe=dualpipe, tokens_per_microbatch=tokens_per_microbatch,
                              v3_tricks=v3_tricks)
    except ValueError as err:
        return f"not a valid layout: {err}"
    lines = [f"PP {pp} x EP {ep} on {gpus:,} GPUs (DP {cl.dp}, each expert on {cl.expert_dp} GPUs)"]
    lines += [f"{k:<18} {v:8.1f}" + ("" if k.startswith("params") else " GB") for k, v in bill.items()]
    verdict = "fits" if bill["total"] <= cl.hbm_GB else "does NOT fit"
    lines.append(f"{verdict} in an H800's {cl.hbm_GB:.0f} GB")
    return "\n".join(lines)
