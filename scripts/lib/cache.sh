# Sourced by the install scripts: one way to fill a cache folder that is safe when several
# processes (parallel tests, a test and the demo) install the same thing at the same moment.
#
#   cache_install DEST FUNCTION [ARGS...]
#
# Returns at once when DEST/.complete exists. Otherwise takes an exclusive lock on DEST.lock
# (flock; the second installer waits for the first), checks again, runs FUNCTION TMP ARGS... in
# a fresh folder of its own next to DEST, marks it complete and renames it into place. A failed
# FUNCTION leaves DEST as it was and removes its own temporary folder only.

cache_install() {
  local dest=$1 fn=$2
  shift 2
  [ -f "$dest/.complete" ] && return 0
  mkdir -p "$(dirname "$dest")"
  command -v flock >/dev/null || { echo "flock (util-linux) is needed" >&2; return 1; }
  (
    flock -x 9
    [ -f "$dest/.complete" ] && exit 0
    tmp=$(mktemp -d "$dest.tmp.XXXXXX")
    chmod 755 "$tmp"
    trap 'rm -rf "$tmp"' EXIT
    "$fn" "$tmp" "$@"
    touch "$tmp/.complete"
    rm -rf "$dest"
    mv "$tmp" "$dest"
    trap - EXIT
  ) 9>"$dest.lock"
}
