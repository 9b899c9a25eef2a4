"""Architecture diagrams for the lessons, drawn by code with matplotlib patches.

Part of the course, not of the library: matplotlib belongs to the [course] extra and is imported
inside the functions, so `import minids` and the model code never pull it in. Every function
returns a matplotlib Figure (end a notebook cell with `plt.show()`); `DIAGRAMS` lists them all.

One style everywhere: a colour per kind of thing (see `KINDS`), what a decoding step keeps in its
cache drawn with a thick green border, arrows for data flow, dashed arrows for what happens only
at a different time (decoding, after the step). Sizes are in "units" of half an inch, so text is
the same size in every diagram and every diagram fits a notebook's width (at most 19 units).

| function | chapter | shows |
|---|---|---|
| `attention_lookup` | 01 | attention as a soft lookup: a query scored against keys, weights mix values |
| `rope_rotation` | 01 | RoPE: a pair of features rotated by its position; the angle between q and k is m - n |
| `transformer_block` | 01 | the pre-norm block on the residual stream, with its heads |
| `kv_sharing` | 02 | MHA -> GQA -> MQA: which query heads read which key/value head, and what is cached |
| `mla_dataflow` | 03 | MLA (V3 eqs 1-11): down-projections, norms, decoupled RoPE key, the cache, absorption |
| `router` | 04 | V3's router (eqs 12-16): sigmoid scores, selection-only bias, groups, top-k, shared expert |
| `v3_block` | 06 | a DeepSeek-V3 block (report Figure 2): MLA and DeepSeekMoE on the residual stream |
| `mtp_chain` | 05 | the sequential MTP modules (report Figure 3) |
| `speculative_timeline` | 05 | self-speculative decoding: draft -> verify -> accept / roll back |
| `fp8_linear` | 09 | FP8 training of one linear layer (report Figure 6): three FP8 GEMMs, the rest in BF16/FP32 |
"""

from __future__ import annotations

import math

UNIT = 0.5                      # inches per drawing unit
FONT = 10                       # box text, points
SMALL = 8.5                     # notes and arrow labels, points

# one colour per kind of thing, the same in every diagram
KINDS = {
    "hidden": ("#eeeeee", "activations / residual stream"),
    "proj": ("#cfe2f3", "linear projection (learned weights)"),
    "norm": ("#fff2cc", "RMSNorm"),
    "rope": ("#e4dcf2", "RoPE (rotation by position)"),
    "attn": ("#fce5cd", "attention"),
    "ffn": ("#d5ece9", "feed-forward / experts"),
    "cache": ("#c9e7bd", "kept in the KV cache"),
    "out": ("#f4cccc", "outputs, losses"),
    "off": ("#f7f7f7", "not used"),
    "fp8": ("#f9cb9c", "FP8 (E4M3) tensor"),
    "quant": ("#e4dcf2", "quantization (a scale per tile or block)"),
}
CACHE_EDGE = "#38761d"
EDGE = "#555555"
ARROW = "#333333"
ACCENT = "#8e44ad"              # dashed notes: absorption, bias update, roll back
GOOD, BAD = "#2e7d32", "#c62828"


class _Canvas:
    """A figure whose axes are measured in units; boxes are remembered by key for arrows."""

    def __init__(self, width: float, height: float, title: str | None = None):
        import matplotlib.pyplot as plt

        self.fig = plt.figure(figsize=(width * UNIT, height * UNIT))
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_xlim(0, width)
        self.ax.set_ylim(0, height)
        self.ax.set_aspect("equal")
        self.ax.axis("off")
        self.w, self.h = width, height
        self.boxes: dict[str, tuple[float, float, float, float]] = {}
        if title:
            self.ax.text(width / 2, height - 0.45, title, ha="center", va="center", fontsize=FONT + 2,
                         fontweight="bold", gid="title")

    def box(self, key, x, y, text, kind="proj", w=2.6, h=0.8, fontsize=FONT, cached=False, **kw):
        """A rounded box centred at (x, y)."""
        from matplotlib.patches import FancyBboxPatch

        face = KINDS[kind][0]
        edge, lw = (CACHE_EDGE, 2.6) if cached or kind == "cache" else (kw.pop("edge", EDGE), kw.pop("lw", 1.0))
        patch = FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.02,rounding_size=0.15",
                               facecolor=face, edgecolor=edge, linewidth=lw, linestyle=kw.pop("ls", "-"),
                               gid=f"box:{key}")
        self.ax.add_patch(patch)
        self.ax.text(x, y, text, ha="center", va="center", fontsize=fontsize, color=kw.pop("color", "black"),
                     gid=f"label:{key}", **kw)
        self.boxes[key] = (x, y, w, h)
        return patch

    def at(self, key, side="c", shift=0.0):
        """A point on a box's edge: side in n, s, e, w, c; shift moves along the edge."""
        x, y, w, h = self.boxes[key]
        return {"n": (x + shift, y + h / 2), "s": (x + shift, y - h / 2), "e": (x + w / 2, y + shift),
                "w": (x - w / 2, y + shift), "c": (x, y)}[side]

    def arrow(self, a, b, label=None, color=ARROW, ls="-", lw=1.2, rad=0.0, label_at=0.5, label_dx=0.0,
              label_dy=0.0, ha="center", style="-|>", fontsize=SMALL):
        """An arrow from point a to point b (points, or (key, side) pairs)."""
        from matplotlib.patches import FancyArrowPatch

        a = self.at(*a) if isinstance(a[0], str) else a
        b = self.at(*b) if isinstance(b[0], str) else b
        self.ax.add_patch(FancyArrowPatch(a, b, arrowstyle=style, mutation_scale=11, color=color, lw=lw,
                                          linestyle=ls, connectionstyle=f"arc3,rad={rad}", shrinkA=1, shrinkB=1))
        if label:
            mx = a[0] + (b[0] - a[0]) * label_at + label_dx
            my = a[1] + (b[1] - a[1]) * label_at + label_dy
            self.ax.text(mx, my, label, ha=ha, va="center", fontsize=fontsize, color=color)

    def line(self, pts, color=ARROW, lw=1.2, ls="-", zorder=1.5):
        xs, ys = zip(*pts, strict=True)
        self.ax.plot(xs, ys, color=color, lw=lw, ls=ls, solid_capstyle="butt", zorder=zorder)

    def note(self, x, y, text, fontsize=SMALL, color="#333333", ha="center", va="center", **kw):
        self.ax.text(x, y, text, ha=ha, va=va, fontsize=fontsize, color=color, **kw)

    def plus(self, key, x, y, r=0.28):
        """A residual addition: a circled plus."""
        from matplotlib.patches import Circle

        self.ax.add_patch(Circle((x, y), r, facecolor="white", edgecolor=ARROW, lw=1.2, gid=f"box:{key}", zorder=3))
        self.ax.text(x, y, "+", ha="center", va="center", fontsize=FONT + 1, gid=f"label:{key}", zorder=4)
        self.boxes[key] = (x, y, 2 * r, 2 * r)

    def legend(self, kinds, y=0.35, x0=0.4):
        """A row of colour swatches for the kinds this diagram uses."""
        from matplotlib.patches import Rectangle

        x = x0
        for k in kinds:
            face, name = KINDS[k]
            edge, lw = (CACHE_EDGE, 2.0) if k == "cache" else (EDGE, 0.8)
            t = self.ax.text(x + 0.5, y, name, ha="left", va="center", fontsize=SMALL - 0.5)
            width = t.get_window_extent(renderer=self.fig.canvas.get_renderer()).width / self.fig.dpi / UNIT
            if x + 0.5 + width > self.w - 0.1:             # no room left: start a new row
                x, y = x0, y - 0.5
                t.set_position((x + 0.5, y))
            self.ax.add_patch(Rectangle((x, y - 0.18), 0.36, 0.36, facecolor=face, edgecolor=edge, lw=lw))
            x += 0.5 + width + 0.45


