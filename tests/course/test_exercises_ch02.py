"""Every chapter-02 check passes on the solution, fails on the stub, and rejects plausible mistakes."""

import math

import pytest
import torch
from nbutil import check_contract, notebook_namespace

from minids.checks import CheckFailed, check_attend_with_cache, check_kv_cache_size, check_repeat_kv

SOL = notebook_namespace("solutions/02_kv_cache_gqa.ipynb")
STUB = notebook_namespace("solutions/02_kv_cache_gqa.ipynb", stubbed=True)


def _step_masked(q, k, v, ck, cv):           # applies a (1, S) tril mask: keeps only the first key
    ck, cv = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
    s = q @ ck.transpose(-2, -1) / math.sqrt(q.size(-1))
    s = s.masked_fill(~torch.ones(1, ck.size(2), dtype=torch.bool).tril(), float("-inf"))
    return s.softmax(-1) @ cv, ck, cv


def _step_unscaled(q, k, v, ck, cv):
    ck, cv = torch.cat([ck, k], 2), torch.cat([cv, v], 2)
    return (q @ ck.transpose(-2, -1)).softmax(-1) @ cv, ck, cv


def _step_replaces(q, k, v, ck, cv):          # keeps only the newest key and value
    return (q @ k.transpose(-2, -1)).softmax(-1) @ v, k, v


def _step_attends_before_append(q, k, v, ck, cv):
    out = (q @ ck.transpose(-2, -1) / math.sqrt(q.size(-1))).softmax(-1) @ cv
    return out, torch.cat([ck, k], 2), torch.cat([cv, v], 2)


CASES = {
    "repeat_kv": (check_repeat_kv, [
        lambda kv, n: kv.repeat(1, 1, n, 1),                           # tiles: 0,1,0,1
        lambda kv, n: kv,                                              # forgets to repeat
    ]),
    "attend_step": (check_attend_with_cache, [_step_masked, _step_unscaled, _step_replaces,
                                             _step_attends_before_append]),
    "kv_cache_size": (check_kv_cache_size, [
        lambda L, H, n_kv, D, ctx, B=1, nb=2: L * B * ctx * n_kv * D * nb,            # no factor 2
        lambda L, H, n_kv, D, ctx, B=1, nb=2: 2 * L * B * ctx * H * D * nb,           # query heads
        lambda L, H, n_kv, D, ctx, B=1, nb=2: 2 * B * ctx * n_kv * D * nb,            # one layer
        lambda L, H, n_kv, D, ctx, B=1, nb=2: 2 * L * ctx * n_kv * D * nb,            # ignores batch
    ]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_mistakes_are_named():
    with pytest.raises(CheckFailed, match="tiles the heads"):
        check_repeat_kv(CASES["repeat_kv"][1][0])
    with pytest.raises(CheckFailed, match="factor 2"):
        check_kv_cache_size(CASES["kv_cache_size"][1][0])
    with pytest.raises(CheckFailed, match="not the query heads"):
        check_kv_cache_size(CASES["kv_cache_size"][1][1])
    with pytest.raises(CheckFailed, match="no causal mask is needed"):
        check_attend_with_cache(_step_masked)
