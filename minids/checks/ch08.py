"""Checks for chapter 08 (scaling up): MFU, each rank's slice of the global batch, and gradient
accumulation that equals one big batch."""

from __future__ import annotations

import torch

from ..config import get_preset
from ..model import MiniDeepSeek
from .checking import Checker


def check_mfu(mfu) -> None:
    """mfu(tokens_per_s, flops_per_token, n_gpus, peak_flops_per_gpu) -> a fraction in (0, 1]:
    the FLOPs the model needs per second, over what all the GPUs could do at their peak."""
    with Checker("mfu") as c:
        for tps, fpt, n, peak in [(1.2e6, 6.7e8, 1, 989e12), (3.1e5, 2.9e11, 8, 989e12),
                                  (2.0e4, 5.3e6, 1, 312e12), (9.0e6, 6.7e8, 16, 989e12)]:
            exp = tps * fpt / (n * peak)
            c.close(mfu(tps, fpt, n, peak), exp, f"{tps:.3g} tokens/s x {fpt:.3g} FLOPs on {n} GPU(s)",
                    rtol=1e-9, atol=0, mistakes=[
                        (exp * n, "divide by the peak of ALL the GPUs (n_gpus x peak per GPU)"),
                        (100 * exp, "return a fraction (0.45), not a percentage (45)"),
                        (tps * fpt / 3 / (n * peak), "flops_per_token is already the training cost "
                         "(forward + backward): don't divide by 3"),
                        (tps * 6 * fpt / (n * peak), "flops_per_token already counts everything; "
                         "don't multiply by 6"),
                    ])


def check_rank_slice(rank_slice) -> None:
    """rank_slice(global_batch, rank, world_size) -> this rank's rows: the global batch of
    B * world_size rows is cut into world_size contiguous blocks of B; rank r takes block r."""
    with Checker("rank_slice") as c:
        g = torch.arange(8 * 3).view(8, 3)
        for world, rank in [(1, 0), (2, 0), (2, 1), (4, 3), (8, 5)]:
            b = 8 // world
            exp = g[rank * b:(rank + 1) * b]
            c.close(rank_slice(g, rank, world), exp, f"rank {rank} of {world}", atol=0, rtol=0, mistakes=[
                (g[rank::world], "interleaving rows (rank::world_size) is another valid scheme, but minids "
                 "takes contiguous blocks so that rank r's batch is rows [r*B, (r+1)*B)"),
                (g[rank * b:(rank + 1) * b + 1] if rank * b + b < 8 else g[:0],
                 "one row too many: the block of rank r ends before row (r+1)*B"),
            ])
        parts = [rank_slice(g, r, 4) for r in range(4)]
        c.true(torch.equal(torch.cat(parts), g), "the ranks' slices, in rank order, must rebuild the global batch")


def _tiny_model():
    torch.manual_seed(0)
    cfg = get_preset("baseline", vocab_size=20, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                     num_attention_heads=2, max_position_embeddings=16)
    return MiniDeepSeek(cfg)


def _grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


def check_accumulate_grads(accumulate_grads) -> None:
    """accumulate_grads(model, micro_batches) -> None: leave in .grad the gradient of the mean loss
    over all micro-batches, i.e. exactly what one backward over the concatenated batch gives
    (each micro-batch is a pair (x, y) of the same size; start from zeroed gradients)."""
    with Checker("accumulate_grads") as c:
        g = torch.Generator().manual_seed(3)
        for n in (1, 2, 4):
            xs = torch.randint(0, 20, (4 * n, 16), generator=g)
            ys = torch.randint(0, 20, (4 * n, 16), generator=g)
            big = _tiny_model()
            big(xs, ys).loss.backward()
            exp = _grads(big)
            micro = [(xs[i * 4:(i + 1) * 4], ys[i * 4:(i + 1) * 4]) for i in range(n)]
            wrong_sum, wrong_last, wrong_last_scaled = _tiny_model(), _tiny_model(), _tiny_model()
            for x, y in micro:
                wrong_sum(x, y).loss.backward()
            wrong_last(*micro[-1]).loss.backward()
            (wrong_last_scaled(*micro[-1]).loss / n).backward()
            model = _tiny_model()
            accumulate_grads(model, micro)
            c.true(all(p.grad is not None for p in model.parameters()),
                   f"{n} micro-batch(es): every parameter needs a .grad (call backward on each micro-batch)")
            c.close(_grads(model), exp, f"{n} micro-batch(es) of 4", atol=1e-6, rtol=1e-4, mistakes=[
                (_grads(wrong_sum), "divide each micro-batch's loss by the number of micro-batches: "
                 "the big batch's loss is a MEAN"),
                (_grads(wrong_last), "don't zero the gradients between micro-batches: backward ADDS "
                 "into .grad, that is the accumulation"),
                (_grads(wrong_last_scaled), "don't zero the gradients between micro-batches: backward ADDS "
                 "into .grad, that is the accumulation"),
            ])
