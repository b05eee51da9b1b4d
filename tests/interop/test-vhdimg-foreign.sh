#!/bin/bash
# Images made by other writers (Windows/Hyper-V, XenServer vhd-tool, Xen
# Orchestra, blktap vhd-util, VirtualBox: make-foreign-vhd.py lays them out
# as those do), through every vhdimg command that changes an image: resize
# (grow, shrink, a refused shrink), compact (refused for fixed images),
# commit (with and without --remove, into differencing, dynamic and fixed
# parents) and rebase (safe onto another parent, -u after a move).  After
# each: check is clean, vhdimg (convert, compare, info), QEMU and libvhdi
# read what the test expects (computed here, not by vhdimg), and the
# writer's own bytes no command may
# change (tdbatmap, vhd-tool's gap, the parent locators of an image not
# rebased, VirtualBox's BAT padding but where a resize adds entries) are as
# they were.
. "$top_srcdir/tests/functions.sh"
. "$top_srcdir/tests/interop/image-functions.sh"
cd "$TMPD"

have_qemu=yes have_pyvhdi=yes
command -v qemu-img >/dev/null 2>&1 || { have_qemu=no; echo "PARTIAL: qemu-img is not installed: QEMU does not judge the results"; }
"$PY3" -c 'import pyvhdi' 2>/dev/null || { have_pyvhdi=no; echo "PARTIAL: python module pyvhdi is not available: libvhdi does not judge the results"; }

"$PY3" "$top_srcdir/tests/interop/make-foreign-vhd.py" fx || fail "make-foreign-vhd.py"
declare -A kind bs size data_end readers parents keep locs pad
while read -r n k b s e r p kp l pd; do
  kind[$n]=$k bs[$n]=$b size[$n]=$s data_end[$n]=$e readers[$n]=$r parents[$n]=$p
  keep[$n]=$kp locs[$n]=$l pad[$n]=$pd
done <fx/manifest

