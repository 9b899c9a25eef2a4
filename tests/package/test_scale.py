"""Chapter 08: training at scale. torchrun runs (2 processes, gloo) against one process, FSDP2,
exact resume across ranks, torch.compile's module used for training and eval, the GPU presets."""

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import minids.checkpoint as C
import minids.train as T
from minids import distributed
from minids.config import TrainConfig, get_preset, gpu_train_config
from minids.data import get_batch, prepare_dataset
from minids.flops import flops_per_token, meta_param_count, param_count
from minids.presets import TOKENS_PER_PARAM

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")


def tiny_v3(**kw):
    """MLA + MoE (bias updates on) + MTP, small enough for a few CPU seconds."""
    return get_preset("mini-v3", hidden_size=32, intermediate_size=64, moe_intermediate_size=16,
                      num_attention_heads=2, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8,
                      v_head_dim=16, max_position_embeddings=32, bias_update_speed=0.01, **kw)


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A token folder (BPE on a local text file) and a model config file."""
    d = tmp_path_factory.mktemp("scale")
    (d / "corpus.txt").write_text((ROOT / "minids" / "train.py").read_text() * 2)
    prepare_dataset(str(d / "corpus.txt"), d / "tok", vocab_size=300, use_datasets=False)
    (d / "cfg.json").write_text(json.dumps(tiny_v3().to_dict()))
    (d / "cfg_dropout.json").write_text(json.dumps(tiny_v3(dropout=0.1).to_dict()))
    return d


def run_cli(job, out, nproc=1, cfg="cfg.json", extra=()):
    args = ["-m", "minids", "train", "--model-config", str(job / cfg), "--dataset", str(job / "tok"),
            "--block-size", "32", "--grad-accum", "2", "--warmup-iters", "2", "--eval-interval", "4",
            "--eval-iters", "2", "--log-interval", "1", "--threads", "1", "--no-progress",
            "--lr", "3e-3", "--out-dir", str(job / out), *extra]
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [TORCHRUN, "--standalone", f"--nproc_per_node={nproc}", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return [json.loads(s) for s in (job / out / "metrics.jsonl").read_text().splitlines()]


def losses(records, key="main_loss"):
    return [(r["iter"], r[key]) for r in records if key in r]


def ckpt_weights(path):
    tensors, _ = C.read_checkpoint(path / C.CHECKPOINT)
    return {k: v for k, v in tensors.items() if k.startswith("model.")}


# ------------------------------------------------------------------------ torchrun, 2 processes
@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_two_process_gloo_runs_equal_one_process_with_the_same_global_batch(job):
    """1 process, batch 8 vs 2 ranks x batch 4 (DDP, then FSDP2): every rank reads its slice of the
    same global batch, gradients are averaged, router-bias loads all-reduced, evals averaged."""
    one = run_cli(job, "one", 1, extra=["--batch-size", "8", "--max-iters", "8"])
    ddp = run_cli(job, "ddp", 2, extra=["--batch-size", "4", "--max-iters", "8"])
    fsdp = run_cli(job, "fsdp", 2, extra=["--batch-size", "4", "--max-iters", "8", "--fsdp"])
    for key in ("loss", "main_loss", "mtp_loss", "val", "train"):
        ref = losses(one, key)
        assert len(ref) >= 2, key
        for other in (ddp, fsdp):
            got = losses(other, key)
            assert [i for i, _ in got] == [i for i, _ in ref]
            np.testing.assert_allclose([v for _, v in got], [v for _, v in ref], rtol=1e-5, err_msg=key)
    assert ref[-1][1] < ref[0][1] - 0.1                 # it learned something: the slices matter
    w1 = ckpt_weights(job / "one")
    for out in ("ddp", "fsdp"):                          # FSDP's checkpoint holds whole tensors
        w = ckpt_weights(job / out)
        assert w.keys() == w1.keys()
        for k in w1:
            torch.testing.assert_close(w[k], w1[k], atol=2e-5, rtol=1e-4, msg=k)
    _, meta = C.read_checkpoint(job / "fsdp" / C.CHECKPOINT)
    assert meta["world_size"] == 2 and meta["iter"] == 8


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None, reason="torchrun not found")
def test_two_process_fsdp_resume_is_exact(job):
    """8 steps in one go vs 4 steps, stop, resume to 8: identical losses, with dropout (each rank's
    RNG state is saved and restored) and FSDP2 (whole tensors saved, re-sharded on load; the
    optimizer state too). DDP takes the same path without the re-sharding."""
    mode = "fsdp"
    flags = ["--batch-size", "4", "--lr-decay-iters", "8", "--fsdp"]
    full = run_cli(job, f"full-{mode}", 2, "cfg_dropout.json", [*flags, "--max-iters", "8"])
    run_cli(job, f"part-{mode}", 2, "cfg_dropout.json", [*flags, "--max-iters", "4"])
    resumed = run_cli(job, f"part-{mode}", 2, "cfg_dropout.json", [*flags, "--max-iters", "8", "--resume"])
    after = [(i, v) for i, v in losses(full) if i >= 4]
    assert [(i, v) for i, v in losses(resumed) if i >= 4] == after and len(after) == 4
    a, b = ckpt_weights(job / f"full-{mode}"), ckpt_weights(job / f"part-{mode}")
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------ two "nodes" (SLURM + c10d)
FAKE_SRUN = """#!/bin/bash
# stands in for SLURM's srun: its options dropped, the command started once per node, all on localhost
while [[ "$1" == --* ]]; do shift; done
pids=()
for n in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$n SLURM_PROCID=$n "$@" & pids+=($!); done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
exit $rc
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(TORCHRUN is None or shutil.which("bash") is None, reason="torchrun or bash not found")
def test_two_nodes_through_the_slurm_script_equal_one_process(job, tmp_path):
    """scripts/slurm_train.sh under a stand-in SLURM (srun starts the script's torchrun once per
    "node", both on localhost): two torchrun agents meet through the c10d rendezvous (--nnodes 2,
    --rdzv-backend c10d, --rdzv-endpoint localhost:PORT), each starts one gloo process, and the
    2 x batch 4 run logs the losses of the 1-process batch-8 run (every rank reads its slice)."""
    flags = ["--block-size", "32", "--grad-accum", "2", "--warmup-iters", "2", "--eval-interval", "4",
             "--eval-iters", "2", "--log-interval", "1", "--threads", "1", "--no-progress", "--lr", "3e-3"]
    one = run_cli(job, "one-node-ref", 1, extra=["--batch-size", "8", "--max-iters", "4"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "scontrol").write_text("#!/bin/bash\nprintf 'localhost\\nlocalhost\\n'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           "PATH": f"{bin_dir}:{Path(TORCHRUN).parent}:{os.environ.get('PATH', '')}",
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[0-1]", "SLURM_JOB_ID": "4242", "GPUS_PER_NODE": "1",
           "PORT": str(_free_port()), "ITERS": "4", "DATA": str(job / "tok"), "OUT_DIR": str(tmp_path / "two")}
    p = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_train.sh"), "--model-config", str(job / "cfg.json"),
                        "--batch-size", "4", *flags], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "2 nodes x 1 GPUs, rendezvous localhost:" in p.stdout
    two = [json.loads(s) for s in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss", "main_loss", "val"):
        ref, got = losses(one, key), losses(two, key)
        assert len(ref) >= 1 and [i for i, _ in got] == [i for i, _ in ref], key
        np.testing.assert_allclose([v for _, v in got], [v for _, v in ref], rtol=1e-5, err_msg=key)
    _, meta = C.read_checkpoint(tmp_path / "two" / C.CHECKPOINT)
    assert meta["world_size"] == 2 and meta["iter"] == 4


def test_slurm_script_steps_keep_the_suggested_tokens():
    """The script's default steps: the one-GPU run's 15,153 steps divided by the GPUs, rounded up."""
    src = (ROOT / "scripts" / "slurm_train.sh").read_text()
    assert f"RUN_STEPS=${{RUN_STEPS:-{gpu_train_config().max_iters}}}" in src
    assert "--rdzv-backend=c10d" in src and "--nnodes=" in src and "--rdzv-endpoint=" in src
    assert "--max-iters 948" in src and math.ceil(gpu_train_config().max_iters / 16) == 948


# ------------------------------------------------------------------------ in one process
def test_rank_slices_make_up_the_global_batch():
    data = np.arange(5000)
    whole = get_batch(data, 8, 16, torch.Generator().manual_seed(3))
    parts = [get_batch(data, 2, 16, torch.Generator().manual_seed(3), rank=r, world_size=4) for r in range(4)]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole[0])
    assert torch.equal(torch.cat([p[1] for p in parts]), whole[1])


