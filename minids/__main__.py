"""Command line: python -m minids train | sample | prepare | bench | cost | grade | exercises | mutation."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import re
import sys
import typing

# Short names kept for TrainConfig fields whose flags people already type.
_FLAG_ALIASES = {"learning_rate": "--lr", "num_threads": "--threads", "grad_accum_steps": "--grad-accum"}


def field_comments(cls) -> dict[str, str]:
    """A dataclass's fields -> the comment at the end of each one's line in the class body."""
    src = inspect.getsource(cls)
    return {m[1]: m[2].strip() for m in re.finditer(r"^ {4}(\w+): [^#\n]*#\s*(.*)$", src, re.M)}


def add_dataclass_flags(ap, cls, rules: dict[str, str], defaults: dict | None = None) -> None:
    """One flag per field of `cls` (--batch-size for batch_size), typed from its annotation, the
    help text from its comment and rule. A flag's value is None unless given (or in `defaults`):
    only what the command line says changes the config it starts from."""
    hints, comments, defaults = typing.get_type_hints(cls), field_comments(cls), defaults or {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        kind = next((t for t in typing.get_args(kind) if t is not type(None)), kind)   # X | None -> X
        flags = [f"--{f.name.replace('_', '-')}"] + ([_FLAG_ALIASES[f.name]] if f.name in _FLAG_ALIASES else [])
        rule = f"; {rules[f.name]}" if f.name in rules else ""
        default = defaults.get(f.name)
        help_ = f"{comments.get(f.name, '')} (default {defaults.get(f.name, f.default)}{rule})".replace("%", "%%")
        if kind is bool:
            ap.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_)
        else:
            ap.add_argument(*flags, dest=f.name, type=kind, default=default, help=help_)


def parse_train_args(argv):
    """`python -m minids train ...` -> (model config, TrainConfig, resume?, overwrite?)."""
    from .config import PRESETS, TRAIN_RULES, TrainConfig, get_preset, gpu_train_config

    ap = argparse.ArgumentParser(prog="python -m minids train", description="Many GPUs: the same "
                                 "command under torchrun: torchrun --nproc_per_node=8 -m minids train ...")
    ap.add_argument("--preset", default="baseline", choices=sorted(PRESETS))
    ap.add_argument("--model-config", default=None,
                    help="a config.json (ModelConfig fields) instead of --preset")
    ap.add_argument("--resume", action="store_true", help="continue exactly from out-dir's checkpoint")
    ap.add_argument("--overwrite", action="store_true",
                    help="replace the run already in out-dir (without it, or --resume, such a folder is refused)")
    add_dataclass_flags(ap.add_argument_group("training (TrainConfig fields)"), TrainConfig, TRAIN_RULES,
                        defaults={"out_dir": "out"})
    args = vars(ap.parse_args(argv))
    preset, model_config, resume = args.pop("preset"), args.pop("model_config"), args.pop("resume")
    overwrite = args.pop("overwrite")
    model_cfg = _model_config_file(model_config) if model_config else get_preset(preset)
    base = gpu_train_config(preset) if preset.startswith("gpu") and not model_config else TrainConfig()
    return model_cfg, base.replace(**{k: v for k, v in args.items() if v is not None}), resume, overwrite


def _model_config_file(path: str):
    """--model-config: a JSON object of ModelConfig fields; errors name the file."""
    import json

    from .checkpoint import model_config_from

    with open(path, encoding="utf-8") as f:
        try:
            d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"--model-config {path} is not valid JSON ({e})") from None
    return model_config_from(d, f"--model-config {path}")


def _train(argv):
    import os

    from .train import TrainingDiverged, plan_line, train

    model_cfg, tc, resume, overwrite = parse_train_args(argv)
    if int(os.environ.get("RANK", 0)) == 0:
        print(plan_line(model_cfg, tc, int(os.environ.get("WORLD_SIZE", 1))), file=sys.stderr, flush=True)
    try:
        res = train(model_cfg, tc, resume=resume, overwrite=overwrite)
    except TrainingDiverged as e:
        raise SystemExit(f"error: {e}") from None
    if int(os.environ.get("RANK", 0)) != 0:
        return
    if tc.max_iters <= res.start_iter:
        at = f"the checkpoint in {tc.out_dir}/ is at step {res.start_iter}, " if resume else ""
        print(f"nothing to train: {at}max_iters={tc.max_iters}; no checkpoint written")
    else:
        print(f"done: {tc.max_iters} iters, val loss {res.final_val_loss:.4f}, "
              f"{res.tokens_per_s:,.0f} tokens/s; checkpoint in {tc.out_dir}/")


MAX_SAMPLE_TOKENS = 100_000     # minutes on a CPU already, printed only at the end


def _sample(argv):
    import torch

    from .checkpoint import CHECKPOINT, load_model
    from .generate import generate
    from .validation import require

    ap = argparse.ArgumentParser(prog="python -m minids sample")
    ap.add_argument("--out-dir", default="out")
    ap.add_argument("--prompt", default="\n")
    ap.add_argument("--tokens", type=int, default=500, help=f"new tokens, 0 to {MAX_SAMPLE_TOKENS:,}")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--top-k", type=int, default=None)
    ap.add_argument("--top-p", type=float, default=None)
    ap.add_argument("--seed", type=int, default=1337)
    args = ap.parse_args(argv)
    if not args.out_dir.strip():
        raise ValueError("--out-dir must name the folder of a training run")
    require("tokens", args.tokens, f"int in [0, {MAX_SAMPLE_TOKENS}]; minids.generate.generate samples more")
    require("temperature", args.temperature, "number >= 0; 0 is greedy")
    model, tok, _ = load_model(f"{args.out_dir}/{CHECKPOINT}")
    idx = torch.tensor([tok.encode(args.prompt)])
    g = torch.Generator().manual_seed(args.seed)
    out = generate(model, idx, args.tokens, args.temperature, args.top_k, args.top_p, generator=g)
    print(tok.decode(out[0]))


def _bench(argv):
    from .benchmarks import available, run

    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: python -m minids bench NAME [options]; NAME in: {', '.join(available())}")
        return
    run(argv[0], argv[1:])


def _grade(argv):
    from .checks.grade import grade

    ap = argparse.ArgumentParser(prog="python -m minids grade",
                                 description="Run learners' notebooks and score their checks.")
    ap.add_argument("paths", nargs="+", help="notebooks, or folders of them (a learner per sub-folder)")
    ap.add_argument("--csv", default=None, help="write one row per notebook here")
    ap.add_argument("--timeout", type=int, default=120, help="seconds per cell")
    args = ap.parse_args(argv)
    grade(args.paths, args.timeout, args.csv)


def _exercises(argv):
    from .checks.build import build

    ap = argparse.ArgumentParser(prog="python -m minids exercises")
    ap.add_argument("--src", default="solutions")
    ap.add_argument("--dst", default="exercises")
    args = ap.parse_args(argv)
    for p in build(args.src, args.dst):
        print(f"wrote {p}")


def _cost(argv):
    from .config import PRESETS, get_preset
    from .cost import cost_table
    from .flops import PEAK_FLOPS

    ap = argparse.ArgumentParser(prog="python -m minids cost",
                                 description="FLOPs, GPU-hours and dollars of training a preset on N tokens.")
    ap.add_argument("--preset", default="deepseek-v3", choices=sorted(PRESETS))
    ap.add_argument("--tokens", type=float, default=14.8e12, help="training tokens (V3: 14.8T)")
    ap.add_argument("--device", default="H800", help=f"one of {', '.join(sorted(PEAK_FLOPS))}")
    ap.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilisation in (0, 1]")
    ap.add_argument("--price", type=float, default=2.0, help="dollars per GPU-hour")
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args(argv)
    print(cost_table(get_preset(args.preset), args.tokens, args.device, args.mfu, args.price, dtype=args.dtype))


def _mutation(argv):
    try:
        mutate = importlib.import_module("minids.checks.mutate")
    except ModuleNotFoundError as e:
        if e.name != "minids.checks.mutate":
            raise
        raise SystemExit("error: `mutation` needs minids/checks/mutate.py, which this copy of minids lacks") from None
    mutate.main(argv)


def _prepare(argv):
    from .data.prepare import main as prepare_main

    prepare_main(argv)


# name -> function(argv); a command added later is one more entry
COMMANDS = {"train": _train, "sample": _sample, "bench": _bench, "cost": _cost, "grade": _grade,
            "exercises": _exercises, "mutation": _mutation, "prepare": _prepare}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        usage = f"usage: python -m minids {{{'|'.join(COMMANDS)}}} ..."
        if not argv or argv[0] in ("-h", "--help"):
            print(usage)
            raise SystemExit(0)
        print(f"error: unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)}\n{usage}", file=sys.stderr)
        raise SystemExit(2)
    try:
        COMMANDS[argv[0]](argv[1:])
    except (ValueError, OSError, MemoryError) as e:    # bad input, a file, memory: one clear line, no traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
