/* bat.c: the block allocation table, sector bitmaps and block allocation. */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cleanup.h"
#include "endian-be.h"
#include "vhd-internal.h"

/* Room reserved per footer move: about 64 MiB of blocks, or as much as
 * the handle has allocated since open, up to 1 GiB: a file growing fast
 * moves its footer less often.  What a crash leaves of a window is a hole
 * (a leak, see the write order), and a clean close gives it back. */
#define VHD_WINDOW_BYTES (64ull * 1024 * 1024)
#define VHD_WINDOW_MAX_BYTES (1024ull * 1024 * 1024)

/* At most this much of a tail's written bytes is read at open to see
 * whether it holds nothing (vhd_bat_load): what a crash wrote of a window
 * before the footer, blocks never given a BAT entry, is at most a window;
 * a longer foreign tail of written zeros (followed by other bytes, so
 * that no close ever cuts it) must not make every open read it whole. */
#define VHD_OPEN_TAIL_READ_MAX VHD_WINDOW_MAX_BYTES

static int used_cmp(const void *a, const void *b) {
  const struct vhd_used *x = a, *y = b;
  return x->start < y->start ? -1 : x->start > y->start;
}

uint64_t vhd_locator_area_end(const struct vhd_locator *l) {
  uint64_t space = l->data_space >= l->data_length ? l->data_space : (uint64_t)l->data_space * 512;
  return ROUND_UP(l->data_offset + MAX(space, (uint64_t)l->data_length), 512);
}

uint64_t vhd_structures_end(const vhd_t *vhd) {
  uint64_t end = vhd->header_offset + VHD_HEADER_SIZE;
  end = MAX(end, vhd->header.table_offset + ROUND_UP((uint64_t)vhd->max_entries * 4, 512));
  if (vhd->batmap) {
    end = MAX(end, vhd->batmap_header_offset + 512);
    end = MAX(end, vhd->batmap_offset + vhd->batmap_len);
  }
  return ROUND_UP(end, 512);
}

ssize_t vhd_used_extents(const vhd_t *vhd, unsigned flags, struct vhd_used **out) {
  uint64_t span = (uint64_t)vhd->bitmap_size + vhd->block_size;
  bool freed = flags & VHD_USED_FREED;
  /* Counted first: a 2 TiB image has a million entries, mostly unused. */
  size_t cap = 5 + 8;
  for (uint32_t i = 0; i < vhd->max_entries; i++)
    cap += vhd->bat[i] != VHD_BAT_UNUSED;
  if (freed)
    cap += vhd->n_free_pending + vhd->n_free_ready + vhd->n_retired;
  struct vhd_used *u = malloc(cap * sizeof *u);
  if (!u)
    return -ENOMEM;
  size_t n = 0;
  uint64_t bat_off = vhd->header.table_offset;
  u[n++] = (struct vhd_used){0, VHD_FOOTER_SIZE, UINT32_MAX, "the footer copy"};
  u[n++] = (struct vhd_used){vhd->header_offset, vhd->header_offset + VHD_HEADER_SIZE,
                             UINT32_MAX, "the dynamic header"};
  u[n++] = (struct vhd_used){bat_off, bat_off + (uint64_t)vhd->max_entries * 4, UINT32_MAX,
                             "the BAT"};
  if (vhd->batmap) {
    u[n++] = (struct vhd_used){vhd->batmap_header_offset, vhd->batmap_header_offset + 512,
                               UINT32_MAX, "the Xen batmap header"};
    u[n++] = (struct vhd_used){vhd->batmap_offset, vhd->batmap_offset + vhd->batmap_len,
                               UINT32_MAX, "the Xen batmap"};
  }
  for (int i = 0; vhd->type == VHD_TYPE_DIFFERENCING && i < 8; i++) {
    const struct vhd_locator *l = &vhd->header.locators[i];
    if (l->code != VHD_PLAT_NONE && l->data_length)
      u[n++] = (struct vhd_used){l->data_offset,
                                 flags & VHD_USED_LOCATOR_ROOM
                                     ? vhd_locator_area_end(l)
                                     : l->data_offset + l->data_length,
                                 UINT32_MAX, "parent locator data"};
  }
  for (uint32_t i = 0; i < vhd->max_entries; i++)
    if (vhd->bat[i] != VHD_BAT_UNUSED)
      u[n++] = (struct vhd_used){(uint64_t)vhd->bat[i] * 512, (uint64_t)vhd->bat[i] * 512 + span,
                                 i, NULL};
  uint64_t mask = ~(uint64_t)VHD_FREE_NEEDS_ZEROING;
  for (size_t i = 0; freed && i < vhd->n_free_pending; i++)
    u[n++] = (struct vhd_used){vhd->free_pending[i] & mask,
                               (vhd->free_pending[i] & mask) + span, UINT32_MAX, "a freed block"};
  for (size_t i = 0; freed && i < vhd->n_free_ready; i++)
    u[n++] = (struct vhd_used){vhd->free_ready[i] & mask, (vhd->free_ready[i] & mask) + span,
                               UINT32_MAX, "a freed block"};
  for (size_t i = 0; freed && i < vhd->n_retired; i++)
    u[n++] = (struct vhd_used){vhd->retired[i].entry & mask,
                               (vhd->retired[i].entry & mask) + span, UINT32_MAX,
                               "a freed block"};
  qsort(u, n, sizeof *u, used_cmp);
  *out = u;
  return (ssize_t)n;
}

/* Loads the BAT and checks that every allocated block lies inside the file
 * and overlaps neither metadata nor another block. */