def _weights(scores):
    m = max(scores)
    e = [math.exp(s - m) for s in scores]
    return [v / sum(e) for v in e]


# ===================================================================================== chapter 01
def attention_lookup():
    """Attention as a soft dictionary lookup (chapter 01): the query of the last token is compared
    with the key of every token so far; the softmax of the scores weighs the values."""
    c = _Canvas(19, 9.6, "Attention is a soft lookup: one query, every key, a weighted mix of values")
    words = ["To", "be", ",", "or", "not"]
    scores = [0.2, 1.1, -0.6, 0.4, 1.9]                      # illustrative q.k / sqrt(D)
    a = _weights(scores)
    top, dy = 7.4, 1.15
    c.note(5.2, top + 0.95, "key $k_s$ of token $s$", fontsize=FONT)
    c.note(8.5, top + 0.95, r"score $q_t\cdot k_s/\sqrt{D}$", fontsize=FONT)
    c.note(11.9, top + 0.95, r"weight $a_{t,s}$ (softmax)", fontsize=FONT)
    c.note(15.0, top + 0.95, "value $v_s$", fontsize=FONT)
    c.box("q", 1.6, top - 2 * dy, "query $q_t$\n(token 'not',\nposition $t=5$)", kind="attn", w=2.6, h=1.6)
    for s, (word, sc, wt) in enumerate(zip(words, scores, a, strict=True)):
        y = top - s * dy
        c.box(f"k{s}", 5.2, y, f"$k_{s + 1}$  '{word}'", kind="proj", w=2.2, h=0.8)
        c.arrow(("q", "e"), (f"k{s}", "w"), lw=0.8 + 4 * wt)
        c.note(8.5, y, f"{sc:+.1f}", fontsize=FONT)
        from matplotlib.patches import Rectangle

        c.ax.add_patch(Rectangle((10.4, y - 0.3), 3.0 * wt, 0.6, facecolor=KINDS["attn"][0], edgecolor=EDGE))
        c.note(10.4 + 3.0 * wt + 0.15, y, f"{wt:.2f}", ha="left", fontsize=FONT)
        c.box(f"v{s}", 15.0, y, f"$v_{s + 1}$", kind="proj", w=1.4, h=0.8)
        c.arrow((f"v{s}", "e"), (17.3, 2.05), lw=0.8 + 4 * wt)
    y6 = top - 5 * dy
    c.box("k5", 5.2, y6, "$k_6$  (future)", kind="off", w=2.2, h=0.8, color="#999999", ls="--")
    c.note(8.5, y6, r"$-\infty$ (masked)", fontsize=FONT, color="#999999")
    c.box("o", 17.3, 1.55, "output\n" r"$o_t=\sum_s a_{t,s}\,v_s$", kind="out", w=2.8, h=1.0, fontsize=SMALL)
    c.note(6.5, 0.75, "Keys say what each token offers, the query what this token looks for; a large\n"
                      "score means a good match. Nothing is picked outright: every value is mixed, "
                      "weighted.", fontsize=SMALL, ha="center")
    return c.fig


def rope_rotation():
    """Why RoPE rotates (chapter 01): a query at position m and a key at position n are turned by
    m*theta and n*theta; their dot product depends on the angle between them, (m - n)*theta."""
    import numpy as np

    c = _Canvas(19, 8.2, "RoPE: rotate each feature pair by its position; the score sees only m - n")
    theta = 0.45
    q0, k0 = np.array([1.0, 0.25]), np.array([0.8, -0.45])
    panels = [(3.3, (2, 1)), (9.1, (6, 5))]
    for cx, (m, n) in panels:
        cy, r = 3.9, 2.4
        from matplotlib.patches import Arc, Circle

        c.ax.add_patch(Circle((cx, cy), r, fill=False, ls=":", color="#999999"))
        c.line([(cx - r - 0.3, cy), (cx + r + 0.3, cy)], color="#bbbbbb", lw=0.8)
        c.line([(cx, cy - r - 0.3), (cx, cy + r + 0.3)], color="#bbbbbb", lw=0.8)
        for vec, pos, name, col in ((q0, m, "q", "#c0504d"), (k0, n, "k", "#1f6fb2")):
            ang = pos * theta
            rot = np.array([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]]) @ vec
            tip = (cx + 2.0 * rot[0], cy + 2.0 * rot[1])
            c.arrow((cx, cy), tip, color=col, lw=2.0)
            c.note(tip[0] + 0.35 * np.sign(rot[0]), tip[1] + 0.3, f"${name}$ at {pos}", color=col, fontsize=FONT)
        a_q = math.degrees(math.atan2(*(np.array([[math.cos(m * theta), -math.sin(m * theta)],
                                                  [math.sin(m * theta), math.cos(m * theta)]]) @ q0)[::-1]))
        a_k = math.degrees(math.atan2(*(np.array([[math.cos(n * theta), -math.sin(n * theta)],
                                                  [math.sin(n * theta), math.cos(n * theta)]]) @ k0)[::-1]))
        c.ax.add_patch(Arc((cx, cy), 1.4, 1.4, theta1=min(a_q, a_k), theta2=max(a_q, a_k), color=ACCENT, lw=1.5))
        c.note(cx, cy - r - 0.75, f"m = {m}, n = {n}:  m - n = {m - n}", fontsize=FONT)
    c.note(15.3, 5.9, "One pair of features $(x_{2j}, x_{2j+1})$\nis a point in a plane.", fontsize=FONT)
    c.note(15.3, 4.3, r"Position $m$ turns it by $m\,\theta_j$:" "\n" r"$x \mapsto x\,e^{i m \theta_j}$.",
           fontsize=FONT)
    c.note(15.3, 2.6, "A rotation keeps lengths, and the dot\nproduct of two rotated vectors depends\n"
                      r"only on the angle between them, $(m-n)\,\theta_j$" "\n(purple arc): the same in "
                      "both panels.", fontsize=FONT)
    c.note(15.3, 0.9, r"$\theta_j = 10000^{-2j/D}$: fast turns for" "\n" r"small $j$, slow ones for large $j$",
           fontsize=SMALL)
    return c.fig


