#!/usr/bin/env bash
# The one command of a lent GPU machine (the `device` tool): it must fit in one call of at most
# 10 minutes. Three sessions (PART=):
#
# PART=latency: the torch GPU path (docs/engines-and-gpu.md), worst case about 500 s:
#   1. versions and the GPU (about 20 s);
#   2. the CuPy/CUDA parity tests (pytest -k "cupy or cuda" -m "not slow"), in the foreground so
#      the timings have the GPU alone, stopped after PARITY_S (120) s;
#   3. the bundled packages given model.safetensors where they lack it (`diffunfold
#      add-torch-weights` on copies in a temporary folder, about 10 s each);
#   4. bench/gpu_latency.py: seconds per image of image-small (64 and 256 px, batch 1 and 8; eager
#      fp32, fp16, fp16 + CUDA graphs; default and full schedule) and one 256 px scanner slice of
#      mri-small, no cell started after LATENCY_S (270) s, stopped at LATENCY_S + 60.
#   What comes back: gpu-latency.md (the table, under the GPU's name) and .json, parity.log and
#   logs.tar.gz.
#
#   PART=latency bash bench/gpu_session.sh                                  # on the GPU machine
#   PART=latency DEVICE=cpu OUT=/tmp/o bash bench/gpu_session.sh            # the dry run, < 1 min
#
# PART=train (the default): image-small fine-tuned, in this order and on a fixed time budget:
#   1. versions and the GPU (fails fast when torch sees no CUDA device or a module is missing);
#   2. in the background, the CuPy/CUDA parity tests (pytest -k "cupy or cuda"), which skip on
#      machines without a GPU;
#   3. image-small fine-tuned on the GPU from the bundled package, two variants at once (batch 32
#      / lr 1e-4 and batch 64 / lr 2e-4), both for the same number of steps: a 60-step
#      calibration of the two side by side sets how many fit in TRAIN_S. RECIPE=matched (the
#      default) holds tau = gamma = 1, the step weights the package runs with, and the noise
#      floor 1e-6 (the G-series of bench/results/real-data/image-small-validation, sections 3-6);
#      RECIPE=learned trains the weight generators too (runs 1-7).
# What comes back (at most 8 files): the EMA weights of each variant as a slim checkpoint
# (ckpt-*.safetensors + .json; the export script in samples/models/image-small/TRAINING.md
# turns one into a package), and logs.tar.gz with every log, config and CSV.
#
#   bash bench/gpu_session.sh                      # on the GPU machine; photos in .gpu/photos
#   PHOTOS=/data/photos/train TRAIN_S=60 OUT=/tmp/o DEVICE=cpu bash bench/gpu_session.sh   # a dry run
#
# PART=formulations: the diffusion formulations of issue 32 (VP, VE, iDDPM, EDM; EDM's Table 1,
# `model.formulation`) at the bundled image model's preset (`small`, attention at H/8), trained
# from scratch on the photos, Gaussian blur only (the task the CPU comparisons of
# bench/results/formulations/ used), all four side by side on the one GPU for the same number of
# steps at the same batch (FORM_BATCH, 64) and seed: a CAL_STEPS calibration of the four sets how
# many fit in TRAIN_S. What comes back: the four EMA weights as slim checkpoints (OUT/edm, OUT/vp,
# ...; `python -m diffunfold export` makes packages of them, `bench/quality.py` scores them) and
# logs.tar.gz.
#
#   PART=formulations bash bench/gpu_session.sh                            # on the GPU machine
#   PART=formulations PRESET=tiny ATTENTION=[] FORM_BATCH=2 FORM_WORKERS=1 FORM_VAL_IMAGES=1 CAL_STEPS=3 \
#       TRAIN_S=150 MIN_STEPS=4 \
#       DEVICE=cpu OUT=/tmp/o PHOTOS=data/photos/train HELD_OUT=data/photos/held-out \
#       bash bench/gpu_session.sh                                          # the dry run, minutes on a CPU
set -u
OUT=${OUT:-/tmp/gpu_session}
PHOTOS=${PHOTOS:-.gpu/photos}
HELD_OUT=${HELD_OUT:-.gpu/held-out}   # only the final validation (5 photos) reads it
TRAIN_S=${TRAIN_S:-390}          # seconds of training after the calibration
CAL_STEPS=${CAL_STEPS:-60}
DEVICE=${DEVICE:-auto}
WORKERS=${WORKERS:-6}            # DataLoader workers per variant (decoded photos cached in each)
PY=${PY:-python3}
BATCH_A=${BATCH_A:-32}; BATCH_B=${BATCH_B:-64}   # the variants' batches (lr 1e-4 and 2e-4)
RECIPE=${RECIPE:-matched}
PART=${PART:-train}
PARITY_S=${PARITY_S:-120}; LATENCY_S=${LATENCY_S:-270}
MIN_STEPS=${MIN_STEPS:-100}     # the least steps the calibration may set (a dry run: fewer)
PRESET=${PRESET:-small}; FORM_BATCH=${FORM_BATCH:-64}; ATTENTION=${ATTENTION:-[3]}   # PART=formulations
FORM_WORKERS=${FORM_WORKERS:-3}  # DataLoader workers per formulation (four runs share the host's cores)
FORM_VAL_IMAGES=${FORM_VAL_IMAGES:-8}  # held-out photos of each run's final validation (the calibration: 1)
FORMULATIONS=(edm vp ve iddpm)
case "$RECIPE" in
  matched) RECIPE_ARGS=(--set train.weights_lr_scale=0 --set model.noise_floor=1e-6) ;;
  learned) RECIPE_ARGS=() ;;
  *) echo "RECIPE must be matched or learned, not '$RECIPE'" >&2; exit 2 ;;
