/* fake-workers.c: workers.h without threads, for fuzz-nbd-server.
 *
 * Submitted items wait until the harness completes one of them (chosen from
 * the input, so any order the real pool could produce is tried); the item's
 * run and done callbacks then both run on the calling (loop) thread, so a
 * fuzz input replays exactly.  Items of one serial still run one at a time,
 * in submission order, as in workers.c. */
#include "config.h"

#include "fake-workers.h"

#include <errno.h>
#include <stdlib.h>

#include "fuzz-common.h"

static struct work_item **ready; /* may run now, in submission order */
static size_t n_ready, cap_ready;

int workers_start(uv_loop_t *loop, unsigned n, bool batch) {
  (void)loop;
  (void)n;
  (void)batch;
  return 0;
}

void workers_stop(void) {
  free(ready);
  ready = NULL;
  n_ready = cap_ready = 0;
}

static void make_ready(struct work_item *w) {
  if (n_ready == cap_ready) {
    size_t cap = cap_ready ? 2 * cap_ready : 64;
    struct work_item **r = realloc(ready, cap * sizeof *r);
    FUZZ_ASSERT(r, "out of memory for the work list");
    ready = r;
    cap_ready = cap;
  }
  ready[n_ready++] = w;
}

/* Only the main loop's items: the harness has one loop. */
int workers_home_open(uv_loop_t *loop, struct work_home **out) {
  (void)loop;
  (void)out;
  return -ENOSYS;
}

void workers_home_free(struct work_home *home) { (void)home; }

/* Holds are the real pool's business (they keep a loop alive); here
 * nothing waits for a loop. */
void workers_hold(struct work_home *home) { (void)home; }

void workers_release(struct work_home *home) { (void)home; }

void workers_enqueue(struct work_serial *s, struct work_item *w) {
  w->next = NULL;
  w->serial = s;
  if (s && s->busy) {
    if (s->tail)
      s->tail->next = w;
    else
      s->head = w;
    s->tail = w;
    return;
  }
  if (s)
    s->busy = true;
  make_ready(w);
}

void workers_submit(struct work_item *w) { workers_enqueue(NULL, w); }

size_t fake_workers_pending(void) { return n_ready; }

void fake_workers_complete(size_t i) {
  FUZZ_ASSERT(i < n_ready, "no work item %zu", i);
  struct work_item *w = ready[i];
  for (size_t j = i + 1; j < n_ready; j++)
    ready[j - 1] = ready[j];
  n_ready--;
  w->run(w);
  /* As workers.c: the serial's next item is settled before w is done. */
  struct work_serial *s = w->serial;
  if (s) {
    struct work_item *next = s->head;
    if (next) {
      s->head = next->next;
      if (!s->head)
        s->tail = NULL;
      make_ready(next);
    } else {
      s->busy = false;
    }
  }
  w->done(w);
}
