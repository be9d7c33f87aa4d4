#!/usr/bin/env bash
# The GPU checks and the README's GPU speed rows, in one call on a GPU machine.
#
#   experiments/gpu_benchmarks.sh OUTDIR [BUDGET_SECONDS [ROW ...]]
#
# Runs, in order: the headline row (BERT-large, bf16, cuDNN attention, unrolled layers, no
# remat) and configs/bert.py:large as it is (scanned layers, remat=dots); the GPU-only tests
# (tests/test_gpu.py: cuDNN and bf16 against float32 oracles); the other candidates of the
# README's H100 estimates; the README's other GPU rows; ablations (dropout, attention path); and
# `profile`, the headline row traced with jax.profiler and summarised by
# experiments/profile_summary.py. Naming ROWs (`tests` and `profile` count as rows) runs only
# those. No new run starts once BUDGET_SECONDS (default 330) have passed, so the whole call fits
# a short lease; unrolled rows compile longer (~50 s deviceless on 2 CPU cores). Writes OUTDIR/log.txt (everything
# printed), OUTDIR/results.jsonl (one benchmark JSON line per row, tagged with the row's name
# and arguments) and, for `profile`, OUTDIR/profile_trace.json.gz and
# OUTDIR/train_step_after_optimizations.txt (the full trace and XLA dump stay in OUTDIR/profile
# and OUTDIR/hlo).
set -u
out=${1:?usage: experiments/gpu_benchmarks.sh OUTDIR [BUDGET_SECONDS]}
budget=${2:-330}
rows=" ${*:3} "
mkdir -p "$out" && touch "$out/results.jsonl"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3 JAX_PLATFORMS=${JAX_PLATFORMS:-cuda,cpu}
exec > >(tee -a "$out/log.txt") 2>&1
cd "$(dirname "$0")/.."
# The scripts run as `python3 -m experiments.<name>` from the checkout root, so this needs the
# requirements only, not `pip install -e .`.

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,driver_version --format=csv
python3 - <<'EOF'
import sys, jax, flax, optax, ml_collections, grain
print("python", sys.version.split()[0], "jax", jax.__version__, "flax", flax.__version__,
      "optax", optax.__version__, "devices", jax.devices())
EOF

bench() {  # NAME ARGS...: one benchmark.py run; its JSON line goes to results.jsonl
  local name=$1
  shift
  if ! wanted "$name"; then
    return
  elif ((SECONDS > budget)); then
    echo "== $name: not started ($SECONDS s > budget $budget s)"
    return
  fi
  echo "== $name ($SECONDS s): $*"
  timeout 300 python3 -m experiments.benchmark "$@" | tee "/tmp/bench_$name.txt"
  grep '^{' "/tmp/bench_$name.txt" | python3 -c '
import json, sys
name, args = sys.argv[1], sys.argv[2:]
for line in sys.stdin:
    print(json.dumps({"name": name, "args": args, **json.loads(line)}))
' "$name" "$@" >>"$out/results.jsonl"
}

wanted() { [[ $rows == "  " || $rows == *" $1 "* ]]; }

large=(--config=configs/bert.py:large --config.model.attention=cudnn)
large+=(--config.model.attention_dropout_rate=0)
# Unrolled layers without remat: predicted fastest on an H100 (README, Speed), if it fits.
fast=(--config.model.scan_layers=false --config.model.remat=none)
base=(--config=configs/bert.py:base --config.model.attention=cudnn)
base+=(--config.model.attention_dropout_rate=0)
bench large_cudnn_fast "${large[@]}" "${fast[@]}"
bench large_cudnn "${large[@]}"
if wanted tests; then
  echo "== tests/test_gpu.py ($SECONDS s)"
  timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
fi
# The other candidates of the README's estimates, against large_cudnn_fast and large_cudnn.
bench large_cudnn_fast_qkv3 "${large[@]}" "${fast[@]}" --config.model.fused_qkv=false
bench large_cudnn_unrolled "${large[@]}" --config.model.scan_layers=false
bench large_cudnn_noremat "${large[@]}" --config.model.remat=none
bench large_cudnn_fast_gelu_tanh "${large[@]}" "${fast[@]}" --config.model.gelu=tanh
bench base_cudnn "${base[@]}"
bench base_cudnn_fast "${base[@]}" "${fast[@]}"
bench tiny --config=configs/tiny.py --config.model.dtype=bfloat16
bench large_cudnn_fast_batch512 "${large[@]}" "${fast[@]}" --config.train.batch_size=512
bench large_cudnn_batch512 "${large[@]}" --config.train.batch_size=512
bench base_cudnn_batch512 "${base[@]}" --config.model.remat=dots --config.train.batch_size=512
bench large_xla_dropout --config=configs/bert.py:large
bench large_cudnn_nodropout "${large[@]}" "${fast[@]}" --config.model.dropout_rate=0
if wanted profile && ((SECONDS <= budget)); then
  # The optimized HLO names the fusions the trace lists (which ops each one holds).
  dump="--xla_dump_to=$out/hlo --xla_dump_hlo_as_text --xla_dump_hlo_module_re=jit_train_step"
  (
    export XLA_FLAGS="${XLA_FLAGS:-} $dump"
    bench profile "${large[@]}" "${fast[@]}" --profile_dir="$out/profile"
  )
  python3 -m experiments.profile_summary "$out/profile"
  # Flat copies of the two files worth keeping (the folders above nest deeply).
  find "$out/profile" -name perfetto_trace.json.gz -exec cp {} "$out/profile_trace.json.gz" \;
  find "$out/hlo" -name '*jit_train_step*after_optimizations.txt' \
    -exec cp {} "$out/train_step_after_optimizations.txt" \;
  # The roofline estimate of the same HLO, to check it against the trace just summarised.
  python3 -m experiments.gpu_estimate --hlo="$out/train_step_after_optimizations.txt" --top=20
fi
echo "== done ($SECONDS s)"
python3 - "$out/results.jsonl" <<'EOF'
import json, sys
print(f"{'row':<24}{'tokens/s':>12}{'step ms':>10}{'TFLOP/s':>9}{'peak':>7}{'MFU':>7}{'GiB':>7}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    print(f"{r['name']:<24}{r['tokens_per_s']:>12,.0f}{r['step_s'] * 1e3:>10.1f}"
          f"{r['achieved_tflops']:>9.1f}{r['peak_matmul_tflops']:>7.0f}"
          f"{100 * r['mfu']:>6.1f}%{r['peak_memory_gib']:>7.1f}")
EOF
