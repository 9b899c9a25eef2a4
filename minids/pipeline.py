"""Pipeline parallelism (V3 report, arXiv 2412.19437, section 3.2.1): a small schedule simulator that
draws timelines and checks the bubble formulas of the report's Table 2, and a runner that trains the
course model split into stages across CPU processes with torch.distributed.pipelining.

A schedule is, for every rank (one GPU), the ORDER of the work it does:
    Op("F", stage, mb)   forward of micro-batch mb through stage
    Op("B", stage, mb)   full backward (input and weight gradients)
    Op("I", stage, mb)   backward for the input only ("B" of the zero-bubble paper, arXiv 2401.10241)
    Op("W", stage, mb)   backward for the weights only
    Op("FB", pair=(f, b)) a forward and a backward of different micro-batches run overlapped (DualPipe)
Strings use torch's notation: "0F3" = Op("F", 0, 3); a pair prints "(0F3;1B2)".

`simulate` plays the orders with given durations: a rank runs its ops one after the other, each as
soon as the rank is free and its inputs exist (F needs F of the previous stage, B/I need B/I of the
next stage or this stage's F on the last stage, W needs I). Communication is free: DualPipe's point
is that it hides it. The bubble of a rank is the time it idles before the last rank finishes.

Closed forms (Table 2; F, B = full backward, W = backward for weights, F&B = an overlapped pair):
    1F1B      (PP - 1)(F + B)            Harlap et al. (PipeDream), arXiv 1806.03377
    ZB1P      (PP - 1)(F + B - 2W)       Qi et al. (zero bubble, "ZB-H1"), arXiv 2401.10241
    DualPipe  (PP/2 - 1)(F&B + B - 3W)   V3 report; parameters 2x, activations PP + 1
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

KINDS = ("F", "B", "I", "W", "FB")


@dataclass(frozen=True)
class Op:
    kind: str
    stage: int = -1
    mb: int = -1
    pair: tuple = ()

    def __repr__(self) -> str:
        if self.kind == "FB":
            return "(" + ";".join(repr(o) for o in self.pair) + ")"
        return f"{self.stage}{self.kind}{self.mb}"


_OP = re.compile(r"^(\d+)([FBIW])(\d+)$")


def parse_op(s: str) -> Op:
    """'0F3' -> Op('F', 0, 3); '(0F3;1B2)' -> an overlapped pair."""
    s = s.strip()
    if s.startswith("(") and s.endswith(")"):
        return Op("FB", pair=tuple(parse_op(p) for p in s[1:-1].split(";")))
    m = _OP.match(s)
    if not m:
        raise ValueError(f"op {s!r} must look like '0F3' (stage, F/B/I/W, micro-batch) or '(0F3;1B2)'")
    return Op(m.group(2), int(m.group(1)), int(m.group(3)))


def parse_orders(orders: dict) -> dict[int, list[Op]]:
    """{rank: ['0F0', '0B0', ...]} (strings or Ops) -> {rank: [Op, ...]}."""
    return {int(r): [o if isinstance(o, Op) else parse_op(o) for o in ops] for r, ops in orders.items()}


# ================================================================================ simulator
@dataclass
class Timeline:
    events: list                      # (rank, op, start, end)
    makespan: float
    busy: dict                        # rank -> time spent computing
    ranks: list = field(default_factory=list)

    @property
    def bubble(self) -> dict:
        """rank -> idle time before the last rank finishes."""
        return {r: self.makespan - self.busy[r] for r in self.ranks}

    @property
    def max_bubble(self) -> float:
        return max(self.bubble.values())


def _key(op: Op) -> tuple:
    return ("F" if op.kind == "F" else "BI" if op.kind in ("B", "I") else "W", op.stage, op.mb)


def _deps(op: Op, prev: dict, nxt: dict) -> list:
    if op.kind == "F":
        return [("F", prev[op.stage], op.mb)] if op.stage in prev else []
    if op.kind in ("B", "I"):
        return [("BI", nxt[op.stage], op.mb)] if op.stage in nxt else [("F", op.stage, op.mb)]
    if op.kind == "W":
        return [("BI", op.stage, op.mb)]
    raise ValueError(f"unknown op kind {op.kind!r}; must be one of {KINDS}")


def simulate(orders: dict, durations: dict, chains: list[list[int]] | None = None) -> Timeline:
    """Play per-rank orders. durations: {"F":, "B":, "I":, "W":, "FB":} (those the orders use;
    "I" defaults to B - W). chains: the stage sequences micro-batches flow through (default: one
    chain 0, 1, ..., over all stages named in the orders). Raises ValueError on a deadlock."""
    orders = parse_orders(orders)
    dur = dict(durations)
    if "I" not in dur and "B" in dur and "W" in dur:
        dur["I"] = dur["B"] - dur["W"]
    if chains is None:
        chains = [sorted({o.stage for ops in orders.values() for op in ops
                          for o in (op.pair if op.kind == "FB" else (op,))})]
    prev, nxt = {}, {}
    for ch in chains:
        for a, b in zip(ch[:-1], ch[1:], strict=True):
            nxt[a], prev[b] = b, a
    done: dict = {}
    pos = dict.fromkeys(orders, 0)
    free = dict.fromkeys(orders, 0.0)
    busy = dict.fromkeys(orders, 0.0)
    events = []
    while any(pos[r] < len(orders[r]) for r in orders):
        progress = False
        for r in orders:
            while pos[r] < len(orders[r]):
                op = orders[r][pos[r]]
                parts = op.pair if op.kind == "FB" else (op,)
                own = {_key(o) for o in parts}
                deps = [d for o in parts for d in _deps(o, prev, nxt) if d not in own]
                if not all(d in done for d in deps):
                    break
                if op.kind not in dur:
                    raise ValueError(f"durations has no entry for {op.kind!r}")
                start = max([free[r]] + [done[d] for d in deps])
                end = start + dur[op.kind]
                for k in own:
                    done[k] = end
                events.append((r, op, start, end))
                free[r], busy[r] = end, busy[r] + dur[op.kind]
                pos[r] += 1
                progress = True
        if not progress:
            stuck = {r: orders[r][pos[r]] for r in orders if pos[r] < len(orders[r])}
            raise ValueError(f"deadlock: every rank waits for an input that never comes; next ops {stuck}")
    makespan = max((e for *_, e in events), default=0.0)
    return Timeline(events, makespan, busy, sorted(orders))


# ================================================================================ schedules
def order_1f1b(pp: int, m: int) -> dict[int, list[Op]]:
    """1F1B (PipeDream-Flush): rank r = stage r runs pp-1-r warm-up forwards, then alternates one
    forward and one backward, then drains the remaining backwards."""
    _check_pp_m(pp, m)
    orders = {}
    for r in range(pp):
        warm = min(pp - 1 - r, m)
        ops = [Op("F", r, j) for j in range(warm)]
        f = b = 0
        f = warm
        while f < m:
            ops += [Op("F", r, f), Op("B", r, b)]
            f, b = f + 1, b + 1
        ops += [Op("B", r, j) for j in range(b, m)]
        orders[r] = ops
    return orders


def order_zb1p(pp: int, m: int) -> dict[int, list[Op]]:
    """ZB-H1 (zero bubble, arXiv 2401.10241, section 3): 1F1B's order with each backward split into
    I (input gradient, on the critical path) and W (weight gradient, which nobody waits for). Rank r
    keeps its last r W's pending and runs them at the end, in the gaps where 1F1B idles."""
    _check_pp_m(pp, m)
    orders = {}
    for r in range(pp):
        warm = min(pp - 1 - r, m)
        ops = [Op("F", r, j) for j in range(warm)]
        f, b, pending = warm, 0, []
        while b < m:
            if f < m:
                ops.append(Op("F", r, f))
                f += 1
            ops.append(Op("I", r, b))
            pending.append(b)
            b += 1
            if len(pending) > r:
                ops.append(Op("W", r, pending.pop(0)))
        ops += [Op("W", r, j) for j in pending]
        orders[r] = ops
    return orders


