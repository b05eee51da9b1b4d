/* Unit tests of the server's serializing queue (src/server/queue.h): which
 * requests start at once, which wait, and what completing one releases. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "queue.h"

#define MAX_ITEMS 64
static struct queue_item items[MAX_ITEMS];
static bool started[MAX_ITEMS];

static void on_start(struct queue_item *it) { started[it - items] = true; }

static struct queue_item *submit(struct queue *q, int i, enum queue_kind kind, uint64_t off,
                                 uint64_t len) {
  struct queue_item *it = &items[i];
  memset(it, 0, sizeof *it);
  it->kind = kind;
  it->off = off;
  it->end = off + len;
  it->start = on_start;
  queue_submit(q, it);
  return it;
}

static void reset(struct queue *q) {
  queue_init(q);
  memset(started, 0, sizeof started);
}

static void test_reads_run_in_parallel(void) {
  struct queue q;
  reset(&q);
  submit(&q, 0, QUEUE_READ, 0, 4096);
  submit(&q, 1, QUEUE_READ, 0, 4096);
  submit(&q, 2, QUEUE_READ, 1024, 4096);
  CHECK(started[0] && started[1] && started[2]);
  CHECK(q.running == 3 && q.waiting == 0);
  for (int i = 0; i < 3; i++)
    queue_done(&q, &items[i]);
  CHECK(queue_empty(&q));
}

static void test_overlapping_write_waits(void) {
  struct queue q;
  reset(&q);
  submit(&q, 0, QUEUE_READ, 0, 4096);
  submit(&q, 1, QUEUE_WRITE, 4095, 10);     /* overlaps the read by one byte */
  submit(&q, 2, QUEUE_WRITE, 4096, 4096);   /* disjoint from the read, overlaps nothing running */
  submit(&q, 3, QUEUE_READ, 4100, 1);       /* overlaps write 1 and write 2 */
  submit(&q, 4, QUEUE_READ, 8192, 512);     /* overlaps nothing */
  CHECK(started[0]);
  CHECK(!started[1]);
  CHECK(started[2] == false); /* 4096..8192 overlaps write 1 (4095..4105): waits */
  CHECK(!started[3]);
  CHECK(started[4]);
  queue_done(&q, &items[0]);
  CHECK(started[1]);
  CHECK(!started[2] && !started[3]);
  queue_done(&q, &items[1]);
  CHECK(started[2]);
  CHECK(!started[3]);
  queue_done(&q, &items[2]);
  CHECK(started[3]);
  queue_done(&q, &items[3]);
  queue_done(&q, &items[4]);
  CHECK(queue_empty(&q) && q.running == 0 && q.waiting == 0);
}

static void test_writes_keep_order(void) {
  struct queue q;
  reset(&q);
  submit(&q, 0, QUEUE_WRITE, 0, 512);
  submit(&q, 1, QUEUE_WRITE, 0, 512);
  submit(&q, 2, QUEUE_WRITE, 0, 512);
  submit(&q, 3, QUEUE_WRITE, 512, 512); /* disjoint: runs now */
  CHECK(started[0] && !started[1] && !started[2] && started[3]);
  queue_done(&q, &items[0]);
  CHECK(started[1] && !started[2]);
  queue_done(&q, &items[1]);
  CHECK(started[2]);
  queue_done(&q, &items[2]);
  queue_done(&q, &items[3]);
  CHECK(queue_empty(&q));
}

static void test_flush_waits_for_earlier_writes_only(void) {
  struct queue q;
  reset(&q);
  submit(&q, 0, QUEUE_WRITE, 0, 512);
  submit(&q, 1, QUEUE_READ, 1 << 20, 512);
  submit(&q, 2, QUEUE_FLUSH, 0, 0);
  submit(&q, 3, QUEUE_WRITE, 1 << 20, 512); /* after the flush, overlaps only the read */
  submit(&q, 4, QUEUE_WRITE, 4096, 512);    /* after the flush, overlaps nothing */
  submit(&q, 5, QUEUE_FLUSH, 0, 0);
  CHECK(started[0] && started[1]);
  CHECK(!started[2]);
  CHECK(!started[3]); /* waits for the overlapping read, not for the flush */
  CHECK(started[4]);
  CHECK(!started[5]);
  queue_done(&q, &items[1]);
  CHECK(started[3] && !started[2]);
  queue_done(&q, &items[0]);
  CHECK(started[2]);
  CHECK(!started[5]); /* writes 3 and 4 are still running */
  queue_done(&q, &items[3]);
  queue_done(&q, &items[4]);
  CHECK(started[5]);
  queue_done(&q, &items[2]);
  queue_done(&q, &items[5]);
  CHECK(queue_empty(&q));
}

