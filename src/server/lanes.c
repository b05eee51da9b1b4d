#include "config.h"

#include "lanes.h"

void lane_policy_note(struct lane_policy *p, uint64_t ns) {
  uint32_t d = ns > UINT32_MAX ? UINT32_MAX : (uint32_t)ns;
  /* Two workers updating at once may lose one sample: harmless for an
   * average of many, and cheaper than a compare-and-swap loop. */
  uint32_t avg = atomic_load_explicit(&p->avg_ns, memory_order_relaxed);
  int64_t next = (int64_t)avg + ((int64_t)d - (int64_t)avg) / 8;
  atomic_store_explicit(&p->avg_ns, (uint32_t)next, memory_order_relaxed);
}

bool lane_policy_narrow(struct lane_policy *p) {
  if (p->fixed)
    return false;
  uint32_t avg = atomic_load_explicit(&p->avg_ns, memory_order_relaxed);
  bool narrow = atomic_load_explicit(&p->narrow, memory_order_relaxed);
  if (narrow && avg < LANES_WIDEN_NS)
    narrow = false;
  else if (!narrow && avg > LANES_NARROW_NS)
    narrow = true;
  atomic_store_explicit(&p->narrow, narrow, memory_order_relaxed);
  return narrow;
}
