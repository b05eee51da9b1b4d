/* resize.c: giving an image a new virtual size (vhdimg resize).
 *
 * Write order (on top of the one in vhd-internal.h): every step leaves an
 * image that opens with the old size or the new one, and the same content
 * within the smaller of the two.
 *
 *  - The footer's size changes last: the trailing footer is written in one
 *    512-byte write at a sector boundary and synced, then the copy at 0.
 *    Until the trailing write reaches the disk the old size holds; a torn
 *    one is refused by its checksum, and open falls back to the old copy at
 *    0.  A crash between the two leaves a stale copy, which open ignores
 *    (`vhdimg check` reports it as a leak).
 *  - Growing the area a fixed image or a BAT covers first puts a durable
 *    footer (the old one) past every byte the resize will write, so the
 *    file always ends with a valid footer.
 *  - A BAT that needs more sectors takes the bytes right after it only when
 *    they are blocks of this image (each copied past everything, synced,
 *    its BAT entry switched and synced before the old place is written) or
 *    lie past everything; otherwise the whole BAT is written anew past
 *    everything and synced before the header points at it.  The BAT's own
 *    last sector is the BAT's: its padding may take new entries.
 *  - The dynamic header changes in place, but only in its first sector
 *    (table offset, max table entries and checksum all lie in bytes 16-39;
 *    the second sector is written with the bytes it holds): one aligned
 *    512-byte write, which a disk does whole or not at all, and a torn one
 *    would fail the checksum and be as absent to every reader.  It is
 *    synced before the footer changes, and by then both the old and the
 *    new table are valid for the old size.
 */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "endian-be.h"
#include "vhd-internal.h"

#define COPY_CHUNK (1024u * 1024)

static bool buf_all_zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i])
      return false;
  return true;
}

struct resize {
  vhd_t *vhd;
  const struct vhd_resize_opts *o;
  struct vhd_err *err;
  uint64_t done, total; /* progress: bytes of blocks moved */
  struct vhd_resize_result res;
};

static int put(struct resize *z, const void *buf, size_t len, uint64_t off, const char *what) {
  int r = vhd_io_pwrite(z->vhd, buf, len, off);
  if (r < 0)
    return vhd_set_err(z->err, r, "%s: writing %s at offset %llu: %s", z->vhd->path, what,
                       (unsigned long long)off, strerror(-r));
  return 0;
}

static int sync_image(struct resize *z, const char *after) {
  int r = vhd_io_sync(z->vhd);
  if (r < 0)
    return vhd_set_err(z->err, r, "%s: fdatasync after %s: %s", z->vhd->path, after,
                       strerror(-r));
  return 0;
}

static int refuse_data_past(struct resize *z, uint64_t at, uint64_t new_size) {
  return vhd_set_err(z->err, -ENOTEMPTY,
                     "%s: data at offset %llu lies past the new end (%llu bytes): not shrunk",
                     z->vhd->path, (unsigned long long)at, (unsigned long long)new_size);
}

/* The footer with the new size last, trailing one first (see above). */
static int write_footers(struct resize *z, const uint8_t *footer, uint64_t pos) {
  int r;
  if ((r = put(z, footer, VHD_FOOTER_SIZE, pos, "the footer")) < 0 ||
      (r = sync_image(z, "writing the footer")) < 0)
    return r;
  if (z->vhd->type == VHD_TYPE_FIXED)
    return 0;
  /* The copy at 0 is rewritten only when there is one: other bytes there
   * are not the engine's. */
  uint8_t head[VHD_FOOTER_SIZE];
  if (vhd_io_pread(z->vhd->fd, head, sizeof head, 0) < 0 ||
      vhd_footer_check(head, "footer copy at offset 0", NULL) < 0)
    return 0;
  if ((r = put(z, footer, VHD_FOOTER_SIZE, 0, "the footer copy")) < 0 ||
      (r = sync_image(z, "writing the footer copy")) < 0)
    return r;
  return 0;
}

