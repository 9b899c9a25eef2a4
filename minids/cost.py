"""From FLOPs to GPU-hours and dollars: the V3 report's own figures, the GPU-hours a number of
FLOPs takes at a given model-FLOPs utilisation (MFU), their rental price, the MFU a reported
figure implies, and `cost_table`, everything between a config and a bill (`python -m minids
cost`). The FLOPs and the GPUs' peak FLOP/s come from minids.flops."""

from __future__ import annotations

from .config import ModelConfig
from .flops import flops_per_token, param_count, peak_flops, training_flops
from .validation import require

# DeepSeek-V3 technical report (arXiv 2412.19437): Table 1 (training cost in H800 GPU-hours,
# "assuming the rental price of the H800 GPU is $2 per GPU hour") and section 4.2 (14.8T
# pre-training tokens, sequences of 4K tokens). These are the report's figures, typed here once.
V3_GPU_HOURS: dict[str, int] = {"pre-training": 2_664_000, "context extension": 119_000,
                                "post-training": 5_000}
V3_PRICE_PER_GPU_HOUR = 2.0
V3_TOKENS = 14.8e12
V3_PRETRAIN_SEQ_LEN = 4096


def gpu_hours(total_flops: float, mfu: float, device: str = "H800", dtype: str = "bfloat16") -> float:
    """GPU-hours to do `total_flops` at model-FLOPs utilisation `mfu` of `device`'s peak."""
    require("total_flops", total_flops, "number >= 0")
    require("mfu", mfu, "number in (0, 1]")
    return total_flops / (mfu * peak_flops(device, dtype)) / 3600.0


def dollar_cost(hours: float, price_per_gpu_hour: float = V3_PRICE_PER_GPU_HOUR) -> float:
    """Rental cost of `hours` GPU-hours at `price_per_gpu_hour` dollars."""
    require("hours", hours, "number >= 0")
    require("price_per_gpu_hour", price_per_gpu_hour, "number >= 0")
    return hours * price_per_gpu_hour


def implied_mfu(total_flops: float, hours: float, device: str = "H800", dtype: str = "bfloat16") -> float:
    """The MFU a reported GPU-hour figure implies: total_flops / (hours * 3600 * peak). Not
    clipped: a value above 1 means the figure cannot be right (or the FLOPs are overcounted)."""
    require("total_flops", total_flops, "number >= 0")
    require("hours", hours, "number > 0")
    return total_flops / (hours * 3600.0 * peak_flops(device, dtype))


def human(x: float, unit: str = "") -> str:
    """1234567 -> '1.23M' (K, M, B, T; scientific notation beyond 1000T)."""
    if abs(x) >= 1e15:
        return f"{x:.3g}{unit}"
    for size, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= size:
            return f"{x / size:.2f}{suffix}{unit}"
    return f"{x:.3g}{unit}"


class CostTable(dict):
    """The numbers of `cost_table`, as a dict; str() prints them as a two-column table."""

    def __str__(self) -> str:
        rows = [
            ("parameters, total", f"{human(self['params_total'])} (main {human(self['params_main'])}"
                                  f" + MTP {human(self['params_mtp'])})"),
            ("parameters, active", f"{human(self['params_active'])} "
                                   f"({human(self['params_active_non_embedding'])} without the embedding)"),
            ("sequence length", f"{self['seq_len']:,}"),
            ("FLOPs per token (training)", human(self["flops_per_token"])),
            ("tokens", human(self["tokens"])),
            ("training FLOPs", f"{self['total_flops']:.3e}"),
            ("device", f"{self['device']} {self['dtype']}, peak {self['peak_flops'] / 1e12:,.1f} TFLOP/s"),
            ("MFU", f"{100 * self['mfu']:.1f}%"),
            ("GPU-hours", f"{self['gpu_hours']:,.4g}"),
            ("price per GPU-hour", f"${self['price_per_gpu_hour']:,.2f}"),
            ("cost", f"${self['cost_usd']:,.2f}" if self["cost_usd"] >= 1 else f"${self['cost_usd']:.3g}"),
        ]
        w = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{w}}  {v}" for k, v in rows)


def cost_table(cfg: ModelConfig, tokens: float, device: str = "H800", mfu: float = 0.4,
               price: float = V3_PRICE_PER_GPU_HOUR, seq_len: int | None = None,
               dtype: str = "bfloat16", causal: bool = False, mtp: bool = True) -> CostTable:
    """Everything between a config and a bill: parameters, FLOPs per token, total FLOPs,
    GPU-hours at `mfu` of `device`'s peak, dollars at `price` per GPU-hour. `seq_len` defaults
    to the smaller of the model's context and V3's pre-training length (4,096)."""
    if seq_len is None:
        seq_len = min(cfg.max_position_embeddings, V3_PRETRAIN_SEQ_LEN)
    p = param_count(cfg)
    total = training_flops(cfg, tokens, seq_len, causal=causal, mtp=mtp)
    hours = gpu_hours(total, mfu, device, dtype)
    return CostTable(
        params_total=p.total, params_main=p.main, params_mtp=p.mtp, params_active=p.active,
        params_active_non_embedding=p.active_non_embedding, seq_len=seq_len,
        flops_per_token=flops_per_token(cfg, seq_len, training=True, mtp=mtp, causal=causal),
        tokens=tokens, total_flops=total, device=device, dtype=dtype,
        peak_flops=peak_flops(device, dtype), mfu=mfu, gpu_hours=hours,
        price_per_gpu_hour=price, cost_usd=dollar_cost(hours, price))
