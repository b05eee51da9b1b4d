/* write.c: data writes (vhd_write): allocation, data, then bitmap bits. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "rw.h"

/* Where a write's bytes come from: the first head_len from head, the rest
 * from the pipe pipe_fd (vhd_write_splice); a plain buffer is all head.
 * piped counts the bytes taken from the pipe so far. */
struct splice_src {
  const uint8_t *head;
  size_t head_len;
  int pipe_fd;
  size_t piped;
};

/* Bytes [at, at+n) of the source into the file at foff. */
static int splice_src_write(vhd_t *vhd, struct splice_src *src, size_t at, size_t n,
                            uint64_t foff) {
  int r = 0;
  if (at < src->head_len) {
    size_t h = MIN(n, src->head_len - at);
    r = vhd_io_pwrite(vhd, src->head + at, h, foff);
    n -= h;
    foff += h;
  }
  if (r == 0 && n > 0) {
    r = vhd_io_splice_in(vhd, src->pipe_fd, n, foff);
    if (r == 0)
      src->piped += n;
  }
  return r;
}

/* Writes whole sectors [off, off+len) (512-aligned) inside one block, from
 * bytes [at, at+len) of src. */
static int write_sectors(vhd_t *vhd, struct splice_src *src, size_t at, uint64_t off,
                         size_t len, struct vhd_err *err) {
  uint32_t blk = (uint32_t)(off / vhd->block_size);
  uint32_t boff = (uint32_t)(off % vhd->block_size);
  uint32_t s0 = boff / 512, s1 = s0 + (uint32_t)(len / 512);
  pthread_mutex_lock(&vhd->lock);
  int r;
  uint8_t *bm = NULL;
  do { /* again if the block was freed while its bitmap was read */
    r = 0;
    if (vhd->bat[blk] == VHD_BAT_UNUSED)
      r = vhd_block_allocate(vhd, blk, err);
    if (r == 0)
      r = vhd_bitmap_load(vhd, blk, &bm, err);
  } while (r == 1);
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
  r = splice_src_write(vhd, src, at, len, data_off);
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
  return r < 0 ? vhd_set_io_err(vhd, err, r, "writing data", data_off) : 0;
}

/* [off, off+len) inside one block, any alignment: partial sectors are
 * completed with what the disk shows now (own data, parent or zeros). */
int vhd_write_segment(vhd_t *vhd, const uint8_t *buf, uint64_t off, size_t len,
                      struct vhd_err *err) {
  uint64_t a = off & ~511ull, b = ROUND_UP(off + len, 512);
  if (a == off && b == off + len)
    return write_sectors(vhd, &(struct splice_src){buf, len, -1, 0}, 0, off, len, err);
  size_t wlen = (size_t)(b - a);
  CLEANUP_FREE uint8_t *tmp = malloc(wlen);
  if (!tmp)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory writing", vhd->path);
  int r = 0;
  if (a != off)
    r = vhd_read_plain(vhd, tmp, a, 512, err);
  if (r == 0 && b != off + len && (b - 512 != a || a == off))
    r = vhd_read_plain(vhd, tmp + wlen - 512, b - 512, 512, err);
  if (r < 0)
    return r;
  memcpy(tmp + (off - a), buf, len);
  return write_sectors(vhd, &(struct splice_src){tmp, wlen, -1, 0}, 0, a, wlen, err);
}

int vhd_write_fixed(vhd_t *vhd, const uint8_t *buf, uint64_t off, size_t len,
                    struct vhd_err *err) {
  int r = vhd_io_pwrite(vhd, buf, len, off);
  return r < 0 ? vhd_set_io_err(vhd, err, r, "writing", off) : 0;
}

/* Lock held: if every block [off, off+len) touches (at most
 * VHD_WRITE_NOWAIT_MAX_BLOCKS) is allocated, with its bitmap in memory and
 * the bit of every sector touched set, pins them all, stores in foff the
 * file offset of the range's part in each, and returns true; else pins
 * nothing and returns false.  With all those bits set the sectors are the
 * image's own: bytes of a partial sector are written in place, no
 * read-modify-write, and no bit, BAT entry or footer changes. */
