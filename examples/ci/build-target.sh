#!/usr/bin/env bash
# One job of the CI build matrix: build MODEL for one target into its own bundle.
#
#   examples/ci/build-target.sh MODEL TARGET OUTDIR [extra ingot build options...]
#
# Writes OUTDIR/bundle-TARGET (the bundle) and OUTDIR/build-TARGET.json (`ingot build --json`:
# targets, files and sha256, verification, quantization, stage timings). On a GPU runner, set
# TIMING_CACHE to a folder kept between runs (e.g. with actions/cache) to reuse TensorRT's
# tactic timings. The same script runs on a laptop: TARGET cpu-x86_64 or cpu-aarch64.
set -euo pipefail
model=$1 target=$2 outdir=$3
shift 3
mkdir -p "$outdir"
extra=()
if [[ $target == sm_* && -n ${TIMING_CACHE:-} ]]; then
  extra+=(--timing-cache "$TIMING_CACHE")
fi
ingot build "$model" --target "$target" --output "$outdir/bundle-$target" "${extra[@]}" "$@" \
  --json > "$outdir/build-$target.json"
ingot inspect --check "$outdir/bundle-$target" > /dev/null
echo "built $target: $outdir/bundle-$target"
