/* fuzz-common.h: helpers shared by the fuzz targets and their replay driver.
 *
 * A fuzz target defines LLVMFuzzerTestOneInput.  Built with clang
 * -fsanitize=fuzzer it is driven by libFuzzer; built with -DFUZZ_STANDALONE
 * (any compiler) standalone.c supplies main() and replays files, so every
 * corpus and regression input is checked in ordinary and sanitizer builds. */
#ifndef VHDNBD_FUZZ_COMMON_H
#define VHDNBD_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* For the harness's own checking loops: their branches say nothing about the
 * code under test, and instrumenting them makes every input many times slower.
 * Never inlined: the instrumentation runs after inlining, so a function
 * inlined into an instrumented caller would be instrumented all the same. */
#if defined(__clang__) && !defined(FUZZ_STANDALONE)
#define FUZZ_NO_COVERAGE __attribute__((no_sanitize("coverage"), noinline))
#else
#define FUZZ_NO_COVERAGE
#endif

/* A broken invariant: print why and abort, so that libFuzzer saves the input
 * and the replay driver dies loudly. */
#define FUZZ_ASSERT(cond, ...)                                     \
  do {                                                             \
    if (!(cond)) {                                                 \
      fprintf(stderr, "%s:%d: invariant broken: ", __FILE__, __LINE__); \
      fprintf(stderr, __VA_ARGS__);                                \
      fputc('\n', stderr);                                         \
      abort();                                                     \
    }                                                              \
  } while (0)

/* Deterministic generator seeded from the input, so that a saved input
 * replays exactly the same operations. */
struct fuzz_rng {
  uint64_t s;
};
FUZZ_NO_COVERAGE
static inline void fuzz_rng_seed(struct fuzz_rng *r, const uint8_t *data, size_t size) {
  uint64_t h = UINT64_C(0xcbf29ce484222325); /* FNV-1a */
  for (size_t i = 0; i < size; i++)
    h = (h ^ data[i]) * UINT64_C(0x100000001b3);
  r->s = h ? h : 1;
}
static inline uint64_t fuzz_rng_next(struct fuzz_rng *r) {
  /* xorshift64* */
  r->s ^= r->s >> 12;
  r->s ^= r->s << 25;
  r->s ^= r->s >> 27;
  return r->s * UINT64_C(0x2545F4914F6CDD1D);
}
/* Uniform enough in [0, n); 0 when n is 0. */
static inline uint64_t fuzz_rng_below(struct fuzz_rng *r, uint64_t n) {
  return n ? fuzz_rng_next(r) % n : 0;
}

#endif
