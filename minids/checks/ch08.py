"""Checks for chapter 08 (scaling up): the training memory of one GPU (weights, gradients, optimizer
state, activations) under DDP, ZeRO-1/2 and FSDP in fp32, AMP-bf16 and bf16; the steady-state MFU of
a run from its step times; gradient accumulation over micro-batches of unequal sizes; a rank's slice
of the global batch; think questions (a Chinchilla-sized run, the largest micro-batch, which technique
saves no memory); and the experiment that counts the bytes a training step saves for its backward."""

from __future__ import annotations

import math

import torch

from ..config import ModelConfig, get_preset
from ..model import MiniDeepSeek
from .checking import Checker, CheckFailed, as_tensor

POINTS = {"train_memory": 3, "steady_mfu": 2, "accumulate_grads": 2, "rank_slice": 1, "run_numbers": 1,
          "max_micro_batch": 1, "no_memory_saver": 1, "activation_experiment": 2}
NOT_MUTATED = {"activation_experiment": "an experiment: its check recomputes the measurement and is tested on "
                                        "recorded and made-up results instead"}
# Reviewed equivalent mutants of the solutions (python -m minids mutation -v 08 lists the survivors).
_ORDER = "the order in which the sharded parts are divided does not matter"
_BYTE = ("floor division of a byte count by the GPU count moves it by less than a byte (< 1e-8 of it), inside "
         "the check's tolerance: a GPU holds whole bytes anyway")
_COUNT = "an off-by-one in a count of millions moves the answer by < 1e-6, inside the check's tolerance"
_FLOORED = "the answer is floored: floor(a // b) == floor(a / b)"
_SHARDS = ("the answer is floored: the 1.6 GB of state sharded over 7, 8 or 9 GPUs leaves room for 248 sequences "
           "either way (the point of the question: the activations dominate)")
EQUIVALENT_MUTANTS: dict[str, dict[str, str]] = {
    "train_memory": {"`['optimizer', 'grads']` -> `['grads', 'optimizer']`": _ORDER,
                     "`['optimizer', 'grads', 'weights']` -> `['grads', 'optimizer', 'weights']`": _ORDER,
                     "`parts[k] / n_gpus` -> `parts[k] // n_gpus`": _BYTE},
    "run_numbers": {"`99306240` -> `99306241`": _COUNT, "`99306240` -> `99306239`": _COUNT,
                    "`1330060` -> `1330059`": _COUNT, "`1330060` -> `1330061`": _COUNT,
                    "`tokens / 1330060` -> `tokens // 1330060`": "1,493 whole passes is a right answer to 'how "
                                                                   "many times' (the check accepts 1,491 to 1,496)"},
    "max_micro_batch": {"`99306240` -> `99306241`": _COUNT, "`99306240` -> `99306239`": _COUNT,
                        "`(80000000000.0 - static) / per_seq` -> `(80000000000.0 - static) // per_seq`": _FLOORED,
                        "`(80000000000.0 - static / 8) / per_seq` -> `(80000000000.0 - static / 8) // per_seq`":
                            _FLOORED,
                        "`static / 8` -> `static // 8`": "16 x 99,306,240 is a multiple of 8: the same number",
                        "`8` -> `9`": _SHARDS, "`8` -> `7`": _SHARDS},
}

KINDS = ("weights", "grads", "optimizer", "activations", "total")
# bytes per parameter of (weights, gradients, optimizer state) and the activation factor per precision
_BYTES = {"fp32": (4, 4, 8), "amp-bf16": (4, 4, 8), "bf16": (2, 2, 12)}
_ACT = {"fp32": 68, "amp-bf16": 34, "bf16": 34}
_SHARDED = {"ddp": (), "zero1": ("optimizer",), "zero2": ("optimizer", "grads"),
            "fsdp": ("optimizer", "grads", "weights")}