esac
mkdir -p "$OUT"
export PYTHONPATH="$PWD/sdk${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOGS=$(mktemp -d)
T0=$(date +%s)
say() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

with_weights() {  # with_weights NAME: the bundled package, or a copy given model.safetensors
  if $PY -c "import sys; from diffunfold.package import ModelPackage as P; sys.exit(P.open(sys.argv[1]).torch_weights_file is None)" \
      "samples/models/$1"; then
    echo "samples/models/$1"
  else
    cp -r "samples/models/$1" "$PKGS/" && $PY -m diffunfold add-torch-weights "$PKGS/$1" >>"$LOGS/weights.txt" 2>&1 \
      && echo "$PKGS/$1"
  fi
}

latency_session() {
  say "2. parity tests (foreground, at most $PARITY_S s)"
  timeout "$PARITY_S" $PY -m pytest -q -p no:cacheprovider -k "cupy or cuda" -m "not slow" tests/ >"$LOGS/parity.log" 2>&1
  echo "exit $?" >>"$LOGS/parity.log"; tail -4 "$LOGS/parity.log"; cp "$LOGS/parity.log" "$OUT/"
  say "3. packages with model.safetensors"
  PKGS=$(mktemp -d)
  IMAGE_PKG=$(with_weights image-small) && MRI_PKG=$(with_weights mri-small) || { cat "$LOGS/weights.txt"; return 1; }
  cat "$LOGS/weights.txt" 2>/dev/null; echo "image: $IMAGE_PKG, mri: $MRI_PKG"
  say "4. latency (no cell started after $LATENCY_S s)"
  local dev=cuda; [ "$DEVICE" = cpu ] && dev=cpu
  timeout $(( LATENCY_S + 60 )) $PY bench/gpu_latency.py --device "$dev" --budget-s "$LATENCY_S" \
    --image-package "$IMAGE_PKG" --mri-package "$MRI_PKG" --out "$OUT" 2>&1 | tee "$LOGS/latency.txt"
  local rc=${PIPESTATUS[0]}
  tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
  rm -rf "$PKGS"
  say "done (latency exit $rc)"
  return "$rc"
}

