# Shared helpers for the shell tests.  Source it: . "$top_srcdir/tests/functions.sh"
set -eu

: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${top_builddir:=$top_srcdir}"
: "${VHDNBD:=$top_builddir/vhdnbd}"
: "${VHDIMG:=$top_builddir/vhdimg}"
PY3=/usr/bin/python3

# Exit 77 (automake SKIP) with a reason unless a command exists.
requires() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "SKIP: $1 is not installed" >&2
    exit 77
  fi
}
requires_py() {
  if ! "$PY3" -c "import $1" >/dev/null 2>&1; then
    echo "SKIP: python module $1 is not available" >&2
    exit 77
  fi
}

_cleanup_fns=()
cleanup_fn() { _cleanup_fns+=("$*"); }
_run_cleanup() {
  local rc=$?
  local i
  for ((i = ${#_cleanup_fns[@]} - 1; i >= 0; i--)); do
    eval "${_cleanup_fns[$i]}" || true
  done
  exit $rc
}
trap _run_cleanup EXIT INT TERM

# A private temporary directory removed at exit.
TMPD=$(mktemp -d "${TMPDIR:-/tmp}/vhdnbd-test.XXXXXX")
cleanup_fn rm -rf "$TMPD"

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