def transformer_block():
    """The pre-norm transformer block on the residual stream (chapter 01), with its heads."""
    c = _Canvas(18, 13.4, "A GPT: blocks that read from and add to the residual stream")
    X = 4.2                                               # the residual stream
    c.box("emb", X, 1.3, "token embedding\n(one row per token id)", kind="proj", w=3.8, h=1.0)
    c.box("head", X, 12.0, "RMSNorm, then output head\n→ logits over the vocabulary", kind="out", w=4.4, h=1.0)
    c.line([(X, 1.8), (X, 11.5)], color="#9e9e9e", lw=6, zorder=0.5)
    c.arrow((X, 11.0), (X, 11.45))
    c.note(X - 0.45, 6.4, "residual stream $h$ (width $d$)", rotation=90, fontsize=FONT, color="#616161")
    # the block, two branches
    c.plus("add1", X, 5.4)
    c.plus("add2", X, 9.7)
    c.box("n1", 8.0, 3.2, "RMSNorm", kind="norm", w=2.4)
    c.box("attn", 8.0, 4.6, "causal self-attention", kind="attn", w=3.4)
    c.box("n2", 8.0, 7.5, "RMSNorm", kind="norm", w=2.4)
    c.box("ffn", 8.0, 8.9, r"SwiGLU FFN: $W_2(\mathrm{silu}(W_g x)\odot W_u x)$", kind="ffn", w=5.4, fontsize=SMALL)
    c.line([(X, 2.5), (8.0, 2.5)])
    c.arrow((8.0, 2.5), ("n1", "s"))
    c.arrow(("n1", "n"), ("attn", "s"))
    c.line([(8.0, 5.0), (8.0, 5.4)])
    c.arrow((8.0, 5.4), ("add1", "e"))
    c.line([(X, 6.8), (8.0, 6.8)])
    c.arrow((8.0, 6.8), ("n2", "s"))
    c.arrow(("n2", "n"), ("ffn", "s"))
    c.line([(8.0, 9.3), (8.0, 9.7)])
    c.arrow((8.0, 9.7), ("add2", "e"))
    from matplotlib.patches import FancyBboxPatch

    c.ax.add_patch(FancyBboxPatch((5.9, 2.1), 5.9, 8.1, boxstyle="round,pad=0.05,rounding_size=0.3", fill=False,
                                  ls="--", edgecolor="#777777"))
    c.note(8.85, 10.45, r"one block, repeated $L$ times", fontsize=FONT)
    # the heads, drawn beside the attention box
    hx = 14.6
    c.note(hx, 7.9, "inside attention: $H$ heads", fontsize=FONT)
    for i in range(4):
        c.box(f"h{i}", 12.95 + 1.1 * i, 6.9, f"head\n{i + 1}", kind="attn", w=0.95, h=0.9, fontsize=SMALL)
    c.box("wo", hx, 5.3, "concatenate → $W^O$", kind="proj", w=3.6)
    for i in range(4):
        c.arrow((f"h{i}", "s"), ("wo", "n", -1.2 + 0.8 * i), lw=0.8)
    c.arrow(("attn", "e"), (12.5, 6.9), ls=":", color="#777777", style="-")
    c.note(hx, 3.9, "each head has its own $W^Q$, $W^K$, $W^V$\n(width $D = d/H$) and its own pattern:\n"
                    "several lookups per token, side by side", fontsize=SMALL)
    c.note(hx, 1.6, "Pre-norm: each branch normalises its own\ninput; the stream itself is only added to,\n"
                    "so every block sees a clean copy and\ngradients flow straight down the stream.", fontsize=SMALL)
    return c.fig


# ===================================================================================== chapter 02
def kv_sharing(n_heads: int = 8, groups: int = 2):
    """MHA -> GQA -> MQA (chapter 02): which query heads read which key/value head, and what the
    KV cache holds per token per layer."""
    c = _Canvas(19, 8.2, "Sharing key/value heads: MHA, GQA, MQA — and what each caches")
    kinds = [("MHA", n_heads), (f"GQA ({groups} groups)", groups), ("MQA", 1)]
    for p, (name, n_kv) in enumerate(kinds):
        x0 = 0.6 + p * 6.3
        cx = x0 + 2.9
        c.note(cx, 7.05, name, fontsize=FONT + 1, fontweight="bold")
        step = 5.6 / n_heads
        for i in range(n_heads):
            c.box(f"{p}q{i}", x0 + step * (i + 0.5), 5.9, f"$q_{i + 1}$", kind="attn", w=step * 0.8, h=0.7,
                  fontsize=SMALL)
        kv_step = 5.6 / n_kv
        for j in range(n_kv):
            kx = x0 + kv_step * (j + 0.5)
            bw = min(kv_step * 0.8, 2.4)
            c.box(f"{p}k{j}", kx, 3.75, "$k$" if n_kv > 2 else f"$k_{j + 1}$", cached=True, kind="cache",
                  w=bw, h=0.65, fontsize=SMALL)
            c.box(f"{p}v{j}", kx, 2.85, "$v$" if n_kv > 2 else f"$v_{j + 1}$", cached=True, kind="cache",
                  w=bw, h=0.65, fontsize=SMALL)
        per = n_heads // n_kv
        for i in range(n_heads):
            j = i // per
            c.arrow((f"{p}k{j}", "n", (i % per - (per - 1) / 2) * min(0.25, 1.6 / per)), (f"{p}q{i}", "s"),
                    lw=0.7, style="-")
        c.note(cx, 1.75, f"{n_kv} K + {n_kv} V head{'s' if n_kv > 1 else ''}" + (
            f"; {per} query heads share each" if per > 1 else "; one per query head"), fontsize=SMALL)
        c.note(cx, 1.1, rf"cache: $2\cdot{n_kv}\cdot d_h$ values / token / layer", fontsize=FONT)
    c.legend(["attn", "cache"], y=0.35, x0=5.5)
    return c.fig


