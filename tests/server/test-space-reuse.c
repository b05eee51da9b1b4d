/* Zeroing or trimming whole blocks of a dynamic image, then writing them
 * again, over and over (what fstrim plus a rewrite, or nbdcopy onto a used
 * image, does) must not grow the file without bound: blocks given up must be
 * reused or reclaimed, and the image must stay check-clean (no leaks). */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"

#define SIZE (8 * MiB)

static uint64_t file_size(const char *path) {
  struct stat st;
  if (stat(path, &st) < 0)
    FAIL("stat %s: %s", path, strerror(errno));
  return (uint64_t)st.st_size;
}

int main(void) {
  harness_init("test-space-reuse", 60);
  char sock[4096], img[4096];
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image("img.vhd", "dynamic", SIZE));
  harness_start_server_image(sock, img, false);
  struct nbd_handle *h = harness_connect(sock, "");
  CHECK(nbd_can_trim(h) == 1 && nbd_can_zero(h) == 1, "TRIM or WRITE_ZEROES not advertised");

  uint8_t *data = malloc(SIZE);
  for (uint32_t cycle = 0; cycle < 4; cycle++) {
    pattern_fill(data, SIZE, 0, cycle);
    NBD_OK(nbd_pwrite(h, data, SIZE, 0, 0));
    NBD_OK(nbd_flush(h, 0));
    /* Two whole 2 MiB blocks given up, by WRITE_ZEROES or by TRIM. */
    if (cycle % 2 == 0)
      NBD_OK(nbd_zero(h, 4 * MiB, 2 * MiB, 0));
    else
      NBD_OK(nbd_trim(h, 4 * MiB, 2 * MiB, 0));
    NBD_OK(nbd_flush(h, 0));
  }
  pattern_fill(data, SIZE, 0, 99);
  NBD_OK(nbd_pwrite(h, data, SIZE, 0, 0));
  harness_close(h);

  /* Measured once the server has closed the image (while it serves, the
   * file may hold room reserved for future blocks). */
  int rc = harness_finish();
  if (rc == 0) {
    uint64_t now = file_size(img);
    harness_note("image file after the cycles: %" PRIu64 " bytes", now);
    CHECK(now <= SIZE + MiB,
          "an image holding %" PRIu64 " bytes of data grew to %" PRIu64 " bytes over 4 cycles "
          "of freeing and rewriting two of its blocks",
          (uint64_t)SIZE, now);
    CHECK(harness_check_image(img) == 0, "%s is not clean (leaked space?)", img);
    harness_expect_image_content(img, data, SIZE, true);
  }
  free(data);
  return rc;
}
