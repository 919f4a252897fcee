#!/bin/bash
# Self-supervised training from a site's own undersampled raw scans (diffunfold prepare-scans,
# data.source = "scans") against SSDU on scans simulated from images and against supervised
# training: the same start (the phantom-trained mri-small), seed, 200 steps and pixels per step
# (8 crops of 64 x 64, or 2 windows of 64 x 256), Gaussian 1-D 4x; scored on the held-out head at
# 64 px (6 slices) and 256 px (3 slices), ESPIRiT maps and noise estimated from the data.
# From the repository root:  bash bench/results/self-supervised/site-scans.sh
set -euo pipefail
export PYTHONPATH=sdk
PY=.venv/bin/python
OUT=bench/results/self-supervised/site-scans
BF16=false; lscpu | grep -qE "avx512_bf16|amx_bf16" && BF16=true  # bf16 autocast only where the CPU has it
mkdir -p runs/pkg/mri-small-phantoms
for f in TRAINING.md manifest.json regularizer.onnx weights.onnx; do
  git show 6150b35:samples/models/mri-small/$f > runs/pkg/mri-small-phantoms/$f
done
# The site's archive: 24 exams x 8 whole-head slices of the training volumes, 256 px, 15 coils
[ -d runs/site-raw ] || OMP_NUM_THREADS=2 $PY bench/site_exams.py --volumes data/mri/train --out runs/site-raw
[ -d runs/site-scans ] || OMP_NUM_THREADS=2 $PY -m diffunfold prepare-scans runs/site-raw runs/site-scans \
  --json runs/site-scans.json
COMMON=(--config mri-small --set 'model.unet.attention_levels=[2, 3]' --set data.source='"volumes"'
 --set data.path='"data/mri/train"' --set data.val_path='"data/mri/held-out"'
 --set data.native_crops=true --set data.scanner=true --set 'data.mri_patterns=[["gaussian1d", 4]]'
 --set train.init_from='"runs/pkg/mri-small-phantoms"' --set train.cpu_bf16=$BF16
 --set train.val_every=0 --set train.log_every=5 --set model.prox_iterations=30 --set val.images=1
 --set 'val.tasks=[{task = "mri", kind = "gaussian1d", acceleration = 4}]'
 --steps 200 --set train.decay_steps=200 --set train.warmup_steps=20 --set train.checkpoint_every=25)
SSDU=(--set train.supervision='"ssdu"')
SCANS=(--set data.source='"scans"' --set data.path='"runs/site-scans"' --set train.batch_size=2 --set val.images=0)
run() {  # name, extra settings: resumes a run that was stopped, skips one that is done
  local name=$1; shift
  [ -f runs/site-cmp-$name/checkpoints/ckpt-00000200.json ] && return 0
  local resume=(); [ -d runs/site-cmp-$name/checkpoints ] && resume=(--resume)
  OMP_NUM_THREADS=1 $PY -m diffunfold train "${COMMON[@]}" "$@" --out runs/site-cmp-$name "${resume[@]}" \
    > runs/site-cmp-$name.log 2>&1
}
run supervised &
run ssdu "${SSDU[@]}" &
run scans "${SSDU[@]}" "${SCANS[@]}" &
wait
for name in supervised ssdu scans; do
  $PY -m diffunfold export runs/site-cmp-$name --out runs/pkg/site-$name --overwrite
done
PKGS=(runs/pkg/mri-small-phantoms runs/pkg/site-supervised runs/pkg/site-ssdu runs/pkg/site-scans)
export OMP_NUM_THREADS=2
$PY bench/scanner.py --part quality --package "${PKGS[@]}" --volumes data/mri/held-out --size 64 --slices 6 \
  --masks gaussian1d:4 --maps espirit true --out $OUT \
  --baselines bench/results/self-supervised/table4-ssdiffrecon/scanner-quality-64px-amd-epyc-2cores.json
$PY bench/scanner.py --part quality --package "${PKGS[@]}" --volumes data/mri/held-out --size 256 --slices 3 \
  --masks gaussian1d:4 --maps espirit --out $OUT
# Reference-free: the held-out lines of held-out exams of the held-out head (6 exams x 4 slices)
[ -d runs/site-raw-held-out ] || $PY bench/site_exams.py --volumes data/mri/held-out --out runs/site-raw-held-out \
  --exams 6 --slices 4 --seed 7
[ -d runs/site-scans-held-out ] || $PY -m diffunfold prepare-scans runs/site-raw-held-out runs/site-scans-held-out
$PY bench/held_out_lines.py --scans runs/site-scans-held-out --package "${PKGS[@]}" --windows 12 --out $OUT
