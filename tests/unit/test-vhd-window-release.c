/* Giving back the end of the allocation window (vhd_window_release) with
 * the handle kept open: freed blocks that ended the file are cut with it,
 * so a later allocation must not reuse their space (past the new footer)
 * nor the old window's.  White-box: the release is not in vhd.h.
 *
 * Blocks 0-5 written and the image reopened (so 4 and 5 end the file as
 * opened), 4 and 5 trimmed whole and flushed (their space reusable), the
 * window given back: the file ends with a footer right after block 3.  Then block 9 is written and flushed: the file must still
 * end with a valid footer (the write order's rule: every block lies before
 * a durable trailing footer), and after an abandon (a crash after the
 * flush) the image opens from that footer with the model's data.  The
 * window block 9 opens is the smallest, not one that counts from where new
 * space began before the cut.  Reopened after the abandon, the handle
 * takes the window the abandon left as its own: block 10 follows block 9,
 * and a clean close gives the rest back. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd-internal.h"

#define BS (64u * 1024) /* under 512 KiB: blocks back to back, unaligned */
#define NBLK 16u
#define SIZE ((uint64_t)NBLK * BS)

static uint8_t model[SIZE];

static void write_model(vhd_t *v, uint64_t off, size_t len) {
  static uint8_t buf[BS];
  struct vhd_err err = {{0}};
  t_fill_nonzero(buf, len);
  T_OK(vhd_write(v, buf, off, len, 0, &err), &err, "vhd_write");
  memcpy(model + off, buf, len);
}

/* A block's bitmap (one sector for blocks this small) and data. */
static uint64_t v_span(uint64_t bs) { return 512 + bs; }

static void expect_trailing_footer(const char *path, const char *when) {
  uint64_t size = t_file_size(path);
  uint8_t tail[512];
  t_pread_file(path, tail, sizeof tail, size - sizeof tail);
  T_ASSERT(memcmp(tail, "conectix", 8) == 0,
           "%s: the file (%llu bytes) does not end with a footer", when,
           (unsigned long long)size);
}

