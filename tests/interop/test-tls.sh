#!/bin/bash
# TLS: vhdnbd with --tls=require/on, X.509 (with and without client
# certificates) and PSK, against libnbd's Python binding, QEMU and a raw
# client that checks the STARTTLS rules: options refused with
# NBD_REP_ERR_TLS_REQD before TLS, plaintext sent after STARTTLS discarded
# (CVE-2021-3716), nothing negotiated in the clear kept, a second STARTTLS
# refused.  An orderly end sends close_notify; PSK is accepted only with an
# (EC)DHE key exchange; a client certificate listed in ca-crl.pem is refused.
# Every transfer is verified and the image checked afterwards.
. "$top_srcdir/tests/functions.sh"
requires certtool
requires psktool
requires qemu-img
requires qemu-io
requires_py nbd
requires_py ssl

img=$TMPD/disk.vhd
qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$img" 64M

# --- throwaway credentials ---------------------------------------------------
pki=$TMPD/pki        # CA, server and client certificates (QEMU/libnbd layout)
nocert=$TMPD/nocert  # the CA only: a client without a certificate
pskdir=$TMPD/psk     # keys.psk, as QEMU's tls-creds-psk wants it
mkdir -p "$pki" "$nocert" "$pskdir"
gen() { certtool "$@" >/dev/null 2>"$TMPD/certtool.err" || fail "certtool $*: $(cat "$TMPD/certtool.err")"; }
printf 'cn = vhdnbd test CA\nca\ncert_signing_key\nexpiration_days = 2\n' >"$TMPD/ca.info"
printf 'organization = vhdnbd test\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 2\n' >"$TMPD/server.info"
printf 'organization = vhdnbd test\ncn = alice\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 2\n' >"$TMPD/client.info"
gen --generate-privkey --outfile "$TMPD/ca-key.pem"
gen --generate-self-signed --load-privkey "$TMPD/ca-key.pem" --template "$TMPD/ca.info" \
  --outfile "$pki/ca-cert.pem"
for who in server client; do
  gen --generate-privkey --outfile "$pki/$who-key.pem"
  gen --generate-certificate --load-ca-certificate "$pki/ca-cert.pem" \
    --load-ca-privkey "$TMPD/ca-key.pem" --load-privkey "$pki/$who-key.pem" \
    --template "$TMPD/$who.info" --outfile "$pki/$who-cert.pem"
done
cp "$pki/ca-cert.pem" "$nocert/"
psktool -u alice -p "$pskdir/keys.psk" >/dev/null 2>&1 || fail "psktool failed"
psktool -u alice -p "$TMPD/wrong.psk" >/dev/null 2>&1 || fail "psktool failed"

# --- clients -------------------------------------------------------------------
# client MODE CREDS PORT SEED: libnbd over TCP 127.0.0.1; writes a pattern
# (including a 4 MiB request, many TLS records), flushes, reads it back.
# Prints "ok" or "refused: ...".
cat >"$TMPD/client.py" <<'PY'
import sys, nbd
mode, creds, port, seed = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
h = nbd.NBD()
if mode == "plain":
    h.set_tls(nbd.TLS_DISABLE)
else:
    h.set_tls(nbd.TLS_REQUIRE)
    if mode == "x509":
        h.set_tls_certificates(creds)
    else:
        h.set_tls_psk_file(creds)
        h.set_tls_username("alice")
try:
    h.connect_tcp("127.0.0.1", port)
except nbd.Error as e:
    print("refused:", e.string)
    sys.exit(0)
small = bytes((seed + i) % 251 for i in range(65536))
big = bytes((seed * 7 + i) % 253 for i in range(4 << 20))
h.pwrite(small, 512 * seed)
h.pwrite(big, 8 << 20)
h.flush()
assert h.pread(len(small), 512 * seed) == small, "small read differs"
assert h.pread(len(big), 8 << 20) == big, "big read differs"
# Pipelined: many requests and payloads in flight through TLS at once.
chunks = [bytearray([(seed + k) % 256]) * (1 << 20) for k in range(16)]
wbufs = [nbd.Buffer.from_bytearray(c) for c in chunks]
for k, b in enumerate(wbufs):
    h.aio_pwrite(b, (32 + k) << 20)