/* A fixed image's footer ends the file, and nothing else marks where its
 * data ends: the new footer must not end the file before the bytes it
 * turns into data read as zeros, and the old footer must end it until the
 * new one can. */
static int resize_fixed(struct resize *z, uint64_t new_size, const uint8_t *footer) {
  vhd_t *vhd = z->vhd;
  uint64_t fpos = vhd_fixed_footer_pos(vhd), old = vhd->virtual_size;
  int r;
  if (new_size < old) {
    /* The new footer's sector may already hold it (a shrink cut short). */
    uint8_t sec[VHD_FOOTER_SIZE];
    uint64_t at = new_size;
    if ((r = vhd_io_pread(vhd->fd, sec, sizeof sec, new_size)) < 0)
      return vhd_set_err(z->err, r, "%s: reading past the new end: %s", vhd->path, strerror(-r));
    if (memcmp(sec, footer, sizeof sec) != 0 && !buf_all_zero(sec, sizeof sec)) {
      while (sec[at - new_size] == 0)
        at++;
      return refuse_data_past(z, at, new_size);
    }
    uint64_t from = new_size + VHD_FOOTER_SIZE;
    r = from < fpos ? vhd_io_first_nonzero(vhd->fd, from, fpos - from, &at) : 0;
    if (r < 0)
      return vhd_set_err(z->err, r, "%s: reading past the new end: %s", vhd->path, strerror(-r));
    if (r > 0)
      return refuse_data_past(z, at, new_size);
  } else if (new_size > fpos) {
    /* The old footer becomes data: a copy of it ends the file first. */
    if ((r = put(z, vhd->footer_raw, VHD_FOOTER_SIZE, new_size, "the footer")) < 0 ||
        (r = sync_image(z, "moving the footer")) < 0)
      return r;
  }
  if (new_size > old) {
    uint64_t end = MIN(new_size, vhd->file_size);
    if ((r = vhd_io_zero(vhd, old, end - old)) < 0)
      return vhd_set_err(z->err, r, "%s: zeroing offsets %llu to %llu: %s", vhd->path,
                         (unsigned long long)old, (unsigned long long)end, strerror(-r));
    if ((r = sync_image(z, "zeroing the new space")) < 0)
      return r;
  }
  if ((r = write_footers(z, footer, new_size)) < 0)
    return r;
  if (new_size + VHD_FOOTER_SIZE < vhd->file_size) {
    if ((r = vhd_io_truncate(vhd, new_size + VHD_FOOTER_SIZE)) < 0)
      return vhd_set_err(z->err, r, "%s: truncating to %llu bytes: %s", vhd->path,
                         (unsigned long long)(new_size + VHD_FOOTER_SIZE), strerror(-r));
    if ((r = sync_image(z, "truncating")) < 0)
      return r;
  }
  return 0;
}

/* Blocks holding sectors in [from, to): sectors this image marks present
 * there.  first_set: report the first (shrink); else clear them and zero
 * their data (grow: what was past the end must read as zeros, also to
 * readers that ignore bitmaps). */
