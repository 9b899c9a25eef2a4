"""Every chapter-05 check passes on the solution and on valid alternatives, fails on the stub, and
rejects plausible mistakes, naming them where the check knows them."""

import contextlib
import io

import nbformat
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from nbutil import ROOT, Wrong, check_contract

from minids.checks import (
    CheckFailed,
    check_acceptance_experiment,
    check_mtp_loss,
    check_mtp_targets,
    check_speculation_numbers,
    check_speculative_decode,
)
from minids.checks.build import CHECK_CALL, strip_solutions
from minids.mtp import mtp_forward

NB = "solutions/05_mtp.ipynb"


def _namespace(stubbed: bool) -> dict:
    """The notebook's code without its check calls and without the experiment (it trains for
    ~20 s; nbval runs it, with its check, on the real measurements)."""
    nb = nbformat.read(ROOT / NB, as_version=4)
    ns: dict = {"__name__": "__notebook__"}
    for cell in nb.cells:
        if cell.cell_type != "code" or "experiment" in cell.metadata.get("tags", []) or CHECK_CALL.search(cell.source):
            continue
        src = strip_solutions(cell.source) if stubbed else cell.source
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                exec(compile(src, NB, "exec"), ns)
            except NotImplementedError:
                if not stubbed:
                    raise
    return ns


SOL, STUB = _namespace(False), _namespace(True)

# measurements of the kind the experiment makes (the solution's, rounded)
MEASURED = {"steps": [0, 10, 30, 70, 120], "greedy_agreement": [0.009, 0.883, 0.795, 0.704, 0.75],
            "sampled_acceptance": [0.911, 0.96, 0.89, 0.855, 0.834], "main_loss": [4.421, 3.246, 2.724, 2.455, 2.351]}
SOL["results"] = MEASURED


# ----------------------------------------------------------------------------------- task 1
def _targets(ids, D, shift=1, pad=-1):
    B, T = ids.size(0), ids.size(1) - 1
    out = torch.full((D + 1, B, T), pad, dtype=ids.dtype)
    for k in range(D + 1):
        src = ids[:, k + shift:k + shift + T - k]
        out[k, :, :src.size(1)] = src
    return out


def _targets_numpy(ids, D):                     # valid: NumPy, F.pad-free
    a = ids.numpy()
    B, T = a.shape[0], a.shape[1] - 1
    out = np.full((D + 1, B, T), -1, dtype=a.dtype)
    for k in range(min(D, T - 1) + 1):
        out[k, :, :T - k] = a[:, k + 1:]
    return out


def _targets_pad(ids, D):                       # valid: F.pad each shifted row
    T = ids.size(1) - 1
    rows = [F.pad(ids[:, k + 1:], (0, k), value=-1)[:, :T] if k < T else torch.full_like(ids[:, 1:], -1)
            for k in range(D + 1)]
    return torch.stack(rows)


# ----------------------------------------------------------------------------------- task 2
def _loss(model, idx, targets, chain=True, told=1, normed=False, lam=True, per=True):
    h0 = model(idx).hidden
    h = model.norm(h0) if normed else h0
    T, D = idx.size(1), len(model.mtp)
    losses = []
    for k in range(1, D + 1):
        hk, logits = mtp_forward(model, k, (h if chain else h0)[:, :T - k], idx[:, k * told:k * told + T - k])
        h = hk
        losses.append(F.cross_entropy(logits.flatten(0, 1), targets[:, k:].flatten(), ignore_index=-1))
    total = sum(losses) / (D if per else 1) * (model.mtp_loss_weight if lam else 1)
    return total, losses


def _loss_by_hand(model, idx, targets):         # valid: log-softmax and a masked mean, float64, a tensor
    h = model(idx).hidden
    T, D = idx.size(1), len(model.mtp)
    out = []
    for k in range(1, D + 1):
        h, logits = mtp_forward(model, k, h[:, :T - k], idx[:, k:])
        tgt = targets[:, k:]
        keep = tgt >= 0
        lp = logits.double().log_softmax(-1).gather(-1, tgt.clamp_min(0)[..., None])[..., 0]
        out.append(-(lp * keep).sum() / keep.sum())
    per = torch.stack(out)
    return (model.mtp_loss_weight * per.mean()).item(), per


