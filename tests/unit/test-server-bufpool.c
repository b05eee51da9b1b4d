/* Unit tests of the server's payload buffer pool (src/server/bufpool.h):
 * reuse by size class, the cap on cached bytes, and small sizes left to
 * malloc.  Run under valgrind too: nothing may leak after bufpool_drain. */
#include "config.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "bufpool.h"
#include "check.h"

static void test_reuse_within_class(void) {
  uint8_t *a = bufpool_get(1u << 20);
  CHECK(a != NULL);
  memset(a, 1, 1u << 20); /* the whole size asked for is usable */
  bufpool_put(a, 1u << 20);
  CHECK(bufpool_cached_bytes() == 1u << 20);
  /* 700 KiB falls in the same 1 MiB class: the same buffer comes back. */
  uint8_t *b = bufpool_get(700u << 10);
  CHECK(b == a);
  CHECK(bufpool_cached_bytes() == 0);
  memset(b, 2, 700u << 10);
  bufpool_put(b, 700u << 10);
  /* A different class does not take it. */
  uint8_t *c = bufpool_get(64u << 10);
  CHECK(c != a);
  memset(c, 3, 64u << 10);
  bufpool_put(c, 64u << 10);
  CHECK(bufpool_cached_bytes() == (1u << 20) + (64u << 10));
  bufpool_drain();
  CHECK(bufpool_cached_bytes() == 0);
}

static void test_small_sizes_not_cached(void) {
  void *p = bufpool_get(4096);
  CHECK(p != NULL);
  bufpool_put(p, 4096);
  CHECK(bufpool_cached_bytes() == 0);
  bufpool_put(NULL, 1u << 20); /* no-op */
  CHECK(bufpool_cached_bytes() == 0);
}

static void test_cap(void) {
  enum { N = BUFPOOL_MAX_CACHED / (8u << 20) + 3 };
  void *bufs[N];
  for (int i = 0; i < N; i++) {
    bufs[i] = bufpool_get(8u << 20);
    CHECK(bufs[i] != NULL);
  }
  for (int i = 0; i < N; i++)
    bufpool_put(bufs[i], 8u << 20);
  CHECK(bufpool_cached_bytes() <= BUFPOOL_MAX_CACHED);
  CHECK(bufpool_cached_bytes() == (size_t)(BUFPOOL_MAX_CACHED / (8u << 20)) * (8u << 20));
  bufpool_drain();
}

static void test_beyond_largest_class(void) {
  size_t big = (size_t)BUFPOOL_MAX_CACHED * 2; /* above every class */
  void *p = bufpool_get(big);
  CHECK(p != NULL);
  bufpool_put(p, big);
  CHECK(bufpool_cached_bytes() == 0);
}

int main(void) {
  test_reuse_within_class();
  test_small_sizes_not_cached();
  test_cap();
  test_beyond_largest_class();
  bufpool_drain();
  return check_finish("buffer pool");
}
