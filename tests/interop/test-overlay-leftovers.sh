#!/bin/bash
# Discard overlay children that killed servers left behind (a server killed
# between creating a child and opening it leaves the file).  Before its
# first child in a directory, the next server removes those whose server is
# gone, and those that hold its own PID from an earlier life (as after a
# reboot, where a name that PID's child once had used to refuse the first
# client).  Every other file stays: a live process's child in the making,
# persistent children, names it does not know.  Its clients are served.
. "$top_srcdir/tests/functions.sh"
requires nbdinfo

img=$TMPD/base.vhd
"$VHDIMG" create "$img" 64M >/dev/null || fail "vhdimg create failed"
dir=$TMPD/overlays
mkdir -p "$dir"
dead=
for _ in 1 2 3 4 5; do
  pid=$(sh -c 'echo $$')
  if ! kill -0 "$pid" 2>/dev/null; then dead=$pid; break; fi
done
[ -n "$dead" ] || fail "found no PID without a process"

gone=(d-ov-$dead-0123abcd-1.vhd d-ov-$dead-3.vhd)
kept=(d-ov-$$-89abcdef-1.vhd d-other-$$-4.vhd d-x.vhd "p-ov-k-$(printf 'ab%.0s' {1..32}).vhd"
  notes.txt d-ov-$dead-0123abcd-1.vhd.new)
for f in "${gone[@]}" "${kept[@]}"; do cp "$img" "$dir/$f"; done

# The server's own PID is known only once it runs: a wrapper plants two
# children of an earlier server of that PID (older names without a token,
# and a token that is not this server's), then becomes the server.
cat >"$TMPD/vhdnbd-wrapper" <<EOF
#!/bin/bash
cp "$img" "$dir/d-ov-\$\$-1.vhd" && cp "$img" "$dir/d-ov-\$\$-00000000-2.vhd" || exit 1
exec "$VHDNBD" "\$@"
EOF
chmod +x "$TMPD/vhdnbd-wrapper"
log=$TMPD/vhdnbd.log
VHDNBD=$TMPD/vhdnbd-wrapper start_vhdnbd "$TMPD/s" -e "ov=$img,overlay=discard,overlay-dir=$dir" \
  2>"$log"
own=(d-ov-$VHDNBD_PID-1.vhd d-ov-$VHDNBD_PID-00000000-2.vhd)
for f in "${own[@]}"; do [ -e "$dir/$f" ] || fail "the wrapper did not plant $f"; done

for i in 1 2 3; do
  nbdinfo --size "nbd+unix:///ov?socket=$TMPD/s" >"$TMPD/size" 2>"$TMPD/err" ||
    fail "client $i refused: $(cat "$TMPD/err")"
  [ "$(cat "$TMPD/size")" -ge $((64 << 20)) ] || fail "client $i: size $(cat "$TMPD/size")"
done
for f in "${gone[@]}" "${own[@]}"; do
  [ ! -e "$dir/$f" ] || fail "leftover $f was not removed"
  grep -qF "overlay directory $dir: removed $f, a discard child its server left" "$log" ||
    fail "no log line for removing $f: $(cat "$log")"
done
for f in "${kept[@]}"; do [ -e "$dir/$f" ] || fail "$f was removed, but is no leftover"; done
n=$(ls -A "$dir" | wc -l)
[ "$n" -eq "${#kept[@]}" ] || fail "$dir holds $n files, expected ${#kept[@]}: $(ls -A "$dir")"
stop_vhdnbd
echo "PASS: leftovers removed (${#gone[@]} of gone servers, ${#own[@]} of an earlier life), ${#kept[@]} files kept"
