#!/usr/bin/env bash
# Run the architecture sweep on several transformers releases, one after another.
# Each release is installed with `pip install --target` into $TF_ROOT/<version> and put in
# front of the current environment's torch and gcshim through PYTHONPATH.
#   TF_ROOT=/tmp/tf bash tools/sweep_versions.sh 5.24.0 4.44.2 ...
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
root="${TF_ROOT:-/tmp/gcshim-tf}"
python="${PYTHON:-python}"
for version in "$@"; do
  target="$root/$version"
  [ -d "$target/transformers" ] || "$python" -m pip install -q --target "$target" "transformers==$version"
  (cd "$here" && PYTHONPATH="$target" "$python" -m tools.arch_sweep \
    --out "$here/docs/sweep/transformers-$version.jsonl" --timeout "${SWEEP_TIMEOUT:-150}")
done
