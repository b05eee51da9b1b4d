#!/bin/bash
# vhdnbd --check-config: a good configuration (several exports, a
# differencing chain, command-line additions) passes with one line per export
# giving name, image, type, size, ro/rw and the parents in order; each kind of
# mistake fails with status 1 and names the file and line, key, export or
# image at fault (a key set twice in a section names both lines, while bind
# and allow may repeat); every error of a file is reported, not just the
# first; a duplicate export name or key also stops a normal startup; and the
# check neither takes the image lock (it passes while a server has the images open for
# writing) nor writes, binds, or creates a pidfile.
. "$top_srcdir/tests/functions.sh"

cd "$TMPD"
"$VHDIMG" create -t fixed fixed.vhd 4M >/dev/null
"$VHDIMG" create -t dynamic base.vhd 32M >/dev/null
"$VHDIMG" create -b base.vhd mid.vhd >/dev/null
"$VHDIMG" create -b mid.vhd child.vhd >/dev/null
"$VHDIMG" create -t dynamic extra.vhd 8M >/dev/null

vsize() { "$VHDIMG" info --json "$1" | "$PY3" -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])'; }
fixed_size=$(vsize fixed.vhd)
chain_size=$(vsize child.vhd)
extra_size=$(vsize extra.vhd)

cat >good.conf <<EOF
[global]
handshake-timeout = 20
max-inflight = 512M
read-only = no

[export]
image = $TMPD/fixed.vhd

[export chain]
image = $TMPD/child.vhd
description = "three levels"

[export base]
image = $TMPD/base.vhd
read-only = yes
EOF

