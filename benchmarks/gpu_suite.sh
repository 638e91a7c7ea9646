#!/usr/bin/env bash
# GPU check (issue 31): the table users want most, for the seed's 81 M-parameter UNet at 128 px on one GPU, within
# a time budget: GPU_SUITE_BUDGET seconds, default 330 (5.5 min: the whole command fits in 6 minutes with
# Python's start-up). Every step runs under `timeout` with what is left of the budget; a step that would not
# fit is skipped, one that runs out is cut, and the table (benchmarks/suite_table.py) shows whatever finished
# and says which step ran out. Steps, cheapest first; the table shows them in the order of its rows:
#   1. benchmarks/training_speed.py --no-torch_compile   fp32 eager vs bf16: images/s, MFU, peak memory (batch 64)
#   2. benchmarks/model_cost.py      FLOPs per image; peak memory per batch size (16-128), fp32 and bf16
#   3. benchmarks/sampling_speed.py  the teacher's default sampler at batch 64 vs the seed's loop
#   4. the same as a distilled 2-evaluation student samples (2 steps, guidance 1; speed only, same UNet)
#   5. benchmarks/dataset_generation.py --no-memory   generate_dataset.py's images/s on the same model
#   6. training_speed.py --torch_compile   bf16 + torch.compile, its warm-up reported apart (written as soon as it
#      is done, so a cut step still tells it); only when COMPILE_NEEDS seconds (170) are left: an H200 took 140 s
#      to compile alone (docs/measurements.md, GPU suite)
#
#   bash benchmarks/gpu_suite.sh            # on a CUDA machine; logs and JSON in $GPU_SUITE_DIR (default: a temp dir)
#   bash benchmarks/gpu_suite.sh --tiny     # CPU-sized dry run of the same steps (tests/test_gpu_suite.py)
set -uo pipefail
cd "$(dirname "$0")/.."
tiny=0
case "${1:-}" in
  --tiny) tiny=1 ;;
  "") ;;
  *) echo "gpu_suite.sh: error: unknown argument ${1} (only --tiny)" >&2; exit 2 ;;
