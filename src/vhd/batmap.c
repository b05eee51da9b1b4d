/* batmap.c: Xen blktap's batmap, read and honoured, never written.
 *
 * blktap's vhd-util and tapdisk keep, right after the BAT (at table offset
 * plus the BAT rounded up to a sector), a 512-byte header (cookie
 * "tdbatmap", map offset u64, map size in sectors u32, version u32,
 * checksum u32, big-endian) and a bitmap with one bit per block, most
 * significant bit first as in sector bitmaps.  A set bit says "every sector
 * of this block is present": tapdisk then reads the whole block from this
 * image without looking at its sector bitmap, and vhd-util check calls a
 * set bit on an unallocated block an error.
 *
 * So a block whose bit is set must stay allocated and fully present, or
 * tapdisk reads sectors the engine cleared (or a reallocated block never
 * wrote) from this image instead of the parent or zeros.  Clearing the bit
 * instead would take two writes (the map, then the header's checksum over
 * it), and a crash between them leaves a checksum tapdisk refuses to open
 * read-write.  The engine therefore never changes the batmap: zeroing such
 * a block writes zeros, a trim of it does nothing, and compaction keeps it
 * (zero.c, compact.c).  Bits are honoured whatever the checksum says or
 * who the creator is: the only cost is a block kept allocated. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "endian-be.h"
#include "rw.h"

#define BATMAP_COOKIE "tdbatmap"
/* Far more than the 128 KiB a 2 TiB image of 2 MiB blocks needs. */
#define BATMAP_MAX_BYTES (64u << 20)

uint32_t vhd_batmap_checksum(const vhd_t *vhd, uint64_t current_size) {
  /* What tapdisk sums: whole sectors enough for one bit per 2 MiB of the
   * footer's current size (at least one), whatever the map's size. */
  uint64_t bytes = current_size >> (21 + 3);
  uint64_t len = MAX(DIV_ROUND_UP(bytes, 512), 1) * 512;
  uint32_t sum = 0;
  for (uint64_t i = 0; i < len && i < vhd->batmap_len; i++) {
    /* Version 1.1 summed the bytes as signed chars. */
    if (vhd->batmap_version == 0x00010001)
      sum += (uint32_t)(int32_t)(int8_t)vhd->batmap[i];
    else
      sum += vhd->batmap[i];
  }
  return ~sum;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen) {
  return a < b + blen && b < a + alen;
}

static int ignore(vhd_t *vhd, uint64_t hdr, const char *why, uint32_t which) {
  vhd_warn(vhd, "%s: the Xen batmap whose header is at offset %llu %s %u: batmap ignored",
           vhd->path, (unsigned long long)hdr, why, which);
  return 0;
}

int vhd_batmap_load(vhd_t *vhd, uint64_t data_end, struct vhd_err *err) {
  uint64_t hdr = vhd->header.table_offset + ROUND_UP((uint64_t)vhd->max_entries * 4, 512);
  if (hdr + 512 > data_end)
    return 0;
  uint8_t raw[512];
  int r = vhd_io_pread(vhd->fd, raw, sizeof raw, hdr);
  if (r < 0)
    return vhd_set_err(err, r, "%s: reading past the BAT at offset %llu: %s", vhd->path,
                       (unsigned long long)hdr, strerror(-r));
  if (memcmp(raw, BATMAP_COOKIE, 8) != 0)
    return 0;
  uint64_t map_off = be64_load(raw + 8);
  uint32_t secs = be32_load(raw + 16);
  uint64_t map_bytes = (uint64_t)secs * 512;
  const char *bad = map_off % 512                               ? "not on a sector boundary"
                    : map_off < hdr + 512                          ? "inside or before its header"
                    : secs == 0                                    ? "empty"
                    : map_bytes > BATMAP_MAX_BYTES                 ? "absurdly large"
                    : map_off > data_end || map_bytes > data_end - map_off ? "past the data area"
                                                                   : NULL;
  if (bad) {
    /* tapdisk cannot read it either (it refuses to open the image
     * read-write), so no block is known full. */
    vhd_warn(vhd,
             "%s: Xen batmap header at offset %llu points at %u sectors at offset %llu, %s: "
             "batmap ignored",
             vhd->path, (unsigned long long)hdr, secs, (unsigned long long)map_off, bad);
    return 0;
  }
  /* A "batmap" some block or locator lies across is none tapdisk could
   * use either: the image opens as it did without it. */
  uint64_t span = (uint64_t)vhd->bitmap_size + vhd->block_size;
  for (uint32_t i = 0; i < vhd->max_entries; i++) {
    uint64_t b = (uint64_t)vhd->bat[i] * 512;
    if (vhd->bat[i] != VHD_BAT_UNUSED &&
        (overlaps(b, span, hdr, 512) || overlaps(b, span, map_off, map_bytes)))
      return ignore(vhd, hdr, "lies across the block of BAT entry", i);
  }
  for (int i = 0; vhd->type == VHD_TYPE_DIFFERENCING && i < 8; i++) {
    const struct vhd_locator *l = &vhd->header.locators[i];
    if (l->code != VHD_PLAT_NONE && l->data_length &&
        (overlaps(l->data_offset, l->data_length, hdr, 512) ||
         overlaps(l->data_offset, l->data_length, map_off, map_bytes)))
      return ignore(vhd, hdr, "lies across the data of parent locator", (uint32_t)i);
  }
  vhd->batmap = malloc(map_bytes);
  if (!vhd->batmap)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory for the Xen batmap", vhd->path);
  if ((r = vhd_io_pread(vhd->fd, vhd->batmap, map_bytes, map_off)) < 0)
    return vhd_set_err(err, r, "%s: reading the Xen batmap at offset %llu: %s", vhd->path,
                       (unsigned long long)map_off, strerror(-r));
  vhd->batmap_len = (uint32_t)map_bytes;
  vhd->batmap_header_offset = hdr;
  vhd->batmap_offset = map_off;
  vhd->batmap_version = be32_load(raw + 20);
  uint32_t stored = vhd->batmap_checksum = be32_load(raw + 24);
  if (vhd_batmap_checksum(vhd, vhd->footer.current_size) != stored)
    vhd_warn(vhd,
             "%s: Xen batmap checksum 0x%08x does not match its bits (0x%08x): blktap's "
             "tapdisk refuses such a batmap for read-write use",
             vhd->path, stored, vhd_batmap_checksum(vhd, vhd->footer.current_size));
  return 0;
}

