#!/usr/bin/env bash
# Sets up a fresh machine and runs lode's main job. Until the local devnet lands, that is
# the SMST benchmark report: roots and proofs of 100k and 1M-leaf sessions against the
# SHA-256 lower bound and the Go reference figures. Pass --quick for 100k only.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo bench -p lode-kernels --bench smst --locked -- "$@"
