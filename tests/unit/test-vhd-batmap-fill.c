/* test-vhd-batmap-fill.c: a block Xen's batmap marks full, allocated by a
 * write into a differencing child, is filled with the parent's data; when
 * the parent cannot be read midway, the space the fill wrote into holds
 * zeros again before the next block takes it.
 *
 * tapdisk reads a block whose batmap bit is set whole, without its sector
 * bitmap, so the engine copies the parent's data into such a block when it
 * allocates it (batmap.c), in chunks of 1 MiB.  A parent read that fails
 * after the first chunk leaves the block unallocated and its space free
 * for the next block, whose sectors never written must read as zeros to
 * readers that ignore bitmaps (QEMU) as well: not as the parent's bytes.
 *
 * The child is made by the engine, then laid out again by hand as blktap
 * keeps it: the batmap's header right after the BAT, its map after that,
 * the parent locators' data after the map.  Blocks of 2 and 16 MiB, so a
 * fill takes several chunks.  Cases: the fill succeeds; the parent is cut short
 * (truncated under the open chain) in the middle of the block to fill,
 * with the block's space taken fresh at the end of the file or from a
 * block freed earlier; each time a write into another block follows, and
 * every absent sector of every block must hold zeros on disk. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd.h"

#define BLOCKS 8
#define FULL_BLOCK 0 /* marked full in the batmap, unallocated */
#define NEXT_BLOCK 3 /* a plain block written after the fill */

static uint32_t bs;   /* the block size of the case */
static uint64_t size; /* BLOCKS blocks */

static void put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++)
    p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static void put64(uint8_t *p, uint64_t v) {
  put32(p, (uint32_t)(v >> 32));
  put32(p + 4, (uint32_t)v);
}

/* Lays the child out again: BAT, batmap header, a one-sector map marking
 * block FULL_BLOCK, the locators' data, the footer.  The child must hold
 * no block yet. */
static void add_batmap(const char *path) {
  uint8_t h[1024], foot[512];
  uint64_t fsz = t_file_size(path);
  t_pread_file(path, foot, sizeof foot, fsz - 512);
  t_pread_file(path, h, sizeof h, 512);
  uint64_t bat = t_be64(h + 16);
  uint32_t n = t_be32(h + 28);
  uint64_t hdr = bat + ((uint64_t)n * 4 + 511) / 512 * 512, map = hdr + 512, at = map + 512;
  struct t_locator locs[8];
  t_read_locators(path, locs);
  uint64_t data_start = fsz - 512;
  for (int i = 0; i < 8; i++)
    if (locs[i].code && locs[i].len)
      data_start = locs[i].off < data_start ? locs[i].off : data_start;
  T_ASSERT(data_start >= hdr, "the child's locator data starts at %" PRIu64 ", before %" PRIu64,
           data_start, hdr);
  uint64_t moved_len = fsz - 512 - data_start;
  CLEANUP_FREE uint8_t *moved = t_xcalloc(1, moved_len + 1);
  t_pread_file(path, moved, moved_len, data_start);
  for (int i = 0; i < 8; i++)
    if (locs[i].code && locs[i].len)
      put64(h + 576 + 24 * i + 16, locs[i].off - data_start + at);
  t_write_header(path, h, 512);
  uint8_t sec[512] = {0}, bits[512] = {0};
  bits[FULL_BLOCK / 8] = (uint8_t)(0x80u >> (FULL_BLOCK % 8));
  uint32_t sum = 0;
  for (int i = 0; i < 512; i++)
    sum += bits[i];
  memcpy(sec, "tdbatmap", 8);
  put64(sec + 8, map);
  put32(sec + 16, 1);
  put32(sec + 20, 0x00010002);
  put32(sec + 24, ~sum);
  t_truncate_file(path, hdr);
  t_pwrite_file(path, sec, sizeof sec, hdr);
  t_pwrite_file(path, bits, sizeof bits, map);
  t_pwrite_file(path, moved, moved_len, at);
  t_pwrite_file(path, foot, sizeof foot, at + moved_len);
}

/* The file offset of block blk's bitmap in path's file, or 0. */
static uint64_t block_offset(const char *path, uint32_t blk) {
  uint8_t h[1024], foot[512], e[4];
  t_pread_file(path, foot, sizeof foot, 0);
  t_pread_file(path, h, sizeof h, t_be64(foot + 16));
  t_pread_file(path, e, sizeof e, t_be64(h + 16) + 4 * blk);
  uint32_t s = t_be32(e);
  return s == 0xFFFFFFFFu ? 0 : (uint64_t)s * 512;
}

/* Every allocated block's absent sectors, read straight from the file,
 * are zeros. */
static void check_absent_zero(const char *path, const char *what) {
  uint32_t bitmap = (bs / 512 / 8 + 511) / 512 * 512;
  CLEANUP_FREE uint8_t *blk = t_xmalloc(bitmap + bs);
  for (uint32_t i = 0; i < size / bs; i++) {
    uint64_t off = block_offset(path, i);
    if (!off)
      continue;
    t_pread_file(path, blk, (size_t)bitmap + bs, off);
    for (uint32_t k = 0; k < bs / 512; k++) {
      if (blk[k / 8] & (0x80u >> (k % 8)))
        continue;
      const uint8_t *d = blk + bitmap + (uint64_t)k * 512;
      for (int b = 0; b < 512; b++)
        T_ASSERT(d[b] == 0,
                 "%s: block %u at file offset %" PRIu64 ": sector %u is absent by its bitmap "
                 "but holds 0x%02x at byte %d on disk",
                 what, i, off, k, d[b], b);
    }
  }
}

/* parent.vhd with random data in blocks 0 and 1 and a child with the batmap;
 * model gets what the chain reads. */