steps_for_budget() {  # steps_for_budget RUN_DIR...: the steps all of them fit in TRAIN_S side by side
  $PY - "$TRAIN_S" "$MIN_STEPS" "$@" <<'EOF'
import csv, sys
budget, least, rates = float(sys.argv[1]), int(sys.argv[2]), []
for run in sys.argv[3:]:
    rows = list(csv.DictReader(open(f"{run}/log.csv")))
    a, b = rows[0], rows[-1]  # the first logged steps hold the start-up: rate from there on
    if len(rows) > 1:
        rates.append((int(b["step"]) - int(a["step"])) / (float(b["elapsed_s"]) - float(a["elapsed_s"])))
    else:  # a dry run's few steps: start-up included
        rates.append(int(b["step"]) / float(b["elapsed_s"]))
    print(f"{run}: {rates[-1]:.2f} steps/s side by side", file=sys.stderr)
steps = int(min(rates) * budget * 0.92)
print(max(least, steps // 50 * 50 if steps >= 100 else steps))
EOF
}

slim() {  # slim CHECKPOINT_DIR OUT_DIR: the newest checkpoint's EMA weights, without the optimizer
  $PY - "$1" "$2" <<'EOF'
import json, sys
from pathlib import Path
from safetensors.torch import save_file
from diffunfold.package import sha256_file
from diffunfold.training.checkpoint import latest_checkpoint, read_checkpoint
meta, tensors = read_checkpoint(latest_checkpoint(sys.argv[1]))
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
weights = out / meta["weights"]
save_file({k: v for k, v in tensors.items() if k.startswith("ema/")}, str(weights))
meta.update(sha256=sha256_file(weights), optimizer=None, slim="EMA weights only (bench/gpu_session.sh)")
(out / weights.with_suffix(".json").name).write_text(json.dumps(meta, indent=1))
print(out, meta["step"])
EOF
}

train_formulation() {  # train_formulation NAME STEPS OUTDIR [CHECKPOINT_EVERY [VAL_IMAGES]]: from scratch, Gaussian blur
  timeout $(( TRAIN_S + 120 )) $PY -m diffunfold train --config "$PRESET" --set model.formulation="\"$1\"" \
    --set val.images="${5:-$FORM_VAL_IMAGES}" --set 'val.tasks=[{task="gaussian_blur", sigma=2.0}]' \
    --set "model.unet.attention_levels=$ATTENTION" --set data.source='"folder"' --set data.path="\"$PHOTOS\"" \
    --set data.val_path="\"$HELD_OUT\"" --set data.native_crops=true --set data.whole_fraction=0.5 \
    --set data.cache_images=true --set 'data.tasks=["gaussian_blur"]' --set data.noise_max=0.1 \
    --set data.workers="$FORM_WORKERS" --set train.device="\"$DEVICE\"" --set train.threads=2 --set train.seed=0 \
    --set train.batch_size="$FORM_BATCH" --steps "$2" --set train.decay_steps="$2" --set train.val_every=0 \
    --set train.log_every="$(( $2 < 20 ? 1 : 10 ))" --set train.checkpoint_every="${4:-0}" \
    --set train.keep_checkpoints=1 --out "$3"
}

formulations_session() {
  say "2. calibration: $CAL_STEPS steps of the four formulations side by side ($PRESET, batch $FORM_BATCH)"
  local f pids=() runs=()
  for f in "${FORMULATIONS[@]}"; do
    train_formulation "$f" "$CAL_STEPS" "$LOGS/cal-$f" 0 1 >"$LOGS/cal-$f.txt" 2>&1 & pids+=($!); runs+=("$LOGS/cal-$f")
  done
  for f in "${!pids[@]}"; do wait "${pids[$f]}" || { tail -20 "$LOGS/cal-${FORMULATIONS[$f]}.txt"; return 1; }; done
  local steps; steps=$(steps_for_budget "${runs[@]}") || return 1
  say "3. training the four for $steps steps"
  pids=()
  for f in "${FORMULATIONS[@]}"; do
    train_formulation "$f" "$steps" "$LOGS/$f" $(( steps / 5 )) >"$LOGS/$f.txt" 2>&1 & pids+=($!)
  done
  wait "${pids[@]}"
  say "trained"; for f in "${FORMULATIONS[@]}"; do tail -n 1 "$LOGS/$f/log.csv"; done
  say "4. slim checkpoints (EMA weights only)"
  for f in "${FORMULATIONS[@]}"; do slim "$LOGS/$f/checkpoints" "$OUT/$f" || return 1; done
  tar -czf "$OUT/logs.tar.gz" -C "$LOGS" --exclude='checkpoints' .
  say "done"
}

say "1. machine (part: $PART$([ "$PART" = train ] && echo ", recipe: $RECIPE"))"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$LOGS/gpu.txt"
$PY - <<'EOF' 2>&1 | tee "$LOGS/versions.txt"; [ "${PIPESTATUS[0]}" = 0 ] || exit 1
import sys, PIL.features, torch, numpy, safetensors, onnx
print("python", sys.version.split()[0], "torch", torch.__version__, "numpy", numpy.__version__,
      "onnx", onnx.__version__, "webp", PIL.features.check("webp"))
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
try:
    import cupy
    print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())
except Exception as exc:
    print("cupy: not usable:", exc)
import diffunfold.training.trainer  # noqa: F401  (every import the training needs)
EOF

case "$PART" in
  train) ;;
  latency) latency_session; exit $? ;;
  formulations) formulations_session; exit $? ;;
  *) echo "PART must be train, latency or formulations, not '$PART'" >&2; exit 2 ;;
