#!/usr/bin/env bash
# Installs Apache Flink 2.3.0 (the jars and bin/ scripts of the PyPI wheels) for the real Flink
# end-to-end test (integration-tests/tests/flink.rs). Cached in $SLUICE_CACHE/flink (default
# ~/.cache/sluice/flink); a second run does nothing. Prints the install directory.
#
#   $CACHE/flink/2.3.0/pyflink/lib/*.jar   Flink's runtime jars (the test's classpath)
#   $CACHE/flink/2.3.0/pyflink/bin, conf   Flink's scripts and default configuration
#
# PyPI is the only place Flink can be had on our machines (no Maven Central), see
# ../shared/REAL-PARTS.md. Only Java 17 is needed to run it; Python's own deps are not.
set -euo pipefail
VERSION=2.3.0
CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
DEST="$CACHE/flink/$VERSION"
WHEELS="$CACHE/flink/wheels"

if [ -f "$DEST/.complete" ]; then
  echo "$DEST"
  exit 0
fi

apt_install() {
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq "$@" >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq "$@" >/dev/null
  fi
}
PIP=(python3 -m pip)
command -v python3 >/dev/null && python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
command -v unzip >/dev/null || apt_install unzip
command -v javac >/dev/null || apt_install openjdk-17-jdk-headless

echo "installing Apache Flink $VERSION (PyPI wheels) into $DEST" >&2
mkdir -p "$WHEELS"
"${PIP[@]}" download -q --no-deps -d "$WHEELS" \
  "apache-flink-libraries==$VERSION" "apache-flink==$VERSION" >&2
rm -rf "$DEST.tmp"
mkdir -p "$DEST.tmp"
for w in "$WHEELS"/apache_flink_libraries-"$VERSION"-*.whl "$WHEELS"/apache_flink-"$VERSION"-*.whl; do
  [ -f "$w" ] || continue
  unzip -q -o "$w" 'pyflink/*' -d "$DEST.tmp"
done
ls "$DEST.tmp/pyflink/lib/"flink-dist*.jar >/dev/null
chmod +x "$DEST.tmp"/pyflink/bin/* 2>/dev/null || true
touch "$DEST.tmp/.complete"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$DEST"
