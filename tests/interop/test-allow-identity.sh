#!/bin/bash
# Allow lists by identity, with real clients (libnbd's Python binding):
#   - dn: on X.509 client certificates with different CNs (--tls=on: a
#     global list of dn: rules lets a client negotiate TLS and nothing
#     else, NBD_REP_ERR_TLS_REQD, then decides);
#   - psk: on PSK identities made with psktool (export lists: before TLS
#     the exports are hidden and refused with NBD_REP_ERR_TLS_REQD);
#   - uid: and gid: on Unix-socket clients run as other users (as root only).
# Each kind admits one client and refuses another: a refused client does
# not see the export in LIST and gets NBD_REP_ERR_POLICY; a log line names
# it, its identity and the rules that refused it.
. "$top_srcdir/tests/functions.sh"
requires certtool
requires psktool
requires_py nbd

qemu_img() { "$VHDIMG" create -t dynamic "$1" 1M >/dev/null || fail "vhdimg create $1"; }
qemu_img "$TMPD/pub.vhd"
qemu_img "$TMPD/secret.vhd"

# --- credentials ------------------------------------------------------------------
gen() { certtool "$@" >/dev/null 2>"$TMPD/certtool.err" || fail "certtool $*: $(cat "$TMPD/certtool.err")"; }
pki=$TMPD/pki
mkdir -p "$pki"
printf 'cn = vhdnbd test CA\nca\ncert_signing_key\nexpiration_days = 2\n' >"$TMPD/ca.info"
gen --generate-privkey --outfile "$TMPD/ca-key.pem"
gen --generate-self-signed --load-privkey "$TMPD/ca-key.pem" --template "$TMPD/ca.info" \
  --outfile "$pki/ca-cert.pem"
printf 'organization = vhdnbd test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' \
  >"$TMPD/server.info"
gen --generate-privkey --outfile "$pki/server-key.pem"
gen --generate-certificate --load-ca-certificate "$pki/ca-cert.pem" \
  --load-ca-privkey "$TMPD/ca-key.pem" --load-privkey "$pki/server-key.pem" \
  --template "$TMPD/server.info" --outfile "$pki/server-cert.pem"
# One directory per client, as libnbd wants them: alice, carol-2 and bob.
for cn in alice carol-2 bob; do
  d=$TMPD/client-$cn
  mkdir -p "$d"
  cp "$pki/ca-cert.pem" "$d/"
  printf 'organization = vhdnbd test\ncn = %s\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n' \
    "$cn" >"$TMPD/$cn.info"
  gen --generate-privkey --outfile "$d/client-key.pem"
  gen --generate-certificate --load-ca-certificate "$pki/ca-cert.pem" \
    --load-ca-privkey "$TMPD/ca-key.pem" --load-privkey "$d/client-key.pem" \
    --template "$TMPD/$cn.info" --outfile "$d/client-cert.pem"
done
# The subject as documented: GnuTLS's RFC 4514 form, most specific first.
certtool -i --infile "$TMPD/client-alice/client-cert.pem" 2>/dev/null |
  grep -q 'Subject: CN=alice,O=vhdnbd test$' || fail "certtool shows another subject form"
for who in alice carol bob; do
  psktool -u "$who" -p "$TMPD/keys.psk" >/dev/null 2>&1 || fail "psktool -u $who"
  grep "^$who:" "$TMPD/keys.psk" >"$TMPD/$who.psk"
done

# client MODE CREDS USER WHERE EXPORT...: connects (TCP port or Unix socket
# path WHERE), lists the exports, then asks NBD_OPT_INFO for each EXPORT and
# reads a sector of the last one it may use.  Prints "list: NAMES" or
# "list refused: ...", then "EXPORT ok" or "EXPORT refused: ..." each.
cat >"$TMPD/client.py" <<'PY'
import sys, nbd
mode, creds, user, where = sys.argv[1:5]
exports = sys.argv[5:]
h = nbd.NBD()
h.set_opt_mode(True)
if mode == "plain":
    h.set_tls(nbd.TLS_DISABLE)