# chain NAME: the files of NAME's chain in w/, child first.
chain() {
  local p
  echo "w/$1.vhd"
  [ "${parents[$1]}" = - ] && return
  for p in ${parents[$1]//,/ }; do echo "w/$p.vhd"; done
}

# fresh NAME: w/ holds NAME's chain as generated, and nothing else.
fresh() {
  rm -rf w && mkdir w
  local f
  for f in $(chain "$1"); do cp "fx/${f#w/}" "$f"; cp "fx/${f#w/}" "$f.orig"; done
}

# judge WHAT EXPECTED READERS IMAGE [PARENT...]: check is clean on each
# level, and vhdimg (and QEMU, libvhdi when READERS names them) read the
# chain as EXPECTED.
judge() {
  local what=$1 exp=$2 rd=$3 f
  shift 3
  for f in "$@"; do
    "$VHDIMG" check "$f" >check.out 2>&1 || { cat check.out >&2; fail "$what: check of $f is not clean"; }
  done
  rm -f judge.raw
  "$VHDIMG" convert "$1" judge.raw || fail "$what: vhdimg cannot read $1"
  cmp judge.raw "$exp" || fail "$what: vhdimg reads $1 differently from $exp"
  "$VHDIMG" compare -F raw "$1" "$exp" >/dev/null || fail "$what: vhdimg compare finds $1 differs"
  [ "$(info_field "$1" virtual-size)" = "$(stat -c %s "$exp")" ] ||
    fail "$what: vhdimg info gives $1 another size than $(stat -c %s "$exp")"
  if [ "$have_qemu" = yes ] && [[ $rd == *qemu* ]]; then
    # QEMU takes the CHS size of some creators: it must read that much.
    local q
    q=$(qemu_vsize "$1") || fail "$what: qemu-img cannot open $1"
    head -c "$q" "$exp" >judge.q
    qemu-img compare -q -f vpc -F raw "$1" judge.q || fail "$what: qemu-img reads $1 differently"
  fi
  if [ "$have_pyvhdi" = yes ] && [[ $rd == *pyvhdi* ]]; then
    "$PY3" "$top_srcdir/tests/interop/pyvhdi-dump.py" judge.py "$@" >/dev/null ||
      fail "$what: libvhdi cannot read $*"
    cmp judge.py "$exp" || fail "$what: libvhdi reads $* differently from $exp"
  fi
}

# kept WHAT FILE RANGES: FILE's bytes over RANGES (OFF:LEN,...) are those
# of FILE.orig.
kept() {
  [ "$3" = - ] && return
  "$PY3" - "$2" "$2.orig" "$3" <<'PYEOF' || fail "$1: $2 changed bytes it had to keep"
import sys
new, old = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
for r in sys.argv[3].split(","):
    if r == "-":
        continue
    off, n = map(int, r.split(":"))
    if new[off:off + n] != old[off:off + n]:
        sys.exit(f"{sys.argv[1]}: bytes {off}..{off + n} changed")
PYEOF
}

# same_as_orig WHAT FILE...: whole files untouched.
same_as_orig() {
  local what=$1 f
  shift
  for f in "$@"; do cmp -s "$f" "$f.orig" || fail "$what: $f changed"; done
}

json_get() { "$PY3" -c 'import json, sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

for n in "${!kind[@]}"; do
  [ "${kind[$n]}" = differencing ] && continue
  img=w/$n.vhd exp=fx/$n.raw
  sz=${size[$n]}
  # Another writer's image, as it comes.
  fresh "$n"
  judge "$n" "$exp" "${readers[$n]}" "$img"

  # Grow by 1 MiB and 3 sectors: zeros after the old end.
  grown=$((sz + 1048576 + 1536))
  if [ "$n" = tap-t0 ]; then
    # vhd-util's batmap lies right after the BAT, where tapdisk looks for
    # it: a BAT that must grow past its last sector is refused.
    cp "$img" before.vhd
    expect_exit 1 "$VHDIMG" resize --exact "$img" $grown 2>err.out
    grep -q "Xen batmap" err.out || { cat err.out >&2; fail "$n: the refusal does not name the batmap"; }
    cmp -s "$img" before.vhd || fail "$n: a refused resize changed the image"
  else
    out=$("$VHDIMG" resize --json --exact "$img" $grown) || fail "$n: resize to $grown"
    # vhd-tool's first 8 blocks of 512 bytes are in the way of its BAT.
    case $n in
    caml-c0) [ "$(json_get "$out" blocks-moved)" = 8 ] || fail "$n: not 8 blocks moved: $out" ;;
    esac
    cp "$exp" grown.exp && truncate -s $grown grown.exp
    judge "$n grown" grown.exp "${readers[$n]}" "$img"
    kept "$n grown" "$img" "${keep[$n]}"
  fi
  # Back to its size (only zeros past it), then refused past its data.
  "$VHDIMG" resize --shrink --exact "$img" "$sz" >/dev/null || fail "$n: shrink back to $sz"
  judge "$n shrunk" "$exp" "${readers[$n]}" "$img"
  kept "$n shrunk" "$img" "${keep[$n]}"
  cp "$img" before.vhd
  cut=$((${data_end[$n]} - 512))
  expect_exit 1 "$VHDIMG" resize --shrink --exact "$img" $cut 2>err.out
  grep -q "$img" err.out || { cat err.out >&2; fail "$n: the refused shrink does not name the image"; }
  cmp -s "$img" before.vhd || fail "$n: a refused shrink changed the image"

  if [ "${kind[$n]}" = fixed ]; then
    expect_exit 1 "$VHDIMG" compact "$img" 2>/dev/null
    cmp -s "$img" before.vhd || fail "$n: a refused compact changed the image"
    continue
  fi
  # Compact: blocks of zeros freed, blocks moved, the same content.
  fresh "$n"
  out=$("$VHDIMG" compact --json "$img") || fail "$n: compact"
  judge "$n compacted" "$exp" "${readers[$n]}" "$img"
  kept "$n compacted" "$img" "${keep[$n]},${pad[$n]}"
  case $n in xo-dyn | vbox-dyn)
    [ "$(json_get "$out" blocks-freed)" = 1 ] || fail "$n: compact did not free the block of zeros: $out" ;;
  esac
done

# A parent with other content for the rebases: every sector differs.
other_parent() {
  "$PY3" -c 'import sys; open(sys.argv[1], "wb").write(b"\xa5" * int(sys.argv[2]))' w/other.raw "$2"
  "$VHDIMG" convert -f raw -O dynamic --exact w/other.raw "$1" || fail "making $1"
}