int vhd_bat_load(vhd_t *vhd, struct vhd_err *err) {
  const char *p = vhd->path;
  uint64_t bat_off = vhd->header.table_offset;
  uint64_t bat_bytes = (uint64_t)vhd->max_entries * 4;
  uint64_t bat_span = ROUND_UP(bat_bytes, 512);
  uint64_t fsz = vhd->file_size;
  if (bat_off >= fsz || bat_bytes > fsz - bat_off)
    return vhd_set_err(err, -EINVAL,
                       "%s: BAT (table offset %llu, %u entries) lies beyond the end of the file "
                       "(%llu bytes)",
                       p, (unsigned long long)bat_off, vhd->max_entries, (unsigned long long)fsz);
  if (bat_off < vhd->header_offset + VHD_HEADER_SIZE && bat_off + bat_bytes > vhd->header_offset)
    return vhd_set_err(err, -EINVAL, "%s: BAT at offset %llu overlaps the dynamic header at %llu",
                       p, (unsigned long long)bat_off, (unsigned long long)vhd->header_offset);
  if (bat_off + bat_bytes > vhd->data_end)
    return vhd_set_err(err, -EINVAL,
                       "%s: BAT (table offset %llu, %u entries) overlaps the trailing footer at %llu",
                       p, (unsigned long long)bat_off, vhd->max_entries,
                       (unsigned long long)vhd->data_end);
  if (bat_off < VHD_FOOTER_SIZE)
    return vhd_set_err(err, -EINVAL, "%s: BAT at offset %llu overlaps the footer copy at 0", p,
                       (unsigned long long)bat_off);
  /* Every writer puts the BAT on a sector boundary, and the write order
   * relies on it: a flush writes a BAT sector's entries in one write that
   * a crash keeps or loses whole, and resize moves the table by sectors.
   * Off the boundary, a crash could keep half of a write, or of an entry.
   * Reading needs none of that. */
  if (bat_off % 512 && !vhd->readonly)
    return vhd_set_err(err, -EINVAL,
                       "%s: BAT at offset %llu is not on a sector boundary, which no VHD writer "
                       "does and this one cannot update safely: open it read-only, or copy it "
                       "with vhdimg convert",
                       p, (unsigned long long)bat_off);

  /* The BAT is read straight into its in-memory array and swapped in place:
   * a 2 TiB image has a 4 MiB BAT, and opening it must stay cheap. */
  vhd->bat = malloc(((size_t)vhd->max_entries + 1) * sizeof(uint32_t));
  vhd->bitmaps = calloc((size_t)vhd->max_entries + 1, sizeof(uint8_t *));
  size_t ones = vhd_bitmap_ones_len(vhd);
  void *m = mmap(NULL, ones, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m != MAP_FAILED) {
    memset(m, 0xff, ones);
    if (mprotect(m, ones, PROT_READ) == 0)
      vhd->bitmap_ones = m;
    else
      munmap(m, ones);
  }
  vhd->block_dirty = calloc((size_t)vhd->max_entries + 1, 1);
  vhd->dirty_blocks = malloc(((size_t)vhd->max_entries + 1) * sizeof(uint32_t));
  vhd->pins = calloc((size_t)vhd->max_entries + 1, sizeof *vhd->pins);
  size_t nsec = (size_t)(bat_span / 512) + 1;
  vhd->bat_sector_dirty = calloc(nsec, 1);
  vhd->dirty_bat_sectors = malloc(nsec * sizeof(uint32_t));
  if (!vhd->bat || !vhd->bitmaps || !vhd->block_dirty || !vhd->dirty_blocks || !vhd->pins ||
      !vhd->bat_sector_dirty || !vhd->dirty_bat_sectors)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory for a BAT of %u entries", p,
                       vhd->max_entries);
  int r = vhd_io_pread(vhd->fd, vhd->bat, bat_bytes, bat_off);
  if (r < 0)
    return vhd_set_err(err, r, "%s: reading the BAT at offset %llu: %s", p,
                       (unsigned long long)bat_off, strerror(-r));
  for (uint32_t i = 0; i < vhd->max_entries; i++)
    vhd->bat[i] = be32toh(vhd->bat[i]);

  /* With the copy at 0 in use, the last sector was taken for a damaged
   * footer.  A file that lost its trailing footer whole (cut right after
   * its last block) ends with that block's data there instead: a block
   * reaching into the last sector, and no further than the file, says so,
   * and the data area then runs to the end of the file. */
  uint8_t last[8] = {0};
  if (vhd->footer_copy_used && vhd->file_size >= 512)
    (void)vhd_io_pread(vhd->fd, last, sizeof last, ROUND_DOWN(vhd->file_size, 512) - 512);
  /* A torn footer (its cookie still there) is a footer, never a block's data. */
  if (vhd->footer_copy_used && memcmp(last, "conectix", 8) != 0) {
    uint64_t span = (uint64_t)vhd->bitmap_size + vhd->block_size;
    uint64_t file_end = ROUND_DOWN(vhd->file_size, 512);
    for (uint32_t i = 0; i < vhd->max_entries; i++) {
      uint64_t end = (uint64_t)vhd->bat[i] * 512 + span;
      if (vhd->bat[i] != VHD_BAT_UNUSED && end > vhd->data_end && end <= file_end)
        vhd->data_end = end;
    }
  }
  /* A differencing disk's locator whose data lies past the footer (a copy
   * cut short, another writer's crash, junk) holds no path anyone can
   * read.  This handle forgets it, so the other locators and the header's
   * name still find the parent and the image opens; the header on disk
   * keeps it.  Its room stays out of new blocks' way: a block there would
   * turn the entry into a pointer at block data, which the next open
   * refuses as an overlap.  Room past what a BAT entry can reach needs no
   * keeping.  Data that starts inside the file and runs past its end
   * overlaps what is there once the file grows: refused, as before. */
  uint64_t stale_room_end = 0;
  uint64_t reach = (uint64_t)(VHD_BAT_UNUSED - 1) * 512;
  for (int i = 0; vhd->type == VHD_TYPE_DIFFERENCING && i < 8; i++) {
    struct vhd_locator *l = &vhd->header.locators[i];
    if (l->code == VHD_PLAT_NONE || !l->data_length ||
        (l->data_offset < vhd->data_end && l->data_length <= vhd->data_end - l->data_offset))
      continue;
    if (l->data_offset < vhd->data_end)
      return vhd_set_err(err, -EINVAL,
                         "%s: parent locator %d data (offset %llu, length %u) runs past the end "
                         "of the file's data (%llu)",
                         p, i, (unsigned long long)l->data_offset, l->data_length,
                         (unsigned long long)vhd->data_end);
    vhd_warn(vhd,
             "%s: parent locator %d data (offset %llu, length %u) lies beyond the end of the "
             "file's data (%llu): not used to find the parent",
             p, i, (unsigned long long)l->data_offset, l->data_length,
             (unsigned long long)vhd->data_end);
    if (l->data_offset < reach)
      stale_room_end = MAX(stale_room_end, MIN(vhd_locator_area_end(l), reach));
    *l = (struct vhd_locator){0};
    vhd->stale_locators |= (uint8_t)(1u << i);
  }
  if ((r = vhd_batmap_load(vhd, vhd->data_end, err)) < 0)
    return r;

  uint64_t block_span = (uint64_t)vhd->bitmap_size + vhd->block_size;
  /* For a file cut inside its trailing footer, the sector boundary the cut
   * left: where the last block may end and check --repair writes the
   * footer again. */
  uint64_t data_end = vhd->data_end;
  /* Everything up to the trailing footer is someone's: structures, blocks,
   * or bytes the engine cannot account for (another writer's extension, a
   * crash's leftovers).  Locator data areas count with the room they
   * reserve, and may even reach past the footer. */
  uint64_t off_limits_end = ROUND_UP(data_end, 512);
  off_limits_end = MAX(off_limits_end, ROUND_UP(bat_off + bat_bytes, 512));
  off_limits_end = MAX(off_limits_end, stale_room_end);
  /* Only a differencing image's locators are anyone's: the format gives
   * no other type any, and what another writer left in a dynamic disk's
   * entries (a room of 2 TiB, say) must not push new blocks out. */
  for (int i = 0; vhd->type == VHD_TYPE_DIFFERENCING && i < 8; i++) {
    const struct vhd_locator *l = &vhd->header.locators[i];
    if (l->code != VHD_PLAT_NONE && l->data_length && l->data_offset < data_end)
      off_limits_end = MAX(off_limits_end, vhd_locator_area_end(l));
  }
  vhd->allocated_blocks = 0;
  for (uint32_t i = 0; i < vhd->max_entries; i++) {
    uint32_t e = vhd->bat[i];
    if (e == VHD_BAT_UNUSED)
      continue;
    uint64_t off = (uint64_t)e * 512;
    if (off + block_span > data_end)
      return vhd_set_err(err, -EINVAL,
                         "%s: BAT entry %u: block at offset %llu (%llu bytes) runs past the end "
                         "of the data area (%llu)",
                         p, i, (unsigned long long)off, (unsigned long long)block_span,
                         (unsigned long long)data_end);
    vhd->allocated_blocks++;
  }
  /* Metadata regions and every block, sorted: neighbours must not overlap. */
  CLEANUP_FREE struct vhd_used *ext = NULL;
  ssize_t nu = vhd_used_extents(vhd, 0, &ext);
  if (nu < 0)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory checking the BAT", p);
  size_t n = (size_t)nu;
  for (size_t i = 1; i < n; i++) {
    if (ext[i].start < ext[i - 1].end) {
      const struct vhd_used *a = &ext[i - 1], *b = &ext[i];
      char an[64], bn[64];
      if (a->blk == UINT32_MAX)
        snprintf(an, sizeof an, "%s", a->what);
      else
        snprintf(an, sizeof an, "block %u", a->blk);
      if (b->blk == UINT32_MAX)
        snprintf(bn, sizeof bn, "%s", b->what);
      else
        snprintf(bn, sizeof bn, "BAT entry %u: block", b->blk);
      return vhd_set_err(err, -EINVAL, "%s: %s at offset 0x%llx overlaps %s at 0x%llx", p, bn,
                         (unsigned long long)b->start, an, (unsigned long long)a->start);
    }
  }
  /* New blocks start where the footer is, past everything: the space
   * between blocks or after the last one is not known to be free (it may
   * hold another writer's data), so it is left alone. */
  vhd->footer_offset = data_end;
  vhd->next_block_offset = off_limits_end;
  vhd->alloc_floor = off_limits_end;
  /* The blocks that end the file, back to back up to the footer, are this
   * image's own: once freed they may be cut at close, but nothing before
   * them (a structure, a gap, slack) may. */
  uint64_t tail = data_end;
  for (size_t i = n; i-- > 0 && ext[i].blk != UINT32_MAX && ext[i].end == tail;)
    tail = ext[i].start;
  vhd->cut_floor = tail;
  for (size_t i = 0; i < n; i++)
    if (ext[i].blk == UINT32_MAX)
      vhd->cut_floor = MAX(vhd->cut_floor, ROUND_UP(ext[i].end, 512));
  for (int i = 0; vhd->type == VHD_TYPE_DIFFERENCING && i < 8; i++) {
    const struct vhd_locator *l = &vhd->header.locators[i];
    if (l->code != VHD_PLAT_NONE && l->data_length && l->data_offset < data_end)
      vhd->cut_floor = MAX(vhd->cut_floor, vhd_locator_area_end(l));
  }
  if (vhd->cut_floor == data_end)
    vhd->cut_floor = off_limits_end;
  /* A tail in which nothing can be read (zeros, footers of this image,
   * blocks allocated without a BAT entry: what a crash leaves of an
   * allocation window) is such a window again, for this handle: new
   * blocks fill it, and a clean close gives back what they leave, where
   * before a crash cost its window for good and each rerun of a cut tool
   * grew the file by another.  Only for writing: a reader has no use for
   * it, and bytes of another writer's are never blank. */
  uint64_t used_end = off_limits_end == ROUND_UP(data_end, 512) ? 0 : off_limits_end;
  for (size_t i = 0; i < n; i++)
    used_end = MAX(used_end, ROUND_UP(ext[i].end, 512));
  /* with the room each locator reserves */
  for (int i = 0; vhd->type == VHD_TYPE_DIFFERENCING && i < 8; i++) {
    const struct vhd_locator *l = &vhd->header.locators[i];
    if (l->code != VHD_PLAT_NONE && l->data_length && l->data_offset < data_end)
      used_end = MAX(used_end, vhd_locator_area_end(l));
  }
  /* What lies there (old footers, blocks without a BAT entry) is zeroed
   * first: the sectors of a new block never written must read as zeros on
   * disk, also to readers that ignore bitmaps, as past a footer they do. */
  if (!vhd->readonly && used_end < data_end &&
      vhd_io_allocated_bytes(vhd->fd, used_end, data_end - used_end) <= VHD_OPEN_TAIL_READ_MAX &&
      vhd_range_holds_nothing(vhd, used_end, data_end) == 1 &&
      (vhd_io_range_is_blank(vhd->fd, used_end, data_end - used_end, NULL) == 1 ||
       vhd_io_zero(vhd, used_end, data_end - used_end) == 0)) {
    vhd->next_block_offset = used_end;
    vhd->alloc_floor = used_end;
    vhd->cut_floor = used_end;
  }
  return 0;
}

