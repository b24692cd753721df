#!/usr/bin/env bash
# Sets up a fresh machine and runs lode's main job: the whole fleet on this machine
# (`lode-fleet`): a local POKT chain (devnet), a Kubernetes API (kubesim) whose pods run
# as local processes, the lode operator, and sample Supplier / ServiceModel /
# GatewayPool resources (engine-sim standing in for vLLM). It prints how to send an
# OpenAI request and how to point kubectl at it, then a live summary. Arguments go to
# `lode-fleet` (see `--help`). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --locked -p lode-relayminer -p lode-gateway -p lode-operator -p lode-engine-sim -p lode-fleet
exec target/debug/lode-fleet "$@"