# ===================================================================================== chapter 03
def mla_dataflow(mode: str = "naive"):
    """Multi-head Latent Attention (chapter 03; V3 report eqs 1-11, Figure 2's lower part).

    mode="naive": the equations as written, the latents expanded into per-head keys and values
    (training, prefill); green boxes are what decoding needs to keep (report §2.1.1), and the two
    dashed notes mark where absorption folds W^UK and W^UV away.
    mode="absorb": decoding attends over the cached latents directly: W^UK is applied to the
    query, W^UV after the attention-weighted sum."""
    if mode not in ("naive", "absorb"):
        raise ValueError(f"mode must be 'naive' or 'absorb', got {mode!r}")
    title = ("MLA (eqs 1–11): compress, expand per head; decoding needs only the green boxes" if mode == "naive"
             else "MLA, as decoded (absorb mode): attend over the cached latent directly")
    c = _Canvas(19, 14.4, title)
    xq, xkv, xr = 3.6, 10.0, 15.6
    c.box("h", 9.6, 0.9, r"hidden state $\mathbf{h}_t$ (width $d$ = 7168 in V3)", kind="hidden", w=13.5, h=0.8)
    # query path (eqs 6-9)
    c.box("dq", xq, 2.4, r"$W^{DQ}$  (down)", kind="proj")
    c.box("cq", xq, 3.7, r"RMSNorm → $\mathbf{c}^{Q}_t$ ($d_c'$=1536)", kind="norm", w=3.9)
    c.arrow((xq, 1.3), ("dq", "s"))
    c.arrow(("dq", "n"), ("cq", "s"), label="eq 6", label_dx=0.5, ha="left")
    c.box("uq", xq - 1.45, 5.2, r"$W^{UQ}$", kind="proj", w=1.7)
    c.box("qr", xq + 1.45, 5.2, r"$W^{QR}$", kind="proj", w=1.7)
    c.arrow(("cq", "n", -1.0), ("uq", "s"))
    c.arrow(("cq", "n", 1.0), ("qr", "s"))
    c.box("ropeq", xq + 1.45, 6.5, "RoPE", kind="rope", w=1.7)
    c.arrow(("qr", "n"), ("ropeq", "s"))
    c.box("qc", xq - 1.45, 7.9, r"$\mathbf{q}^{C}_{t,i}$ (eq 7)", kind="proj", w=2.4)
    c.box("qR", xq + 1.45, 7.9, r"$\mathbf{q}^{R}_{t,i}$ (eq 8)", kind="rope", w=2.4)
    c.arrow(("uq", "n"), ("qc", "s"))
    c.arrow(("ropeq", "n"), ("qR", "s"))
    # KV latent path (eqs 1, 2, 5)
    c.box("dkv", xkv, 2.4, r"$W^{DKV}$  (down)", kind="proj")
    c.arrow((xkv, 1.3), ("dkv", "s"))
    c.box("ckv", xkv, 3.9, r"RMSNorm → $\mathbf{c}^{KV}_t$" "\n" r"($d_c$ = 512)  cached", kind="cache", w=3.7, h=1.1)
    c.arrow(("dkv", "n"), ("ckv", "s"), label="eq 1", label_dx=0.5, ha="left")
    # rope key path (eq 3)
    c.box("kr_w", xr, 2.4, r"$W^{KR}$", kind="proj", w=2.0)
    c.arrow((xr, 1.3), ("kr_w", "s"))
    c.box("ropek", xr, 3.55, "RoPE", kind="rope", w=2.0)
    c.arrow(("kr_w", "n"), ("ropek", "s"))
    c.box("kR", xr, 4.9, r"$\mathbf{k}^{R}_t$ ($d_h^R$ = 64)" "\none for all heads, cached", kind="cache", w=3.9,
          h=1.1)
    c.arrow(("ropek", "n"), ("kR", "s"), label="eq 3", label_dx=0.4, ha="left")
    if mode == "naive":
        c.box("uk", xkv - 1.5, 5.6, r"$W^{UK}$", kind="proj", w=1.8)
        c.box("uv", xkv + 1.5, 5.6, r"$W^{UV}$", kind="proj", w=1.8)
        c.arrow(("ckv", "n", -1.0), ("uk", "s"))
        c.arrow(("ckv", "n", 1.0), ("uv", "s"))
        c.box("kc", xkv - 1.5, 7.0, r"$\mathbf{k}^{C}_{t,i}$ (eq 2)", kind="proj", w=2.3)
        c.box("vc", xkv + 1.5, 7.0, r"$\mathbf{v}^{C}_{t,i}$ (eq 5)", kind="proj", w=2.3)
        c.arrow(("uk", "n"), ("kc", "s"))
        c.arrow(("uv", "n"), ("vc", "s"))
        c.box("att", 9.2, 9.9, r"per head $i$: weights $\mathrm{softmax}_j\left([\mathbf{q}^C_{t,i};\mathbf{q}^R_{t,i}]"
              r"\cdot[\mathbf{k}^C_{j,i};\mathbf{k}^R_j]\,/\sqrt{d_h+d_h^R}\right)$ on the values "
              r"$\mathbf{v}^C_{j,i}$ (eqs 4, 9, 10)", kind="attn", w=16.2, h=1.0, fontsize=FONT)
        c.arrow(("qc", "n"), ("att", "s", xq - 1.45 - 9.2))
        c.arrow(("qR", "n"), ("att", "s", xq + 1.45 - 9.2))
        c.arrow(("kc", "n"), ("att", "s", xkv - 1.5 - 9.2))
        c.arrow(("vc", "n"), ("att", "s", xkv + 1.5 - 9.2))
        c.arrow(("kR", "n"), ("att", "s", xr - 9.2), label="shared by every head", label_dx=0.15, ha="left")
        c.box("wo", 9.2, 11.6, r"concatenate heads → $W^{O}$ → $\mathbf{u}_t$ (eq 11)", kind="proj", w=6.6)
        c.arrow(("att", "n"), ("wo", "s"))
        c.note(3.3, 11.45, "decoding folds $W^{UK}$ into the query:\n"
                           r"$\mathbf{q}^C\cdot W^{UK}\mathbf{c} = (W^{UK\top}\mathbf{q}^C)\cdot\mathbf{c}$",
               color=ACCENT, fontsize=SMALL)
        c.arrow((3.3, 10.85), ("uk", "n", -0.6), color=ACCENT, ls="--", rad=-0.3)
        c.note(15.3, 12.1, "and $W^{UV}$ into the output side:\n"
                           r"$\sum_j a_j W^{UV}\mathbf{c}_j = W^{UV}\sum_j a_j\mathbf{c}_j$",
               color=ACCENT, fontsize=SMALL)
        c.arrow((15.3, 11.5), ("uv", "e"), color=ACCENT, ls="--", rad=-0.2)
    else:
        c.box("absq", xq - 1.45, 9.3, r"$\tilde{\mathbf{q}}_{t,i} = W^{UK\top}_i\mathbf{q}^C_{t,i}$" "\n"
              r"($d_c$ numbers)", kind="proj", w=3.2, h=1.0, edge=ACCENT, lw=2.0)
        c.arrow(("qc", "n"), ("absq", "s"))
        c.box("att", 9.2, 10.9, r"per head $i$: $a_{t,j,i} = \mathrm{softmax}_j\left((\tilde{\mathbf{q}}_{t,i}"
              r"\cdot\mathbf{c}^{KV}_j + \mathbf{q}^R_{t,i}\cdot\mathbf{k}^R_j)\,/\sqrt{d_h+d_h^R}\right)$",
              kind="attn", w=16.2, h=1.0, fontsize=FONT)
        c.arrow(("absq", "n"), ("att", "s", xq - 1.45 - 9.2))
        c.arrow(("qR", "n"), ("att", "s", xq + 1.45 - 9.2))
        c.arrow(("ckv", "n"), ("att", "s", xkv - 9.2), label="read as it is: no per-head keys or values",
                label_dx=0.15, ha="left", label_at=0.35)
        c.arrow(("kR", "n"), ("att", "s", xr - 9.2))
        c.box("uv", 9.2, 12.3, r"$W^{UV}_i\left(\sum_j a_{t,j,i}\,\mathbf{c}^{KV}_j\right)$ → concatenate → $W^O$",
              kind="proj", w=8.4, edge=ACCENT, lw=2.0)
        c.arrow(("att", "n"), ("uv", "s"))
        c.note(9.2, 13.3, r"same function as naive mode; $W^{UK}$ and $W^{UV}$ moved out of the sum over cached "
                          "tokens", color=ACCENT, fontsize=SMALL)
    if mode == "absorb":
        c.legend(["proj", "rope", "attn", "cache"], y=0.2, x0=3.0)
    else:
        c.legend(["hidden", "proj", "norm", "rope", "attn", "cache"], y=13.45, x0=0.3)
    return c.fig


