#!/bin/bash
# The paper's Table 4 at equal budget: self-supervised Diff-Unfolding (SSDU split) against
# SSDiffRecon (bench/learned_baselines/ssdiffrecon.py), both from undersampled k-space only,
# Gaussian 2-D 4x, 1,000 steps x batch 8 each, trained side by side (one thread each), then
# scored on the held-out head at 64 px (6 slices) and 256 px (3 slices) with the oracle
# baselines. The SSDU run is the one of ssdu-table4-amd-epyc-2cores.md (its COMMON settings).
# From the repository root:  bash bench/results/self-supervised/table4-ssdiffrecon.sh
set -euo pipefail
export OMP_NUM_THREADS=1 PYTHONPATH=sdk
PY=.venv/bin/python
source bench/results/self-supervised/table4-recipe.sh  # BF16, the phantom start, COMMON
RESUME=(); [ -d runs/t4-ssdu/checkpoints ] && RESUME=(--resume)
SSD_RESUME=(); ls runs/t4-ssdiffrecon/step-*.safetensors > /dev/null 2>&1 && SSD_RESUME=(--resume)
SSD_BF16=(); $BF16 && SSD_BF16=(--bf16)
$PY -m diffunfold train "${COMMON[@]}" --set train.supervision='"ssdu"' --out runs/t4-ssdu "${RESUME[@]}" \
  > runs/t4-ssdu.log 2>&1 &
$PY bench/learned_baselines/ssdiffrecon.py train --mask gaussian2d:4 --steps 1000 --out runs/t4-ssdiffrecon \
  "${SSD_BF16[@]}" "${SSD_RESUME[@]}" > runs/t4-ssdiffrecon.log 2>&1 &
wait
$PY -m diffunfold export runs/t4-ssdu --out runs/pkg/t4-ssdu --overwrite
export OMP_NUM_THREADS=2
for size in 64 256; do
  slices=6; masks="gaussian2d:4 gaussian1d:4"; maps="espirit true"
  [ $size = 256 ] && slices=3 && masks=gaussian2d:4 && maps=espirit
  $PY bench/scanner.py --part quality --package runs/pkg/mri-small-phantoms runs/pkg/t4-ssdu \
    --learned ssdiffrecon:runs/t4-ssdiffrecon --volumes data/mri/held-out --size $size --slices $slices \
    --masks $masks --maps $maps --out bench/results/self-supervised/table4-ssdiffrecon
done
