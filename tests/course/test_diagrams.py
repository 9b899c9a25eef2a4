"""The architecture diagrams of minids.diagrams: each draws (Agg backend), shows the labelled parts
it claims, and stays readable at notebook width (no text outside the figure, no two texts on top of
each other, box labels inside their boxes). The router's toy example picks the same experts as the
package's Router, and the library core never imports matplotlib."""

from __future__ import annotations

import subprocess
import sys

import matplotlib
import pytest

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from minids import diagrams  # noqa: E402

# what each diagram must show (substrings of its texts); the lessons' prose relies on these parts
PARTS = {
    "attention_lookup": ["query $q_t$", "key $k_s$", "value $v_s$", "softmax", "masked", "output"],
    "rope_rotation": ["RoPE", "m - n", "$q$ at", "$k$ at", r"\theta_j"],
    "transformer_block": ["residual stream", "RMSNorm", "causal self-attention", "SwiGLU", "head\n1",
                          "$W^O$", "Pre-norm", "token embedding", "output head"],
    "kv_sharing": ["MHA", "GQA (2 groups)", "MQA", r"cache: $2\cdot8", r"cache: $2\cdot2", r"cache: $2\cdot1",
                   "kept in the KV cache"],
    "mla_dataflow": ["$W^{DQ}$", "$W^{DKV}$", "$W^{KR}$", "$W^{UK}$", "$W^{UV}$", "$W^{UQ}$", "$W^{QR}$",
                     "RMSNorm", "RoPE", "cached", r"\mathbf{c}^{KV}_t", r"\mathbf{k}^{R}_t",
                     "decoding folds $W^{UK}$ into the query", "$W^{UV}$ into the output side", "eq 1", "eq 3",
                     "eq 6", "(eq 11)", "shared by every head"],
    "mla_absorb": [r"W^{UK\top}", "$W^{UV}_i", "read as it is", "cached", r"\mathbf{c}^{KV}_j", "RoPE",
                   "same function as naive mode"],
    "router": [r"\sigma(\mathbf{u}_t^{\top}\mathbf{e}_i)", "(eq 15)", "$+\\,b_i$ to choose", "(eq 16)", "UNBIASED",
               "(eq 13)", "(eq 12)", "shared expert", "kept", "dropped", "top-2 sum", r"\gamma"],
    "v3_block": ["MLA", "DeepSeekMoE", "RMSNorm", "× 61 blocks", "first 3 keep a dense FFN", "shared\nexpert",
                 "256", "router", "576 values", "(512)", "(64)"],
    "mtp_chain": ["Main model", "MTP module 1", "MTP module 2", "embedding (shared)", "output head (shared)",
                  "(eq 21)", "(eq 22)", "(eq 24)", "RMSNorm", "targets", "input", "V3 uses D = 1"],
    "speculative_timeline": ["draft", "verify", "accept", "reject", "crop", "round 3", "3 main forwards",
                             "min(1, p/q)"],
    "fp8_linear": ["Fprop GEMM", "Dgrad GEMM", "Wgrad GEMM", "1x128 tiles", "128x128 blocks", "master W (FP32)",
                   "FP32 accumulate", "AdamW", "every 128 elements", "FP8 (E4M3) tensor"],
}


def _texts(fig):
    return [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]


def test_every_diagram_is_tested():
    assert set(PARTS) == set(diagrams.DIAGRAMS)


@pytest.mark.parametrize("name", sorted(PARTS))
def test_diagram_draws_its_labelled_parts_readably(name):
    fig = diagrams.DIAGRAMS[name]()
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = _texts(fig)
        strings = [t.get_text() for t in texts]
        missing = [p for p in PARTS[name] if not any(p in s for s in strings)]
        assert not missing, f"{name} lacks {missing}"
        w, h = fig.get_size_inches()
        assert w <= 9.6 and h <= 7.5, (w, h)                       # fits a notebook's width
        assert min(t.get_fontsize() for t in texts) >= 7.5          # readable there
        W, H = fig.bbox.width, fig.bbox.height
        boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
        for s, b in boxes:                                          # nothing cut off
            assert b.x0 >= -1 and b.y0 >= -1 and b.x1 <= W + 1 and b.y1 <= H + 1, (name, s)
        for i, (s1, b1) in enumerate(boxes):                        # no text on top of another
            for s2, b2 in boxes[i + 1:]:
                ox = min(b1.x1, b2.x1) - max(b1.x0, b2.x0)
                oy = min(b1.y1, b2.y1) - max(b1.y0, b2.y0)
                assert ox <= 1 or oy <= 1, (name, s1, s2)
        patches = {p.get_gid()[4:]: p for p in fig.findobj(Patch) if (p.get_gid() or "").startswith("box:")}
        labelled = 0
        for t in texts:                                             # every box label inside its box
            key = (t.get_gid() or "")[6:]
            if (t.get_gid() or "").startswith("label:") and key in patches:
                tb, pb = t.get_window_extent(renderer), patches[key].get_window_extent(renderer)
                inside = pb.x0 - 0.5 <= tb.x0 and tb.x1 <= pb.x1 + 0.5 and pb.y0 - 0.5 <= tb.y0 <= tb.y1 <= pb.y1 + 0.5
                assert inside, (name, t.get_text())
                labelled += 1
        if name != "rope_rotation":                                 # (a geometric picture, without boxes)
            assert labelled >= 5, (name, labelled)                  # a diagram of labelled parts, not a plot
    finally:
        plt.close(fig)


def test_router_toy_picks_what_the_package_router_picks():
    """The router diagram's numbers come from route_toy; minids.moe.Router must choose the same experts
    and give the same gate weights for those scores and biases."""
    import torch

    from minids.config import ModelConfig
    from minids.moe import Router

    scores = torch.tensor(diagrams.TOY_SCORES)
    n = len(scores)
    cfg = ModelConfig(hidden_size=n, n_routed_experts=n, num_experts_per_tok=4, n_group=4, topk_group=2,
                      moe_intermediate_size=8, routed_scaling_factor=1.0)
    r = Router(cfg)
    with torch.no_grad():
        r.weight.copy_(torch.eye(n))                        # u . e_i = u_i
        r.bias.copy_(torch.tensor(diagrams.TOY_BIAS))
    u = torch.logit(scores)[None]                           # sigmoid(u_i) = the toy score of expert i
    weights, idx, _ = r(u)
    kept, chosen, gates = diagrams.route_toy()
    assert sorted(idx[0].tolist()) == chosen
    got = dict(zip(idx[0].tolist(), weights[0].tolist(), strict=True))
    assert all(abs(got[i] - gates[i]) < 1e-5 for i in chosen)
    assert {i // 4 for i in chosen} <= set(kept) and len(kept) == 2
    # the bias matters in the picture: without it the choice differs (E6 would be picked)
    _, unbiased, _ = diagrams.route_toy(bias=[0.0] * n)
    assert unbiased != chosen and 5 in unbiased and 5 not in chosen


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mode"):
        diagrams.mla_dataflow("fast")
    with pytest.raises(ValueError, match="depth"):
        diagrams.mtp_chain(3)


def test_library_core_does_not_import_matplotlib():
    code = ("import sys, minids, minids.model, minids.train, minids.generate, minids.flops, minids.data; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