# check ARGS...: runs the check; sets rc, out, err.  Bounded: a check that
# goes on to serve never exits.
check() {
  rc=0
  timeout 30 "$VHDNBD" --check-config "$@" >"$TMPD/out" 2>"$TMPD/err" || rc=$?
  [ "$rc" -ne 124 ] || fail "vhdnbd --check-config $*: still running after 30 s (serving?)"
  out=$(cat "$TMPD/out")
  err=$(cat "$TMPD/err")
}
# line_for NAME: the output line of export NAME.
line_for() { grep -F "export \"$1\"" "$TMPD/out" || true; }
# expect_line NAME PREFIX SIZE SUFFIX: export NAME's line is PREFIX, a
# human-readable size, SIZE in bytes, SUFFIX.
expect_line() {
  local line
  line=$(line_for "$1")
  [[ $line == "$2"* ]] && [[ $line == *" ($3 bytes), $4" ]] &&
    [[ ${line#"$2"} =~ ^[0-9.]+\ [KMGT]?i?B\ \( ]] ||
    fail "export '$1': expected '$2<size> ($3 bytes), $4', got '$line' in: $out $err"
}

# --- a good configuration ---------------------------------------------------
images="fixed.vhd base.vhd mid.vhd child.vhd extra.vhd"
# shellcheck disable=SC2086
sums() { sha256sum $images; stat -c '%n %Y %s' $images; }
sums >sums.before
check -C good.conf -e "extra=$TMPD/extra.vhd,ro" -U "$TMPD/sock" --pidfile "$TMPD/pid"
[ "$rc" -eq 0 ] || fail "good configuration: status $rc: $err"
[ -z "$err" ] || fail "good configuration: messages on stderr: $err"
expect_line "" "export \"\" (default): $TMPD/fixed.vhd, fixed, " "$fixed_size" read-write
expect_line chain "export \"chain\": $TMPD/child.vhd, differencing, " "$chain_size" \
  "read-write, parents $TMPD/mid.vhd -> $TMPD/base.vhd"
expect_line base "export \"base\": $TMPD/base.vhd, dynamic, " "$chain_size" read-only
expect_line extra "export \"extra\": $TMPD/extra.vhd, dynamic, " "$extra_size" read-only
[ "$(grep -c '^export ' out)" -eq 4 ] || fail "expected 4 export lines: $out"
[ "$(tail -n 1 out)" = "configuration OK: 4 exports" ] || fail "no final OK line: $out"
[ ! -e "$TMPD/sock" ] || fail "the check created the Unix socket"
[ ! -e "$TMPD/pid" ] || fail "the check wrote the pidfile"
sums | cmp -s - sums.before || fail "the check changed an image: $(sums | diff sums.before - || true)"
echo "ok: a good configuration passes and lists every export"

# -r and the bare IMAGE argument are the server's settings too.
check -r "$TMPD/fixed.vhd"
[ "$rc" -eq 0 ] || fail "-r IMAGE: status $rc: $err"
line_for "" | grep -q ", read-only$" || fail "-r IMAGE: not shown read-only: $out"

# --- an image this process may not write ------------------------------------
# Checked read-only, it passes; a read-write export of it is refused, as the
# server would refuse it.  (Root writes despite permissions: an immutable
# file stops it, where the file system allows one.)
"$VHDIMG" create -t dynamic locked-down.vhd 8M >/dev/null
chmod 444 locked-down.vhd
if [ -w locked-down.vhd ] && command -v chattr >/dev/null &&
  chattr +i locked-down.vhd 2>/dev/null; then
  cleanup_fn chattr -i "$TMPD/locked-down.vhd"
fi
if [ -w locked-down.vhd ]; then
  echo "PARTIAL: cannot make an image unwritable here: unwritable images not checked"
else
  check -e "ro=$TMPD/locked-down.vhd,ro"
  [ "$rc" -eq 0 ] || fail "a read-only export of an unwritable image: status $rc: $err"
  check -e "rw=$TMPD/locked-down.vhd"
  [ "$rc" -eq 1 ] || fail "a read-write export of an unwritable image: status $rc, expected 1"
  grep -q "export 'rw': $TMPD/locked-down.vhd: cannot be written, but the export is read-write" err ||
    fail "a read-write export of an unwritable image: $err"
  echo "ok: unwritable image: fine read-only, refused read-write"
fi

# --- no lock: the check passes while a server has the images open -----------
start_vhdnbd "$TMPD/srv.sock" -C good.conf
check -C good.conf
[ "$rc" -eq 0 ] || fail "check while the server has good.conf's images open: status $rc: $err"
stop_vhdnbd
# A server writing the base of the chain: the parents are not locked either.
start_vhdnbd "$TMPD/srv.sock" "$TMPD/base.vhd"
check -e "chain=$TMPD/child.vhd"
[ "$rc" -eq 0 ] || fail "check of a chain whose base is served read-write: status $rc: $err"
stop_vhdnbd
echo "ok: no image lock taken"
sums >sums.before # the server may have written

# --- each mistake: status 1, the culprit named ------------------------------
# bad_conf WHAT REGEX [ARGS...]: good.conf with WHAT's lines appended
# (stdin) fails the check with status 1 and an error matching REGEX.
bad_conf() {
  local what=$1 re=$2
  shift 2
  { cat good.conf; cat; } >bad.conf
  check -C bad.conf "$@"
  [ "$rc" -eq 1 ] || fail "$what: status $rc, expected 1: $err"
  grep -qE -- "$re" "$TMPD/err" || fail "$what: no error matching '$re' in: $err"
  grep -q "configuration check failed" "$TMPD/err" || fail "$what: no final failure line: $err"
  ! grep -q "configuration OK" "$TMPD/out" || fail "$what: reported OK: $out"
}
n=$(($(wc -l <good.conf) + 1)) # the line number of the first appended line

bad_conf "an unknown key" "bad\\.conf:$((n + 1)): unknown key 'no-such-key'" <<EOF
[global]
no-such-key = 1
EOF
bad_conf "port = abc" "bad\\.conf:$((n + 1)): invalid value for 'port': 'abc'" <<EOF
[global]
port = abc
EOF
bad_conf "max-inflight = 12Q" "bad\\.conf:$((n + 1)): invalid value for 'max-inflight': '12Q'" <<EOF
[global]
max-inflight = 12Q
EOF
bad_conf "a missing image" \
  "bad\\.conf:$n: export 'gone': $TMPD/nothing-here\\.vhd: No such file or directory" <<EOF
[export gone]
image = $TMPD/nothing-here.vhd
EOF
bad_conf "a duplicate export in the file" \
  "bad\\.conf:$n: export 'chain' defined twice \\(first at bad\\.conf:[0-9]+\\)" <<EOF
[export chain]
image = $TMPD/extra.vhd
EOF
bad_conf "a key twice in an export" \
  "bad\\.conf:$((n + 3)): 'image' already set on line $((n + 1)) in \\[export dupkey\\]" <<EOF
[export dupkey]
image = $TMPD/extra.vhd
description = two images
image = $TMPD/fixed.vhd
EOF
bad_conf "a boolean twice in an export" \
  "bad\\.conf:$((n + 3)): 'read-only' already set on line $((n + 2)) in \\[export ro2\\]" <<EOF
[export ro2]
image = $TMPD/extra.vhd
read-only = yes
read-only = no
EOF
# [global] may be split, but a key in both parts is set twice all the same.
bad_conf "a key twice in [global]" \
  "bad\\.conf:$((n + 1)): 'handshake-timeout' already set on line 2 in \\[global\\]" <<EOF
[global]
handshake-timeout = 30
EOF
bad_conf "an export in the file and on the command line" \
  "export 'base' given twice: by bad\\.conf:[0-9]+ and by the command line" \
  -e "base=$TMPD/extra.vhd" </dev/null
bad_conf "a second default export" \
  "export '' given twice: by bad\\.conf:[0-9]+ and by the command line" \
  "$TMPD/extra.vhd" </dev/null

# A differencing image whose parent is gone.
"$VHDIMG" create -t dynamic lost-parent.vhd 8M >/dev/null
"$VHDIMG" create -b lost-parent.vhd orphan.vhd >/dev/null
rm lost-parent.vhd
bad_conf "a missing parent" \
  "bad\\.conf:$n: export 'orphan': $TMPD/orphan\\.vhd: parent .*lost-parent\\.vhd.* not found" <<EOF
[export orphan]
image = $TMPD/orphan.vhd
EOF
echo "ok: unknown key, bad values, missing image and parent, duplicates"

# The keys whose values add up may repeat, in [global] and in an export.
cat >repeat.conf <<EOF
[global]
bind = 127.0.0.1
bind = ::1
allow = 127.0.0.1
allow = ::1
[export rep]
image = $TMPD/extra.vhd
allow = 127.0.0.1
allow = uid:0
EOF
check -C repeat.conf
[ "$rc" -eq 0 ] || fail "bind and allow repeated: status $rc: $err"
echo "ok: bind and allow may repeat"

# TLS credentials, loaded as the server loads them.
mkdir -p pki-empty pki-nokey pskdir.psk
printf 'dummy\n' >pki-nokey/server-cert.pem
printf 'alice:00112233445566778899aabbccddeeff\n' >keys.psk
printf 'alice 0011\n' >garbled.psk
bad_conf "tls = on, certificate directory missing" "$TMPD/no-pki/server-cert\\.pem: No such file" <<EOF
[global]
tls = on
tls-certificates = $TMPD/no-pki
EOF
bad_conf "tls = require, server-key.pem missing" "$TMPD/pki-nokey/server-key\\.pem: No such file" <<EOF
[global]
tls = require
tls-certificates = $TMPD/pki-nokey
EOF
bad_conf "tls = on, PSK file missing" "$TMPD/none\\.psk: No such file" <<EOF
[global]
tls = on
tls-psk = $TMPD/none.psk
EOF
bad_conf "tls = on, PSK file a directory" "$TMPD/pskdir\\.psk: Is a directory" <<EOF
[global]
tls = on
tls-psk = $TMPD/pskdir.psk
EOF
bad_conf "tls = require, PSK file garbled" "$TMPD/garbled\\.psk:1: expected IDENTITY:HEXKEY" <<EOF
[global]
tls = require
tls-psk = $TMPD/garbled.psk
EOF
check -C good.conf --tls=require --tls-psk keys.psk
[ "$rc" -eq 0 ] || fail "a good PSK file: status $rc: $err"
grep -q "^tls require: pre-shared keys from keys.psk" out || fail "no TLS line: $out"

# Unreadable files: as root, permissions do not stop reads; check as
# another user when one can run the build, else say so.
chmod 000 keys.psk
unreadable="tls = on, PSK file unreadable"
if [ "$(id -u)" -ne 0 ]; then
  bad_conf "$unreadable" "keys\\.psk: Permission denied" --tls=on --tls-psk keys.psk </dev/null
elif chmod o+x "$TMPD" && command -v setpriv >/dev/null &&
  setpriv --reuid=nobody --regid=nogroup --clear-groups "$VHDNBD" --version >/dev/null 2>&1 &&
  setpriv --reuid=nobody --regid=nogroup --clear-groups test -r "$TMPD/fixed.vhd"; then
  rc=0
  setpriv --reuid=nobody --regid=nogroup --clear-groups "$VHDNBD" --check-config -r \
    --tls=on --tls-psk "$TMPD/keys.psk" "$TMPD/fixed.vhd" >/dev/null 2>"$TMPD/err" || rc=$?
  [ "$rc" -eq 1 ] || fail "$unreadable: status $rc, expected 1: $(cat "$TMPD/err")"
  grep -q "keys\\.psk: Permission denied" "$TMPD/err" || fail "$unreadable: $(cat "$TMPD/err")"
else
  echo "PARTIAL: running as root and cannot run the build as nobody: '$unreadable' not checked"
fi
chmod 600 keys.psk
echo "ok: TLS files missing, unreadable or garbled"

# --- every error of a file is reported --------------------------------------
cat >many.conf <<EOF
[global]
port = abc
bogus = 1
[export a]
image = $TMPD/missing-a.vhd
[export b]
image = $TMPD/fixed.vhd
EOF
check -C many.conf
[ "$rc" -eq 1 ] || fail "several errors: status $rc: $err"
for re in "many\\.conf:2: invalid value for 'port'" "many\\.conf:3: unknown key 'bogus'" \
  "many\\.conf:4: export 'a': .*missing-a\\.vhd"; do
  grep -qE "$re" err || fail "several errors: '$re' not reported in: $err"
done
[ -n "$(line_for b)" ] || fail "several errors: the good export b was not checked: $out"
echo "ok: every error reported"

# --- command-line mistakes fail the check with 1 (usage errors are 2 otherwise)
check --max-inflight 12Q "$TMPD/fixed.vhd"
[ "$rc" -eq 1 ] || fail "--max-inflight 12Q: status $rc, expected 1"
grep -q "max-inflight.*12Q" err || fail "--max-inflight 12Q: $err"
check -e "x=$TMPD/nothing-here.vhd"
[ "$rc" -eq 1 ] || fail "-e with a missing image: status $rc, expected 1"
grep -q "export 'x': $TMPD/nothing-here.vhd: No such file" err || fail "-e missing image: $err"

# --- normal startup refuses duplicates too (status 2, the same message) ------
{ cat good.conf; printf '[export chain]\nimage = %s\n' "$TMPD/extra.vhd"; } >dup.conf
{ cat good.conf; printf 'read-only = no\n'; } >dupkey.conf
for args in "-C dup.conf" "-C good.conf -e base=$TMPD/extra.vhd" "-C dupkey.conf"; do
  rc=0
  # shellcheck disable=SC2086 # the words of args are the arguments
  timeout 20 "$VHDNBD" -U "$TMPD/dup.sock" $args >/dev/null 2>"$TMPD/err" || rc=$?
  [ "$rc" -ne 124 ] || fail "vhdnbd $args: started despite a duplicate export"
  [ "$rc" -eq 2 ] || fail "vhdnbd $args: status $rc, expected 2: $(cat "$TMPD/err")"
  grep -qE "defined twice|given twice|'read-only' already set on line" "$TMPD/err" ||
    fail "vhdnbd $args: $(cat "$TMPD/err")"
done
echo "ok: startup refuses duplicate export names and keys"

sums | cmp -s - sums.before || fail "the checks changed an image: $(sums | diff sums.before - || true)"
echo PASS
