#!/usr/bin/env bash
# Set up an ONNX Runtime that is not the one installed, to check artifacts where they will run:
#
#   graphopt/verify/setup_foreign_runtime.sh DIR aarch64 1.20.1   # emulated arm64 Python 3.11 + onnxruntime, qemu-user
#   graphopt/verify/setup_foreign_runtime.sh DIR x86_64 1.20.1    # an older onnxruntime for this machine's Python
#
# DIR/site holds onnxruntime and its dependencies (wheels unpacked); for aarch64, DIR/root holds Debian's
# arm64 Python 3.11 and C libraries unpacked with `dpkg -x`, run through qemu-aarch64-static -L DIR/root.
# DIR/ready is written last, so a half-finished set-up is redone. Needs Debian's apt (root) for aarch64,
# and PyPI for both. Why 1.20.1 on aarch64: newer aarch64 wheels crash on import under qemu-user 7.2
# (shared/FINDINGS.md).
set -euo pipefail

dir=${1:?usage: setup_foreign_runtime.sh DIR ARCH ORT_VERSION}
arch=${2:?arch: aarch64 or x86_64}
ort=${3:?onnxruntime version, e.g. 1.20.1}
python=${PYTHON:-python3}

if [[ -f "$dir/ready" ]]; then exit 0; fi
rm -rf "$dir"
mkdir -p "$dir/site" "$dir/wheels"
deps=(numpy flatbuffers protobuf coloredlogs humanfriendly packaging sympy mpmath)

if [[ "$arch" == x86_64 ]]; then
  "$python" -m pip install --quiet --disable-pip-version-check --no-cache-dir --target "$dir/site" \
    "onnxruntime==$ort" "${deps[@]}"
elif [[ "$arch" == aarch64 ]]; then
  export DEBIAN_FRONTEND=noninteractive
  if ! command -v qemu-aarch64-static >/dev/null; then
    apt-get update -qq && apt-get install -y -qq qemu-user-static >/dev/null
  fi
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    dpkg --add-architecture arm64
  fi
  apt-get update -qq
  packages=(libc6 libgcc-s1 libstdc++6 libgomp1 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5
            libsqlite3-0 libuuid1 libncursesw6 libtinfo6 libreadline8 libpython3.11-minimal
            libpython3.11-stdlib python3.11-minimal)
  (cd "$dir/wheels" && apt-get download -qq "${packages[@]/%/:arm64}")
  for deb in "$dir"/wheels/*.deb; do dpkg -x "$deb" "$dir/root"; done
  "$python" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux_2_27_aarch64 --platform manylinux_2_28_aarch64 \
    --dest "$dir/wheels" "onnxruntime==$ort" "numpy<2.3" "${deps[@]:1}"
  for wheel in "$dir"/wheels/*.whl; do "$python" -m zipfile -e "$wheel" "$dir/site"; done
else
  echo "unknown arch $arch (aarch64 or x86_64)" >&2
  exit 2
fi
rm -rf "$dir/wheels"
echo "$arch onnxruntime==$ort" > "$dir/ready"
