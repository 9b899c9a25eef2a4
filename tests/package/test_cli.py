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