static int scan_tail(struct resize *z, uint64_t from, uint64_t to, bool first_set,
                     uint64_t *at) {
  vhd_t *vhd = z->vhd;
  uint64_t bs = vhd->block_size;
  bool any = false;
  int r;
  to = MIN(to, (uint64_t)vhd->max_entries * bs);
  for (uint64_t b = from / bs; b * bs < to; b++) {
    uint32_t blk = (uint32_t)b;
    if (vhd->bat[blk] == VHD_BAT_UNUSED)
      continue;
    uint8_t *bm;
    if ((r = vhd_bitmap_get(vhd, blk, &bm, z->err)) < 0)
      return r;
    uint64_t start = b * bs;
    uint32_t s0 = from > start ? (uint32_t)((from - start) / 512) : 0;
    uint32_t s1 = (uint32_t)((MIN(to, start + bs) - start) / 512);
    bool changed = false;
    /* A block Xen's batmap marks full keeps its bits (batmap.c): the zeros
     * written below make those sectors read as zeros all the same. */
    bool keep_bits = !first_set && vhd_batmap_full(vhd, blk);
    for (uint32_t s = s0; s < s1 && !keep_bits; s++) {
      if (!vhd_bit_get(bm, s))
        continue;
      if (first_set) {
        *at = start + (uint64_t)s * 512;
        return 1;
      }
      if ((r = vhd_bitmap_own(vhd, blk, &bm, z->err)) < 0)
        return r;
      vhd_bit_clear(bm, s);
      changed = true;
    }
    if (first_set)
      continue;
    uint64_t boff = (uint64_t)vhd->bat[blk] * 512;
    if (changed && (r = put(z, bm, vhd->bitmap_size, boff, "a sector bitmap")) < 0)
      return r;
    uint64_t doff = boff + vhd->bitmap_size + (uint64_t)s0 * 512;
    if ((r = vhd_io_zero(vhd, doff, (uint64_t)(s1 - s0) * 512)) < 0)
      return vhd_set_err(z->err, r, "%s: zeroing block %u past the old end at offset %llu: %s",
                         vhd->path, blk, (unsigned long long)doff, strerror(-r));
    any = true;
  }
  if (any)
    return sync_image(z, "clearing sectors past the old end");
  return 0;
}

