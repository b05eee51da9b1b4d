/* vhd_read_extent: the file and offset behind a range that is one run of
 * one file's data, for readers that splice file pages rather than copy
 * them; and the rule that comes with it: space freed in an image whose
 * extents were handed out is reused only where it can be punched out of
 * the file first.
 *
 *   - fixed image: any range, the image's own descriptor, offset = virtual;
 *   - dynamic image with 4 KiB-aligned block data (the engine's layout for
 *     blocks of 512 KiB and more): a range inside an allocated block whose
 *     sectors are all set; the bytes at the offset returned (read with
 *     pread on the descriptor returned) are the range's;
 *   - not one run: a range across two blocks, one with a clear sector, one
 *     in an unallocated block: 0;
 *   - a writable image whose block data starts inside a page (blocks of
 *     64 KiB, placed back to back): 0, since reusing freed space would
 *     rewrite a page shared with a bitmap in place;
 *   - a differencing child over that parent: a range the child does not
 *     hold is the parent's (its descriptor), whatever its alignment, since
 *     a parent is never written;
 *   - reuse: with hole punching refused, a block trimmed after
 *     vhd_read_extent is not given to the next new block (the file grows
 *     instead), while in an image that never handed out extents it is. */
#include "config.h"

#include <string.h>
#include <unistd.h>

#include "testutil.h"

#define KiB 1024u
#define MiB (1024u * 1024u)

static struct vhd_err err;

static void fill(vhd_t *v, uint64_t off, size_t len, uint8_t *model) {
  uint8_t *b = t_xmalloc(len);
  t_fill_nonzero(b, len);
  T_OK(vhd_write(v, b, off, len, 0, &err), &err, "write");
  if (model)
    memcpy(model + off, b, len);
  free(b);
}

/* vhd_read_extent found the range: the bytes at its offset are model's. */
static void expect_extent(vhd_t *v, uint64_t off, size_t len, const uint8_t *model,
                          const char *what) {
  int fd = -1;
  uint64_t foff = 0;
  int r = vhd_read_extent(v, off, len, &fd, &foff, &err);
  T_ASSERT(r == 1, "%s: vhd_read_extent returned %d (%s)", what, r, err.msg);
  uint8_t *b = t_xmalloc(len);
  T_ASSERT(pread(fd, b, len, (off_t)foff) == (ssize_t)len, "%s: pread at %llu", what,
           (unsigned long long)foff);
  T_ASSERT(memcmp(b, model + off, len) == 0, "%s: the file bytes at %llu are not the range's",
           what, (unsigned long long)foff);
  free(b);
}

static void expect_none(vhd_t *v, uint64_t off, size_t len, const char *what) {
  int fd = -1;
  uint64_t foff = 0;
  int r = vhd_read_extent(v, off, len, &fd, &foff, &err);
  T_ASSERT(r == 0, "%s: vhd_read_extent returned %d, expected 0", what, r);
}

struct first_data {
  uint64_t file_off;
  bool have;
};

static int first_data(void *opaque, const struct vhd_extent *e) {
  struct first_data *f = opaque;
  if (!f->have && (e->flags & VHD_MAP_DATA)) {
    f->file_off = e->file_offset;
    f->have = true;
  }
  return 0;
}

/* Where block blk's data is in the file (it must be allocated). */
static uint64_t block_data(vhd_t *v, uint32_t blk, uint32_t bs) {
  struct first_data f = {0};
  T_OK(vhd_map(v, (uint64_t)blk * bs, bs, first_data, &f, &err), &err, "vhd_map");
  T_ASSERT(f.have, "block %u holds no data", blk);
  return f.file_off;
}

/* Trims block 0 after (or without) vhd_read_extent, flushes, and writes a
 * new block: returns whether the new block took block 0's old place. */