def _dual_steps(R: int, r: int, m: int, st0: int, st1: int) -> list[Op]:
    """The eight steps of DualPipe for one rank (V3 report Figure 5; deepseek-ai/DualPipe): with
    R ranks on one side, this rank at distance r from its end, m micro-batches per direction, and
    st0 / st1 the stages it runs for the direction entering at its end (phase 0) and the other one
    (phase 1). DualPipeV is the same schedule on one side's ranks, folded into a V."""
    st = (st0, st1)
    nf, nb, pending, ops = [0, 0], [0, 0], [], []

    def fwd(ph):
        nf[ph] += 1
        return Op("F", st[ph], nf[ph] - 1)

    def bwd(ph, zero_bubble=False):
        nb[ph] += 1
        if zero_bubble:
            pending.append(Op("W", st[ph], nb[ph] - 1))
        return Op("I" if zero_bubble else "B", st[ph], nb[ph] - 1)

    def pair(pf, pb):
        return Op("FB", pair=(fwd(pf), bwd(pb)))

    ops += [fwd(0) for _ in range(2 * (R - r - 1))]                          # 1: F0
    for _ in range(r + 1):                                                 # 2: F0 F1
        ops += [fwd(0), fwd(1)]
    for _ in range(R - r - 1):                                             # 3: I1 W F1
        ops.append(bwd(1, True))
        ops.append(pending.pop(0))
        ops.append(fwd(1))
    for i in range(m - 2 * R + r + 1):                                     # 4: F0&B1, F1&B0
        if i == 0 and r == R - 1:          # the rank in the middle: no overlap for the first pair
            ops += [fwd(0), bwd(1)]
        else:
            ops.append(pair(0, 1))
        ops.append(pair(1, 0))
    for _ in range(R - r - 1):                                             # 5: B1, F1&B0
        ops += [bwd(1), pair(1, 0)]
    zb, n6 = False, r + 1                                                  # 6: B1 B0, later split
    for i in range(n6):
        if i == n6 // 2 and r % 2 == 1:
            zb = True
        ops.append(bwd(1, zb))
        if i == n6 // 2 and r % 2 == 0:
            zb = True
        ops.append(bwd(0, zb))
    for _ in range(R - r - 1):                                             # 7: W, I0
        ops.append(pending.pop(0))
        ops.append(bwd(0, True))
    ops += pending                                                         # 8: the remaining W
    return ops