while h.aio_in_flight() > 0:
    h.poll(-1)
rbufs = [nbd.Buffer(1 << 20) for _ in chunks]
for k, b in enumerate(rbufs):
    h.aio_pread(b, (32 + k) << 20)
while h.aio_in_flight() > 0:
    h.poll(-1)
for k, b in enumerate(rbufs):
    assert b.to_bytearray() == chunks[k], "pipelined read %d differs" % k
h.shutdown()
print("ok")
PY
client() { timeout 30 "$PY3" "$TMPD/client.py" "$@"; }
expect_ok() {
  local out
  out=$(client "$@" 2>&1) || fail "client $*: $out"
  [ "$out" = ok ] || fail "client $* should work, got: $out"
}
expect_refused() {
  local out
  out=$(client "$@" 2>&1) || fail "client $*: $out"
  [[ $out == refused:* ]] || fail "client $* should be refused, got: $out"
}

# raw PORT SCENARIO: a hand-written client for the STARTTLS rules (python's
# ssl module for the TLS part).  Prints one line per check.
cat >"$TMPD/raw.py" <<'PY'
import socket, ssl, struct, sys
port, scenario, pki = int(sys.argv[1]), sys.argv[2], sys.argv[3]
MAGIC = 0x49484156454F5054
REP_MAGIC = 0x3e889045565a9
class Conn:
    def __init__(self, s): self.s = s
    def recv(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise SystemExit("server closed the connection")
            b += c
        return b
    def opt(self, o, data=b"", extra=b""):
        self.s.sendall(struct.pack(">QII", MAGIC, o, len(data)) + data + extra)
    def reply(self):
        magic, o, typ, ln = struct.unpack(">QIII", self.recv(20))
        assert magic == REP_MAGIC, hex(magic)
        self.recv(ln)
        return typ
    def replies(self):  # until the final ACK or error
        types = []
        while True:
            t = self.reply()
            types.append(t)
            if t == 1 or t & 0x80000000:
                return types
c = Conn(socket.create_connection(("127.0.0.1", port)))
c.recv(18)
c.s.sendall(struct.pack(">I", 3))
go_default = struct.pack(">IH", 0, 0)
if scenario == "require":
    c.opt(7, go_default)                       # GO before TLS
    print("go-before-tls", hex(c.reply()))
    c.opt(3)                                   # LIST before TLS
    print("list-before-tls", hex(c.reply()))
else:
    c.opt(8)                                   # STRUCTURED_REPLY, in the clear
    print("structured", hex(c.reply()))
# STARTTLS, with a plaintext option glued behind it that must be dropped
# (were it kept, it would be taken as the start of the TLS handshake).
c.opt(5, extra=struct.pack(">QII", MAGIC, 3, 0))
print("starttls", hex(c.reply()))
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.load_verify_locations(pki + "/ca-cert.pem")
if scenario == "on":
    ctx.load_cert_chain(pki + "/client-cert.pem", pki + "/client-key.pem")
# Ragged EOFs raise, so a close without close_notify shows (Python sets
# OP_IGNORE_UNEXPECTED_EOF by default, which would hide it).
ctx.options &= ~getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
c.s = ctx.wrap_socket(c.s, server_hostname="localhost", suppress_ragged_eofs=False)
print("tls", c.s.version() is not None)
c.opt(5)                                       # second STARTTLS
print("starttls-again", hex(c.reply()))
if scenario == "on":
    # Structured replies were forgotten: SET_META_CONTEXT needs them.
    q = b"base:allocation"
    data = struct.pack(">I", 0) + struct.pack(">I", 1) + struct.pack(">I", len(q)) + q
    c.opt(10, data)
    print("meta-after-tls", hex(c.reply()))
c.opt(3)
print("list-in-tls", [hex(t) for t in c.replies()])
c.opt(7, go_default)
print("go-in-tls", [hex(t) for t in c.replies()])
c.s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 2, 1, 0, 0))  # NBD_CMD_DISC
c.s.settimeout(10)
try:
    print("close-notify", c.s.recv(1) == b"")
