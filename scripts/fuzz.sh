#!/usr/bin/env bash
# Runs the cargo fuzz target of the Kafka front's request decoding path (fuzz/) for SECONDS
# (default 60), from a seed corpus of real Produce requests (every served encoding and
# compression). Needs a nightly toolchain; without one it says so and exits 0. cargo-fuzz is
# installed into the cache (SLUICE_CACHE), the fuzz build and the corpus live there too, never
# in the tree. The last line is libFuzzer's "Done N runs in S second(s)".
#
#   scripts/fuzz.sh            # about a minute (CI)
#   scripts/fuzz.sh 600        # a long run
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/cache.sh
SECONDS_TO_RUN="${1:-60}"
CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  echo "fuzz: no nightly Rust toolchain on this machine: the coverage-guided run is skipped"
  echo "fuzz: (the stable smoke test gate-sidecar/tests/kafka_front_decode.rs still runs)"
  exit 0
fi
VERSION=0.13.2
install_fuzz() { cargo install cargo-fuzz --version "$VERSION" --locked --root "$1" -q; }
cache_install "$CACHE/cargo-fuzz-$VERSION" install_fuzz
export PATH="$CACHE/cargo-fuzz-$VERSION/bin:$PATH"
CORPUS="$CACHE/fuzz/corpus/kafka_front_request"
mkdir -p "$CORPUS"
SLUICE_FUZZ_SEEDS="$CORPUS" cargo test -q -p sluice-gate-sidecar --test kafka_front_decode >/dev/null
# -malloc_limit_mb: one allocation past this is a finding ("no allocation beyond the input").
# A crash input goes to the cache ($CACHE/fuzz/artifacts); keep it as a regression test in
# gate-sidecar/tests/fuzz-regressions/kafka_front_request/.
ARTIFACTS="$CACHE/fuzz/artifacts/"
mkdir -p "$ARTIFACTS"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
status=0
CARGO_TARGET_DIR="$CACHE/fuzz/target" cargo +nightly fuzz run --fuzz-dir fuzz kafka_front_request \
  "$CORPUS" -- -max_total_time="$SECONDS_TO_RUN" -malloc_limit_mb=512 -rss_limit_mb=2048 \
  -artifact_prefix="$ARTIFACTS" -print_final_stats=1 > "$LOG" 2>&1 || status=$?
grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|INFO: Seed)' "$LOG" || true
if [ "$status" -ne 0 ]; then
  echo "fuzz: FAILED (exit $status); the end of libFuzzer's output:"
  tail -n 40 "$LOG"
fi
exit "$status"