int main(void) {
  t_init("test-vhd-window-release");
  CLEANUP_FREE char *path = strdup(t_path("win.vhd"));
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  vhd_t *v = t_open(path, false);
  struct vhd_err err = {{0}};
  for (uint32_t b = 0; b < 6; b++)
    write_model(v, (uint64_t)b * BS, BS);
  /* Reopened, blocks 4 and 5 end the file as it was at open: the cut
   * goes below where new space began then. */
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  v = t_open(path, false);
  uint64_t end3 = (uint64_t)v->bat[3] * 512 + v->bitmap_size + BS;
  T_ASSERT(v->bat[4] * 512ull >= end3 && v->bat[5] * 512ull >= end3,
           "blocks 4 and 5 do not follow block 3 in the file");
  T_OK(vhd_trim(v, 4 * BS, 2 * BS, 0, &err), &err, "vhd_trim of blocks 4 and 5");
  memset(model + 4 * BS, 0, 2 * BS);
  T_OK(vhd_flush(v, &err), &err, "vhd_flush after the trim");
  T_OK(vhd_window_release(v, &err), &err, "vhd_window_release");
  T_ASSERT(t_file_size(path) == end3 + 512, "the released file is %llu bytes, not %llu",
           (unsigned long long)t_file_size(path), (unsigned long long)(end3 + 512));
  expect_trailing_footer(path, "after the release");

  write_model(v, 9 * BS, BS);
  T_OK(vhd_flush(v, &err), &err, "vhd_flush after a new block");
  T_ASSERT((uint64_t)v->bat[9] * 512 >= end3,
           "block 9 was placed at %llu, inside the blocks still in use",
           (unsigned long long)v->bat[9] * 512);
  expect_trailing_footer(path, "after block 9 was written and flushed");
  /* A new window of the smallest size (64 MiB), not one measured from
   * where new space began before the cut. */
  T_ASSERT(t_file_size(path) < end3 + (128u << 20),
           "block 9 made the file %llu bytes, for %llu bytes of blocks",
           (unsigned long long)t_file_size(path), (unsigned long long)end3);
  t_expect_model(v, model, SIZE, "before the abandon");
  vhd_abandon(v);

  v = t_open(path, false);
  struct vhd_info info;
  vhd_get_info(v, &info);
  T_ASSERT(!info.footer_copy_used, "reopened from the footer copy at 0");
  t_expect_model(v, model, SIZE, "reopened after the abandon");
  /* The abandon left the window (nothing any reader sees) before the
   * footer: this handle takes it as its own.  Block 10 goes right after
   * block 9, not past the old window, and the close gives the rest back. */
  uint64_t end9 = (uint64_t)v->bat[9] * 512 + v->bitmap_size + BS;
  T_ASSERT(t_file_size(path) > end9 + (32u << 20),
           "the abandon left no window: %llu bytes, block 9 ends at %llu",
           (unsigned long long)t_file_size(path), (unsigned long long)end9);
  write_model(v, 10 * BS, BS);
  T_OK(vhd_flush(v, &err), &err, "vhd_flush after block 10");
  uint64_t at10 = (uint64_t)v->bat[10] * 512;
  T_ASSERT(at10 == end9,
           "block 10 was placed at %llu, not at %llu right after block 9, in the window the "
           "abandon left",
           (unsigned long long)at10, (unsigned long long)end9);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(t_file_size(path) == at10 + v_span(BS) + 512,
           "the closed file is %llu bytes, block 10 ends at %llu",
           (unsigned long long)t_file_size(path), (unsigned long long)(at10 + v_span(BS)));
  v = t_open(path, true);
  t_expect_model(v, model, SIZE, "reopened after the close");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT((t_check(path) & VHD_CHECK_CORRUPT) == 0, "vhd_check finds the image corrupt");

  /* A tail of written zeros (another writer's slack) is read at open only
   * up to a bound, the largest window a crash can leave (1 GiB): 1 MiB of
   * it is taken as window and given back at close, 1 GiB and 1 MiB is
   * left alone, and the file keeps its size. */
  for (int big = 0; big < 2; big++) {
    uint64_t zeros = big ? (1025ull << 20) : (1ull << 20);
    CLEANUP_FREE char *zp = strdup(t_path(big ? "zeros-big.vhd" : "zeros.vhd"));
    t_create(zp, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
    v = t_open(zp, false);
    write_model(v, 0, BS);
    T_OK(vhd_close(v, &err), &err, "vhd_close");
    uint64_t fsz = t_file_size(zp);
    uint8_t footer[512];
    t_pread_file(zp, footer, sizeof footer, fsz - 512);
    CLEANUP_FREE uint8_t *z = calloc(1, 1 << 20);
    T_ASSERT(z != NULL, "calloc");
    for (uint64_t o = 0; o < zeros; o += 1 << 20)
      t_pwrite_file(zp, z, 1 << 20, fsz - 512 + o);
    t_pwrite_file(zp, footer, sizeof footer, fsz - 512 + zeros);
    v = t_open(zp, false);
    uint64_t next = v->next_block_offset;
    T_OK(vhd_close(v, &err), &err, "vhd_close");
    if (big) {
      T_ASSERT(next == fsz - 512 + zeros && t_file_size(zp) == fsz + zeros,
               "a 1025 MiB tail of written zeros was taken at open: new blocks at %llu, the file "
               "%llu bytes after the close",
               (unsigned long long)next, (unsigned long long)t_file_size(zp));
    } else {
      T_ASSERT(next == fsz - 512 && t_file_size(zp) == fsz,
               "a 1 MiB tail of written zeros was not taken at open: new blocks at %llu, not "
               "%llu; the file %llu bytes after the close, not %llu",
               (unsigned long long)next, (unsigned long long)(fsz - 512),
               (unsigned long long)t_file_size(zp), (unsigned long long)fsz);
    }
    unlink(zp);
  }
  printf("ok\n");
  return 0;
}
