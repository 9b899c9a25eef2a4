"""minids.parallel: all-to-all bytes, node-limited routing, the per-GPU memory plan."""

import math

import pytest
import torch

from minids import parallel as P
from minids.config import get_preset
from minids.moe import Router


def test_v3_cluster_facts():
    c = P.V3_CLUSTER
    assert (c.gpus, c.nodes, c.gpus_per_node, c.pp, c.ep, c.ep_nodes) == (2048, 256, 8, 16, 64, 8)
    assert (c.dp, c.expert_dp) == (128, 2)
    assert c.free_experts_per_node == pytest.approx(3.2)
    assert c.max_nodes_per_token * c.free_experts_per_node == pytest.approx(12.8)   # "13" in the report
    assert c.comm_sms / c.sms == pytest.approx(20 / 132)


def test_nodes_and_gpus_per_token_by_hand():
    idx = torch.tensor([[0, 1, 2, 3], [0, 4, 8, 12], [15, 14, 7, 6]])
    assert P.nodes_per_token(idx, 4).tolist() == [1, 4, 2]
    assert P.gpus_per_token(idx, 2).tolist() == [2, 4, 2]
    assert P.nodes_per_token(idx.t().contiguous().t(), 8).tolist() == [1, 2, 2]    # non-contiguous


def test_alltoall_bytes_by_hand():
    idx = [[0, 5], [1, 2]]                      # experts_per_node 4, per GPU 2, hidden 256
    b = P.alltoall_bytes(idx, experts_per_node=4, experts_per_gpu=2, hidden=256)
    # token 0: nodes {0, 1}, GPUs {0, 2}; token 1: node {0}, GPUs {0, 1}
    d = 256 * 1 + 2 * 4                         # FP8 values + 2 FP32 scales (groups of 128)
    assert (b["nodes"], b["gpus"]) == (3, 4)
    assert b["ib_dispatch"] == 3 * d and b["ib_combine"] == 3 * 256 * 2
    assert b["nvlink_dispatch"] == 4 * d and b["nvlink_combine"] == 4 * 512
    assert b["ib_per_token"] == (3 * d + 3 * 512) / 2
    bf16 = P.alltoall_bytes(idx, 4, 2, 256, dispatch_bytes=2)                      # no scales in BF16
    assert bf16["ib_dispatch"] == 3 * 512
    with pytest.raises(ValueError, match="multiple"):
        P.alltoall_bytes(idx, 4, 3, 256)


def test_v3_ib_bytes_per_token():
    assert P.v3_ib_bytes_per_token() == 4 * (7168 + 56 * 4 + 2 * 7168) == 86_912
    assert P.v3_ib_bytes_per_token(nodes=8, dispatch_bytes=2) == 8 * 4 * 7168


def test_node_limited_router_caps_nodes():
    torch.manual_seed(0)
    cfg = get_preset("deepseek-v3", hidden_size=64, q_lora_rank=32, kv_lora_rank=16)
    x = torch.randn(512, 64)
    limited, free = Router(cfg), Router(cfg.replace(n_group=1, topk_group=1))
    for r in (limited, free):
        torch.nn.init.normal_(r.weight, std=0.5)
    free.weight.data.copy_(limited.weight.data)
    per_node = cfg.n_routed_experts // cfg.n_group                 # 32 experts per node (group)
    n_lim = P.nodes_per_token(limited(x)[1], per_node)
    n_free = P.nodes_per_token(free(x)[1], per_node)
    assert n_lim.max() <= 4 and n_free.max() > 4
    assert n_free.float().mean() > n_lim.float().mean()


def test_compute_comm_ratio_is_order_one():
    r = P.compute_comm_ratio(get_preset("deepseek-v3"))
    assert r["ib_bytes"] == 86_912
    assert 0.3 < r["comm_per_compute"] < 1.5


def _tiny():
    return get_preset("mini-v3", vocab_size=64, num_nextn_predict_layers=0)


def test_param_split_by_hand():
    cfg = _tiny()
    s = P.param_split(cfg)
    assert s["moe_layers"] == 3 and s["layers"] == 4
    assert s["routed_experts"] == 3 * 8 * 3 * 128 * 77
    assert s["other"] + s["routed_experts"] == s["total"]


def test_memory_per_gpu_by_hand():
    cfg = _tiny()
    s = P.param_split(cfg)
    c = P.Cluster(gpus=8, gpus_per_node=4, pp=2, ep=2)               # dp 4, each expert on 2 GPUs
    bill = P.memory_per_gpu(cfg, c, dualpipe=False, tokens_per_microbatch=64)
    params = s["other"] / 2 + s["routed_experts"] / 4
    assert bill["params (billions)"] == pytest.approx(params / 1e9)
    assert bill["weights"] == pytest.approx(params * 2 / 1e9)
    assert bill["gradients"] == pytest.approx(params * 4 / 1e9)
    opt = (s["other"] / 2 / 4 + s["routed_experts"] / 4 / 2) * 8
    assert bill["master + AdamW"] == pytest.approx(opt / 1e9)
    act = 2 * 64 * 2 * P.activation_bytes_per_token_layer(cfg)
    assert bill["activations"] == pytest.approx(act / 1e9)
    dual = P.memory_per_gpu(cfg, c, dualpipe=True, tokens_per_microbatch=64)
    assert dual["weights"] == pytest.approx(2 * bill["weights"])
    assert dual["master + AdamW"] == pytest.approx(bill["master + AdamW"])   # sharded over 2x holders
    assert dual["activations"] == pytest.approx(bill["activations"] * 3 / 2)  # PP + 1 vs PP


def test_v3_memory_plan_fits_only_with_ep_and_recomputation():
    v3 = get_preset("deepseek-v3")
    bill = P.memory_per_gpu(v3)
    assert 60 < bill["total"] < 80 and 3.0 < bill["params (billions)"] < 4.0
    assert P.memory_per_gpu(v3, v3_tricks=False)["total"] > 80
    assert P.memory_per_gpu(v3, P.Cluster(ep=8))["total"] > 80
    assert "fits in an H800" in P.describe_memory()
    assert P.describe_memory(pp=7).startswith("not a valid layout")


def test_activation_estimate_v3():
    v3 = get_preset("deepseek-v3")
    assert P.activation_bytes_per_token_layer(v3) == 158_848
    assert P.activation_bytes_per_token_layer(v3, v3_tricks=False) > 2.5 * 158_848
    assert not math.isnan(P.memory_per_gpu(v3)["total"])
