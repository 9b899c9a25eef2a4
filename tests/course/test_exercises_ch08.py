"""Every chapter-08 check passes on the solution and on valid alternatives, fails on the stub, rejects
plausible mistakes and names the ones it lists."""

import math

import numpy as np
import torch
from nbutil import Wrong, check_contract, notebook_namespace

from minids.checks import (
    check_accumulate_grads,
    check_activation_experiment,
    check_max_micro_batch,
    check_no_memory_saver,
    check_rank_slice,
    check_run_numbers,
    check_steady_mfu,
    check_train_memory,
)
from minids.checks.ch08 import _mem_ref, activation_experiment_reference

SOL = notebook_namespace("solutions/08_scaling_up.ipynb")
STUB = notebook_namespace("solutions/08_scaling_up.ipynb", stubbed=True)

# measured by the solution's experiment cell (2026-11-29, this machine; byte counts are exact)
MEASURED = {"per_vocab": 8.0, "per_layer_per_hidden": 117.19, "grows_with_seq": False}
SOL["act_results"] = MEASURED


# ------------------------------------------------------------------ train_memory
def _mem(*args, **kw):
    return _mem_ref(*args, **kw)


def _mem_loops(n_params, n_layers, hidden, micro_batch, seq_len, n_gpus, sharding, precision):
    """valid: written another way, NumPy floats, GB from bytes at the end, sharding by stage number"""
    stage = ["ddp", "zero1", "zero2", "fsdp"].index(sharding)
    half = precision == "bf16"
    b = np.array([2 if half else 4, 2 if half else 4, 12 if half else 8], dtype=np.float64) * n_params
    for i, k in enumerate((2, 1, 0)):            # optimizer at stage >= 1, grads >= 2, weights >= 3
        if stage >= i + 1:
            b[k] /= n_gpus
    act = np.float64(hidden) * n_layers * micro_batch * seq_len * (2 if precision == "fp32" else 1) * 34
    out = {"weights": b[0] / 1e9, "grads": b[1] / 1e9, "optimizer": b[2] / 1e9, "activations": act / 1e9}
    out["total"] = np.float64(sum(out.values()))
    return out


def _mem_tensor(*args):
    """valid: torch scalars, extra keys ignored"""
    return {**{k: torch.tensor(v, dtype=torch.float64) for k, v in _mem(*args).items()}, "bytes": 1}


# ------------------------------------------------------------------ steady_mfu
def _mfu(step_s, tps, fpt, n, peak, warm, mode="ratio", gpus=True, per_gpu_tokens=False):
    t = [float(x) for x in step_s]
    steady = t if mode == "all" else t[warm:]
    tok = tps / n if per_gpu_tokens else tps
    p = peak * (n if gpus else 1)
    if mode == "mean":
        return sum(tok * fpt / (dt * p) for dt in steady) / len(steady)
    return tok * len(steady) * fpt / (sum(steady) * p)


def _mfu_numpy(step_s, tps, fpt, n, peak, warm):
    """valid: NumPy, tokens/s of the steady part first"""
    t = np.asarray(step_s, dtype=np.float64)[warm:]
    return np.float64(tps * t.size / t.sum() * fpt / (n * peak))


# ------------------------------------------------------------------ accumulate_grads
def _acc(how):
    def fn(model, micro):
        total = sum(x.numel() for x, _ in micro)
        for x, y in micro:
            loss = model(x, y).loss
            if how == "count":
                loss = loss / len(micro)
            elif how == "tokens":
                loss = loss * x.numel() / total
            elif how == "zero":
                model.zero_grad()
                loss = loss * x.numel() / total
            elif how == "rows":                                     # rows, not tokens: wrong when T differs
                loss = loss * x.size(0) / sum(xx.size(0) for xx, _ in micro)
            loss.backward()
        return {n: p.grad for n, p in model.named_parameters()}
    return fn


def _acc_concat(model, micro):
    """valid when all micro-batches share T: one backward over the concatenation (NumPy arrays back)"""
    T = {x.size(1) for x, _ in micro}
    if len(T) == 1:
        model(torch.cat([x for x, _ in micro]), torch.cat([y for _, y in micro])).loss.backward()
    else:
        _acc("tokens")(model, micro)
    return {n: p.grad.numpy().copy() for n, p in model.named_parameters()}