/* Reads block blk's bitmap at BAT entry `entry` into a new buffer, or
 * answers the shared all-ones one. */
static int bitmap_read(vhd_t *vhd, uint32_t blk, uint32_t entry, uint8_t **out,
                       struct vhd_err *err) {
  uint8_t *b = malloc(vhd->bitmap_size);
  if (!b)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory for the bitmap of block %u", vhd->path,
                       blk);
  uint64_t off = (uint64_t)entry * 512;
  int r = vhd_io_pread(vhd->fd, b, vhd->bitmap_size, off);
  if (r < 0) {
    free(b);
    return vhd_set_err(err, r, "%s: reading the sector bitmap of block %u at offset %llu: %s",
                       vhd->path, blk, (unsigned long long)off, strerror(-r));
  }
  if (vhd->bitmap_ones && memcmp(b, vhd->bitmap_ones, vhd->bitmap_size) == 0) {
    free(b);
    b = vhd->bitmap_ones;
  }
  *out = b;
  return 0;
}

size_t vhd_bitmap_ones_len(const vhd_t *vhd) {
  return ROUND_UP((size_t)vhd->bitmap_size, (size_t)sysconf(_SC_PAGESIZE));
}

int vhd_bitmap_own(vhd_t *vhd, uint32_t blk, uint8_t **bm, struct vhd_err *err) {
  if (*bm != vhd->bitmap_ones)
    return 0;
  uint8_t *b = malloc(vhd->bitmap_size);
  if (!b)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory for the bitmap of block %u", vhd->path,
                       blk);
  memcpy(b, *bm, vhd->bitmap_size);
  vhd->bitmaps[blk] = b;
  *bm = b;
  return 0;
}

