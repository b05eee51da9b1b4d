#!/bin/bash
# A dynamic image whose BAT comes after its only data block (the format lets
# structures sit anywhere), served read-write: a read-only session must leave
# the file byte for byte as it was (the footer once went over the BAT and the
# file was cut), and a session that allocates a block may change only the
# footer's place, the new block and its BAT entry.  QEMU and libvhdi must
# then read the data the model expects.
. "$top_srcdir/tests/functions.sh"
requires qemu-img
requires qemu-io
cd "$TMPD"

# The image, written from the format notes (not by vhdimg create): footer
# copy at 0, header at 512, block 0 at 1536 (bitmap, then 2 MiB of data),
# the BAT right after it, then the footer.  4 MiB virtual, two entries.
"$PY3" - <<'PYEOF'
import struct, uuid
BS = 2 * 1024 * 1024
SIZE = 2 * BS

def csum(b, off):
    b = bytearray(b)
    b[off:off + 4] = b"\0\0\0\0"
    return (~sum(b)) & 0xFFFFFFFF

def footer(data_offset):
    f = bytearray(512)
    f[0:8] = b"conectix"
    struct.pack_into(">IIQI", f, 8, 2, 0x00010000, data_offset, 0x2a000000)
    f[28:32] = b"tstg"
    struct.pack_into(">IIQQHBBI", f, 32, 0x00010000, 0x5769326B, SIZE, SIZE, 120, 4, 17, 3)
    f[68:84] = uuid.UUID("6a3c7a0e-3c55-4c1b-9a43-5f0b8c2d1e01").bytes
    struct.pack_into(">I", f, 64, csum(f, 64))
    return bytes(f)

block_off = 1536
bat_off = block_off + 512 + BS
h = bytearray(1024)
h[0:8] = b"cxsparse"
struct.pack_into(">QQIII", h, 8, 0xFFFFFFFFFFFFFFFF, bat_off, 0x00010000, 2, BS)
struct.pack_into(">I", h, 36, csum(h, 36))
data = bytes((i * 7 + 3) & 0xFF for i in range(BS))
bat = struct.pack(">II", block_off // 512, 0xFFFFFFFF) + b"\xff" * 504
img = footer(512) + bytes(h) + b"\xff" * 512 + data + bat + footer(512)
open("img.vhd", "wb").write(img)
open("expected.raw", "wb").write(data + bytes(BS))
open("layout", "w").write("%d %d\n" % (bat_off, len(img)))
PYEOF
read -r bat_off orig_size <layout
cp img.vhd orig.vhd

"$VHDIMG" check img.vhd >check.out 2>&1 || { cat check.out >&2; fail "the generated image is not check-clean"; }

# 1. Read once, SIGTERM: nothing may change.
start_vhdnbd "$TMPD/sock" img.vhd
qemu-io -f raw -c 'read -P 0 2M 2M' "nbd+unix:///?socket=$TMPD/sock" >/dev/null ||
  fail "the unallocated block does not read as zeros"
stop_vhdnbd
cmp img.vhd orig.vhd || fail "a read-only session changed the image file"

# 2. A write into the unallocated block 1.
start_vhdnbd "$TMPD/sock" img.vhd
qemu-io -f raw -c 'write -P 0x5c 3M 4096' "nbd+unix:///?socket=$TMPD/sock" >/dev/null ||
  fail "writing into block 1 over NBD"
stop_vhdnbd
"$PY3" - <<'PYEOF'
f = bytearray(open("expected.raw", "rb").read())
f[3 * 1024 * 1024:3 * 1024 * 1024 + 4096] = b"\x5c" * 4096
open("expected.raw", "wb").write(bytes(f))
PYEOF

"$VHDIMG" check img.vhd >check.out 2>&1 || { cat check.out >&2; fail "not check-clean after the write"; }
qemu-img info -f vpc img.vhd >qinfo.out 2>&1 || { cat qinfo.out >&2; fail "qemu-img info cannot open the image"; }
! grep -qi truncated qinfo.out || { cat qinfo.out >&2; fail "qemu-img says the image is truncated"; }
qemu-img compare -q -f vpc -F raw img.vhd expected.raw || fail "QEMU reads other data than written"

# Every byte before the old footer is as it was, except BAT entry 1, which
# must point at a block past everything that was in the file.
"$PY3" - "$bat_off" "$orig_size" <<'PYEOF' || fail "bytes outside the new block and BAT entry changed"
import struct, sys
bat_off, orig_size = int(sys.argv[1]), int(sys.argv[2])
old = open("orig.vhd", "rb").read()
new = open("img.vhd", "rb").read()
entry = bat_off + 4
keep = [(0, entry), (entry + 4, orig_size - 512)]
for a, b in keep:
    if old[a:b] != new[a:b]:
        i = next(i for i in range(a, b) if old[i] != new[i])
        sys.exit("byte %d changed (0x%02x -> 0x%02x)" % (i, old[i], new[i]))
blk = struct.unpack_from(">I", new, entry)[0] * 512
if blk < orig_size - 512:
    sys.exit("block 1 allocated at %d, inside what was in the file (footer at %d)"
             % (blk, orig_size - 512))
if new[-512:-504] != b"conectix":
    sys.exit("the file does not end with a footer")
PYEOF

if "$PY3" -c 'import pyvhdi' 2>/dev/null; then
  "$PY3" "$top_srcdir/tests/interop/pyvhdi-dump.py" pyvhdi.raw img.vhd >/dev/null ||
    fail "libvhdi cannot read the image"
  cmp pyvhdi.raw expected.raw || fail "libvhdi reads other data than written"
else
  echo "libvhdi (python3-libvhdi) is not installed: its comparison is skipped" >&2
fi