static void make_chain(uint8_t *model) {
  const char *parent = t_path("parent.vhd"), *child = t_path("child.vhd");
  remove(parent);
  remove(child);
  t_create(parent, VHD_TYPE_DYNAMIC, size, bs, true, NULL);
  memset(model, 0, size);
  t_fill_random(model, 2 * (size_t)bs);
  struct vhd_err err = {{0}};
  vhd_t *p = t_open(parent, false);
  T_OK(vhd_write(p, model, 0, 2 * (size_t)bs, 0, &err), &err, "writing the parent");
  T_OK(vhd_close(p, &err), &err, "closing the parent");
  t_create(child, VHD_TYPE_DIFFERENCING, 0, 0, false, parent);
  add_batmap(child);
}

/* The fill succeeds: the block holds the parent's data around the write,
 * and its bitmap says every sector is present. */
static void fill_ok(uint8_t *model) {
  const char *child = t_path("child.vhd");
  make_chain(model);
  struct vhd_err err = {{0}};
  vhd_t *v = t_open(child, false);
  uint8_t buf[4096];
  t_fill_nonzero(buf, sizeof buf);
  uint64_t at = (uint64_t)FULL_BLOCK * bs + (1u << 20) + 512;
  T_OK(vhd_write(v, buf, at, sizeof buf, 0, &err), &err, "writing into the marked block");
  memcpy(model + at, buf, sizeof buf);
  T_OK(vhd_close(v, &err), &err, "closing the child");
  uint64_t off = block_offset(child, FULL_BLOCK);
  T_ASSERT(off != 0, "the marked block was not allocated");
  uint32_t bitmap = (bs / 512 / 8 + 511) / 512 * 512;
  CLEANUP_FREE uint8_t *blk = t_xmalloc((size_t)bitmap + bs);
  t_pread_file(child, blk, (size_t)bitmap + bs, off);
  for (uint32_t i = 0; i < bs / 512 / 8; i++)
    T_ASSERT(blk[i] == 0xff, "the marked block's bitmap byte %u is 0x%02x, not full", i, blk[i]);
  T_ASSERT(memcmp(blk + bitmap, model + (uint64_t)FULL_BLOCK * bs, bs) == 0,
           "the marked block does not hold the parent's data around the write");
  v = t_open(child, true);
  t_expect_model(v, model, size, "after the fill");
  vhd_close(v, NULL);
}

/* The parent is cut in the middle of the block to fill, after the child is
 * open.  freed: the space comes from a block trimmed and flushed before
 * (block 6, with block 7 after it so the file keeps it). */
static void fill_fails(uint8_t *model, bool freed) {
  const char *what = freed ? "space freed earlier" : "fresh space";
  const char *parent = t_path("parent.vhd"), *child = t_path("child.vhd");
  const char *saved = t_path("parent.saved");
  make_chain(model);
  struct vhd_err err = {{0}};
  vhd_t *v = t_open(child, false);
  uint8_t buf[4096];
  t_fill_nonzero(buf, sizeof buf);
  if (freed) {
    for (uint32_t b = 6; b <= 7; b++) {
      T_OK(vhd_write(v, buf, (uint64_t)b * bs, sizeof buf, 0, &err), &err, "writing block");
      memcpy(model + (uint64_t)b * bs, buf, sizeof buf);
    }
    T_OK(vhd_flush(v, &err), &err, "flush");
    T_OK(vhd_trim(v, 6ull * bs, bs, 0, &err), &err, "trimming block 6");
    memset(model + 6ull * bs, 0, bs);
    T_OK(vhd_flush(v, &err), &err, "flush after the trim");
  }
  t_copy_file(parent, saved);
  uint64_t pdata = block_offset(parent, FULL_BLOCK) + (bs / 512 / 8 + 511) / 512 * 512;
  t_truncate_file(parent, pdata + bs / 2 + (bs / 4));
  uint64_t at = (uint64_t)FULL_BLOCK * bs + 8192;
  int r = vhd_write(v, buf, at, sizeof buf, 0, &err);
  T_ASSERT(r < 0, "%s: a write into the marked block succeeded with its parent cut short", what);
  T_ASSERT(strstr(err.msg, "parent.vhd") != NULL,
           "%s: the error does not name the parent: %s", what, err.msg);
  uint8_t one[512];
  t_fill_nonzero(one, sizeof one);
  uint64_t next = (uint64_t)NEXT_BLOCK * bs + 4096;
  T_OK(vhd_write(v, one, next, sizeof one, 0, &err), &err,
       t_fmt("%s: writing another block after the failed fill", what));
  memcpy(model + next, one, sizeof one);
  T_OK(vhd_close(v, &err), &err, t_fmt("%s: closing the child", what));
  t_copy_file(saved, parent);
  T_ASSERT(block_offset(child, FULL_BLOCK) == 0, "%s: the marked block was allocated", what);
  check_absent_zero(child, what);
  v = t_open(child, true);
  t_expect_model(v, model, size, what);
  vhd_close(v, NULL);
}

int main(void) {
  t_init("test-vhd-batmap-fill");
  /* 2 MiB: a freed block's space is not on the page grid (a 512-byte
   * bitmap), so it is zeroed when reused anyway; 16 MiB: bitmap and data
   * are whole pages, punched when freed and reused as they are. */
  static const uint32_t sizes[] = {2u << 20, 16u << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    bs = sizes[i];
    size = (uint64_t)BLOCKS * bs;
    CLEANUP_FREE uint8_t *model = t_xmalloc(size);
    fill_ok(model);
    fill_fails(model, false);
    fill_fails(model, true);
  }
  printf("ok: marked blocks filled; a failed fill leaves zeros (fresh and freed space, blocks of "
         "2 and 16 MiB)\n");
  return 0;
}
