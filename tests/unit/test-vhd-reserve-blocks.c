/* test-vhd-reserve-blocks: a new block's space is reserved whole when the
 * block is allocated, unless the image is opened with
 * VHD_OPEN_SPARSE_BLOCKS.
 *
 * One 4 KiB write into a new 2 MiB block, of a dynamic image and of a
 * differencing child: by default the file then holds at least a block more
 * of disk space (st_blocks), and the sectors never written still read as
 * zeros (dynamic) or as the parent's data (child), before and after a
 * reopen, and the images check clean.  Opened with VHD_OPEN_SPARSE_BLOCKS,
 * the same write takes less than a quarter of a block.  A block placed in
 * the space a trimmed block freed reads as zeros where unwritten, through
 * the engine and in the file itself, whether the file system punches holes
 * or not.  Skipped where the file system of the temp dir reserves nothing
 * (fallocate refused). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testutil.h"

#define BLOCK (2u * 1024 * 1024)
#define SIZE (8ull * BLOCK)
#define WRITE_AT (BLOCK + 64 * 1024) /* inside block 1 */
#define WRITE_LEN 4096u

static uint64_t disk_bytes(const char *path) {
  struct stat st;
  T_ASSERT(stat(path, &st) == 0, "stat %s: %s", path, strerror(errno));
  return (uint64_t)st.st_blocks * 512;
}

static vhd_t *open_with(const char *path, unsigned flags) {
  struct vhd_open_opts opts = {.flags = flags, .size_rule = VHD_SIZE_AUTO};
  struct vhd_err err = {{0}};
  vhd_t *v = NULL;
  T_OK(vhd_open(path, &opts, &v, &err), &err, t_fmt("vhd_open %s", path));
  return v;
}

/* Whether the file system of the temp dir reserves space at all. */
static bool can_reserve(void) {
  const char *p = t_path("probe");
  int fd = open(p, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  T_ASSERT(fd >= 0, "open %s: %s", p, strerror(errno));
  bool ok = ftruncate(fd, BLOCK) == 0 && fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, BLOCK) == 0;
  close(fd);
  return ok && disk_bytes(p) >= BLOCK;
}

/* Reads [0, SIZE) and compares it with what it must hold: want. */
static void expect(vhd_t *v, const uint8_t *want, const char *when) {
  t_expect_model(v, want, SIZE, when);
}

/* Writes 4 KiB into the new block 1 of image path (opened with flags) and
 * returns the disk space that took; want is updated with the write. */
static uint64_t write_new_block(const char *path, unsigned flags, uint8_t *want) {
  vhd_t *v = open_with(path, flags);
  struct vhd_err err = {{0}};
  uint8_t buf[WRITE_LEN];
  t_fill_nonzero(buf, sizeof buf);
  T_OK(vhd_flush(v, &err), &err, "vhd_flush before");
  uint64_t before = disk_bytes(path);
  T_OK(vhd_write(v, buf, WRITE_AT, sizeof buf, 0, &err), &err, "vhd_write into a new block");
  T_OK(vhd_flush(v, &err), &err, "vhd_flush after");
  uint64_t used = disk_bytes(path) - before;
  memcpy(want + WRITE_AT, buf, sizeof buf);
  expect(v, want, t_fmt("%s after the write", path));
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  v = open_with(path, VHD_OPEN_RDONLY);
  expect(v, want, t_fmt("%s reopened", path));
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(t_check(path) == 0, "%s does not check clean", path);
  return used;
}

static void one_kind(const char *name, const char *parent, const uint8_t *base) {
  uint8_t *want = t_xmalloc(SIZE);
  char path[4096];

  snprintf(path, sizeof path, "%s", t_path(t_fmt("%s-reserved.vhd", name)));
  t_create(path, parent ? VHD_TYPE_DIFFERENCING : VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, parent);
  memcpy(want, base, SIZE);
  uint64_t used = write_new_block(path, 0, want);
  printf("%s: 4 KiB into a new block took %llu bytes of disk by default\n", name,
         (unsigned long long)used);
  T_ASSERT(used >= BLOCK,
           "%s: a 4 KiB write into a new block took %llu bytes of disk: the block's %u bytes "
           "were not reserved",
           name, (unsigned long long)used, BLOCK);

  snprintf(path, sizeof path, "%s", t_path(t_fmt("%s-sparse.vhd", name)));
  t_create(path, parent ? VHD_TYPE_DIFFERENCING : VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, parent);
  memcpy(want, base, SIZE);
  used = write_new_block(path, VHD_OPEN_SPARSE_BLOCKS, want);
  printf("%s: and %llu bytes with VHD_OPEN_SPARSE_BLOCKS\n", name, (unsigned long long)used);
  T_ASSERT(used < BLOCK / 4,
           "%s: with VHD_OPEN_SPARSE_BLOCKS a 4 KiB write into a new block took %llu bytes of "
           "disk: the block was reserved anyway",
           name, (unsigned long long)used);
  free(want);
}