static int block_start_cmp(const void *a, const void *b) {
  const uint64_t *x = a, *y = b;
  return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* BAT entries as on disk, for entries [first, first+n). */
static void encode_entries(const vhd_t *vhd, uint8_t *out, uint32_t first, uint32_t n) {
  for (uint32_t e = 0; e < n; e++) {
    uint32_t v = vhd->bat[first + e];
    out[4 * e] = (uint8_t)(v >> 24);
    out[4 * e + 1] = (uint8_t)(v >> 16);
    out[4 * e + 2] = (uint8_t)(v >> 8);
    out[4 * e + 3] = (uint8_t)v;
  }
}

static int copy_block(struct resize *z, uint64_t from, uint64_t to, uint64_t span,
                      uint8_t *buf) {
  vhd_t *vhd = z->vhd;
  for (uint64_t done = 0; done < span;) {
    size_t n = (size_t)MIN(span - done, (uint64_t)COPY_CHUNK);
    int r = vhd_io_pread(vhd->fd, buf, n, from + done);
    if (r < 0)
      return vhd_set_err(z->err, r, "%s: reading the block at offset %llu: %s", vhd->path,
                         (unsigned long long)(from + done), strerror(-r));
    /* Space past the old end of the file is a hole: zeros need no write. */
    bool zero = to + done >= vhd->file_size;
    for (size_t i = 0; zero && i < n; i++)
      zero = buf[i] == 0;
    if (!zero && (r = put(z, buf, n, to + done, "a moved block")) < 0)
      return r;
    done += n;
    z->done += n;
    if (z->o->progress)
      z->o->progress(z->o->opaque, z->done, z->total);
  }
  return 0;
}

/* Writes the header's first sector (see the write order above).  Only the
 * two fields change, in the bytes as they are on disk: reserved bytes
 * another writer left there stay, and the checksum covers the second
 * sector as it is (a header built anew would drop such bytes, and its
 * checksum would not match the sector left unwritten). */
static int write_header(struct resize *z, uint64_t table_offset, uint32_t entries) {
  vhd_t *vhd = z->vhd;
  uint8_t raw[VHD_HEADER_SIZE];
  int r = vhd_io_pread(vhd->fd, raw, sizeof raw, vhd->header_offset);
  if (r == 0)
    r = vhd_header_check(raw, vhd->path, vhd->header_offset, z->err);
  else
    vhd_set_err(z->err, r, "%s: reading the dynamic header at offset %llu: %s", vhd->path,
                (unsigned long long)vhd->header_offset, strerror(-r));
  if (r < 0)
    return r;
  be64_store(raw + 16, table_offset);
  be32_store(raw + 28, entries);
  be32_store(raw + 36, vhd_checksum(raw, VHD_HEADER_SIZE, 36));
  if ((r = put(z, raw, 512, vhd->header_offset, "the dynamic header")) == 0)
    r = sync_image(z, "writing the dynamic header");
  return r;
}

/* Whether [a, b) is nobody's: no extent of `used` (vhd_used_extents with
 * the locator rooms) lies in it, so that the BAT may grow over it (open
 * would refuse the overlap).  A locator's data counts whatever it holds:
 * zeros too. */
static bool nobodys(const struct vhd_used *used, ssize_t n, uint64_t a, uint64_t b) {
  for (ssize_t i = 0; i < n; i++)
    if (used[i].start < b && a < used[i].end)
      return false;
  return true;
}

/* The whole table anew past everything (past_all), then the header points
 * at it. */
static int relocate_bat(struct resize *z, uint32_t entries, uint64_t past_all,
                        uint64_t *footer_pos) {
  vhd_t *vhd = z->vhd;
  uint64_t nbat = past_all, nspan = ROUND_UP((uint64_t)entries * 4, 512);
  int r;
  *footer_pos = nbat + nspan;
  if ((r = put(z, vhd->footer_raw, VHD_FOOTER_SIZE, *footer_pos, "the footer")) < 0 ||
      (r = sync_image(z, "moving the footer")) < 0)
    return r;
  CLEANUP_FREE uint8_t *t = malloc(nspan);
  if (!t)
    return vhd_set_err(z->err, -ENOMEM, "%s: out of memory for a BAT of %u entries", vhd->path,
                       entries);
  memset(t, 0xFF, nspan);
  encode_entries(vhd, t, 0, vhd->max_entries);
  if ((r = put(z, t, nspan, nbat, "the new BAT")) < 0 ||
      (r = sync_image(z, "writing the new BAT")) < 0)
    return r;
  z->res.bat_moved = true;
  return write_header(z, nbat, entries);
}

/* Makes the BAT hold `entries` entries; *footer_pos gets where the trailing
 * footer goes. */
static int grow_bat(struct resize *z, uint32_t entries, uint64_t *footer_pos) {
  vhd_t *vhd = z->vhd;
  uint64_t bat = vhd->header.table_offset;
  uint64_t old_bytes = (uint64_t)vhd->max_entries * 4, new_bytes = (uint64_t)entries * 4;
  uint64_t old_end = bat + ROUND_UP(old_bytes, 512), new_end = bat + ROUND_UP(new_bytes, 512);
  uint64_t span = (uint64_t)vhd->bitmap_size + vhd->block_size;
  static const uint8_t unused[512] = {[0 ... 511] = 0xFF};
  /* Past everything, the trailing footer included: where a moved table or
   * moved blocks go, and the footer after them.  alloc_floor alone may lie
   * before the footer (a window a crash left, taken at open). */
  uint64_t past_all = MAX(vhd->alloc_floor, ROUND_UP(vhd->footer_offset, 512));
  int r;
  /* What is anyone's, listed once for every question below. */
  CLEANUP_FREE struct vhd_used *used = NULL;
  ssize_t nused = vhd_used_extents(vhd, VHD_USED_LOCATOR_ROOM, &used);
  if (nused < 0)
    return vhd_set_err(z->err, (int)nused, "%s: out of memory", vhd->path);

  if (new_end == old_end) {
    /* Room in the BAT's last sector, unless something else lies there
     * (parent locator data may start in the BAT's padding, and in a file
     * whose length is not a multiple of 512 the trailing footer may). */
    if (!nobodys(used, nused, bat + old_bytes, bat + new_bytes) ||
        vhd->footer_offset < bat + new_bytes)
      return relocate_bat(z, entries, past_all, footer_pos);
    CLEANUP_FREE uint8_t *pad = malloc(new_bytes - old_bytes);
    if (!pad)
      return vhd_set_err(z->err, -ENOMEM, "%s: out of memory", vhd->path);
    memset(pad, 0xFF, new_bytes - old_bytes);
    if ((r = put(z, pad, new_bytes - old_bytes, bat + old_bytes, "new BAT entries")) < 0 ||
        (r = sync_image(z, "writing new BAT entries")) < 0)
      return r;
    *footer_pos = vhd->footer_offset;
    return write_header(z, bat, entries);
  }
  /* The new entries start in the last sector's padding too: what lies
   * there (parent locator data that starts and ends in it) is in their
   * way as much as anything in the sectors after it. */
  if (!nobodys(used, nused, bat + old_bytes, old_end))
    return relocate_bat(z, entries, past_all, footer_pos);

  /* Which blocks lie in [old_end, new_end), back to back from old_end? */
  CLEANUP_FREE uint64_t *blocks = malloc(((size_t)vhd->allocated_blocks + 1) * 2 * sizeof *blocks);
  if (!blocks)
    return vhd_set_err(z->err, -ENOMEM, "%s: out of memory", vhd->path);
  size_t nb = 0;
  for (uint32_t i = 0; i < vhd->max_entries; i++)
    if (vhd->bat[i] != VHD_BAT_UNUSED) {
      blocks[2 * nb] = (uint64_t)vhd->bat[i] * 512;
      blocks[2 * nb + 1] = i;
      nb++;
    }
  qsort(blocks, nb, 2 * sizeof *blocks, block_start_cmp);
  size_t first = 0, nmove = 0;
  while (first < nb && blocks[2 * first] < old_end)
    first++;
  uint64_t cur = old_end;
  bool relocate = false;
  while (cur < new_end && cur < vhd->alloc_floor) {
    /* Up to 3.5 KiB before a block are what its alignment skipped (see
     * vhd_block_place): the table may grow over them when they hold
     * nothing (zeros, old copies of the footer) and are nobody's (zeros
     * may be a parent locator's data), never over anything else. */
    if (first + nmove < nb && blocks[2 * (first + nmove)] > cur &&
        blocks[2 * (first + nmove)] - cur < VHD_DATA_ALIGN &&
        vhd_io_range_is_blank(vhd->fd, cur, blocks[2 * (first + nmove)] - cur,
                              vhd->footer_raw) == 1 &&
        nobodys(used, nused, cur, blocks[2 * (first + nmove)]))
      cur = blocks[2 * (first + nmove)];
    if (first + nmove < nb && blocks[2 * (first + nmove)] == cur) {
      cur += span;
      nmove++;
    } else {
      relocate = true; /* a structure, or bytes the engine cannot account for */
      break;
    }
  }

  if (relocate)
    return relocate_bat(z, entries, past_all, footer_pos);

  /* The blocks in the way go past everything, then the table grows over
   * their old place. */
  uint64_t dest = MAX(past_all, new_end), stride = span;
  if (nmove) {
    /* Placed as new blocks are, data 4 KiB-aligned where the block size
     * allows. */
    dest = vhd_block_place(vhd, dest);
    stride = vhd_block_place(vhd, dest + span) - dest;
  }
  *footer_pos = nmove ? dest + (nmove - 1) * stride + span : dest;
  /* A BAT entry holds a sector number in 32 bits: past that the moved
   * blocks could not be pointed at (a file whose footer stands near 2 TiB,
   * a hole before it). */
  if (nmove && dest + (nmove - 1) * stride > (uint64_t)(VHD_BAT_UNUSED - 1) * 512)
    return vhd_set_err(z->err, -EFBIG,
                       "%s: the BAT grows over %zu block%s, which would move past offset %llu, "
                       "beyond the 2 TiB a BAT entry can point at",
                       vhd->path, nmove, nmove == 1 ? "" : "s", (unsigned long long)dest);
  if ((r = put(z, vhd->footer_raw, VHD_FOOTER_SIZE, *footer_pos, "the footer")) < 0 ||
      (r = sync_image(z, "moving the footer")) < 0)
    return r;
  if (nmove) {
    z->total = nmove * span;
    CLEANUP_FREE uint8_t *buf = malloc(COPY_CHUNK);
    if (!buf)
      return vhd_set_err(z->err, -ENOMEM, "%s: out of memory", vhd->path);
    for (size_t k = 0; k < nmove; k++)
      if ((r = copy_block(z, blocks[2 * (first + k)], dest + k * stride, span, buf)) < 0)
        return r;
    if ((r = sync_image(z, "copying blocks")) < 0)
      return r;
    for (size_t k = 0; k < nmove; k++) {
      uint32_t blk = (uint32_t)blocks[2 * (first + k) + 1];
      vhd->bat[blk] = (uint32_t)((dest + k * stride) / 512);
      uint32_t sec = blk / 128, e0 = sec * 128, n = MIN(128u, vhd->max_entries - e0);
      uint8_t s[512];
      encode_entries(vhd, s, e0, n);
      if ((r = put(z, s, n * 4, bat + (uint64_t)sec * 512, "a BAT sector")) < 0)
        return r;
    }
    if ((r = sync_image(z, "switching BAT entries of moved blocks")) < 0)
      return r;
    z->res.blocks_moved = (uint32_t)nmove;
  }
  for (uint64_t off = bat + old_bytes; off < new_end;) {
    size_t n = (size_t)MIN(new_end - off, 512 - off % 512);
    if ((r = put(z, unused, n, off, "new BAT entries")) < 0)
      return r;
    off += n;
  }
  if ((r = sync_image(z, "writing new BAT entries")) < 0)
    return r;
  return write_header(z, bat, entries);
}

/* A Xen batmap (batmap.c) must stay where tapdisk looks for it, right
 * after the BAT, and cover the new size with the checksum it has: the
 * engine does not rewrite it. */
static int check_batmap(struct resize *z, uint64_t new_size, uint64_t entries) {
  vhd_t *vhd = z->vhd;
  if (!vhd->batmap)
    return 0;
  uint64_t bat_end = vhd->header.table_offset + ROUND_UP((uint64_t)vhd->max_entries * 4, 512);
  if (entries > vhd->max_entries &&
      vhd->header.table_offset + ROUND_UP(entries * 4, 512) > bat_end)
    return vhd_set_err(z->err, -ENOTSUP,
                       "%s: %llu bytes need a BAT of %llu entries, which would not fit before "
                       "the Xen batmap at offset %llu (tapdisk expects it right after the BAT)",
                       vhd->path, (unsigned long long)new_size, (unsigned long long)entries,
                       (unsigned long long)vhd->batmap_header_offset);
  uint64_t covered = MAX(DIV_ROUND_UP(new_size >> 24, 512), 1) * 512;
  if (covered > vhd->batmap_len ||
      vhd_batmap_checksum(vhd, new_size) != vhd_batmap_checksum(vhd, vhd->footer.current_size))
    return vhd_set_err(z->err, -ENOTSUP,
                       "%s: the Xen batmap at offset %llu (%u bytes) does not cover %llu bytes "
                       "with its present checksum, and resizing does not rewrite it",
                       vhd->path, (unsigned long long)vhd->batmap_offset, vhd->batmap_len,
                       (unsigned long long)new_size);
  return 0;
}

static int resize_dynamic(struct resize *z, uint64_t new_size, const uint8_t *footer) {
  vhd_t *vhd = z->vhd;
  uint64_t old = vhd->virtual_size;
  int r;
  if ((r = check_batmap(z, new_size, DIV_ROUND_UP(new_size, vhd->block_size))) < 0)
    return r;
  if (new_size < old) {
    uint64_t at;
    r = scan_tail(z, new_size, old, true, &at);
    if (r < 0)
      return r;
    if (r > 0)
      return refuse_data_past(z, at, new_size);
    return write_footers(z, footer, vhd->footer_offset);
  }
  if ((r = scan_tail(z, old, new_size, false, NULL)) < 0)
    return r;
  uint64_t entries = DIV_ROUND_UP(new_size, vhd->block_size);
  uint64_t pos = vhd->footer_offset;
  if (entries > vhd->max_entries && (r = grow_bat(z, (uint32_t)entries, &pos)) < 0)
    return r;
  return write_footers(z, footer, pos);
}

struct parent_data {
  vhd_t *img;
  int min_depth; /* levels of the chain below this one are skipped */
  uint8_t *buf;
  uint64_t found; /* first byte read from those levels that is not zero */
  struct vhd_err *err;
};

static int first_nonzero_in(void *opaque, const struct vhd_extent *e) {
  struct parent_data *d = opaque;
  if (!(e->flags & VHD_MAP_DATA) || e->depth < d->min_depth)
    return 0;
  for (uint64_t done = 0; done < e->length;) {
    size_t n = (size_t)MIN((uint64_t)COPY_CHUNK, e->length - done);
    int r = vhd_read(d->img, d->buf, e->offset + done, n, d->err);
    if (r < 0)
      return r;
    for (size_t i = 0; i < n; i++)
      if (d->buf[i]) {
        d->found = e->offset + done + i;
        return 1;
      }
    done += n;
  }
  return 0;
}

/* A differencing image reads its parent wherever it holds no sector.
 * - Space a grow adds reads through too, and the parent may be larger and
 *   hold data there (a child shrunk earlier, or made smaller by another
 *   tool): growing would show that data instead of zeros.
 * - A shrink drops what the image reads past the new end, its parent's
 *   data too (the image's own sectors are scan_tail's to find).
 * Either is refused where that data is not zeros, naming its offset. */
static int check_parent_data(struct resize *z, uint64_t new_size) {
  vhd_t *vhd = z->vhd;
  uint64_t old = vhd->virtual_size;
  if (vhd->type != VHD_TYPE_DIFFERENCING || new_size == old)
    return 0;
  vhd_t *c = NULL;
  /* The chain is opened here first: what finding it warns of is said here. */
  struct vhd_open_opts ro = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
                             .size_rule = VHD_SIZE_CURRENT,
                             .warn = z->o->warn,
                             .warn_opaque = z->o->opaque};
  int r = vhd_open(vhd->path, &ro, &c, z->err);
  if (r < 0)
    return r;
  vhd_t *p = vhd_parent(c);
  struct parent_data d = {.img = new_size > old ? p : c, .min_depth = new_size > old ? 0 : 1,
                          .err = z->err};
  uint64_t lo = MIN(old, new_size);
  uint64_t hi = new_size > old ? (p ? MIN(new_size, vhd_virtual_size(p)) : 0) : old;
  if (hi > lo) {
    d.buf = malloc(COPY_CHUNK);
    if (!d.buf)
      r = vhd_set_err(z->err, -ENOMEM, "%s: out of memory", vhd->path);
    else
      r = vhd_map(d.img, lo, hi - lo, first_nonzero_in, &d, z->err);
    if (r == 1 && new_size > old)
      r = vhd_set_err(z->err, -ENOTSUP,
                      "%s: its parent %s holds data at offset %llu, past the child's end (%llu "
                      "bytes): the space a grow adds would read that data, not zeros; not grown",
                      vhd->path, vhd_path(p), (unsigned long long)d.found,
                      (unsigned long long)old);
    else if (r == 1)
      r = vhd_set_err(z->err, -ENOTEMPTY,
                      "%s: it reads data from its parent %s at offset %llu, past the new end "
                      "(%llu bytes), and so would every child of it: not shrunk",
                      vhd->path, vhd_path(p), (unsigned long long)d.found,
                      (unsigned long long)new_size);
    free(d.buf);
  }
  vhd_close(c, NULL);
  return r;
}

