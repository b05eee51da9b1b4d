/* zero.c: write-zeroes and trim: bitmap bits cleared, blocks freed,
 * zeros written only where a parent's data must be hidden or Xen's batmap
 * holds a block full. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "rw.h"

#define ZERO_BUF_SIZE (1024 * 1024)
static uint8_t zero_buf[ZERO_BUF_SIZE]; /* never written */

static int write_zero_data(vhd_t *vhd, uint64_t off, uint64_t len, struct vhd_err *err) {
  while (len > 0) {
    size_t n = (size_t)MIN(len, (uint64_t)ZERO_BUF_SIZE);
    if (vhd->type != VHD_TYPE_FIXED)
      n = (size_t)MIN((uint64_t)n, vhd->block_size - off % vhd->block_size);
    int r = vhd->type == VHD_TYPE_FIXED ? vhd_write_fixed(vhd, zero_buf, off, n, err)
                                        : vhd_write_segment(vhd, zero_buf, off, n, err);
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
  uint8_t *bm = NULL;
  if (vhd->bat[blk] != VHD_BAT_UNUSED && (r = vhd_bitmap_load(vhd, blk, &bm, err)) == 1)
    r = 0; /* freed while its bitmap was read: nothing left to clear */
  uint32_t entry = vhd->bat[blk];
  bool head_set = false, tail_set = false;
  if (r == 0 && entry != VHD_BAT_UNUSED && vhd_batmap_full(vhd, blk)) {
    /* Xen's batmap says every sector is here (batmap.c): the block keeps
     * them all, so zeros are written and a trim is let go. */
    pthread_mutex_unlock(&vhd->lock);
    return whole_only ? 0 : write_zero_data(vhd, off, len, err);
  }
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
      vhd_bat_set(vhd, blk, VHD_BAT_UNUSED);
      vhd_bitmap_free(vhd, vhd->bitmaps[blk]);
      vhd->bitmaps[blk] = NULL;
      vhd->allocated_blocks--;
      vhd_bat_mark_dirty(vhd, blk);
      pthread_mutex_unlock(&vhd->lock);
      return 0;
    }
    uint32_t bstart = (uint32_t)(a - (off - boff)) / 512, bend = (uint32_t)(b - (off - boff)) / 512;
    if (a < b && (r = vhd_bitmap_own(vhd, blk, &bm, err)) == 0) {
      for (uint32_t s = bstart; s < bend; s++)
        vhd_bit_clear(bm, s);
      vhd_block_mark_dirty(vhd, blk);
    }
    if (off % 512)
      head_set = vhd_bit_get(bm, boff / 512);
    if ((off + len) % 512 && (a <= b || !(off % 512)))
      tail_set = vhd_bit_get(bm, (uint32_t)((off + len - (off - boff)) / 512));
    if (a < b && r == 0)
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
          r = vhd_set_io_err(vhd, err, r, "zeroing data", data + done);
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
  int r = vhd_check_writable(vhd, "write zeroes", err);
  if (r == 0)
    r = vhd_check_range(vhd, off, len, "write zeroes", err);
  if (r < 0)
    return r;
  if (len == 0) /* FUA still asks for what came before to be durable */
    return flags & VHD_FUA ? vhd_flush(vhd, err) : 0;
  if (vhd->type == VHD_TYPE_FIXED || (flags & VHD_NO_HOLE)) {
    if (vhd->type == VHD_TYPE_FIXED && (flags & VHD_MAY_TRIM) && !(flags & VHD_NO_HOLE) &&
        vhd_io_punch(vhd, off, len) >= 0) {
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
  int r = vhd_check_writable(vhd, "trim", err);
  if (r == 0)
    r = vhd_check_range(vhd, off, len, "trim", err);
  if (r < 0)
    return r;
  if (len == 0) /* FUA still asks for what came before to be durable */
    return flags & VHD_FUA ? vhd_flush(vhd, err) : 0;
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

/* Whether the sector at sec reads as zeros at every level: a sector only
 * partly zeroed keeps its other bytes, and where it holds data that is a
 * read and a write of it, no faster than a WRITE (FAST_ZERO must say so). */
static bool sector_blank(vhd_t *vhd, uint64_t sec) {
  return vhd_map(vhd, sec, MIN((uint64_t)512, vhd->virtual_size - sec), NULL, NULL, NULL) == 1;
}

bool vhd_zero_is_fast(vhd_t *vhd, uint64_t off, uint64_t len) {
  if (vhd->type == VHD_TYPE_FIXED || vhd_batmap_any_full(vhd, off, len))
    return false;
  if (len && off % 512 && !sector_blank(vhd, ROUND_DOWN(off, 512)))
    return false;
  if (len && (off + len) % 512 && !sector_blank(vhd, ROUND_DOWN(off + len, 512)))
    return false;
  if (!vhd->parent || off >= vhd->parent->virtual_size)
    return true;
  uint64_t inside = MIN(len, vhd->parent->virtual_size - off);
  return vhd_map(vhd->parent, off, inside, NULL, NULL, NULL) == 1;
}
