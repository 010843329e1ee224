#!/usr/bin/env bash
# Installs a real Apache Kafka broker (the kafka_2.13 jars and their runtime dependencies from
# Maven Central, resolved by integration-tests/kafka-broker/pom.xml) into the install cache,
# keyed by a hash of that pom; concurrent runs install once (lib/cache.sh). Prints the
# classpath to run it with:
#
#   java -cp "$(scripts/kafka-broker.sh)" kafka.tools.StorageTool format ...
#   java -cp "$(scripts/kafka-broker.sh)" kafka.Kafka server.properties
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
. "$HERE/lib/cache.sh"
POM="$HERE/../integration-tests/kafka-broker/pom.xml"
CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
command -v mvn >/dev/null || { apt-get update -qq && apt-get install -y -qq maven >/dev/null; }
HASH=$(sha256sum "$POM" | cut -c1-16)
OUT="$CACHE/kafka-broker/$HASH"
install() {
  # Maven's own downloads are cached in ~/.m2, outside the tree.
  mvn -q -B --no-transfer-progress -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
    -DoutputDirectory="$1/lib" -DincludeScope=runtime >&2
  test -n "$(ls "$1"/lib/kafka_2.13-*.jar)"
}
cache_install "$OUT" install
echo "$OUT/lib/*"