static bool reused(const char *name, bool shared) {
  const uint32_t bs = 2 * MiB;
  const char *path = t_path(name);
  t_create(path, VHD_TYPE_DYNAMIC, 8 * MiB, bs, true, NULL);
  vhd_t *v = t_open(path, false);
  fill(v, 0, bs, NULL);
  fill(v, bs, bs, NULL);
  T_OK(vhd_flush(v, &err), &err, "flush");
  uint64_t old = block_data(v, 0, bs);
  if (shared) {
    int fd;
    uint64_t foff;
    T_ASSERT(vhd_read_extent(v, 0, 64 * KiB, &fd, &foff, &err) == 1, "%s: no extent", name);
  }
  t_set_punch_unsupported(true);
  T_OK(vhd_write_zeroes(v, 0, bs, VHD_MAY_TRIM, &err), &err, "trim block 0");
  T_OK(vhd_flush(v, &err), &err, "flush");
  fill(v, 3 * (uint64_t)bs, bs, NULL);
  T_OK(vhd_flush(v, &err), &err, "flush");
  t_set_punch_unsupported(false);
  uint64_t now = block_data(v, 3, bs);
  T_OK(vhd_close(v, &err), &err, "close");
  T_ASSERT(!(t_check(path) & VHD_CHECK_CORRUPT), "%s: corrupt after the reuse", name);
  return now == old;
}

int main(void) {
  t_init("test-vhd-read-extent");
  static uint8_t model[8 * MiB];

  /* Fixed. */
  char fixed[4096];
  snprintf(fixed, sizeof fixed, "%s", t_path("fixed.vhd"));
  t_create(fixed, VHD_TYPE_FIXED, 4 * MiB, 0, true, NULL);
  vhd_t *v = t_open(fixed, false);
  fill(v, 0, 4 * MiB, model);
  expect_extent(v, 0, 4 * MiB, model, "fixed, whole disk");
  expect_extent(v, 3 * MiB + 512, 64 * KiB + 512, model, "fixed, unaligned range");
  T_OK(vhd_close(v, &err), &err, "close");

  /* Dynamic, 2 MiB blocks: data 4 KiB-aligned. */
  const uint32_t bs = 2 * MiB;
  char dyn[4096];
  snprintf(dyn, sizeof dyn, "%s", t_path("dynamic.vhd"));
  t_create(dyn, VHD_TYPE_DYNAMIC, 8 * MiB, bs, true, NULL);
  memset(model, 0, sizeof model);
  v = t_open(dyn, false);
  fill(v, 0, 2 * bs, model);            /* blocks 0 and 1 whole */
  fill(v, 2 * (uint64_t)bs, 4096, model); /* block 2: its first 4 KiB only */
  expect_extent(v, 512, 1 * MiB, model, "dynamic, inside block 0");
  expect_extent(v, bs + 4096, bs - 4096, model, "dynamic, the rest of block 1");
  expect_none(v, bs - 4096, 8192, "dynamic, across blocks 0 and 1");
  expect_none(v, 2 * (uint64_t)bs, 8192, "dynamic, set then clear sectors");
  expect_none(v, 3 * (uint64_t)bs, 4096, "dynamic, an unallocated block");
  T_OK(vhd_close(v, &err), &err, "close");

  /* Dynamic, 64 KiB blocks back to back: data starts inside a page. */
  char small[4096];
  snprintf(small, sizeof small, "%s", t_path("small.vhd"));
  t_create(small, VHD_TYPE_DYNAMIC, 1 * MiB, 64 * KiB, true, NULL);
  memset(model, 0, sizeof model);
  v = t_open(small, false);
  fill(v, 0, 1 * MiB, model);
  expect_none(v, 64 * KiB, 64 * KiB, "writable, block data inside a page");
  T_OK(vhd_close(v, &err), &err, "close");

  /* A child over that image: its ranges are the parent's, read-only. */
  char child[4096];
  snprintf(child, sizeof child, "%s", t_path("child.vhd"));
  t_create(child, VHD_TYPE_DIFFERENCING, 0, 64 * KiB, true, small);
  v = t_open(child, false);
  expect_extent(v, 64 * KiB, 64 * KiB, model, "child, the parent's block");
  fill(v, 128 * KiB + 512, 512, model);
  expect_none(v, 128 * KiB, 64 * KiB, "child, a block half the child's");
  T_OK(vhd_close(v, &err), &err, "close");

  /* Reuse of freed space without hole punching. */
  T_ASSERT(reused("plain.vhd", false),
           "without vhd_read_extent, the trimmed block's space was not reused (the test "
           "would prove nothing)");
  T_ASSERT(!reused("shared.vhd", true),
           "after vhd_read_extent, a trimmed block that could not be punched was rewritten "
           "with another block's data");
  printf("PASS: extents of fixed, dynamic and parent data; no in-place reuse once shared\n");
  return 0;
}
