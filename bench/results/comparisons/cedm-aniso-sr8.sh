#!/bin/bash
# cEDM for anisotropic Gaussian blur and SR x8 at the bundled model's budget (15,000 steps x
# batch 8, from the image denoiser, wide training levels, lr 2e-4 cosine), trained side by side
# with one thread each (about 1.1 s per step each on the 2-core AMD EPYC, Zen 3, fp32), then
# scored on the 4 held-out photos as cedm-lpips/ was (one sample, then the mean of 4 with
# DiffPIR in the same run). Resumes from the newest checkpoint, so it may be stopped and started
# again (a stopped session loses at most 500 steps per run).
# From the repository root:  bash bench/results/comparisons/cedm-aniso-sr8.sh
set -euo pipefail
export PYTHONPATH=sdk OMP_NUM_THREADS=1
PY=.venv/bin/python
BF16=(); lscpu | grep -qE "avx512_bf16|amx_bf16" && BF16=(--bf16)  # bf16 autocast only where the CPU has it
train() {  # out, task and its settings
  local out=$1; shift
  local resume=(); ls runs/$out/step-*.safetensors > /dev/null 2>&1 && resume=(--resume)
  $PY bench/learned_baselines/cedm.py train "$@" --init samples/models/image-denoiser --levels 0.5 1.8 \
    --out runs/$out --steps 15000 --warmup 50 --lr 2e-4 --checkpoint-every 500 --keep 2 --seed 1 \
    "${BF16[@]}" "${resume[@]}" >> runs/$out.log 2>&1
}
train cedm-aniso-wide --task anisotropic_blur &
train cedm-sr8-wide --task sr --set 'data.sr_factors=[8]' &
wait
export OMP_NUM_THREADS=2
$PY bench/quality.py samples/models/image-small --photos data/photos/held-out --images 4 --samples 1 \
  --task anisotropic_blur --task sr_x8 --learned cedm:runs/cedm-aniso-wide/step-00015000.safetensors \
  --learned cedm:runs/cedm-sr8-wide/step-00015000.safetensors --lpips data/lpips \
  --out bench/results/comparisons/cedm-aniso-sr8 --noise 0.01 0.05 --quiet
# The mean of 4 samples, with DiffPIR in the same run
$PY bench/quality.py samples/models/image-small --photos data/photos/held-out --images 4 --samples 4 \
  --task anisotropic_blur --task sr_x8 --zero-shot samples/models/image-denoiser --method diffpir \
  --learned cedm:runs/cedm-aniso-wide/step-00015000.safetensors \
  --learned cedm:runs/cedm-sr8-wide/step-00015000.safetensors --lpips data/lpips \
  --out bench/results/comparisons/cedm-aniso-sr8-mean4 --noise 0.01 0.05 --quiet