esac
start=$SECONDS  # the budget counts from here: the CUDA check's torch import included
budget="${GPU_SUITE_BUDGET:-330}"
[[ $budget =~ ^[0-9]+$ ]] || { echo "gpu_suite.sh: error: GPU_SUITE_BUDGET must be whole seconds, got $budget" >&2; exit 2; }
out="${GPU_SUITE_DIR:-$(mktemp -d -t fairface-gpu-suite-XXXXXX)}"
mkdir -p "$out"
rm -f "$out"/*.json "$out"/*.log  # a reused folder: no earlier run's numbers in this table (the trained model stays)
: > "$out/status.txt"
if [[ $tiny == 1 ]]; then
  device=cpu
  cost=(--tiny --resolution 32 --batch_size 2 4 --precision fp32 bf16)
  speed=(--tiny --warmup_steps 1 --steps 1 --rounds 1 --threads 0)
  sampling=(--train_steps 4 --train_batch_size 8 --resolution 16 --num_images 4 --batch_size 4
            --seed_loop_images 1 --seed_loop_steps 4 --threads 0)
  generation=(--images 4 --rounds 1 --batch_size 4 --num_inference_steps 2 --threads 0)
else
  device=cuda
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh: error: no CUDA device (use --tiny for a CPU dry run)')" || exit 1
  cost=(--batch_size 16 32 64 128 --precision fp32 bf16)
  speed=(--no-tiny --batch_size 64 --warmup_steps 2 --steps 10 --rounds 2)
  sampling=(--batch_size 64 --num_images 128 --seed_loop_images 2 --seed_loop_steps 200)
  generation=(--images 128 --rounds 1 --batch_size 64)
  compile_needs="${COMPILE_NEEDS:-170}"
fi
echo "[gpu_suite] results in $out; time budget ${budget} s"

# Ctrl-C or an outer timeout: stop the running step (its whole process group) and still print the table.
running="" running_name=""
finish() {
  trap - INT TERM
  [[ -n $running ]] && kill -TERM -- "-$running" 2>/dev/null
  echo "${running_name:-suite}|stopped by a signal" >> "$out/status.txt"
  python benchmarks/suite_table.py "$out"
  exit 130
}
trap finish INT TERM

# step NAME MIN_SECONDS LOG COMMAND...: run COMMAND under what is left of the budget, log to LOG, note the outcome.
step() {
  local name=$1 needs=$2 log=$3; shift 3
  local left=$((budget - (SECONDS - start)))
  if (( left < needs || left <= 0 )); then
    local why="the ${budget} s budget was spent"
    (( needs > 0 )) && why="${left} s left of the ${budget} s budget, it needs about ${needs} s"
    echo "$name|skipped: $why" >> "$out/status.txt"
    echo "[gpu_suite] $name skipped (${left} s left)"
    return
  fi
  # timeout runs the step in a process group of its own (killed whole, children included); 5 s kept for the table
  local limit=$((left > 10 ? left - 5 : left)) began=$SECONDS
  timeout --kill-after=5 "$limit" "$@" > "$log" 2>&1 &
  running=$! running_name=$name
  wait "$running"
  local code=$?
  running="" running_name=""
  if (( code == 124 || (code == 137 && SECONDS - began >= limit) )); then
    echo "$name|ran out of the ${budget} s budget" >> "$out/status.txt"
  elif (( code == 137 )); then
    echo "$name|killed (out of memory?): $(tail -1 "$log")" >> "$out/status.txt"
  elif (( code != 0 )); then
    echo "$name|failed (exit $code): $(tail -1 "$log")" >> "$out/status.txt"
    tail -20 "$log"
  else
    echo "$name|done" >> "$out/status.txt"
  fi
  echo "[gpu_suite] $name: $(tail -1 "$out/status.txt" | cut -d'|' -f2) ($((SECONDS - start)) s)"
}

step "training speed" 0 "$out/training_speed.log" python benchmarks/training_speed.py --device "$device" \
  --json "$out/training_speed.json" --no-torch_compile "${speed[@]}"
step "model cost" 0 "$out/model_cost.log" python benchmarks/model_cost.py --device "$device" \
  --json "$out/model_cost.json" "${cost[@]}"
step "sampling" 0 "$out/sampling_speed.log" python benchmarks/sampling_speed.py --device "$device" \
  "${sampling[@]}" --work_dir "$out/sampling-model"
step "student sampling" 0 "$out/student_sampling_speed.log" python benchmarks/sampling_speed.py --device "$device" \
  "${sampling[@]}" --work_dir "$out/sampling-model" --num_inference_steps 2 --guidance_scale 1
model=$(ls -d "$out"/sampling-model/*/model_index.json 2>/dev/null | head -1)
if [[ -n $model ]]; then
  step "dataset generation" 0 "$out/dataset_generation.log" python benchmarks/dataset_generation.py \
    --device "$device" --model "$(dirname "$model")" --no-memory "${generation[@]}"
else
  echo "dataset generation|skipped: no trained model from the sampling step" >> "$out/status.txt"
fi
if [[ $tiny == 1 ]]; then  # compiling on a CPU takes minutes and proves nothing about a GPU
  echo "torch.compile|skipped: the CPU dry run does not compile" >> "$out/status.txt"
else
  step "torch.compile" "$compile_needs" "$out/training_speed_compile.log" python benchmarks/training_speed.py \
    --device "$device" --json "$out/training_speed_compile.json" --torch_compile "${speed[@]}"
fi
echo
python benchmarks/suite_table.py "$out"
echo
echo "Total $((SECONDS - start)) s of the ${budget} s budget. Full logs: $out/*.log"
grep -h -E "^- (CPU:|device:|Python)" "$out"/*.log 2>/dev/null | sort -u || true
