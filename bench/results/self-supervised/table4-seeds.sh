#!/bin/bash
# Another seed of the Table 4 comparison (ssdu-table4-amd-epyc-2cores.md): supervised against
# SSDU, Gaussian 2-D 4x, 1,000 steps x batch 8 each, the same recipe and start with train.seed = $SEED
# (other batches, diffusion draws, SSDU splits and tau/gamma initialisation), trained side by side
# (one thread each), then scored on the same held-out slices as seed 0, whose rows are in table4/.
# The phantom start is scored again as a check that the evaluation reproduces seed 0's record.
# From the repository root:  bash bench/results/self-supervised/table4-seeds.sh   (SEED=2 bash ... for seed 2)
set -euo pipefail
export OMP_NUM_THREADS=1 PYTHONPATH=sdk
PY=.venv/bin/python
SEED=${SEED:-1}
OUT=bench/results/self-supervised/table4-seed$SEED
source bench/results/self-supervised/table4-recipe.sh  # BF16, the phantom start, COMMON
COMMON+=(--set train.seed=$SEED)
run() {  # name, extra settings: resumes a run that was stopped, skips one that is done
  local name=$1; shift
  [ -f runs/t4s$SEED-$name/checkpoints/ckpt-00001000.json ] && return 0
  local resume=(); [ -d runs/t4s$SEED-$name/checkpoints ] && resume=(--resume)
  $PY -m diffunfold train "${COMMON[@]}" "$@" --out runs/t4s$SEED-$name "${resume[@]}" > runs/t4s$SEED-$name.log 2>&1
}
run supervised &
run ssdu --set train.supervision='"ssdu"' &
wait
for name in supervised ssdu; do
  $PY -m diffunfold export runs/t4s$SEED-$name --out runs/pkg/t4s$SEED-$name --overwrite
done
PKGS=(runs/pkg/mri-small-phantoms runs/pkg/t4s$SEED-supervised runs/pkg/t4s$SEED-ssdu)
export OMP_NUM_THREADS=2
$PY bench/scanner.py --part quality --package "${PKGS[@]}" --volumes data/mri/held-out --size 64 --slices 6 \
  --masks gaussian2d:4 gaussian1d:4 --out $OUT \
  --baselines bench/results/self-supervised/table4/scanner-quality-64px-amd-epyc-2cores.json
$PY bench/scanner.py --part quality --package "${PKGS[@]}" --volumes data/mri/held-out --size 256 --slices 3 \
  --masks gaussian2d:4 --maps espirit --out $OUT \
  --baselines bench/results/self-supervised/table4/scanner-quality-256px-amd-epyc-2cores.json