def order_dualpipe(pp: int, m: int) -> dict[int, list[Op]]:
    """DualPipe: pp ranks (even), m micro-batches in all (even, >= 2 pp), half fed from each end.
    Stages 0..pp-1 are the forward direction (stage s on rank s); stages pp..2pp-1 the reverse
    direction (its stage s, id pp + s, on rank pp-1-s): every rank holds two stages, hence twice
    the parameters. Use with chains dualpipe_chains(pp)."""
    if pp < 2 or pp % 2 or m % 2 or m < 2 * pp:
        raise ValueError(f"DualPipe needs an even pp >= 2 and an even m >= 2 * pp; got pp={pp}, m={m}")
    H = pp // 2
    orders = {}
    for r in range(pp):
        fwd_stage, rev_stage = r, pp + (pp - 1 - r)
        near, far = (fwd_stage, rev_stage) if r < H else (rev_stage, fwd_stage)
        orders[r] = _dual_steps(H, min(r, pp - 1 - r), m // 2, near, far)
    return orders


def dualpipe_chains(pp: int) -> list[list[int]]:
    return [list(range(pp)), list(range(pp, 2 * pp))]


def order_dualpipev(ranks: int, m: int) -> dict[int, list[Op]]:
    """DualPipeV ("cut-in-half" DualPipe): 2 x ranks stages in a V, rank r holding stages r and
    2 ranks - 1 - r; m micro-batches (>= 2 ranks). Parameters per rank 1x (half of DualPipe's)."""
    if ranks < 1 or m < 2 * ranks:
        raise ValueError(f"DualPipeV needs ranks >= 1 and m >= 2 * ranks; got ranks={ranks}, m={m}")
    return {r: _dual_steps(ranks, r, m, r, 2 * ranks - 1 - r) for r in range(ranks)}


def _check_pp_m(pp, m):
    for name, v in (("pp", pp), ("m", m)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive integer")


def bubble_1f1b(pp, F, B):
    return (pp - 1) * (F + B)


def bubble_zb1p(pp, F, B, W):
    return (pp - 1) * (F + B - 2 * W)


def bubble_dualpipe(pp, FB, B, W):
    return (pp / 2 - 1) * (FB + B - 3 * W)


# ============================================================================== diagrams
_COLORS = {"F": "#f5a623", "B": "#7ed321", "I": "#b8e986", "W": "#4a90e2"}


def plot_timeline(tl: Timeline, title: str = "", ax=None, label_mb: bool = True):
    """Gantt chart of a Timeline (one row per rank; orange F, green B, light green I, blue W;
    an overlapped pair is drawn half orange, half green). Returns the Axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle
    if ax is None:
        _, ax = plt.subplots(figsize=(min(14, 1.2 + 0.18 * tl.makespan), 0.45 * len(tl.ranks) + 1.0))
    for r, op, s, e in tl.events:
        y = r
        if op.kind == "FB":
            ax.add_patch(Rectangle((s, y - 0.4), (e - s) / 2, 0.8, color=_COLORS["F"], ec="k", lw=0.3))
            ax.add_patch(Rectangle((s + (e - s) / 2, y - 0.4), (e - s) / 2, 0.8, color=_COLORS["B"], ec="k", lw=0.3))
            text = f"{op.pair[0].mb}|{op.pair[1].mb}"
        else:
            ax.add_patch(Rectangle((s, y - 0.4), e - s, 0.8, color=_COLORS[op.kind], ec="k", lw=0.3))
            text = str(op.mb)
        if label_mb:
            ax.text((s + e) / 2, y, text, ha="center", va="center", fontsize=6)
    ax.set_xlim(0, tl.makespan)
    ax.set_ylim(len(tl.ranks) - 0.5, -0.5)
    ax.set_yticks(tl.ranks, [f"rank {r}" for r in tl.ranks])
    ax.set_xlabel("time")
    ax.set_title(title or f"makespan {tl.makespan:g}, bubble per rank up to {tl.max_bubble:g}")
    ax.legend(handles=[Patch(color=c, label=k) for k, c in
                       [("forward", _COLORS["F"]), ("backward", _COLORS["B"]),
                        ("backward for input", _COLORS["I"]), ("backward for weights", _COLORS["W"])]],
              loc="upper center", bbox_to_anchor=(0.5, -0.35), ncol=4, fontsize=7, frameon=False)
    return ax


# ======================================================== torch.distributed.pipelining
def torch_orders(schedule) -> dict[int, list[Op]]:
    """The compute actions of a torch pipeline schedule's plan (`pipeline_order`), as Ops; idle
    slots, communication and gradient-reduction actions are dropped."""
    out = {}
    for rank, actions in schedule.pipeline_order.items():
        ops = []
        for a in actions:
            if a is None:
                continue
            kind = getattr(a.computation_type, "value", str(a.computation_type))
            subs = getattr(a, "sub_actions", None)
            if subs:
                ops.append(Op("FB", pair=tuple(Op(getattr(s.computation_type, "value", ""), s.stage_index,
                                                  s.microbatch_index) for s in subs)))
            elif kind in ("F", "B", "I", "W"):
                ops.append(Op(kind, a.stage_index, a.microbatch_index))
        out[int(rank)] = ops
    return out


class StageModule(nn.Module):
    """Consecutive blocks of a MiniDeepSeek as one pipeline stage; the first stage also embeds the
    token ids, the last one also applies the final norm and the output head (returns logits)."""

    def __init__(self, model, first: int, last: int, is_first: bool, is_last: bool):
        super().__init__()
        self.layers = nn.ModuleList(model.layers[first:last])
        self.embed_tokens = model.embed_tokens if is_first else None
        self.norm = model.norm if is_last else None
        self.lm_head = model.lm_head if is_last else None
        self.freqs_cis = model.freqs_cis                       # shared RoPE table (not a parameter)

    def forward(self, x):
        if self.embed_tokens is not None:
            x = self.embed_tokens(x)                           # (B, T) ids -> (B, T, d)
        freqs = self.freqs_cis[: x.size(1)]
        for layer in self.layers:
            x = layer(x, freqs)
        if self.lm_head is not None:
            x = self.lm_head(self.norm(x))                     # (B, T, vocab)
        return x


def split_model(model, n_stages: int) -> list[StageModule]:
    """Cut a MiniDeepSeek (without MTP) into n_stages stages of near-equal numbers of blocks."""
    L = len(model.layers)
    if not isinstance(n_stages, int) or not 1 <= n_stages <= L:
        raise ValueError(f"n_stages={n_stages!r} must be in [1, num_hidden_layers={L}]")
    if len(getattr(model, "mtp", [])):
        raise ValueError("split_model handles the main model only: use a config with num_nextn_predict_layers=0")
    bounds = [round(i * L / n_stages) for i in range(n_stages + 1)]
    return [StageModule(model, bounds[i], bounds[i + 1], i == 0, i == n_stages - 1) for i in range(n_stages)]


def lm_loss(logits, targets):
    """Mean next-token cross-entropy of a micro-batch (the pipeline's loss_fn)."""
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


SCHEDULES = ("1F1B", "ZBVZeroBubble", "DualPipeV")       # torch.distributed.pipelining names


def _worker(rank, world, outdir, cfg_dict, schedules, n_micro, batch, seq_len, seed):
    log = open(Path(outdir) / f"log_{rank}.txt", "w")
    os.dup2(log.fileno(), 1)                # the children's prints and warnings go to a file,
    os.dup2(log.fileno(), 2)                # not into the notebook that started them
    torch.set_num_threads(1)
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage
    from torch.distributed.pipelining import schedules as S

    from .config import ModelConfig
    from .model import MiniDeepSeek
    # rendezvous through a file in the run's temporary folder: no TCP port to pick (or to collide on)
    dist.init_process_group("gloo", init_method=f"file://{Path(outdir) / 'rendezvous'}", rank=rank, world_size=world)
    try:
        cfg = ModelConfig.from_dict(cfg_dict)
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g)
        y = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g)
        for name in schedules:
            cls = S.get_schedule_class(name)
            torch.manual_seed(seed)
            model = MiniDeepSeek(cfg)
            v_shape = name != "1F1B"
            n_stages = 2 * world if v_shape else world
            parts = split_model(model, n_stages)
            mine = [rank, n_stages - 1 - rank] if v_shape else [rank]
            stages = [PipelineStage(parts[s], s, n_stages, torch.device("cpu")) for s in mine]
            executed: list = []
            for st in stages:
                _record_actions(st, executed)
            sched = cls(stages if v_shape else stages[0], n_microbatches=n_micro, loss_fn=lm_loss)
            losses: list = []
            has_first, has_last = 0 in mine, n_stages - 1 in mine
            t0 = time.perf_counter()
            if has_first and has_last:
                sched.step(x, target=y, losses=losses)
            elif has_first:
                sched.step(x)
            elif has_last:
                sched.step(target=y, losses=losses)
            else:
                sched.step()
            wall = time.perf_counter() - t0
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            torch.save({"losses": [float(v) for v in losses], "grads": grads, "executed": executed,
                        "orders": {r: [repr(o) for o in ops] for r, ops in torch_orders(sched).items()},
                        "wall_s": wall}, Path(outdir) / f"{name}_{rank}.pt")
    finally:
        dist.destroy_process_group()


def _record_actions(stage, log: list) -> None:
    """Wrap a PipelineStage's compute methods so that every call appends what ran, in torch's
    notation ('0F3', '0B3', '0I3', '0W3'): the order the runtime really executed."""
    i = stage.stage_index
    fwd, bwd, wgt = stage.forward_one_chunk, stage.backward_one_chunk, stage.backward_weight_one_chunk

    def forward_one_chunk(chunk, *args, **kwargs):
        log.append(f"{i}F{chunk}")
        return fwd(chunk, *args, **kwargs)

    def backward_one_chunk(chunk, *args, **kwargs):
        full = kwargs.get("full_backward", args[1] if len(args) > 1 else True)
        log.append(f"{i}{'B' if full else 'I'}{chunk}")
        return bwd(chunk, *args, **kwargs)

    def backward_weight_one_chunk(chunk, *args, **kwargs):
        log.append(f"{i}W{chunk}")
        return wgt(chunk, *args, **kwargs)

    stage.forward_one_chunk = forward_one_chunk
    stage.backward_one_chunk = backward_one_chunk
    stage.backward_weight_one_chunk = backward_weight_one_chunk


@dataclass
class PipelineRun:
    schedule: str
    losses: list                   # per micro-batch, from the rank holding the last stage
    grads: dict                    # parameter name -> gradient, merged over the ranks
    plan: dict                     # rank -> [Op]: the schedule's plan (`pipeline_order`, compute only)
    executed: dict                 # rank -> [Op]: the compute calls the runtime made, in order
    wall_s: float

    @property
    def loss(self) -> float:
        return sum(self.losses) / len(self.losses)


def run_pipeline(cfg, schedules=SCHEDULES, world: int = 2, n_microbatches: int = 4, batch: int = 8,
                 seq_len: int = 16, seed: int = 0, timeout_s: float = 300.0) -> dict[str, PipelineRun]:
    """Train one step of MiniDeepSeek(cfg) (same init as torch.manual_seed(seed)) under each torch
    pipeline schedule, on `world` CPU processes talking through gloo; the batch is random token ids.
    Returns {schedule: PipelineRun}. 1F1B uses one stage per rank, the V schedules two."""
    import torch.multiprocessing as mp
    for name in schedules:
        if name not in SCHEDULES:
            raise ValueError(f"schedule {name!r} must be one of {SCHEDULES}")
    if batch % n_microbatches:
        raise ValueError(f"batch={batch} must be divisible by n_microbatches={n_microbatches}")
    with tempfile.TemporaryDirectory() as outdir:
        ctx = mp.start_processes(_worker, args=(world, outdir, cfg.to_dict(), tuple(schedules),
                                                n_microbatches, batch, seq_len, seed),
                                 nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout_s
        try:
            while not ctx.join(timeout=1.0):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"pipeline run did not finish within {timeout_s} s")
        except Exception as err:
            for p in ctx.processes:
                if p.is_alive():
                    p.terminate()
            logs = "\n".join(f"--- rank {r}:\n" + (Path(outdir) / f"log_{r}.txt").read_text()[-2000:]
                             for r in range(world) if (Path(outdir) / f"log_{r}.txt").exists())
            raise RuntimeError(f"pipeline run failed: {err}\n{logs}") from None
        runs = {}
        for name in schedules:
            parts = [torch.load(Path(outdir) / f"{name}_{r}.pt") for r in range(world)]
            grads, losses, executed = {}, [], {}
            for r, p in enumerate(parts):
                grads.update(p["grads"])
                losses += p["losses"]
                executed[r] = [parse_op(a) for a in p["executed"]]
            runs[name] = PipelineRun(name, losses, grads, parse_orders(parts[0]["orders"]), executed,
                                     max(p["wall_s"] for p in parts))
        return runs


def reference_step(cfg, batch: int = 8, seq_len: int = 16, seed: int = 0) -> tuple[float, dict]:
    """The same step on the unsplit model in this process: (loss, {name: grad})."""
    from .model import MiniDeepSeek
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g)
    y = torch.randint(0, cfg.vocab_size, (batch, seq_len), generator=g)
    torch.manual_seed(seed)
    model = MiniDeepSeek(cfg)
    loss = lm_loss(model(x).logits, y)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
