/* rw.c: reads, writes, zeroing, trimming, mapping and flushing. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "vhd-internal.h"

#define ZERO_BUF_SIZE (1024 * 1024)
static uint8_t zero_buf[ZERO_BUF_SIZE]; /* never written */

static int check_range(const vhd_t *vhd, uint64_t off, uint64_t len, const char *what,
                       struct vhd_err *err) {
  if (len > vhd->virtual_size || off > vhd->virtual_size - len)
    return vhd_set_err(err, -EINVAL,
                       "%s: %s at offset %llu length %llu is beyond the end of the disk (%llu "
                       "bytes)",
                       vhd->path, what, (unsigned long long)off, (unsigned long long)len,
                       (unsigned long long)vhd->virtual_size);
  return 0;
}

/* After a failed write or sync nothing more is written or flushed (see
 * "Write errors" in vhd.h): EIO, whatever the first failure was. */
static int check_no_write_error(const vhd_t *vhd, const char *what, struct vhd_err *err) {
  if (!vhd_io_refuses_writes(vhd))
    return 0;
  return vhd_set_err(err, -EIO,
                     "%s: %s refused after an earlier failure (%s): data written since the last "
                     "successful flush may not be on the disk",
                     vhd->path, what, vhd->write_error_what);
}

static int check_writable(const vhd_t *vhd, const char *what, struct vhd_err *err) {
  if (vhd->readonly)
    return vhd_set_err(err, -EPERM, "%s: %s on an image opened read-only", vhd->path, what);
  return check_no_write_error(vhd, what, err);
}

static int io_err(vhd_t *vhd, struct vhd_err *err, int r, const char *what, uint64_t off) {
  return vhd_set_err(err, r, "%s: %s at file offset %llu: %s", vhd->path, what,
                     (unsigned long long)off, r == -ENODATA ? "unexpected end of file"
                                                            : strerror(-r));
}

/* Runs reported to a vhd_map or vhd_read_map caller, merged as they come. */
struct map_merge {
  vhd_map_cb cb;
  void *opaque;
  struct vhd_extent cur;
  bool have;
  bool probe_zero; /* cb == NULL: answer "is everything zero?" (1) or not (2) */
  bool flags_only; /* merge runs by flags alone (vhd_read_map reports no depth) */
};

static int merge_emit(struct map_merge *m, const struct vhd_extent *e) {
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
  return merge_emit(&rc->m, &e);
}