except (ssl.SSLError, ConnectionError):
    print("close-notify False")
PY
raw() { timeout 30 "$PY3" "$TMPD/raw.py" "$@" "$pki" 2>&1; }

log_has() { # log_has FILE REGEX WHAT
  grep -qE "$2" "$1" || fail "$3: no log line matching '$2' in: $(cat "$1")"
}

# --- (a, c) --tls=require with X.509, no client certificates asked ------------
start_vhdnbd_tcp "$TMPD/sock" -v -b 127.0.0.1 --tls=require \
  --tls-certificates "$pki" "$img" 2>"$TMPD/log-a"
port=$VHDNBD_PORT
expect_ok x509 "$pki" "$port" 1
log_has "$TMPD/log-a" 'client 127\.0\.0\.1:[0-9]+: TLS established, peer x509' "x509 client"
expect_ok x509 "$nocert" "$port" 2       # server-only authentication is enough
expect_refused plain "" "$port" 3
log_has "$TMPD/log-a" 'refused: TLS is required' "plaintext client"
out=$(raw "$port" require) || fail "raw client: $out"
echo "$out"
expected="go-before-tls 0x80000005
list-before-tls 0x80000005
starttls 0x1
tls True
starttls-again 0x80000003
list-in-tls ['0x2', '0x1']
go-in-tls ['0x3', '0x1']
close-notify True"
[ "$out" = "$expected" ] || fail "STARTTLS rules under --tls=require: got
$out
expected
$expected"
# The server kept serving through all that.
expect_ok x509 "$pki" "$port" 4

# --- (d) QEMU, X.509 ------------------------------------------------------------
qemu_x509=(--object "tls-creds-x509,id=tls0,dir=$pki,endpoint=client" --image-opts
  "driver=nbd,host=127.0.0.1,port=$port,tls-creds=tls0")
out=$(timeout 30 qemu-io "${qemu_x509[@]}" -c 'write -P 0xa5 16M 3M' 2>&1) ||
  fail "qemu-io write over TLS: $out"
out=$(timeout 30 qemu-io -r "${qemu_x509[@]}" -c 'read -P 0xa5 16M 3M' 2>&1) ||
  fail "qemu-io read over TLS: $out"
grep -q "Pattern verification failed" <<<"$out" && fail "qemu-io read over TLS: $out"
stop_vhdnbd

# --- (b) --tls=require with PSK -------------------------------------------------
start_vhdnbd_tcp "$TMPD/sock" -v -b 127.0.0.1 --tls=require --payload-timeout 3 \
  --tls-psk "$pskdir/keys.psk" "$img" 2>"$TMPD/log-b"
port=$VHDNBD_PORT
expect_ok psk "$pskdir/keys.psk" "$port" 5
log_has "$TMPD/log-b" 'TLS established, peer PSK identity alice' "PSK client"
expect_refused psk "$TMPD/wrong.psk" "$port" 6
log_has "$TMPD/log-b" 'client 127\.0\.0\.1:[0-9]+: TLS handshake failed' "wrong PSK"
qemu_psk=(--object "tls-creds-psk,id=tls0,dir=$pskdir,username=alice,endpoint=client"
  --image-opts "driver=nbd,host=127.0.0.1,port=$port,tls-creds=tls0")
out=$(timeout 30 qemu-io "${qemu_psk[@]}" -c 'write -P 0x3c 20M 1M' 2>&1) ||
  fail "qemu-io write over TLS-PSK: $out"
out=$(timeout 30 qemu-io -r "${qemu_psk[@]}" -c 'read -P 0x3c 20M 1M' 2>&1) ||
  fail "qemu-io read over TLS-PSK: $out"
