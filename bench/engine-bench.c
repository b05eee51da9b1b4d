/* engine-bench.c: the VHD engine alone, no server, no socket: what mapping
 * costs a read, what a footer move costs a writer, what VHD_WRITE_NOWAIT
 * costs when it gives up.  Uses vhd.h only, so the same source builds
 * against an older libvhd.a to compare two commits.
 *
 * Usage:
 *   engine-bench setup DIR [MiB]     images in DIR (default 256 MiB, 2 MiB
 *                                    blocks, random data): alloc.vhd (every
 *                                    block written), diff-empty.vhd (empty
 *                                    child of alloc.vhd), diff-full.vhd
 *                                    (child with every sector written),
 *                                    fixed.vhd
 *   engine-bench read IMAGE [BS [COUNT]]
 *                                    random BS-aligned reads of BS bytes
 *                                    (default 4096, 200000) with
 *                                    vhd_read_map(VHD_READ_SKIP_ZERO) and a
 *                                    run callback, as the server reads, after
 *                                    one pass over the image that fills the
 *                                    page cache and the bitmaps
 *   engine-bench alloc DIR [MiB]     a new dynamic image (default 512 MiB),
 *                                    written 1 MiB at a time from start to
 *                                    end (every write into new blocks), no
 *                                    flush before the end: each write's
 *                                    latency, footer moves included
 *   engine-bench nowait IMAGE [COUNT]
 *                                    4 KiB writes into allocated blocks of a
 *                                    copy-worthy image, with VHD_WRITE_NOWAIT
 *                                    (given up or done) and without
 * One line of key=value per measure; times are wall clock (ns per
 * operation, medians where several) and process CPU time. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vhd.h"

#ifndef VHD_WRITE_NOWAIT
#define VHD_WRITE_NOWAIT 0x8u /* older engines: an unknown flag, ignored */
#endif

#define MiB (1024ull * 1024)

