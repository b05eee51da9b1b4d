/* make-vhd-seeds.c: writes the small valid images of tests/fuzz/corpus-vhd
 * (run by "make fuzz-seeds"; the output is committed, so this only matters
 * when the set changes).  Every image is 64 KiB or less of virtual disk. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vhd-parent.h"
#include "vhd.h"

static const char *dir;

static void die(const char *what, const struct vhd_err *err) {
  fprintf(stderr, "make-vhd-seeds: %s: %s\n", what, err ? err->msg : "failed");
  exit(1);
}

static char *path_of(const char *name) {
  static char buf[4096];
  snprintf(buf, sizeof buf, "%s/%s", dir, name);
  return buf;
}

static vhd_t *create(const char *name, enum vhd_type type, uint64_t size, uint32_t bs,
                     bool exact, const char *parent) {
  struct vhd_create_opts co = {
      .type = type, .size = size, .block_size = bs, .exact_size = exact, .parent = parent};
  struct vhd_err err;
  const char *p = path_of(name);
  unlink(p);
  if (vhd_create(p, &co, &err) < 0)
    die(name, &err);
  struct vhd_open_opts oo = {.flags = VHD_OPEN_NOLOCK};
  vhd_t *v;
  if (vhd_open(p, &oo, &v, &err) < 0)
    die(name, &err);
  return v;
}

static void put(vhd_t *v, uint64_t off, size_t len, uint8_t seed) {
  uint8_t buf[16384];
  struct vhd_err err;
  if (len > sizeof buf)
    abort();
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)(seed + i * 3);
  if (vhd_write(v, buf, off, len, 0, &err) < 0)
    die("write", &err);
}

static void done(vhd_t *v) {
  struct vhd_err err;
  if (vhd_close(v, &err) < 0)
    die("close", &err);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: make-vhd-seeds DIR\n");
    return 2;
  }
  dir = argv[1];
  struct vhd_err err;
  vhd_t *v;

  v = create("fixed.vhd", VHD_TYPE_FIXED, 64 * 1024, 0, true, NULL);
  put(v, 0, 512, 1);
  put(v, 30000, 3000, 2);
  done(v);

  /* Geometry-rounded size (no exact_size): the CHS size rule applies. */
  v = create("fixed-chs.vhd", VHD_TYPE_FIXED, 40 * 1024, 0, false, NULL);
  put(v, 512, 1024, 3);
  done(v);

  v = create("dynamic-empty.vhd", VHD_TYPE_DYNAMIC, 64 * 1024, 4096, true, NULL);
  done(v);

  /* Whole blocks, partial blocks (bitmaps half set) and unaligned writes. */
  v = create("dynamic.vhd", VHD_TYPE_DYNAMIC, 64 * 1024, 4096, true, NULL);
  put(v, 0, 512, 4);
  put(v, 8192, 4096, 5);
  put(v, 20480 + 1000, 700, 6);
  put(v, 65536 - 1024, 1024, 7);
  done(v);

  /* Zeroing that clears bitmap bits and trims a whole block. */
  v = create("dynamic-zeroed.vhd", VHD_TYPE_DYNAMIC, 32 * 1024, 4096, true, NULL);
  put(v, 0, 12288, 8);
  if (vhd_write_zeroes(v, 4096, 4096, VHD_MAY_TRIM, &err) < 0 ||
      vhd_write_zeroes(v, 8192 + 512, 1024, 0, &err) < 0)
    die("write_zeroes", &err);
  done(v);

  /* The smallest block size: one sector per block. */
  v = create("dynamic-512.vhd", VHD_TYPE_DYNAMIC, 8 * 1024, 512, true, NULL);
  put(v, 1024, 1536, 9);
  done(v);

  /* A child of the parent the harness installs at /proc/self/fd/900. */
  char parent[4096];
  snprintf(parent, sizeof parent, "%s", path_of(FUZZ_PARENT_NAME));
  unlink(parent);
  int r = fuzz_vhd_make_parent(parent);
  if (r < 0) {
    fprintf(stderr, "make-vhd-seeds: parent: %s\n", strerror(-r));
    return 1;
  }
  v = create("differencing.vhd", VHD_TYPE_DIFFERENCING, 0, 4096, true, parent);
  put(v, 4096 + 512, 512, 10);  /* over parent data */
  put(v, 16384, 4096, 11);      /* where the parent has none */
  if (vhd_write_zeroes(v, 8192, 1024, 0, &err) < 0) /* hides parent data */
    die("write_zeroes", &err);
  done(v);
  unlink(parent);
  return 0;
}
