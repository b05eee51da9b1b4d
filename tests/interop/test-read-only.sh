#!/bin/bash
# Which exports are read-only: ",ro"/",rw" on -e, "read-only" in [global] and
# in [export] sections, and -r, which makes every export read-only whatever
# the rest says.  Checked from the client side (nbdinfo --is read-only) and by
# a refused write that leaves the image unchanged.
. "$top_srcdir/tests/functions.sh"
requires nbdinfo
requires_py nbd
requires qemu-img

M=$((1024 * 1024))
for n in a b c d; do
  qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/$n.vhd" $((4 * M))
done
cat > "$TMPD/ro.conf" <<CONF
[global]
read-only = yes
[export c]
image = $TMPD/c.vhd
read-only = no
[export d]
image = $TMPD/d.vhd
CONF

# is_ro SOCK EXPORT: status 0 when the export is read-only, 1 when writable.
is_ro() {
  local rc=0
  nbdinfo --is read-only "nbd+unix:///$2?socket=$1" || rc=$?
  case $rc in
  0) return 0 ;;
  2) return 1 ;;
  *) fail "nbdinfo --is read-only on export '$2': status $rc" ;;
  esac
}
expect() { # expect SOCK EXPORT ro|rw WHY
  if is_ro "$1" "$2"; then
    [ "$3" = ro ] || fail "export '$2' is read-only but should be writable: $4"
  else
    [ "$3" = rw ] || fail "export '$2' is writable but should be read-only: $4"
  fi
}

# Without -r: ",ro" and ",rw" on the command line, the file's [global]
# default, and an [export] section's own "read-only = no".
sock=$TMPD/s1
start_vhdnbd "$sock" -C "$TMPD/ro.conf" -e "a=$TMPD/a.vhd,ro" -e "b=$TMPD/b.vhd,rw"
expect "$sock" a ro ",ro"
expect "$sock" b rw ",rw over [global] read-only = yes"
expect "$sock" c rw "[export c] read-only = no over [global]"
expect "$sock" d ro "[global] read-only = yes"
stop_vhdnbd

# With -r every export is read-only, the ones marked writable included.
sock=$TMPD/s2
start_vhdnbd "$sock" -r -C "$TMPD/ro.conf" -e "a=$TMPD/a.vhd,ro" -e "b=$TMPD/b.vhd,rw"
for e in a b c d; do expect "$sock" "$e" ro "-r"; done

# The server refuses a write even from a client that ignores the flag, and
# the image stays as it was.
before=$(sha256sum < "$TMPD/b.vhd")
"$PY3" - "$sock" <<'PY' || fail "a write to a read-only export was not refused with EPERM"
import errno, sys, nbd
h = nbd.NBD()
h.set_export_name("b")
h.connect_unix(sys.argv[1])
assert h.is_read_only()
h.set_strict_mode(0)  # send the WRITE anyway: the server must refuse it
try:
    h.pwrite(b"x" * 512, 0)
except nbd.Error as e:
    assert e.errnum == errno.EPERM, f"errno {e.errnum}: {e}"
else:
    sys.exit("write succeeded")
h.shutdown()
PY
stop_vhdnbd
[ "$(sha256sum < "$TMPD/b.vhd")" = "$before" ] || fail "b.vhd changed after a refused write"
exit 0