# ----------------------------------------------------------------------------------- 1. memory
def _mem_ref(n_params, n_layers, hidden, micro_batch, seq_len, n_gpus, sharding, precision, *, bytes_=None,
             act=None, sharded=None, act_sharded=False, unit=1e9) -> dict:
    w, g, o = (b * n_params for b in (bytes_ or _BYTES[precision]))
    parts = {"weights": w, "grads": g, "optimizer": o,
             "activations": (act or _ACT[precision]) * seq_len * micro_batch * hidden * n_layers}
    for k in (_SHARDED[sharding] if sharded is None else sharded):
        parts[k] /= n_gpus
    if act_sharded:
        parts["activations"] /= n_gpus
    parts = {k: v / unit for k, v in parts.items()}
    parts["total"] = sum(parts.values())
    return parts


def _vec(d: dict) -> list:
    return [d[k] for k in KINDS]


_MEM_CASES = [  # n_params, n_layers, hidden, micro_batch, seq_len, n_gpus, sharding, precision
    (99_306_240, 12, 768, 32, 1024, 1, "ddp", "amp-bf16"),       # gpu-dense as chapter 08 ran it
    (99_306_240, 12, 768, 32, 1024, 8, "zero1", "bf16"),
    (279_485_056, 12, 768, 8, 1024, 8, "zero2", "fp32"),
    (7_000_000_000, 32, 4096, 1, 4096, 64, "fsdp", "bf16"),
    (1_300_000_000, 24, 2048, 4, 2048, 16, "zero1", "amp-bf16"),
    (350_000_000, 24, 1024, 16, 1, 4, "fsdp", "fp32"),
    (125_000_000, 12, 768, 2, 512, 2, "zero2", "bf16"),
    (60_000_000, 6, 512, 64, 256, 3, "ddp", "fp32"),
    (2_000_000_000, 20, 2560, 2, 1024, 8, "fsdp", "amp-bf16"),
]


def check_train_memory(train_memory) -> None:
    """train_memory(n_params, n_layers, hidden, micro_batch, seq_len, n_gpus, sharding, precision) ->
    {"weights", "grads", "optimizer", "activations", "total"} in GB (1e9 bytes) on ONE GPU of a
    data-parallel run. precision: "fp32" (4, 4, 8 bytes per parameter: weights, gradients, AdamW's two
    moments), "amp-bf16" (the same; autocast computes in bf16), "bf16" (bf16 weights and gradients, an
    fp32 master copy and fp32 moments: 2, 2, 12). sharding over n_gpus: "ddp" nothing, "zero1" the
    optimizer state, "zero2" + the gradients, "fsdp" + the weights. Activations: 34 bytes per layer,
    token and hidden unit in 16 bit (68 in fp32) for the GPU's own micro-batch, never sharded."""
    with Checker("train_memory") as c:
        for args in _MEM_CASES:
            n, L, h, b, s, g, sharding, prec = args
            what = (f"{n / 1e6:,.0f}M parameters, {L} layers x {h}, micro-batch {b} x {s}, {g} GPU(s), {sharding}, "
                    f"{prec}")
            got = c.call(train_memory, *args)
            if not isinstance(got, dict):
                raise CheckFailed(f"{what}: return a dict with keys {', '.join(KINDS)}, got {type(got).__name__}")
            c.keys(got, KINDS, what)
            exp = _mem_ref(*args)
            wrong = [
                (_mem_ref(*args, act_sharded=True), "each GPU keeps the activations of its OWN micro-batch: data "
                                                    "parallelism never divides them by n_gpus"),
                (_mem_ref(*args, sharded=("optimizer", "grads") if sharding == "zero1" else None),
                 "ZeRO-1 shards only the optimizer state; ZeRO-2 adds the gradients, FSDP (ZeRO-3) the weights"),
                (_mem_ref(*args, sharded=("optimizer", "grads") if sharding == "fsdp" else None),
                 "FSDP (ZeRO-3) shards the weights too"),
                (_mem_ref(*args, sharded=("optimizer",) if sharding == "ddp" else None),
                 "DDP keeps a full copy of everything on every GPU: nothing is sharded"),
                (_mem_ref(*args, bytes_=(2, 2, 8) if prec == "bf16" else None),
                 "bf16 weights need an fp32 master copy in the optimizer: 4 (master) + 4 + 4 (moments) = 12 bytes"),
                (_mem_ref(*args, bytes_=(2, 2, 12) if prec == "amp-bf16" else None),
                 "autocast (amp-bf16) keeps the weights and gradients in fp32: it only computes in bf16"),
                (_mem_ref(*args, act=34 if prec == "fp32" else None), "fp32 activations take twice the bytes: 68"),
                (_mem_ref(*args, unit=2**30), "GB is 1e9 bytes (not GiB, 2**30)"),
                (_mem_ref(*args, unit=1), "return GB (1e9 bytes), not bytes"),
            ]
            try:
                vec = [got[k] for k in KINDS]
            except KeyError as e:
                raise CheckFailed(f"{what}: missing key {e}") from None
            c.close(vec, _vec(exp), what + " [weights, grads, optimizer, activations, total] GB", rtol=1e-6,
                    atol=0, mistakes=[(_vec(w), why) for w, why in wrong])


