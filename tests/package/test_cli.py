"""`python -m minids ...` as a user runs it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args, cwd=ROOT):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "minids", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_train_resume_and_sample(tmp_path):
    out = tmp_path / "run"
    r = run("train", "--preset", "baseline", "--out-dir", str(out), "--max-iters", "30", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert "val loss" in r.stdout and (out / "ckpt.safetensors").exists() and (out / "metrics.jsonl").exists()
    r = run("train", "--preset", "baseline", "--out-dir", str(out), "--max-iters", "40", "--resume")
    assert r.returncode == 0, r.stderr
    r = run("sample", "--out-dir", str(out), "--prompt", "ROMEO:", "--tokens", "50")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:") and len(r.stdout) >= 50


def test_sample_rejects_unknown_characters(tmp_path):
    out = tmp_path / "run"
    assert run("train", "--out-dir", str(out), "--max-iters", "2").returncode == 0
    r = run("sample", "--out-dir", str(out), "--prompt", "日本")
    assert r.returncode != 0 and "not in the vocabulary" in r.stderr and "Traceback" not in r.stderr


def test_cost_reproduces_the_v3_order_of_magnitude():
    r = run("cost", "--mfu", "0.4")
    assert r.returncode == 0 and "682.64B" in r.stdout and "H800" in r.stdout
    bad = run("cost", "--mfu", "0")
    assert bad.returncode != 0 and "mfu" in bad.stderr


def test_usage_and_unknown_command():
    assert run().returncode == 0
    assert run("fly").returncode == 2
    r = run("bench")
    assert "baseline" in r.stdout


def test_train_flags_come_from_the_train_config_fields():
    from minids.__main__ import parse_train_args
    from minids.config import TrainConfig
    cfg, tc, resume = parse_train_args(["--lr", "2e-3", "--grad-accum", "2", "--no-progress", "--batch-size", "3",
                                        "--lr-decay-iters", "50", "--compile", "--tokenizer", "bpe:512"])
    assert (tc.learning_rate, tc.grad_accum_steps, tc.progress, tc.batch_size) == (2e-3, 2, False, 3)
    assert (tc.lr_decay_iters, tc.compile, tc.tokenizer, tc.out_dir, resume) == (50, True, "bpe:512", "out", False)
    assert tc.max_iters == TrainConfig().max_iters and cfg.hidden_size == 128          # untouched: defaults
    _, gpu, _ = parse_train_args(["--preset", "gpu", "--max-iters", "7"])
    assert (gpu.max_iters, gpu.block_size, gpu.dtype) == (7, 1024, "bfloat16")         # the GPU run, one change
    import dataclasses
    r = run("train", "--help")
    for f in dataclasses.fields(TrainConfig):                                          # every field has a flag
        assert f"--{f.name.replace('_', '-')}" in r.stdout, f.name
    assert "sequences per micro-batch" in r.stdout                                    # help from the comment


def test_mutation_command_without_its_module_is_a_clear_error(monkeypatch):
    import importlib

    import minids.__main__ as cli

    def missing(name, *a):
        raise ModuleNotFoundError(f"No module named {name!r}", name=name)
    monkeypatch.setattr(importlib, "import_module", missing)
    with pytest.raises(SystemExit, match="mutation.*minids/checks/mutate.py"):
        cli.main(["mutation"])
