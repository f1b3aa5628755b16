#!/usr/bin/env bash
# The final CI job: merge the per-target bundles into one and check every file of it.
#
#   examples/ci/merge.sh OUTPUT BUNDLE...
#
# `ingot merge` refuses bundles of different models or builds (other --quant, limits, ...), and
# its output does not depend on the order of the bundles. OUTPUT.json gets the merged manifest.
set -euo pipefail
output=$1
shift
ingot merge "$@" --output "$output" > /dev/null
ingot inspect --check --json "$output" > "$output.json"
echo "merged $(ls "$output/targets" | tr '\n' ' ')into $output"
