/* vhd-write-helper: writes byte patterns into a VHD image through the engine,
 * for the interop tests (QEMU cannot write differencing VHDs, and the tests
 * need engine-written images to hand to other readers).
 *
 *   vhd-write-helper IMAGE OFFSET LENGTH BYTE [OFFSET LENGTH BYTE]...
 *
 * OFFSET and LENGTH take K/M/G suffixes; BYTE is a number (0xab).  Each range
 * is filled with BYTE.  Exit 0 on success, 1 on failure (message on stderr). */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "size.h"
#include "vhd.h"

#define CHUNK (1024u * 1024)

static int write_range(vhd_t *vhd, uint64_t off, uint64_t len, int byte, struct vhd_err *err) {
  CLEANUP_FREE uint8_t *buf = malloc(CHUNK);
  if (!buf)
    return -ENOMEM;
  memset(buf, byte, CHUNK);
  while (len) {
    size_t n = (size_t)MIN((uint64_t)CHUNK, len);
    int r = vhd_write(vhd, buf, off, n, 0, err);
    if (r < 0)
      return r;
    off += n;
    len -= n;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc < 5 || (argc - 2) % 3 != 0) {
    fprintf(stderr, "usage: %s IMAGE OFFSET LENGTH BYTE [OFFSET LENGTH BYTE]...\n", argv[0]);
    return 2;
  }
  struct vhd_open_opts oo = {.flags = 0};
  struct vhd_err err = {{0}};
  vhd_t *vhd;
  int r = vhd_open(argv[1], &oo, &vhd, &err);
  if (r < 0) {
    fprintf(stderr, "vhd-write-helper: %s\n", err.msg[0] ? err.msg : strerror(-r));
    return 1;
  }
  for (int i = 2; i + 2 < argc && r >= 0; i += 3) {
    uint64_t off, len;
    char *end;
    unsigned long byte = strtoul(argv[i + 2], &end, 0);
    if (size_parse(argv[i], &off) < 0 || size_parse(argv[i + 1], &len) < 0 || *end ||
        byte > 255) {
      fprintf(stderr, "vhd-write-helper: bad range '%s %s %s'\n", argv[i], argv[i + 1],
              argv[i + 2]);
      vhd_close(vhd, NULL);
      return 2;
    }
    r = write_range(vhd, off, len, (int)byte, &err);
  }
  int rc = vhd_close(vhd, r < 0 ? NULL : &err);
  if (r >= 0)
    r = rc;
  if (r < 0) {
    fprintf(stderr, "vhd-write-helper: %s: %s\n", argv[1], err.msg[0] ? err.msg : strerror(-r));
    return 1;
  }
  return 0;
}
