#!/usr/bin/env bash
# Build the wheel set that carries vllm 0.26.0 to the device machine (issue 7), split into
# parts of at most $PART_MIB MiB, one part per `run` call (the working tree carries 64 MiB).
#
#   bash tools/vllm_device_wheels.sh            # -> .vllm-carry/part-*/ (git-ignored)
#
# The vllm wheel is slimmed: an H200 runs FlashAttention 3, a small Llama needs no MoE
# kernels, and the Rust frontend and the C++ headers of third-party kernels are not
# imported at all. Each device call then starts with tools/vllm_device_stash.sh, which
# copies its part into /tmp/vllm-stash and installs the set once it is whole.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
OUT=${OUT_DIR:-.vllm-carry}
PART_MIB=${PART_MIB:-56}
WORK=${WORK_DIR:-/tmp/vllm-carry-work}
PY_TAGS=(--only-binary=:all: --python-version 3.12 --implementation cp
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux_2_24_x86_64 --platform manylinux_2_31_x86_64
  --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64
  --platform manylinux1_x86_64)
grep -qx "/$OUT/" "$(git rev-parse --git-path info/exclude)" 2>/dev/null \
  || echo "/$OUT/" >> "$(git rev-parse --git-path info/exclude)"
mkdir -p "$WORK/dl" "$WORK/slim"
rm -rf "$OUT"
python3 -m pip download -q --no-deps "${PY_TAGS[@]}" -d "$WORK/dl" vllm==0.26.0
# what the device image lacks (its package list: the device tool's KINDS.md), pinned
# to versions that vllm 0.26.0 accepts
python3 -m pip download -q --no-deps "${PY_TAGS[@]}" -d "$WORK/dl" \
  -r tools/vllm_device_requirements.txt
# slim the vllm wheel
if [ ! -f "$WORK/slim/vllm-0.26.0-cp38-abi3-manylinux_2_28_x86_64.whl" ]; then
  rm -rf "$WORK/unpacked"
  python3 -m wheel unpack -d "$WORK/unpacked" "$WORK"/dl/vllm-0.26.0-*.whl
  root="$WORK/unpacked/vllm-0.26.0/vllm"
  rm -f "$root/vllm_flash_attn/_vllm_fa2_C.abi3.so" "$root/vllm-rs" \
    "$root/_moe_C_stable_libtorch.abi3.so"
  rm -rf "$root"/third_party/*/include
  find "$root/third_party" -name '_C.cpython-3*' ! -name '_C.cpython-312-*' -delete
  python3 -m wheel pack -d "$WORK/slim" "$WORK/unpacked/vllm-0.26.0"
fi
# split: the wheels other than vllm go whole into parts; vllm is cut into byte chunks
mkdir -p "$OUT"
split -b "${PART_MIB}M" -d -a 2 "$WORK"/slim/vllm-0.26.0-*.whl "$WORK/vllm.whl.chunk."
n=0
for chunk in "$WORK"/vllm.whl.chunk.*; do
  mkdir -p "$OUT/part-$n"; mv "$chunk" "$OUT/part-$n/"; n=$((n + 1))
done
mkdir -p "$OUT/part-$n"
for whl in "$WORK"/dl/*.whl; do
  case "$whl" in */vllm-0.26.0-*) continue ;; esac
  size=$(du -cm "$OUT/part-$n" | tail -1 | cut -f1)
  if [ "$size" -ge "$PART_MIB" ]; then n=$((n + 1)); mkdir -p "$OUT/part-$n"; fi
  cp "$whl" "$OUT/part-$n/"
done
echo "$((n + 1))" > "$OUT/parts"
du -sm "$OUT"/part-* ; echo "parts: $((n + 1))"
