/* rw.h: what the engine's read, write, zero, map and flush files share
 * (read.c, write.c, zero.c, map.c, flush.c, snapshot.c).  Private to
 * src/vhd. */
#ifndef VHDNBD_VHD_RW_H
#define VHDNBD_VHD_RW_H

#include <errno.h>
#include <string.h>

#include "vhd-internal.h"

static inline int vhd_check_range(const vhd_t *vhd, uint64_t off, uint64_t len,
                                  const char *what, struct vhd_err *err) {
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
static inline int vhd_check_no_write_error(const vhd_t *vhd, const char *what,
                                           struct vhd_err *err) {
  if (!vhd_io_refuses_writes(vhd))
    return 0;
  return vhd_set_err(err, -EIO,
                     "%s: %s refused after an earlier failure (%s): data written since the last "
                     "successful flush may not be on the disk",
                     vhd->path, what, vhd->write_error_what);
}

static inline int vhd_check_writable(const vhd_t *vhd, const char *what,
                                     struct vhd_err *err) {
  if (vhd->readonly)
    return vhd_set_err(err, -EPERM, "%s: %s on an image opened read-only", vhd->path, what);
  return vhd_check_no_write_error(vhd, what, err);
}

static inline int vhd_set_io_err(vhd_t *vhd, struct vhd_err *err, int r, const char *what,
                                 uint64_t off) {
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

/* Adds one run to the merge, handing the previous one to the callback when
 * it cannot be extended (or answers the zero probe). */
int vhd_merge_emit(struct map_merge *m, const struct vhd_extent *e);

/* A block's BAT entry and what its bitmap says of sectors [s0, s1), taken
 * under the lock so the I/O after it runs without it.  When every one of
 * those bits has the same value, `uniform` says which and no bits are
 * copied (the common cases: a block the image holds all of, or none); else
 * bits holds a copy of them, bits[0] holding sector s0 rounded down to a
 * multiple of 8.  An unallocated block comes with the number of blocks
 * from it on (at most span_blocks) that are all unallocated, so that the
 * caller can hand them to the parent at once.  With nowait, -EAGAIN rather
 * than waiting for the lock or for the bitmap to be read.  With pin, an
 * allocated block with data in the range stays pinned (see the write
 * order) until the caller's reads of it are done. */
enum snapshot_bits { SNAP_MIXED, SNAP_ALL_SET, SNAP_NONE_SET };
struct block_snapshot {
  uint32_t entry;
  uint32_t unused_blocks; /* entry unused: blocks from blk on that are */
  enum snapshot_bits uniform;
  bool pinned;
  uint8_t *bits;
  uint8_t *heap;
  uint8_t stack[2048];
};
int vhd_block_snapshot_take(vhd_t *vhd, uint32_t blk, uint32_t s0, uint32_t s1,
                            uint32_t span_blocks, bool nowait, bool pin,
                            struct block_snapshot *snap, struct vhd_err *err);

/* A read inside the engine (read-modify-write of sector edges). */
int vhd_read_plain(vhd_t *vhd, uint8_t *buf, uint64_t off, size_t len, struct vhd_err *err);

/* [off, off+len) inside one block of a dynamic or differencing image, any
 * alignment. */
int vhd_write_segment(vhd_t *vhd, const uint8_t *buf, uint64_t off, size_t len,
                      struct vhd_err *err);
int vhd_write_fixed(vhd_t *vhd, const uint8_t *buf, uint64_t off, size_t len,
                    struct vhd_err *err);

#endif