# ----------------------------------------------------------------------------------- 2. MFU
def _mfu_ref(step_s, tokens_per_step, fpt, n_gpus, peak, warmup, *, mode="ratio", gpus=True):
    t = [float(x) for x in as_tensor(step_s).double().flatten().tolist()]
    steady = t[warmup:] if mode != "all" else t
    peak_all = peak * (n_gpus if gpus else 1)
    if mode == "mean":                                 # the mean of per-step MFUs
        return sum(tokens_per_step * fpt / (dt * peak_all) for dt in steady) / len(steady)
    return tokens_per_step * len(steady) * fpt / (sum(steady) * peak_all)


def _times(first, steady, n, spikes=(), seed=0):
    g = torch.Generator().manual_seed(seed)
    t = (steady * (1 + 0.02 * torch.randn(n, generator=g, dtype=torch.float64))).tolist()
    t[0] = first
    for i, v in spikes:
        t[i] = v
    return t


_MFU_CASES = [  # step seconds, tokens per step (all GPUs), FLOPs per token, n_gpus, peak per GPU, warm-up steps
    (_times(52.0, 0.208, 40, [(20, 0.4)]), 131_072, 671.22e6, 1, 989e12, 1),      # gpu-dense on one H200
    (_times(95.0, 0.556, 30, [(10, 1.2)], seed=1), 131_072, 671.66e6, 1, 989e12, 1),   # gpu (mini-V3)
    (_times(60.0, 0.23, 25, seed=2), 8 * 131_072, 671.22e6, 8, 989e12, 3),
    (_times(30.0, 1.9, 12, [(6, 2.6)], seed=3), 64 * 4096 * 16, 2.2e10, 64, 989e12, 2),
    (_times(0.9, 0.035, 50, seed=4), 12 * 64, 5.3e6, 1, 3.0e11, 5),     # a CPU
    (_times(0.3, 0.3, 8, seed=5), 4 * 16384, 1.0e9, 2, 312e12, 0),
]


