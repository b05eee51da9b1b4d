#!/bin/bash
# Which file a differencing child's parent is, when the child is reached
# through a symbolic link, when a locator's name leads back to the child,
# and when it names something that is not a regular file.
#  1. A child linked into another directory that holds a copy of its parent
#     (same unique id, as an exported template copy has): its relative
#     locator is measured from the real child's directory, so the server,
#     commit (the data goes into the real parent) and info all take the
#     real parent, never the copy beside the link.  commit --remove through
#     the link deletes the real child, then the link.
#  2. rebase through a link writes the relative locator from the real
#     child's directory: opened by its real path, the child finds the new
#     parent by that locator alone.
#  3. vm/disk.vhd over tpl/disk.vhd, the child moved: the absolute
#     locator's last component beside the child is the child itself; the
#     search goes on to the absolute path.  With the parent gone the error
#     says "not found", not that the image names itself.
#  4. A FIFO where the parent was: refused at once as not a regular file
#     (opening it would block), the image named as a FIFO too.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-io
WRITE_HELPER=$top_builddir/vhd-write-helper
requires_write_helper
cd "$TMPD"
M=1048576

# pattern FILE OFF LEN BYTE: the image's chain reads BYTE there (qemu-io
# through vhdnbd: QEMU's vpc driver knows no differencing images).
reads() {
  local img=$1 off=$2 len=$3 byte=$4
  start_vhdnbd "$TMPD/r.sock" -r "$img"
  qemu-io -f raw -r -c "read -P $byte $off $len" "nbd+unix:///?socket=$TMPD/r.sock" >qio.out 2>&1
  local rc=$?
  stop_vhdnbd
  grep -q "Pattern verification failed" qio.out && rc=1
  return $rc
}

# 1.
mkdir -p vms srv
"$VHDIMG" create vms/base.vhd 16M >/dev/null || fail "create base"
"$WRITE_HELPER" vms/base.vhd 0 2M 0x11 || fail "writing base"
cp vms/base.vhd srv/base.vhd
"$VHDIMG" create -b vms/base.vhd vms/child.vhd >/dev/null || fail "create child"
ln -s "$TMPD/vms/child.vhd" srv/child.vhd
"$WRITE_HELPER" vms/base.vhd $M $M 0x55 || fail "writing base again"  # the copy keeps 0x11
"$VHDIMG" info srv/child.vhd >info.out 2>&1 || fail "info through the link: $(cat info.out)"
grep -q "^  1: $TMPD/vms/base.vhd " info.out ||
  fail "through the link, the chain is not the real parent's: $(cat info.out)"
reads srv/child.vhd $M $M 0x55 || fail "served through the link, the child reads the copy"
"$WRITE_HELPER" vms/child.vhd 0 $M 0xab || fail "writing the child"
"$VHDIMG" commit srv/child.vhd >commit.out 2>&1 || fail "commit through the link: $(cat commit.out)"
grep -q "committed into $TMPD/vms/base.vhd" commit.out ||
  fail "commit does not say it wrote into the real parent: $(cat commit.out)"
qemu-io -f vpc -r -c "read -P 0xab 0 $M" vms/base.vhd | grep -q "Pattern verification failed" &&
  fail "the commit's data is not in the real parent"
qemu-io -f vpc -r -c "read -P 0x11 0 2M" srv/base.vhd | grep -q "Pattern verification failed" &&
  fail "the commit wrote into the copy beside the link"
reads vms/child.vhd 0 $M 0xab || fail "the emptied child does not read the committed data"
"$WRITE_HELPER" vms/child.vhd 0 4096 0xcd || fail "writing the child again"
"$VHDIMG" commit -r srv/child.vhd >commit.out 2>&1 || fail "commit -r through the link: $(cat commit.out)"
[ ! -e vms/child.vhd ] || fail "commit -r through a link left the real child"
[ ! -L srv/child.vhd ] || fail "commit -r through a link left the link"
qemu-io -f vpc -r -c "read -P 0xcd 0 4096" vms/base.vhd | grep -q "Pattern verification failed" &&
  fail "commit -r: the data is not in the real parent"

# 2.
mkdir -p w/x/srv r/vms r/base
"$VHDIMG" create r/vms/old.vhd 16M >/dev/null || fail "create old"
"$VHDIMG" create -b r/vms/old.vhd r/vms/child.vhd >/dev/null || fail "create child 2"
"$VHDIMG" create r/base/new.vhd 16M >/dev/null || fail "create new"
"$WRITE_HELPER" r/base/new.vhd 0 $M 0x77 || fail "writing new"
ln -s ../../../r/vms/child.vhd w/x/srv/child.vhd
"$VHDIMG" rebase -u -b "$TMPD/r/base/new.vhd" w/x/srv/child.vhd >/dev/null 2>&1 ||
  fail "rebase -u through the link"
# Only the relative locator (..\base\new.vhd) may find it: the tree
# moves, and the absolute path and the name beside the child lead nowhere.
mv r r2
"$VHDIMG" info r2/vms/child.vhd >info.out 2>&1 ||
  fail "rebase through a link: the relative locator is not the real child's: $(cat info.out)"
reads r2/vms/child.vhd 0 $M 0x77 || fail "rebase through a link: the child does not read new"

# 3.
mkdir -p a/tpl a/vm1 b/c
"$VHDIMG" create a/tpl/disk.vhd 16M >/dev/null || fail "create tpl"
"$WRITE_HELPER" a/tpl/disk.vhd 0 $M 0x42 || fail "writing tpl"
"$VHDIMG" create -b "$TMPD/a/tpl/disk.vhd" a/vm1/disk.vhd >/dev/null || fail "create vm1"
mv a/vm1/disk.vhd b/c/disk.vhd
"$VHDIMG" info b/c/disk.vhd >info.out 2>&1 ||
  fail "a moved child of a parent of its own name: $(cat info.out)"
grep -q "^  1: $TMPD/a/tpl/disk.vhd " info.out || fail "wrong chain: $(cat info.out)"
reads b/c/disk.vhd 0 $M 0x42 || fail "the moved child does not read its parent"
mv a/tpl a/tpl-old
expect_exit 1 "$VHDIMG" info b/c/disk.vhd 2>info.out
grep -q "not found" info.out && ! grep -q "names itself" info.out ||
  fail "a parent gone is not reported as not found: $(cat info.out)"

# 4.
"$VHDIMG" create f.vhd 16M >/dev/null || fail "create f"
"$VHDIMG" create -b f.vhd fc.vhd >/dev/null || fail "create fc"
mv f.vhd f-moved.vhd
mkfifo f.vhd
rc=0
timeout 20 "$VHDIMG" info fc.vhd >info.out 2>&1 || rc=$?
[ $rc -ne 124 ] || fail "info blocked on a FIFO named by the parent locators"
[ $rc -eq 1 ] && grep -q "not a regular file" info.out ||
  fail "a FIFO as the parent: exit $rc, $(cat info.out)"
rc=0
timeout 20 "$VHDIMG" info f.vhd >info.out 2>&1 || rc=$?
[ $rc -eq 1 ] && grep -q "not a regular file" info.out ||
  fail "info on a FIFO: exit $rc, $(cat info.out)"
rc=0
timeout 20 "$VHDNBD" -U "$TMPD/f.sock" fc.vhd >nbd.out 2>&1 || rc=$?
[ $rc -ne 124 ] && [ $rc -ne 0 ] || fail "vhdnbd on a child whose parent is a FIFO: exit $rc"
grep -q "not a regular file" nbd.out || fail "vhdnbd does not say why: $(cat nbd.out)"
echo "ok: parents through links, a child's own name, FIFOs"
