"""`python -m minids ...` as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import minids.__main__ as cli

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
    fly = run("fly")
    assert fly.returncode == 2 and "unknown command 'fly'" in fly.stderr and "train" in fly.stderr
    r = run("bench")
    assert "baseline" in r.stdout


def test_train_flags_come_from_the_train_config_fields():
    from minids.__main__ import parse_train_args
    from minids.config import TrainConfig
    cfg, tc, resume, overwrite = parse_train_args(["--lr", "2e-3", "--grad-accum", "2", "--no-progress",
                                                   "--batch-size", "3", "--lr-decay-iters", "50", "--compile",
                                                   "--tokenizer", "bpe:512"])
    assert (tc.learning_rate, tc.grad_accum_steps, tc.progress, tc.batch_size) == (2e-3, 2, False, 3)
    assert (tc.lr_decay_iters, tc.compile, tc.tokenizer, tc.out_dir, resume, overwrite) == \
        (50, True, "bpe:512", "out", False, False)
    assert tc.max_iters == TrainConfig().max_iters and cfg.hidden_size == 128          # untouched: defaults
    _, gpu, _, _ = parse_train_args(["--preset", "gpu", "--max-iters", "7"])
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


# ------------------------------------------------------------------------ bad input: one line, never a traceback
FAST = ["--max-iters", "2", "--eval-iters", "1", "--eval-interval", "2", "--log-interval", "1", "--no-progress",
        "--threads", "1", "--batch-size", "2", "--block-size", "16", "--warmup-iters", "1"]


def error_line(argv, capsys=None):
    """Run the CLI in this process: it must stop with SystemExit('error: ...'), one line. Any other
    exception (what a user would see as a traceback) fails the test."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    msg = e.value.code
    assert isinstance(msg, str) and msg.startswith("error: ") and "\n" not in msg, msg
    return msg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    cli.main(["train", "--out-dir", str(out), *FAST])
    return out


@pytest.mark.parametrize("device, words", [("tpu", "device='tpu' must be"), ("cuda:abc", "device='cuda:abc'"),
                                           ("cuda", "device='cuda', but")])
def test_train_unknown_or_unusable_device(tmp_path, device, words):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("a GPU is there")
    assert words in error_line(["train", "--device", device, "--out-dir", str(tmp_path / "o"), *FAST])
    assert not (tmp_path / "o").exists()                          # refused before anything was written


def test_train_batch_too_large_to_allocate(tmp_path):
    msg = error_line(["train", "--out-dir", str(tmp_path / "o"), *FAST, "--batch-size", str(10**12)])
    assert "out of memory" in msg and "batch_size=1000000000000" in msg


@pytest.mark.parametrize("content, words", [("[1, 2, 3]", "must be a JSON object of ModelConfig fields, not list"),
                                            ("{hidden", "is not valid JSON"),
                                            ('{"hidden_size": -4}', "hidden_size=-4 must be"),
                                            ('{"num_hidden_layers": "2"}', "num_hidden_layers='2'")])
def test_train_bad_model_config_file(tmp_path, content, words):
    (tmp_path / "cfg.json").write_text(content)
    msg = error_line(["train", "--model-config", str(tmp_path / "cfg.json"), "--out-dir", str(tmp_path / "o"), *FAST])
    assert f"--model-config {tmp_path / 'cfg.json'}" in msg and words in msg, msg


def test_train_missing_model_config_file(tmp_path):
    assert str(tmp_path / "nope.json") in error_line(["train", "--model-config", str(tmp_path / "nope.json"), *FAST])


@pytest.mark.parametrize("out_dir, words", [("afile", "is a file, not a folder"), ("", "must name a folder")])
def test_train_bad_out_dir(tmp_path, out_dir, words):
    (tmp_path / "afile").write_text("x")
    assert words in error_line(["train", "--out-dir", str(tmp_path / out_dir) if out_dir else "", *FAST])