esac

say "2. parity tests (background)"
( timeout 300 $PY -m pytest -q -p no:cacheprovider -k "cupy or cuda" tests/ >"$LOGS/parity.log" 2>&1
  echo "exit $?" >>"$LOGS/parity.log" ) &
PARITY=$!

train() {  # train NAME BATCH LR STEPS OUTDIR [CHECKPOINT_EVERY]; stopped TRAIN_S + 120 s on
  timeout $(( TRAIN_S + 120 )) $PY -m diffunfold train --config small --set 'model.unet.attention_levels=[3]' \
    --set data.source='"folder"' --set data.path="\"$PHOTOS\"" --set data.val_path="\"$HELD_OUT\"" \
    --set data.native_crops=true --set data.whole_fraction=0.5 --set data.cache_images=true \
    --set 'data.tasks=["gaussian_blur","anisotropic_blur","sr","sr","inpainting","inpainting","inpainting"]' \
    --set 'data.inpainting_missing=[0.3, 0.8]' --set 'data.sr_factors=[4, 8, 8]' \
    --set data.workers="$WORKERS" --set train.device="\"$DEVICE\"" --set train.threads=2 \
    --set train.init_from='"samples/models/image-small"' --set train.batch_size="$2" --set train.lr="$3" \
    --steps "$4" --set train.decay_steps="$4" --set train.warmup_steps=50 --set train.val_every=0 \
    --set train.log_every=20 --set train.checkpoint_every="${6:-0}" --set train.keep_checkpoints=1 \
    "${RECIPE_ARGS[@]}" --out "$5"
}

say "3a. calibration: $CAL_STEPS steps of both variants side by side"
train b32 "$BATCH_A" 0.0001 "$CAL_STEPS" "$LOGS/cal-b32" >"$LOGS/cal-b32.txt" 2>&1 &
A=$!
train b64 "$BATCH_B" 0.0002 "$CAL_STEPS" "$LOGS/cal-b64" >"$LOGS/cal-b64.txt" 2>&1
wait $A || { tail -20 "$LOGS/cal-b32.txt"; exit 1; }
STEPS=$(steps_for_budget "$LOGS/cal-b32" "$LOGS/cal-b64") || { tail -20 "$LOGS/cal-b64.txt"; exit 1; }
say "3b. training both variants for $STEPS steps"
EVERY=$(( STEPS / 5 ))  # a checkpoint to fall back on if a run overruns
train b32 "$BATCH_A" 0.0001 "$STEPS" "$LOGS/b32" "$EVERY" >"$LOGS/b32.txt" 2>&1 &
A=$!
train b64 "$BATCH_B" 0.0002 "$STEPS" "$LOGS/b64" "$EVERY" >"$LOGS/b64.txt" 2>&1
wait $A
say "trained"; tail -n 3 "$LOGS/b32/log.csv" "$LOGS/b64/log.csv"; cat "$LOGS"/b*/val.csv

say "4. slim checkpoints (EMA weights only)"
for v in b32 b64; do
  slim "$LOGS/$v/checkpoints" "$OUT/$v"
done
wait $PARITY
say "parity tests:"; tail -5 "$LOGS/parity.log"
tar -czf "$OUT/logs.tar.gz" -C "$LOGS" --exclude='checkpoints' .
say "done"