# ----------------------------------------------------------------------------------- task 3
@torch.no_grad()
def _spec(model, prompt, n_new, bonus=True, told=1, crop=True, prefill_counted=True, use_cache=True,
          mtp_cache=True):
    L, P = model.config.num_hidden_layers, prompt.size(1)
    caches = model.new_cache()
    main = caches[:L]
    out = model(prompt, cache=main)
    toks = prompt[0].tolist() + [int(out.logits[0, -1].argmax())]
    hidden = list(out.hidden[0])
    st = {"drafted": 0, "accepted": 0, "main_forwards": 1 if prefill_counted else 0}
    done = 0
    while len(toks) < P + n_new:
        n = len(toks)
        if P + n_new - n >= 2:
            if mtp_cache:
                h = torch.stack(hidden[done:n - 1])[None]
                _, q = mtp_forward(model, 1, h, torch.tensor([toks[done + told:n - 1 + told]]), done, caches[L])
                done = n - 1
            else:                                # valid: recompute the MTP module over all positions
                h = torch.stack(hidden[:n - 1])[None]
                _, q = mtp_forward(model, 1, h, torch.tensor([toks[told:n - 1 + told]]))
            d = int(q[0, -1].argmax())
            if use_cache:
                out = model(torch.tensor([[toks[-1], d]]), start_pos=n - 1, cache=main)
                i0 = 0
            else:                                # wrong: re-reads the whole sequence every round
                out = model(torch.tensor([toks + [d]]))
                i0 = n - 1
            st["drafted"] += 1
            st["main_forwards"] += 1
            c = int(out.logits[0, i0].argmax())
            toks.append(c)
            hidden.append(out.hidden[0, i0])
            if c == d:
                st["accepted"] += 1
                if bonus:
                    toks.append(int(out.logits[0, i0 + 1].argmax()))
                    hidden.append(out.hidden[0, i0 + 1])
                    continue
            if crop and use_cache:
                for cache in main:
                    cache.crop(n)
        else:
            out = model(torch.tensor([[toks[-1]]]), start_pos=n - 1, cache=main)
            st["main_forwards"] += 1
            toks.append(int(out.logits[0, -1].argmax()))
            hidden.append(out.hidden[0, 0])
    return torch.tensor([toks]), st


def _spec_valid_lists(model, prompt, n_new):    # valid: plain lists and NumPy integers
    toks, st = _spec(model, prompt, n_new, mtp_cache=False)
    return toks.tolist(), {k: np.int64(v) for k, v in st.items()}


def _no_speculation(model, prompt, n_new):      # wrong: plain cached greedy, no drafts at all
    L, P = model.config.num_hidden_layers, prompt.size(1)
    cache = model.new_cache()[:L]
    out = model(prompt, cache=cache)
    toks = prompt[0].tolist() + [int(out.logits[0, -1].argmax())]
    while len(toks) < P + n_new:
        out = model(torch.tensor([toks[-1:]]), start_pos=len(toks) - 1, cache=cache)
        toks.append(int(out.logits[0, -1].argmax()))
    return torch.tensor([toks]), {"drafted": 0, "accepted": 0, "main_forwards": n_new}


# ----------------------------------------------------------------------------------- task 4
ALPHA = 0.85
GOOD = {"tokens_per_verify": 1.85, "tokens_per_verify_3_drafts": (1 - ALPHA ** 4) / (1 - ALPHA),
        "implied_draft_cost": 1.85 / 1.8 - 1, "v3_mtp_flops_share": 0.03665, "why_small": "b",
        "untrained_greedy_agreement": "a", "untrained_sampled_acceptance": "c"}


def _answer(**changes):
    return {**GOOD, **changes}