int vhd_bitmap_get(vhd_t *vhd, uint32_t blk, uint8_t **bm, struct vhd_err *err) {
  if (!vhd->bitmaps[blk]) {
    int r = bitmap_read(vhd, blk, vhd->bat[blk], &vhd->bitmaps[blk], err);
    if (r < 0)
      return r;
  }
  *bm = vhd->bitmaps[blk];
  return 0;
}

/* Bitmaps of the blocks after a sequentially loaded one that the kernel is
 * asked to read ahead: enough that a 1 MiB sequential writer or reader
 * finds each next bitmap cached (a cold bitmap read took about 5 ms on a
 * busy virtual disk, ten 1 MiB writes' worth), few enough to be cheap
 * when the pattern stops. */
#define VHD_BITMAP_READAHEAD 8

/* Collects the file offsets of the bitmaps to read ahead of block blk, if
 * the block before it is loaded (a sequential pattern), and moves the
 * readahead mark (lock held). */
static size_t bitmap_readahead_plan(vhd_t *vhd, uint32_t blk, uint64_t *offs) {
  if (blk == 0 || !vhd->bitmaps[blk - 1])
    return 0;
  uint32_t from = MAX(blk + 1, vhd->bitmap_ra_end);
  uint32_t to = (uint32_t)MIN((uint64_t)blk + 1 + VHD_BITMAP_READAHEAD, vhd->max_entries);
  size_t n = 0;
  for (uint32_t b = from; b < to; b++)
    if (vhd->bat[b] != VHD_BAT_UNUSED && !vhd->bitmaps[b])
      offs[n++] = (uint64_t)vhd->bat[b] * 512;
  if (to > vhd->bitmap_ra_end)
    vhd->bitmap_ra_end = to;
  return n;
}

int vhd_bitmap_load(vhd_t *vhd, uint32_t blk, uint8_t **bm, struct vhd_err *err) {
  while (!vhd->bitmaps[blk]) {
    uint32_t entry = vhd->bat[blk];
    if (entry == VHD_BAT_UNUSED)
      return 1;
    uint64_t ra[VHD_BITMAP_READAHEAD];
    size_t n_ra = bitmap_readahead_plan(vhd, blk, ra);
    /* Pinned, the space cannot go to another block while it is read: a
     * block freed meanwhile has its space retired, not reused. */
    vhd_block_pin(vhd, blk);
    pthread_mutex_unlock(&vhd->lock);
    for (size_t i = 0; i < n_ra; i++)
      (void)posix_fadvise(vhd->fd, (off_t)ra[i], vhd->bitmap_size, POSIX_FADV_WILLNEED);
    uint8_t *b = NULL;
    int r = bitmap_read(vhd, blk, entry, &b, err);
    pthread_mutex_lock(&vhd->lock);
    vhd_block_unpin(vhd, blk);
    if (r < 0)
      return r;
    /* Another thread may have loaded it (and set bits since), or the block
     * may have been freed or reallocated: what was read is then stale. */
    if (vhd->bat[blk] == entry && !vhd->bitmaps[blk])
      vhd->bitmaps[blk] = b;
    else
      vhd_bitmap_free(vhd, b);
  }
  *bm = vhd->bitmaps[blk];
  return 0;
}

