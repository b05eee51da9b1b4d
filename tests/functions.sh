# Shared helpers for the shell tests.  Source it: . "$top_srcdir/tests/functions.sh"
set -eu

: "${top_srcdir:=$(cd "$(dirname "$0")/../.." && pwd)}"
: "${top_builddir:=$top_srcdir}"
: "${VHDNBD:=$top_builddir/vhdnbd}"
: "${VHDIMG:=$top_builddir/vhdimg}"
PY3=/usr/bin/python3
# Inline test scripts import nbdraw.py (a raw NBD client) from here.
export PYTHONPATH="$top_srcdir/tests${PYTHONPATH:+:$PYTHONPATH}"

# Exit 77 (automake SKIP) with a reason unless a command exists.
requires() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "SKIP: $1 is not installed" >&2
    exit 77
  fi
}
# Built with AddressSanitizer: several times slower, so stress tests do less.
sanitizer_build() { ldd "$VHDNBD" 2>/dev/null | grep -q libasan; }

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

# start_vhdnbd SOCKPATH ARGS...: runs the server on a Unix socket in the
# background and waits (at most 60 s: a sanitizer build on a loaded machine
# is slow) until it has written its pidfile, which it does only once it
# listens.  Sets VHDNBD_PID; the server is killed at exit.
start_vhdnbd() {
  _start_vhdnbd "$@" || fail "vhdnbd exited before listening: $VHDNBD -U $*"
}

# start_vhdnbd_tcp SOCKPATH ARGS...: the same, also listening on a TCP port
# (-p) that was free a moment before, in VHDNBD_PORT.  Another process may
# take it in between: then the server exits at once, and another port is
# tried, 5 in all.
start_vhdnbd_tcp() {
  local sock=$1 attempt
  shift
  for attempt in 1 2 3 4 5; do
    VHDNBD_PORT=$(free_tcp_port)
    _start_vhdnbd "$sock" -p "$VHDNBD_PORT" "$@" && return 0
  done
  fail "vhdnbd exited before listening, with 5 ports: $VHDNBD -U $sock -p PORT $*"
}

# Returns 1 when the server exits before listening.
_start_vhdnbd() {
  local sock=$1
  shift
  local pidfile="$TMPD/vhdnbd.pid"
  rm -f "$pidfile"
  # VHDNBD_TEST_ARGS: options every server of the run gets (run-tests.sh
  # serves the protocol tests again from several event loops).
  # shellcheck disable=SC2086
  "$VHDNBD" -U "$sock" --pidfile "$pidfile" "$@" ${VHDNBD_TEST_ARGS:-} &
  VHDNBD_PID=$!
  cleanup_fn "kill $VHDNBD_PID 2>/dev/null; wait $VHDNBD_PID 2>/dev/null"
  local end=$((SECONDS + 60))
  until [ -s "$pidfile" ]; do
    if ! kill -0 "$VHDNBD_PID" 2>/dev/null; then
      wait "$VHDNBD_PID" 2>/dev/null || true
      return 1
    fi
    [ "$SECONDS" -lt "$end" ] || fail "vhdnbd did not write $pidfile within 60 s"
    sleep 0.1
  done
}

# stop_vhdnbd: SIGTERM to the server of the last start_vhdnbd, then waits (at
# most 60 s) and fails unless it exited 0, so that the image is closed
# (flushed) before a test inspects it and sanitizer reports count.
stop_vhdnbd() {
  local i state rc=0
  kill "$VHDNBD_PID" 2>/dev/null || fail "vhdnbd (pid $VHDNBD_PID) is not running"
  for ((i = 0; i < 600; i++)); do
    # Until it is reaped the process lingers as a zombie (state Z).
    state=Z
    read -r _ _ state _ 2>/dev/null < "/proc/$VHDNBD_PID/stat" || break
    [ "$state" != Z ] || break
    sleep 0.1
  done
  [ "$state" = Z ] || fail "vhdnbd did not exit within 60 s of SIGTERM"
  wait "$VHDNBD_PID" || rc=$?
  [ "$rc" -eq 0 ] || fail "vhdnbd exited with status $rc on SIGTERM"
}

# free_tcp_port: prints a TCP port on 127.0.0.1 that nothing listens on now.
free_tcp_port() {
  "$PY3" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# xfs_dir: sets XFS_DIR to an XFS file system made on a loop device under
# $TMPD (unmounted at exit) when running as root with mkfs.xfs and a loop
# device to use, else to $TMPD.  Some kernel behaviour the tests look for
# (buffered RWF_NOWAIT writes, how a hole punch treats the page cache)
# shows on XFS and not on ext4 or tmpfs.
xfs_dir() {
  XFS_DIR=$TMPD
  if [ "$(id -u)" -eq 0 ] && command -v mkfs.xfs >/dev/null 2>&1; then
    # 300 MiB is the smallest XFS file system mkfs.xfs makes; the file is sparse.
    truncate -s 320M "$TMPD/xfs.img"
    mkdir -p "$TMPD/mnt"
    if mkfs.xfs -q "$TMPD/xfs.img" 2>"$TMPD/mkfs.err" &&
      mount -o loop "$TMPD/xfs.img" "$TMPD/mnt" 2>"$TMPD/mount.err"; then
      # Lazy: a server killed at exit may still hold a file there.
      cleanup_fn umount -l "$TMPD/mnt"
      XFS_DIR=$TMPD/mnt
    fi
  fi
}

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.1 s until it
# succeeds; fails the test naming WHAT after SECONDS.  The limit is a
# generous bound on a loaded machine, never a duration the test relies on.
wait_for() {
  local limit=$1 what=$2
  shift 2
  local end=$((SECONDS + limit))
  until "$@"; do
    [ "$SECONDS" -lt "$end" ] || fail "$what: not within $limit s"
    sleep 0.1
  done
}

# vm_kib PID FIELD: prints FIELD (VmRSS, VmHWM) of /proc/PID/status in KiB.
vm_kib() {
  awk -v f="$2:" '$1 == f { print $2; found = 1 } END { exit !found }' "/proc/$1/status"
}

# export_metric FILE NAME: vhdnbd_NAME{export=""} in a metrics file
# (--metrics-file, the default export).
export_metric() {
  sed -n "s/^vhdnbd_$2{export=\"\"} //p" "$1"
}

# requests_ok FILE COMMAND...: the successful requests of those commands
# the metrics file counts (0 for none).
requests_ok() {
  local file=$1 cmds
  shift
  cmds=$(IFS='|'; echo "$*")
  sed -n 's/^vhdnbd_requests_total{export="",command="\([A-Z_]*\)",result="ok"} \([0-9]*\)$/\1 \2/p' \
    "$file" 2>/dev/null | awk -v re="^($cmds)\$" '$1 ~ re { n += $2 } END { print n + 0 }'
}

# wait_requests_ok FILE N COMMAND...: waits (at most 30 s) until the
# metrics file, rewritten every second, counts N successful requests of
# those commands; fails the test if it never does.
wait_requests_ok() {
  local file=$1 n=$2 i
  shift 2
  for ((i = 0; i < 300; i++)); do
    [ "$(requests_ok "$file" "$@")" = "$n" ] && return 0
    sleep 0.1
  done
  fail "the metrics file never counted the $n $* requests (it says $(requests_ok "$file" "$@"))"
}