grep -q "Pattern verification failed" <<<"$out" && fail "qemu-io read over TLS-PSK: $out"
expect_ok psk "$pskdir/keys.psk" "$port" 7
# Only (EC)DHE key exchanges: plain PSK has no forward secrecy.
pskclient() { # PRIORITY [MODE]: prints "ok KX" or "refused: ..." (see tls-psk-client.c)
  timeout 90 "$top_builddir/tls-psk-client" "$port" alice "$(cut -d: -f2 "$pskdir/keys.psk")" "$@"
}
for kx in ECDHE-PSK DHE-PSK; do
  out=$(pskclient "NORMAL:-KX-ALL:+$kx") || fail "tls-psk-client $kx: $out"
  [ "$out" = "ok $kx" ] || fail "a $kx handshake should work, got: $out"
done
out=$(pskclient "NORMAL:-KX-ALL:+PSK") || fail "tls-psk-client PSK: $out"
[[ $out == refused:* ]] || fail "a plain PSK key exchange (no DHE) was accepted: $out"
# Records that carry no data, each with a READ behind it in one TCP segment:
# a TLS 1.3 KeyUpdate (the READ once waited for the client's next bytes) and
# a TLS 1.2 warning alert (it once closed the connection).
out=$(pskclient NORMAL:-KX-ALL:+ECDHE-PSK keyupdate) || fail "a READ behind a KeyUpdate: $out"
[ "$out" = "answered TLS1.3" ] || fail "a READ behind a KeyUpdate: $out"
out=$(pskclient NORMAL:-KX-ALL:+ECDHE-PSK:-VERS-TLS1.3 alert) ||
  fail "a READ behind a warning alert: $out"
[ "$out" = "answered TLS1.2" ] || fail "a READ behind a warning alert: $out"
stop_vhdnbd

# --- (e) --tls=on --tls-verify-peer ----------------------------------------------
start_vhdnbd_tcp "$TMPD/sock" -v -b 127.0.0.1 --tls=on --tls-verify-peer \
  --tls-certificates "$pki" "$img" 2>"$TMPD/log-e"
port=$VHDNBD_PORT
expect_ok x509 "$pki" "$port" 8
log_has "$TMPD/log-e" 'TLS established, peer x509 .*CN=alice' "client certificate"
expect_refused x509 "$nocert" "$port" 9
log_has "$TMPD/log-e" 'client 127\.0\.0\.1:[0-9]+: TLS handshake failed' "no client certificate"
out=$(raw "$port" on) || fail "raw client: $out"
echo "$out"
expected="structured 0x1
starttls 0x1
tls True
starttls-again 0x80000003
meta-after-tls 0x80000003
list-in-tls ['0x2', '0x1']
go-in-tls ['0x3', '0x1']
close-notify True"
[ "$out" = "$expected" ] || fail "STARTTLS rules under --tls=on: got
$out
expected
$expected"
# TLS is optional here: a plaintext client works too.
expect_ok plain "" "$port" 10
stop_vhdnbd

# --- (f) a revocation list in the certificates directory -------------------------
# mallory's certificate is signed by the same CA but listed in ca-crl.pem.
crldir=$TMPD/pki-crl
mkdir -p "$crldir" "$TMPD/mallory"
cp "$pki"/ca-cert.pem "$pki"/server-cert.pem "$pki"/server-key.pem "$crldir/"
cp "$pki/ca-cert.pem" "$TMPD/mallory/"
sed 's/cn = alice/cn = mallory/' "$TMPD/client.info" >"$TMPD/mallory.info"
gen --generate-privkey --outfile "$TMPD/mallory/client-key.pem"
gen --generate-certificate --load-ca-certificate "$pki/ca-cert.pem" \
  --load-ca-privkey "$TMPD/ca-key.pem" --load-privkey "$TMPD/mallory/client-key.pem" \
  --template "$TMPD/mallory.info" --outfile "$TMPD/mallory/client-cert.pem"