for n in "${!kind[@]}"; do
  [ "${kind[$n]}" = differencing ] || continue
  # Only the top of each chain: its parents are judged through it.
  case " ${parents[*]} " in *[\ ,]$n[\ ,]*) continue ;; esac
  mapfile -t files < <(chain "$n")
  img=${files[0]} par=${files[1]} exp=fx/$n.raw rd=${readers[$n]}
  p1=${parents[$n]%%,*}
  below=("${files[@]:2}")
  fresh "$n"
  judge "$n" "$exp" "$rd" "${files[@]}"
  judge "$p1" "fx/$p1.raw" "${readers[$p1]}" "${files[@]:1}"

  # Commit into the parent: the child reads the same, the parent as it.
  out=$("$VHDIMG" commit --json "$img") || fail "$n: commit"
  [ "$(json_get "$out" removed)" = False ] || fail "$n: commit says it removed the child: $out"
  judge "$n committed" "$exp" "$rd" "${files[@]}"
  judge "$p1 committed into" "$exp" "$rd" "${files[@]:1}"
  kept "$n committed" "$par" "${keep[$p1]},${locs[$p1]}"
  # New blocks go at the end of the parent's data, past what its locators
  # reserve (Windows counts their data space in bytes): it grows by no more
  # than the child holds.
  [ "$(stat -c %s "$par")" -le $(($(stat -c %s "$par.orig") + $(stat -c %s "$img.orig"))) ] ||
    fail "$n: commit grew $par from $(stat -c %s "$par.orig") to $(stat -c %s "$par") bytes"
  [ ${#below[@]} -eq 0 ] || same_as_orig "$n committed" "${below[@]}"

  # The same with --remove.
  fresh "$n"
  "$VHDIMG" commit --remove "$img" >/dev/null || fail "$n: commit --remove"
  [ ! -e "$img" ] || fail "$n: commit --remove left the child"
  judge "$p1 committed into, child removed" "$exp" "$rd" "${files[@]:1}"
  kept "$n committed --remove" "$par" "${keep[$p1]},${locs[$p1]}"
  [ ${#below[@]} -eq 0 ] || same_as_orig "$n committed --remove" "${below[@]}"

  # Safe rebase onto a parent with other content: the child reads the same.
  fresh "$n"
  other_parent w/other.vhd "${size[$n]}"
  "$VHDIMG" rebase -b w/other.vhd "$img" >/dev/null || fail "$n: rebase onto other.vhd"
  judge "$n rebased" "$exp" "$rd" "$img" w/other.vhd
  kept "$n rebased" "$img" "${keep[$n]}"
  same_as_orig "$n rebased" "${files[@]:1}"

  # The parent moved and renamed (with what is below it): -u points at it.
  fresh "$n"
  mkdir w/moved
  moved=("$img" w/moved/renamed.vhd)
  mv "$par" w/moved/renamed.vhd
  for f in "${below[@]}"; do mv "$f" "w/moved/${f#w/}"; moved+=("w/moved/${f#w/}"); done
  "$VHDIMG" rebase -u -b w/moved/renamed.vhd "$img" >/dev/null || fail "$n: rebase -u"
  judge "$n rebased -u" "$exp" "$rd" "${moved[@]}"
  kept "$n rebased -u" "$img" "${keep[$n]}"

  # Resize the whole chain, base first: it reads the same, then zeros.
  fresh "$n"
  grown=$((${size[$n]} + 1048576 + 1536))
  if [ "${n%%-*}" = tap ]; then
    # 4 KiB blocks: each BAT must grow past its sector, before a batmap.
    for f in "${files[@]}"; do
      expect_exit 1 "$VHDIMG" resize --exact "$f" $grown 2>/dev/null
    done
    judge "$n not grown" "$exp" "$rd" "${files[@]}"
  else
    for ((i = ${#files[@]} - 1; i >= 0; i--)); do
      "$VHDIMG" resize --exact "${files[$i]}" $grown >/dev/null || fail "$n: resize ${files[$i]}"
    done
    cp "$exp" grown.exp && truncate -s $grown grown.exp
    judge "$n grown" grown.exp "$rd" "${files[@]}"
    for f in "${files[@]}"; do
      b=${f#w/} b=${b%.vhd}
      kept "$n grown" "$f" "${keep[$b]},${locs[$b]}"
    done
  fi

  # Compact the child over its parents.
  fresh "$n"
  "$VHDIMG" compact "$img" >/dev/null || fail "$n: compact"
  judge "$n compacted" "$exp" "$rd" "${files[@]}"
  kept "$n compacted" "$img" "${keep[$n]},${locs[$n]}"
  same_as_orig "$n compacted" "${files[@]:1}"
done