/* The data area of block blk in the file, read by the format's own
 * fields (footer -> dynamic header -> BAT), not through the engine. */
static void read_block_raw(const char *path, uint32_t blk, uint8_t *out) {
  uint8_t f[512], h[1024], e[4];
  t_pread_file(path, f, sizeof f, t_file_size(path) - 512);
  t_pread_file(path, h, sizeof h, t_be64(f + 16));
  t_pread_file(path, e, sizeof e, t_be64(h + 16) + 4ull * blk);
  uint32_t sector = t_be32(e);
  T_ASSERT(sector != 0xFFFFFFFFu, "%s: block %u is not allocated", path, blk);
  t_pread_file(path, out, BLOCK, (uint64_t)sector * 512 + BLOCK / 512 / 8);
}

/* A block trimmed away and allocated again reuses its space, which is
 * punched, or zeroed where the file system cannot punch: the new block's
 * unwritten sectors must read as zeros, not as the old block's data,
 * through the engine and to a reader that ignores the bitmap (QEMU),
 * whether or not that space is reserved. */
static void reused_space(bool can_punch) {
  char path[4096];
  snprintf(path, sizeof path, "%s", t_path(t_fmt("reuse-%d.vhd", can_punch)));
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, NULL);
  uint8_t *want = t_xcalloc(1, SIZE);
  uint8_t *full = t_xmalloc(BLOCK);
  t_fill_nonzero(full, BLOCK);
  t_set_punch_unsupported(!can_punch);
  vhd_t *v = open_with(path, 0);
  struct vhd_err err = {{0}};
  T_OK(vhd_write(v, full, 0, BLOCK, 0, &err), &err, "vhd_write block 0 whole");
  T_OK(vhd_write_zeroes(v, 0, BLOCK, VHD_MAY_TRIM, &err), &err, "trim block 0");
  T_OK(vhd_flush(v, &err), &err, "vhd_flush");
  uint8_t buf[WRITE_LEN];
  t_fill_nonzero(buf, sizeof buf);
  T_OK(vhd_write(v, buf, 4 * BLOCK + 8192, sizeof buf, 0, &err), &err,
       "vhd_write into block 4");
  memcpy(want + 4 * BLOCK + 8192, buf, sizeof buf);
  expect(v, want, t_fmt("%s: a new block in a trimmed block's space", path));
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  t_set_punch_unsupported(false);
  v = open_with(path, VHD_OPEN_RDONLY);
  expect(v, want, t_fmt("%s: a new block in a trimmed block's space, reopened", path));
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(t_check(path) == 0, "%s does not check clean", path);
  read_block_raw(path, 4, full);
  for (size_t i = 0; i < BLOCK; i++)
    T_ASSERT(full[i] == want[4 * BLOCK + i],
             "%s: byte %zu of block 4's data area in the file is %#x, not %#x (%s)", path, i,
             full[i], want[4 * BLOCK + i],
             can_punch ? "hole punching" : "no hole punching: the old data was not zeroed");
  free(full);
  free(want);
}

int main(void) {
  t_init("test-vhd-reserve-blocks");
  if (!can_reserve()) {
    printf("SKIP: the file system of %s reserves no space (fallocate refused)\n", t_dir());
    return 77;
  }
  uint8_t *zeros = t_xcalloc(1, SIZE);
  one_kind("dynamic", NULL, zeros);

  /* A parent with data everywhere: the child's unwritten sectors must go
   * on reading it, reserved space or not. */
  char parent[4096];
  snprintf(parent, sizeof parent, "%s", t_path("parent.vhd"));
  t_create(parent, VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, NULL);
  uint8_t *base = t_xmalloc(SIZE);
  t_fill_nonzero(base, SIZE);
  vhd_t *v = open_with(parent, 0);
  struct vhd_err err = {{0}};
  T_OK(vhd_write(v, base, 0, SIZE, 0, &err), &err, "filling the parent");
  T_OK(vhd_close(v, &err), &err, "vhd_close parent");
  one_kind("child", parent, base);

  reused_space(true);
  reused_space(false);
  free(base);
  free(zeros);
  printf("PASS\n");
  return 0;
}
