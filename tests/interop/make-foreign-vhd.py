#!/usr/bin/python3
"""Writes VHD images laid out as other writers lay them out, with the raw
content each one (with its parents) must read as.

  make-foreign-vhd.py OUTDIR

The layouts follow the format notes (vhd-format.md sections 5, 6 and 9):
  win   Windows/Hyper-V: BAT at 8192, parent locators at 4096 (W2ku, data
        space 4096 bytes) and 12288 (W2ru, 65536 bytes), the parent's
        unicode name, first block 1 or 2 MiB into the file, only the
        written sectors' bitmap bits set, current size 4194304 over a
        smaller CHS size;
  caml  XenServer vhd-tool: host OS 0, timestamp 0, BAT at 0x800 after a
        512-byte gap, whole blocks written (every bitmap bit set);
  xo    Xen Orchestra: a Unix timestamp where seconds since 2000 are due,
        one BAT entry more than the size needs;
  tap   blktap vhd-util: a batmap (`tdbatmap` header, then its bits) after
        the BAT, locators after it with their data space in sectors, MacX
        first;
  vbox  VirtualBox: the BAT's last sector padded with 0x00, not 0xFF.
Blocks are placed out of BAT order.  Written data is a pattern that names
the image and the sector, so a sector read from the wrong level shows.

For each image NAME it writes NAME.vhd and NAME.raw (the virtual disk of the
chain from NAME down), and a line in OUTDIR/manifest:
  NAME TYPE BLOCK_SIZE SIZE DATA_END READERS PARENTS KEEP LOCATORS PAD
TYPE is fixed, dynamic or differencing; DATA_END the end of the last
sector NAME itself holds; READERS "qemu,pyvhdi", "pyvhdi" or "-" (which
other readers can judge it: QEMU reads no differencing image, neither reader
blocks under 4 KiB, and Debian's libvhdi no differencing image with partly
set bitmap bytes); PARENTS the chain below it, comma-separated, or "-";
KEEP, LOCATORS and PAD byte ranges OFF:LEN (comma-separated, or "-") of
foreign bytes no command may change, of parent locator data only a rebase
may, and of BAT padding only a resize may (its new entries go there).
"""
import os
import struct
import sys
import uuid

SECTOR = 512
UNUSED = 0xFFFFFFFF
VHD_EPOCH = 946684800  # 2000-01-01 UTC in Unix time
PLAT_W2RU, PLAT_W2KU, PLAT_MACX = 0x57327275, 0x57326B75, 0x4D616358


def checksum(buf):
    return (~sum(buf)) & 0xFFFFFFFF


