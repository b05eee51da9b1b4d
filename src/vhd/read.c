/* read.c: reads (vhd_read, vhd_read_map), through the parents of a
 * differencing image. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "rw.h"

/* One read in progress (vhd_read_map): its flags, and its runs for the
 * caller (m.cb NULL: nobody asked). */
struct read_ctx {
  unsigned flags;
  struct map_merge m;
};

static int read_emit(struct read_ctx *rc, uint64_t off, uint64_t len, unsigned mflags) {
  if (!rc->m.cb)
    return 0;
  struct vhd_extent e = {.offset = off, .length = len, .flags = mflags};
  return vhd_merge_emit(&rc->m, &e);
}

static int read_data(vhd_t *vhd, struct read_ctx *rc, uint8_t *buf, size_t len, uint64_t foff,
                     struct vhd_err *err) {
  if (rc->flags & VHD_READ_NOWAIT)
    return vhd->atime_free ? vhd_io_pread_nowait(vhd->fd, buf, len, foff) : -EAGAIN;
  int r = vhd_io_pread(vhd->fd, buf, len, foff);
  return r < 0 ? vhd_set_io_err(vhd, err, r, "reading data", foff) : 0;
}

static int read_range(vhd_t *vhd, uint8_t *buf, uint64_t off, size_t len, struct read_ctx *rc,
                      struct vhd_err *err);

/* Bytes that this image does not hold: the parent's, or zeros. */
static int read_absent(vhd_t *vhd, uint8_t *buf, uint64_t off, size_t len, struct read_ctx *rc,
                       struct vhd_err *err) {
  vhd_t *p = vhd->parent;
  size_t inside = 0;
  if (p && off < p->virtual_size)
    inside = (size_t)MIN((uint64_t)len, p->virtual_size - off);
  if (inside) {
    int r = read_range(p, buf, off, inside, rc, err);
    if (r)
      return r;
  }
  if (inside == len)
    return 0;
  if (!(rc->flags & VHD_READ_SKIP_ZERO))
    memset(buf + inside, 0, len - inside);
  return read_emit(rc, off + inside, len - inside, VHD_MAP_ZERO);
}

/* A block written piecemeal (a guest's 4 KiB writes into a fresh block, a
 * Windows image with only the written sectors' bits set) alternates short
 * runs of set and clear bits: read run by run, a 1 MiB read of it cost
 * hundreds of system calls.  Set runs separated by clear runs of at most
 * this many bytes are read from the file in one piece instead, and the
 * clear runs are then overwritten with what they really hold (the
 * parent's bytes, or zeros).  Copying a clear run's file bytes costs less
 * than the system call it saves up to about this size; the file range is
 * inside the block's data area and ends at a set run that must be read
 * anyway, so it never reaches past the end of a readable file. */
#define READ_COALESCE_GAP (16u * 1024)

/* From pos, the end of a set run inside [.., end) of a block, where one
 * read of the file should stop: past every clear run no longer than
 * READ_COALESCE_GAP that a set run follows. */
static uint32_t coalesce_end(const uint8_t *bm, uint32_t base, uint32_t s1, uint32_t pos,
                             uint32_t end) {
  while (pos < end) {
    bool present;
    uint32_t s = pos / 512;
    uint32_t gap_end = MIN(end, (s + vhd_bitmap_run(bm, s - base, s1 - base, &present)) * 512);
    if (gap_end >= end || gap_end - pos > READ_COALESCE_GAP)
      break;
    s = gap_end / 512;
    pos = MIN(end, (s + vhd_bitmap_run(bm, s - base, s1 - base, &present)) * 512);
  }
  return pos;
}

/* The first block of [off, off+len) on a dynamic or differencing disk, or
 * the first run of unallocated blocks: *done says how many bytes of the
 * range were read.  A range the image holds all of is one read of its
 * data, and a range it holds none of goes to the parent (or reads as zeros)
 * in one piece, whatever the number of blocks: no sector-by-sector walk. */
