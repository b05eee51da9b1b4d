#!/bin/bash
# vhdimg commit and rebase on chains of 3 (base <- mid <- top), at block
# sizes 4 KiB, 64 KiB and 2 MiB and an odd virtual size, judged by other
# readers: qemu-img reads the dynamic parents (it cannot read differencing
# images), libvhdi (pyvhdi) reads the chains, vhdimg convert both.  Writes
# in the chains are 4 KiB aligned: Debian 12's libvhdi misreads bitmap bytes
# with only some bits set in a differencing image.  Then the refusals: a
# parent served by vhdnbd (its lock), a read-only parent, another child.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
requires qemu-img
requires_py pyvhdi
requires_write_helper
cd "$TMPD"
dump="$PY3 $top_srcdir/tests/interop/pyvhdi-dump.py"

json_get() { "$PY3" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

# qemu_reads IMAGE EXPECTED: qemu-img reads the dynamic or fixed IMAGE as EXPECTED.
qemu_reads() {
  qemu-img convert -f vpc -O raw "$1" "$1.qemu" || fail "qemu-img cannot read $1"
  cmp "$1.qemu" "$2" || fail "qemu-img reads $1 differently from $2"
}
# libvhdi_reads EXPECTED IMAGE [PARENT...]: libvhdi reads the chain as EXPECTED.
libvhdi_reads() {
  local exp=$1
  shift
  $dump "$1.pyvhdi" "$@" >"$1.levels" || fail "libvhdi cannot read $*"
  cmp "$1.pyvhdi" "$exp" || fail "libvhdi reads $* differently from $exp"
}
vhdimg_reads() {
  "$VHDIMG" convert -O raw "$1" "$1.raw" || fail "vhdimg cannot read $1"
  cmp "$1.raw" "$2" || fail "vhdimg reads $1 differently from $2"
}

base_w=(0 1M 0x10  3M 512K 0x11)
mid_w=(512K 1M 0x20  4M 4K 0x21)
top_w=(1M 8K 0x30  2044K 8K 0x31  3M 64K 0x32)

for bs in 4K 64K 2M; do
  rm -f ./*.vhd ./*.raw
  # 5 MiB and 3 sectors: not a whole number of blocks.
  "$VHDIMG" create --exact --block-size $bs base.vhd 5244416
  vsize=$(info_field base.vhd virtual-size)
  [ "$vsize" = 5244416 ] || fail "base is $vsize bytes"
  last=$((vsize / 4096 * 4096 - 4096))
  "$WRITE_HELPER" base.vhd "${base_w[@]}" $last 4K 0x1f
  "$VHDIMG" create -b base.vhd mid.vhd
  "$WRITE_HELPER" mid.vhd "${mid_w[@]}"
  "$VHDIMG" create -b mid.vhd top.vhd
  "$WRITE_HELPER" top.vhd "${top_w[@]}" $last 4K 0x3f
  make_raw base.exp $vsize "${base_w[@]}" $last 4K 0x1f
  make_raw mid.exp $vsize "${base_w[@]}" $last 4K 0x1f "${mid_w[@]}"
  make_raw top.exp $vsize "${base_w[@]}" $last 4K 0x1f "${mid_w[@]}" "${top_w[@]}" $last 4K 0x3f
  qemu_reads base.vhd base.exp
  libvhdi_reads top.exp top.vhd mid.vhd base.vhd
  cp base.vhd base.orig; cp mid.vhd mid.orig; cp top.vhd top.orig

  # commit top into mid (a differencing parent): top reads the same, and is empty.
  out=$("$VHDIMG" commit --json top.vhd) || fail "bs $bs: commit top.vhd"
  [ "$(json_get "$out" bytes)" = $((8192 + 8192 + 65536 + 4096)) ] ||
    fail "bs $bs: commit reports $(json_get "$out" bytes) bytes: $out"
  "$VHDIMG" check top.vhd >/dev/null || fail "bs $bs: check of the committed child"
  "$VHDIMG" check mid.vhd >/dev/null || fail "bs $bs: check of the parent"
  [ "$(info_field top.vhd allocated-blocks)" = 0 ] || fail "bs $bs: the committed child holds blocks"
  [ "$(info_field top.vhd parent-timestamp)" = "$(info_field mid.vhd timestamp)" ] ||
    fail "bs $bs: the child's parent timestamp is not the parent's new timestamp"
  "$VHDIMG" info top.vhd 2>&1 | grep -qi "timestamp.*differs" && fail "bs $bs: stale timestamp warning"
  vhdimg_reads top.vhd top.exp
  vhdimg_reads mid.vhd top.exp
  libvhdi_reads top.exp top.vhd mid.vhd base.vhd
  libvhdi_reads top.exp mid.vhd base.vhd
  [ "$(json_get "$(head -1 top.vhd.levels)" parent-identifier)" = "$(info_field mid.vhd uuid)" ] ||
    fail "bs $bs: libvhdi sees another parent id in the emptied child"

  # commit mid into base (dynamic) with --remove: qemu-img reads the result.
  "$VHDIMG" commit --remove mid.vhd 2>err.out && fail "bs $bs: --remove of a parent of top was not refused"
  grep -q top.vhd err.out || { cat err.out >&2; fail "bs $bs: the refusal does not name top.vhd"; }
  rm top.vhd
  "$VHDIMG" commit --remove mid.vhd || fail "bs $bs: commit --remove mid.vhd"
  [ ! -e mid.vhd ] || fail "bs $bs: mid.vhd still there after --remove"
  qemu_reads base.vhd top.exp
  libvhdi_reads top.exp base.vhd
  "$VHDIMG" check base.vhd >/dev/null || fail "bs $bs: check of base after the commit"

  # safe rebase of top from mid onto base: the same content, the new parent's identity.
  cp base.orig base.vhd; cp mid.orig mid.vhd; cp top.orig top.vhd
  out=$("$VHDIMG" rebase --json -b base.vhd top.vhd) || fail "bs $bs: rebase"
  [ "$(json_get "$out" bytes)" -gt 0 ] || fail "bs $bs: rebase copied nothing: $out"
  vhdimg_reads top.vhd top.exp
  libvhdi_reads top.exp top.vhd base.vhd
  [ "$(json_get "$(head -1 top.vhd.levels)" parent-identifier)" = "$(info_field base.vhd uuid)" ] ||
    fail "bs $bs: libvhdi sees another parent id after the rebase"
  case "$(json_get "$(head -1 top.vhd.levels)" parent-filename)" in
    *base.vhd) ;;
    *) fail "bs $bs: libvhdi's parent file name after rebase: $(head -1 top.vhd.levels)" ;;
  esac
  "$VHDIMG" check top.vhd >/dev/null || fail "bs $bs: check after the rebase"
  cmp mid.vhd mid.orig || fail "bs $bs: rebase changed the old parent"
  cmp base.vhd base.orig || fail "bs $bs: rebase changed the new parent"

  # -u: the parent moved to another directory; the child finds it again.
  mkdir -p moved
  mv base.vhd moved/renamed.vhd
  "$VHDIMG" info top.vhd >/dev/null 2>&1 && fail "bs $bs: the parent is still found after the move"
  "$VHDIMG" rebase -b moved/renamed.vhd top.vhd 2>err.out && fail "bs $bs: safe rebase without the old parent"
  grep -q -- "-u only" err.out || { cat err.out >&2; fail "bs $bs: no hint at -u when the old parent is gone"; }
  "$VHDIMG" rebase -u -b moved/renamed.vhd top.vhd || fail "bs $bs: rebase -u"
  "$VHDIMG" info top.vhd | grep -q "parent name: renamed.vhd" || fail "bs $bs: parent name after -u"
  vhdimg_reads top.vhd top.exp
  libvhdi_reads top.exp top.vhd moved/renamed.vhd
  # The W2ru locator is relative, the W2ku absolute, both UTF-16LE.
  "$PY3" - top.vhd "$(cd moved && pwd -P)/renamed.vhd" <<'PYEOF' || fail "bs $bs: locators after -u"
import struct, sys
d = open(sys.argv[1], "rb").read()
h = d[512:1536]
locs = {}
for i in range(8):
    code, space, length, _, off = struct.unpack(">IIIIQ", h[576 + 24 * i:600 + 24 * i])
    if code:
        locs[code] = d[off:off + length].decode("utf-16-le")
assert locs == {0x57327275: ".\\moved\\renamed.vhd", 0x57326B75: sys.argv[2]}, locs
PYEOF
  # Locator data goes where it can stay: a rebase that finds no room
  # among the blocks (this chain's first: its blocks follow the locators
  # with at most 512 bytes between) puts it past the last block, and the
  # next one reuses the room the first gave up.  So no locator data is
  # left past the last block, and the file ends there (locator data there
  # would keep any compaction from giving back the space below it).
  "$PY3" - top.vhd <<'PYEOF' || fail "bs $bs: locator data past the last block after two rebases"
import struct, sys
d = open(sys.argv[1], "rb").read()
h = d[512:1536]
bat_off, = struct.unpack(">Q", h[16:24])
n, bs = struct.unpack(">II", h[28:36])
span = (bs // 512 + 7) // 8
span = (span + 511) // 512 * 512 + bs
ends = [e * 512 + span for e in struct.unpack(">%dI" % n, d[bat_off:bat_off + 4 * n]) if e != 0xFFFFFFFF]
locs = [struct.unpack(">IIIIQ", h[576 + 24 * i:600 + 24 * i]) for i in range(8)]
loc_end = max(off + length for code, _, length, _, off in locs if code)
assert loc_end < max(ends), (loc_end, max(ends))
assert len(d) == max(ends) + 512, (len(d), max(ends))
PYEOF
  rm -rf moved
done

# A fixed parent, with -p on a terminal (script(1) gives it one).
rm -f ./*.vhd
"$VHDIMG" create -t fixed base.vhd 4M
"$WRITE_HELPER" base.vhd 0 1M 0x11
"$VHDIMG" create -b base.vhd top.vhd
"$WRITE_HELPER" top.vhd 512K 1M 0x22
make_raw fixed.exp $(info_field base.vhd virtual-size) 0 1M 0x11 512K 1M 0x22
if command -v script >/dev/null; then
  script -qc "'$VHDIMG' commit -p top.vhd" /dev/null >progress.out || fail "commit -p of a fixed parent"
  grep -q "100.00/100%" progress.out || { cat -A progress.out >&2; fail "commit -p shows no progress bar on a terminal"; }
else
  "$VHDIMG" commit top.vhd || fail "commit into a fixed parent"
fi
qemu_reads base.vhd fixed.exp
vhdimg_reads top.vhd fixed.exp
"$VHDIMG" check base.vhd >/dev/null || fail "check of the fixed parent after the commit"
# -p without a terminal prints nothing.
rm top.vhd
"$VHDIMG" create -b base.vhd top2.vhd
"$VHDIMG" commit -p top2.vhd 2>progress.out || fail "commit -p without a terminal"
[ ! -s progress.out ] || fail "commit -p wrote to a non-terminal: $(cat progress.out)"

# Refusals.
rm -f ./*.vhd
"$VHDIMG" create base.vhd 8M
"$VHDIMG" create -b base.vhd mid.vhd
"$WRITE_HELPER" mid.vhd 0 64K 0x44
"$VHDIMG" create -b mid.vhd top.vhd
"$WRITE_HELPER" top.vhd 0 4K 0x55
make_raw top8.exp $(info_field base.vhd virtual-size) 0 64K 0x44 0 4K 0x55

chmod 444 mid.vhd
"$VHDIMG" commit top.vhd 2>err.out && fail "commit into a read-only parent"
grep -q "read-only" err.out || { cat err.out >&2; fail "the read-only refusal does not say so"; }
chmod 644 mid.vhd

"$VHDIMG" create -b mid.vhd sibling.vhd
rc=0; "$VHDIMG" commit top.vhd 2>err.out || rc=$?
[ $rc = 1 ] || fail "commit with another child: exit $rc"
grep -q "sibling.vhd" err.out && grep -q -- "--force" err.out ||
  { cat err.out >&2; fail "the other-children refusal does not name sibling.vhd and --force"; }

if [ -x "$VHDNBD" ]; then
  start_vhdnbd "$TMPD/nbd.sock" sibling.vhd
  "$VHDIMG" commit --force top.vhd 2>err.out && fail "commit into a parent vhdnbd serves (through sibling)"
  grep -qi "lock" err.out || { cat err.out >&2; fail "the served parent is not refused by its lock"; }
  grep -q "process [0-9]* (vhdnbd)" err.out || { cat err.out >&2; fail "the refusal does not name vhdnbd"; }
  "$VHDIMG" rebase -b base.vhd sibling.vhd 2>err.out && fail "rebase of a served image"
  grep -qi "lock" err.out || { cat err.out >&2; fail "rebase of a served image: not refused by its lock"; }
  stop_vhdnbd
fi
"$VHDIMG" commit --force top.vhd 2>err.out || { cat err.out >&2; fail "commit --force"; }
grep -q "cannot be" err.out || { cat err.out >&2; fail "--force does not say what it cannot know"; }
vhdimg_reads mid.vhd top8.exp
vhdimg_reads top.vhd top8.exp
expect_exit 2 "$VHDIMG" rebase top.vhd
expect_exit 1 "$VHDIMG" rebase -b top.vhd top.vhd
expect_exit 1 "$VHDIMG" commit base.vhd

# Symbolic links.  A parent reached through one: children beside the file
# it points to are found too, and the commit refused.  A child reached
# through one: the file it points to is emptied, the link stays a link.
# (The image moved to a shared store after its child was made, a link left
# in its place: the child's locators name the link.)
mkdir -p links/vm links/store && cd links
"$VHDIMG" create vm/base.vhd 8M >/dev/null
"$WRITE_HELPER" vm/base.vhd 0 64K 0x11
"$VHDIMG" create -b vm/base.vhd vm/top.vhd >/dev/null
"$WRITE_HELPER" vm/top.vhd 0 4K 0x22
mv vm/base.vhd store/base.vhd && ln -s ../store/base.vhd vm/base.vhd
"$VHDIMG" create -b store/base.vhd store/other.vhd >/dev/null
cp store/base.vhd base.before
"$VHDIMG" commit vm/top.vhd 2>err.out && fail "commit over a linked parent with a child beside its file"
grep -q "store/other.vhd" err.out || { cat err.out >&2; fail "the refusal does not name the child beside the linked parent's file"; }
cmp -s store/base.vhd base.before || fail "the refused commit changed the parent"
rm store/other.vhd
mkdir real && mv vm/top.vhd real/top.vhd && ln -s ../real/top.vhd vm/top.vhd
"$VHDIMG" convert vm/top.vhd top.exp
"$VHDIMG" commit vm/top.vhd >/dev/null 2>&1 || fail "commit through a linked child"
[ -L vm/top.vhd ] || fail "commit replaced the link to the child with a file"
[ "$(info_field real/top.vhd allocated-blocks)" = 0 ] || fail "the linked child's file was not emptied"
"$VHDIMG" compare -F raw vm/top.vhd top.exp >/dev/null || fail "the linked child reads differently after the commit"
cd ..

# A parent whose name is not UTF-8 (Latin-1 here): the locators, UTF-16,
# could not name it, so create -b and rebase onto it are refused and the
# child keeps its old parent.
mkdir -p latin1 && cd latin1
bad=$'b\xe9se.vhd'
"$VHDIMG" create "$bad" 8M >/dev/null
"$VHDIMG" create base.vhd 8M >/dev/null
"$VHDIMG" create -b "$bad" child.vhd 2>err.out && fail "create -b over a parent named in Latin-1"
grep -q "not UTF-8" err.out || { cat err.out >&2; fail "create -b: the refusal does not say the name is not UTF-8"; }
"$VHDIMG" create -b base.vhd top.vhd >/dev/null
"$WRITE_HELPER" top.vhd 0 4K 0x33
"$VHDIMG" convert top.vhd top.exp
"$VHDIMG" rebase -b "$bad" top.vhd 2>err.out && fail "rebase onto a parent named in Latin-1"
grep -q "not UTF-8" err.out || { cat err.out >&2; fail "rebase: the refusal does not say the name is not UTF-8"; }
"$VHDIMG" compare -F raw top.vhd top.exp >/dev/null || fail "the refused rebase changed what the child reads"
cd ..

# A child whose directory refuses the commit's last step (replacing the
# child, or with --remove unlinking it): refused before anything is written,
# so the parent is untouched and the commit can finish once the directory
# allows it.  Root writes despite permissions: the refused runs are made as
# nobody where the build runs as nobody, else the case is skipped.
mkdir -p rodir/p rodir/c && cd rodir
"$VHDIMG" create p/base.vhd 8M >/dev/null
"$WRITE_HELPER" p/base.vhd 0 64K 0x11
"$VHDIMG" create -b p/base.vhd c/top.vhd >/dev/null
"$WRITE_HELPER" c/top.vhd 32K 8K 0x22
"$VHDIMG" convert c/top.vhd top.exp
cp p/base.vhd base.before
as_other=()
if [ "$(id -u)" -ne 0 ]; then
  as_other=(env)
elif chmod o+x "$TMPD" && command -v setpriv >/dev/null &&
  setpriv --reuid=nobody --regid=nogroup --clear-groups "$VHDIMG" --version >/dev/null 2>&1; then
  chown -R nobody:nogroup "$TMPD/rodir"
  as_other=(setpriv --reuid=nobody --regid=nogroup --clear-groups)
fi
if [ ${#as_other[@]} = 0 ]; then
  echo "PARTIAL: running as root and cannot run the build as nobody: an unwritable child directory not checked"
else
  chmod 555 c
  for opt in "" --remove; do
    "${as_other[@]}" "$VHDIMG" commit $opt c/top.vhd 2>err.out &&
      fail "commit $opt with the child's directory unwritable"
    grep -q "its directory .*c does not let the commit" err.out ||
      { cat err.out >&2; fail "commit $opt: the refusal does not name the child's directory"; }
    cmp -s p/base.vhd base.before || fail "commit $opt refused for the child's directory changed the parent"
    ! ls -a c | grep -q commit || fail "commit $opt left a file in the child's directory"
  done
  chmod 755 c
  "${as_other[@]}" "$VHDIMG" commit c/top.vhd >/dev/null 2>err.out ||
    { cat err.out >&2; fail "commit once the child's directory is writable"; }
  "$VHDIMG" compare -F raw c/top.vhd top.exp >/dev/null || fail "the child reads differently after the commit"
  [ "$(info_field c/top.vhd allocated-blocks)" = 0 ] || fail "the child was not emptied"
fi
cd ..

# The parent stays locked until the child is emptied: a writer that got it
# before would write under a child still shadowing it.  strace holds up
# every sync of a commit; meanwhile a probe (F_OFD_GETLK, which takes no
# lock) must find the parent locked against writers for as long as the
# child is the old file, once the commit has taken the parent's write lock.
# lock_on FILE: the lock a writer's would meet on FILE now: w (a writer
# holds it), r (readers: a child open for writing reads its parent) or -.
lock_on() {
  "$PY3" -c '
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fl = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, struct.pack("@hhqqixxxx", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0))
print({fcntl.F_WRLCK: "w", fcntl.F_RDLCK: "r"}.get(struct.unpack("@hhqqixxxx", fl)[0], "-"))' "$1"
}
if command -v strace >/dev/null && strace -f -o /dev/null -e inject=fdatasync:delay_exit=1 true 2>/dev/null; then
  mkdir -p held && cd held
  "$VHDIMG" create base.vhd 8M >/dev/null
  "$VHDIMG" create -b base.vhd top.vhd >/dev/null
  "$WRITE_HELPER" top.vhd 0 64K 0x66
  old_ino=$(stat -c %i top.vhd)
  # LeakSanitizer cannot run under ptrace: leaks are not looked for there.
  ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0" \
    strace -f -o /dev/null -e trace=fsync,fdatasync -e inject=fsync,fdatasync:delay_exit=500000 \
    "$VHDIMG" commit top.vhd >/dev/null 2>commit.err &
  commit_pid=$!
  polls=0 seen=0
  while kill -0 $commit_pid 2>/dev/null && [ $polls -lt 1000 ]; do
    polls=$((polls + 1))
    lock=$(lock_on base.vhd)
    if [ "$lock" = w ]; then
      seen=$((seen + 1))
    elif [ $seen -gt 0 ] && [ "$lock" = - ] && [ "$(stat -c %i top.vhd)" = "$old_ino" ]; then
      fail "the parent was open to writers while the child was not yet emptied (poll $polls)"
    fi
    sleep 0.02
  done
  wait $commit_pid || { cat commit.err >&2; fail "the held-up commit"; }
  [ $seen -gt 0 ] || fail "the parent was never seen write-locked during the commit ($polls polls)"
  [ "$(info_field top.vhd allocated-blocks)" = 0 ] || fail "the held-up commit did not empty the child"
  cd ..
else
  echo "strace cannot delay system calls here: the parent's lock during the commit is not tested" >&2
fi
