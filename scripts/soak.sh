#!/usr/bin/env bash
# Soak: the local fleet under mixed streaming load for a while, memory sampled every
# 10 s. Usage: bash scripts/soak.sh [minutes=30] [requests/s=4] [stream share=0.5]
# Writes target/soak/rss.csv, target/soak/summary.txt and target/soak/rss.png.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

minutes="${1:-30}"
rps="${2:-4}"
share="${3:-0.5}"
out=target/soak
rm -rf "$out" && mkdir -p "$out"
cargo build --locked -p lode-relayminer -p lode-gateway -p lode-operator -p lode-engine-sim -p lode-fleet
target/debug/lode-fleet --root "$out/fleet" --exit-after "$((minutes * 60))" --rps "$rps" \
  --stream-share "$share" --summary-seconds 60 --rss-log "$out/rss.csv" | tee "$out/fleet.log"
python3 -c "import matplotlib" 2>/dev/null || python3 -m pip install --quiet --disable-pip-version-check matplotlib==3.10.7
python3 scripts/plot_rss.py "$out/rss.csv" "$out/rss.png" | tee "$out/summary.txt"