void vhd_block_mark_dirty(vhd_t *vhd, uint32_t blk) {
  if (!vhd->block_dirty[blk]) {
    vhd->block_dirty[blk] = 1;
    vhd->dirty_blocks[vhd->n_dirty_blocks++] = blk;
  }
}

void vhd_bat_mark_dirty(vhd_t *vhd, uint32_t blk) {
  uint32_t sec = blk / 128;
  if (!vhd->bat_sector_dirty[sec]) {
    vhd->bat_sector_dirty[sec] = 1;
    vhd->dirty_bat_sectors[vhd->n_dirty_bat_sectors++] = sec;
  }
}

static int push_offset(uint64_t **arr, size_t *n, size_t *cap, uint64_t off) {
  if (*n == *cap) {
    size_t nc = *cap ? *cap * 2 : 64;
    uint64_t *na = realloc(*arr, nc * sizeof *na);
    if (!na)
      return -ENOMEM;
    *arr = na;
    *cap = nc;
  }
  (*arr)[(*n)++] = off;
  return 0;
}

int vhd_block_free_space(vhd_t *vhd, uint64_t entry) {
  return push_offset(&vhd->free_pending, &vhd->n_free_pending, &vhd->cap_free_pending, entry);
}

int vhd_block_release_space(vhd_t *vhd, uint32_t blk, uint64_t entry) {
  if (atomic_load(&vhd->pins[blk]) == 0) {
    int r = vhd_block_free_space(vhd, entry);
    return r < 0 ? r : 0;
  }
  if (vhd->n_retired == vhd->cap_retired) {
    size_t nc = vhd->cap_retired ? vhd->cap_retired * 2 : 16;
    struct vhd_retired *na = realloc(vhd->retired, nc * sizeof *na);
    if (!na)
      return -ENOMEM;
    vhd->retired = na;
    vhd->cap_retired = nc;
  }
  /* A pinned write may land after the punch: zero the space on reuse. */
  vhd->retired[vhd->n_retired++] =
      (struct vhd_retired){blk, entry | VHD_FREE_NEEDS_ZEROING};
  return 1;
}

void vhd_retired_collect(vhd_t *vhd) {
  size_t k = 0;
  for (size_t i = 0; i < vhd->n_retired; i++) {
    const struct vhd_retired *e = &vhd->retired[i];
    /* Pins taken since the free are for the block's new space, if any:
     * waiting for them too is merely cautious. */
    if (atomic_load(&vhd->pins[e->blk]) != 0 || vhd_block_free_space(vhd, e->entry) < 0)
      vhd->retired[k++] = *e;
  }
  vhd->n_retired = k;
}

/* Makes room for new blocks from off on (lock held): writes the footer
 * further on, durably, before any block may overwrite the old one (see
 * the write order).  That write (O_DSYNC: it waits for the disk, but for
 * nothing else of the file) runs without the lock, which reads need for
 * their bitmap snapshots; meanwhile footer_moving keeps other allocations
 * of new space waiting (allocations from freed space, writes into
 * allocated blocks and flushes go on), and the old footer stays where it
 * is.  Returns with the lock held; the caller looks at everything again. */
static int footer_move(vhd_t *vhd, uint64_t off, uint64_t span, uint64_t limit, uint32_t blk,
                       struct vhd_err *err) {
  if (vhd->footer_moving) {
    pthread_cond_wait(&vhd->footer_moved, &vhd->lock);
    return 0;
  }
  uint64_t grown = off > vhd->alloc_floor ? off - vhd->alloc_floor : 0;
  uint64_t window = MIN(VHD_WINDOW_MAX_BYTES, MAX(VHD_WINDOW_BYTES, grown));
  /* Blocks follow one another a stride apart (more than their span when
   * their data is aligned); the footer goes right after the last one. */
  uint64_t stride = vhd_block_place(vhd, off + span) - off;
  uint64_t blocks = MAX(1, window / stride);
  if (off + (blocks - 1) * stride + span > limit)
    blocks = (limit - off - span) / stride + 1;
  uint64_t new_footer = off + (blocks - 1) * stride + span;
  vhd->footer_moving = true;
  vhd_io_dsync_open(vhd);
  pthread_mutex_unlock(&vhd->lock);
  int r = vhd_io_pwrite_durable(vhd, vhd->footer_raw, VHD_FOOTER_SIZE, new_footer);
  pthread_mutex_lock(&vhd->lock);
  vhd->footer_moving = false;
  pthread_cond_broadcast(&vhd->footer_moved);
  if (r < 0)
    return vhd_set_err(err, r, "%s: moving the footer to offset %llu for block %u: %s",
                       vhd->path, (unsigned long long)new_footer, blk, strerror(-r));
  uint64_t old_footer = vhd->footer_offset;
  vhd->footer_offset = new_footer;
  /* The old trailing footer (or what stood there, the copy at 0 being
   * used) is nobody's now, and it may lie in the data area of the block
   * that crossed it: open's tail reclaim starts new blocks where the last
   * structure ends, off the grid the footer stands on.  A sector of that
   * block never written must read as zeros on disk, to readers that ignore
   * bitmaps too, so it goes now; the flush that makes the block's BAT
   * entry durable syncs the data first, these zeros with it. */
  static const uint8_t zeros[VHD_FOOTER_SIZE];
  /* Never into the new footer (an old one not on a sector boundary, a
   * window of one block ending in its sector). */
  if ((r = vhd_io_pwrite(vhd, zeros, (size_t)MIN((uint64_t)sizeof zeros, new_footer - old_footer),
                         old_footer)) < 0)
    return vhd_set_err(err, r, "%s: zeroing the old footer at offset %llu: %s", vhd->path,
                       (unsigned long long)old_footer, strerror(-r));
  return 0;
}

