#!/usr/bin/python3
"""Reads the crash images test-vhd-crash saved with QEMU and libvhdi.

  crash-readers.py DIR

For each NAME.txt in DIR (see save_sample in test-vhd-crash.c): NAME.vhd is a
crash image, NAME.want the content the model expects, NAME.mask says per
byte who must read it so (bit 0: libvhdi, bit 1: QEMU).  libvhdi (pyvhdi,
given the parents the .txt names) reads every sector holding a bit-0 byte,
one sector at a time; QEMU (`qemu-img info`, then `convert -f vpc -O raw`)
reads dynamic images whole.  Any difference fails, and so does a run in which
either reader judged nothing.
"""
import os
import struct
import subprocess
import sys

import pyvhdi

SECTOR = 512


def fail(msg):
    print("FAIL: %s" % msg, file=sys.stderr)
    sys.exit(1)


def disk_type_and_block_size(path):
    """From the trailing footer and the dynamic header, as the spec has them."""
    with open(path, "rb") as f:
        f.seek(-512, os.SEEK_END)
        footer = f.read(512)
        if footer[:8] != b"conectix":
            fail("%s: no footer at EOF-512" % path)
        f.seek(struct.unpack(">Q", footer[16:24])[0])
        header = f.read(1024)
    if header[:8] != b"cxsparse":
        fail("%s: no dynamic header where the footer points" % path)
    return struct.unpack(">I", footer[60:64])[0], struct.unpack(">I", header[32:36])[0]


# Byte value -> 0xff where the mask bit is set, 0 elsewhere.
SELECT = {bit: bytes(0xff if v & bit else 0 for v in range(256)) for bit in (1, 2)}


def first_difference(name, reader, got, want, mask, bit, base):
    """Compares got with want[base:] where mask has bit; returns a message
    naming the first differing byte, or None."""
    n = len(got)
    sel = int.from_bytes(mask[base:base + n].translate(SELECT[bit]), "big")
    diff = (int.from_bytes(got, "big") ^ int.from_bytes(want[base:base + n], "big")) & sel
    if not diff:
        return None
    i = n - 1 - (diff.bit_length() - 1) // 8
    return ("%s: %s reads byte %d as 0x%02x, the model expects 0x%02x" %
            (name, reader, base + i, got[i], want[base + i]))


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       timeout=120)
    if r.returncode != 0:
        fail("%s: exit %d\n%s" % (" ".join(cmd), r.returncode, r.stdout))


def check_libvhdi(d, name, what, parents, want, mask):
    files = []
    try:
        for path in [name + ".vhd"] + parents:
            f = pyvhdi.file()
            f.open(os.path.join(d, path))
            files.append(f)
        for child, parent in reversed(list(zip(files, files[1:]))):
            child.set_parent(parent)
        top = files[0]
        if top.get_media_size() != len(want):
            fail("%s (%s): libvhdi sees %d bytes, the model %d" %
                 (name, what, top.get_media_size(), len(want)))
        judged = 0
        for a in range(0, len(want), SECTOR):
            n = min(SECTOR, len(want) - a)
            m = mask[a:a + n]
            if not any(b & 1 for b in m):
                continue
            got = top.read_buffer_at_offset(n, a)
            bad = first_difference(name, "libvhdi", got, want, mask, 1, a)
            if bad:
                fail("%s (%s)" % (bad, what))
            judged += n - m.translate(SELECT[1]).count(0)
        return judged
    finally:
        for f in files:
            f.close()


def check_qemu(d, name, what, want, mask):
    image = os.path.join(d, name + ".vhd")
    raw = os.path.join(d, name + ".qemu.raw")
    run(["qemu-img", "info", "-f", "vpc", image])
    run(["qemu-img", "convert", "-f", "vpc", "-O", "raw", image, raw])
    with open(raw, "rb") as f:
        got = f.read()
    os.unlink(raw)
    if len(got) != len(want):
        fail("%s (%s): QEMU reads %d bytes, the model has %d" % (name, what, len(got), len(want)))
    bad = first_difference(name, "QEMU", got, want, mask, 2, 0)
    if bad:
        fail("%s (%s)" % (bad, what))
    return len(mask) - mask.translate(SELECT[2]).count(0)


def main():
    d = sys.argv[1]
    names = sorted(f[:-4] for f in os.listdir(d) if f.endswith(".txt"))
    if not names:
        fail("no crash images in %s" % d)
    by_libvhdi = by_qemu = skipped = 0
    for name in names:
        with open(os.path.join(d, name + ".txt")) as f:
            lines = f.read().splitlines()
        what = lines[0]
        parents = [l.split(" ", 1)[1] for l in lines[1:] if l.startswith("parent ")]
        with open(os.path.join(d, name + ".want"), "rb") as f:
            want = f.read()
        with open(os.path.join(d, name + ".mask"), "rb") as f:
            mask = f.read()
        dtype, block_size = disk_type_and_block_size(os.path.join(d, name + ".vhd"))
        # Neither reader handles blocks of fewer than 8 sectors, whose bitmap
        # is less than a byte (padded to a sector): libvhdi refuses them, and
        # QEMU rounds the bitmap down to nothing and reads it as data.
        if block_size < 8 * SECTOR:
            skipped += 1
            continue
        by_libvhdi += check_libvhdi(d, name, what, parents, want, mask)
        if dtype == 3:  # QEMU cannot open differencing images
            by_qemu += check_qemu(d, name, what, want, mask)
    print("%d crash images (%d with blocks too small for either reader): libvhdi agreed "
          "on %d bytes, QEMU on %d" % (len(names), skipped, by_libvhdi, by_qemu))
    if by_libvhdi == 0 or by_qemu == 0:
        fail("a reader judged no byte: the samples test nothing")


if __name__ == "__main__":
    main()