/* A resize cut short after the trailing footer took the new size and
 * before its copy at 0 did leaves the copy with the old one: a run that
 * finds nothing else to change writes it, as the cut run would have. */
static int finish_footer_copy(vhd_t *vhd, struct vhd_err *err) {
  int r = vhd->footer_copy_used ? 0 : vhd_io_footer_copy_sync(vhd, true);
  return r < 0 ? vhd_set_err(err, r, "%s: writing the footer copy at offset 0: %s", vhd->path,
                             strerror(-r))
               : 0;
}

int vhd_resize(const char *path, const struct vhd_resize_opts *o, struct vhd_resize_result *res,
               struct vhd_err *err) {
  /* The old size is the current size: sectors past a Virtual PC disk's
   * geometry (the size the engine serves it at) are data to readers that
   * take the current size, and growing must keep them, shrinking must
   * look at them (see commit.c). */
  struct vhd_open_opts oo = {.flags = VHD_OPEN_NOPARENT,
                             .size_rule = VHD_SIZE_CURRENT,
                             .warn = o->warn,
                             .warn_opaque = o->opaque};
  vhd_t *vhd;
  if (o->size == 0)
    return vhd_set_err(err, -EINVAL, "%s: size must be larger than 0", path);
  if (o->size > VHD_MAX_VIRTUAL_SIZE)
    return vhd_set_err(err, -EINVAL, "%s: size %llu exceeds the VHD limit of %llu bytes", path,
                       (unsigned long long)o->size, (unsigned long long)VHD_MAX_VIRTUAL_SIZE);
  int r = vhd_open(path, &oo, &vhd, err);
  if (r < 0)
    return r;
  if (vhd->footer.saved_state && !o->ignore_saved_state) {
    r = vhd_set_err(err, -EPERM,
                    "%s: the footer's saved-state flag is set (a virtual machine's saved state "
                    "depends on this disk), and the VHD format forbids resizing it",
                    path);
    vhd_abandon(vhd);
    return r;
  }
  struct vhd_footer f = vhd->footer;
  uint64_t size = vhd_size_geometry(o->size, o->exact_size, &f);
  /* Both sizes: libvhdi takes the original size as the disk's. */
  f.current_size = size;
  f.original_size = size;
  struct resize z = {vhd, o, err, 0, 0, {.old_size = vhd->virtual_size, .new_size = size}};
  if (size < vhd->virtual_size && !o->shrink) {
    r = vhd_set_err(err, -EINVAL,
                    "%s: %llu bytes is smaller than the image (%llu bytes): shrinking needs "
                    "--shrink",
                    path, (unsigned long long)size, (unsigned long long)vhd->virtual_size);
  } else if (size == vhd->virtual_size && size == vhd->footer.current_size &&
             size == vhd->footer.original_size &&
             memcmp(f.creator_app, vhd->footer.creator_app, 4) == 0) {
    r = finish_footer_copy(vhd, err); /* the size is right; a crash may have left the copy */
  } else if (vhd->type != VHD_TYPE_FIXED &&
             DIV_ROUND_UP(size, vhd->block_size) > MAX(VHD_MAX_NEW_TABLE_ENTRIES, vhd->max_entries)) {
    r = vhd_set_err(err, -EFBIG,
                    "%s: %llu bytes in blocks of %u bytes need a BAT of %llu entries, more "
                    "than the %u QEMU opens (and each takes memory while the image is open): "
                    "at most %llu bytes with this block size",
                    path, (unsigned long long)size, vhd->block_size,
                    (unsigned long long)DIV_ROUND_UP(size, vhd->block_size),
                    (unsigned)VHD_MAX_NEW_TABLE_ENTRIES,
                    (unsigned long long)VHD_MAX_NEW_TABLE_ENTRIES * vhd->block_size);
  } else if ((r = check_parent_data(&z, size)) == 0) {
    uint8_t raw[VHD_FOOTER_SIZE];
    vhd_footer_encode(&f, raw);
    r = vhd->type == VHD_TYPE_FIXED ? resize_fixed(&z, size, raw) : resize_dynamic(&z, size, raw);
  }
  if (r == 0 && res)
    *res = z.res;
  /* Everything the resize wrote is synced; the handle has nothing of its
   * own to flush, and its window and floors describe the old layout. */
  vhd_abandon(vhd);
  return r;
}
