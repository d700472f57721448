#!/usr/bin/env bash
# One-shot GPU validation (docs/benchmarks.md "GPU"): on a machine with a CUDA device,
#   1. the CUDA variants of the tests (pytest -m cuda),
#   2. the GPU rows of the benchmarks (scripts/gpu_benchmark.py: batched assigners, peak
#      memory, 1,000+ GTs per image),
#   3. a short mixed-precision training of a real-size model (ResNet-50 Dynamic ATSS at
#      800 px on the built-in dataset, a few dozen iterations, fp16 with its scaler) with its
#      images/s, and the same in float32 for the ratio,
# and writes everything to one results file. On a machine without CUDA it says so, skips
# the GPU parts and exits 0 (the test suite checks that).
#
#   bash scripts/gpu_check.sh [RESULTS_DIR]        # default: gpu_check_results/
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check_results}"
mkdir -p "$out"
results="$out/gpu_check.md"
python="${PYTHON:-python}"
status=0

{
  echo "# GPU check, $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  "$python" -c "import platform, torch; print(f'{platform.node()}: torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}' + (f', {torch.cuda.get_device_name(0)}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB' if torch.cuda.is_available() else ''))"
} > "$results"

if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device on this machine: the GPU parts are skipped" | tee -a "$results"
  exit 0
fi

section() { echo; echo "## $1"; echo; } >> "$results"

section "1. CUDA test variants (pytest -m cuda)"
start=$SECONDS
parallel=()  # pytest-xdist, where installed: the CUDA variants take over 3 minutes serially
"$python" -c "import xdist" 2> /dev/null && parallel=(-n 8)
if HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}" timeout 200 "$python" -m pytest -q -m cuda "${parallel[@]}" -rfE \
    -p no:cacheprovider --benchmark-disable tests > "$out/pytest_cuda.log" 2>&1; then
  echo "passed: $(tail -n 1 "$out/pytest_cuda.log") ($((SECONDS - start)) s)" >> "$results"
else
  status=1
  echo "FAILED ($((SECONDS - start)) s); the log is $out/pytest_cuda.log:" >> "$results"
  tail -n 30 "$out/pytest_cuda.log" | sed 's/^/    /' >> "$results"
fi

section "2. Assigners on the GPU (scripts/gpu_benchmark.py)"
if ! timeout 120 "$python" scripts/gpu_benchmark.py --repeats 20 --markdown "$out/gpu_benchmark.md" > "$out/gpu_benchmark.log" 2>&1; then
  status=1
  echo "FAILED; the log is $out/gpu_benchmark.log" >> "$results"
fi
cat "$out/gpu_benchmark.md" >> "$results" 2>/dev/null

section "3. Training steps of ResNet-50 Dynamic ATSS at 800 px (built-in dataset, random weights)"
train_args=(dyn_atss_qfl_iou_r50_1x data.dataset=digits backbone.style=pytorch "data.root=$out/data"
  data.digits_num_train=240 data.digits_num_val=16 data.digits_image_size=800 data.min_size=800 data.max_size=800
  data.test_min_size=800 data.num_workers=4 solver.batch_size=8 solver.max_iters=60 solver.steps=50
  solver.warmup_iters=10 device=cuda log_every=1 "output_dir=$out/runs")
for amp in fp16 off; do
  run_dir="$out/runs/amp_$amp"
  if timeout 130 "$python" -m detector.train "${train_args[@]}" "solver.amp=$amp" --run-dir "$run_dir" --no-eval --no-progress \
      > "$out/train_$amp.log" 2>&1; then
    "$python" - "$run_dir/log.jsonl" "$amp" >> "$results" <<'EOF'
import json, statistics, sys
records = [json.loads(line) for line in open(sys.argv[1])]
steady = records[10:]  # after warm-up and cuDNN autotuning
rate = statistics.median(r["images_per_s"] for r in steady)
skipped = sum(r["skipped"] for r in records)
print(f"- solver.amp={sys.argv[2]}: {len(records)} iterations, median {rate:.1f} images/s after iteration 10, "
      f"final loss {records[-1]['loss']:.3f}, {skipped} skipped steps")
EOF
  else
    status=1
    echo "- solver.amp=$amp: FAILED; the log is $out/train_$amp.log" >> "$results"
    tail -n 20 "$out/train_$amp.log" | sed 's/^/    /' >> "$results"
  fi
done

echo >> "$results"
echo "total: $SECONDS s" >> "$results"
cat "$results"
exit $status
