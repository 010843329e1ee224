#!/usr/bin/env bash
# Builds the Java side (pom.xml: the reference sink, the test jobs, Flink's Kafka connector from
# Maven Central) into a cache directory keyed by a hash of the sources (skipped when up to date;
# concurrent runs build once, see scripts/lib/cache.sh). Prints that directory:
#
#   $OUT/classes   the compiled sink and jobs
#   $OUT/lib/*.jar what a Flink job adds to Flink's own lib/: flink-connector-kafka, kafka-clients
#
#   OUT=$(integration-tests/flink/build.sh)      # needs scripts/flink.sh to have run
#   java -cp "$OUT/classes:$OUT/lib/*:$FLINK_LIB/*" dev.sluice.flink.job.CutoverJob ...
#
# FLINK_HOME defaults to $SLUICE_CACHE/flink/2.3.0/pyflink (what scripts/flink.sh installs).
# Maven's own downloads are cached in ~/.m2, outside the tree.
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
command -v mvn >/dev/null || { apt-get update -qq && apt-get install -y -qq maven >/dev/null; }
HASH=$( (cd "$HERE" && find pom.xml src -type f | LC_ALL=C sort | xargs cat; javac -version 2>&1) | sha256sum | cut -c1-16)
OUT="$CACHE/flink/java/$HASH"
build() {
  mvn -q -B --no-transfer-progress -Dstyle.color=never -f "$HERE/pom.xml" -Dsluice.out="$1/target" \
    package dependency:copy-dependencies -DoutputDirectory="$1/lib" -DincludeScope=runtime >&2
  mv "$1/target/classes" "$1/classes"
  rm -rf "$1/target"
}
cache_install "$OUT" build
echo "$OUT"