def check_steady_mfu(steady_mfu) -> None:
    """steady_mfu(step_seconds, tokens_per_step, flops_per_token, n_gpus, peak_flops_per_gpu, warmup_steps)
    -> the MFU of the run after its first `warmup_steps` steps (compile, warm-up): a fraction in (0, 1].
    tokens_per_step counts ALL the GPUs' tokens; FLOPs per token are training FLOPs (forward + backward).
    MFU = the model FLOPs done / (the time they took x the peak of all the GPUs)."""
    with Checker("steady_mfu") as c:
        for step_s, tps, fpt, n, peak, warm in _MFU_CASES:
            what = (f"{len(step_s)} steps ({warm} warm-up) of {tps:,} tokens, {fpt:.3g} FLOPs/token, {n} GPU(s) "
                    f"of {peak:.3g} FLOP/s")
            got = c.call(steady_mfu, list(step_s), tps, fpt, n, peak, warm)
            exp = _mfu_ref(step_s, tps, fpt, n, peak, warm)
            if not 0 < exp <= 1:
                raise AssertionError(f"check case out of (0, 1]: {exp}")
            c.number(got, exp, what, rtol=1e-6, mistakes=[
                (_mfu_ref(step_s, tps, fpt, n, peak, warm, mode="all"),
                 "leave out the warm-up steps (the first one includes torch.compile)"),
                (_mfu_ref(step_s, tps, fpt, n, peak, warm, mode="mean"),
                 "the mean of per-step MFUs weights a slow step like a fast one: divide ALL the FLOPs by ALL the time"),
                (_mfu_ref(step_s, tps, fpt, n, peak, warm, gpus=False),
                 "divide by the peak of ALL the GPUs (n_gpus x peak per GPU)"),
                (_mfu_ref(step_s, tps, fpt, n, peak, warm) / n,
                 "tokens_per_step already counts every GPU's tokens: don't divide it by n_gpus"),
                (100 * exp, "return a fraction (0.43), not a percentage (43)"),
                (exp * 3, "flops_per_token is already the training cost (forward + backward): don't multiply by 3"),
            ])


# ----------------------------------------------------------------------------------- 3. accumulation
def _tiny_model(seed: int = 0) -> MiniDeepSeek:
    torch.manual_seed(seed)
    cfg = get_preset("baseline", vocab_size=20, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=16)
    return MiniDeepSeek(cfg)


def _grads_of(model) -> dict:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _accumulate(micro, how, seed):
    model = _tiny_model(seed)
    total = sum(x.numel() for x, _ in micro)
    for i, (x, y) in enumerate(micro):
        loss = model(x, y).loss
        if how == "tokens":
            loss = loss * x.numel() / total
        elif how == "count":
            loss = loss / len(micro)
        elif how == "last" and i < len(micro) - 1:
            model.zero_grad()
            continue
        if how == "zero":
            model.zero_grad()
            loss = loss * x.numel() / total
        loss.backward()
    return _grads_of(model)


def check_accumulate_grads(accumulate_grads) -> None:
    """accumulate_grads(model, micro_batches) -> {parameter name: gradient}: the gradient of the mean
    cross-entropy over EVERY token of all the micro-batches, i.e. what one backward over all of them at
    once gives. micro_batches: a list of (x, y), (b_i, T_i) token ids each; sizes may differ (the last
    micro-batch of an epoch is often shorter). `model(x, y).loss` is the mean over ONE micro-batch's
    tokens. The model arrives with no gradients."""
    with Checker("accumulate_grads") as c:
        g = torch.Generator().manual_seed(3)
        for sizes, seed in [([(4, 16)], 0), ([(4, 16), (4, 16)], 1), ([(2, 16)] * 4, 2),
                            ([(4, 16), (4, 16), (2, 16)], 3), ([(1, 16), (3, 16)], 4), ([(3, 16), (2, 8)], 5),
                            ([(1, 1), (2, 5)], 6)]:
            micro = [(torch.randint(0, 20, s, generator=g), torch.randint(0, 20, s, generator=g)) for s in sizes]
            what = f"micro-batches {[tuple(x.shape) for x, _ in micro]}"
            exp = _accumulate(micro, "tokens", seed)
            got = c.call(accumulate_grads, _tiny_model(seed), micro)
            if not isinstance(got, dict):
                raise CheckFailed(f"{what}: return {{name: p.grad}} for every parameter, got {type(got).__name__}")
            missing = [k for k in exp if k not in got]
            if missing:
                raise CheckFailed(f"{what}: no gradient for {missing[:3]}: run backward on every micro-batch and "
                                  "return {name: p.grad for name, p in model.named_parameters()}")
            flat = [as_tensor(got[k], f"{what}: gradient of {k}").double().flatten() for k in exp]
            wrongs = [(_accumulate(micro, h, seed), why) for h, why in [
                ("count", "the micro-batches differ in size: weight each one's mean loss by its share of the tokens "
                          "(x.numel() / all tokens), not 1 / number of micro-batches"),
                ("sum", "scale each micro-batch's loss: the big batch's loss is a MEAN over all its tokens"),
                ("last", "don't zero the gradients between micro-batches: backward ADDS into .grad"),
                ("zero", "don't zero the gradients between micro-batches: backward ADDS into .grad")]]
            c.close(torch.cat(flat), torch.cat([v.double().flatten() for v in exp.values()]), what, atol=1e-6,
                    rtol=1e-4, mistakes=[(torch.cat([w[k].double().flatten() for k in exp]), why) for w, why in wrongs])