/* Block data placed 512 bytes past a page boundary (QEMU's layout: the
 * data right after a one-sector bitmap) makes every 4 KiB guest write
 * cover two partial pages, which the kernel must read before it can take
 * the write when they are not cached.  So a block in new space goes where
 * its data starts on a 4 KiB boundary of the file, as other writers
 * (Hyper-V) align theirs.  A block's span (bitmap and data) is not a
 * multiple of 4 KiB unless its bitmap is, so each block skips the rest of
 * its bitmap's page: 3584 bytes for bitmaps of one sector, 0.2% of a
 * 2 MiB block (the default, and what nearly every writer uses), 0.7% of
 * 512 KiB, but 6% of 64 KiB and 78% of 4 KiB.  So blocks under 512 KiB go
 * back to back where they always went: whoever picks small blocks picks
 * small files.  Readers follow the BAT, and nothing references the bytes
 * skipped. */
uint64_t vhd_block_place(const vhd_t *vhd, uint64_t off) {
  if (vhd->block_size % VHD_DATA_ALIGN != 0 || vhd->block_size < VHD_ALIGN_MIN_BLOCK)
    return off;
  return ROUND_UP(off + vhd->bitmap_size, VHD_DATA_ALIGN) - vhd->bitmap_size;
}

/* Whether the bytes at q are a copy of parent locator i's data (what a
 * relink cut short before its header switch, or run again, leaves): 1
 * with *len its length, 0, or -errno. */
static int locator_copy_at(vhd_t *vhd, int i, uint64_t q, uint64_t *len) {
  const struct vhd_locator *l = &vhd->header.locators[i];
  if (l->code == VHD_PLAT_NONE || l->data_length == 0 || l->data_offset == q ||
      l->data_length > 65536)
    return 0;
  size_t n = l->data_length;
  CLEANUP_FREE uint8_t *live = malloc(n), *copy = malloc(n);
  if (!live || !copy)
    return -ENOMEM;
  int r = vhd_io_pread(vhd->fd, live, n, l->data_offset);
  if (r == 0)
    r = vhd_io_pread(vhd->fd, copy, n, q);
  if (r < 0)
    return r == -ENODATA ? 0 : r; /* past the end of the file: no copy */
  *len = n;
  return memcmp(live, copy, n) == 0;
}

/* Whether the sector at q starts a dynamic header of this image that is
 * not the live one: what a header rewrite journals past the end of the
 * file (header.c), left by a crash before the rewrite cut it off.  Its
 * table, block size and length are the live header's, which a rewrite
 * never changes. */
static int header_journal_at(vhd_t *vhd, uint64_t q) {
  if (q == vhd->header_offset)
    return 0;
  uint8_t h[VHD_HEADER_SIZE];
  int r = vhd_io_pread(vhd->fd, h, sizeof h, q);
  if (r < 0)
    return r == -ENODATA ? 0 : r;
  return vhd_header_check(h, vhd->path, q, NULL) == 0 &&
         be64_load(h + 16) == vhd->header.table_offset &&
         be32_load(h + 28) == vhd->header.max_table_entries &&
         be32_load(h + 32) == vhd->header.block_size;
}

int vhd_stale_copy_len(vhd_t *vhd, uint64_t off, uint64_t *len) {
  if (off % 512 == 0) {
    uint8_t sec[VHD_FOOTER_SIZE];
    int r = vhd_io_pread(vhd->fd, sec, sizeof sec, off);
    if (r < 0 && r != -ENODATA)
      return r;
    /* The footer copy a journal follows counts as blank where blank bytes
     * are looked for, but here it comes before bytes that are not. */
    if (r == 0 && vhd_footer_of_image(sec, vhd->footer_raw)) {
      *len = VHD_FOOTER_SIZE;
      return 1;
    }
    if (r == 0 && memcmp(sec, VHD_HEADER_COOKIE, 8) == 0 &&
        (r = header_journal_at(vhd, off)) != 0) {
      *len = VHD_HEADER_SIZE;
      return r;
    }
  }
  if (vhd->type != VHD_TYPE_DIFFERENCING)
    return 0;
  for (int i = 0; i < 8; i++) {
    int r = locator_copy_at(vhd, i, off, len);
    if (r != 0)
      return r;
  }
  return 0;
}

int vhd_range_holds_nothing(vhd_t *vhd, uint64_t a, uint64_t b) {
  uint64_t span = (uint64_t)vhd->bitmap_size + vhd->block_size;
  uint8_t *bm = NULL;
  int r;
  /* A block whose bitmap marks nothing reads as one never allocated, and an
   * unreferenced one is read by no one: its data bytes are unreachable
   * under any reading of the format (readers that ignore bitmaps follow
   * the BAT too).  Only such blocks one after another as allocation lays
   * them from a, up to bytes that are blank to b, are taken: not any bytes
   * behind a zero sector.  Copies of the parent locators' data are
   * nothing either: the header points at the live ones; nor is a header
   * journal (vhd_stale_copy_len). */
  bool orphans = false;
  for (uint64_t q = a;;) {
    if ((r = vhd_io_range_is_blank(vhd->fd, q, b - q, vhd->footer_raw)) != 0) {
      /* Blocks marking nothing count only where they end as a window a
       * footer move left does: in a hole at least a block long (the
       * engine's signature, which no other writer's bytes have).  A zero
       * sector and the bytes after it are otherwise someone's. */
      if (r == 1 && orphans) {
        /* Blocks handed out after them whose bitmap and data are still
         * zeros (allocated, never written) are such blocks too: the hole
         * is looked for past them, on the allocation grid. */
        uint64_t t = q;
        for (uint64_t o = vhd_block_place(vhd, t);
             o + span <= b && vhd_io_allocated_bytes(vhd->fd, t, o + span - t) > 0;
             o = vhd_block_place(vhd, t))
          t = o + span;
        if (b - t < span || vhd_io_allocated_bytes(vhd->fd, t, b - t) > 8192)
          r = 0;
      }
      break;
    }
    uint64_t at, len = 0;
    if ((r = vhd_io_first_nonzero(vhd->fd, q, b - q, &at)) <= 0)
      break; /* 0 cannot be: not blank */
    /* A copy starts at its first byte that is not zero, or at the
     * sector that holds it (locator data need not start on a sector). */
    uint64_t starts[2] = {MAX(q, ROUND_DOWN(at, 512)), at};
    r = 0;
    for (int s = 0; r == 0 && s < 2 && (s == 0 || starts[1] != starts[0]); s++)
      if ((r = vhd_stale_copy_len(vhd, starts[s], &len)) == 1)
        at = starts[s];
    if (r < 0)
      break;
    if (r == 1 && at + len <= b &&
        (at == q || (r = vhd_io_range_is_blank(vhd->fd, q, at - q, vhd->footer_raw)) == 1)) {
      q = at + len;
      continue;
    }
    if (r < 0)
      break;
    r = 0;
    uint64_t o = vhd_block_place(vhd, q);
    if (o + span > b ||
        (o > q && (r = vhd_io_range_is_blank(vhd->fd, q, o - q, vhd->footer_raw)) != 1))
      break;
    if (!bm && !(bm = malloc(vhd->bitmap_size))) {
      r = -ENOMEM;
      break;
    }
    if ((r = vhd_io_pread(vhd->fd, bm, vhd->bitmap_size, o)) < 0)
      break;
    uint32_t k = 0;
    while (k < vhd->bitmap_size && bm[k] == 0)
      k++;
    if (k < vhd->bitmap_size)
      break; /* r == 0 */
    orphans = true;
    q = o + span;
  }
  free(bm);
  return r;
}