printf 'crl_next_update = 2\ncrl_number = 1\n' >"$TMPD/crl.info"
gen --generate-crl --load-ca-certificate "$pki/ca-cert.pem" --load-ca-privkey "$TMPD/ca-key.pem" \
  --load-certificate "$TMPD/mallory/client-cert.pem" --template "$TMPD/crl.info" \
  --outfile "$crldir/ca-crl.pem"
port=$(free_tcp_port)
start_vhdnbd "$TMPD/sock" -v -p "$port" -b 127.0.0.1 --tls=require --tls-verify-peer \
  --tls-certificates "$crldir" "$img" 2>"$TMPD/log-f"
expect_ok x509 "$pki" "$port" 11
expect_refused x509 "$TMPD/mallory" "$port" 12
log_has "$TMPD/log-f" 'client 127\.0\.0\.1:[0-9]+: TLS handshake failed' "revoked client certificate"
stop_vhdnbd
# A revocation list that does not parse stops the start, naming the file.
echo garbage >"$crldir/ca-crl.pem"
out=$(timeout 30 "$VHDNBD" -p "$(free_tcp_port)" -b 127.0.0.1 --tls=require \
  --tls-certificates "$crldir" "$img" 2>&1) && fail "vhdnbd started with a garbled ca-crl.pem"
grep -q "ca-crl.pem" <<<"$out" || fail "the error does not name ca-crl.pem: $out"

# --- startup errors: one line, exit status 1 (2 for usage errors) ---------------
startup() { # startup RC WHAT ARGS...
  local want=$1 what=$2 rc=0
  shift 2
  # Bounded: a server that accepts what it should refuse starts serving.
  timeout 20 "$VHDNBD" -U "$TMPD/sock2" "$@" "$img" >/dev/null 2>"$TMPD/err" || rc=$?
  [ "$rc" -ne 124 ] || fail "$what: the server started instead of refusing"
  [ "$rc" -eq "$want" ] || fail "$what: exit status $rc, expected $want: $(cat "$TMPD/err")"
  [ "$(wc -l <"$TMPD/err")" -eq 1 ] || fail "$what: expected a one-line error: $(cat "$TMPD/err")"
}
startup 1 "missing certificate directory" --tls=on --tls-certificates "$TMPD/none"
grep -q "$TMPD/none" "$TMPD/err" || fail "the error does not name the directory: $(cat "$TMPD/err")"
startup 1 "missing PSK file" --tls=on --tls-psk "$TMPD/none.psk"
# GnuTLS reads the key file only per handshake: the server reads it first.
mkdir "$TMPD/dir.psk"
startup 1 "a directory as the PSK file" --tls=on --tls-psk "$TMPD/dir.psk"
grep -q "$TMPD/dir.psk: Is a directory" "$TMPD/err" || fail "PSK directory: $(cat "$TMPD/err")"
printf 'alice:0123\nno key here\n' >"$TMPD/bad.psk"
startup 1 "a PSK file with a line that is not IDENTITY:HEXKEY" --tls=on --tls-psk "$TMPD/bad.psk"
grep -q "$TMPD/bad.psk:2:" "$TMPD/err" || fail "bad PSK line not named: $(cat "$TMPD/err")"
: >"$TMPD/empty.psk"
startup 1 "an empty PSK file" --tls=on --tls-psk "$TMPD/empty.psk"
mkdir "$TMPD/nokey"
cp "$pki/server-cert.pem" "$TMPD/nokey/"
startup 1 "a certificate directory without server-key.pem" --tls=on --tls-certificates "$TMPD/nokey"
grep -q "$TMPD/nokey/server-key.pem: No such file" "$TMPD/err" ||
  fail "the error does not name server-key.pem: $(cat "$TMPD/err")"
startup 1 "--tls-verify-peer without ca-cert.pem" --tls=on --tls-verify-peer \
  --tls-certificates "$pskdir"
startup 2 "--tls=on without credentials" --tls=on
startup 2 "a bad --tls mode" --tls=maybe

"$VHDIMG" check "$img" || fail "vhdimg check failed after the TLS writes"
echo PASS