# ----------------------------------------------------------------------------------- 4. rank slice
def check_rank_slice(rank_slice) -> None:
    """rank_slice(global_batch, rank, world_size) -> this rank's rows: the global batch of B * world_size
    rows is cut into world_size contiguous blocks of B rows; rank r takes block r (minids.data.get_batch)."""
    with Checker("rank_slice") as c:
        base = torch.arange(24 * 5).view(24, 5)
        cases = [(base[:8], 0, 1), (base[:8], 1, 2), (base[:12], 2, 3), (base[:8], 3, 4), (base, 5, 8),
                 (base[:8], 7, 8), (base.t().contiguous().t()[:6], 1, 2), (base.view(24, 5, 1)[:16], 2, 4),
                 (base[:24:2], 0, 4)]
        for gb, rank, world in cases:
            b = gb.size(0) // world
            layout = "" if gb.is_contiguous() else " (non-contiguous)"
            what = f"global batch {tuple(gb.shape)}{layout}, rank {rank} of {world}"
            got = c.call(rank_slice, gb, rank, world)
            c.close(got, gb[rank * b:(rank + 1) * b], what, atol=0, rtol=0, mistakes=[
                (gb[rank::world], "minids takes contiguous blocks: rank r reads rows [r*B, (r+1)*B), not every "
                                  "world_size-th row"),
                (gb[rank * b:(rank + 1) * b + 1], "one row too many: the block of rank r ends before row (r+1)*B"),
                (gb[rank:rank + b], "the block of rank r starts at row r*B (B = rows / world_size), not at row r"),
            ])
        parts = [c.call(rank_slice, base[:12], r, 4) for r in range(4)]
        c.true(torch.equal(torch.cat([as_tensor(p) for p in parts]), base[:12]),
               "the ranks' slices, in rank order, must rebuild the global batch")


# ----------------------------------------------------------------------------------- 5-7. think
GPU_DENSE_PARAMS, GPU_PARAMS, GPU_ACTIVE = 99_306_240, 279_485_056, 75_081_984
TOKENS_PER_STEP = 32 * 1024 * 4
SMOKE_TRAIN_TOKENS, SMOKE_ALL_TOKENS = 1_330_060, 1_477_845      # Shakespeare, BPE-8192 (train / train + val)


