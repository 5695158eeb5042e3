#!/usr/bin/env bash
# Create (or verify) the project's virtual environment in .venv.
#
# Idempotent: when .venv exists and its stamp matches this script and setup.cfg,
# the script exits in seconds. mmcv 2.1.0 is compiled from its PyPI source with
# its ops (no wheel exists for torch 2.14); the built wheel is cached outside the
# repository (IGQ_WHEEL_CACHE, default ~/.cache/igq-plugin/wheels) so a reused
# machine does not compile it again.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
python_bin="${PYTHON:-python3}"
wheel_cache="${IGQ_WHEEL_CACHE:-$HOME/.cache/igq-plugin/wheels}"
mmcv_version="2.1.0"
stamp="$venv/.igq-setup-stamp"
constraints="$repo/tools/tested-versions.txt"
want_stamp="$(cat "$repo/tools/setup_env.sh" "$repo/setup.cfg" "$constraints" | sha256sum | cut -d' ' -f1)"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want_stamp" ]]; then
  exit 0
fi

log() { echo "[setup_env] $*"; }

if [[ ! -x "$venv/bin/python" ]]; then
  log "creating $venv"
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)

log "torch 2.14.1 / torchvision 0.29.1 (from the machine's local wheels)"
"${pip[@]}" -c "$constraints" torch torchvision

mmcv_wheel="$(ls "$wheel_cache"/mmcv-"$mmcv_version"-*.whl 2>/dev/null | head -n1 || true)"
if [[ -z "$mmcv_wheel" ]]; then
  log "compiling mmcv $mmcv_version with ops (several minutes on 2 cores)"
  # mmcv's setup.py imports pkg_resources the way setuptools < 70 provides it; the
  # project install below moves setuptools to the range torch and mmengine accept.
  "${pip[@]}" "setuptools<70" wheel ninja packaging
  build_dir="$(mktemp -d)"
  trap 'rm -rf "$build_dir"' EXIT
  "$venv/bin/python" -m pip download --disable-pip-version-check --no-deps \
    --no-binary :all: "mmcv==$mmcv_version" -d "$build_dir"
  tar -xzf "$build_dir"/mmcv-"$mmcv_version".tar.gz -C "$build_dir"
  src="$build_dir/mmcv-$mmcv_version"
  # torch 2.14's headers need C++20; mmcv 2.1.0 hard-codes c++14/c++17.
  sed -i -e 's/-std=c++14/-std=c++20/g' -e 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  mkdir -p "$wheel_cache"
  (cd "$src" && MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$(nproc)" \
    "$venv/bin/python" -m pip wheel --disable-pip-version-check --no-deps \
    --no-build-isolation -w "$wheel_cache" .)
  mmcv_wheel="$(ls "$wheel_cache"/mmcv-"$mmcv_version"-*.whl | head -n1)"
fi
log "installing $mmcv_wheel"
"${pip[@]}" --no-deps "$mmcv_wheel"
# mmcv's own runtime deps (installed without --no-deps resolution above).
"${pip[@]}" addict numpy opencv-python pyyaml yapf

log "project and its dependencies"
"${pip[@]}" -c "$constraints" -e "$repo[mm,timm,export,demo,test]"

# Import check from outside the repo, so no source tree shadows the installed mmcv.
(cd / && "$venv/bin/python" -c "import mmcv, mmcv.ops, mmdet, mmseg, mmengine, timm; print('mmcv', mmcv.__version__, 'mmdet', mmdet.__version__, 'mmseg', mmseg.__version__)")

echo "$want_stamp" > "$stamp"
log "done"
