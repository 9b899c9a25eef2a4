"""Every chapter-08 check passes on the solution, fails on the stub, and rejects plausible mistakes."""


from nbutil import check_contract, notebook_namespace

from minids.checks import check_accumulate_grads, check_mfu, check_rank_slice

SOL = notebook_namespace("solutions/08_scaling_up.ipynb")
STUB = notebook_namespace("solutions/08_scaling_up.ipynb", stubbed=True)


def _sum_not_mean(model, micro):
    for x, y in micro:
        model(x, y).loss.backward()


def _zero_between(model, micro):
    for x, y in micro:
        model.zero_grad()
        (model(x, y).loss / len(micro)).backward()


CASES = {
    "mfu": (check_mfu, [lambda tps, fpt, n, peak: tps * fpt / peak,
                        lambda tps, fpt, n, peak: 100 * tps * fpt / (n * peak)]),
    "rank_slice": (check_rank_slice, [lambda g, r, w: g[r::w],
                                      lambda g, r, w: g[r * (len(g) // w):(r + 1) * (len(g) // w) + 1]]),
    "accumulate_grads": (check_accumulate_grads, [_sum_not_mean, _zero_between]),
}


test_check_passes_on_solution, test_check_fails_on_stub, test_check_rejects_plausible_mistakes = \
    check_contract(CASES, SOL, STUB)
