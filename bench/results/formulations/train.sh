#!/bin/bash
# The equal-budget runs of formulations-amd-epyc-2cores.md, from the repository root:
#   bash bench/results/formulations/train.sh FORMULATION STEPS OUTDIR [--set KEY=VALUE ...]
# (any further --set overrides the ones below: the 2,000-step runs turn the U-Net's attention off)
# (run here with the main checkout's data/photos, /work/main/data/photos; edm and vp side by side,
# then ve and iddpm)
OMP_NUM_THREADS=1 PYTHONPATH=sdk exec .venv/bin/python -m diffunfold train --config tiny \
  --set model.formulation="\"$1\"" \
  --set data.source='"folder"' --set data.path='"data/photos/train"' \
  --set data.val_path='"data/photos/held-out"' --set data.native_crops=true \
  --set data.whole_fraction=0.5 --set data.cache_images=true \
  --set data.size=64 --set data.tasks='["gaussian_blur"]' --set data.noise_max=0.1 \
  --set train.steps=$2 --set train.batch_size=4 --set train.lr=1e-3 --set train.warmup_steps=20 \
  --set train.weights_lr_scale=10.0 --set train.log_every=10 --set train.seed=0 \
  --set train.checkpoint_every=40 --set train.keep_checkpoints=10 --set train.val_every=0 \
  --set val.images=1 --set 'val.tasks=[{task="gaussian_blur", sigma=2.0}]' --set val.steps=4 \
  --out $3 "${@:4}"
