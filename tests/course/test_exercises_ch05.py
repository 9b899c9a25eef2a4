"""Every chapter-05 check passes on the solution, fails on the stub, and rejects plausible mistakes."""

import pytest
import torch
from nbutil import check_contract, notebook_namespace

from minids.checks import CheckFailed, check_acceptance_rule, check_mtp_logits, check_mtp_shift

SOL = notebook_namespace("solutions/05_mtp.ipynb")
STUB = notebook_namespace("solutions/05_mtp.ipynb", stubbed=True)


def _logits_swapped_concat(model, h, x):
    m = model.mtp[0]
    e = model.embed_tokens(x[:, 1:])
    hp = m.eh_proj(torch.cat([m.hnorm(h[:, :-1]), m.enorm(e)], -1))
    return model.lm_head(m.norm(m.block(hp, model.freqs_cis[:x.size(1) - 1])))


def _logits_no_final_norm(model, h, x):
    m = model.mtp[0]
    e = model.embed_tokens(x[:, 1:])
    hp = m.eh_proj(torch.cat([m.enorm(e), m.hnorm(h[:, :-1])], -1))
    return model.lm_head(m.block(hp, model.freqs_cis[:x.size(1) - 1]))


def _logits_current_token(model, h, x):
    m = model.mtp[0]
    e = model.embed_tokens(x[:, :-1])
    hp = m.eh_proj(torch.cat([m.enorm(e), m.hnorm(h[:, :-1])], -1))
    return model.lm_head(m.norm(m.block(hp, model.freqs_cis[:x.size(1) - 1])))


def _rule_no_min(p, q, d):
    r = (p - q).clamp_min(0)
    return p[d] / q[d], r / r.sum()


def _rule_resample_p(p, q, d):
    return torch.clamp(p[d] / q[d], max=1.0), p


def _rule_unnormalised(p, q, d):
    return torch.clamp(p[d] / q[d], max=1.0), (p - q).clamp_min(0)


CASES = {
    "mtp_inputs_targets": (check_mtp_shift, [
        lambda x, y, k: (x[:, k - 1:-1], y[:, k - 1:-1]),
        lambda x, y, k: (x[:, k:], y[:, k - 1:-1]),
        lambda x, y, k: (x[:, :x.size(1) - k], y[:, k:]),
    ]),
    "mtp_logits": (check_mtp_logits, [_logits_swapped_concat, _logits_no_final_norm, _logits_current_token]),
    "acceptance_rule": (check_acceptance_rule, [_rule_no_min, _rule_resample_p, _rule_unnormalised]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)


def test_mistakes_are_named():
    with pytest.raises(CheckFailed, match="concatenate"):
        check_mtp_logits(_logits_swapped_concat)
    with pytest.raises(CheckFailed, match="min\\(1, p/q\\)"):
        check_acceptance_rule(_rule_no_min)
    with pytest.raises(CheckFailed, match="k\\+1 steps ahead"):
        check_mtp_shift(lambda x, y, k: (x[:, k:], y[:, k - 1:-1]))