# ===================================================================================== chapter 04
TOY_SCORES = [0.58, 0.15, 0.40, 0.30, 0.71, 0.66, 0.12, 0.20,
              0.25, 0.30, 0.81, 0.40, 0.55, 0.08, 0.38, 0.45]
TOY_BIAS = [0.00, 0.00, 0.00, 0.00, 0.00, -0.35, 0.00, 0.15,
            0.08, 0.00, 0.00, 0.05, 0.00, 0.00, 0.00, 0.00]


def route_toy(scores=TOY_SCORES, bias=TOY_BIAS, n_group=4, topk_group=2, top_k=4):
    """V3's selection on one token's scores, in plain Python (what `router()` draws): groups score
    the sum of their two best biased scores, the best `topk_group` are kept, the top_k biased scores
    inside them are chosen; gate weights are the unbiased scores of the chosen, normalised.
    Returns (kept groups, chosen experts, gate weights)."""
    n = len(scores)
    per = n // n_group
    choice = [s + b for s, b in zip(scores, bias, strict=True)]
    group_score = [sum(sorted(choice[g * per:(g + 1) * per])[-2:]) for g in range(n_group)]
    kept = sorted(sorted(range(n_group), key=lambda g: -group_score[g])[:topk_group])
    cand = [i for i in range(n) if i // per in kept]
    chosen = sorted(sorted(cand, key=lambda i: -choice[i])[:top_k])
    total = sum(scores[i] for i in chosen)
    return kept, chosen, {i: scores[i] / total for i in chosen}


def router():
    """DeepSeek-V3's router on one token (chapter 04; report eqs 12-16, §2.1.2): 16 toy experts in
    4 groups, keep 2 groups, top-4 experts; the bias moves the choice, not the weights."""
    from matplotlib.patches import Rectangle

    c = _Canvas(19, 12.6, "V3's router for one token: score, bias to choose, groups, top-k, unbiased gates")
    n_group, per = 4, 4
    kept, chosen, gates = route_toy()
    c.box("u", 1.6, 9.0, r"token $\mathbf{u}_t$", kind="hidden", w=2.4)
    c.box("sig", 1.6, 7.2, r"$s_{i,t}=\sigma(\mathbf{u}_t^{\top}\mathbf{e}_i)$" "\n(eq 15)", kind="proj", w=2.7, h=1.1)
    c.arrow(("u", "s"), ("sig", "n"))
    c.box("bias", 1.6, 5.2, r"$+\,b_i$ to choose" "\n(eq 16)", kind="norm", w=2.7, h=1.1)
    c.arrow(("sig", "s"), ("bias", "n"))
    # the grid of experts: one column per group
    gx0, cw, ch = 4.2, 1.55, 0.62
    c.note(9.3, 11.2, "biased scores $s_{i,t}+b_i$ of 16 routed experts in 4 groups (nodes)", fontsize=FONT)
    group_score = []
    for g in range(n_group):
        x = gx0 + g * 2.55
        vals = [TOY_SCORES[i] + TOY_BIAS[i] for i in range(g * per, (g + 1) * per)]
        group_score.append(sum(sorted(vals)[-2:]))
        c.note(x + cw / 2, 10.5, f"group {g + 1}", fontsize=FONT, fontweight="bold" if g in kept else "normal",
               color="black" if g in kept else "#999999")
        for r in range(per):
            i = g * per + r
            y = 9.6 - r * (ch + 0.15)
            if i in chosen:
                face, edge, lw = "#f6b26b", "#b45f06", 2.0
            elif g in kept:
                face, edge, lw = KINDS["ffn"][0], EDGE, 0.8
            else:
                face, edge, lw = KINDS["off"][0], "#bbbbbb", 0.8
            c.ax.add_patch(Rectangle((x, y - ch / 2), cw, ch, facecolor=face, edgecolor=edge, lw=lw))
            label = f"E{i + 1}: {TOY_SCORES[i] + TOY_BIAS[i]:.2f}"
            c.note(x + cw / 2, y, label, fontsize=SMALL, color="black" if g in kept else "#999999")
            if TOY_BIAS[i]:
                c.note(x + cw + 0.08, y, f"{TOY_BIAS[i]:+.2f}", fontsize=SMALL - 0.5, ha="left", color=ACCENT)
        c.note(x + cw / 2, 6.55, f"top-2 sum {group_score[g]:.2f}", fontsize=SMALL,
               color="black" if g in kept else "#999999")
        c.note(x + cw / 2, 6.0, "kept" if g in kept else "dropped", fontsize=SMALL,
               color=GOOD if g in kept else "#999999", fontweight="bold")
    c.arrow(("bias", "e"), (gx0 - 0.1, 8.4))
    c.note(14.5, 8.7, "1. each group scores the sum of\n   its 2 best biased scores\n"
                      "2. keep the best 2 groups\n   (V3: 4 of 8 → at most 4 nodes)\n"
                      "3. choose the top 4 inside them\n   (V3: top 8 of 256)", fontsize=SMALL, ha="left")
    c.note(14.5, 6.45, "E6 scores 0.66 but was overloaded:\nits bias -0.35 keeps it out; E8\n"
                       "(0.20 + 0.15) gets in, small gate", fontsize=SMALL, ha="left", color=ACCENT)
    # gates
    gate_txt = ",  ".join(f"E{i + 1}: {gates[i]:.2f}" for i in chosen)
    c.box("gate", 9.6, 4.6, r"gates from the UNBIASED scores: $g_{i,t}=s_{i,t}/\sum_{j\ \mathrm{chosen}}s_{j,t}$"
          r" (eq 13), × routed_scaling_factor" "\n" + gate_txt, kind="attn", w=13.4, h=1.1, fontsize=SMALL + 0.5)
    c.arrow((9.6, 5.75), ("gate", "n"))
    c.box("shared", 4.0, 2.6, "shared expert\n(every token)", kind="ffn", w=2.8, h=1.0)
    c.box("routed", 9.6, 2.6, r"chosen routed experts" "\n" r"$\sum_i g_{i,t}\,\mathrm{FFN}^{(r)}_i(\mathbf{u}_t)$",
          kind="ffn", w=4.4, h=1.0)
    c.arrow(("gate", "s"), ("routed", "n"))
    c.box("out", 15.6, 2.6, r"$\mathbf{h}'_t=\mathbf{u}_t+\mathrm{FFN}^{(s)}(\mathbf{u}_t)+\sum_i g_{i,t}"
          r"\mathrm{FFN}^{(r)}_i(\mathbf{u}_t)$" "\n(eq 12)", kind="out", w=5.6, h=1.0, fontsize=SMALL)
    c.arrow(("shared", "e"), ("routed", "w"), style="-")
    c.arrow(("routed", "e"), ("out", "w"))
    c.arrow(("u", "w", -0.2), ("shared", "w"), rad=0.35)
    c.note(9.6, 0.95, r"after every step, outside the gradient:  $b_i \leftarrow b_i + \gamma\,"
                      r"\mathrm{sign}(\bar{c}-c_i)$  ($c_i$ = tokens expert $i$ got; V3: $\gamma$ = 0.001, "
                      "then 0)", color=ACCENT, fontsize=SMALL + 0.5)
    c.arrow((3.2, 0.95), ("bias", "w"), color=ACCENT, ls="--", rad=-0.45)
    return c.fig


# ===================================================================================== chapter 06
def v3_block():
    """A DeepSeek-V3 model (chapter 06; after the report's Figure 2): the block on the residual
    stream, its MLA attention and its DeepSeekMoE feed-forward, with V3's sizes."""
    c = _Canvas(19, 12.4, "DeepSeek-V3: the same pre-norm block, with MLA and DeepSeekMoE inside")
    X = 2.3
    c.box("emb", X + 1.6, 1.1, "token embedding", kind="proj", w=3.6)
    c.box("head", X + 1.6, 11.0, "RMSNorm → output head", kind="out", w=4.2)
    c.line([(X, 1.5), (X, 10.6)], color="#9e9e9e", lw=6, zorder=0.5)
    c.plus("a1", X, 4.7)
    c.plus("a2", X, 8.7)
    c.box("n1", 5.2, 2.8, "RMSNorm", kind="norm", w=2.2)
    c.box("mla", 5.2, 3.9, "MLA", kind="attn", w=2.2)
    c.box("n2", 5.2, 6.8, "RMSNorm", kind="norm", w=2.2)
    c.box("moe", 5.2, 7.9, "DeepSeekMoE", kind="ffn", w=2.4)
    for lo, n, blk, add, top in ((2.2, "n1", "mla", "a1", 4.7), (6.2, "n2", "moe", "a2", 8.7)):
        c.line([(X, lo), (5.2, lo)])
        c.arrow((5.2, lo), (n, "s"))
        c.arrow((n, "n"), (blk, "s"))
        c.line([(5.2, c.at(blk, "n")[1]), (5.2, top)])
        c.arrow((5.2, top), (add, "e"))
    c.note(5.2, 9.65, "× 61 blocks (d = 7168);\nthe first 3 keep a dense FFN", fontsize=SMALL)
    # zoom: DeepSeekMoE
    c.note(13.1, 11.25, "DeepSeekMoE (eqs 12–16, chapter 04)", fontsize=FONT, fontweight="bold")
    c.box("sh", 9.8, 10.2, "shared\nexpert", kind="ffn", w=1.9, h=0.9, fontsize=SMALL)
    for i in range(6):
        on = i in (1, 4)
        c.box(f"r{i}", 11.7 + 1.0 * i if i < 5 else 17.45, 10.2, f"{i + 1}" if i < 5 else "256",
              kind="ffn" if on else "off", w=0.85, h=0.9, fontsize=SMALL, edge="#b45f06" if on else "#bbbbbb",
              lw=2 if on else 0.8)
    c.note(16.57, 10.2, "…", fontsize=FONT)
    c.box("rt", 14.2, 8.3, "router: sigmoid scores, top-8;\nits bias changes only the choice", kind="norm",
          w=5.0, h=1.0, fontsize=SMALL)
    c.arrow(("rt", "n", 12.7 - 14.2), ("r1", "s"), lw=0.9)
    c.arrow(("rt", "n", 15.7 - 14.2), ("r4", "s"), lw=0.9)
    c.note(9.8, 9.3, "always on", fontsize=SMALL)
    c.note(14.2, 7.3, "256 routed experts (hidden 2048); 8 chosen per token, on at most 4 nodes", fontsize=SMALL)
    c.arrow(("moe", "e"), ("rt", "w"), ls=":", color="#777777", style="-")
    # zoom: MLA
    c.note(13.1, 6.55, "MLA (eqs 1–11, chapter 03)", fontsize=FONT, fontweight="bold")
    c.box("ml_h", 9.6, 3.7, r"$\mathbf{h}_t$", kind="hidden", w=1.4)
    c.box("ml_c", 12.4, 5.0, r"$\mathbf{c}^{KV}_t$ (512)", kind="cache", w=2.6)
    c.box("ml_r", 12.4, 3.4, r"$\mathbf{k}^R_t$ (64), RoPE", kind="cache", w=2.6)
    c.box("ml_q", 12.4, 1.9, r"$\mathbf{c}^Q_t$ (1536) → $\mathbf{q}$", kind="proj", w=2.6)
    c.box("ml_k", 16.4, 5.0, "128 heads' keys\nand values", kind="proj", w=2.8, h=1.0, fontsize=SMALL)
    c.box("ml_a", 16.4, 2.9, "attention\n128 heads", kind="attn", w=2.8, h=1.0, fontsize=SMALL)
    c.arrow(("ml_h", "e"), ("ml_c", "w"))
    c.arrow(("ml_h", "e"), ("ml_r", "w"))
    c.arrow(("ml_h", "e"), ("ml_q", "w"))
    c.arrow(("ml_c", "e"), ("ml_k", "w"))
    c.arrow(("ml_k", "s"), ("ml_a", "n"))
    c.arrow(("ml_r", "e"), ("ml_a", "w", 0.2))
    c.arrow(("ml_q", "e"), ("ml_a", "w", -0.3))
    c.arrow(("mla", "e"), ("ml_h", "w"), ls=":", color="#777777", style="-")
    c.note(14.3, 6.45 - 0.6, "cached per token per layer: 512 + 64 = 576 values (MHA: 32,768)", fontsize=SMALL)
    c.legend(["hidden", "proj", "norm", "attn", "ffn", "cache"], y=0.75, x0=7.2)
    return c.fig


# ===================================================================================== chapter 05
def mtp_chain(depth: int = 2):
    """Multi-Token Prediction (chapter 05; after the report's Figure 3): the main model and `depth`
    sequential MTP modules sharing one embedding and one output head. V3 uses depth 1."""
    if depth not in (1, 2):
        raise ValueError(f"depth must be 1 or 2, got {depth}")
    c = _Canvas(19, 12.6, f"MTP with D = {depth} (V3 uses D = 1): each depth predicts one token further")
    cols = [("Main model", 3.1, 1)] + [(f"MTP module {k}", 3.1 + 6.3 * k, k + 1) for k in range(1, depth + 1)]
    T = 4
    for name, cx, shift in cols:
        k = shift - 1
        c.note(cx, 11.6, name, fontsize=FONT + 1, fontweight="bold")
        ins = [f"$t_{i + k}$" for i in range(1, T + 1)]
        outs = [f"$t_{i + k + 1}$" for i in range(1, T + 1)]
        c.note(cx, 0.7, "input:  " + "  ".join(ins), fontsize=FONT)
        c.box(f"emb{k}", cx, 1.7, "embedding (shared)", kind="proj", w=4.6)
        c.arrow((cx, 1.0), (f"emb{k}", "s"))
        if k == 0:
            c.box("trm0", cx, 5.6, "transformer blocks × L", kind="attn", w=4.6, h=1.6)
            c.arrow(("emb0", "n"), ("trm0", "s"))
            top = "trm0"
        else:
            c.box(f"en{k}", cx + 1.15, 3.0, "RMSNorm", kind="norm", w=2.1)
            c.box(f"hn{k}", cx - 1.15, 3.0, "RMSNorm", kind="norm", w=2.1)
            c.arrow((f"emb{k}", "n", 1.15), (f"en{k}", "s"))
            c.box(f"cat{k}", cx, 4.3, f"concatenate → linear $M_{k}$ (eq 21)", kind="proj", w=4.6)
            c.arrow((f"en{k}", "n"), (f"cat{k}", "s", 1.15))
            c.arrow((f"hn{k}", "n"), (f"cat{k}", "s", -1.15))
            c.box(f"trm{k}", cx, 5.9, f"one transformer block\n$\\mathrm{{TRM}}_{k}$ (eq 22)", kind="attn", w=4.6,
                  h=1.0)
            c.arrow((f"cat{k}", "n"), (f"trm{k}", "s"))
            prev = f"trm{k - 1}"
            px = c.at(prev, "e")[0]
            c.line([(px, c.at(prev, "c")[1]), (px + 0.45, c.at(prev, "c")[1]), (px + 0.45, 2.35),
                    (cx - 1.15, 2.35)], color=ACCENT)
            c.arrow((cx - 1.15, 2.35), (f"hn{k}", "s"), color=ACCENT)
            c.note(px + 0.55, 3.3 if k == 1 else 3.5, f"$\\mathbf{{h}}^{{{k - 1}}}$", color=ACCENT, fontsize=FONT,
                   ha="left")
            top = f"trm{k}"
        c.box(f"oh{k}", cx, 7.6, "RMSNorm → output head" + (" (shared)" if k else ""), kind="out", w=5.0)
        c.arrow((top, "n"), (f"oh{k}", "s"))
        loss = "$\\mathcal{L}_{\\mathrm{Main}}$" if k == 0 else f"$\\mathcal{{L}}^{{{k}}}_{{\\mathrm{{MTP}}}}$ (eq 24)"
        c.box(f"ce{k}", cx, 9.0, "cross-entropy " + loss, kind="out", w=4.6)
        c.arrow((f"oh{k}", "n"), (f"ce{k}", "s"))
        c.note(cx, 10.35, "targets:  " + "  ".join(outs), fontsize=FONT)
        c.arrow((cx, 10.0), (f"ce{k}", "n"))
    return c.fig


def speculative_timeline():
    """Self-speculative decoding with the MTP module as draft (chapter 05): three rounds, two
    accepted drafts and one rejected, rolled back with KVCache.crop."""
    c = _Canvas(19, 9.6, "Self-speculative decoding: the MTP module drafts, one main forward verifies")
    lanes = {"draft": 7.3, "verify": 5.6, "text": 3.7}
    c.note(1.35, lanes["draft"], "MTP module\n(draft)", fontsize=FONT, fontweight="bold")
    c.note(1.35, lanes["verify"], "main model\n(verify)", fontsize=FONT, fontweight="bold")
    c.note(1.35, lanes["text"], "text so far", fontsize=FONT, fontweight="bold")
    rounds = [("or", "not", "not", "to", True), ("to", "me", "be", None, False), ("be", ",", ",", "that", True)]
    x = 3.1
    text = ["To", "be", ",", "or"]
    for r, (tn, d, main1, main2, ok) in enumerate(rounds):
        x0 = x + r * 5.35
        c.note(x0 + 2.3, 8.55, f"round {r + 1}", fontsize=FONT, fontweight="bold")
        c.box(f"d{r}", x0 + 1.2, lanes["draft"], f"reads $h$ of '{tn}'\ndrafts '{d}'", kind="ffn", w=2.4, h=1.0,
              fontsize=SMALL)
        c.box(f"v{r}", x0 + 2.9, lanes["verify"], f"one forward over ['{tn}', '{d}']\nmain's next: '{main1}'",
              kind="attn", w=3.6, h=1.0, fontsize=SMALL)
        c.arrow((f"d{r}", "s"), (f"v{r}", "n", -1.0))
        if ok:
            verdict, col = f"'{d}' = '{main1}': accept;\nthe forward also gave '{main2}'", GOOD
            new = [main1, main2]
        else:
            verdict, col = f"'{d}' ≠ '{main1}': reject; crop\nthe caches, keep '{main1}'", BAD
            new = [main1]
        c.note(x0 + 3.45, lanes["verify"] - 0.98, verdict, color=col, fontsize=SMALL)
        text = text + new
        c.box(f"t{r}", x0 + 2.6, lanes["text"] - 0.35, " ".join(text[-6:]), kind="hidden", w=4.6, h=0.7,
              fontsize=SMALL)
        c.note(x0 + 2.6, lanes["text"] - 1.1, f"+{len(new)} token{'s' if len(new) > 1 else ''} for one "
                                              "main forward", color=col, fontsize=SMALL)
        c.arrow((f"v{r}", "s", -1.5), (f"t{r}", "n", -1.2), color=col)
    c.note(9.5, 1.35, "3 main forwards, 5 new tokens. Greedy: the text is exactly what plain decoding writes; "
                      "sampling: accept\nthe draft with probability min(1, p/q), else resample from max(0, p - q) "
                      "— the output distribution is still p.", fontsize=SMALL)
    return c.fig


# ===================================================================================== chapter 09
def fp8_linear():
    """FP8 training of one linear layer (chapter 09; after the report's Figure 6, sec. 3.3): the three
    matrix products of a training step run in FP8 with FP32 accumulation; activations are quantized
    in 1x128 tiles, weights in 128x128 blocks; master weights, weight gradients and the optimizer stay
    in higher precision."""
    c = _Canvas(19, 11.6, "FP8 training of one linear layer (V3 report, Figure 6)")
    rows = {"fprop": 9.0, "dgrad": 6.1, "wgrad": 3.2}
    for name, y in rows.items():
        c.note(0.9, y, {"fprop": "forward", "dgrad": "backward:\ninput grad", "wgrad": "backward:\nweight grad"}[name],
               fontsize=SMALL, fontweight="bold")
    # forward: y = x W^T
    c.box("x", 3.4, rows["fprop"], "x (BF16)", kind="hidden", w=2.2)
    c.box("qx", 6.4, rows["fprop"], "quantize\n1x128 tiles", kind="quant", w=2.4, h=1.0, fontsize=SMALL)
    c.box("fp", 10.4, rows["fprop"], "Fprop GEMM\nFP8 x FP8", kind="fp8", w=2.8, h=1.0, fontsize=SMALL)
    c.box("y", 15.6, rows["fprop"], "y (BF16)", kind="out", w=2.2)
    c.arrow(("x", "e"), ("qx", "w"))
    c.arrow(("qx", "e"), ("fp", "w"), label="x in FP8", label_dy=0.3)
    c.arrow(("fp", "e"), ("y", "w"), label="FP32 accumulate", label_dy=0.3)
    # the weight: master copy in FP32, quantized per 128x128 block for both GEMMs that read it
    c.box("w", 16.3, 7.55, "master W (FP32)", kind="proj", w=3.2, h=0.8)
    c.box("qw", 12.9, 7.55, "W: 128x128 blocks", kind="fp8", w=3.2, h=0.8, fontsize=SMALL)
    c.arrow(("w", "w"), ("qw", "e"))
    c.arrow(("qw", "n", -1.2), ("fp", "s", 0.3))
    # input gradient: dx = dy W
    c.box("dy", 3.4, rows["dgrad"], "dy (BF16)", kind="hidden", w=2.2)
    c.box("qdy", 6.4, rows["dgrad"], "quantize\n1x128 tiles", kind="quant", w=2.4, h=1.0, fontsize=SMALL)
    c.box("dg", 10.4, rows["dgrad"], "Dgrad GEMM\nFP8 x FP8", kind="fp8", w=2.8, h=1.0, fontsize=SMALL)
    c.box("dx", 15.6, rows["dgrad"], "dx (BF16)", kind="out", w=2.2)
    c.arrow(("dy", "e"), ("qdy", "w"))
    c.arrow(("qdy", "e"), ("dg", "w"))
    c.arrow(("dg", "e"), ("dx", "w"), label="FP32 accumulate", label_dy=0.3)
    c.arrow(("qw", "s", -1.2), ("dg", "n", 0.3))
    # weight gradient: dW = dy^T x, from the FP8 copies made above
    c.box("wg", 10.4, rows["wgrad"], "Wgrad GEMM\nFP8 x FP8", kind="fp8", w=2.8, h=1.0, fontsize=SMALL)
    c.box("dw", 14.4, rows["wgrad"], "dW (FP32)", kind="out", w=2.2)
    c.box("opt", 17.3, rows["wgrad"], "AdamW\n(moments BF16)", kind="proj", w=2.6, h=1.0, fontsize=SMALL)
    c.arrow(("qx", "s", 1.0), ("wg", "w", 0.25), ls="--", label="x's FP8 copy,\nkept", label_at=0.22,
            label_dx=-1.3)
    c.arrow(("qdy", "s"), ("wg", "w", -0.25), label="dy in FP8", label_at=0.55, label_dx=-0.9)
    c.arrow(("wg", "e"), ("dw", "w"))
    c.arrow(("dw", "e"), ("opt", "w"))
    c.arrow(("opt", "n"), ("w", "s"), label="update", label_dx=0.75)
    c.note(9.6, 1.75, "Every GEMM multiplies FP8 numbers and adds them in FP32: the tensor cores' partial sums are "
                      "promoted to FP32\nevery 128 elements (N_C = 128). Outside the GEMMs (norms, attention "
                      "core, router, embedding, head) V3 stays in BF16/FP32.", fontsize=SMALL)
    c.legend(["hidden", "quant", "fp8", "proj", "out"], y=0.85, x0=0.6)
    return c.fig


DIAGRAMS = {
    "attention_lookup": attention_lookup,
    "rope_rotation": rope_rotation,
    "transformer_block": transformer_block,
    "kv_sharing": kv_sharing,
    "mla_dataflow": mla_dataflow,
    "mla_absorb": lambda: mla_dataflow("absorb"),
    "router": router,
    "v3_block": v3_block,
    "mtp_chain": mtp_chain,
    "speculative_timeline": speculative_timeline,
    "fp8_linear": fp8_linear,
}
