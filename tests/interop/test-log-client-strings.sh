#!/bin/bash
# Strings a client chooses reach the server's log escaped: an export name with
# a newline cannot forge a log line, nor an escape sequence reach the admin's
# terminal.  Sent by libnbd (nbdsh) through NBD_OPT_GO and NBD_OPT_EXPORT_NAME.
. "$top_srcdir/tests/functions.sh"
requires_py nbd
requires qemu-img

sock=$TMPD/sock
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/d.vhd" 1M
# -v -v: a refused NBD_OPT_GO is logged at the debug level.
start_vhdnbd "$sock" -v -v "$TMPD/d.vhd" 2>"$TMPD/log"

evil=$'evil\nvhdnbd: error: forged line\e[2J'
for style in go oldname; do
  "$PY3" - "$sock" "$evil" "$style" <<'PY' || fail "connecting with a hostile export name ($style)"
import sys, nbd
sock, name, style = sys.argv[1:]
h = nbd.NBD()
h.set_export_name(name)
if style == "oldname":
    h.set_request_structured_replies(False)
    h.set_opt_mode(False)
    h.set_handshake_flags(0)  # old-style option negotiation: NBD_OPT_EXPORT_NAME
try:
    h.connect_unix(sock)
except nbd.Error:
    sys.exit(0)
sys.exit("the server accepted an unknown export")
PY
done

# Wait (bounded) for the server to have logged both refusals.
for ((i = 0; i < 100; i++)); do
  [ "$(grep -c 'evil' "$TMPD/log")" -ge 2 ] && break
  sleep 0.1
done
cat "$TMPD/log"
[ "$(grep -c 'evil' "$TMPD/log")" -ge 2 ] || fail "the refused export names are not in the log"
grep -q '^vhdnbd: error: forged' "$TMPD/log" && fail "a client forged a log line"
grep -q $'\e' "$TMPD/log" && fail "an escape character from a client reached the log"
grep -q 'evil\\x0avhdnbd: error: forged line\\x1b\[2J' "$TMPD/log" ||
  fail "the export name is not logged escaped"
echo PASS
