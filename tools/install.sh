#!/usr/bin/env bash
# Install gfl-d2 and everything it needs into the current Python environment
# (the `python` on PATH, so an activated virtualenv is respected).
#
#   bash tools/install.sh                 # default: works with PyPI access only
#   GFL_D2_DETECTRON2=git bash tools/install.sh
#                                         # opt-in: build upstream detectron2 from GitHub
#
# Idempotent: steps whose result is already present are skipped. Any failing
# step stops the script with the name of that step.
set -euo pipefail

PY=${PYTHON:-python}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TORCH_SPEC=${GFL_D2_TORCH:-"torch==2.14.1 torchvision==0.29.1"}
D2_SOURCE=${GFL_D2_DETECTRON2:-pypi}
D2_WHEEL="sal-detectron2==0.7.2"

step() { CURRENT_STEP="$1"; echo "==> [install] $1"; }
trap 'echo "!! [install] FAILED at step: ${CURRENT_STEP:-?}" >&2' ERR

pip_install() { "$PY" -m pip install --disable-pip-version-check "$@"; }

step "check python"
"$PY" -c 'import sys; assert sys.version_info >= (3, 8), sys.version; print(sys.executable, sys.version.split()[0])'

step "torch + torchvision"
if "$PY" -c 'import torch, torchvision, torchvision.ops; torchvision.ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5)' 2>/dev/null; then
  "$PY" -c 'import torch, torchvision; print("already present: torch", torch.__version__, "torchvision", torchvision.__version__)'
else
  # shellcheck disable=SC2086
  pip_install $TORCH_SPEC
fi

step "detectron2 runtime dependencies"
# detectron2's own requirements (it is installed without them below);
# setuptools < 81 because detectron2.model_zoo imports pkg_resources.
pip_install "setuptools<81" fvcore iopath pycocotools "omegaconf>=2.1,<2.4" "hydra-core>=1.1" \
  yacs termcolor tabulate cloudpickle "tqdm>4.29.0" tensorboard matplotlib Pillow packaging black \
  opencv-python-headless

step "detectron2 ($D2_SOURCE)"
if "$PY" -c 'import detectron2.modeling.meta_arch.dense_detector' 2>/dev/null; then
  "$PY" -c 'import detectron2; print("already present: detectron2", detectron2.__version__, "at", detectron2.__path__[0])'
elif [ "$D2_SOURCE" = "git" ]; then
  pip_install --no-build-isolation "git+https://github.com/facebookresearch/detectron2.git"
else
  # detectron2 is not on PyPI under its own name. sal-detectron2 is a wheel of
  # upstream detectron2's sources tagged for CPython 3.10 only; its Python code
  # runs on newer CPythons (its compiled _C simply fails to import, which
  # detectron2 tolerates and GFL does not need). Unpack it into a temporary
  # folder and copy only the `detectron2` package and its metadata into
  # site-packages (the wheel also ships a top-level `tools` package that would
  # shadow other code).
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  pip_install --no-deps --only-binary=:all: --python-version 3.10 --target "$tmp" "$D2_WHEEL"
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  rm -rf "$site/detectron2" "$site"/sal_detectron2-*.dist-info
  cp -r "$tmp/detectron2" "$site/"
  cp -r "$tmp"/sal_detectron2-*.dist-info "$site/"
fi
"$PY" -c 'import detectron2.modeling, detectron2.engine, detectron2.evaluation; print("detectron2 OK:", detectron2.__version__)'

step "gfl-d2 (editable, with dev extras)"
pip_install -e "$REPO[dev]"
"$PY" -c 'import gfl_d2; print("gfl_d2 OK:", gfl_d2.__version__)'

step "done"
