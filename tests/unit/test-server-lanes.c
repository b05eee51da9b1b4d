/* Unit tests of the write lanes' policy (src/server/lanes.h): the lanes
 * narrow to one only after a run of long writes, widen again only after a
 * run of short ones, stay put in the gap between the two thresholds, and
 * never narrow when adaptation is off.  The durations are the ones
 * measured in bench/RESULTS.md: about 3 us a 4k write with the cache
 * dropped, 20-30 us into 2 MiB page-cache folios. */
#include "config.h"

#include <stdint.h>

#include "check.h"
#include "lanes.h"

#define SHORT_NS 3000u
#define LONG_NS 25000u

/* Notes n writes of ns each, asking for the choice after each as the loop
 * does; returns how many of those choices were one lane. */
static unsigned run(struct lane_policy *p, unsigned n, uint64_t ns) {
  unsigned narrowed = 0;
  for (unsigned i = 0; i < n; i++) {
    lane_policy_note(p, ns);
    narrowed += lane_policy_narrow(p);
  }
  return narrowed;
}

static void test_starts_wide(void) {
  struct lane_policy p = {0};
  CHECK(!lane_policy_narrow(&p));
  CHECK_EQ(run(&p, 1000, SHORT_NS), 0);
}

static void test_long_writes_narrow(void) {
  struct lane_policy p = {0};
  run(&p, 100, SHORT_NS);
  /* One long write among short ones (a page fault, a preemption) is not a
   * trend. */
  CHECK_EQ(run(&p, 1, LONG_NS), 0);
  CHECK_EQ(run(&p, 100, SHORT_NS), 0);
  /* A run of them is: narrowed within a few, and it stays. */
  unsigned n = run(&p, 20, LONG_NS);
  CHECK(n >= 10);
  CHECK(lane_policy_narrow(&p));
  CHECK_EQ(run(&p, 1000, LONG_NS), 1000);
}

static void test_short_writes_widen(void) {
  struct lane_policy p = {0};
  run(&p, 100, LONG_NS);
  CHECK(lane_policy_narrow(&p));
  CHECK_EQ(run(&p, 1, SHORT_NS), 1);
  unsigned n = run(&p, 30, SHORT_NS);
  CHECK(n < 30);
  CHECK(!lane_policy_narrow(&p));
  CHECK_EQ(run(&p, 1000, SHORT_NS), 0);
}

/* Between the thresholds the choice holds whichever way it was, so writes
 * near one of them do not flip it back and forth. */
static void test_gap_holds(void) {
  uint64_t mid = (LANES_NARROW_NS + LANES_WIDEN_NS) / 2;
  struct lane_policy wide = {0};
  run(&wide, 100, SHORT_NS);
  CHECK_EQ(run(&wide, 1000, mid), 0);
  struct lane_policy narrow = {0};
  run(&narrow, 100, LONG_NS);
  CHECK_EQ(run(&narrow, 1000, mid), 1000);
}

static void test_fixed_never_narrows(void) {
  struct lane_policy p = {.fixed = true};
  CHECK_EQ(run(&p, 1000, LONG_NS), 0);
}

/* Durations beyond 32 bits (a write stuck for seconds) saturate and still
 * count as long; they do not wrap around to short. */
static void test_huge_durations(void) {
  struct lane_policy p = {0};
  run(&p, 100, UINT64_C(1) << 40);
  CHECK(lane_policy_narrow(&p));
  CHECK(atomic_load(&p.avg_ns) > LANES_NARROW_NS);
}

int main(void) {
  test_starts_wide();
  test_long_writes_narrow();
  test_short_writes_widen();
  test_gap_holds();
  test_fixed_never_narrows();
  test_huge_durations();
  return check_finish("write lane policy");
}