def test_no_torchrun_environment_means_one_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    world = distributed.setup("cpu")
    assert (world.rank, world.size, world.is_main, world.owns_group) == (0, 1, True, False)


def _synthetic():
    from minids.data import CharTokenizer, TokenDataset
    rng = np.random.default_rng(0)
    ids = (np.arange(4000) + (rng.random(4000) < 0.1) * rng.integers(0, 20, 4000)) % 20
    return TokenDataset(ids.astype(np.uint16), CharTokenizer("abcdefghijklmnopqrst"))


def _tc(**kw):
    return TrainConfig(**{**dict(batch_size=4, block_size=16, max_iters=4, warmup_iters=1, eval_interval=2,
                                 eval_iters=2, log_interval=1, progress=False), **kw})


def test_fsdp_needs_torchrun():
    with pytest.raises(ValueError, match="torchrun"):
        T.train(tiny_v3(), _tc(fsdp=True), dataset=_synthetic())


def test_bf16_request_on_cpu_changes_nothing():
    """Autocast is for CUDA only: on CPU a bfloat16 run is the float32 run, bit for bit."""
    a = T.train(tiny_v3(), _tc(dtype="bfloat16"), dataset=_synthetic())
    b = T.train(tiny_v3(), _tc(dtype="float32"), dataset=_synthetic())
    assert [r.get("loss") for r in a.history] == [r.get("loss") for r in b.history]


