#!/usr/bin/env bash
# GPU suite (issue 13): what the seed's 81 M-parameter UNet at 128 px costs and how fast it trains and samples
# on one GPU, printed as ONE table (benchmarks/suite_table.py). On an H200 torch.compile alone warms up
# for 140 s: give the whole suite about 10 minutes (docs/measurements.md, GPU suite):
#   1. benchmarks/model_cost.py      parameters, FLOPs per training image (FlopCounterMode), peak memory (batch 64)
#   2. benchmarks/training_speed.py  fp32 eager vs bf16 vs bf16 + torch.compile, batch 64: img/s, memory, MFU
#   3. benchmarks/sampling_speed.py  the pipeline at batch 64 vs the seed's loop (DDPM 1000 steps, batch 1)
#   4. the same, as a distilled student samples (distill_fairface.py): 2 steps, guidance 1 (one UNet call per
#      step), on the same UNet: the speed of a 2-evaluation student (its fidelity needs distilled weights)
#
#   bash benchmarks/gpu_suite.sh            # on a CUDA machine; logs and JSON in $GPU_SUITE_DIR (default: a temp dir)
#   bash benchmarks/gpu_suite.sh --tiny     # CPU-sized dry run of the same steps (tests/test_gpu_suite.py)
set -euo pipefail
cd "$(dirname "$0")/.."
tiny=0
case "${1:-}" in
  --tiny) tiny=1 ;;
  "") ;;
  *) echo "gpu_suite.sh: error: unknown argument ${1} (only --tiny)" >&2; exit 2 ;;
esac
out="${GPU_SUITE_DIR:-$(mktemp -d -t fairface-gpu-suite-XXXXXX)}"
mkdir -p "$out"
if [[ $tiny == 1 ]]; then
  device=cpu
  cost=(--tiny --resolution 32 --batch_size 2)
  speed=(--tiny --no-torch_compile --warmup_steps 1 --steps 1 --rounds 1 --threads 0)
  sampling=(--train_steps 4 --train_batch_size 8 --resolution 16 --num_images 4 --batch_size 4
            --seed_loop_images 1 --seed_loop_steps 4 --threads 0)
else
  device=cuda
  python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh: error: no CUDA device (use --tiny for a CPU dry run)')"
  cost=(--batch_size 64)
  speed=(--no-tiny --torch_compile --batch_size 64)
  sampling=(--batch_size 64 --num_images 128 --seed_loop_images 4)
fi
start=$SECONDS
echo "[gpu_suite] results in $out"
python benchmarks/model_cost.py --device "$device" --json "$out/model_cost.json" "${cost[@]}" > "$out/model_cost.log" 2>&1 \
  || { tail -20 "$out/model_cost.log"; exit 1; }
echo "[gpu_suite] model cost done ($((SECONDS - start)) s)"
python benchmarks/training_speed.py --device "$device" --json "$out/training_speed.json" "${speed[@]}" \
  > "$out/training_speed.log" 2>&1 || { tail -20 "$out/training_speed.log"; exit 1; }
echo "[gpu_suite] training speed done ($((SECONDS - start)) s)"
python benchmarks/sampling_speed.py --device "$device" "${sampling[@]}" --work_dir "$out/sampling-model" \
  > "$out/sampling_speed.log" 2>&1 \
  || { tail -20 "$out/sampling_speed.log"; exit 1; }
echo "[gpu_suite] sampling speed done ($((SECONDS - start)) s)"
python benchmarks/sampling_speed.py --device "$device" "${sampling[@]}" --work_dir "$out/sampling-model" \
  --num_inference_steps 2 --guidance_scale 1 > "$out/student_sampling_speed.log" 2>&1 \
  || { tail -20 "$out/student_sampling_speed.log"; exit 1; }
echo "[gpu_suite] student sampling speed done ($((SECONDS - start)) s)"
echo
python benchmarks/suite_table.py "$out"
echo
echo "Total $((SECONDS - start)) s. Full logs: $out/*.log"
grep -h -E "^- (CPU:|device:|Python)" "$out/training_speed.log" | sort -u