def geometry(size):
    """Cylinders, heads, sectors per track for a size (format notes, sec. 6)."""
    sectors = min(size // SECTOR, 65535 * 16 * 255)
    if sectors >= 65535 * 16 * 63:
        spt, heads = 255, 16
        cth = sectors // spt
    else:
        spt = 17
        cth = sectors // spt
        heads = max(4, (cth + 1023) // 1024)
        if cth >= heads * 1024 or heads > 16:
            spt, heads = 31, 16
            cth = sectors // spt
        if cth >= heads * 1024:
            spt, heads = 63, 16
            cth = sectors // spt
    return cth // heads, heads, spt


_bodies = {}


def sector_pattern(tag, sector):
    """512 bytes naming image `tag` and virtual sector `sector`, no zero byte."""
    head = b"%-8s%08x" % (tag.encode()[:8], sector)
    start = (tag_hash(tag) + sector * 7) % 255
    body = _bodies.get(start)
    if body is None:
        body = _bodies[start] = bytes(((start + i) % 255) + 1 for i in range(SECTOR - 16))
    return head + body


def tag_hash(tag):
    return sum(tag.encode()) * 31 % 251


def utf16le(s):
    return s.encode("utf-16-le")


class Image:
    """One image: its writer's layout choices and the sectors it holds."""

    def __init__(self, name, writer, kind, size, bs=2 << 20, parent=None, writes=(),
                 full_bitmap=False, zero_writes=()):
        self.name, self.writer, self.kind = name, writer, kind
        self.size = parent.size if parent else size
        self.bs = bs
        self.parent = parent
        self.uuid = uuid.uuid5(uuid.NAMESPACE_URL, "vhdnbd-foreign-" + name).bytes
        # writes: (byte offset, byte length), sector-aligned
        self.writes = list(writes)
        # sectors written with zeros: allocated, bits set (compact frees them)
        self.zero_writes = list(zero_writes)
        self.full_bitmap = full_bitmap  # whole blocks written, every bit set
        self.keep = []                  # foreign bytes to leave alone
        self.locs = []                  # parent locator data
        self.pad = []                   # BAT padding that is not 0xFF
        writer_setup = {
            "win": (b"win ", 0x000A0000, b"Wi2k", 1700000000 - VHD_EPOCH),
            "caml": (b"caml", 0x00010000, b"\0\0\0\0", 0),
            # Unix time where seconds since 2000 are due.
            "xo": (b"xo  ", 0x00010000, b"\0\0\0\0", 1700000000),
            "tap": (b"tap\0", 0x00010003, b"\0\0\0\0", 1700000100 - VHD_EPOCH),
            "vbox": (b"vbox", 0x00060001, b"Wi2k", 1700000200 - VHD_EPOCH),
        }
        self.creator, self.version, self.host_os, self.timestamp = writer_setup[writer]

    # ---- content -------------------------------------------------------
    def own_sectors(self):
        """Sectors this image holds (bitmap bit set) -> their 512 bytes."""
        own = {}
        for off, length in self.writes:
            for s in range(off // SECTOR, (off + length) // SECTOR):
                own[s] = sector_pattern(self.name, s)
        for off, length in self.zero_writes:
            for s in range(off // SECTOR, (off + length) // SECTOR):
                own[s] = bytes(SECTOR)
        if self.full_bitmap and self.kind != "fixed":
            per = self.bs // SECTOR
            total = (self.size + SECTOR - 1) // SECTOR
            for b in {s // per for s in own}:
                for s in range(b * per, min((b + 1) * per, total)):
                    own.setdefault(s, bytes(SECTOR))
        return own

    def expected(self):
        """The virtual disk of the chain from this image down, as bytes."""
        base = self.parent.expected() if self.parent else bytearray(self.size)
        for s, data in self.own_sectors().items():
            base[s * SECTOR:(s + 1) * SECTOR] = data
        return base

    # ---- structures ----------------------------------------------------
    def footer(self, data_offset):
        c, h, s = geometry(self.size)
        disk_type = {"fixed": 2, "dynamic": 3, "differencing": 4}[self.kind]
        f = bytearray(512)
        f[0:8] = b"conectix"
        struct.pack_into(">IIQI", f, 8, 2, 0x00010000, data_offset, self.timestamp)
        f[28:32] = self.creator
        struct.pack_into(">I", f, 32, self.version)
        f[36:40] = self.host_os
        struct.pack_into(">QQHBBI", f, 40, self.size, self.size, c, h, s, disk_type)
        f[68:84] = self.uuid
        struct.pack_into(">I", f, 64, checksum(f))
        return bytes(f)

    def entries(self):
        n = (self.size + self.bs - 1) // self.bs
        return n + 1 if self.writer == "xo" else n

    def parent_paths(self):
        p = self.parent.name + ".vhd"
        return {
            "rel": utf16le(".\\" + p),
            "abs": utf16le("C:\\Hyper-V\\Virtual Hard Disks\\" + p),
            "macx": ("file://./" + p).encode(),
        }

    def build(self):
        if self.kind == "fixed":
            disk = bytearray(self.size)
            for s, data in self.own_sectors().items():
                disk[s * SECTOR:(s + 1) * SECTOR] = data
            return bytes(disk) + self.footer(0xFFFFFFFFFFFFFFFF)
        return self.build_dynamic()

    def build_dynamic(self):
        entries = self.entries()
        bat_span = (entries * 4 + SECTOR - 1) // SECTOR * SECTOR
        header_off = 512
        pieces = []  # (offset, bytes) besides blocks
        locators = []  # (code, space, bytes, offset)
        if self.writer == "win":
            bat_off = 8192
            if self.parent:
                p = self.parent_paths()
                locators.append((PLAT_W2KU, 4096, p["abs"], 4096))
                locators.append((PLAT_W2RU, 65536, p["rel"], 12288))
            first_block = (2 << 20) if self.kind == "dynamic" else (1 << 20)
        else:
            bat_off = 0x800 if self.writer == "caml" else 1536
            end = bat_off + bat_span
            if self.writer == "caml":
                self.keep.append((1536, 512))  # the gap: zeros, none of ours
            if self.writer == "tap":
                # Batmap header, then one bit per block, set for blocks
                # written whole, most significant bit first (libvhd's
                # test_bit: block 0 is 0x80 of byte 0).
                map_off = end + SECTOR
                map_bytes = bytearray((entries + 7) // 8)
                per = self.bs // SECTOR
                own = self.own_sectors()
                for b in range(entries):
                    if all(s in own for s in range(b * per, (b + 1) * per)):
                        map_bytes[b // 8] |= 0x80 >> (b % 8)
                map_secs = (len(map_bytes) + SECTOR - 1) // SECTOR
                map_data = bytes(map_bytes) + bytes(map_secs * SECTOR - len(map_bytes))
                hdr = bytearray(SECTOR)
                hdr[0:8] = b"tdbatmap"
                struct.pack_into(">QIII", hdr, 8, map_off, map_secs, 0x00010002,
                                 checksum(map_data))
                pieces.append((end, bytes(hdr)))
                pieces.append((map_off, map_data))
                self.keep.append((end, SECTOR + len(map_data)))
                end = map_off + len(map_data)
            if self.parent:
                p = self.parent_paths()
                order = ([("macx", PLAT_MACX), ("rel", PLAT_W2RU), ("abs", PLAT_W2KU)]
                         if self.writer == "tap" else
                         [("rel", PLAT_W2RU), ("abs", PLAT_W2KU)])
                for key, code in order:
                    data = p[key]
                    secs = (len(data) + SECTOR - 1) // SECTOR
                    # vhd-util counts the data space in sectors, as the
                    # specification says; the others in bytes.
                    space = secs if self.writer == "tap" else secs * SECTOR
                    locators.append((code, space, data, end))
                    end += secs * SECTOR
            first_block = end
            if self.writer == "xo":
                first_block = (end + 4095) // 4096 * 4096
        for code, space, data, off in locators:
            pieces.append((off, data))
            length = space if space >= len(data) else space * SECTOR
            self.locs.append((off, length))

        # Blocks: allocated ones, placed in reverse BAT order.
        per = self.bs // SECTOR
        bitmap_span = ((per + 7) // 8 + SECTOR - 1) // SECTOR * SECTOR
        own = self.own_sectors()
        blocks = sorted({s // per for s in own}, reverse=True)
        bat = [UNUSED] * entries
        pos = first_block
        block_data = []
        for b in blocks:
            bitmap = bytearray(bitmap_span)
            data = bytearray(self.bs)
            for i in range(per):
                s = b * per + i
                if s in own:
                    bitmap[i // 8] |= 0x80 >> (i % 8)
                    data[i * SECTOR:(i + 1) * SECTOR] = own[s]
            bat[b] = pos // SECTOR
            block_data.append((pos, bytes(bitmap) + bytes(data)))
            pos += bitmap_span + self.bs
        file_end = pos

        h = bytearray(1024)
        h[0:8] = b"cxsparse"
        struct.pack_into(">QQIII", h, 8, 0xFFFFFFFFFFFFFFFF, bat_off, 0x00010000, entries,
                         self.bs)
        if self.parent:
            h[40:56] = self.parent.uuid
            struct.pack_into(">I", h, 56, self.parent.timestamp)
            name = (self.parent.name + ".vhd").encode("utf-16-be")
            if self.writer == "win":  # Hyper-V stores the full path
                name = ("C:\\Hyper-V\\Virtual Hard Disks\\" + self.parent.name +
                        ".vhd").encode("utf-16-be")
            h[64:64 + len(name)] = name
            for i, (code, space, data, off) in enumerate(locators):
                struct.pack_into(">IIIIQ", h, 576 + 24 * i, code, space, len(data), 0, off)
        struct.pack_into(">I", h, 36, checksum(h))

        pad = 0x00 if self.writer == "vbox" else 0xFF
        bat_bytes = b"".join(struct.pack(">I", e) for e in bat)
        bat_bytes += bytes([pad]) * (bat_span - len(bat_bytes))
        if self.writer == "vbox" and bat_span > entries * 4:
            self.pad.append((bat_off + entries * 4, bat_span - entries * 4))

        out = bytearray(file_end + 512)
        footer = self.footer(header_off)
        out[0:512] = footer
        out[header_off:header_off + 1024] = h
        out[bat_off:bat_off + bat_span] = bat_bytes
        for off, data in pieces + block_data:
            out[off:off + len(data)] = data
        out[file_end:] = footer
        return bytes(out)

    def data_end(self):
        """End of the last sector this image marks present."""
        own = self.own_sectors()
        return (max(own) + 1) * SECTOR if own else 0

    def readers(self):
        r = []
        if self.kind != "differencing" and self.bs >= 4096:
            r.append("qemu")  # CHS size for some creators: the test compares that much
        if self.bs >= 4096 and (self.kind != "differencing" or self.whole_bitmap_bytes()):
            r.append("pyvhdi")
        return ",".join(r) or "-"

    def whole_bitmap_bytes(self):
        """Every bitmap byte of the chain's differencing levels all set or all clear."""
        img = self
        while img and img.kind == "differencing":
            if not img.full_bitmap and any(o % 4096 or n % 4096 for o, n in img.writes):
                return False
            img = img.parent
        return True


def ranges(rs):
    return ",".join("%d:%d" % r for r in rs) or "-"


def fixtures():
    M, K = 1 << 20, 1 << 10
    imgs = []
    # Windows: fixed and dynamic of 4 MiB (CHS: 4177920), odd sector writes.
    imgs.append(Image("win-fixed", "win", "fixed", 4 * M,
                      writes=[(0, 4096), (1 * M + 512, 1536), (4 * M - 1024, 1024)]))
    imgs.append(Image("win-dyn", "win", "dynamic", 4 * M,
                      writes=[(512, 512), (7 * 512, 3 * 512), (2 * M + 8192, 64 * K),
                              (4 * M - 512, 512)]))
    # A chain of 3, writes whole 4 KiB pages (libvhdi can judge it).
    gp = Image("win-gp", "win", "dynamic", 4 * M,
               writes=[(0, 1 * M), (3 * M, 1 * M)])
    # win-par leaves its second block to be allocated by a commit of win-top.
    par = Image("win-par", "win", "differencing", 0, parent=gp,
                writes=[(64 * K, 8 * K), (2 * M - 8192, 8192)])
    top = Image("win-top", "win", "differencing", 0, parent=par,
                writes=[(68 * K, 4 * K), (3 * M + 12 * K, 20 * K)])
    imgs += [gp, par, top]
    # Hyper-V's differencing disk over a fixed one.
    fb = Image("win-fbase", "win", "fixed", 4 * M, writes=[(0, 64 * K), (3 * M, 64 * K)])
    imgs.append(fb)
    imgs.append(Image("win-fchild", "win", "differencing", 0, parent=fb,
                      writes=[(8 * K, 8 * K), (3 * M + 60 * K, 8 * K)]))
    # Partly set bitmap bytes over a parent with data there.
    ob = Image("win-odd-base", "win", "dynamic", 4 * M, writes=[(0, 64 * K), (2 * M, 64 * K)])
    imgs.append(ob)
    imgs.append(Image("win-odd", "win", "differencing", 0, parent=ob,
                      writes=[(512, 512), (3 * 512, 1024), (2 * M + 4096 + 512, 512),
                              (4 * M - 512, 512)]))
    # XenServer vhd-tool: an odd size (5 MiB + 3 sectors), whole blocks.
    imgs.append(Image("caml-dyn", "caml", "dynamic", 5 * M + 3 * 512, full_bitmap=True,
                      writes=[(0, 4096), (2 * M + 512, 4096), (5 * M, 3 * 512)]))
    # vhd-tool chain of 3 with 512-byte blocks.
    c0 = Image("caml-c0", "caml", "dynamic", 1 * M + 5 * 512, bs=512, full_bitmap=True,
               writes=[(0, 8192), (600 * K, 4 * K), (1 * M, 5 * 512)])
    c1 = Image("caml-c1", "caml", "differencing", 0, parent=c0, bs=512, full_bitmap=True,
               writes=[(4096, 1024), (300 * K, 512), (1 * M + 1024, 512)])
    c2 = Image("caml-c2", "caml", "differencing", 0, parent=c1, bs=512, full_bitmap=True,
               writes=[(4096 + 512, 512), (800 * K, 2048)])
    imgs += [c0, c1, c2]
    # Xen Orchestra: 2 MiB and 1 KiB blocks, one BAT entry too many.
    # A block of zeros (written whole, as these writers do) for compact.
    imgs.append(Image("xo-dyn", "xo", "dynamic", 6 * M, full_bitmap=True,
                      writes=[(4 * M, 8192), (0, 4096), (6 * M - 4096, 4096)],
                      zero_writes=[(2 * M, 4096)]))
    imgs.append(Image("xo-1k", "xo", "dynamic", 1 * M + 512, bs=1024,
                      writes=[(512, 512), (512 * K, 2048), (1 * M, 512)]))
    # Xen Orchestra's delta chain of 3 with 1 KiB blocks (odd size).
    x0 = Image("xo-d0", "xo", "dynamic", 1 * M + 3 * 512, bs=1024,
               writes=[(0, 4096), (700 * K, 2048), (1 * M, 3 * 512)])
    x1 = Image("xo-d1", "xo", "differencing", 0, parent=x0, bs=1024,
               writes=[(1024, 1024), (512 * K, 512)])
    x2 = Image("xo-d2", "xo", "differencing", 0, parent=x1, bs=1024,
               writes=[(1536, 512), (700 * K + 512, 1024), (1 * M + 512, 512)])
    imgs += [x0, x1, x2]
    # blktap vhd-util: a batmap; dynamic with 2 MiB blocks, a chain of 3 with
    # 4 KiB blocks (whole pages written).
    imgs.append(Image("tap-dyn", "tap", "dynamic", 4 * M,
                      writes=[(0, 2 * M), (3 * M, 4096), (4 * M - 4096, 4096)]))
    t0 = Image("tap-t0", "tap", "dynamic", 3 * M, bs=4096,
               writes=[(0, 64 * K), (1 * M, 8192), (3 * M - 4096, 4096)])
    t1 = Image("tap-t1", "tap", "differencing", 0, parent=t0, bs=4096,
               writes=[(16 * K, 8192), (2 * M, 4096)])
    t2 = Image("tap-t2", "tap", "differencing", 0, parent=t1, bs=4096,
               writes=[(20 * K, 4096), (1 * M, 4096), (2 * M + 4096, 4096)])
    imgs += [t0, t1, t2]
    # VirtualBox: 64 KiB and 2 KiB blocks, BAT padding of zeros; a fixed
    # disk of an odd size.
    imgs.append(Image("vbox-dyn", "vbox", "dynamic", 3 * M + 512, bs=64 * K,
                      writes=[(128 * K, 4096), (64 * K - 512, 1024), (3 * M, 512)],
                      zero_writes=[(1 * M, 4096)]))
    v2k = Image("vbox-2k", "vbox", "dynamic", 1 * M, bs=2048,
                writes=[(2048, 2048), (1 * M - 1024, 1024)])
    imgs.append(v2k)
    imgs.append(Image("vbox-fixed", "vbox", "fixed", 2 * M + 7 * 512,
                      writes=[(0, 512), (2 * M, 7 * 512)]))
    # A VirtualBox differencing disk over its 2 KiB-block dynamic one.
    imgs.append(Image("vbox-2k-child", "vbox", "differencing", 0, parent=v2k,
                      bs=2048, writes=[(2048 + 512, 512), (512 * K, 4096)]))
    return imgs


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    lines = []
    for img in fixtures():
        with open(os.path.join(out, img.name + ".vhd"), "wb") as f:
            f.write(img.build())
        exp = img.expected()
        with open(os.path.join(out, img.name + ".raw"), "wb") as f:
            f.write(exp)
        parents = []
        p = img.parent
        while p:
            parents.append(p.name)
            p = p.parent
        lines.append(" ".join([
            img.name, img.kind, str(img.bs), str(img.size), str(img.data_end()),
            img.readers(), ",".join(parents) or "-", ranges(img.keep), ranges(img.locs),
            ranges(img.pad)]))
    with open(os.path.join(out, "manifest"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
