/* test-vhd-tail-reuse.c: blocks placed in blank space before the trailing
 * footer hold zeros on disk wherever their bitmap says absent, the old
 * trailing footer they cover included.
 *
 * Open for writing takes a tail that holds nothing (zeros, old footers)
 * back as room for new blocks, and starts them where the last structure
 * ends: off the grid on which the footer stands when another writer left
 * blank space there, or a crash left freed blocks.  The first new block
 * crossing the footer then covers the old footer's sector, which may fall
 * in its data area; readers that ignore bitmaps (QEMU) read that sector of
 * a block as its data, so it must read zeros there as in any sector never
 * written.
 *
 * Images: made by the engine (blocks of 4 KiB, 64 KiB and 2 MiB, the last
 * with 4 KiB-aligned data) and, where qemu-img is installed, by QEMU (2 MiB
 * blocks, data right after a one-sector bitmap).  Each gets blank space
 * before its trailing footer, of sizes that put the old footer at every
 * kind of place in the next block (its bitmap, its first data sector, the
 * middle, its last sector, past it); or the blocks at its end trimmed,
 * flushed and the handle dropped without a close (a power cut).  Then it
 * is opened for writing, 4 KiB are written into a block never allocated,
 * and it is closed; every absent sector of every block must hold zeros on
 * disk, vhd_check must find nothing wrong and the content must read back. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd.h"

#define SIZE (16u << 20)
#define NEW_BLOCK 5

static unsigned images, footers_in_data;

/* Every block's absent sectors, read straight from the file, are zeros;
 * returns whether the old footer's sector lay in a block's data area. */
static bool check_absent_zero(const char *path, uint64_t old_footer, const char *what) {
  uint64_t fsz = t_file_size(path);
  uint8_t foot[512], h[1024];
  t_pread_file(path, foot, sizeof foot, fsz - 512);
  t_pread_file(path, h, sizeof h, t_be64(foot + 16));
  uint64_t bat = t_be64(h + 16);
  uint32_t n = t_be32(h + 28), bs = t_be32(h + 32);
  uint32_t bitmap = ((bs / 512 + 7) / 8 + 511) / 512 * 512;
  CLEANUP_FREE uint8_t *e = t_xmalloc((size_t)n * 4);
  CLEANUP_FREE uint8_t *blk = t_xmalloc(bitmap + bs);
  t_pread_file(path, e, (size_t)n * 4, bat);
  bool covered = false;
  for (uint32_t i = 0; i < n; i++) {
    uint32_t s = t_be32(e + 4 * i);
    if (s == 0xFFFFFFFFu)
      continue;
    uint64_t off = (uint64_t)s * 512;
    t_pread_file(path, blk, bitmap + bs, off);
    if (old_footer >= off + bitmap && old_footer < off + bitmap + bs)
      covered = true;
    for (uint32_t k = 0; k < bs / 512; k++) {
      if (blk[k / 8] & (0x80u >> (k % 8)))
        continue;
      const uint8_t *d = blk + bitmap + (uint64_t)k * 512;
      for (int b = 0; b < 512; b++)
        T_ASSERT(d[b] == 0,
                 "%s: block %u at %" PRIu64 ": sector %u is absent by its bitmap but holds "
                 "0x%02x at byte %d on disk (file offset %" PRIu64 "; the old trailing footer "
                 "was at %" PRIu64 ")",
                 what, i, off, k, d[b], b, off + bitmap + (uint64_t)k * 512 + (uint64_t)b,
                 old_footer);
    }
  }
  return covered;
}

/* gap zero bytes put before the trailing footer; returns the footer's new
 * offset. */
static uint64_t insert_blank(const char *path, uint64_t gap) {
  uint64_t fsz = t_file_size(path);
  uint8_t foot[512];
  t_pread_file(path, foot, sizeof foot, fsz - 512);
  t_truncate_file(path, fsz - 512);
  t_truncate_file(path, fsz - 512 + gap);
  t_pwrite_file(path, foot, sizeof foot, fsz - 512 + gap);
  return fsz - 512 + gap;
}

/* Writes into a block never allocated, closes, and checks. */
static void write_new_and_check(const char *path, uint64_t old_footer, uint8_t *model,
                                const char *what) {
  struct vhd_err err = {{0}};
  vhd_t *v = t_open(path, false);
  uint32_t bs = 0;
  struct vhd_info info;
  vhd_get_info(v, &info);
  bs = info.block_size;
  uint8_t buf[4096];
  t_fill_nonzero(buf, sizeof buf);
  uint64_t at = (uint64_t)NEW_BLOCK * bs + (bs > sizeof buf ? bs / 2 : 0);
  at = at / 512 * 512;
  T_OK(vhd_write(v, buf, at, sizeof buf, 0, &err), &err, t_fmt("%s: vhd_write", what));
  memcpy(model + at, buf, sizeof buf);
  T_OK(vhd_close(v, &err), &err, t_fmt("%s: vhd_close", what));
  int c = t_check(path);
  T_ASSERT(c == 0, "%s: vhd_check says 0x%x", what, c);
  if (check_absent_zero(path, old_footer, what))
    footers_in_data++;
  v = t_open(path, true);
  t_expect_model(v, model, SIZE, what);
  vhd_close(v, NULL);
  images++;
}

