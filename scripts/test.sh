#!/usr/bin/env bash
# Sets up a fresh machine and runs every check: formatting, clippy (warnings are
# errors), and all tests including the protocol vector tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (vectors from $LODE_VECTORS)"
cargo test --workspace --locked