int vhd_batmap_fill_new(vhd_t *vhd, uint32_t blk, uint64_t off, uint8_t *bm,
                        struct vhd_err *err) {
  if (!vhd_batmap_full(vhd, blk))
    return 0;
  if (vhd->type == VHD_TYPE_DIFFERENCING) {
    if (!vhd->parent)
      return vhd_set_err(err, -ENOTSUP,
                         "%s: block %u is marked full in the Xen batmap but unallocated, and "
                         "without its parent open it cannot be filled",
                         vhd->path, blk);
    /* The new block's data area reads as zeros: only the parent's data
     * (within its size) needs copying. */
    uint64_t vstart = (uint64_t)blk * vhd->block_size;
    uint64_t psize = vhd_virtual_size(vhd->parent);
    uint64_t len = vstart < psize ? MIN((uint64_t)vhd->block_size, psize - vstart) : 0;
    size_t chunk = (size_t)MIN(len, (uint64_t)(1u << 20));
    CLEANUP_FREE uint8_t *buf = chunk ? malloc(chunk) : NULL;
    if (chunk && !buf)
      return vhd_set_err(err, -ENOMEM, "%s: out of memory filling block %u", vhd->path, blk);
    for (uint64_t done = 0; done < len;) {
      size_t n = (size_t)MIN(len - done, (uint64_t)chunk);
      int r = vhd_read(vhd->parent, buf, vstart + done, n, err);
      if (r < 0) {
        /* The block is not allocated: its space goes to the next block,
         * whose never-written sectors readers that ignore bitmaps (QEMU)
         * take as data.  What the fill wrote there must read as zeros
         * again; a failure to zero it latches the write error, and then
         * nothing more is allocated. */
        if (done > 0)
          (void)vhd_io_zero(vhd, off + vhd->bitmap_size, done);
        return r;
      }
      uint64_t at = off + vhd->bitmap_size + done;
      if ((r = vhd_io_pwrite(vhd, buf, n, at)) < 0)
        return vhd_set_io_err(vhd, err, r, "filling a block the Xen batmap marks full", at);
      done += n;
    }
  }
  memset(bm, 0xff, vhd->bitmap_size);
  vhd_block_mark_dirty(vhd, blk);
  return 0;
}

bool vhd_batmap_full(const vhd_t *vhd, uint32_t blk) {
  return vhd->batmap && blk / 8 < vhd->batmap_len && (vhd->batmap[blk / 8] & (0x80 >> blk % 8));
}

bool vhd_batmap_any_full(const vhd_t *vhd, uint64_t off, uint64_t len) {
  if (!vhd->batmap || len == 0)
    return false;
  for (uint64_t b = off / vhd->block_size; b <= (off + len - 1) / vhd->block_size; b++)
    if (vhd_batmap_full(vhd, (uint32_t)b))
      return true;
  return false;
}