static double now_ns(clockid_t id) {
  struct timespec ts;
  clock_gettime(id, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static void die(const char *what, int r, const struct vhd_err *err) {
  fprintf(stderr, "engine-bench: %s: %s: %s\n", what, strerror(-r), err ? err->msg : "");
  exit(1);
}

static vhd_t *open_image(const char *path, bool rdonly) {
  struct vhd_open_opts o = {.flags = rdonly ? VHD_OPEN_RDONLY : 0};
  struct vhd_err err = {{0}};
  vhd_t *v = NULL;
  int r = vhd_open(path, &o, &v, &err);
  if (r < 0)
    die(path, r, &err);
  return v;
}

static void create(const char *path, enum vhd_type type, uint64_t size, const char *parent) {
  struct vhd_create_opts o = {.type = type, .size = size, .exact_size = true, .parent = parent};
  struct vhd_err err = {{0}};
  unlink(path);
  int r = vhd_create(path, &o, &err);
  if (r < 0)
    die(path, r, &err);
}

static void fill_all(const char *path, uint64_t size) {
  vhd_t *v = open_image(path, false);
  struct vhd_err err = {{0}};
  uint8_t *buf = malloc(MiB);
  for (uint64_t off = 0; off < size; off += MiB) {
    for (size_t i = 0; i < MiB; i += 8) {
      uint64_t x = next_rand() | 0x0101010101010101ull;
      memcpy(buf + i, &x, 8);
    }
    int r = vhd_write(v, buf, off, MiB, 0, &err);
    if (r < 0)
      die("vhd_write", r, &err);
  }
  free(buf);
  int r = vhd_close(v, &err);
  if (r < 0)
    die("vhd_close", r, &err);
}

static int setup(const char *dir, uint64_t mib) {
  char a[4096], de[4096], df[4096], fx[4096];
  snprintf(a, sizeof a, "%s/alloc.vhd", dir);
  snprintf(de, sizeof de, "%s/diff-empty.vhd", dir);
  snprintf(df, sizeof df, "%s/diff-full.vhd", dir);
  snprintf(fx, sizeof fx, "%s/fixed.vhd", dir);
  create(a, VHD_TYPE_DYNAMIC, mib * MiB, NULL);
  fill_all(a, mib * MiB);
  create(de, VHD_TYPE_DIFFERENCING, 0, a);
  create(df, VHD_TYPE_DIFFERENCING, 0, a);
  fill_all(df, mib * MiB);
  create(fx, VHD_TYPE_FIXED, mib * MiB, NULL);
  fill_all(fx, mib * MiB);
  printf("setup dir=%s size_mib=%" PRIu64 "\n", dir, mib);
  return 0;
}

static int count_run(void *opaque, const struct vhd_extent *e) {
  (*(uint64_t *)opaque) += e->length;
  return 0;
}

static int bench_read(const char *path, size_t bs, uint64_t count) {
  vhd_t *v = open_image(path, true);
  uint64_t size = vhd_virtual_size(v);
  uint8_t *buf = malloc(MiB > bs ? MiB : bs);
  struct vhd_err err = {{0}};
  uint64_t seen = 0;
  for (uint64_t off = 0; off + MiB <= size; off += MiB) {
    int r = vhd_read_map(v, buf, off, MiB, VHD_READ_SKIP_ZERO, count_run, &seen, &err);
    if (r < 0)
      die("vhd_read_map", r, &err);
  }
  uint64_t slots = size / bs;
  double w0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
  for (uint64_t i = 0; i < count; i++) {
    uint64_t off = next_rand() % slots * bs;
    int r = vhd_read_map(v, buf, off, bs, VHD_READ_SKIP_ZERO, count_run, &seen, &err);
    if (r < 0)
      die("vhd_read_map", r, &err);
  }
  double w1 = now_ns(CLOCK_MONOTONIC), c1 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
  printf("read image=%s bs=%zu count=%" PRIu64 " ns_per_op=%.0f cpu_ns_per_op=%.0f\n", path, bs,
         count, (w1 - w0) / (double)count, (c1 - c0) / (double)count);
  vhd_close(v, &err);
  free(buf);
  return 0;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int bench_alloc(const char *dir, uint64_t mib) {
  char path[4096];
  snprintf(path, sizeof path, "%s/alloc-bench.vhd", dir);
  create(path, VHD_TYPE_DYNAMIC, mib * MiB, NULL);
  vhd_t *v = open_image(path, false);
  uint8_t *buf = malloc(MiB);
  for (size_t i = 0; i < MiB; i++)
    buf[i] = (uint8_t)(i * 7 + 1);
  double *lat = calloc(mib, sizeof *lat);
  struct vhd_err err = {{0}};
  double w0 = now_ns(CLOCK_MONOTONIC);
  for (uint64_t i = 0; i < mib; i++) {
    double t0 = now_ns(CLOCK_MONOTONIC);
    int r = vhd_write(v, buf, i * MiB, MiB, 0, &err);
    if (r < 0)
      die("vhd_write", r, &err);
    lat[i] = now_ns(CLOCK_MONOTONIC) - t0;
  }
  double w1 = now_ns(CLOCK_MONOTONIC);
  int r = vhd_close(v, &err);
  if (r < 0)
    die("vhd_close", r, &err);
  double w2 = now_ns(CLOCK_MONOTONIC);
  double total = 0, max = 0;
  unsigned over_ms = 0;
  for (uint64_t i = 0; i < mib; i++) {
    total += lat[i];
    if (lat[i] > max)
      max = lat[i];
    over_ms += lat[i] > 1e6;
  }
  qsort(lat, mib, sizeof *lat, cmp_double);
  printf("alloc mib=%" PRIu64 " writes_ms=%.1f close_ms=%.1f median_us=%.0f p99_us=%.0f "
         "max_ms=%.2f over_1ms=%u\n",
         mib, (w1 - w0) / 1e6, (w2 - w1) / 1e6, lat[mib / 2] / 1e3, lat[mib * 99 / 100] / 1e3,
         max / 1e6, over_ms);
  unlink(path);
  free(lat);
  free(buf);
  return 0;
}

static int bench_nowait(const char *path, uint64_t count) {
  vhd_t *v = open_image(path, false);
  uint64_t slots = vhd_virtual_size(v) / 4096;
  uint8_t buf[4096];
  memset(buf, 0x5a, sizeof buf);
  struct vhd_err err = {{0}};
  /* Bitmaps in memory: read everything once. */
  uint8_t *big = malloc(MiB);
  for (uint64_t off = 0; off + MiB <= vhd_virtual_size(v); off += MiB)
    vhd_read(v, big, off, MiB, &err);
  free(big);
  for (int pass = 0; pass < 2; pass++) {
    unsigned flags = pass == 0 ? VHD_WRITE_NOWAIT : 0;
    uint64_t gave_up = 0;
    double w0 = now_ns(CLOCK_MONOTONIC), c0 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    for (uint64_t i = 0; i < count; i++) {
      int r = vhd_write(v, buf, next_rand() % slots * 4096, sizeof buf, flags, &err);
      if (r == -EAGAIN)
        gave_up++;
      else if (r < 0)
        die("vhd_write", r, &err);
    }
    double w1 = now_ns(CLOCK_MONOTONIC), c1 = now_ns(CLOCK_PROCESS_CPUTIME_ID);
    printf("write4k nowait=%d count=%" PRIu64 " gave_up=%" PRIu64
           " ns_per_op=%.0f cpu_ns_per_op=%.0f\n",
           pass == 0, count, gave_up, (w1 - w0) / (double)count, (c1 - c0) / (double)count);
  }
  vhd_close(v, &err);
  return 0;
}

int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "setup") == 0)
    return setup(argv[2], argc > 3 ? strtoull(argv[3], NULL, 10) : 256);
  if (argc >= 3 && strcmp(argv[1], "read") == 0)
    return bench_read(argv[2], argc > 3 ? strtoull(argv[3], NULL, 10) : 4096,
                      argc > 4 ? strtoull(argv[4], NULL, 10) : 200000);
  if (argc >= 3 && strcmp(argv[1], "alloc") == 0)
    return bench_alloc(argv[2], argc > 3 ? strtoull(argv[3], NULL, 10) : 512);
  if (argc >= 3 && strcmp(argv[1], "nowait") == 0)
    return bench_nowait(argv[2], argc > 3 ? strtoull(argv[3], NULL, 10) : 200000);
  fprintf(stderr, "usage: engine-bench setup DIR [MiB] | read IMAGE [BS [COUNT]] | "
                  "alloc DIR [MiB] | nowait IMAGE [COUNT]\n");
  return 2;
}