static bool pin_in_place(vhd_t *vhd, uint64_t off, size_t len, uint64_t *foff) {
  uint32_t first = (uint32_t)(off / vhd->block_size);
  uint32_t last = (uint32_t)((off + len - 1) / vhd->block_size);
  for (uint32_t blk = first; blk <= last; blk++) {
    uint64_t start = MAX(off, (uint64_t)blk * vhd->block_size);
    uint64_t end = MIN(off + len, (uint64_t)(blk + 1) * vhd->block_size);
    uint32_t s0 = (uint32_t)(start % vhd->block_size / 512);
    uint32_t s1 = (uint32_t)DIV_ROUND_UP(end - (uint64_t)blk * vhd->block_size, 512);
    const uint8_t *bm = vhd->bitmaps[blk];
    bool set = false;
    if (vhd->bat[blk] == VHD_BAT_UNUSED || !bm ||
        vhd_bitmap_run(bm, s0, s1, &set) != s1 - s0 || !set) {
      for (uint32_t b = first; b < blk; b++)
        vhd_block_unpin(vhd, b);
      return false;
    }
    foff[blk - first] =
        (uint64_t)vhd->bat[blk] * 512 + vhd->bitmap_size + start % vhd->block_size;
    vhd_block_pin(vhd, blk);
  }
  return true;
}

/* VHD_WRITE_NOWAIT on a dynamic or differencing image: every block the
 * range touches is checked under one try of the lock and pinned
 * (pin_in_place), before any byte is written, so that giving up never
 * leaves part of the write done. */
static int write_nowait_blocks(vhd_t *vhd, const uint8_t *buf, uint64_t off, size_t len,
                               struct vhd_err *err) {
  uint32_t first = (uint32_t)(off / vhd->block_size);
  uint32_t last = (uint32_t)((off + len - 1) / vhd->block_size);
  if (last - first >= VHD_WRITE_NOWAIT_MAX_BLOCKS)
    return -EAGAIN;
  uint64_t foff[VHD_WRITE_NOWAIT_MAX_BLOCKS];
  if (pthread_mutex_trylock(&vhd->lock) != 0)
    return -EAGAIN;
  bool ok = pin_in_place(vhd, off, len, foff);
  pthread_mutex_unlock(&vhd->lock);
  if (!ok)
    return -EAGAIN;
  uint32_t pinned = last - first + 1;
  int r = 0;
  bool wrote = false;
  for (uint32_t i = 0; i < pinned && r == 0; i++) {
    uint64_t start = MAX(off, (uint64_t)(first + i) * vhd->block_size);
    uint64_t end = MIN(off + len, (uint64_t)(first + i + 1) * vhd->block_size);
    const uint8_t *p = buf + (start - off);
    /* Once a byte is in, the rest follows the waiting way: all or nothing. */
    r = wrote ? vhd_io_pwrite(vhd, p, end - start, foff[i])
              : vhd_io_pwrite_nowait(vhd, p, end - start, foff[i]);
    if (r == 0)
      wrote = true;
    else if (r != -EAGAIN || wrote)
      r = vhd_set_io_err(vhd, err, r, "writing data", foff[i]);
  }
  for (uint32_t i = 0; i < pinned; i++)
    vhd_block_unpin(vhd, first + i);
  return r;
}

static int write_nowait(vhd_t *vhd, const uint8_t *buf, uint64_t off, size_t len,
                        unsigned flags, struct vhd_err *err) {
  /* A latched image: the caller's waiting retry gives the message.  A
   * file system that refused one NOWAIT write refuses them all (io.c):
   * then not even the lock is tried, which the workers' writes hold. */
  if ((flags & VHD_FUA) || vhd_io_refuses_writes(vhd) ||
      atomic_load_explicit(&vhd->nowait_write_unsupported, memory_order_relaxed))
    return -EAGAIN;
  if (vhd->type != VHD_TYPE_FIXED)
    return write_nowait_blocks(vhd, buf, off, len, err);
  int r = vhd_io_pwrite_nowait(vhd, buf, len, off);
  return r < 0 && r != -EAGAIN ? vhd_set_io_err(vhd, err, r, "writing", off) : r;
}

/* vhd_write_splice of a range not on sector boundaries, on a dynamic or
 * differencing image: its partial sectors would need a read-modify-write,
 * so it is taken only in place (pin_in_place).  Bitmaps not yet in memory
 * are read first, which may drop the lock: pin_in_place then checks every
 * block again. */
