#!/usr/bin/env bash
# Installs Apache Flink 2.3.0 (the jars and bin/ scripts of the PyPI wheels) for the real Flink
# end-to-end test (integration-tests/tests/flink.rs). Cached in $SLUICE_CACHE/flink (default
# ~/.cache/sluice/flink); a second run does nothing, two at once install it once (lib/cache.sh).
# Prints the install directory.
#
#   $CACHE/flink/2.3.0/pyflink/lib/*.jar   Flink's runtime jars (the test's classpath)
#   $CACHE/flink/2.3.0/pyflink/bin, conf   Flink's scripts and default configuration
#
# The PyPI wheels carry the whole binary distribution (Maven Central has the modules only, not
# flink-dist's bin/ and conf/). Only Java 17 is needed to run it; Python's own deps are not.
set -euo pipefail
. "$(dirname "$0")/lib/cache.sh"
VERSION=2.3.0
CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
DEST="$CACHE/flink/$VERSION"

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

install_flink() {
  local tmp=$1
  echo "installing Apache Flink $VERSION (PyPI wheels) into $DEST" >&2
  local wheels="$tmp/wheels"
  mkdir -p "$wheels"
  "${PIP[@]}" download -q --no-deps -d "$wheels" \
    "apache-flink-libraries==$VERSION" "apache-flink==$VERSION" >&2
  for w in "$wheels"/apache_flink_libraries-"$VERSION"-*.whl "$wheels"/apache_flink-"$VERSION"-*.whl; do
    [ -f "$w" ] || continue
    unzip -q -o "$w" 'pyflink/*' -d "$tmp"
  done
  rm -rf "$wheels"
  ls "$tmp/pyflink/lib/"flink-dist*.jar >/dev/null
  chmod +x "$tmp"/pyflink/bin/* 2>/dev/null || true
}
cache_install "$DEST" install_flink
echo "$DEST"
