"""minids.pipeline: the schedule simulator against Table 2's closed forms, and a real two-process
run of torch.distributed.pipelining equal to the unsplit model."""

import pytest
import torch

from minids import pipeline as P
from minids.config import get_preset

CASES = [(2, 2), (2, 4), (4, 4), (4, 8), (4, 9), (8, 16), (8, 20), (16, 32)]


def _counts_ok(orders, stages_of):
    for r, ops in orders.items():
        flat = [o for op in ops for o in (op.pair if op.kind == "FB" else (op,))]
        assert len(flat) == len(set(flat)), f"rank {r} repeats an op"
        assert {o.stage for o in flat} == stages_of(r)


@pytest.mark.parametrize("pp, m", CASES)
@pytest.mark.parametrize("F, B", [(1, 2), (2, 3), (1.5, 1.5)])
def test_1f1b_bubble(pp, m, F, B):
    tl = P.simulate(P.order_1f1b(pp, m), {"F": F, "B": B})
    assert set(tl.bubble.values()) == {P.bubble_1f1b(pp, F, B)}
    assert tl.makespan == m * (F + B) + P.bubble_1f1b(pp, F, B)


@pytest.mark.parametrize("pp, m", CASES)
@pytest.mark.parametrize("F, B, W", [(1, 2, 1), (2, 3, 1), (1, 3, 1), (3, 5, 2)])   # W <= B - W
def test_zb1p_bubble(pp, m, F, B, W):
    orders = P.order_zb1p(pp, m)
    _counts_ok(orders, lambda r: {r})
    tl = P.simulate(orders, {"F": F, "B": B, "W": W})
    assert set(tl.bubble.values()) == {P.bubble_zb1p(pp, F, B, W)}


@pytest.mark.parametrize("pp, m", [(2, 4), (4, 8), (4, 12), (8, 16), (8, 20), (16, 32)])
@pytest.mark.parametrize("F, B, W", [(1, 2, 1), (2, 3, 1), (2, 4, 2), (3, 5, 2)])    # B - W = F
def test_dualpipe_and_dualpipev_bubble(pp, m, F, B, W):
    d = {"F": F, "B": B, "W": W, "FB": F + B}
    orders = P.order_dualpipe(pp, m)
    _counts_ok(orders, lambda r: {r, 2 * pp - 1 - r})
    tl = P.simulate(orders, d, P.dualpipe_chains(pp))
    assert set(tl.bubble.values()) == {P.bubble_dualpipe(pp, F + B, B, W)}
    tlv = P.simulate(P.order_dualpipev(pp // 2, m), d)              # the same bubble on half the GPUs
    assert set(tlv.bubble.values()) == {P.bubble_dualpipe(pp, F + B, B, W)}


def test_formula_is_only_exact_under_its_assumptions():
    # DualPipe with backward-for-input longer than a forward: the simulator finds less idle time
    tl = P.simulate(P.order_dualpipe(8, 20), {"F": 1, "B": 3, "W": 1, "FB": 4}, P.dualpipe_chains(8))
    assert tl.max_bubble < P.bubble_dualpipe(8, 4, 3, 1)
    # ZB1P with W > B - W: more idle than the formula says
    tl = P.simulate(P.order_zb1p(4, 8), {"F": 2, "B": 3, "W": 2})
    assert tl.max_bubble > P.bubble_zb1p(4, 2, 3, 2)


def test_parse_and_deadlock():
    assert repr(P.parse_op("3F12")) == "3F12" and repr(P.parse_op("(0F3;1B2)")) == "(0F3;1B2)"
    with pytest.raises(ValueError, match="must look like"):
        P.parse_op("F3")
    with pytest.raises(ValueError, match="deadlock"):
        P.simulate({0: ["0B0", "0F0"], 1: ["1F0", "1B0"]}, {"F": 1, "B": 1})
    assert P.simulate({0: ["0F0", "0B0"]}, {"F": 1, "B": 2}).bubble == {0: 0}    # one stage: no bubble
    with pytest.raises(ValueError):
        P.order_dualpipe(3, 12)


def test_split_model_covers_every_block_once():
    from minids.model import MiniDeepSeek
    cfg = get_preset("mini-v3-no-mtp", vocab_size=32, max_position_embeddings=16)
    model = MiniDeepSeek(cfg)
    parts = P.split_model(model, 3)
    assert [len(p.layers) for p in parts] == [1, 2, 1]
    x = torch.randint(0, 32, (2, 16))
    h = x
    for p in parts:
        h = p(h)
    assert torch.allclose(h, model(x).logits, atol=1e-6)
    with pytest.raises(ValueError, match="n_stages"):
        P.split_model(model, 5)
    with pytest.raises(ValueError, match="num_nextn_predict_layers"):
        P.split_model(MiniDeepSeek(get_preset("mini-v3", vocab_size=32)), 2)


@pytest.mark.slow
def test_torch_pipeline_two_processes_equals_unsplit_model():
    cfg = get_preset("mini-v3-no-mtp", vocab_size=64, max_position_embeddings=16)
    runs = P.run_pipeline(cfg, schedules=("1F1B", "DualPipeV"), world=2, n_microbatches=4)
    loss, grads = P.reference_step(cfg)
    for name, run in runs.items():
        assert abs(run.loss - loss) < 1e-5, name
        assert set(run.grads) == set(grads), name
        for n, g in grads.items():
            assert torch.allclose(run.grads[n], g, atol=1e-6, rtol=1e-4), (name, n)
    assert runs["1F1B"].executed == P.order_1f1b(2, 4)
    assert runs["DualPipeV"].plan == P.order_dualpipev(2, 4)
    flat = {r: [o for op in ops for o in (op.pair if op.kind == "FB" else (op,))]
            for r, ops in P.order_dualpipev(2, 4).items()}
    assert runs["DualPipeV"].executed == flat
