#!/bin/sh
# Install, in one image layer, the pins of requirements-runtime.lock whose names match the
# extended regular expression $1, without their dependencies: the Dockerfile's stages split
# the lock's few large packages (CUDA libraries, torch) over layers of under 2 GB each, and
# its `dependencies` stage then installs the whole lock, which checks and completes them.
# Run from the folder holding the lock; pip uses /wheels alone when it is mounted.
set -eu
pattern=$1
pins=$(grep -E "^(${pattern})==" requirements-runtime.lock) || {
  echo "pip-layer.sh: no pin in requirements-runtime.lock matches '${pattern}'" >&2
  exit 1
}
if [ -d /wheels ]; then set -- --no-index --find-links /wheels; else set --; fi
# shellcheck disable=SC2086 # one pin per word
pip install --no-cache-dir --disable-pip-version-check --no-deps "$@" $pins
