"""Where the time of a training step and of a decoding step goes, measured with torch.profiler.

Training (`--models`): each model trains a few steps (forward, backward, clipping, AdamW, router
bias update) on Shakespeare batches of 12 x 64; then --steps more are profiled. Every op is
charged to a component: a forward op to the innermost labelled part it ran in (attention, router,
the MoE dispatch's layout / gather / expert matmuls / combine, MTP module, ...), a backward op
to the component whose forward op created it (autograd's sequence numbers link the two).
Columns: wall ms per step inside the component's scopes (forward and backward), the part of it
spent inside aten kernels ("ops"), and the share of the step. What no scope covers (the Python
of the loop and of the modules, the dispatcher) shows as overhead. The profiler itself adds a
few microseconds per op: the unprofiled step time is printed beside it.

Decoding (`--decode`): self-speculative decoding (the MTP module drafts, one main forward over
two tokens verifies) against plain cached decoding of the same model, charged to: main forward
(verify / plain step), draft (MTP module), cache bookkeeping (KVCache update / crop), sampling /
acceptance, and the loop's own Python.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from .. import attention, generate, moe_dispatch
from .. import model as model_mod
from ..config import ModelConfig, get_preset
from ..data import get_batch, load_dataset
from ..model import MiniDeepSeek
from ..moe import MoE

PREFIX = "§ "                  # marks our labels among the profiler's events
DOMINANT = ("MTP module",)     # everything under these labels is charged to them


# ------------------------------------------------------------------------------ labelling
@contextlib.contextmanager
def _labels(model: MiniDeepSeek):
    """Label the model's parts (module hooks) and the dispatch's functions (patched) for the profiler."""
    handles, patched = [], []

    def hook(module, label):
        def pre(mod, args):
            rf = record_function(PREFIX + label)
            rf.__enter__()
            stack.setdefault(id(mod), []).append(rf)

        def post(mod, args, out):
            stack[id(mod)].pop().__exit__(None, None, None)

        handles.append(module.register_forward_pre_hook(pre))
        handles.append(module.register_forward_hook(post))

    stack: dict[int, list] = {}
    for name, m in model.named_modules():
        if name.startswith("mtp.") and name.count(".") == 1:
            hook(m, "MTP module")
        elif name == "embed_tokens":
            hook(m, "embedding")
        elif name in ("lm_head", "norm"):
            hook(m, "head + final norm")
        elif name.endswith((".attn_norm", ".ffn_norm")):
            hook(m, "block norms")
        elif name.endswith(".attn"):
            hook(m, "attention (MLA)" if isinstance(m, attention.MLA) else "attention (MHA)")
        elif name.endswith(".ffn"):
            hook(m, "MoE bookkeeping" if isinstance(m, MoE) else "FFN dense SwiGLU")
        elif name.endswith(".ffn.router"):
            hook(m, "MoE router")
        elif name.endswith(".ffn.shared_experts"):
            hook(m, "MoE shared expert")
        elif name.startswith("layers.") and name.count(".") == 1:
            hook(m, "block residuals")

    def wrap(module, attr, label):
        fn = getattr(module, attr)

        def wrapped(*a, **kw):
            with record_function(PREFIX + label):
                return fn(*a, **kw)
        setattr(module, attr, wrapped)
        patched.append((module, attr, fn))

    wrap(attention, "causal_sdpa", "attention core (sdpa)")
    for attr, label in moe_dispatch.PROFILE_LABELS.items():
        wrap(moe_dispatch, attr, label)
    wrap(model_mod, "mtp_losses", "MTP module")
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        for module, attr, fn in reversed(patched):
            setattr(module, attr, fn)


def _label_of(ev) -> str | None:
    """Innermost label above a profiler event (a DOMINANT label anywhere above wins)."""
    inner, e = None, ev
    while e is not None:
        if e.name.startswith(PREFIX):
            name = e.name[len(PREFIX):]
            if name in DOMINANT:
                return name
            inner = inner or name
        e = e.cpu_parent
    return inner


def _is_op(ev) -> bool:
    return ev.name.startswith("aten::")


def attribute(events, n_steps: int) -> dict[str, dict]:
    """Charge profiler events to labels: {label: {"fwd": ms, "bwd": ms, "ops": ms}} per step.
    "fwd" is each label's exclusive scope time (its wall time minus labelled scopes nested in
    it); "bwd" the backward nodes whose forward op ran under the label; "ops" the self time of
    the aten ops inside (forward and backward)."""
    out: dict[str, dict] = defaultdict(lambda: {"fwd": 0.0, "bwd": 0.0, "ops": 0.0})
    seq_label: dict[int, str] = {}
    for ev in events:
        if not ev.name.startswith(PREFIX) and ev.sequence_nr >= 0 and "Backward" not in ev.name \
                and "evaluate_function" not in ev.name:
            seq_label.setdefault(ev.sequence_nr, _label_of(ev) or _by_op_name(ev.name))
    for ev in events:
        if ev.name.startswith(PREFIX):
            nested = sum(c.cpu_time_total for c in _child_scopes(ev))
            out[_label_of(ev)]["fwd"] += (ev.cpu_time_total - nested) / 1e3
            continue
        if ev.name.startswith("autograd::engine::evaluate_function: "):
            node = ev.name.split(": ", 1)[1]
            seq = ev.sequence_nr if ev.sequence_nr >= 0 else next(
                (c.sequence_nr for c in ev.cpu_children if c.sequence_nr >= 0), -1)
            label = ("backward: grad accumulation" if "AccumulateGrad" in node
                     else seq_label.get(seq, "backward: other"))
            out[label]["bwd"] += ev.cpu_time_total / 1e3
            out[label]["ops"] += _self_op_time(ev) / 1e3
            continue
        if _is_op(ev) and (ev.cpu_parent is None or not _is_op(ev.cpu_parent)) and not _in_backward(ev):
            label = _label_of(ev)
            if label is None:                             # an op no module scope covers
                label = _by_op_name(ev.name)
                out[label]["fwd"] += ev.cpu_time_total / 1e3
            out[label]["ops"] += _self_op_time(ev) / 1e3
    return {k: {kk: vv / n_steps for kk, vv in v.items()} for k, v in out.items()}


def _child_scopes(ev):
    """Labelled scopes nested directly (through unlabelled events) inside ev."""
    found, todo = [], list(ev.cpu_children)
    while todo:
        c = todo.pop()
        if c.name.startswith(PREFIX):
            found.append(c)
        else:
            todo.extend(c.cpu_children)
    return found


def _in_backward(ev) -> bool:
    e = ev.cpu_parent
    while e is not None:
        if e.name.startswith("autograd::engine::evaluate_function"):
            return True
        e = e.cpu_parent
    return False


def _self_op_time(ev) -> float:
    """Self time of every aten op inside ev (us)."""
    total, todo = 0.0, [ev]
    while todo:
        e = todo.pop()
        if _is_op(e):
            total += e.self_cpu_time_total
        todo.extend(e.cpu_children)
    return total


def _by_op_name(name: str) -> str:
    if any(s in name for s in ("cross_entropy", "log_softmax", "nll_loss")):
        return "loss (cross-entropy)"
    if any(s in name for s in ("_foreach", "adam", "addcdiv", "lerp")):
        return "optimizer (AdamW)"
    return "other ops"


# ------------------------------------------------------------------------------ training
def train_step_fn(model: MiniDeepSeek, dataset, batch_size: int = 12, block_size: int = 64,
                  seed: int = 0, fused: bool = False, compiled=None):
    """One training step as minids.train runs it, with labelled optimizer / clipping / data parts."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
    g = torch.Generator().manual_seed(seed)
    fwd = compiled or model

    def step():
        with record_function(PREFIX + "data (get_batch)"):
            x, y = get_batch(dataset.train, batch_size, block_size, g)
        loss = fwd(x, y).loss
        loss.backward()
        with record_function(PREFIX + "grad clipping"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with record_function(PREFIX + "optimizer (AdamW)"):
            opt.step()
        with record_function(PREFIX + "zero_grad + router bias update"):
            opt.zero_grad(set_to_none=True)
            model.update_router_biases()
    return step


def profile_training(name: str, dataset, steps: int = 5, warmup: int = 3, seed: int = 0) -> dict:
    cfg = get_preset(name, vocab_size=dataset.tokenizer.vocab_size)
    torch.manual_seed(seed)
    model = MiniDeepSeek(cfg)
    step = train_step_fn(model, dataset, seed=seed)
    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    plain_ms = (time.perf_counter() - t) / steps * 1e3
    with _labels(model), profile(activities=[ProfilerActivity.CPU]) as prof:
        t = time.perf_counter()
        for _ in range(steps):
            step()
        prof_ms = (time.perf_counter() - t) / steps * 1e3
    parts = attribute(prof.events(), steps)
    return {"model": name, "plain_ms": plain_ms, "profiled_ms": prof_ms, "parts": parts}


def format_parts(res: dict) -> str:
    parts, total = res["parts"], res["profiled_ms"]
    lines = [f"{res['model']}: step {res['plain_ms']:.1f} ms unprofiled, {total:.1f} ms profiled",
             f"  {'component':<32} {'fwd ms':>7} {'bwd ms':>7} {'total':>7} {'ops ms':>7} {'share':>6}"]
    rows = sorted(parts.items(), key=lambda kv: -(kv[1]["fwd"] + kv[1]["bwd"]))
    accounted = 0.0
    for label, p in rows:
        tot = p["fwd"] + p["bwd"]
        accounted += tot
        lines.append(f"  {label:<32} {p['fwd']:>7.2f} {p['bwd']:>7.2f} {tot:>7.2f} {p['ops']:>7.2f} "
                     f"{tot / total:>6.1%}")
    rest = total - accounted
    lines.append(f"  {'(loop Python, autograd engine)':<32} {'':>7} {'':>7} {rest:>7.2f} {'':>7} {rest / total:>6.1%}")
    return "\n".join(lines)


CATEGORIES = {                                   # the components above, in a few groups
    "attention": ("attention (MHA)", "attention (MLA)", "attention core (sdpa)"),
    "dense FFN": ("FFN dense SwiGLU",),
    "MoE experts (routed + shared)": ("MoE expert matmuls", "MoE shared expert"),
    "MoE routing (router, sort, gather, scatter)": ("MoE router", "MoE layout (sort)", "MoE gather",
                                                    "MoE combine (scatter)", "MoE bookkeeping"),
    "MTP module (block + head + loss)": ("MTP module",),
    "norms, residuals, embedding, head, loss": ("block norms", "block residuals", "embedding",
                                                "head + final norm", "loss (cross-entropy)"),
    "optimizer, clipping, zero_grad": ("optimizer (AdamW)", "grad clipping", "zero_grad + router bias update",
                                       "backward: grad accumulation"),
}


def by_category(res: dict) -> dict[str, float]:
    """ms per step of each CATEGORIES group; the rest (data, loop, autograd engine) as 'other'."""
    parts = res["parts"]
    out = {cat: sum(parts[c]["fwd"] + parts[c]["bwd"] for c in comps if c in parts)
           for cat, comps in CATEGORIES.items()}
    out["other (data, Python, autograd engine)"] = res["profiled_ms"] - sum(out.values())
    return out


# ------------------------------------------------------------------------------ decoding
@contextlib.contextmanager
def _decode_labels(model: MiniDeepSeek):
    patched = []

    def wrap(owner, attr, label):
        fn = getattr(owner, attr)

        def wrapped(*a, **kw):
            with record_function(PREFIX + label):
                return fn(*a, **kw)
        setattr(owner, attr, wrapped)
        patched.append((owner, attr, fn))

    wrap(generate, "mtp_forward", "draft (MTP module)")
    wrap(attention.KVCache, "update", "cache bookkeeping")
    wrap(attention.KVCache, "crop", "cache bookkeeping")
    for attr in ("sample_next", "filtered_probs", "speculative_accept"):
        wrap(generate, attr, "sampling / acceptance")
    pre = model.register_forward_pre_hook(lambda m, a, kw: _enter(m, "main forward"), with_kwargs=True)
    post = model.register_forward_hook(lambda m, a, o: _exit(m))
    try:
        yield
    finally:
        pre.remove()
        post.remove()
        for owner, attr, fn in reversed(patched):
            setattr(owner, attr, fn)


_open: dict[int, list] = {}


def _enter(m, label):
    rf = record_function(PREFIX + label)
    rf.__enter__()
    _open.setdefault(id(m), []).append(rf)


def _exit(m):
    _open[id(m)].pop().__exit__(None, None, None)


def decode_model(width: int = 128, layers: int = 8, ctx: int = 128, vocab: int = 82, seed: int = 0) -> MiniDeepSeek:
    """An untrained model of `bench speculative`'s default shape (timing does not need training;
    acceptance does: see `bench speculative`)."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab, hidden_size=width, intermediate_size=int(width * 2.75) // 8 * 8,
                      num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=ctx,
                      num_nextn_predict_layers=1)
    return MiniDeepSeek(cfg).eval()


def profile_decoding(model: MiniDeepSeek, prompt: torch.Tensor, new: int) -> dict:
    """Profile plain greedy and speculative greedy decoding of the same prompt."""
    out = {}
    for method in ("plain", "speculative"):
        def run(method=method):
            if method == "plain":
                return generate.generate(model, prompt, new, temperature=0), None
            return generate.speculative_generate(model, prompt, new)
        run()
        t = time.perf_counter()
        _, st = run()
        plain_ms = (time.perf_counter() - t) * 1e3
        with _decode_labels(model), profile(activities=[ProfilerActivity.CPU]) as prof:
            t = time.perf_counter()
            run()
            prof_ms = (time.perf_counter() - t) * 1e3
        events = prof.events()
        parts: dict[str, dict] = defaultdict(lambda: {"fwd": 0.0, "bwd": 0.0, "ops": 0.0})
        for ev in events:
            if ev.name.startswith(PREFIX):
                label = ev.name[len(PREFIX):]
                nested = sum(c.cpu_time_total for c in _child_scopes(ev))
                parts[label]["fwd"] += (ev.cpu_time_total - nested) / 1e3
            elif _is_op(ev) and (ev.cpu_parent is None or not _is_op(ev.cpu_parent)):
                label = _label_of(ev)
                if label is None:
                    parts["loop ops (cat, index)"]["fwd"] += ev.cpu_time_total / 1e3
                    label = "loop ops (cat, index)"
                parts[label]["ops"] += _self_op_time(ev) / 1e3
        out[method] = {"model": f"{method} greedy, {new} tokens", "plain_ms": plain_ms,
                       "profiled_ms": prof_ms, "parts": dict(parts), "stats": st}
    return out


# ------------------------------------------------------------------------------ main
def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m minids bench profile", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="baseline,mini-v3", help="presets whose training step is profiled")
    ap.add_argument("--steps", type=int, default=5, help="profiled training steps per model")
    ap.add_argument("--decode", action=argparse.BooleanOptionalAction, default=True,
                    help="also profile plain vs speculative decoding")
    ap.add_argument("--checkpoint", default=None,
                    help="a model with an MTP module to decode with (default: the one `bench speculative` "
                         "trained and cached, if any; else an untrained model of its shape)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} thread(s)")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if models:
        dataset = load_dataset("shakespeare", "char")
        for name in models:
            print(format_parts(profile_training(name, dataset, args.steps)))
            print()
    if args.decode:
        from ..checkpoint import CHECKPOINT, load_model
        from . import speculative
        ckpt = Path(args.checkpoint) if args.checkpoint else speculative.default_out_dir(argparse.Namespace(
            width=128, layers=8, heads=4, ctx=128, iters=800, batch_size=12, seed=1337)) / CHECKPOINT
        if ckpt.exists():
            model, tok, _ = load_model(ckpt)
            prompt = torch.tensor([tok.encode("ROMEO:\n")])
            print(f"decoding with {ckpt}")
        else:
            model = decode_model()
            prompt = torch.randint(0, 82, (1, 8), generator=torch.Generator().manual_seed(0))
            print("decoding with an untrained model (acceptance is meaningless; the costs are not)")
        res = profile_decoding(model, prompt, model.config.max_position_embeddings - prompt.size(1))
        for r in res.values():
            st = r["stats"]
            if st:
                r["model"] += (f" ({st['main_forwards']} main forwards, {st['mtp_forwards']} drafts, "
                               f"acceptance {st['acceptance_rate']:.0%})")
            print(format_parts(r))
            print()