/* One try at allocating block blk: 0, a negative errno, or 1 after the
 * lock was dropped for a footer move (look at everything again: another
 * thread may even have allocated the block from freed space). */
static int allocate_once(vhd_t *vhd, uint32_t blk, struct vhd_err *err) {
  uint64_t span = (uint64_t)vhd->bitmap_size + vhd->block_size;
  if (vhd->bat[blk] != VHD_BAT_UNUSED)
    return 0;
  while (vhd->n_free_ready > 0) {
    uint64_t entry = vhd->free_ready[--vhd->n_free_ready];
    uint64_t off = entry & ~(uint64_t)VHD_FREE_NEEDS_ZEROING;
    /* Pages of this space may still be in flight to a client, by
     * reference (vhd_read_extent): only a punch, which takes them out of
     * the file and leaves them as they are, makes it safe to write the
     * new block's data there.  Where punching fails, or leaves pages in
     * the file (data not on the file system's blocks: only whole blocks
     * are punched, io.c), the space stays unused, rather than rewritten
     * under those pages. */
    if ((entry & VHD_FREE_NEEDS_ZEROING) && atomic_load(&vhd->extents_shared)) {
      if (vhd_io_punch(vhd, off + vhd->bitmap_size, vhd->block_size) != 0)
        continue;
      entry &= ~(uint64_t)VHD_FREE_NEEDS_ZEROING; /* punched: reads as zeros now */
    }
    uint8_t *bm = calloc(1, vhd->bitmap_size);
    if (!bm) {
      vhd->n_free_ready++;
      return vhd_set_err(err, -ENOMEM, "%s: out of memory allocating block %u", vhd->path, blk);
    }
    /* Sectors never written must read as zeros to readers that ignore the
     * bitmap too: a block whose punch failed still holds its old data. */
    int r = 0;
    if (entry & VHD_FREE_NEEDS_ZEROING)
      r = vhd_io_zero(vhd, off + vhd->bitmap_size, vhd->block_size);
    if (r == 0)
      r = vhd_io_pwrite(vhd, bm, vhd->bitmap_size, off);
    if (r < 0) {
      vhd->n_free_ready++;
      free(bm);
      return vhd_set_err(err, r, "%s: allocating block %u at offset %llu: %s", vhd->path, blk,
                         (unsigned long long)off, strerror(-r));
    }
    if ((r = vhd_batmap_fill_new(vhd, blk, off, bm, err)) < 0) {
      vhd->n_free_ready++;
      free(bm);
      return r;
    }
    vhd_bat_set(vhd, blk, (uint32_t)(off / 512));
    vhd_bitmap_free(vhd, vhd->bitmaps[blk]);
    vhd->bitmaps[blk] = bm;
    vhd->allocated_blocks++;
    vhd_bat_mark_dirty(vhd, blk);
    return 0;
  }
  /* The bytes skipped for alignment are never written: they are part of
   * the window the last footer move made (a hole, read as zeros), or the
   * old trailing footer's sector (zeroed by the move, a copy of the footer
   * if a crash came first) and the zeros after it; both are what check
   * --repair knows as blank, and no block's data was ever there (new
   * space lies past every block the file held at open). */
  uint64_t off = vhd_block_place(vhd, vhd->next_block_offset);
  uint64_t limit = (uint64_t)(VHD_BAT_UNUSED - 1) * 512; /* BAT entries are 32-bit sectors */
  if (off + span > limit)
    return vhd_set_err(err, -ENOSPC, "%s: block %u: the file would pass the 2 TiB VHD limit",
                       vhd->path, blk);
  /* The trailing footer counts: the footer move below never places it
   * past the ceiling either, so the file never grows beyond it. */
  if (vhd->max_file_size) {
    uint64_t cap = vhd->max_file_size >= VHD_FOOTER_SIZE ? vhd->max_file_size - VHD_FOOTER_SIZE : 0;
    if (off + span > cap)
      return vhd_set_err(err, -ENOSPC,
                         "%s: block %u: the file would pass its maximum size of %llu bytes",
                         vhd->path, blk, (unsigned long long)vhd->max_file_size);
    limit = MIN(limit, cap);
  }
  if (off + span > vhd->footer_offset) {
    int r = footer_move(vhd, off, span, limit, blk, err);
    return r < 0 ? r : 1;
  }
  int r;
  uint8_t *bm = calloc(1, vhd->bitmap_size);
  if (!bm)
    return vhd_set_err(err, -ENOMEM, "%s: out of memory allocating block %u", vhd->path, blk);
  /* The new block's data area is a hole until written.  Writes into holes
   * cost the file system more than writes into allocated space (ext4:
   * delayed allocation, its extent cache; 4k random writes into a fresh
   * differencing child at QD16 took 2.9-3.7 s of server CPU per GiB into
   * holes, 2.3-2.7 s into reserved space, bench/RESULTS.md), and the
   * blocks it places at write-back in the order pages are written need not
   * lie together.
   * Reserving the whole block now costs one call per block and gives the
   * block contiguous space; it still reads as zeros, so a crash at any
   * point leaves what a hole would.  Space freed earlier (above) was
   * punched or zeroed: not reserved.  A refusal leaves the hole. */
  if (!vhd->sparse_blocks) {
    /* The block's sectors and its bitmap's: a full file system says so
     * here, before anything is written, and the write fails with ENOSPC
     * alone.  Found by the bitmap's write instead, the failure would
     * latch the image (every later write and flush failing) for want of
     * space that trimming or deleting may give back. */
    r = vhd_io_reserve(vhd, off, span);
    if (r == -ENOSPC || r == -EDQUOT) {
      free(bm);
      return vhd_set_err(err, r, "%s: no space on the file system for block %u (%llu bytes)",
                         vhd->path, blk, (unsigned long long)span);
    }
  }
  r = vhd_io_pwrite(vhd, bm, vhd->bitmap_size, off);
  if (r < 0) {
    free(bm);
    return vhd_set_err(err, r, "%s: allocating block %u at offset %llu: %s", vhd->path, blk,
                       (unsigned long long)off, strerror(-r));
  }
  if ((r = vhd_batmap_fill_new(vhd, blk, off, bm, err)) < 0) {
    free(bm);
    return r;
  }
  vhd->next_block_offset = off + span;
  vhd_bat_set(vhd, blk, (uint32_t)(off / 512));
  vhd_bitmap_free(vhd, vhd->bitmaps[blk]);
  vhd->bitmaps[blk] = bm;
  vhd->allocated_blocks++;
  vhd_bat_mark_dirty(vhd, blk);
  return 0;
}