else:
    h.set_tls(nbd.TLS_REQUIRE)
    if mode == "x509":
        h.set_tls_certificates(creds)
    else:
        h.set_tls_psk_file(creds)
        h.set_tls_username(user)
try:
    if where.startswith("/"):
        h.connect_unix(where)
    else:
        h.connect_tcp("127.0.0.1", where)
except nbd.Error as e:
    print("connect refused:", e.string)
    sys.exit(0)
names = []
try:
    h.opt_list(lambda name, desc: names.append(name))
    print("list:", ",".join(sorted(names)))
except nbd.Error as e:
    print("list refused:", e.string)
usable = None
for x in exports:
    h.set_export_name(x)
    try:
        h.opt_info()
        print(x, "ok")
        usable = x
    except nbd.Error as e:
        print(x, "refused:", e.string)
if usable is not None:
    h.set_export_name(usable)
    h.opt_go()
    assert h.pread(512, 0) == bytes(512)
    h.shutdown()
else:
    h.opt_abort()
PY
# expect WHAT WANT CLIENT-ARGS...: the client's output must match WANT
# (a glob, newlines as '|').
expect() {
  local what=$1 want=$2 out
  shift 2
  out=$(timeout 30 "$PY3" "$TMPD/client.py" "$@" 2>&1) || fail "$what: client failed: $out"
  out=$(tr '\n' '|' <<<"$out")
  # shellcheck disable=SC2053
  [[ $out == $want ]] || fail "$what: got '$out', expected '$want'"
}

# raw_list PORT: the reply type a plaintext client gets for NBD_OPT_LIST.
raw_list() {
  timeout 20 "$PY3" - "$1" <<'PY'
import sys, nbdraw
c = nbdraw.Raw.tcp("127.0.0.1", sys.argv[1])
c.newstyle()
print(hex(c.option(nbdraw.OPT_LIST)[0]))
PY
}

# raw_tls PORT CREDS OPTION EXPORT: a raw client (python's ssl for TLS with
# the client certificate in CREDS, "-": no TLS) sends NBD_OPT_LIST (3) or
# NBD_OPT_INFO (6) for EXPORT and prints the reply type and message
# (libnbd does not expose reply types).
raw_tls() {
  timeout 20 "$PY3" - "$@" <<'PY'
import ssl, sys, nbdraw
port, creds, opt, name = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
c = nbdraw.Raw.tcp("127.0.0.1", port)
c.newstyle()
if creds != "-":
    ctx = ssl.create_default_context(cafile=creds + "/ca-cert.pem")
    ctx.check_hostname = False
    ctx.load_cert_chain(creds + "/client-cert.pem", creds + "/client-key.pem")
    c.starttls(ctx)
typ, msg = c.option(opt, nbdraw.name_data(name) if opt == nbdraw.OPT_INFO else b"")
print(hex(typ), msg.decode())
PY
}

# --- dn: (X.509, --tls=on) ---------------------------------------------------------------
cat >"$TMPD/x509.conf" <<CONF
[global]
allow = 192.0.2.0/24
allow = dn:CN=alice,O=vhdnbd test
allow = dn:CN=carol*
[export pub]
image = $TMPD/pub.vhd
[export secret]
image = $TMPD/secret.vhd
allow = dn:CN=alice,*
CONF
start_vhdnbd_tcp "$TMPD/sock" -b 127.0.0.1 -C "$TMPD/x509.conf" --tls=on \
  --tls-certificates "$pki" --tls-verify-peer 2>"$TMPD/x509.log"
port=$VHDNBD_PORT
expect "dn: alice" "list: pub,secret|pub ok|secret ok|" x509 "$TMPD/client-alice" - "$port" pub secret
expect "dn: carol-2" "list: pub|pub ok|secret refused: *|" \
  x509 "$TMPD/client-carol-2" - "$port" pub secret
