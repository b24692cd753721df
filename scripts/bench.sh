#!/usr/bin/env bash
# Sets up a fresh machine and runs the benchmark report: SMST roots and proofs of 100k
# and 1M-leaf sessions against the SHA-256 lower bound and the Go reference figures
# (--quick: 100k only), then ring and supplier signatures and relay hashing against ECDSA
# and SHA-256 baselines, the session store's ingest, root, proof, memory and space
# reclamation, serve's added latency, throughput and memory per stream, serve and the
# gateway under attack, serve in front of llama.cpp, weights digests, and routing over
# engine replicas (round robin, least-loaded, prefix affinity, an oracle).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo bench -p lode-kernels --bench smst --locked -- "$@"
cargo bench -p lode-kernels --bench relay --locked
# The session store as a real process over loopback gRPC (the dev profile reuses the
# test build of RocksDB).
cargo bench -p lode-relayminer --bench store --profile dev --locked
# serve as a real process between a client and engine-sim, against calling engine-sim
# directly, with the devnet and a real store.
cargo bench -p lode-relayminer --bench serve --profile dev --locked
# Honest relays at half of serve's saturation, alone and under a mix of attacks on serve
# and the gateway: served share, p99 ratio, peak memory against the limits, relays lost.
cargo bench -p lode-relayminer --bench hostile --profile dev --locked
# serve in front of llama.cpp's real server (the tiny generated model) against calling
# it directly: added latency of a chat completion and of a stream's first chunk.
cargo bench -p lode-relayminer --bench llamacpp --profile dev --locked
# Two llama.cpp replicas behind serve, conversations with long system prompts: time to
# the first token with prefix routing against round robin.
cargo bench -p lode-relayminer --bench llamacpp_routing --profile dev --locked
# BLAKE3 digests of a 2 GiB weight set against reading it, from the disk and the page
# cache.
cargo bench -p lode-relayminer --bench digest --profile dev --locked

# The latency the gateway adds in front of serve.
cargo bench -p lode-gateway --bench gateway --profile dev --locked
# A multi-turn chat workload through the gateway, the relay tier and 4 engine-sim
# replicas with a KV-cache model, routed four ways (about 5 minutes).
cargo bench -p lode-gateway --bench routing --profile dev --locked
# Scale from zero: the first relay's time to first token at zero engines, split into
# decision, pod start, engine load and serve, against KubeAI's design point (the demand
# read every 10 s); engine-sim with a 2 s load, and llama.cpp (about 5 minutes).
cargo bench -p lode-fleet --bench cold_start --profile dev --locked
