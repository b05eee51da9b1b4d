#!/bin/bash
# What a client is told when the server refuses an option: every
# NBD_REP_ERR_* reply of the handshake carries a message in the client's
# terms (the export it named, the option, what to do), and none names a
# server path, an image file or a file offset; the server's log keeps the
# details.  A raw client walks through every refusal the handshake has.
. "$top_srcdir/tests/functions.sh"

mkdir -p "$TMPD/images"
for x in open secret; do
  "$VHDIMG" create -t dynamic "$TMPD/images/$x-image.vhd" 1M >/dev/null || fail "vhdimg create"
done
cat >"$TMPD/conf" <<CONF
[export open]
image = $TMPD/images/open-image.vhd
[export secret]
image = $TMPD/images/secret-image.vhd
allow = uid:4321
CONF
start_vhdnbd "$TMPD/sock" -C "$TMPD/conf" -v 2>"$TMPD/log"

timeout 60 "$PY3" - "$TMPD/sock" >"$TMPD/replies" 2>&1 <<'PY' || fail "raw client: $(cat "$TMPD/replies")"
import sys, nbdraw
from nbdraw import name_data as name, meta_data as meta
c = nbdraw.Raw.unix(sys.argv[1])
def option(what, o, data=b""):
    c.send_option(o, data)
    while True:
        _, typ, payload = c.reply()
        if typ & 0x80000000:
            print(f"{what}\t{typ:#x}\t{payload.decode('utf-8', 'replace')}")
            return
        if typ == nbdraw.REP_ACK:  # this one was not refused
            raise SystemExit(f"{what}: not refused")
c.newstyle()
option("list-with-data", 3, b"x")
option("info-short", 6, b"\0\0")
option("info-unknown", 6, name(b"nope"))
option("info-refused", 6, name(b"secret"))
option("go-refused", 7, name(b"secret"))
option("go-bad-infos", 7, name(b"open", b"\0\5\0\1"))
option("meta-unstructured", 10, meta(b"open", b"base:allocation"))
option("starttls-off", 5)
option("unknown-option", 99)
option("too-big", 9, b"\0" * (64 * 1024 + 1))
option("structured-data", 8, b"x")
assert c.option(nbdraw.OPT_STRUCTURED_REPLY)[0] == nbdraw.REP_ACK
option("structured-twice", 8)
option("meta-short", 10, b"\0\0\0\4ope")
option("meta-unknown", 9, meta(b"nope"))
option("meta-refused", 10, meta(b"secret", b"base:allocation"))
c.send_option(nbdraw.OPT_ABORT)
PY

n=$(wc -l <"$TMPD/replies")
[ "$n" -eq 15 ] || fail "expected 15 refusals, got $n: $(cat "$TMPD/replies")"
while IFS=$'\t' read -r what typ msg; do
  [ -n "$msg" ] || fail "$what ($typ): no message"
  case $msg in
  *"$TMPD"* | *images/* | *.vhd* | *-image* | *0x* | *offset*)
    fail "$what ($typ): the message names server internals: $msg" ;;
  esac
  LC_ALL=C grep -q '^[[:print:]]*$' <<<"$msg" || fail "$what ($typ): unprintable message: $msg"
done <"$TMPD/replies"
# Some in full: what the client can act on.
expect_reply() {
  grep -qxF "$1" "$TMPD/replies" || fail "no reply '$1' in: $(cat "$TMPD/replies")"
}
tab=$'\t'
expect_reply "info-unknown${tab}0x80000006${tab}NBD_OPT_INFO: export 'nope' not found"
expect_reply "info-refused${tab}0x80000002${tab}export 'secret' not available to this client"
expect_reply "go-refused${tab}0x80000002${tab}export 'secret' not available to this client"
expect_reply "meta-refused${tab}0x80000002${tab}export 'secret' not available to this client"
expect_reply "starttls-off${tab}0x80000002${tab}TLS is not configured on this server"
expect_reply "too-big${tab}0x80000009${tab}option data of 65537 bytes is too large"
# ...while the log names the image and the rules.
grep -q "client #[0-9]* (unix) (uid 0, gid 0): NBD_OPT_GO: export 'secret' refused: matches no rule of its allow list (uid:4321)" \
  "$TMPD/log" || fail "the log does not say who was refused 'secret' and why: $(cat "$TMPD/log")"
stop_vhdnbd
echo PASS