grep -q "(x509 CN=carol-2,O=vhdnbd test): NBD_OPT_INFO: export 'secret' refused: matches no rule of its allow list (dn:CN=alice,\*)" \
  "$TMPD/x509.log" || fail "no log line names carol-2 and the rules of 'secret': $(cat "$TMPD/x509.log")"
expect "dn: bob" "list refused: *|pub refused: *|secret refused: *|" \
  x509 "$TMPD/client-bob" - "$port" pub secret
grep -q "client 127.0.0.1:[0-9]* (x509 CN=bob,O=vhdnbd test): refused: matches no rule of the global allow list (192.0.2.0/24, dn:CN=alice,O=vhdnbd test, dn:CN=carol\*)" \
  "$TMPD/x509.log" || fail "no log line names bob and the global rules: $(cat "$TMPD/x509.log")"
# Before TLS such a list can admit nobody yet: TLS first.
[ "$(raw_list "$port")" = 0x80000005 ] || fail "LIST before TLS: expected NBD_REP_ERR_TLS_REQD"
expect "dn: plaintext" "list refused: *|pub refused: *|" plain - - "$port" pub
# NBD_REP_ERR_POLICY, not merely "refused": carol-2's INFO of 'secret' and
# bob's LIST.
out=$(raw_tls "$port" "$TMPD/client-carol-2" 6 secret) || fail "raw INFO as carol-2: $out"
[ "$out" = "0x80000002 export 'secret' not available to this client" ] ||
  fail "carol-2's INFO of 'secret': expected NBD_REP_ERR_POLICY, got: $out"
out=$(raw_tls "$port" "$TMPD/client-bob" 3 -) || fail "raw LIST as bob: $out"
[[ $out == "0x80000002 "* ]] || fail "bob's LIST: expected NBD_REP_ERR_POLICY, got: $out"
stop_vhdnbd

# --- psk: (PSK, --tls=on) -----------------------------------------------------------------
# Export lists only: before TLS a client sees neither export, and is told
# NBD_REP_ERR_TLS_REQD for them.
cat >"$TMPD/psk.conf" <<CONF
[global]
allow = 127.0.0.0/8
[export pub]
image = $TMPD/pub.vhd
allow = psk:alice, psk:carol
[export secret]
image = $TMPD/secret.vhd
allow = psk:alice
CONF
start_vhdnbd_tcp "$TMPD/sock" -b 127.0.0.1 -C "$TMPD/psk.conf" --tls=on -v \
  --tls-psk "$TMPD/keys.psk" 2>"$TMPD/psk.log"
port=$VHDNBD_PORT
expect "psk: alice" "list: pub,secret|pub ok|secret ok|" psk "$TMPD/alice.psk" alice "$port" pub secret
expect "psk: carol" "list: pub|pub ok|secret refused: *|" psk "$TMPD/carol.psk" carol "$port" pub secret
grep -q "(PSK identity carol): NBD_OPT_INFO: export 'secret' refused: matches no rule of its allow list (psk:alice)" \
  "$TMPD/psk.log" || fail "no log line names carol and the rules of 'secret': $(cat "$TMPD/psk.log")"
grep -q "(PSK identity carol): NBD_OPT_LIST: export 'secret' hidden by its allow list (psk:alice)" \
  "$TMPD/psk.log" || fail "no log line says 'secret' was hidden from carol: $(cat "$TMPD/psk.log")"
expect "psk: bob" "list: |pub refused: *|secret refused: *|" psk "$TMPD/bob.psk" bob "$port" pub secret
grep -q "(PSK identity bob): NBD_OPT_INFO: export 'pub' refused: matches no rule of its allow list (psk:alice, psk:carol)" \
  "$TMPD/psk.log" || fail "no log line names bob and the rules of 'pub': $(cat "$TMPD/psk.log")"
