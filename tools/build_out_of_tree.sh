#!/usr/bin/env bash
# Build partdist with interpreter $1 into $2/lib (objects in $2/tmp), leaving the in-tree
# (editable) build alone, and copy the Python sources next to the compiled module.
# Extra build settings come from the environment (PARTDIST_CUDA, PARTDIST_SANITIZE, ...).
set -euo pipefail
py=$1
out=$2
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
rm -rf "$out/lib"
"$py" setup.py -q build_ext --build-lib "$out/lib" --build-temp "$out/tmp"
(cd partdist && find . -name '*.py' -exec cp --parents {} "$root/$out/lib/partdist/" \;)
mkdir -p "$out/run"