/* See the write order in vhd-internal.h.  May drop the lock while the
 * footer moves; returns with it held and, on success, block blk allocated
 * (by this call or another thread's).  Each further try follows a footer
 * move that made room. */
int vhd_block_allocate(vhd_t *vhd, uint32_t blk, struct vhd_err *err) {
  int r;
  while ((r = allocate_once(vhd, blk, err)) > 0)
    ;
  return r;
}

static void drop_offsets_past(uint64_t *v, size_t *n, uint64_t end, uint64_t span) {
  size_t k = 0;
  for (size_t i = 0; i < *n; i++)
    if ((v[i] & ~(uint64_t)VHD_FREE_NEEDS_ZEROING) + span <= end)
      v[k++] = v[i];
  *n = k;
}

int vhd_window_release(vhd_t *vhd, struct vhd_err *err) {
  if (vhd->readonly || vhd->type == VHD_TYPE_FIXED || !vhd->bat)
    return 0;
  /* The caller flushed: blocks freed at the end of the file are
   * unreferenced on disk now.  The file may end after the last block in
   * use, never below cut_floor: what lies before it (structures, gaps,
   * slack) was there at open and is not the engine's to cut. */
  uint64_t end = vhd->cut_floor;
  uint64_t span = (uint64_t)vhd->bitmap_size + vhd->block_size;
  for (uint32_t i = 0; i < vhd->max_entries; i++)
    if (vhd->bat[i] != VHD_BAT_UNUSED)
      end = MAX(end, (uint64_t)vhd->bat[i] * 512 + span);
  if (vhd->footer_offset <= end)
    return 0;
  /* A full file system may have no space for the footer's new place (a
   * hole): the space is then kept, as a failure to give it back is no
   * failure of the image's. */
  int r = vhd_io_footer_cut(vhd, end, true);
  if (r > 0)
    return 0;
  if (r < 0)
    return vhd_set_err(err, r, "%s: giving back unused space before the footer: %s", vhd->path,
                       strerror(-r));
  /* The handle may go on writing: no block may be handed out past the
   * new footer (freed space that was cut, the old window) until a footer
   * move makes room again. */
  pthread_mutex_lock(&vhd->lock);
  vhd->footer_offset = end;
  vhd->next_block_offset = MIN(vhd->next_block_offset, end);
  /* Blocks that ended the file at open may have gone with the cut: what
   * lies past end now is nobody's. */
  vhd->alloc_floor = MIN(vhd->alloc_floor, end);
  drop_offsets_past(vhd->free_pending, &vhd->n_free_pending, end, span);
  drop_offsets_past(vhd->free_ready, &vhd->n_free_ready, end, span);
  size_t k = 0;
  for (size_t i = 0; i < vhd->n_retired; i++)
    if ((vhd->retired[i].entry & ~(uint64_t)VHD_FREE_NEEDS_ZEROING) + span <= end)
      vhd->retired[k++] = vhd->retired[i];
  vhd->n_retired = k;
  pthread_mutex_unlock(&vhd->lock);
  return 0;
}

uint32_t vhd_bitmap_run(const uint8_t *bm, uint32_t s, uint32_t end, bool *value) {
  bool v = vhd_bit_get(bm, s);
  uint8_t full = v ? 0xFF : 0x00;
  uint64_t full64 = v ? UINT64_MAX : 0;
  uint32_t i = s;
  while (i < end) {
    if ((i & 63) == 0 && i + 64 <= end) { /* a 2 MiB block has 4096 sectors */
      uint64_t w;
      memcpy(&w, bm + (i >> 3), 8);
      if (w == full64) {
        i += 64;
        continue;
      }
    }
    /* The bits of this byte from sector i on (the first sector is the
     * byte's high bit) that differ from v: the run ends at the first. */
    uint8_t diff = (uint8_t)((bm[i >> 3] ^ full) & (0xFFu >> (i & 7)));
    if (diff) {
      uint32_t first = (i & ~7u) + (uint32_t)__builtin_clz(diff) - 24;
      i = first;
      break;
    }
    i = (i | 7) + 1;
  }
  *value = v;
  return MIN(i, end) - s;
}