def test_train_into_a_used_out_dir_needs_resume_or_overwrite(trained, tmp_path):
    out = tmp_path / "run"
    cli.main(["train", "--out-dir", str(out), *FAST])
    before = (out / "ckpt.safetensors").read_bytes()
    msg = error_line(["train", "--out-dir", str(out), *FAST, "--seed", "7"])
    assert "already holds a run" in msg and "--resume" in msg and "--overwrite" in msg
    assert (out / "ckpt.safetensors").read_bytes() == before
    assert "choose one" in error_line(["train", "--out-dir", str(out), *FAST, "--resume", "--overwrite"])
    cli.main(["train", "--out-dir", str(out), *FAST, "--seed", "7", "--overwrite"])
    assert (out / "ckpt.safetensors").read_bytes() != before


def test_train_prints_its_plan_first(tmp_path, capsys):
    cli.main(["train", "--out-dir", str(tmp_path / "o"), *FAST])
    err = capsys.readouterr().err
    assert err.startswith("plan: 2 steps x 32 tokens = 64 tokens") and f"into {tmp_path / 'o'}/" in err


def test_train_that_diverges_exits_with_one_line_and_no_checkpoint(tmp_path):
    from minids.config import get_preset
    (tmp_path / "cfg.json").write_text(json.dumps(get_preset("baseline", initializer_range=1e30).to_dict()))
    msg = error_line(["train", "--model-config", str(tmp_path / "cfg.json"), "--out-dir", str(tmp_path / "o"), *FAST])
    assert "training diverged" in msg and "this run wrote no checkpoint" in msg
    assert not (tmp_path / "o" / "ckpt.safetensors").exists()


@pytest.mark.parametrize("flags, words", [
    (["--temperature", "nan"], "temperature=nan must be a number"),
    (["--temperature", "inf"], "temperature=inf must be a number"),
    (["--temperature", "-1"], "temperature=-1.0 must be a number >= 0"),
    (["--tokens", "-5"], "tokens=-5 must be an integer in [0, 100000]"),
    (["--tokens", str(10**12)], "tokens=1000000000000 must be an integer in [0, 100000]"),
    (["--top-k", "0"], "top_k=0"),
    (["--top-p", "nan"], "top_p=nan"),
])
def test_sample_bad_flags(trained, flags, words):
    assert words in error_line(["sample", "--out-dir", str(trained), *flags])


def test_sample_empty_out_dir():
    assert "--out-dir must name" in error_line(["sample", "--out-dir", ""])


def test_sample_checkpoint_without_a_tokenizer(trained, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    src = trained / "ckpt.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = json.loads(f.metadata()["minids"])
    meta.pop("tokenizer")
    (tmp_path / "r").mkdir()
    save_file(load_file(str(src)), str(tmp_path / "r" / "ckpt.safetensors"), metadata={"minids": json.dumps(meta)})
    msg = error_line(["sample", "--out-dir", str(tmp_path / "r")])
    assert str(tmp_path / "r" / "ckpt.safetensors") in msg and "'tokenizer' is missing" in msg


def test_error_messages_name_only_commands_that_exist():
    """Every `python -m minids NAME` the package prints is a command it has."""
    import re
    named = {m for p in (ROOT / "minids").rglob("*.py") for m in re.findall(r"python -m minids (\w+)", p.read_text())}
    assert named and named <= set(cli.COMMANDS), named - set(cli.COMMANDS)


def test_train_with_nothing_to_do_says_so(trained, tmp_path, capsys):
    """max_iters=0, or a resume of a run already past max_iters, claims no checkpoint and no speed."""
    cli.main(["train", "--out-dir", str(tmp_path / "z"), *FAST, "--max-iters", "0"])
    assert capsys.readouterr().out.strip() == "nothing to train: max_iters=0; no checkpoint written"
    assert not (tmp_path / "z" / "ckpt.safetensors").exists()
    cli.main(["train", "--out-dir", str(trained), *FAST, "--max-iters", "1", "--resume"])
    assert capsys.readouterr().out.strip() == (f"nothing to train: the checkpoint in {trained}/ is at step 2, "
                                               "max_iters=1; no checkpoint written")
