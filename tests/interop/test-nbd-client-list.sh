#!/bin/bash
# nbd-client -l (the Linux nbd-client's export listing, which needs no kernel
# module) against vhdnbd on TCP 127.0.0.1: every -e export is listed.
. "$top_srcdir/tests/functions.sh"
requires nbd-client
requires qemu-img

sock=$TMPD/sock
for name in first second; do
  qemu-img create -q -f vpc -o subformat=dynamic,force_size=on "$TMPD/$name.vhd" 1M
done

start_vhdnbd_tcp "$sock" -b 127.0.0.1 -e "first=$TMPD/first.vhd" \
  -e "second=$TMPD/second.vhd,ro"
port=$VHDNBD_PORT

out=$(timeout 20 nbd-client -l 127.0.0.1 "$port" 2>&1) || fail "nbd-client -l: $out"
echo "$out"
grep -qx 'first' <<<"$out" || fail "nbd-client -l does not list 'first'"
grep -qx 'second' <<<"$out" || fail "nbd-client -l does not list 'second'"
stop_vhdnbd
echo PASS
