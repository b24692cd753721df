#!/usr/bin/env bash
# Sets up a fresh machine and runs lode's main job: the local devnet. Today that is the
# in-process POKT chain (gRPC on 127.0.0.1:9090, CometBFT RPC and websocket on
# 127.0.0.1:26657, a block every 2 s); the operator, relayminers and gateway join it with
# their issues. Arguments go to `devnet` (see `--help`). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo run -p lode-devnet --bin devnet --locked -- "$@"
