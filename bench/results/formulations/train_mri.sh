#!/bin/bash
# The MRI runs of formulations-amd-epyc-2cores.md, from the repository root:
#   bash bench/results/formulations/train_mri.sh FORMULATION STEPS OUTDIR [--set KEY=VALUE ...]
# (the tiny preset on one channel, 64 px native crops of the training head volumes through the
# scanner simulation, Gaussian 1-D 4x; edm and vp side by side, then ve and iddpm)
OMP_NUM_THREADS=1 PYTHONPATH=sdk exec .venv/bin/python -m diffunfold train --config tiny \
  --set model.formulation="\"$1\"" --set model.data='"mri"' --set model.channels=1 \
  --set data.source='"volumes"' --set data.path='"data/mri/train"' --set data.val_path='"data/mri/held-out"' \
  --set data.native_crops=true --set data.scanner=true --set 'data.mri_patterns=[["gaussian1d", 4]]' \
  --set data.size=64 --set train.steps=$2 --set train.batch_size=4 --set train.lr=1e-3 --set train.warmup_steps=20 \
  --set train.weights_lr_scale=10.0 --set train.log_every=10 --set train.seed=0 \
  --set train.checkpoint_every=40 --set train.keep_checkpoints=10 --set train.val_every=0 \
  --set val.images=1 --set 'val.tasks=[{task = "mri", kind = "gaussian1d", acceleration = 4}]' --set val.steps=4 \
  --out $3 "${@:4}"
