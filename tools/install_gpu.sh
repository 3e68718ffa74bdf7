#!/usr/bin/env bash
# Set mmvmamba up on a CUDA machine, keeping the CUDA build of PyTorch already installed there.
#
#   tools/install_gpu.sh                      # online: pip resolves every dependency
#   tools/install_gpu.sh --offline DIR        # no registry: wheels and the mmcv sdist in DIR
#
# What it does:
#   1. checks that $PYTHON (default python3) has torch with CUDA, and which torch / CUDA;
#   2. creates $VENV (default .venv) with --system-site-packages, so that torch, triton and
#      whatever else the machine has are used as they are (torch is never reinstalled: every pip
#      call is constrained to the installed torch version);
#   3. builds mmcv 2.1.0 with its CUDA ops (MMCV_WITH_OPS=1 FORCE_CUDA=1, for the GPU's compute
#      capability unless TORCH_CUDA_ARCH_LIST is set) once per (python, torch) pair, caching
#      the wheel under $WHEEL_CACHE (default ~/.cache/mmvmamba/wheels);
#   4. installs mmdet 3.3.0, mmsegmentation 1.2.2, mmpretrain 1.2.0 and mmvmamba (editable);
#   5. checks that mmcv's CUDA ops (nms, roi_align) run on the GPU.
# --offline DIR installs DIR's wheels without resolving dependencies (a machine without a
# registry has no way to fetch what they name); DIR must then hold every missing package.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
WHEEL_CACHE=${WHEEL_CACHE:-$HOME/.cache/mmvmamba/wheels}
MMCV_VERSION=2.1.0
OFFLINE=""
if [ "${1:-}" = "--offline" ]; then
  OFFLINE=${2:?"--offline needs a folder of wheels and the mmcv sdist"}
  OFFLINE=$(cd "$OFFLINE" && pwd)
elif [ -n "${1:-}" ]; then
  echo "usage: $0 [--offline DIR]" >&2; exit 2
fi

read -r TORCH_VERSION CUDA_VERSION ARCH < <("$PYTHON" - <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit('tools/install_gpu.sh: no torch in this python; install the CUDA build of PyTorch '
             'first (https://pytorch.org), or use `make install` for the CPU set-up')
if torch.version.cuda is None or not torch.cuda.is_available():
    sys.exit(f'tools/install_gpu.sh: torch {torch.__version__} sees no CUDA GPU (CUDA build: '
             f'{torch.version.cuda}); use `make install` for the CPU set-up')
major, minor = torch.cuda.get_device_capability()
print(torch.__version__, torch.version.cuda, f'{major}.{minor}')
EOF
)
echo "torch $TORCH_VERSION, CUDA $CUDA_VERSION, GPU compute capability $ARCH"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$VENV"
PY="$VENV/bin/python"
# torch may live outside the base interpreter's site-packages (PYTHONPATH, a user or conda
# prefix): the venv gets the base interpreter's package folders through a .pth file
"$PYTHON" -c "import sys, os; print('\n'.join(p for p in sys.path if os.path.isdir(p) and p.endswith(('-packages', '.egg'))))" \
  > "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/base_interpreter_paths.pth"
"$PY" -c "import torch" || { echo "the venv $VENV cannot import torch" >&2; exit 1; }
CONSTRAINTS="$VENV/constraints-gpu.txt"
# the CPU pins minus torch and numpy: the installed CUDA torch stays, and numpy < 2 is only for
# the Triton interpreter of the CPU tests (mmcv is built here against the numpy present)
{ grep -v -E '^(torch|numpy)\b' requirements/constraints.txt; echo "torch==$TORCH_VERSION"; } \
  > "$CONSTRAINTS"

pip_install() {
  if [ -n "$OFFLINE" ]; then
    "$PY" -m pip install -q --no-index --no-deps --find-links "$OFFLINE" -c "$CONSTRAINTS" "$@"
  else
    "$PY" -m pip install -q -c "$CONSTRAINTS" "$@"
  fi
}

pip_install "setuptools<81" wheel
tag=$("$PY" -c "import sys, torch; print(f'cp{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}')")
dir="$WHEEL_CACHE/$tag"
mkdir -p "$dir"
whl=$(ls "$dir"/mmcv-$MMCV_VERSION-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$whl" ]; then
  src="mmcv==$MMCV_VERSION"
  [ -n "$OFFLINE" ] && src="$OFFLINE/mmcv-$MMCV_VERSION.tar.gz"
  echo "building mmcv $MMCV_VERSION with CUDA ops for sm_${ARCH/./} (about 4 minutes on 16 cores);" \
       "wheel cached in $dir"
  start=$(date +%s)
  MMCV_WITH_OPS=1 FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH} \
    MAX_JOBS=${MAX_JOBS:-$(nproc)} \
    "$PY" -m pip wheel -q --no-deps --no-build-isolation ${OFFLINE:+--no-index} "$src" -w "$dir"
  echo "mmcv built in $(( $(date +%s) - start )) s"
  whl=$(ls "$dir"/mmcv-$MMCV_VERSION-*.whl | head -n1)
else
  echo "reusing cached $whl"
fi
"$PY" -m pip install -q --no-deps --force-reinstall "$whl"

if [ -n "$OFFLINE" ]; then
  pip_install $(ls "$OFFLINE"/*.whl | grep -v -E '/(setuptools|wheel)-')
else
  pip_install -r requirements.txt
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e .

"$PY" - <<'EOF'
import torch
import mmvmamba
import mmcv
import mmdet.registry, mmpretrain.registry, mmseg.registry  # every task library imports
from mmcv.ops import nms, roi_align
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.], [50., 50., 60., 60.]],
                     device='cuda')
keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7], device='cuda'), 0.5)[1]
assert keep.tolist() == [0, 2], keep
feat = torch.arange(16., device='cuda').view(1, 1, 4, 4)
pooled = roi_align(feat, torch.tensor([[0., 0., 0., 4., 4.]], device='cuda'), (2, 2), 1.0, 2)
assert pooled.is_cuda and pooled.shape == (1, 1, 2, 2)
print(f'mmvmamba {mmvmamba.__version__} on mmcv {mmcv.__version__} (CUDA ops: nms, roi_align '
      f'ran on {torch.cuda.get_device_name()}), torch {torch.__version__}')
EOF
echo "activate with: source $VENV/bin/activate"
