#!/usr/bin/env bash
# On the device machine: stash the carried part(s) of the vllm wheel set in /tmp (which
# outlives a call while the machine stays warm), and once every part is there, install
# the set into /tmp/site. Prints what is still missing. Source it, so PYTHONPATH is set:
#
#   . tools/vllm_device_stash.sh        # in each device call that carries .vllm-carry/part-K
#
# Made by tools/vllm_device_wheels.sh; the recipe is in docs/development/benchmarks.md.
STASH=/tmp/vllm-stash
mkdir -p "$STASH"
total=$(cat .vllm-carry/parts)
for part in .vllm-carry/part-*; do
  [ -d "$part" ] || continue
  cp -n "$part"/* "$STASH"/ && touch "$STASH/.have-$(basename "$part")"
done
have=$(ls "$STASH"/.have-part-* 2>/dev/null | wc -l)
echo "vllm wheel set: $have of $total parts stashed"
if [ "$have" -eq "$total" ] && [ ! -f /tmp/site/.vllm-installed ]; then
  cat "$STASH"/vllm.whl.chunk.* > "$STASH/vllm-0.26.0-cp38-abi3-linux_x86_64.whl"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$STASH"/*.whl && touch /tmp/site/.vllm-installed
fi
[ -f /tmp/site/.vllm-installed ] && export PYTHONPATH=/tmp/site:$PWD && echo "vllm installed"
true
