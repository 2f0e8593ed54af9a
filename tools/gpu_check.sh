#!/usr/bin/env bash
# The GPU check: on a machine with one CUDA GPU, in at most about 9 minutes,
#   1. the tests that exercise CUDA paths (detectron2's e2e model tests, with CUDA
#      autocast and CUDA->CPU; the entry points training on CUDA),
#   2. the embedded config trained for 300 iterations in fp32, fp16 AMP and bf16 AMP
#      (losses must stay finite and fall),
#   3. GFL (and GFL V2) against detectron2's FCOS, COCO R-50 at 800x1333: images/s and peak memory,
#      inference and training, fp32 and fp16 AMP, batch 1 and 8,
#   4. GFL against MMDetection 3.3's GFL (same weights, same images): inference, a training step,
#      ATSS assignment, where MMDetection is importable (else a one-line note),
#   5. TorchScript and ONNX export on CUDA, checked against the eager model,
#   6. the deformable-convolution models against their plain twins (tools/dcn_speed.py),
#   7. the embedded model of step 2 exported fp32 and INT8, in ONNX Runtime on the machine's CPU:
#      AP and latency (tools/int8_study.py; needs onnxruntime),
#   8. on the machine's CPU, GFL R-50's throughput against the CPU's own convolution and
#      bfloat16 where the CPU has it, with the AP of step 2's model (tools/cpu_throughput.py),
# then prints one summary table. Logs and checkpoints go to $GPU_CHECK_OUT (default
# ./gpu_check); the summary and the benchmark are written as reports (JSON and Markdown)
# to projects/GFL/results/ as gpu_check.* and gpu_check_benchmark.* (other names: --name).
#
#   bash tools/gpu_check.sh
#   bash tools/gpu_check.sh --name gpu_check_h200
#   bash tools/gpu_check.sh --smoke --output /tmp/gc          # tiny sizes, on the CPU too
#   bash tools/gpu_check.sh --report --name gpu_check_h100   # the .md again from the .json
#
# A machine without internet: on one with PyPI access, fetch the wheels of what the
# target's Python lacks (it needs torch/torchvision already), carry the folder, use it:
#
#   GPU_CHECK_PYTHON_VERSION=3.12 bash tools/gpu_check.sh --fetch-wheels .whl   # where PyPI is reachable
#   GFL_D2_WHEELS=.whl bash tools/gpu_check.sh                                  # on the GPU machine
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}

# what detectron2 and gfl-d2 import beyond torch, torchvision, numpy, Pillow, matplotlib,
# tabulate, tqdm, pyyaml, cloudpickle, portalocker, packaging, tensorboard, opencv
PURE=(fvcore iopath yacs termcolor "omegaconf>=2.1,<2.4" "hydra-core>=1.1" "antlr4-python3-runtime==4.9.3" "setuptools<81")
BINARY=(pycocotools faster-coco-eval onnx onnxruntime)
D2_WHEEL="sal-detectron2==0.7.2"

if [ "${1:-}" = "--fetch-wheels" ]; then
  dir=${2:?usage: --fetch-wheels DIR}
  pyver=${GPU_CHECK_PYTHON_VERSION:-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')}
  mkdir -p "$dir"
  "$PY" -m pip wheel --no-deps -q -w "$dir" "${PURE[@]}"
  "$PY" -m pip download --no-deps -q --only-binary=:all: --python-version "$pyver" --implementation cp \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 \
    -d "$dir" "${BINARY[@]}"
  # detectron2's Python sources (its wheel is tagged CPython 3.10; only the package is used)
  "$PY" -m pip download --no-deps -q --only-binary=:all: --python-version 3.10 -d "$dir" "$D2_WHEEL"
  ls -la "$dir"
  exit 0
fi

if [ -n "${GFL_D2_WHEELS:-}" ]; then
  site=${GFL_D2_SITE:-/tmp/gfl_d2_site}
  mkdir -p "$site"
  for whl in "$GFL_D2_WHEELS"/*.whl; do
    case "$whl" in
      */sal_detectron2-*) "$PY" -c 'import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
z.extractall(sys.argv[2], [n for n in z.namelist() if n.startswith("detectron2/")])' "$whl" "$site" ;;
      *) "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "$whl" ;;
    esac
  done
  export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
# gfl_d2 and gfl_studies (tools/gfl_studies) from this checkout, installed or not
export PYTHONPATH="$PWD:$PWD/tools${PYTHONPATH:+:$PYTHONPATH}"

exec "$PY" -m gfl_studies.gpu_check --output "${GPU_CHECK_OUT:-gpu_check}" "$@"
