#!/usr/bin/env bash
# Sets up a fresh machine and runs every check: formatting, clippy (warnings are
# errors), and all tests including the protocol vector tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
# A clean run's build folders (target/, fuzz/target/) grow to 7.6 GiB; one that already
# has them needs room only for what changed.
if [ -d target/debug ]; then require_disk 3 "the tests (with target/ built)"; else require_disk 9 "a clean test run"; fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (vectors from $LODE_VECTORS)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test --workspace --locked 2>&1 | tee "$log"
echo "== kernels' curve arithmetic under k256's magnitude checks"
cargo test -p lode-kernels --profile magnitudes --locked --lib --test crypto_vectors 2>&1 | tee -a "$log"
echo "== fuzz smoke (every cargo-fuzz target, 8 s each)"
bash scripts/fuzz.sh smoke
# One closing line over every test binary and the doc tests.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f; exit (p == 0 || f > 0) }' "$log"