static int write_splice_blocks(vhd_t *vhd, struct splice_src *src, uint64_t off,
                               size_t len, struct vhd_err *err) {
  uint32_t first = (uint32_t)(off / vhd->block_size);
  uint32_t last = (uint32_t)((off + len - 1) / vhd->block_size);
  if (last - first >= VHD_WRITE_NOWAIT_MAX_BLOCKS)
    return 1;
  uint64_t foff[VHD_WRITE_NOWAIT_MAX_BLOCKS];
  pthread_mutex_lock(&vhd->lock);
  int r = 0;
  for (uint32_t blk = first; blk <= last && r == 0; blk++) {
    uint8_t *bm;
    if (vhd->bat[blk] == VHD_BAT_UNUSED)
      r = 1;
    else if (!vhd->bitmaps[blk])
      r = vhd_bitmap_load(vhd, blk, &bm, err);
  }
  if (r == 0 && !pin_in_place(vhd, off, len, foff))
    r = 1;
  pthread_mutex_unlock(&vhd->lock);
  if (r != 0)
    return r;
  for (uint32_t blk = first; blk <= last && r == 0; blk++) {
    uint64_t start = MAX(off, (uint64_t)blk * vhd->block_size);
    uint64_t end = MIN(off + len, (uint64_t)(blk + 1) * vhd->block_size);
    r = splice_src_write(vhd, src, (size_t)(start - off), end - start, foff[blk - first]);
    if (r < 0)
      r = vhd_set_io_err(vhd, err, r, "writing data", foff[blk - first]);
  }
  for (uint32_t blk = first; blk <= last; blk++)
    vhd_block_unpin(vhd, blk);
  return r;
}

int vhd_write_splice(vhd_t *vhd, const void *head, size_t head_len, int pipe_fd, uint64_t off,
                     size_t len, unsigned flags, struct vhd_err *err) {
  struct splice_src src = {head, MIN(head_len, len), pipe_fd, 0};
  int r = vhd_check_writable(vhd, "write", err);
  if (r == 0)
    r = vhd_check_range(vhd, off, len, "write", err);
  if (r < 0 || len == 0)
    return r;
  if (atomic_load_explicit(&vhd->splice_in_unsupported, memory_order_relaxed))
    return 1;
  if (vhd->type == VHD_TYPE_FIXED) {
    r = splice_src_write(vhd, &src, 0, len, off);
    if (r < 0)
      r = vhd_set_io_err(vhd, err, r, "writing", off);
  } else if (off % 512 == 0 && len % 512 == 0) {
    /* Whole sectors: as vhd_write, blocks allocated on the way and bits
     * set after the data, only the data comes from the pipe. */
    for (size_t at = 0; at < len && r == 0;) {
      size_t n = (size_t)MIN((uint64_t)(len - at), vhd->block_size - (off + at) % vhd->block_size);
      r = write_sectors(vhd, &src, at, off + at, n, err);
      at += n;
    }
  } else {
    r = write_splice_blocks(vhd, &src, off, len, err);
  }
  /* The file system takes no splice (found out now: the pipe is as it
   * was, and what went in from head is written again, the same bytes, by
   * the caller's vhd_write).  Bits were set only for data in place. */
  if (r == -EOPNOTSUPP && src.piped == 0)
    return 1;
  if (r == -EOPNOTSUPP)
    r = vhd_set_err(err, -EIO, "%s: the file system stopped taking splices in the middle of a write",
                    vhd->path);
  if (r == 0 && (flags & VHD_FUA))
    r = vhd_flush(vhd, err);
  return r;
}

int vhd_write(vhd_t *vhd, const void *buf, uint64_t off, size_t len, unsigned flags,
              struct vhd_err *err) {
  /* A NOWAIT write leaves the latch to write_nowait: it gives up there. */
  bool nowait = flags & VHD_WRITE_NOWAIT;
  int r = vhd->readonly || !nowait ? vhd_check_writable(vhd, "write", err) : 0;
  if (r == 0)
    r = vhd_check_range(vhd, off, len, "write", err);
  if (r < 0)
    return r;
  if (len == 0 && (flags & VHD_FUA)) /* FUA asks for what came before to be durable */
    return nowait ? -EAGAIN : vhd_flush(vhd, err);
  if (len == 0)
    return 0;
  if (nowait)
    return write_nowait(vhd, buf, off, len, flags, err);
  const uint8_t *p = buf;
  if (vhd->type == VHD_TYPE_FIXED) {
    r = vhd_write_fixed(vhd, p, off, len, err);
  } else {
    while (len > 0 && r == 0) {
      size_t n = (size_t)MIN((uint64_t)len, vhd->block_size - off % vhd->block_size);
      r = vhd_write_segment(vhd, p, off, n, err);
      p += n;
      off += n;
      len -= n;
    }
  }
  if (r == 0 && (flags & VHD_FUA))
    r = vhd_flush(vhd, err);
  return r;
}
