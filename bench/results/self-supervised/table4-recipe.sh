# The Table 4 training recipe (ssdu-table4-amd-epyc-2cores.md), sourced by table4-seeds.sh and
# table4-ssdiffrecon.sh so both train from one definition: the phantom-trained mri-small as the
# start (into runs/pkg/mri-small-phantoms), Gaussian 2-D 4x, 1,000 steps x batch 8. Sets BF16 and
# COMMON; run from the repository root.
BF16=false; lscpu | grep -qE "avx512_bf16|amx_bf16" && BF16=true  # bf16 autocast only where the CPU has it
mkdir -p runs/pkg/mri-small-phantoms
for f in TRAINING.md manifest.json regularizer.onnx weights.onnx; do
  git show 6150b35:samples/models/mri-small/$f > runs/pkg/mri-small-phantoms/$f
done
COMMON=(--config mri-small --set 'model.unet.attention_levels=[2, 3]' --set data.source='"volumes"'
 --set data.path='"data/mri/train"' --set data.val_path='"data/mri/held-out"'
 --set data.native_crops=true --set data.scanner=true --set 'data.mri_patterns=[["gaussian2d", 4]]'
 --set train.init_from='"runs/pkg/mri-small-phantoms"' --set train.cpu_bf16=$BF16
 --set train.val_every=0 --set train.log_every=10 --set model.prox_iterations=30 --set val.images=1
 --set 'val.tasks=[{task = "mri", kind = "gaussian2d", acceleration = 4}]'
 --steps 1000 --set train.decay_steps=1000 --set train.warmup_steps=100 --set train.checkpoint_every=50)
