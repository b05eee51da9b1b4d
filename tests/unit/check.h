/* check.h: non-fatal checks for the small unit tests (codec, queue, buffer
 * pool, ACL).  A failed CHECK prints where it failed and counts; the test
 * carries on and check_finish gives the exit status. */
#ifndef VHDNBD_TEST_CHECK_H
#define VHDNBD_TEST_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      failures++;                                                              \
    }                                                                          \
  } while (0)

#define CHECK_EQ(a, b)                                                              \
  do {                                                                              \
    long long a_ = (long long)(a), b_ = (long long)(b);                             \
    if (a_ != b_) {                                                                 \
      fprintf(stderr, "%s:%d: %s == %lld, expected %s == %lld\n", __FILE__, __LINE__, \
              #a, a_, #b, b_);                                                      \
      failures++;                                                                   \
    }                                                                               \
  } while (0)

/* The exit status: 1 after any failed check, else 0 with a line naming what
 * passed. */
static inline int check_finish(const char *what) {
  if (failures) {
    fprintf(stderr, "%d check(s) failed\n", failures);
    return 1;
  }
  printf("all %s checks passed\n", what);
  return 0;
}

#endif
