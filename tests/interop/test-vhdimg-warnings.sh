#!/bin/bash
# vhdimg resize, compact and rebase open an image with its chain, and say
# what opening found that does not stop them (a trailing footer damaged and
# the copy at 0 used, a parent's locator past the end of its file), once
# each, on stderr, as info and commit do; they still do their work.  check
# lists each once too, though it opens a child twice.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
cd "$TMPD"

# damage_footer FILE: a byte of the trailing footer's reserved area changed,
# so its checksum no longer holds (the copy at offset 0 stays good).
damage_footer() {
  local len
  len=$(stat -c %s "$1")
  printf '\x5a' | dd of="$1" bs=1 seek=$((len - 100)) conv=notrunc status=none
}
# warned LOG WHAT WORDS...: LOG has exactly one warning line with every word.
warned() {
  local log=$1 what=$2 n
  shift 2
  n=$(grep "warning" "$log" | grep -F "$1" | grep -cF "$2" || true)
  [ "$n" -eq 1 ] || fail "$what: $n warnings about $1 ($2), not 1: $(cat "$log")"
}

fresh_chain() {
  rm -f base.vhd child.vhd
  qemu-img create -q -f vpc -o subformat=dynamic base.vhd 4M || fail "qemu-img create"
  qemu-io -f vpc -c "write -P 0x41 0 1M" base.vhd >/dev/null || fail "qemu-io write"
  "$VHDIMG" create -b base.vhd child.vhd >/dev/null || fail "vhdimg create -b"
  cp base.vhd clean.vhd
  damage_footer base.vhd
  damage_footer child.vhd
}

fresh_chain
"$VHDIMG" resize child.vhd 8M >out 2>err || fail "resize: $(cat err)"
warned err "resize" "base.vhd" "footer copy"
warned err "resize" "child.vhd" "footer copy"

fresh_chain
"$VHDIMG" compact child.vhd >out 2>err || fail "compact: $(cat err)"
warned err "compact" "base.vhd" "footer copy"
warned err "compact" "child.vhd" "footer copy"

fresh_chain
qemu-img convert -q -f vpc -O vpc -o subformat=dynamic clean.vhd other.vhd || fail "qemu-img convert"
"$VHDIMG" rebase -b other.vhd child.vhd >out 2>err || fail "rebase: $(cat err)"
warned err "rebase" "base.vhd" "footer copy"
warned err "rebase" "child.vhd" "footer copy"
"$VHDIMG" check other.vhd >/dev/null 2>&1 || fail "the new parent has findings of its own"

# check opens the child alone, then with its chain: each finding once.
fresh_chain
rc=0
"$VHDIMG" check child.vhd >err 2>&1 || rc=$?
[ $rc -eq 1 ] || fail "check of a child with a damaged footer exited $rc, not 1: $(cat err)"
warned err "check" "child.vhd" "footer copy"
warned err "check" "base.vhd" "footer copy"

echo "PASS: resize, compact and rebase say once what opening the chain found"
