#!/usr/bin/python3
"""Reads a VHD image with libvhdi (pyvhdi), the reference reader.

  pyvhdi-dump.py OUT IMAGE [PARENT [GRANDPARENT...]]

Opens IMAGE and its parents (each child gets set_parent of the next), writes
the whole virtual disk to the raw file OUT (skipping all-zero chunks so the
output stays sparse) and prints one JSON object per level with what libvhdi
sees: media size, disk type, identifier, parent identifier and name.
"""
import json
import sys

import pyvhdi

# One sector per read, so that libvhdi looks up each sector's bitmap bit on
# its own: a bit-order mistake shows in the very sector it is about.
CHUNK = 512


def main():
    out, paths = sys.argv[1], sys.argv[2:]
    files = []
    for path in paths:
        f = pyvhdi.file()
        f.open(path)
        files.append(f)
    # Parents first: a child reads through the parent it is given.
    for child, parent in reversed(list(zip(files, files[1:]))):
        child.set_parent(parent)
    for path, f in zip(paths, files):
        print(json.dumps({
            "path": path,
            "media-size": f.get_media_size(),
            "disk-type": f.get_disk_type(),
            "identifier": str(f.get_identifier()),
            "parent-identifier": str(f.get_parent_identifier() or ""),
            "parent-filename": f.get_parent_filename() or "",
        }))
    top = files[0]
    size = top.get_media_size()
    zero = bytes(CHUNK)
    with open(out, "wb") as o:
        o.truncate(size)
        for off in range(0, size, CHUNK):
            n = min(CHUNK, size - off)
            data = top.read_buffer_at_offset(n, off)
            if len(data) != n:
                sys.exit(f"{paths[0]}: short read at {off}: {len(data)} of {n}")
            if data != zero[:n]:
                o.seek(off)
                o.write(data)
    for f in files:
        f.close()


if __name__ == "__main__":
    main()
