#!/usr/bin/env bash
# Builds the plain Java Kafka producer of the Kafka front's tests (integration-tests/kafka-java/,
# Maven, kafka-clients from Maven Central) into the install cache, keyed by a hash of its
# sources; concurrent runs build once (lib/cache.sh). Prints the classpath to run it with.
#
#   java -cp "$(scripts/kafka-java.sh)" dev.sluice.kafka.FrontProducer BOOTSTRAP TOPIC ...
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib/cache.sh"
SRC="$HERE/../integration-tests/kafka-java"
CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
command -v mvn >/dev/null || { apt-get update -qq && apt-get install -y -qq maven >/dev/null; }
HASH=$( (cd "$SRC" && find . -type f | LC_ALL=C sort | xargs cat; java -version 2>&1) | sha256sum | cut -c1-16)
OUT="$CACHE/kafka-java/$HASH"
build() {
  # Maven's own downloads are cached in ~/.m2, outside the tree; its output goes to $1.
  mvn -q -B --no-transfer-progress -Dstyle.color=never -f "$SRC/pom.xml" -Dsluice.out="$1/target" package dependency:copy-dependencies \
    -DoutputDirectory="$1/lib" -DincludeScope=runtime >&2
  cp "$1"/target/*.jar "$1/lib/"
  rm -rf "$1/target"
}
cache_install "$OUT" build
echo "$OUT/lib/*"