static int read_segment(vhd_t *vhd, uint8_t *buf, uint64_t off, size_t len, struct read_ctx *rc,
                        size_t *done, struct vhd_err *err) {
  uint32_t blk = (uint32_t)(off / vhd->block_size);
  uint64_t block_start = (uint64_t)blk * vhd->block_size;
  uint32_t boff = (uint32_t)(off - block_start);
  size_t n = (size_t)MIN((uint64_t)len, vhd->block_size - boff);
  uint32_t span = (uint32_t)DIV_ROUND_UP((uint64_t)boff + len, vhd->block_size);
  uint32_t s0 = boff / 512, s1 = (uint32_t)DIV_ROUND_UP((uint64_t)boff + n, 512);
  struct block_snapshot snap;
  int r = vhd_block_snapshot_take(vhd, blk, s0, s1, span, rc->flags & VHD_READ_NOWAIT, true,
                                  &snap, err);
  if (r < 0)
    return r;
  /* Only frees the snapshot's bitmap copy, if it took one, at scope exit. */
  CLEANUP_FREE __attribute__((unused)) uint8_t *heapbm = snap.heap;
  uint32_t entry = snap.entry;
  if (entry == VHD_BAT_UNUSED) {
    n = (size_t)MIN((uint64_t)len, (uint64_t)snap.unused_blocks * vhd->block_size - boff);
    *done = n;
    return read_absent(vhd, buf, off, n, rc, err);
  }
  *done = n;
  if (snap.uniform == SNAP_NONE_SET)
    return read_absent(vhd, buf, off, n, rc, err);

  uint64_t data_off = (uint64_t)entry * 512 + vhd->bitmap_size;
  if (snap.uniform == SNAP_ALL_SET) {
    r = read_data(vhd, rc, buf, n, data_off + boff, err);
    if (r == 0)
      r = read_emit(rc, off, n, VHD_MAP_DATA);
    vhd_block_unpin(vhd, blk);
    return r;
  }
  const uint8_t *bm = snap.bits;
  uint32_t base = s0 & ~7u; /* bm holds bits from sector `base` on */
  uint32_t pos = boff;
  uint32_t end = boff + (uint32_t)n;
  uint32_t read_to = boff; /* the file's bytes are in buf up to here */
  while (pos < end && r == 0) {
    bool present;
    uint32_t s = pos / 512;
    uint32_t run = vhd_bitmap_run(bm, s - base, s1 - base, &present);
    uint32_t run_end = MIN(end, (s + run) * 512);
    uint8_t *dst = buf + (pos - boff);
    size_t k = run_end - pos;
    if (present) {
      if (pos >= read_to) {
        read_to = coalesce_end(bm, base, s1, run_end, end);
        r = read_data(vhd, rc, dst, read_to - pos, data_off + pos, err);
      }
      if (r == 0)
        r = read_emit(rc, block_start + pos, k, VHD_MAP_DATA);
    } else {
      /* Inside a coalesced read this overwrites the file's bytes, which
       * may be stale data: zeros too, whatever VHD_READ_SKIP_ZERO says. */
      unsigned flags = rc->flags;
      if (pos < read_to)
        rc->flags &= ~VHD_READ_SKIP_ZERO;
      r = read_absent(vhd, dst, block_start + pos, k, rc, err);
      rc->flags = flags;
    }
    pos = run_end;
  }
  if (snap.pinned)
    vhd_block_unpin(vhd, blk);
  return r;
}

static int read_range(vhd_t *vhd, uint8_t *buf, uint64_t off, size_t len, struct read_ctx *rc,
                      struct vhd_err *err) {
  if (vhd->type == VHD_TYPE_FIXED) {
    int r = read_data(vhd, rc, buf, len, off, err);
    return r ? r : read_emit(rc, off, len, VHD_MAP_DATA);
  }
  while (len > 0) {
    uint32_t blk = (uint32_t)(off / vhd->block_size);
    size_t n = 0;
    int r;
    if (vhd_bat_peek(vhd, blk) == VHD_BAT_UNUSED) {
      /* Nothing of this image to read: no lock, no bitmap, straight to the
       * parent for every unallocated block in a row. */
      uint64_t end = (uint64_t)blk * vhd->block_size;
      do
        end += vhd->block_size;
      while (end < off + len && vhd_bat_peek(vhd, (uint32_t)(end / vhd->block_size)) ==
                                    VHD_BAT_UNUSED);
      n = (size_t)(MIN(end, off + len) - off);
      r = read_absent(vhd, buf, off, n, rc, err);
    } else {
      r = read_segment(vhd, buf, off, len, rc, &n, err);
    }
    if (r)
      return r;
    buf += n;
    off += n;
    len -= n;
  }
  return 0;
}

int vhd_read_map(vhd_t *vhd, void *buf, uint64_t off, size_t len, unsigned flags,
                 vhd_map_cb cb, void *opaque, struct vhd_err *err) {
  if ((flags & VHD_READ_SKIP_ZERO) && !cb)
    return vhd_set_err(err, -EINVAL, "%s: read: VHD_READ_SKIP_ZERO without a map callback",
                       vhd->path);
  int r = vhd_check_range(vhd, off, len, "read", err);
  if (r < 0 || len == 0)
    return r;
  struct read_ctx rc = {.flags = flags, .m = {.cb = cb, .opaque = opaque, .flags_only = true}};
  r = read_range(vhd, buf, off, len, &rc, err);
  if (r == 0 && rc.m.have)
    r = cb(opaque, &rc.m.cur);
  return r;
}

int vhd_read(vhd_t *vhd, void *buf, uint64_t off, size_t len, struct vhd_err *err) {
  return vhd_read_map(vhd, buf, off, len, 0, NULL, NULL, err);
}

/* A read inside the engine (read-modify-write of sector edges). */
int vhd_read_plain(vhd_t *vhd, uint8_t *buf, uint64_t off, size_t len, struct vhd_err *err) {
  struct read_ctx rc = {0};
  return read_range(vhd, buf, off, len, &rc, err);
}
