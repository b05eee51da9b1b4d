# Helpers for the image interop tests; source after tests/functions.sh.
# Expected contents and JSON checks are written in Python.
requires "$PY3"

WRITE_HELPER="$top_builddir/vhd-write-helper"

# make_raw FILE SIZE [OFFSET LENGTH BYTE]...: a sparse raw file of SIZE bytes
# holding BYTE over each range (sizes take K/M/G suffixes) -- the expected
# content the images are compared with.
make_raw() {
  "$PY3" - "$@" <<'PYEOF'
import sys
def size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    return int(s[:-1]) * mult[s[-1].upper()] if s[-1].upper() in mult else int(s, 0)
path, total = sys.argv[1], size(sys.argv[2])
args = sys.argv[3:]
with open(path, "wb") as f:
    f.truncate(total)
    for i in range(0, len(args), 3):
        off, length, byte = size(args[i]), size(args[i + 1]), int(args[i + 2], 0)
        f.seek(off)
        f.write(bytes([byte]) * length)
PYEOF
}

# info_field FILE KEY...: fields of `vhdimg info --json FILE`, one per line.
info_field() {
  local f=$1
  shift
  "$VHDIMG" info --json "$f" |
    "$PY3" -c 'import json, sys; i = json.load(sys.stdin); print("\n".join(str(i[k]) for k in sys.argv[1:]))' "$@"
}

# qemu_vsize FILE: the virtual size qemu-img reports for a vpc image.
qemu_vsize() {
  qemu-img info -f vpc --output=json "$1" | "$PY3" -c 'import json, sys; print(json.load(sys.stdin)["virtual-size"])'
}

requires_write_helper() {
  if [ ! -x "$WRITE_HELPER" ]; then
    echo "SKIP: $WRITE_HELPER was not built" >&2
    exit 77
  fi
}

# expect_exit CODE CMD...: runs CMD, fails unless it exits with CODE.
expect_exit() {
  local want=$1 got=0
  shift
  "$@" || got=$?
  [ "$got" -eq "$want" ] || fail "expected exit $want, got $got: $*"
}