static int read_data(vhd_t *vhd, struct read_ctx *rc, uint8_t *buf, size_t len, uint64_t foff,
                     struct vhd_err *err) {
  if (rc->flags & VHD_READ_NOWAIT)
    return vhd->atime_free ? vhd_io_pread_nowait(vhd->fd, buf, len, foff) : -EAGAIN;
  int r = vhd_io_pread(vhd->fd, buf, len, foff);
  return r < 0 ? io_err(vhd, err, r, "reading data", foff) : 0;
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

/* A block's BAT entry and a copy of the bitmap bytes covering sectors
 * [s0, s1), taken under the lock so the I/O after it runs without it.
 * bits[0] holds sector s0 rounded down to a multiple of 8.  With nowait,
 * -EAGAIN rather than waiting for the lock or for the bitmap to be read.
 * With pin, an allocated block stays pinned (see the write order) until
 * the caller's reads of it are done. */
struct block_snapshot {
  uint32_t entry;
  bool pinned;
  uint8_t *bits;
  uint8_t *heap;
  uint8_t stack[2048];
};

static int block_snapshot_take(vhd_t *vhd, uint32_t blk, uint32_t s0, uint32_t s1, bool nowait,
                               bool pin, struct block_snapshot *snap, struct vhd_err *err) {
  size_t need = (s1 + 7) / 8 - s0 / 8;
  snap->heap = NULL;
  snap->pinned = false;
  snap->bits = snap->stack;
  if (need > sizeof snap->stack) {
    snap->heap = malloc(need);
    if (!snap->heap)
      return vhd_set_err(err, -ENOMEM, "%s: out of memory for the bitmap of block %u",
                         vhd->path, blk);
    snap->bits = snap->heap;
  }
  int r = 0;
  if (nowait) {
    if (pthread_mutex_trylock(&vhd->lock) != 0)
      r = -EAGAIN;
  } else {
    pthread_mutex_lock(&vhd->lock);
  }
  if (r == 0) {
    snap->entry = vhd->bat[blk];
    if (snap->entry != VHD_BAT_UNUSED) {
      uint8_t *full = NULL;
      if (nowait && !vhd->bitmaps[blk])
        r = -EAGAIN;
      else
        r = vhd_bitmap_get(vhd, blk, &full, err);
      if (r == 0)
        memcpy(snap->bits, full + s0 / 8, need);
      if (r == 0 && pin) {
        vhd_block_pin(vhd, blk);
        snap->pinned = true;
      }
    }
    pthread_mutex_unlock(&vhd->lock);
  }
  if (r < 0) {
    free(snap->heap);
    snap->heap = NULL;
  }
  return r;
}

/* One block of a dynamic/differencing disk: [off, off+len) inside block blk. */
static int read_segment(vhd_t *vhd, uint8_t *buf, uint64_t off, size_t len, struct read_ctx *rc,
                        struct vhd_err *err) {
  uint32_t blk = (uint32_t)(off / vhd->block_size);
  uint64_t block_start = (uint64_t)blk * vhd->block_size;
  uint32_t boff = (uint32_t)(off - block_start);
  uint32_t s0 = boff / 512, s1 = (uint32_t)DIV_ROUND_UP((uint64_t)boff + len, 512);
  struct block_snapshot snap;
  int r = block_snapshot_take(vhd, blk, s0, s1, rc->flags & VHD_READ_NOWAIT, true, &snap, err);
  if (r < 0)
    return r;
  CLEANUP_FREE uint8_t *heapbm = snap.heap;
  uint32_t entry = snap.entry;
  const uint8_t *bm = snap.bits;
  if (entry == VHD_BAT_UNUSED)
    return read_absent(vhd, buf, off, len, rc, err);

  uint64_t data_off = (uint64_t)entry * 512 + vhd->bitmap_size;
  uint32_t base = s0 & ~7u; /* bm holds bits from sector `base` on */
  uint32_t pos = boff;
  uint32_t end = boff + (uint32_t)len;
  while (pos < end && r == 0) {
    bool present;
    uint32_t s = pos / 512;
    uint32_t run = vhd_bitmap_run(bm, s - base, s1 - base, &present);
    uint32_t run_end = MIN(end, (s + run) * 512);
    uint8_t *dst = buf + (pos - boff);
    size_t n = run_end - pos;
    if (present) {
      r = read_data(vhd, rc, dst, n, data_off + pos, err);
      if (r == 0)
        r = read_emit(rc, block_start + pos, n, VHD_MAP_DATA);
    } else {
      r = read_absent(vhd, dst, block_start + pos, n, rc, err);
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
    size_t n = (size_t)MIN((uint64_t)len, vhd->block_size - off % vhd->block_size);
    int r = read_segment(vhd, buf, off, n, rc, err);
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
  int r = check_range(vhd, off, len, "read", err);
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
static int read_plain(vhd_t *vhd, uint8_t *buf, uint64_t off, size_t len, struct vhd_err *err) {
  struct read_ctx rc = {0};
  return read_range(vhd, buf, off, len, &rc, err);
}

/* Writes whole sectors [off, off+len) (512-aligned) inside one block. */
static int write_sectors(vhd_t *vhd, const uint8_t *buf, uint64_t off, size_t len,
                         struct vhd_err *err) {
  uint32_t blk = (uint32_t)(off / vhd->block_size);
  uint32_t boff = (uint32_t)(off % vhd->block_size);
  uint32_t s0 = boff / 512, s1 = s0 + (uint32_t)(len / 512);
  pthread_mutex_lock(&vhd->lock);
  int r = 0;
  if (vhd->bat[blk] == VHD_BAT_UNUSED)
    r = vhd_block_allocate(vhd, blk, err);
  uint8_t *bm = NULL;
  if (r == 0)
    r = vhd_bitmap_get(vhd, blk, &bm, err);
  bool all_set = false;
  uint32_t entry = VHD_BAT_UNUSED;
  if (r == 0) {
    bool v;
    all_set = vhd_bitmap_run(bm, s0, s1, &v) == s1 - s0 && v;
    entry = vhd->bat[blk];
    vhd_block_pin(vhd, blk);
  }
  pthread_mutex_unlock(&vhd->lock);
  if (r < 0)
    return r;
  uint64_t data_off = (uint64_t)entry * 512 + vhd->bitmap_size + boff;
  r = vhd_io_pwrite(vhd, buf, len, data_off);
  if (r == 0 && !all_set) {
    /* Bits only after the data is in place: see the write order.  Still
     * pinned, so a block that kept its entry kept its space: a block
     * freed meanwhile gets no bits for data that went to its old space. */
    pthread_mutex_lock(&vhd->lock);
    if (vhd->bat[blk] == entry && vhd->bitmaps[blk]) {
      for (uint32_t s = s0; s < s1; s++)
        vhd_bit_set(vhd->bitmaps[blk], s);
      vhd_block_mark_dirty(vhd, blk);
    }
    pthread_mutex_unlock(&vhd->lock);
  }
  vhd_block_unpin(vhd, blk);
  return r < 0 ? io_err(vhd, err, r, "writing data", data_off) : 0;
}

/* [off, off+len) inside one block, any alignment: partial sectors are
 * completed with what the disk shows now (own data, parent or zeros). */
static int write_segment(vhd_t *vhd, const uint8_t *buf, uint64_t off, size_t len,
                         struct vhd_err *err) {
  uint64_t a = off & ~511ull, b = ROUND_UP(off + len, 512);
  if (a == off && b == off + len)
    return write_sectors(vhd, buf, off, len, err);
  size_t wlen = (size_t)(b - a);
  CLEANUP_FREE uint8_t *tmp = malloc(wlen);
  if (!tmp)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory writing", vhd->path);
  int r = 0;
  if (a != off)
    r = read_plain(vhd, tmp, a, 512, err);
  if (r == 0 && b != off + len && (b - 512 != a || a == off))
    r = read_plain(vhd, tmp + wlen - 512, b - 512, 512, err);
  if (r < 0)
    return r;
  memcpy(tmp + (off - a), buf, len);
  return write_sectors(vhd, tmp, a, wlen, err);
}

static int write_fixed(vhd_t *vhd, const uint8_t *buf, uint64_t off, size_t len,
                       struct vhd_err *err) {
  int r = vhd_io_pwrite(vhd, buf, len, off);
  return r < 0 ? io_err(vhd, err, r, "writing", off) : 0;
}

int vhd_write(vhd_t *vhd, const void *buf, uint64_t off, size_t len, unsigned flags,
              struct vhd_err *err) {
  int r = check_writable(vhd, "write", err);
  if (r == 0)
    r = check_range(vhd, off, len, "write", err);
  if (r < 0 || len == 0)
    return r;
  const uint8_t *p = buf;
  if (vhd->type == VHD_TYPE_FIXED) {
    r = write_fixed(vhd, p, off, len, err);
  } else {
    while (len > 0 && r == 0) {
      size_t n = (size_t)MIN((uint64_t)len, vhd->block_size - off % vhd->block_size);
      r = write_segment(vhd, p, off, n, err);
      p += n;
      off += n;
      len -= n;
    }
  }
  if (r == 0 && (flags & VHD_FUA))
    r = vhd_flush(vhd, err);
  return r;
}

static int write_zero_data(vhd_t *vhd, uint64_t off, uint64_t len, struct vhd_err *err) {
  while (len > 0) {
    size_t n = (size_t)MIN(len, (uint64_t)ZERO_BUF_SIZE);
    if (vhd->type != VHD_TYPE_FIXED)
      n = (size_t)MIN((uint64_t)n, vhd->block_size - off % vhd->block_size);
    int r = vhd->type == VHD_TYPE_FIXED ? write_fixed(vhd, zero_buf, off, n, err)
                                        : write_segment(vhd, zero_buf, off, n, err);
    if (r < 0)
      return r;
    off += n;
    len -= n;
  }
  return 0;
}

/* Inside one block, where the parent (if any) reads as zeros: clearing
 * bitmap bits is enough.  whole_only: leave partial sectors alone (trim). */
static int zero_by_bitmap(vhd_t *vhd, uint64_t off, uint64_t len, bool may_free, bool whole_only,
                          struct vhd_err *err) {
  uint32_t blk = (uint32_t)(off / vhd->block_size);
  uint32_t boff = (uint32_t)(off % vhd->block_size);
  uint64_t a = ROUND_UP(off, 512), b = ROUND_DOWN(off + len, 512);
  int r = 0;
  pthread_mutex_lock(&vhd->lock);
  uint32_t entry = vhd->bat[blk];
  uint8_t *bm = NULL;
  if (entry != VHD_BAT_UNUSED)
    r = vhd_bitmap_get(vhd, blk, &bm, err);
  bool head_set = false, tail_set = false;
  if (r == 0 && entry != VHD_BAT_UNUSED) {
    int freed = may_free && boff == 0 && len == vhd->block_size
                    ? vhd_block_release_space(vhd, blk,
                                              (uint64_t)entry * 512 | VHD_FREE_NEEDS_ZEROING)
                    : -1;
    if (freed >= 0) {
      /* The block is reused after the next flush (see the write order);
       * until then its on-disk BAT entry may still point here, so its
       * holes must read as zeros: punching bitmap and data does that and
       * gives the disk space back now.  Punched under the lock: once the
       * space is on the free list a flush may hand it to another block,
       * and a late punch would destroy that block's data.  Where the
       * punch fails (or a pinned write may land after it), the block is
       * zeroed when it is reused. */
      if (vhd_io_punch(vhd, (uint64_t)entry * 512,
                       (uint64_t)vhd->bitmap_size + vhd->block_size) == 0 &&
          !freed)
        vhd->free_pending[vhd->n_free_pending - 1] &= ~(uint64_t)VHD_FREE_NEEDS_ZEROING;
      vhd->bat[blk] = VHD_BAT_UNUSED;
      free(vhd->bitmaps[blk]);
      vhd->bitmaps[blk] = NULL;
      vhd->allocated_blocks--;
      vhd_bat_mark_dirty(vhd, blk);
      pthread_mutex_unlock(&vhd->lock);
      return 0;
    }
    uint32_t bstart = (uint32_t)(a - (off - boff)) / 512, bend = (uint32_t)(b - (off - boff)) / 512;
    if (a < b) {
      for (uint32_t s = bstart; s < bend; s++)
        vhd_bit_clear(bm, s);
      vhd_block_mark_dirty(vhd, blk);
    }
    if (off % 512)
      head_set = vhd_bit_get(bm, boff / 512);
    if ((off + len) % 512 && (a <= b || !(off % 512)))
      tail_set = vhd_bit_get(bm, (uint32_t)((off + len - (off - boff)) / 512));
    if (a < b)
      vhd_block_pin(vhd, blk);
  }
  pthread_mutex_unlock(&vhd->lock);
  if (r == 0 && entry != VHD_BAT_UNUSED && a < b) {
    /* Cleared bits already make these sectors read as zeros here; zeroing
     * the bytes too keeps readers that ignore bitmaps (QEMU) in agreement.
     * A hole punch is cheap; where it is not supported, write zeros. */
    uint64_t data = (uint64_t)entry * 512 + vhd->bitmap_size + (a - (off - boff));
    if (vhd_io_punch(vhd, data, b - a) < 0) {
      for (uint64_t done = 0; done < b - a && r == 0;) {
        size_t n = (size_t)MIN(b - a - done, (uint64_t)ZERO_BUF_SIZE);
        r = vhd_io_pwrite(vhd, zero_buf, n, data + done);
        if (r < 0)
          r = io_err(vhd, err, r, "zeroing data", data + done);
        done += n;
      }
    }
    vhd_block_unpin(vhd, blk);
  }
  if (r < 0 || whole_only)
    return r;
  /* Partial sectors still holding data get zero bytes written. */
  if (a > b) { /* inside one sector */
    return head_set ? write_zero_data(vhd, off, len, err) : 0;
  }
  if (head_set && (r = write_zero_data(vhd, off, a - off, err)) < 0)
    return r;
  if (tail_set && (r = write_zero_data(vhd, b, off + len - b, err)) < 0)
    return r;
  return 0;
}

struct zero_ctx {
  vhd_t *vhd;
  bool may_free;
  bool whole_only;
  struct vhd_err *err;
};

static int zero_parent_extent(void *opaque, const struct vhd_extent *e) {
  struct zero_ctx *z = opaque;
  if (e->flags & VHD_MAP_ZERO)
    return zero_by_bitmap(z->vhd, e->offset, e->length, z->may_free, z->whole_only, z->err);
  if (z->whole_only)
    return 0; /* trim over parent data: nothing cheap to do */
  return write_zero_data(z->vhd, e->offset, e->length, z->err);
}

static int zero_segment(vhd_t *vhd, uint64_t off, uint64_t len, unsigned flags, bool whole_only,
                        struct vhd_err *err) {
  struct zero_ctx z = {vhd, (flags & VHD_MAY_TRIM) != 0, whole_only, err};
  if (!vhd->parent)
    return zero_by_bitmap(vhd, off, len, z.may_free, whole_only, err);
  /* Zeros must hide parent data; where the parent reads as zeros anyway the
   * bitmap is enough.  A whole block may only be freed if all of it does. */
  uint64_t inside = off < vhd->parent->virtual_size ? MIN(len, vhd->parent->virtual_size - off) : 0;
  if (z.may_free) {
    int r = inside ? vhd_map(vhd->parent, off, inside, NULL, NULL, err) : 1;
    if (r < 0)
      return r;
    z.may_free = r == 1;
  }
  int r = inside ? vhd_map(vhd->parent, off, inside, zero_parent_extent, &z, err) : 0;
  if (r == 0 && inside < len)
    r = zero_by_bitmap(vhd, off + inside, len - inside, false, whole_only, err);
  return r > 0 ? 0 : r;
}

int vhd_write_zeroes(vhd_t *vhd, uint64_t off, uint64_t len, unsigned flags,
                     struct vhd_err *err) {
  int r = check_writable(vhd, "write zeroes", err);
  if (r == 0)
    r = check_range(vhd, off, len, "write zeroes", err);
  if (r < 0 || len == 0)
    return r;
  if (vhd->type == VHD_TYPE_FIXED || (flags & VHD_NO_HOLE)) {
    if (vhd->type == VHD_TYPE_FIXED && (flags & VHD_MAY_TRIM) && !(flags & VHD_NO_HOLE) &&
        vhd_io_punch(vhd, off, len) == 0) {
      r = 0;
    } else {
      r = write_zero_data(vhd, off, len, err);
    }
  } else {
    while (len > 0 && r == 0) {
      uint64_t n = MIN(len, vhd->block_size - off % vhd->block_size);
      r = zero_segment(vhd, off, n, flags, false, err);
      off += n;
      len -= n;
    }
  }
  if (r == 0 && (flags & VHD_FUA))
    r = vhd_flush(vhd, err);
  return r;
}

int vhd_trim(vhd_t *vhd, uint64_t off, uint64_t len, unsigned flags, struct vhd_err *err) {
  int r = check_writable(vhd, "trim", err);
  if (r == 0)
    r = check_range(vhd, off, len, "trim", err);
  if (r < 0 || len == 0)
    return r;
  if (vhd->type == VHD_TYPE_FIXED) {
    uint64_t a = ROUND_UP(off, 512), b = ROUND_DOWN(off + len, 512);
    if (a < b)
      (void)vhd_io_punch(vhd, a, b - a); /* a hint: unsupported is fine */
  } else {
    /* On a differencing disk, cleared bits let the parent show through:
     * after a trim the content is undefined, so that is allowed. */
    while (len > 0 && r == 0) {
      uint64_t n = MIN(len, vhd->block_size - off % vhd->block_size);
      if (vhd->parent) {
        r = zero_by_bitmap(vhd, off, n, true, true, err);
      } else {
        r = zero_segment(vhd, off, n, VHD_MAY_TRIM, true, err);
      }
      off += n;
      len -= n;
    }
  }
  if (r == 0 && (flags & VHD_FUA))
    r = vhd_flush(vhd, err);
  return r;
}

bool vhd_zero_is_fast(vhd_t *vhd, uint64_t off, uint64_t len) {
  if (vhd->type == VHD_TYPE_FIXED)
    return false;
  if (!vhd->parent || off >= vhd->parent->virtual_size)
    return true;
  uint64_t inside = MIN(len, vhd->parent->virtual_size - off);
  return vhd_map(vhd->parent, off, inside, NULL, NULL, NULL) == 1;
}

/* --- mapping ------------------------------------------------------------ */

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
    return merge_emit(m, &e);
  }
  return 0;
}

static int map_range(vhd_t *vhd, uint64_t off, uint64_t len, int depth, struct map_merge *m,
                     struct vhd_err *err) {
  if (vhd->type == VHD_TYPE_FIXED) {
    struct vhd_extent e = {off, len, VHD_MAP_DATA, depth, off};
    return merge_emit(m, &e);
  }
  while (len > 0) {
    uint32_t blk = (uint32_t)(off / vhd->block_size);
    uint64_t block_start = (uint64_t)blk * vhd->block_size;
    uint32_t boff = (uint32_t)(off - block_start);
    uint32_t n = (uint32_t)MIN(len, (uint64_t)vhd->block_size - boff);
    uint32_t s0 = boff / 512, s1 = (uint32_t)DIV_ROUND_UP((uint64_t)boff + n, 512);
    struct block_snapshot snap;
    int r = block_snapshot_take(vhd, blk, s0, s1, false, false, &snap, err);
    if (r < 0)
      return r;
    CLEANUP_FREE uint8_t *heapbm = snap.heap;
    uint32_t entry = snap.entry;
    const uint8_t *bm = snap.bits;
    if (entry == VHD_BAT_UNUSED) {
      if ((r = map_absent(vhd, off, n, depth, m, err)))
        return r;
    } else {
      uint64_t data_off = (uint64_t)entry * 512 + vhd->bitmap_size;
      uint32_t base = s0 & ~7u;
      uint32_t pos = boff, end = boff + n;
      while (pos < end) {
        bool present;
        uint32_t s = pos / 512;
        uint32_t run = vhd_bitmap_run(bm, s - base, s1 - base, &present);
        uint32_t run_end = MIN(end, (s + run) * 512);
        if (present) {
          struct vhd_extent e = {block_start + pos, run_end - pos, VHD_MAP_DATA, depth,
                                 data_off + pos};
          r = merge_emit(m, &e);
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

int vhd_map(vhd_t *vhd, uint64_t off, uint64_t len, vhd_map_cb cb, void *opaque,
            struct vhd_err *err) {
  int r = check_range(vhd, off, len, "map", err);
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

/* --- flush -------------------------------------------------------------- */

struct meta_write {
  uint64_t off;
  uint32_t len;
  bool is_bat;
  uint32_t idx; /* block, or BAT sector */
  uint8_t *data;
};

int vhd_flush(vhd_t *vhd, struct vhd_err *err) {
  if (vhd->readonly)
    return 0;
  /* A sync now could succeed for data whose write-back already failed: the
   * kernel reports such a failure once.  (vhd_io_sync refuses too; this
   * gives the message.) */
  int r = check_no_write_error(vhd, "flush", err);
  if (r < 0)
    return r;
  if (vhd->type == VHD_TYPE_FIXED) {
    r = vhd_io_sync(vhd);
    return r < 0 ? vhd_set_err(err, r, "%s: fdatasync: %s", vhd->path, strerror(-r)) : 0;
  }
  pthread_mutex_lock(&vhd->flush_lock);
  /* Snapshot under the metadata lock: every bit in it belongs to data whose
   * pwrite already returned, so the first fdatasync makes that data durable
   * before the metadata that points at it is written. */
  pthread_mutex_lock(&vhd->lock);
  /* Retired space no I/O targets any more joins the blocks freed before
   * this snapshot: their BAT entries changed before it too. */
  vhd_retired_collect(vhd);
  size_t n = (size_t)vhd->n_dirty_blocks + vhd->n_dirty_bat_sectors;
  struct meta_write *w = n ? calloc(n, sizeof *w) : NULL;
  size_t k = 0;
  if (n && !w) {
    r = vhd_set_err(err, -ENOMEM, "%s: out of memory flushing", vhd->path);
  } else {
    for (uint32_t i = 0; i < vhd->n_dirty_blocks; i++) {
      uint32_t blk = vhd->dirty_blocks[i];
      vhd->block_dirty[blk] = 0;
      if (vhd->bat[blk] == VHD_BAT_UNUSED || !vhd->bitmaps[blk])
        continue;
      w[k].off = (uint64_t)vhd->bat[blk] * 512;
      w[k].len = vhd->bitmap_size;
      w[k].idx = blk;
      w[k].data = malloc(vhd->bitmap_size);
      if (w[k].data)
        memcpy(w[k].data, vhd->bitmaps[blk], vhd->bitmap_size);
      k++;
    }
    vhd->n_dirty_blocks = 0;
    for (uint32_t i = 0; i < vhd->n_dirty_bat_sectors; i++) {
      uint32_t sec = vhd->dirty_bat_sectors[i];
      vhd->bat_sector_dirty[sec] = 0;
      uint32_t first = sec * 128;
      w[k].off = vhd->header.table_offset + (uint64_t)sec * 512;
      w[k].is_bat = true;
      w[k].idx = sec;
      uint32_t entries = MIN(128u, vhd->max_entries - first);
      w[k].len = entries * 4;
      w[k].data = malloc(512);
      if (w[k].data)
        for (uint32_t e = 0; e < entries; e++) {
          uint32_t v = vhd->bat[first + e];
          uint8_t *d = w[k].data + 4 * e;
          d[0] = (uint8_t)(v >> 24);
          d[1] = (uint8_t)(v >> 16);
          d[2] = (uint8_t)(v >> 8);
          d[3] = (uint8_t)v;
        }
      k++;
    }
    vhd->n_dirty_bat_sectors = 0;
  }
  /* Blocks freed before this snapshot become reusable once it is durable. */
  uint64_t *freed = vhd->free_pending;
  size_t n_freed = vhd->n_free_pending;
  vhd->free_pending = NULL;
  vhd->n_free_pending = vhd->cap_free_pending = 0;
  pthread_mutex_unlock(&vhd->lock);
  if (r == 0) {
    for (size_t i = 0; i < k; i++)
      if (!w[i].data)
        r = vhd_set_err(err, -ENOMEM, "%s: out of memory flushing", vhd->path);
  }
  if (r == 0 && (r = vhd_io_sync(vhd)) < 0)
    vhd_set_err(err, r, "%s: fdatasync: %s", vhd->path, strerror(-r));
  for (size_t i = 0; i < k && r == 0; i++)
    if ((r = vhd_io_pwrite(vhd, w[i].data, w[i].len, w[i].off)) < 0)
      vhd_set_err(err, r, "%s: writing metadata at offset %llu: %s", vhd->path,
                  (unsigned long long)w[i].off, strerror(-r));
  if (r == 0 && k && (r = vhd_io_sync(vhd)) < 0)
    vhd_set_err(err, r, "%s: fdatasync: %s", vhd->path, strerror(-r));
  if (r < 0) {
    /* Nothing reached disk for sure: mark everything dirty again.  (A
     * failed write or sync latched the image: it is never written.) */
    pthread_mutex_lock(&vhd->lock);
    for (size_t i = 0; i < k; i++) {
      if (w[i].is_bat) {
        if (!vhd->bat_sector_dirty[w[i].idx]) {
          vhd->bat_sector_dirty[w[i].idx] = 1;
          vhd->dirty_bat_sectors[vhd->n_dirty_bat_sectors++] = w[i].idx;
        }
      } else if (vhd->bat[w[i].idx] != VHD_BAT_UNUSED) {
        vhd_block_mark_dirty(vhd, w[i].idx);
      }
    }
    pthread_mutex_unlock(&vhd->lock);
  }
  /* Freed blocks: reusable if the BAT that drops them is durable, else
   * pending again. */
  pthread_mutex_lock(&vhd->lock);
  for (size_t i = 0; i < n_freed; i++) {
    if (r == 0) {
      if (vhd->n_free_ready == vhd->cap_free_ready) {
        size_t nc = vhd->cap_free_ready ? vhd->cap_free_ready * 2 : 64;
        uint64_t *na = realloc(vhd->free_ready, nc * sizeof *na);
        if (!na)
          break; /* the space stays leaked: harmless */
        vhd->free_ready = na;
        vhd->cap_free_ready = nc;
      }
      vhd->free_ready[vhd->n_free_ready++] = freed[i];
    } else if (vhd_block_free_space(vhd, freed[i]) < 0) {
      break;
    }
  }
  pthread_mutex_unlock(&vhd->lock);
  free(freed);
  for (size_t i = 0; i < k; i++)
    free(w[i].data);
  free(w);
  pthread_mutex_unlock(&vhd->flush_lock);
  return r;
}
