#!/usr/bin/env bash
# Compiles the reference sink and the test job against Flink's jars, into a cache directory keyed
# by a hash of the sources (skipped when up to date; concurrent runs compile once, see
# scripts/lib/cache.sh). Prints the classes directory.
#
#   integration-tests/flink/build.sh            # needs scripts/flink.sh to have run
#   java -cp "$(integration-tests/flink/build.sh):$FLINK_LIB/*" dev.sluice.flink.job.CutoverJob ...
#
# FLINK_HOME defaults to $SLUICE_CACHE/flink/2.3.0/pyflink (what scripts/flink.sh installs).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/../../scripts/lib/cache.sh"
CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
FLINK_HOME="${SLUICE_FLINK_HOME:-$CACHE/flink/2.3.0/pyflink}"
if [ ! -f "$FLINK_HOME/lib/flink-dist-2.3.0.jar" ]; then
  echo "Flink 2.3.0 is not installed in $FLINK_HOME: run scripts/flink.sh" >&2
  exit 2
fi
command -v javac >/dev/null || { echo "javac (JDK 17) is needed" >&2; exit 2; }
SOURCES=$(cd "$HERE/src" && find . -name '*.java' | LC_ALL=C sort)
HASH=$( (cd "$HERE/src" && cat $SOURCES; javac -version 2>&1) | sha256sum | cut -c1-16)
OUT="$CACHE/flink/classes/$HASH"
compile() {
  (cd "$HERE/src" && javac -nowarn -Xlint:none --release 17 -encoding UTF-8 -cp "$FLINK_HOME/lib/*" -d "$1" $SOURCES) >&2
}
cache_install "$OUT" compile
echo "$OUT"
