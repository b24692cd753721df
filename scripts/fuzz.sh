#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (every decoder that takes bytes from outside).
#
#   bash scripts/fuzz.sh smoke            # CI: every target for 8 s (from seeds/ and corpus/)
#   bash scripts/fuzz.sh long [SECONDS]   # every target SECONDS (default 600) each, to grow
#                                         # the corpus (fuzz/corpus/<target>, not committed)
#   bash scripts/fuzz.sh run TARGET [SECONDS]
#
# Needs cargo-fuzz (scripts/setup.sh installs it). libFuzzer needs nightly-only compiler
# flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. Any crash, panic, leak
# or timeout fails the run and leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
export RUSTC_BOOTSTRAP=1

mode="${1:-smoke}"
case "$mode" in
  smoke) seconds=8 ;;
  long) seconds="${2:-600}" ;;
  run) seconds="${3:-60}" ;;
  *) echo "usage: $0 smoke | long [SECONDS] | run TARGET [SECONDS]" >&2; exit 2 ;;
esac

if [ "$mode" = run ]; then
  targets="${2:?which target? (cargo fuzz list)}"
else
  targets="$(cargo fuzz list)"
fi

cargo fuzz build
total=0
for t in $targets; do
  mkdir -p "corpus/$t"
  dirs=("corpus/$t")
  [ -d "seeds/$t" ] && dirs+=("seeds/$t")
  flags=(-max_total_time="$seconds" -print_final_stats=1)
  # The store target starts a store (writer and compactor threads) per input and runs
  # its blocking work on a runtime that lives as long as the process: threads still
  # alive at a leak check (per input, and LeakSanitizer's at exit) are reported as
  # leaks. Its memory is still bounded by libFuzzer's -rss_limit_mb (2 GiB).
  leaks=1
  [ "$t" = store_rpc ] && { flags+=(-detect_leaks=0); leaks=0; }
  log="$(mktemp)"
  if ! ASAN_OPTIONS="detect_leaks=$leaks" cargo fuzz run "$t" "${dirs[@]}" -- "${flags[@]}" >"$log" 2>&1; then
    tail -60 "$log"
    echo "fuzz: $t FAILED (input in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs="$(awk '/stat::number_of_executed_units/ { print $NF }' "$log")"
  rm -f "$log"
  total=$((total + runs))
  printf 'fuzz: %-20s %9d runs in %ss, no crash\n' "$t" "$runs" "$seconds"
done
echo "fuzz: $(echo "$targets" | wc -w) targets, $total runs, 0 crashes"
