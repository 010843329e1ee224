#!/usr/bin/env bash
# Runs every sluice test on a fresh machine, installing what the tests need.
# Installs are cached outside the work tree (SLUICE_CACHE, default ~/.cache/sluice) and
# skipped when present.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
mkdir -p "$CACHE"

step() { printf '\n== %s\n' "$*"; }

# buf: the real gRPC reflection client (grpcurl is not obtainable here), for the README commands.
BUF="$CACHE/npm/node_modules/.bin/buf"
if [ ! -x "$BUF" ]; then
  step "installing buf (npm @bufbuild/buf) into $CACHE/npm"
  command -v npm >/dev/null || { apt-get update -qq && apt-get install -y -qq npm; }
  npm install --no-audit --no-fund --prefix "$CACHE/npm" @bufbuild/buf@1.75.0 >/dev/null
fi
export SLUICE_BUF="$BUF"
"$BUF" --version >/dev/null

# tansu: a real Kafka-compatible broker for the Kafka sink's tests (about 15 minutes to build the
# first time on 2 cores; cached afterwards).
TANSU="$CACHE/tansu/bin/tansu"
if [ ! -x "$TANSU" ]; then
  step "installing tansu 0.6.0 (Kafka-compatible broker) into $CACHE/tansu"
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root "$CACHE/tansu"
fi
export SLUICE_TANSU="$TANSU"

# Apache Flink 2.3.0 (PyPI wheels, cached) and the Java reference sink, for the real-Flink tests.
step "Apache Flink 2.3.0 and the Java reference sink"
scripts/flink.sh >/dev/null

step "format and lints"
rustup component list --installed 2>/dev/null | grep -q rustfmt || rustup component add rustfmt clippy
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -q -- -D warnings

step "build (binaries are needed by the process-level tests)"
cargo build --workspace --bins -q

step "tests: unit, gRPC, sidecar, Kafka (tansu + mock cluster), Kubernetes webhook and manifests, real Flink, simulation (${SLUICE_SIM_SEEDS:-2000} seeds), process-level, README commands"
cargo test --workspace --no-fail-fast -q 2>&1 | tee "${TMPDIR:-/tmp}/sluice-test.log"
# One closing line for the whole run.
awk '/^test result:/ { p += $4; f += $6 } END { printf "sluice: %d passed, %d failed\n", p, f; exit (f > 0) }' \
  "${TMPDIR:-/tmp}/sluice-test.log"
