/* map.c: where an image's data lies (vhd_map), and the merging of runs
 * that reads with a map callback share. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "rw.h"

int vhd_merge_emit(struct map_merge *m, const struct vhd_extent *e) {
  if (m->probe_zero)
    return (e->flags & VHD_MAP_ZERO) ? 0 : 2;
  if (m->have && m->cur.flags == e->flags && m->cur.offset + m->cur.length == e->offset &&
      (m->flags_only || (m->cur.depth == e->depth &&
                         (e->depth < 0 || m->cur.file_offset + m->cur.length == e->file_offset)))) {
    m->cur.length += e->length;
    return 0;
  }
  if (m->have) {
    int r = m->cb(m->opaque, &m->cur);
    if (r)
      return r;
  }
  m->cur = *e;
  m->have = true;
  return 0;
}

static int map_range(vhd_t *vhd, uint64_t off, uint64_t len, int depth, struct map_merge *m,
                     struct vhd_err *err);

static int map_absent(vhd_t *vhd, uint64_t off, uint64_t len, int depth, struct map_merge *m,
                      struct vhd_err *err) {
  vhd_t *p = vhd->parent;
  uint64_t inside = 0;
  if (p && off < p->virtual_size) {
    inside = MIN(len, p->virtual_size - off);
    int r = map_range(p, off, inside, depth + 1, m, err);
    if (r)
      return r;
  }
  if (inside < len) {
    struct vhd_extent e = {off + inside, len - inside, VHD_MAP_ZERO, -1, 0};
    return vhd_merge_emit(m, &e);
  }
  return 0;
}

static int map_range(vhd_t *vhd, uint64_t off, uint64_t len, int depth, struct map_merge *m,
                     struct vhd_err *err) {
  if (vhd->type == VHD_TYPE_FIXED) {
    struct vhd_extent e = {off, len, VHD_MAP_DATA, depth, off};
    return vhd_merge_emit(m, &e);
  }
  while (len > 0) {
    uint32_t blk = (uint32_t)(off / vhd->block_size);
    uint64_t block_start = (uint64_t)blk * vhd->block_size;
    uint32_t boff = (uint32_t)(off - block_start);
    uint64_t n = MIN(len, (uint64_t)vhd->block_size - boff);
    uint32_t span = (uint32_t)MIN(DIV_ROUND_UP(boff + len, vhd->block_size),
                                  (uint64_t)vhd->max_entries - blk);
    uint32_t s0 = boff / 512, s1 = (uint32_t)DIV_ROUND_UP((uint64_t)boff + n, 512);
    struct block_snapshot snap;
    int r = vhd_block_snapshot_take(vhd, blk, s0, s1, span, false, false, &snap, err);
    if (r < 0)
      return r;
    /* Only frees the snapshot's bitmap copy, if it took one, at scope exit. */
    CLEANUP_FREE __attribute__((unused)) uint8_t *heapbm = snap.heap;
    uint32_t entry = snap.entry;
    const uint8_t *bm = snap.bits;
    uint64_t data_off = (uint64_t)entry * 512 + vhd->bitmap_size;
    if (entry == VHD_BAT_UNUSED) {
      /* A run of unallocated blocks: the parent's in one piece. */
      n = MIN(len, (uint64_t)snap.unused_blocks * vhd->block_size - boff);
      if ((r = map_absent(vhd, off, n, depth, m, err)))
        return r;
    } else if (snap.uniform == SNAP_NONE_SET) {
      if ((r = map_absent(vhd, off, n, depth, m, err)))
        return r;
    } else if (snap.uniform == SNAP_ALL_SET) {
      struct vhd_extent e = {off, n, VHD_MAP_DATA, depth, data_off + boff};
      if ((r = vhd_merge_emit(m, &e)))
        return r;
    } else {
      uint32_t base = s0 & ~7u;
      uint32_t pos = boff, end = boff + (uint32_t)n;
      while (pos < end) {
        bool present;
        uint32_t s = pos / 512;
        uint32_t run = vhd_bitmap_run(bm, s - base, s1 - base, &present);
        uint32_t run_end = MIN(end, (s + run) * 512);
        if (present) {
          struct vhd_extent e = {block_start + pos, run_end - pos, VHD_MAP_DATA, depth,
                                 data_off + pos};
          r = vhd_merge_emit(m, &e);
        } else {
          r = map_absent(vhd, block_start + pos, run_end - pos, depth, m, err);
        }
        if (r)
          return r;
        pos = run_end;
      }
    }
    off += n;
    len -= n;
  }
  return 0;
}

struct first_extent {
  struct vhd_extent e;
  bool have;
};

static int take_first(void *opaque, const struct vhd_extent *e) {
  struct first_extent *f = opaque;
  f->e = *e;
  f->have = true;
  return 1; /* one is enough: a second means the range is not one run */
}

int vhd_read_extent(vhd_t *vhd, uint64_t off, size_t len, int *fd, uint64_t *file_off,
                    struct vhd_err *err) {
  int r = vhd_check_range(vhd, off, len, "read", err);
  if (r < 0 || len == 0)
    return r;
  struct first_extent f = {.have = false};
  struct map_merge m = {.cb = take_first, .opaque = &f};
  r = map_range(vhd, off, len, 0, &m, err);
  if (r < 0)
    return r;
  if (r == 0 && m.have)
    take_first(&f, &m.cur);
  if (!f.have || f.e.length != len || f.e.depth < 0 || !(f.e.flags & VHD_MAP_DATA))
    return 0;
  vhd_t *level = vhd;
  for (int d = 0; d < f.e.depth && level; d++)
    level = level->parent;
  if (!level)
    return 0;
  if (!level->readonly && level->type != VHD_TYPE_FIXED) {
    /* A block of a writable image may be freed and its space reused: only
     * whole pages of its data may be handed out, pages that a punch takes
     * out of the file entire.  A page shared with a bitmap or another
     * block would be zeroed or rewritten in place. */
    uint64_t page = (uint64_t)sysconf(_SC_PAGESIZE);
    uint64_t data_start = f.e.file_offset - off % level->block_size;
    if (data_start % page != 0 || level->block_size % page != 0)
      return 0;
    atomic_store(&level->extents_shared, true);
  }
  *fd = level->fd;
  *file_off = f.e.file_offset;
  return 1;
}

int vhd_map(vhd_t *vhd, uint64_t off, uint64_t len, vhd_map_cb cb, void *opaque,
            struct vhd_err *err) {
  int r = vhd_check_range(vhd, off, len, "map", err);
  if (r < 0 || len == 0)
    return r;
  struct map_merge m = {.cb = cb, .opaque = opaque, .probe_zero = cb == NULL};
  r = map_range(vhd, off, len, 0, &m, err);
  if (m.probe_zero) /* internal use: 1 = all zero, 2 = some data */
    return r == 0 ? 1 : r;
  if (r == 0 && m.have)
    r = m.cb(m.opaque, &m.cur);
  return r;
}