def _acc_none(model, micro):
    _acc("tokens")(model, micro)                  # the gradients are left in .grad but nothing is returned


CASES = {
    "train_memory": (check_train_memory, [
        Wrong(lambda *a: _mem(*a, act_sharded=True), named="OWN micro-batch"),
        Wrong(lambda *a: _mem(*a, sharded=("optimizer", "grads") if a[6] == "zero1" else None), named="ZeRO-1 shards"),
        Wrong(lambda *a: _mem(*a, sharded=("optimizer", "grads") if a[6] == "fsdp" else None),
              named="shards the weights too"),
        Wrong(lambda *a: _mem(*a, sharded=("optimizer",) if a[6] == "ddp" else None), named="DDP keeps a full copy"),
        Wrong(lambda *a: _mem(*a, bytes_=(2, 2, 8) if a[7] == "bf16" else None), named="master copy"),
        Wrong(lambda *a: _mem(*a, bytes_=(2, 2, 12) if a[7] == "amp-bf16" else None), named="autocast"),
        Wrong(lambda *a: _mem(*a, act=34 if a[7] == "fp32" else None), named="68"),
        Wrong(lambda *a: _mem(*a, unit=2**30), named="GiB"),
        Wrong(lambda *a: _mem(*a, unit=1), named="not bytes"),
        lambda *a: {k: v for k, v in _mem(*a).items() if k != "total"},
        lambda *a: list(_mem(*a).values()),
        lambda *a: {**_mem(*a), "total": _mem(*a)["total"] - _mem(*a)["activations"]},
    ], [_mem_loops, _mem_tensor]),
    "steady_mfu": (check_steady_mfu, [
        Wrong(lambda *a: _mfu(*a, mode="all"), named="warm-up"),
        Wrong(lambda *a: _mfu(*a, mode="mean"), named="ALL the time"),
        Wrong(lambda *a: _mfu(*a, gpus=False), named="peak of ALL the GPUs"),
        Wrong(lambda *a: _mfu(*a, per_gpu_tokens=True), named="every GPU's tokens"),
        Wrong(lambda *a: 100 * _mfu(*a), named="percentage"),
        lambda s, tps, fpt, n, peak, warm: _mfu(s, tps, fpt, n, peak, warm + 1),
    ], [_mfu_numpy, lambda *a: torch.tensor(_mfu(*a)), lambda *a: [_mfu(*a)]]),
    "accumulate_grads": (check_accumulate_grads, [
        Wrong(_acc("count"), named="share of the tokens"),
        Wrong(_acc("sum"), named="MEAN over all its tokens"),
        Wrong(_acc("zero"), named="don't zero the gradients"),
        _acc("rows"), _acc_none,
    ], [_acc_concat]),
    "rank_slice": (check_rank_slice, [
        Wrong(lambda g, r, w: g[r::w], named="contiguous blocks"),
        Wrong(lambda g, r, w: g[r * (len(g) // w):(r + 1) * (len(g) // w) + 1], named="one row too many"),
        Wrong(lambda g, r, w: g[r:r + len(g) // w], named="starts at row r*B"),
        lambda g, r, w: g[r * (len(g) // w):(r + 1) * (len(g) // w)].flatten(),
        lambda g, r, w: g[:len(g) // w],
    ], [lambda g, r, w: torch.chunk(g, w)[r].numpy(), lambda g, r, w: g.split(len(g) // w)[r].tolist(),
        lambda g, r, w: g.reshape(w, -1, *g.shape[1:])[r]]),
    "run_numbers": (check_run_numbers, [
        Wrong({"tokens": 20 * 279_485_056, "steps_8_gpus": 5331, "smoke_epochs": 4202.6}, named="mini-V3 preset"),
        Wrong({"tokens": 20 * 75_081_984, "steps_8_gpus": 1433, "smoke_epochs": 1129.0}, named="active ones"),
        Wrong({"tokens": 1_986_124_800, "steps_8_gpus": 15_153, "smoke_epochs": 1493.26}, named="8 x 131,072"),
        Wrong({"tokens": 1_986_124_800, "steps_8_gpus": 1894, "smoke_epochs": 1493.26}, named="round UP"),
        Wrong({"tokens": 1_986_124_800, "steps_8_gpus": 1895, "smoke_epochs": 1343.9}, named="train split"),
        {"tokens": 1_986_124_800, "steps_8_gpus": 1895},
    ], [{"tokens": 1.986e9, "steps_8_gpus": np.int64(1895), "smoke_epochs": torch.tensor(1493.3)},
        {"tokens": 1_986_124_800.0, "steps_8_gpus": 1895.0, "smoke_epochs": 1493}]),
    "max_batch_answer": (check_max_micro_batch, [
        Wrong({"static_gb": 1.589, "activation_gb_per_seq": 0.3209, "ddp": 245, "fsdp8": 249}, named="round DOWN"),
        Wrong({"static_gb": 1.589, "activation_gb_per_seq": 0.3209, "ddp": 262, "fsdp8": 267}, named="80 GiB"),
        Wrong({"static_gb": 1.589, "activation_gb_per_seq": 0.3209, "ddp": 249, "fsdp8": 249}, named="share first"),
        Wrong({"static_gb": 1.589, "activation_gb_per_seq": 0.6417, "ddp": 122, "fsdp8": 124}, named="not 68"),
        Wrong({"static_gb": 1.589, "activation_gb_per_seq": 0.3209, "ddp": 244, "fsdp8": 244}, named="over the 8"),
        Wrong({"static_gb": 1.589, "activation_gb_per_seq": 0.3209, "ddp": 244, "fsdp8": 1993}, named="pool"),
        Wrong({"static_gb": 0.3972, "activation_gb_per_seq": 0.3209, "ddp": 244, "fsdp8": 248}, named="4 + 4 + 8"),
        Wrong({"static_gb": 1.589, "activation_gb_per_seq": 0.02674, "ddp": 244, "fsdp8": 248}, named="12 layers"),
        {"static_gb": 1.589, "activation_gb_per_seq": 0.3209, "ddp": 244.4, "fsdp8": 248},
    ], [{"static_gb": np.float64(1.58889984), "activation_gb_per_seq": 0.320864256, "ddp": np.int64(244),
         "fsdp8": 248.0}]),
    "memory_answer": (check_no_memory_saver, [
        Wrong("a", named="optimizer state"), Wrong("b", named="weights, gradients"),
        Wrong("c", named="smaller micro-batches"), "e", "none",
    ], ["D", " d)", "(d)"]),
    "act_results": (check_activation_experiment, [
        {**MEASURED, "per_vocab": 4.0},                                         # logits counted once
        {**MEASURED, "per_layer_per_hidden": 58.6},                             # halved, as if 16 bit
        {**MEASURED, "per_layer_per_hidden": 165.0},                            # parameters counted too
        {**MEASURED, "grows_with_seq": True},
        {**MEASURED, "grows_with_seq": "no"},
        {"per_vocab": 8.0, "per_layer_per_hidden": 117.19},
    ], [{"per_vocab": np.float32(8.0), "per_layer_per_hidden": torch.tensor(117.2), "grows_with_seq": np.bool_(False)},
        {"per_vocab": 7.9, "per_layer_per_hidden": 121, "grows_with_seq": False}]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_solution_answers_match_the_lesson_and_the_gpu_run():
    plan = SOL["train_memory"](99_306_240, 12, 768, 32, 1024, 1, "ddp", "amp-bf16")
    assert math.isclose(plan["total"], 11.856556032) and math.isclose(plan["activations"], 10.267656192)
    assert SOL["max_batch_answer"]["ddp"] == 244 and SOL["run_numbers"]["steps_8_gpus"] == 1895
    ref = activation_experiment_reference()
    assert abs(ref["per_vocab"] - MEASURED["per_vocab"]) < 0.01
    assert abs(ref["per_layer_per_hidden"] - MEASURED["per_layer_per_hidden"]) < 0.5 and not ref["grows_with_seq"]
