/* test-vhd-threads: the engine's concurrency contract.  Several threads write
 * disjoint sector ranges that share blocks (so allocation and bitmap updates
 * race), others read and flush at the same time; afterwards every byte must
 * be what its single writer last wrote, across a close and reopen, and the
 * image must check clean. */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "vhd.h"

#define NTHREADS 4
#define SIZE (8u * 1024 * 1024)
#define BLOCK (64u * 1024)
#define SLICE 512u /* thread t owns sectors whose index % NTHREADS == t */

static vhd_t *vhd;
static uint8_t *expected;
static atomic_int failed;
static unsigned iters = 3000;

static void fail(const char *what, const struct vhd_err *e) {
  fprintf(stderr, "%s: %s\n", what, e ? e->msg : "");
  atomic_store(&failed, 1);
}

static uint32_t rnd(uint32_t *s) {
  *s ^= *s << 13;
  *s ^= *s >> 17;
  *s ^= *s << 5;
  return *s;
}

static void *writer(void *arg) {
  unsigned t = (unsigned)(uintptr_t)arg;
  uint32_t seed = 0x9e3779b9u * (t + 1);
  uint8_t buf[SLICE];
  struct vhd_err e;
  for (unsigned i = 0; i < iters && !atomic_load(&failed); i++) {
    uint32_t sector = (rnd(&seed) % (SIZE / SLICE / NTHREADS)) * NTHREADS + t;
    uint64_t off = (uint64_t)sector * SLICE;
    unsigned op = rnd(&seed) % 10;
    if (op < 7) {
      memset(buf, (int)(rnd(&seed) | 1), sizeof buf);
      if (vhd_write(vhd, buf, off, sizeof buf, (op == 0 && i % 16 == 0) ? VHD_FUA : 0, &e) < 0)
        return fail("write", &e), NULL;
      memcpy(expected + off, buf, sizeof buf);
    } else if (op < 8) {
      if (vhd_write_zeroes(vhd, off, SLICE, VHD_MAY_TRIM, &e) < 0)
        return fail("write_zeroes", &e), NULL;
      memset(expected + off, 0, SLICE);
    } else {
      if (vhd_read(vhd, buf, off, sizeof buf, &e) < 0)
        return fail("read", &e), NULL;
      if (memcmp(buf, expected + off, sizeof buf) != 0) {
        fprintf(stderr, "thread %u: sector %u reads back wrong\n", t, sector);
        atomic_store(&failed, 1);
        return NULL;
      }
    }
  }
  return NULL;
}

static void *flusher(void *arg) {
  struct vhd_err e;
  (void)arg;
  for (int i = 0; i < 50 && !atomic_load(&failed); i++) {
    if (vhd_flush(vhd, &e) < 0)
      return fail("flush", &e), NULL;
    usleep(1000);
  }
  return NULL;
}

static int run(const char *dir, enum vhd_type type) {
  char path[512], parent[512];
  struct vhd_err e;
  snprintf(path, sizeof path, "%s/t-%d.vhd", dir, (int)type);
  snprintf(parent, sizeof parent, "%s/p-%d.vhd", dir, (int)type);
  memset(expected, 0, SIZE);
  struct vhd_create_opts co = {.type = VHD_TYPE_DYNAMIC, .size = SIZE, .block_size = BLOCK,
                               .exact_size = true};
  if (type == VHD_TYPE_DIFFERENCING) {
    if (vhd_create(parent, &co, &e) < 0)
      return fail("create parent", &e), 1;
    vhd_t *p;
    if (vhd_open(parent, NULL, &p, &e) < 0)
      return fail("open parent", &e), 1;
    for (uint64_t off = 0; off < SIZE; off += 3 * BLOCK) {
      memset(expected + off, 0x5a, BLOCK);
      if (vhd_write(p, expected + off, off, BLOCK, 0, &e) < 0)
        return fail("fill parent", &e), 1;
    }
    if (vhd_close(p, &e) < 0)
      return fail("close parent", &e), 1;
    co = (struct vhd_create_opts){.type = VHD_TYPE_DIFFERENCING, .parent = parent};
  } else {
    co.type = type;
  }
  if (vhd_create(path, &co, &e) < 0)
    return fail("create", &e), 1;
  if (vhd_open(path, NULL, &vhd, &e) < 0)
    return fail("open", &e), 1;
  pthread_t th[NTHREADS + 1];
  for (unsigned t = 0; t < NTHREADS; t++)
    pthread_create(&th[t], NULL, writer, (void *)(uintptr_t)t);
  pthread_create(&th[NTHREADS], NULL, flusher, NULL);
  for (unsigned t = 0; t <= NTHREADS; t++)
    pthread_join(th[t], NULL);
  if (vhd_close(vhd, &e) < 0)
    return fail("close", &e), 1;
  if (atomic_load(&failed))
    return 1;
  if (vhd_open(path, NULL, &vhd, &e) < 0)
    return fail("reopen", &e), 1;
  uint8_t *got = malloc(SIZE);
  int bad = !got || vhd_read(vhd, got, 0, SIZE, &e) < 0 || memcmp(got, expected, SIZE) != 0;
  if (bad)
    fprintf(stderr, "type %d: content differs after reopen\n", (int)type);
  free(got);
  vhd_close(vhd, NULL);
  struct vhd_check_opts ck = {0};
  int c = vhd_check(path, &ck, &e);
  if (c < 0 || (c & VHD_CHECK_CORRUPT)) {
    fprintf(stderr, "type %d: check reports corruption (%d)\n", (int)type, c);
    bad = 1;
  }
  return bad;
}

int main(void) {
  const char *it = getenv("VHD_TEST_ITERS");
  if (it && atoi(it) > 0)
    iters = (unsigned)atoi(it);
  char dir[] = "/tmp/vhd-threads.XXXXXX";
  if (!mkdtemp(dir))
    return 1;
  expected = malloc(SIZE);
  int r = 0;
  static const enum vhd_type types[] = {VHD_TYPE_DYNAMIC, VHD_TYPE_FIXED, VHD_TYPE_DIFFERENCING};
  for (size_t i = 0; i < 3 && !r; i++) {
    r = run(dir, types[i]);
    printf("%s: type %d\n", r ? "FAIL" : "ok", (int)types[i]);
  }
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cleanup of %s failed\n", dir);
  free(expected);
  return r;
}