static void test_empty_ranges_overlap_nothing(void) {
  struct queue q;
  reset(&q);
  submit(&q, 0, QUEUE_WRITE, 0, 0);
  submit(&q, 1, QUEUE_WRITE, 0, 512);
  submit(&q, 2, QUEUE_READ, 0, 0);
  CHECK(started[0] && started[1] && started[2]);
  queue_done(&q, &items[1]);
  queue_done(&q, &items[0]);
  queue_done(&q, &items[2]);
  CHECK(queue_empty(&q));
}

/* Random workload against a brute-force model of the rules. */
/* The rules of queue.h, restated: must n wait for the earlier e? */
static bool conflicts_model(const struct queue_item *e, const struct queue_item *n) {
  bool ov = e->off < n->end && n->off < e->end;
  if (n->kind == QUEUE_WRITE)
    return e->kind != QUEUE_FLUSH && ov;
  if (n->kind == QUEUE_READ)
    return e->kind == QUEUE_WRITE && ov;
  return e->kind == QUEUE_WRITE;
}

static void test_random(void) {
  struct queue q;
  reset(&q);
  unsigned seed = 7;
  bool live[MAX_ITEMS] = {0};
  int order[MAX_ITEMS]; /* submission sequence numbers */
  int seq = 0;
  for (int step = 0; step < 20000; step++) {
    int i = rand_r(&seed) % MAX_ITEMS;
    if (!live[i]) {
      enum queue_kind k = (enum queue_kind)(rand_r(&seed) % 3);
      uint64_t off = (uint64_t)(rand_r(&seed) % 16) * 512, len = (uint64_t)(rand_r(&seed) % 4) * 512;
      started[i] = false;
      order[i] = seq++;
      live[i] = true;
      submit(&q, i, k, off, len);
    } else if (started[i]) {
      queue_done(&q, &items[i]);
      live[i] = false;
      started[i] = false;
    }
    /* queue_may_start_now on a probe that is not submitted: true iff no
     * live item conflicts with it. */
    struct queue_item probe = {.kind = (enum queue_kind)(rand_r(&seed) % 3)};
    probe.off = (uint64_t)(rand_r(&seed) % 16) * 512;
    probe.end = probe.off + (uint64_t)(rand_r(&seed) % 4) * 512;
    bool probe_blocked = false;
    for (int b = 0; b < MAX_ITEMS && !probe_blocked; b++)
      if (live[b])
        probe_blocked = conflicts_model(&items[b], &probe);
    if (queue_may_start_now(&q, &probe) == probe_blocked) {
      fprintf(stderr, "step %d: queue_may_start_now says %d, model says blocked=%d\n", step,
              !probe_blocked, probe_blocked);
      failures++;
      return;
    }
    /* Model: an item may run iff no earlier live item conflicts; the queue
     * must have started exactly those. */
    for (int a = 0; a < MAX_ITEMS; a++) {
      if (!live[a])
        continue;
      bool blocked = false;
      for (int b = 0; b < MAX_ITEMS && !blocked; b++) {
        if (!live[b] || order[b] >= order[a])
          continue;
        blocked = conflicts_model(&items[b], &items[a]);
      }
      if (blocked == started[a]) {
        fprintf(stderr, "step %d: item %d started=%d but model says blocked=%d\n", step, a,
                started[a], blocked);
        failures++;
        return;
      }
    }
  }
}

int main(void) {
  test_reads_run_in_parallel();
  test_overlapping_write_waits();
  test_writes_keep_order();
  test_flush_waits_for_earlier_writes_only();
  test_empty_ranges_overlap_nothing();
  test_random();
  return check_finish("queue");
}
