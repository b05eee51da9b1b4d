/* test-vhd-footer-dsync: moving the trailing footer for new blocks syncs
 * nothing but the footer itself.
 *
 * An fdatasync of the image would write back every page written since the
 * last flush; the footer goes through a second, O_DSYNC descriptor of the
 * image instead.  Allocating block after block of a dynamic image (2 MiB
 * blocks) must ask for no fdatasync or fsync at all (the test VFS counts
 * them, skipped or not); each footer move must be one 512-byte O_DSYNC write
 * of a footer past the old one, to the same file; windows grow with the
 * file, so 100 blocks take 3 moves (64 MiB, 64 MiB, then 128 MiB of room),
 * not 4.  A flush syncs as before.  The data reads back after a reopen and
 * the image checks clean. */
#include "config.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"

#define BLOCK (2u * 1024 * 1024)
#define BLOCKS 100u
#define SIZE (128ull * BLOCK)

static struct {
  struct stat image;
  uint64_t moves, other_dsync, last_footer;
  bool wrong_file, backwards;
} seen;

static void hook(void *opaque, enum t_io_kind kind, int fd, const void *buf, uint64_t len,
                 uint64_t off) {
  (void)opaque;
  if (kind != T_IO_WRITE_DSYNC)
    return;
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_dev != seen.image.st_dev || st.st_ino != seen.image.st_ino)
    seen.wrong_file = true;
  if (len != 512 || memcmp(buf, "conectix", 8) != 0) {
    seen.other_dsync++;
    return;
  }
  if (off <= seen.last_footer)
    seen.backwards = true;
  seen.last_footer = off;
  seen.moves++;
}

static void fill(uint8_t *buf, size_t len, uint32_t seed) {
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)(seed * 31 + i * 7 + 1) | 1;
}

int main(void) {
  t_init("test-vhd-footer-dsync");
  char path[4096];
  snprintf(path, sizeof path, "%s", t_path("footer-dsync.vhd"));
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, NULL);
  T_ASSERT(stat(path, &seen.image) == 0, "stat %s: %s", path, strerror(errno));
  seen.last_footer = t_file_size(path) - 512;

  vhd_t *v = t_open(path, false);
  struct vhd_err err = {{0}};
  uint8_t buf[4096];
  t_set_io_hook(hook, NULL);
  uint64_t syncs = t_sync_count(), dsyncs = t_dsync_write_count();
  for (uint32_t b = 0; b < BLOCKS; b++) {
    fill(buf, sizeof buf, b);
    T_OK(vhd_write(v, buf, (uint64_t)b * BLOCK + 512, sizeof buf, 0, &err), &err,
         t_fmt("vhd_write into block %u", b));
    T_ASSERT(t_sync_count() == syncs,
             "allocating block %u asked for %llu whole-file syncs: the footer move must sync "
             "only the footer",
             b, (unsigned long long)(t_sync_count() - syncs));
  }
  t_set_io_hook(NULL, NULL);
  T_ASSERT(!seen.wrong_file, "an O_DSYNC write went to another file than the image");
  T_ASSERT(seen.other_dsync == 0, "%llu O_DSYNC writes were not a footer",
           (unsigned long long)seen.other_dsync);
  T_ASSERT(!seen.backwards, "a footer move wrote the footer at or before the previous one");
  T_ASSERT(seen.moves >= 1, "%u new blocks and no footer written with O_DSYNC", BLOCKS);
  T_ASSERT(t_dsync_write_count() - dsyncs == seen.moves, "O_DSYNC writes the hook did not see");
  T_ASSERT(seen.moves == 3, "%u blocks of 2 MiB took %llu footer moves, not 3", BLOCKS,
           (unsigned long long)seen.moves);

  T_OK(vhd_flush(v, &err), &err, "vhd_flush");
  T_ASSERT(t_sync_count() > syncs, "vhd_flush did not sync");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  int c = t_check(path);
  T_ASSERT((c & ~VHD_CHECK_LEAKS) == 0, "vhd_check %s reports 0x%x", path, c);
  v = t_open(path, true);
  uint8_t want[4096];
  for (uint32_t b = 0; b < BLOCKS; b++) {
    fill(want, sizeof want, b);
    T_OK(vhd_read(v, buf, (uint64_t)b * BLOCK + 512, sizeof buf, &err), &err, "vhd_read");
    T_ASSERT(memcmp(buf, want, sizeof buf) == 0, "block %u does not hold what was written", b);
  }
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  printf("ok: %u new blocks, %llu footer moves with O_DSYNC, no whole-file sync\n", BLOCKS,
         (unsigned long long)seen.moves);
  return 0;
}