/* A dynamic image with data in block 0 (and 1), made by the engine or by
 * qemu-img; the model gets its content. */
static bool make_base(const char *path, uint32_t bs, bool qemu, uint8_t *model) {
  memset(model, 0, SIZE);
  remove(path);
  uint8_t buf[8192];
  t_fill_nonzero(buf, sizeof buf);
  if (qemu) {
    if (system(t_fmt("qemu-img create -q -f vpc -o subformat=dynamic '%s' %u && "
                     "qemu-io -f vpc -c 'write -P 0x5a 0 8192' -c 'write -P 0x5a %u 4096' "
                     "'%s' >/dev/null",
                     path, SIZE, bs, path)) != 0)
      return false;
    struct vhd_err err = {{0}};
    vhd_t *v = t_open(path, true);
    T_ASSERT(vhd_virtual_size(v) >= SIZE, "qemu-img made a %" PRIu64 "-byte image",
             vhd_virtual_size(v));
    T_OK(vhd_read(v, model, 0, SIZE, &err), &err, "reading the qemu-img image");
    vhd_close(v, NULL);
    return true;
  }
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, bs, true, NULL);
  struct vhd_err err = {{0}};
  vhd_t *v = t_open(path, false);
  T_OK(vhd_write(v, buf, 0, sizeof buf, 0, &err), &err, "vhd_write");
  memcpy(model, buf, sizeof buf);
  T_OK(vhd_write(v, buf, bs, 4096, 0, &err), &err, "vhd_write");
  memcpy(model + bs, buf, 4096);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  return true;
}

static void blank_tails(uint32_t bs, bool qemu) {
  CLEANUP_FREE uint8_t *model = t_xmalloc(SIZE);
  CLEANUP_FREE char *path = strdup(t_path("tail.vhd"));
  uint32_t bitmap = ((bs / 512 + 7) / 8 + 511) / 512 * 512;
  /* Where the old footer lands in the next block depends on the gap and
   * on where that block starts (aligned or not): sizes around the
   * bitmap, the data's start, its middle and its end. */
  const uint64_t gaps[] = {512,
                           1024,
                           3584,
                           4096,
                           4608,
                           bitmap + 512,
                           bitmap + bs / 2,
                           bitmap + bs - 512,
                           bitmap + bs,
                           bitmap + bs + 3584,
                           2 * (uint64_t)(bitmap + bs) + 1024};
  for (size_t i = 0; i < sizeof gaps / sizeof gaps[0]; i++) {
    if (!make_base(path, bs, qemu, model)) {
      printf("SKIP qemu-img or qemu-io failed: QEMU-made images not tested\n");
      return;
    }
    uint64_t footer = insert_blank(path, gaps[i]);
    write_new_and_check(path, footer, model,
                        t_fmt("%s image, %u-byte blocks, %" PRIu64 " blank bytes before the footer",
                              qemu ? "qemu-img" : "engine", bs, gaps[i]));
  }
}

/* The last blocks trimmed and flushed, then a power cut: the freed space
 * at the end of the file is blank, the footer after it. */
static void after_trim_crash(uint32_t bs, bool qemu) {
  CLEANUP_FREE uint8_t *model = t_xmalloc(SIZE);
  CLEANUP_FREE char *path = strdup(t_path("trimmed.vhd"));
  if (!make_base(path, bs, qemu, model))
    return;
  struct vhd_err err = {{0}};
  vhd_t *v = t_open(path, false);
  uint8_t buf[4096];
  t_fill_nonzero(buf, sizeof buf);
  for (uint32_t b = 2; b < 4; b++) {
    T_OK(vhd_write(v, buf, (uint64_t)b * bs, sizeof buf, 0, &err), &err, "vhd_write");
    T_OK(vhd_flush(v, &err), &err, "vhd_flush");
  }
  T_OK(vhd_write_zeroes(v, bs, 3 * (uint64_t)bs, VHD_MAY_TRIM, &err), &err, "vhd_write_zeroes");
  memset(model + bs, 0, 3 * (size_t)bs);
  T_OK(vhd_flush(v, &err), &err, "vhd_flush");
  vhd_abandon(v);
  uint64_t footer = t_file_size(path) - 512;
  write_new_and_check(path, footer, model,
                      t_fmt("%s image, %u-byte blocks, its last blocks trimmed before a crash",
                            qemu ? "qemu-img" : "engine", bs));
}

int main(void) {
  t_init("test-vhd-tail-reuse");
  static const uint32_t sizes[] = {4096, 65536, 2u << 20};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    blank_tails(sizes[i], false);
    after_trim_crash(sizes[i], false);
  }
  if (system("command -v qemu-img >/dev/null 2>&1 && command -v qemu-io >/dev/null 2>&1") == 0) {
    blank_tails(2u << 20, true);
    after_trim_crash(2u << 20, true);
  } else {
    printf("SKIP qemu-img or qemu-io not installed: QEMU-made images not tested\n");
  }
  T_ASSERT(footers_in_data > 0, "no case put the old footer inside a block's data area");
  printf("%u images: every absent sector reads zeros on disk; in %u the old trailing footer lay "
         "in a new block's data area\n",
         images, footers_in_data);
  return 0;
}