def check_run_numbers(answer) -> None:
    """answer = {"tokens": ..., "steps_8_gpus": ..., "smoke_epochs": ...}: a Chinchilla-sized run of
    gpu-dense (20 tokens per parameter); the optimizer steps it takes on 8 GPUs with 131,072 tokens per
    GPU per step (rounded up); how many times it would read Shakespeare's 1,330,060 training tokens."""
    with Checker("run_numbers") as c:
        c.answer(answer)
        c.keys(answer, ["tokens", "steps_8_gpus", "smoke_epochs"], "the answer")
        tokens = 20 * GPU_DENSE_PARAMS
        c.number(answer["tokens"], tokens, "tokens: 20 per parameter of gpu-dense", rtol=1e-3, mistakes=[
            (20 * GPU_PARAMS, "gpu-dense has 99.3M parameters (279.5M is the mini-V3 preset)"),
            (20 * GPU_ACTIVE, "gpu-dense has 99.3M parameters (75.1M are the mini-V3's active ones)"),
            (GPU_DENSE_PARAMS, "Chinchilla: about 20 tokens PER PARAMETER")])
        c.number(answer["steps_8_gpus"], math.ceil(tokens / (8 * TOKENS_PER_STEP)), "steps on 8 GPUs", integer=True,
                 mistakes=[(math.ceil(tokens / TOKENS_PER_STEP), "8 GPUs read 8 x 131,072 tokens per step"),
                           (tokens // (8 * TOKENS_PER_STEP), "round UP: the last step completes the tokens")])
        c.number(answer["smoke_epochs"], tokens / SMOKE_TRAIN_TOKENS, "passes over Shakespeare", rtol=2e-3, mistakes=[
            (tokens / SMOKE_ALL_TOKENS, "training reads only the train split (1,330,060 tokens)")])


def _fit_batch(budget, n_gpus=1, act=34, static=16):
    per_seq = act * 1024 * 768 * 12
    return math.floor((budget - static * GPU_DENSE_PARAMS / n_gpus) / per_seq)


def check_max_micro_batch(answer) -> None:
    """answer = {"static_gb": GB, "activation_gb_per_seq": GB, "ddp": n, "fsdp8": n}: for gpu-dense
    (99,306,240 parameters, 12 layers of 768) in amp-bf16 by task 1's rule, the weights + gradients +
    optimizer state of one unsharded copy, the activations of ONE 1,024-token sequence, and the largest
    micro-batch that fits in 80 GB (80e9 bytes) under DDP and under FSDP over 8 GPUs."""
    with Checker("max_micro_batch") as c:
        c.answer(answer)
        c.keys(answer, ["static_gb", "activation_gb_per_seq", "ddp", "fsdp8"], "the answer")
        c.number(answer["static_gb"], 16 * GPU_DENSE_PARAMS / 1e9, "static_gb: weights + gradients + optimizer",
                 rtol=5e-4, mistakes=[(4 * GPU_DENSE_PARAMS / 1e9, "count the gradients and AdamW's two moments too: "
                                                                  "4 + 4 + 8 bytes per parameter"),
                                      (12 * GPU_DENSE_PARAMS / 1e9, "amp-bf16 keeps fp32 weights AND fp32 gradients "
                                                                    "beside the moments: 16 bytes")])
        c.number(answer["activation_gb_per_seq"], 34 * 1024 * 768 * 12 / 1e9, "activation_gb_per_seq", rtol=5e-4,
                 mistakes=[(68 * 1024 * 768 * 12 / 1e9, "amp-bf16 stores 16-bit activations: 34 bytes, not 68"),
                           (34 * 1024 * 768 / 1e9, "every one of the 12 layers stores its activations")])
        for key, n in (("ddp", 1), ("fsdp8", 8)):
            exp = _fit_batch(80e9, n)
            c.number(answer[key], exp, f"{key}: sequences per micro-batch", integer=True, mistakes=[
                (exp + 1, "round DOWN: a sequence that only partly fits does not fit"),
                (_fit_batch(80 * 2**30, n), "80 GB is 80e9 bytes, not 80 GiB"),
                (_fit_batch(80e9, n, static=0), "weights, gradients and optimizer state (16 bytes per parameter) "
                                                "take their share first"),
                (_fit_batch(80e9, n, act=68), "amp-bf16 stores 16-bit activations: 34 bytes, not 68"),
                (_fit_batch(80e9, 1) if n > 1 else -1, "FSDP shards the 16 bytes per parameter over the 8 GPUs"),
                (_fit_batch(80e9 * 8, 8) if n > 1 else -1, "FSDP does not pool the GPUs' memory for activations: "
                                                           "each GPU holds its own micro-batch's")])


def check_no_memory_saver(answer) -> None:
    """answer: the letter of what does NOT lower one GPU's memory for a fixed global batch:
    a) ZeRO-1, b) FSDP, c) gradient accumulation (more, smaller micro-batches), d) more GPUs under DDP,
    each with the same micro-batch as before."""
    with Checker("no_memory_saver") as c:
        c.answer(answer)
        c.choice(answer, "d", ["a", "b", "c", "d"], "which one does not lower memory per GPU", mistakes={
            "a": "ZeRO-1 divides the optimizer state (8-12 bytes per parameter) by the number of GPUs",
            "b": "FSDP divides weights, gradients and optimizer state by the number of GPUs",
            "c": "smaller micro-batches store fewer activations at once; the gradients add up to the same step"})


# ----------------------------------------------------------------------------------- 8. experiment
EXPERIMENT = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=176,
                  max_position_embeddings=128)


def activation_bytes_per_token(cfg: ModelConfig, batch: int, seq: int, seed: int = 0) -> float:
    """The bytes of the tensors one training forward saves for its backward (not the parameters),
    per token: every tensor the saved-tensors pack hook receives, numel * element_size, summed."""
    torch.manual_seed(seed)
    model = MiniDeepSeek(cfg).train()
    params = {p.data_ptr() for p in model.parameters()}
    total = [0]

    def pack(t):
        if t.data_ptr() not in params:
            total[0] += t.numel() * t.element_size()
        return t

    g = torch.Generator().manual_seed(seed)
    x, y = (torch.randint(0, cfg.vocab_size, (batch, seq), generator=g) for _ in range(2))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, y)
    return total[0] / (batch * seq)


def activation_experiment_reference() -> dict:
    small = get_preset("gpu-dense", vocab_size=64, **EXPERIMENT)
    big = small.replace(vocab_size=512)
    per_vocab = (activation_bytes_per_token(big, 4, 64) - activation_bytes_per_token(small, 4, 64)) / (512 - 64)
    b_small = activation_bytes_per_token(small, 4, 64)
    per_layer = (b_small - per_vocab * 64) / (small.num_hidden_layers * small.hidden_size)
    seq = {s: activation_bytes_per_token(small, 4, s) for s in (16, 128)}
    return {"per_vocab": per_vocab, "per_layer_per_hidden": per_layer,
            "grows_with_seq": seq[128] > 1.01 * seq[16]}


def check_activation_experiment(results) -> None:
    """results = {"per_vocab": bytes, "per_layer_per_hidden": bytes, "grows_with_seq": bool}: from the saved
    bytes per token of gpu-dense at width 64, 2 layers (EXPERIMENT), micro-batch 4 x 64 tokens, in float32:
    per_vocab = (bytes at vocab 512 - bytes at vocab 64) / 448; per_layer_per_hidden = (bytes at vocab 64 -
    per_vocab * 64) / (2 layers x 64); grows_with_seq: do the bytes PER TOKEN at 128 tokens exceed those
    at 16 by more than 1%?"""
    with Checker("activation_experiment") as c:
        c.answer(results)
        c.keys(results, ["per_vocab", "per_layer_per_hidden", "grows_with_seq"], "the results")
        ref = activation_experiment_reference()
        c.in_range(results["per_vocab"], 0.9 * ref["per_vocab"], 1.1 * ref["per_vocab"], "bytes per vocabulary "
                   "entry per token", why=f"this model saves about {ref['per_vocab']:.1f} (float32 logits and what "
                   "the cross-entropy keeps)")
        c.in_range(results["per_layer_per_hidden"], 0.9 * ref["per_layer_per_hidden"],
                   1.1 * ref["per_layer_per_hidden"], "bytes per layer per hidden unit per token",
                   why="counting every saved tensor that is not a parameter gives about "
                       f"{ref['per_layer_per_hidden']:.0f}")
        got = results["grows_with_seq"]
        if not isinstance(got, bool) and not (hasattr(got, "dtype") and str(got.dtype) == "bool"):
            raise CheckFailed(f"grows_with_seq: True or False, got {got!r}")
        c.true(bool(got) == ref["grows_with_seq"], "grows_with_seq: compare the bytes PER TOKEN at 16 and 128 "
                                                   "tokens again (this torch " +
               ("stores" if ref["grows_with_seq"] else "does not store") + " T x T attention scores)")