expect "psk: plaintext" "list: |pub refused: *|" plain - - "$port" pub
out=$(raw_tls "$port" - 6 pub) || fail "raw INFO without TLS: $out"
[ "$out" = "0x80000005 export 'pub' requires TLS" ] ||
  fail "INFO of 'pub' without TLS: expected NBD_REP_ERR_TLS_REQD, got: $out"
stop_vhdnbd

# dn: and psk: rules without the credentials that prove them: startup refuses.
rc=0
"$VHDNBD" --check-config --allow "dn:CN=x" "$TMPD/pub.vhd" >/dev/null 2>"$TMPD/err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "dn: rules need" "$TMPD/err" ||
  fail "dn: without --tls-verify-peer: status $rc, $(cat "$TMPD/err")"
rc=0
"$VHDNBD" --check-config --allow "psk:x" --tls=on --tls-certificates "$pki" "$TMPD/pub.vhd" \
  >/dev/null 2>"$TMPD/err" || rc=$?
[ "$rc" -eq 1 ] && grep -q "psk: rules need --tls-psk" "$TMPD/err" ||
  fail "psk: without --tls-psk: status $rc, $(cat "$TMPD/err")"

# --- uid: and gid: (Unix socket) ---------------------------------------------------------
if [ "$(id -u)" -ne 0 ] || ! command -v setpriv >/dev/null; then
  echo "PARTIAL: not root or no setpriv: uid:/gid: rules not tested with other users"
  exit 0
fi
# The clients run as other users: they must reach the socket.
chmod 711 "$TMPD"
cat >"$TMPD/unix.conf" <<CONF
[global]
allow = uid:0, gid:65534
[export pub]
image = $TMPD/pub.vhd
[export secret]
image = $TMPD/secret.vhd
allow = uid:65534
CONF
start_vhdnbd "$TMPD/sock" -C "$TMPD/unix.conf" 2>"$TMPD/unix.log"
chmod 666 "$TMPD/sock"
as() { local id=$1; shift; setpriv --reuid="$id" --regid="$id" --clear-groups "$@"; }
expect "uid: root" "list: pub|pub ok|secret refused: *|" plain - - "$TMPD/sock" pub secret
grep -q "client #[0-9]* (unix) (uid 0, gid 0): NBD_OPT_INFO: export 'secret' refused: matches no rule of its allow list (uid:65534)" \
  "$TMPD/unix.log" || fail "no log line names uid 0 and the rules of 'secret': $(cat "$TMPD/unix.log")"
out=$(as 65534 timeout 30 "$PY3" "$TMPD/client.py" plain - - "$TMPD/sock" pub secret 2>&1) ||
  fail "client as uid 65534: $out"
[ "$(tr '\n' '|' <<<"$out")" = "list: pub,secret|pub ok|secret ok|" ] ||
  fail "uid 65534 (gid: rule globally, uid: rule for 'secret'): $out"
# uid 4321 in group 65534: admitted by the group, refused 'secret' by its uid.
out=$(setpriv --reuid=4321 --regid=65534 --clear-groups timeout 30 "$PY3" "$TMPD/client.py" \
  plain - - "$TMPD/sock" pub secret 2>&1) || fail "client as uid 4321: $out"
[[ $(tr '\n' '|' <<<"$out") == "list: pub|pub ok|secret refused: "* ]] ||
  fail "uid 4321, gid 65534: $out"
out=$(as 1234 timeout 30 "$PY3" "$TMPD/client.py" plain - - "$TMPD/sock" pub 2>&1) ||
  fail "client as uid 1234: $out"
[[ $out == "connect refused:"* ]] || fail "uid 1234 should be refused at connect: $out"
grep -q "client #[0-9]* (unix) (uid 1234, gid 1234): refused: matches no rule of the global allow list (uid:0, gid:65534)" \
  "$TMPD/unix.log" || fail "no log line names uid 1234 and the global rules: $(cat "$TMPD/unix.log")"
stop_vhdnbd
echo PASS