CASES = {
    "mtp_targets": (check_mtp_targets, [
        Wrong(lambda ids, D: _targets(ids, D, shift=0), named="AHEAD"),
        Wrong(lambda ids, D: _targets(ids, D, pad=0), named="pad with -1"),
        lambda ids, D: _targets(ids, 1),                                        # ignores D
        lambda ids, D: _targets(ids, D).long(),                                 # int32 in, int64 out
    ], [_targets_numpy, _targets_pad]),
    "mtp_loss": (check_mtp_loss, [
        Wrong(lambda m, i, t: _loss(m, i, t, chain=False), named="chain the depths"),
        Wrong(lambda m, i, t: _loss(m, i, t, normed=True), named="BEFORE the main model's final norm"),
        Wrong(lambda m, i, t: _loss(m, i, t, told=0), named="told the token k steps ahead"),
        Wrong(lambda m, i, t: _loss(m, i, t, lam=False), named="multiply by lambda"),
        Wrong(lambda m, i, t: _loss(m, i, t, per=False), named="averages the depths"),
        lambda m, i, t: (_loss(m, i, t)[0], _loss(m, i, t)[1][:1]),             # depth 1 only
        lambda m, i, t: (m(i, t).mtp_loss, m(i, t).mtp_losses),                 # calls the forbidden mtp_losses
    ], [_loss_by_hand]),
    "speculative_decode": (check_speculative_decode, [
        Wrong(lambda m, p, n: _spec(m, p, n, bonus=False), named="TWO tokens"),
        Wrong(lambda m, p, n: _spec(m, p, n, told=0), named="Emb(t_{n-1})"),
        Wrong(lambda m, p, n: _spec(m, p, n, crop=False), named="roll the main cache back"),
        Wrong(lambda m, p, n: _spec(m, p, n, prefill_counted=False), named="count the prefill"),
        Wrong(lambda m, p, n: _spec(m, p, n, use_cache=False), named="use the main KV cache"),
        _no_speculation,
        lambda m, p, n: _spec(m, p, 12),                                        # ignores n_new
    ], [_spec_valid_lists, lambda m, p, n: _spec(m, p, n, mtp_cache=False)]),
    "speculation_answer": (check_speculation_numbers, [
        Wrong(_answer(tokens_per_verify=0.85), named="1 + 0.85"),
        Wrong(_answer(tokens_per_verify_3_drafts=1 + 3 * ALPHA), named="1 + a + a^2 + a^3"),
        Wrong(_answer(implied_draft_cost=1.8 / 1.85 - 1), named="c = (1 + a) / 1.8 - 1"),
        Wrong(_answer(v3_mtp_flops_share=0.03804), named="share of the TOTAL"),
        Wrong(_answer(why_small="a"), named="one extra block next to 61"),
        Wrong(_answer(untrained_greedy_agreement="c"), named="1 time in 82"),
        Wrong(_answer(untrained_sampled_acceptance="a"), named="1 - TV(p, q)"),
        {k: v for k, v in GOOD.items() if k != "why_small"},
    ], [_answer(tokens_per_verify=np.float64(1.85), why_small=" B ", v3_mtp_flops_share=np.float32(0.0366)),
        _answer(tokens_per_verify_3_drafts=torch.tensor(3.186625))]),
    "results": (check_acceptance_experiment, [
        {**MEASURED, "steps": [10, 30, 70, 120, 200]},                          # no step-0 measurement
        {**MEASURED, "main_loss": [2.4, 2.3, 2.2, 2.1, 2.0]},                   # step 0 not untrained
        {**MEASURED, "greedy_agreement": [0.009, 0.02, 0.03, 0.04, 0.05]},      # the draft never learned
        {**MEASURED, "greedy_agreement": [0.9, 0.883, 0.795, 0.704, 0.75]},     # no gain over step 0
        {**MEASURED, "steps": [0, 10, 30, 50, 60]},                             # too short a run
        {**MEASURED, "sampled_acceptance": [0.911, 0.96, 0.89]},                # lengths differ
        {**MEASURED, "greedy_agreement": [0.9, 88.3, 79.5, 70.4, 75.0]},        # percentages
    ], [{k: np.array(v) for k, v in MEASURED.items()}, {**MEASURED, "steps": [0, 50, 100, 200, 400, 800],
                                                        "greedy_agreement": [0.01, 0.8, 0.7, 0.75, 0.8, 0.85],
                                                        "sampled_acceptance": [0.9, 0.9, 0.8, 0.85, 0.86, 0.88],
                                                        "main_loss": [4.4, 2.6, 2.3, 2.0, 1.85, 1.75]}]),
}

test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_speculative_check_sees_the_forwards_it_counts(capsys):
    def lying(m, p, n):                          # one more (cached, one-token) forward than it reports
        toks, st = _spec(m, p, n)
        m(p[:, :1], cache=m.new_cache()[:m.config.num_hidden_layers])
        return toks, st
    with pytest.raises(CheckFailed, match="ran the main model"):
        check_speculative_decode(lying)


def test_forbidden_package_loop_is_refused(capsys):
    from minids.generate import speculative_generate

    def package(m, p, n):
        toks, st = speculative_generate(m, p, n)
        return toks, {k: st[k] for k in ("drafted", "accepted", "main_forwards")}
    with pytest.raises(CheckFailed, match="forbids"):
        check_speculative_decode(package)


def test_solution_equals_the_package_on_a_trained_like_model():
    """The solution's loop and the package's agree on tokens and stats (drafts right and wrong)."""
    from minids.checks.ch05 import _spec_model
    from minids.generate import speculative_generate
    model = _spec_model("gqa", 11)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    toks, st = SOL["speculative_decode"](model, prompt, 20)
    ref, ref_st = speculative_generate(model, prompt, 20)
    assert torch.equal(toks, ref)
    assert 0 < st["accepted"] < st["drafted"]
    assert all(st[k] == ref_st[k] for k in st)
