/* Bitmaps that read as all ones share one read-only copy per image
 * (vhd->bitmap_ones): a fully written image keeps no bitmap of its own in
 * memory.  White-box, since what is shared is not visible through vhd.h.
 *
 * - After a reopen, every fully written block's bitmap is the shared one,
 *   a half-written block's is its own.
 * - Writes into shared blocks (whole and partial sectors) change no bit
 *   and keep sharing; data as the model says.
 * - A trim and a write-zeroes inside a shared block give that block its own
 *   bitmap first (the shared copy is read-only memory: a bit cleared in it
 *   would fault), and no other block's; a trim of a whole shared block
 *   frees the block, not the shared copy.
 * - Growing an image whose last, partial block has a bitmap of all ones
 *   (as other tools write them) clears the bits past the old end in a copy.
 * - After a flush and a reopen the data is the model's and vhd_check finds
 *   the image clean. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd-internal.h"

#define BS (2u * 1024 * 1024) /* 4096 sectors: a 512-byte bitmap, no padding */
#define NBLK 8u
#define SIZE ((uint64_t)NBLK * BS)

static uint8_t model[SIZE];

static void check_model(vhd_t *v, const char *when) { t_expect_model(v, model, SIZE, when); }

static void write_model(vhd_t *v, uint64_t off, size_t len) {
  static uint8_t buf[BS];
  struct vhd_err err = {{0}};
  t_fill_random(buf, len);
  T_OK(vhd_write(v, buf, off, len, 0, &err), &err, "vhd_write");
  memcpy(model + off, buf, len);
}

static bool shared(vhd_t *v, uint32_t blk) {
  return v->bitmaps[blk] && v->bitmaps[blk] == v->bitmap_ones;
}

static void test_dynamic(void) {
  CLEANUP_FREE char *path = strdup(t_path("dyn.vhd"));
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  vhd_t *v = t_open(path, false);
  memset(model, 0, sizeof model);
  for (uint32_t b = 0; b < NBLK - 1; b++)
    write_model(v, (uint64_t)b * BS, BS);
  write_model(v, (uint64_t)(NBLK - 1) * BS, BS / 2);
  struct vhd_err err = {{0}};
  T_OK(vhd_close(v, &err), &err, "vhd_close");

  v = t_open(path, false);
  if (!v->bitmap_ones) {
    vhd_close(v, &err);
    printf("SKIP: no read-only mapping for the shared bitmap here\n");
    exit(77);
  }
  check_model(v, "reopened");
  for (uint32_t b = 0; b < NBLK - 1; b++)
    T_ASSERT(shared(v, b), "block %u, fully written, has a bitmap of its own", b);
  T_ASSERT(v->bitmaps[NBLK - 1] && !shared(v, NBLK - 1),
           "the half-written block shares the all-ones bitmap");

  write_model(v, 0, 4096);
  write_model(v, BS + 1000, 3000); /* partial sectors, all marked */
  check_model(v, "written in place");
  T_ASSERT(shared(v, 0) && shared(v, 1), "a write into marked sectors unshared the bitmap");

  T_OK(vhd_trim(v, 2 * BS + 8192, 65536, 0, &err), &err, "vhd_trim");
  memset(model + 2 * BS + 8192, 0, 65536);
  T_OK(vhd_write_zeroes(v, 3 * BS + 512, 4096, 0, &err), &err, "vhd_write_zeroes");
  memset(model + 3 * BS + 512, 0, 4096);
  check_model(v, "trimmed and zeroed");
  T_ASSERT(!shared(v, 2) && !shared(v, 3), "bits were cleared, yet the bitmap is shared");
  T_ASSERT(shared(v, 4) && shared(v, 5), "clearing bits of one block unshared another's");

  T_OK(vhd_trim(v, 4 * BS, BS, 0, &err), &err, "vhd_trim of a whole block");
  memset(model + 4 * BS, 0, BS);
  T_ASSERT(v->bitmap_ones[0] == 0xff && v->bitmap_ones[511] == 0xff,
           "the shared bitmap changed when a block was freed");
  check_model(v, "a whole block trimmed");
  T_ASSERT(shared(v, 5), "freeing a block unshared another's bitmap");

  T_OK(vhd_flush(v, &err), &err, "vhd_flush");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(t_check(path) == 0, "vhd_check found problems");
  v = t_open(path, false);
  check_model(v, "reopened after the changes");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
}

/* The last block half inside the disk, its bitmap all ones (past the end
 * too, as other tools write it); growing clears the bits past the old end
 * so that the new space reads as zeros. */
static void test_grow(void) {
  CLEANUP_FREE char *path = strdup(t_path("grow.vhd"));
  uint64_t size = SIZE - BS / 2;
  t_create(path, VHD_TYPE_DYNAMIC, size, BS, true, NULL);
  vhd_t *v = t_open(path, false);
  memset(model, 0, sizeof model);
  write_model(v, (uint64_t)(NBLK - 1) * BS, BS / 2);
  struct vhd_err err = {{0}};
  T_OK(vhd_flush(v, &err), &err, "vhd_flush");
  uint64_t bm_off = (uint64_t)v->bat[NBLK - 1] * 512;
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  uint8_t ones[512];
  memset(ones, 0xff, sizeof ones);
  int fd = open(path, O_WRONLY);
  T_ASSERT(fd >= 0, "open %s: %s", path, strerror(errno));
  T_ASSERT(pwrite(fd, ones, sizeof ones, (off_t)bm_off) == (ssize_t)sizeof ones, "pwrite: %s",
           strerror(errno));
  close(fd);

  struct vhd_resize_opts o = {.size = SIZE, .exact_size = true};
  T_OK(vhd_resize(path, &o, NULL, &err), &err, "vhd_resize");
  v = t_open(path, false);
  T_ASSERT(v->virtual_size == SIZE, "resized to %llu, expected %llu",
           (unsigned long long)v->virtual_size, (unsigned long long)SIZE);
  check_model(v, "grown");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(t_check(path) == 0, "vhd_check found problems after the resize");
}

int main(void) {
  t_init("test-vhd-bitmap-shared");
  test_dynamic();
  test_grow();
  printf("ok\n");
  return 0;
}