def test_compiled_module_trains_and_evaluates_and_checkpoints_are_plain(tmp_path, monkeypatch):
    """With compile=True the compiled module runs every training and eval forward; the checkpoint
    holds the uncompiled names (no `_orig_mod.`) and loads into a plain model. The eager backend
    keeps this a CPU test of the wiring (inductor's speed is the GPU script's business)."""
    calls = []
    real = torch.compile

    def eager_compile(m, **kw):
        cm = real(m, backend="eager")
        calls.append(cm)
        return cm

    monkeypatch.setattr(T.torch, "compile", eager_compile)
    counted = []
    res = T.train(get_preset("baseline", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             max_position_embeddings=16), _tc(compile=True, out_dir=str(tmp_path)),
                  dataset=_synthetic(), callback=lambda it, rec: counted.append(it))
    monkeypatch.setattr(T.torch, "compile", real)
    assert len(calls) == 1 and counted == [0, 1, 2, 3] and len(res.evals) == 2
    tensors, _ = C.read_checkpoint(tmp_path / C.CHECKPOINT)
    assert not any("_orig_mod" in k for k in tensors)
    model, _, _ = C.load_model(tmp_path / C.CHECKPOINT)
    for k, v in res.model.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    plain = T.train(get_preset("baseline", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                               max_position_embeddings=16), _tc(), dataset=_synthetic())
    np.testing.assert_allclose([e["val"] for e in res.evals], [e["val"] for e in plain.evals], rtol=1e-5)


# ------------------------------------------------------------------------ GPU presets
def test_gpu_presets_param_counts_on_the_meta_device():
    gpu, dense = get_preset("gpu"), get_preset("gpu-dense")
    p, q = param_count(gpu), param_count(dense)
    assert meta_param_count(gpu) == p.total == 279_485_056          # 256.7M main + 22.7M MTP
    assert p.mtp == 22_737_280 and p.active == 75_081_984           # 27% of the total is active
    assert meta_param_count(dense) == q.total == 99_306_240
    assert 100e6 <= p.total <= 300e6 and p.active < 0.3 * p.total
    # the dense baseline is sized to the same training FLOPs per token (1,024-token context)
    f_gpu, f_dense = flops_per_token(gpu, 1024), flops_per_token(dense, 1024)
    assert abs(f_dense / f_gpu - 1) < 0.01, (f_gpu, f_dense)
    assert gpu.is_mla and gpu.is_moe and gpu.num_nextn_predict_layers == 1
    assert not (dense.is_mla or dense.is_moe or dense.num_nextn_predict_layers)


def test_gpu_train_config():
    tc = gpu_train_config("gpu")
    assert (tc.device, tc.dtype, tc.compile, tc.block_size) == ("cuda", "bfloat16", True, 1024)
    assert tc.batch_size * tc.block_size * tc.grad_accum_steps == 131_072
    # sized by tokens per parameter (Chinchilla's ~20), not by the hour: 20 x gpu-dense's parameters
    dense = param_count(get_preset("gpu-dense")).total
    assert tc.max_iters == math.ceil(TOKENS_PER_PARAM * dense / 131_072) == 15_153
    assert gpu_train_config("gpu-dense").max_iters == tc.max_iters
    assert tc.mtp_loss_weight_final == 0.1 and gpu_train_config("gpu-dense").mtp_loss_weight_final is None
    assert gpu_train_config("gpu", max_iters=10).max_iters == 10
    with pytest.raises(ValueError, match="name"):
        gpu_train_config("baseline")
