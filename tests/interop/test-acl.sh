#!/bin/bash
# Access control: --allow refuses TCP clients from other networks at accept
# time (with a log line naming them), a per-export allow list hides that
# export from other clients (absent from LIST, GO refused with
# NBD_REP_ERR_POLICY), and Unix-socket clients are always allowed.  Checked
# with real clients on 127.0.0.1 and, where available, ::1.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires_py nbd

qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/open.vhd" 1M
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/secret.vhd" 1M

have_v6=yes
"$PY3" -c 'import socket
s = socket.socket(socket.AF_INET6)
s.bind(("::1", 0))' 2>/dev/null || have_v6=no
[ "$have_v6" = yes ] || echo "PARTIAL: no IPv6 loopback: the ::1 cases were not tested"

# probe HOST PORT EXPORT: prints "ok SIZE", or "refused: MESSAGE".
probe() {
  timeout 20 "$PY3" - "$@" <<'PY'
import sys, nbd
host, port, name = sys.argv[1], sys.argv[2], sys.argv[3]
h = nbd.NBD()
h.set_export_name(name)
try:
    if host.startswith("/"):
        h.connect_unix(host)
    else:
        h.connect_tcp(host, port)
    print("ok", h.get_size())
    h.pread(512, 0)
    h.shutdown()
except nbd.Error as e:
    print("refused:", e.string)
PY
}

# list HOST PORT: the export names a client there sees, one a line.
list() {
  timeout 20 "$PY3" - "$@" <<'PY'
import sys, nbd
h = nbd.NBD()
h.set_opt_mode(True)
if sys.argv[1].startswith("/"):
    h.connect_unix(sys.argv[1])
else:
    h.connect_tcp(sys.argv[1], sys.argv[2])
names = []
h.opt_list(lambda name, desc: names.append(name))
h.opt_abort()
print("\n".join(names))
PY
}

expect_ok() {
  local out
  out=$(probe "$@") || fail "probe $*: client crashed: $out"
  [[ $out == ok\ 1048576 ]] || fail "client $1 export '$3' should be allowed, got: $out"
}
expect_refused() {
  local out
  out=$(probe "$@") || fail "probe $*: client crashed: $out"
  [[ $out == refused:* ]] || fail "client $1 export '$3' should be refused, got: $out"
}

cat >"$TMPD/conf" <<CONF
[global]
allow = 127.0.0.0/8
[export open]
image = $TMPD/open.vhd
[export secret]
image = $TMPD/secret.vhd
allow = 192.0.2.0/24
allow = 2001:db8::/32
CONF

binds=(-b 127.0.0.1)
[ "$have_v6" = no ] || binds+=(-b ::1)

# --- global list from the configuration: 127.0.0.0/8 only ------------------
start_vhdnbd_tcp "$TMPD/sock" "${binds[@]}" -C "$TMPD/conf" 2>"$TMPD/log1"
port=$VHDNBD_PORT
expect_ok 127.0.0.1 "$port" open
if [ "$have_v6" = yes ]; then
  expect_refused ::1 "$port" open
  grep -q 'client \[::1\]:[0-9]*: refused: matches no rule of the global allow list (127.0.0.0/8)' "$TMPD/log1" ||
    fail "no log line names the refused ::1 client: $(cat "$TMPD/log1")"
fi
# The per-export list: 'secret' is invisible from 127.0.0.1...
names=$(list 127.0.0.1 "$port") || fail "listing over TCP failed: $names"
grep -qx open <<<"$names" || fail "LIST over TCP lacks 'open': $names"
! grep -qx secret <<<"$names" || fail "LIST over TCP shows 'secret' to a client it refuses"
expect_refused 127.0.0.1 "$port" secret
grep -q "client 127.0.0.1:[0-9]*: NBD_OPT_GO: export 'secret' refused" "$TMPD/log1" ||
  fail "no log line names the client refused 'secret': $(cat "$TMPD/log1")"
# ...and was refused with NBD_REP_ERR_POLICY, not as unknown (a raw
# handshake: libnbd does not expose the reply type).
out=$(timeout 20 "$PY3" - 127.0.0.1 "$port" <<'PY'
import sys, nbdraw
c = nbdraw.Raw.tcp(sys.argv[1], sys.argv[2])
c.newstyle()
for opt in (nbdraw.OPT_INFO, nbdraw.OPT_GO):
    print(hex(c.option(opt, nbdraw.name_data("secret"))[0]))
PY
) || fail "raw INFO probe failed: $out"
[ "$out" = "$(printf '0x80000002\n0x80000002')" ] ||
  fail "INFO/GO on 'secret' should get NBD_REP_ERR_POLICY (0x80000002), got: $out"
# ...while a Unix-socket client sees and uses everything.
names=$(list "$TMPD/sock" 0) || fail "listing over Unix failed: $names"
grep -qx secret <<<"$names" || fail "LIST over the Unix socket lacks 'secret': $names"
expect_ok "$TMPD/sock" 0 secret
stop_vhdnbd
# The server kept serving: one refusal line per refused connection, no crash.
! grep -qiE "error|sanitizer" "$TMPD/log1" || fail "unexpected errors: $(cat "$TMPD/log1")"

# --- --allow ::1/128 on the command line: the other way round --------------
if [ "$have_v6" = yes ]; then
  start_vhdnbd_tcp "$TMPD/sock" "${binds[@]}" --allow ::1/128 \
    -e "open=$TMPD/open.vhd" 2>"$TMPD/log2"
  port=$VHDNBD_PORT
  expect_ok ::1 "$port" open
  expect_refused 127.0.0.1 "$port" open
  grep -q 'client 127.0.0.1:[0-9]*: refused: matches no rule of the global allow list (::1/128)' "$TMPD/log2" ||
    fail "no log line names the refused 127.0.0.1 client: $(cat "$TMPD/log2")"
  stop_vhdnbd
fi

# A malformed list is a one-line usage error.
rc=0
"$VHDNBD" --allow 10.0.0.0/33 "$TMPD/open.vhd" 2>"$TMPD/err" || rc=$?
[ "$rc" -eq 2 ] || fail "--allow 10.0.0.0/33: exit status $rc, expected 2"
grep -q "10.0.0.0/33" "$TMPD/err" || fail "--allow error does not name the entry: $(cat "$TMPD/err")"
echo PASS
