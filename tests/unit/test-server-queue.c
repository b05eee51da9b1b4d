/* Unit tests of the server's serializing queue (src/server/queue.h): which
 * requests start at once, which wait, and what completing one releases. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "queue.h"

/* queue.c is built here with this allocator: when armed, the countdown-th
 * call from now on fails. */
void *queue_test_realloc(void *p, size_t size);
static unsigned realloc_fail_countdown;
void *queue_test_realloc(void *p, size_t size) {
  if (realloc_fail_countdown && --realloc_fail_countdown == 0)
    return NULL;
  return realloc(p, size);
}

#define MAX_ITEMS (QUEUE_MAX_RECORDS + 64)
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

/* An empty range [x, x) overlaps only a range with x strictly inside it. */
static void test_empty_ranges(void) {
  struct queue q;
  reset(&q);
  submit(&q, 0, QUEUE_WRITE, 0, 0);
  submit(&q, 1, QUEUE_WRITE, 0, 1024);
  submit(&q, 2, QUEUE_READ, 0, 0);     /* at the write's start: no overlap */
  submit(&q, 3, QUEUE_READ, 1024, 0);  /* at its end: no overlap */
  submit(&q, 4, QUEUE_READ, 512, 0);   /* inside it: waits */
  CHECK(started[0] && started[1] && started[2] && started[3]);
  CHECK(!started[4]);
  queue_done(&q, &items[1]);
  CHECK(started[4]);
  queue_done(&q, &items[0]);
  queue_done(&q, &items[2]);
  queue_done(&q, &items[3]);
  queue_done(&q, &items[4]);
  CHECK(queue_empty(&q));
}

/* The shape of the worst case: one long WRITE_ZEROES, many small reads
 * inside it waiting for it, all released by its completion. */
static void test_long_write_zeroes_releases_all_readers(void) {
  struct queue q;
  reset(&q);
  submit(&q, 0, QUEUE_WRITE, 0, 1 << 20);
  for (int i = 1; i < MAX_ITEMS; i++)
    submit(&q, i, QUEUE_READ, (uint64_t)(i % 16) * 4096, 4096);
  CHECK(started[0]);
  CHECK_EQ(q.waiting, MAX_ITEMS - 1);
  queue_done(&q, &items[0]);
  for (int i = 1; i < MAX_ITEMS; i++)
    CHECK(started[i]);
  CHECK_EQ(q.running, MAX_ITEMS - 1);
  for (int i = 1; i < MAX_ITEMS; i++)
    queue_done(&q, &items[i]);
  CHECK(queue_empty(&q));
}

/* A write covering an earlier one stands in for it: a later read inside both
 * waits for both, and starts only when the covering write has completed. */
static void test_covering_write_keeps_order(void) {
  struct queue q;
  reset(&q);
  submit(&q, 0, QUEUE_WRITE, 0, 4096);
  submit(&q, 1, QUEUE_WRITE, 0, 8192); /* covers 0 */
  submit(&q, 2, QUEUE_READ, 0, 512);
  struct queue_item probe = {.kind = QUEUE_READ, .off = 512, .end = 1024};
  CHECK(started[0] && !started[1] && !started[2]);
  CHECK(!queue_may_start_now(&q, &probe));
  queue_done(&q, &items[0]);
  CHECK(started[1] && !started[2]);
  CHECK(!queue_may_start_now(&q, &probe));
  queue_done(&q, &items[1]);
  CHECK(started[2]);
  CHECK(queue_may_start_now(&q, &probe));
  queue_done(&q, &items[2]);
  CHECK(queue_empty(&q));
}

/* A write overlapping only part of an earlier read does not stand in for it:
 * a later write over the rest of the read still waits for the read. */
static void test_partly_covered_read_still_blocks(void) {
  struct queue q;
  reset(&q);
  submit(&q, 0, QUEUE_READ, 0, 8192);
  submit(&q, 1, QUEUE_WRITE, 4096, 8192); /* overlaps the read's second half */
  submit(&q, 2, QUEUE_WRITE, 0, 512);     /* overlaps only the read */
  CHECK(started[0] && !started[1] && !started[2]);
  queue_done(&q, &items[0]);
  CHECK(started[1] && started[2]);
  queue_done(&q, &items[2]);
  queue_done(&q, &items[1]);
  CHECK(queue_empty(&q));
}

/* ---- the hostile shape of rule 5 ---- */

/* Many small disjoint writes still running, then as many wide reads, each
 * covering all of them: one record per (read, write) pair would be
 * HOSTILE^2.  Each read holds at most QUEUE_MAX_RECORDS instead, and the
 * reads all start when the last write completes, not before. */
#define HOSTILE 4096
/* queue.h promises a small constant number of records per request, its
 * memory estimate assumes at most this many. */
#define RECORDS_PER_REQUEST_PROMISED 64
static struct queue_item *hostile;
static int *hostile_starts;

static void on_hostile_start(struct queue_item *it) { hostile_starts[it - hostile]++; }

static void submit_hostile(struct queue *q, int i, enum queue_kind kind, uint64_t off,
                           uint64_t len, size_t *most_records, size_t *most_slots) {
  struct queue_item *it = &hostile[i];
  memset(it, 0, sizeof *it);
  it->kind = kind;
  it->off = off;
  it->end = off + len;
  it->start = on_hostile_start;
  CHECK_EQ(queue_submit(q, it), 0);
  if (q->records > *most_records)
    *most_records = q->records;
  if (q->record_slots > *most_slots)
    *most_slots = q->record_slots;
}

static int count_started(int from, int to) {
  int n = 0;
  for (int i = from; i < to; i++)
    n += hostile_starts[i] > 0;
  return n;
}

static void test_hostile_wide_reads_behind_small_writes(void) {
  const int n = 2 * HOSTILE + 1;
  hostile = calloc((size_t)n, sizeof *hostile);
  hostile_starts = calloc((size_t)n, sizeof *hostile_starts);
  CHECK(hostile && hostile_starts);
  if (!hostile || !hostile_starts) {
    free(hostile);
    free(hostile_starts);
    return;
  }
  struct queue q;
  queue_init(&q);
  size_t most_records = 0, most_slots = 0;
  const uint64_t span = (uint64_t)HOSTILE * 8192;
  for (int i = 0; i < HOSTILE; i++)
    submit_hostile(&q, i, QUEUE_WRITE, (uint64_t)i * 8192, 4096, &most_records, &most_slots);
  CHECK_EQ(count_started(0, HOSTILE), HOSTILE);
  for (int i = HOSTILE; i < 2 * HOSTILE; i++) /* READs and BLOCK_STATUS alike */
    submit_hostile(&q, i, QUEUE_READ, 0, span, &most_records, &most_slots);
  /* A small write into the reads: it must wait for every one of them. */
  const int last_write = 2 * HOSTILE;
  submit_hostile(&q, last_write, QUEUE_WRITE, 4096, 512, &most_records, &most_slots);
  CHECK_EQ(count_started(HOSTILE, n), 0);
  int barriers = 0;
  for (int i = HOSTILE; i < n; i++)
    barriers += hostile[i].barrier;
  CHECK_EQ(barriers, HOSTILE + 1);

  /* The writes complete in a scrambled order (an odd multiplier permutes
   * the residues of a power of two); no read may start before the last. */
  for (int k = 0; k < HOSTILE; k++) {
    int i = (int)(((unsigned)k * 2654435761u) % HOSTILE);
    CHECK_EQ(hostile_starts[i], 1);
    queue_done(&q, &hostile[i]);
    if (k < HOSTILE - 1 && count_started(HOSTILE, n) != 0) {
      CHECK_EQ(count_started(HOSTILE, n), 0);
      break;
    }
  }
  CHECK_EQ(count_started(HOSTILE, 2 * HOSTILE), HOSTILE);
  CHECK_EQ(hostile_starts[last_write], 0);
  for (int i = HOSTILE; i < 2 * HOSTILE; i++) {
    CHECK(hostile_starts[i] <= 1);
    queue_done(&q, &hostile[i]);
    if (i < 2 * HOSTILE - 1 && hostile_starts[last_write]) {
      CHECK(!hostile_starts[last_write]);
      break;
    }
  }
  CHECK_EQ(hostile_starts[last_write], 1);
  queue_done(&q, &hostile[last_write]);
  CHECK(queue_empty(&q));
  CHECK_EQ(q.records, 0);
  CHECK_EQ(q.record_slots, 0);

  /* Memory: at most QUEUE_MAX_RECORDS records per request, a small
   * constant; the slots around them at most twice as many, plus the
   * smallest array. */
  printf("queue: hostile: %d requests, at most %zu records in %zu slots\n", n, most_records,
         most_slots);
  CHECK(QUEUE_MAX_RECORDS <= RECORDS_PER_REQUEST_PROMISED);
  CHECK(most_records <= (size_t)QUEUE_MAX_RECORDS * (size_t)n);
  CHECK(most_records <= (size_t)RECORDS_PER_REQUEST_PROMISED * (size_t)n);
  CHECK(most_slots <= (size_t)(2 * QUEUE_MAX_RECORDS + 4) * (size_t)n);
  free(hostile);
  free(hostile_starts);
}

/* A wide write behind many small reads waits as a barrier too, for every
 * earlier READ- and WRITE-kind request, and a later write overlapping it
 * still waits for it. */
static void test_hostile_wide_write_behind_small_reads(void) {
  const int reads = QUEUE_MAX_RECORDS + 1;
  struct queue q;
  reset(&q);
  submit(&q, 0, QUEUE_WRITE, 1 << 30, 512); /* earlier, disjoint from all */
  for (int i = 1; i <= reads; i++)
    submit(&q, i, QUEUE_READ, (uint64_t)i * 8192, 512);
  const int wide = reads + 1, after = reads + 2, apart = reads + 3;
  submit(&q, wide, QUEUE_WRITE, 0, (uint64_t)(reads + 1) * 8192);
  submit(&q, after, QUEUE_WRITE, 8192, 512);      /* overlaps the wide write and read 1 */
  submit(&q, apart, QUEUE_WRITE, 1u << 31, 512);  /* overlaps nothing */
  for (int i = 0; i <= reads; i++)
    CHECK(started[i]);
  CHECK(items[wide].barrier && !started[wide]);
  CHECK(!items[after].barrier && !started[after]);
  CHECK(started[apart]);
  for (int i = 1; i <= reads; i++)
    queue_done(&q, &items[i]);
  /* Every read is done, but the earlier write, though disjoint, is not. */
  CHECK(!started[wide]);
  queue_done(&q, &items[0]);
  CHECK(started[wide] && !started[after]);
  queue_done(&q, &items[wide]);
  CHECK(started[after]);
  queue_done(&q, &items[after]);
  queue_done(&q, &items[apart]);
  CHECK(queue_empty(&q));
}

/* ---- random workloads against a brute-force model of the rules ---- */

static uint64_t rng_state;
static uint64_t rnd(void) {
  uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}
static uint64_t below(uint64_t n) { return rnd() % n; }

/* Whether an earlier e of its kind may hold back n at all: WRITE-kind
 * requests hold back everything, READ-kind ones only WRITE-kind ones. */
static bool kinds_conflict_model(const struct queue_item *e, const struct queue_item *n) {
  if (n->kind == QUEUE_WRITE)
    return e->kind != QUEUE_FLUSH;
  return e->kind == QUEUE_WRITE;
}

/* The rules 1-4 of queue.h, restated: must n wait for the earlier e? */
static bool conflicts_model(const struct queue_item *e, const struct queue_item *n) {
  bool ov = e->off < n->end && n->off < e->end;
  return kinds_conflict_model(e, n) && (n->kind == QUEUE_FLUSH || ov);
}

/* A workload shape: how many items may be in the queue, how wide the
 * export is (in sectors), how long a READ-kind and a WRITE-kind range may
 * be, how often each kind comes, how often a step completes rather than
 * submits, and which kinds of barrier it must make. */
struct shape {
  const char *name;
  int slots;
  uint64_t sectors, read_max_len, write_max_len;
  unsigned read_pct, flush_pct, done_pct;
  bool read_barriers, write_barriers; /* must make these (rule 5) */
};

#define POOL 512
static struct queue_item pool[POOL];
static bool pool_started[POOL], pool_live[POOL];
static uint64_t pool_order[POOL];
static int pool_blockers[POOL]; /* model: earlier live items it conflicts with */
/* model: earlier live items of the kinds it conflicts with, which a barrier
 * (rule 5) waits for whatever their ranges */
static int pool_kind_blockers[POOL];
static int pool_start_calls[POOL];
static uint64_t failed_submissions;
static uint64_t read_barriers, write_barriers;

static void on_pool_start(struct queue_item *it) {
  int i = (int)(it - pool);
  pool_start_calls[i]++;
  pool_started[i] = true;
}

static void random_range(const struct shape *sh, struct queue_item *it) {
  /* Mostly short ranges, some up to the kind's longest, some empty (at any offset,
   * inside other ranges too). */
  uint64_t max_len = it->kind == QUEUE_READ ? sh->read_max_len : sh->write_max_len;
  uint64_t len = below(8) == 0 ? 0 : below(4) == 0 ? 1 + below(max_len) : 1 + below(4);
  if (len > sh->sectors)
    len = sh->sectors;
  it->off = below(sh->sectors - len + 1) * 512;
  it->end = it->off + len * 512;
}

static void random_probe(const struct shape *sh, struct queue_item *probe) {
  memset(probe, 0, sizeof *probe);
  unsigned k = (unsigned)below(100);
  probe->kind = k < sh->flush_pct ? QUEUE_FLUSH : k < sh->flush_pct + sh->read_pct ? QUEUE_READ
                                                                                   : QUEUE_WRITE;
  random_range(sh, probe);
}

/* Checks every live item against the model; returns false on a mismatch. */
static bool check_model(const struct shape *sh, struct queue *q, uint64_t step) {
  unsigned running = 0, waiting = 0, live = 0;
  for (int a = 0; a < sh->slots; a++) {
    if (!pool_live[a] && pool_start_calls[a]) {
      fprintf(stderr, "%s step %llu: item %d started after its submission failed\n", sh->name,
              (unsigned long long)step, a);
      return false;
    }
    if (!pool_live[a])
      continue;
    live++;
    /* A barrier may start later than rules 1-4 say, never earlier: exactly
     * once every earlier item of the kinds it conflicts with is done. */
    bool blocked = pool[a].barrier ? pool_kind_blockers[a] > 0 : pool_blockers[a] > 0;
    if (blocked == pool_started[a] || pool_start_calls[a] > 1) {
      fprintf(stderr,
              "%s step %llu: item %d (kind %d%s, [%llu, %llu), submitted %llu) started %d "
              "times, the model has it %s\n",
              sh->name, (unsigned long long)step, a, pool[a].kind,
              pool[a].barrier ? ", barrier" : "", (unsigned long long)pool[a].off,
              (unsigned long long)pool[a].end, (unsigned long long)pool_order[a],
              pool_start_calls[a], blocked ? "blocked" : "free to run");
      return false;
    }
    if (pool_started[a])
      running++;
    else
      waiting++;
  }
  if (q->running != running || q->waiting != waiting) {
    fprintf(stderr, "%s step %llu: queue counts %u running, %u waiting; model %u, %u\n", sh->name,
            (unsigned long long)step, q->running, q->waiting, running, waiting);
    return false;
  }
  if (q->records > (size_t)QUEUE_MAX_RECORDS * live || (live == 0 && q->record_slots != 0)) {
    fprintf(stderr, "%s step %llu: %zu records in %zu slots for %u requests\n", sh->name,
            (unsigned long long)step, q->records, q->record_slots, live);
    return false;
  }
  /* queue_may_start_now on an item that is not submitted: true iff no live
   * item conflicts with it. */
  struct queue_item probe;
  random_probe(sh, &probe);
  bool probe_blocked = false;
  for (int b = 0; b < sh->slots && !probe_blocked; b++)
    if (pool_live[b])
      probe_blocked = conflicts_model(&pool[b], &probe);
  if (queue_may_start_now(q, &probe) == probe_blocked) {
    fprintf(stderr, "%s step %llu: queue_may_start_now(kind %d, [%llu, %llu)) says %d, "
                    "the model says %d\n",
            sh->name, (unsigned long long)step, probe.kind, (unsigned long long)probe.off,
            (unsigned long long)probe.end, !probe_blocked, probe_blocked);
    return false;
  }
  return true;
}

static void model_submit(const struct shape *sh, struct queue *q, int i, uint64_t order) {
  struct queue_item *it = &pool[i];
  memset(it, 0, sizeof *it);
  unsigned k = (unsigned)below(100);
  it->kind = k < sh->flush_pct ? QUEUE_FLUSH : k < sh->flush_pct + sh->read_pct ? QUEUE_READ
                                                                                : QUEUE_WRITE;
  if (it->kind != QUEUE_FLUSH)
    random_range(sh, it);
  it->start = on_pool_start;
  pool_blockers[i] = pool_kind_blockers[i] = 0;
  for (int b = 0; b < sh->slots; b++) {
    if (pool_live[b] && conflicts_model(&pool[b], it))
      pool_blockers[i]++;
    if (pool_live[b] && kinds_conflict_model(&pool[b], it))
      pool_kind_blockers[i]++;
  }
  pool_started[i] = false;
  pool_start_calls[i] = 0;
  pool_order[i] = order;
  /* Sometimes the item is offered with queue_start_now, as a request served
   * on the spot: taken, running and never started by the queue, exactly
   * when nothing live conflicts with it; otherwise left out. */
  if (below(8) == 0) {
    bool taken = queue_start_now(q, it);
    if (taken != (pool_blockers[i] == 0)) {
      fprintf(stderr, "%s: queue_start_now on item %d with %d live conflicts says %d\n",
              sh->name, i, pool_blockers[i], taken);
      CHECK(taken == (pool_blockers[i] == 0));
    }
    CHECK(it->start == on_pool_start);
    if (!taken)
      return;
    CHECK(it->running && pool_start_calls[i] == 0);
    pool_live[i] = pool_started[i] = true;
    return;
  }
  /* Sometimes the allocation of a dependency record fails: the submission
   * must then leave the queue as it was, the item never to start. */
  bool armed = below(8) == 0;
  realloc_fail_countdown = armed ? 1 + (unsigned)below(3) : 0;
  int r = queue_submit(q, it);
  bool failed = armed && realloc_fail_countdown == 0 && r == -ENOMEM;
  realloc_fail_countdown = 0;
  if (failed) {
    failed_submissions++;
    return;
  }
  CHECK_EQ(r, 0);
  pool_live[i] = true;
  /* Only a READ or WRITE with more than QUEUE_MAX_RECORDS earlier items to
   * wait for may become a barrier. */
  if (it->barrier) {
    CHECK(it->kind != QUEUE_FLUSH);
    if (pool_blockers[i] <= QUEUE_MAX_RECORDS)
      fprintf(stderr, "%s: item %d became a barrier with only %d items to wait for\n", sh->name,
              i, pool_blockers[i]);
    CHECK(pool_blockers[i] > QUEUE_MAX_RECORDS);
    if (it->kind == QUEUE_READ)
      read_barriers++;
    else
      write_barriers++;
  }
}

static void model_done(const struct shape *sh, struct queue *q, int i) {
  pool_live[i] = false;
  for (int b = 0; b < sh->slots; b++) {
    if (!pool_live[b] || pool_order[b] < pool_order[i])
      continue;
    if (conflicts_model(&pool[i], &pool[b]))
      pool_blockers[b]--;
    if (kinds_conflict_model(&pool[i], &pool[b]))
      pool_kind_blockers[b]--;
  }
  queue_done(q, &pool[i]);
  pool_started[i] = false;
  pool_start_calls[i] = 0;
}

/* Picks a started live item uniformly (completions come in any order). */
static int pick_started(const struct shape *sh) {
  int n = 0, pick = -1;
  for (int i = 0; i < sh->slots; i++)
    if (pool_live[i] && pool_started[i] && below((uint64_t)++n) == 0)
      pick = i;
  return pick;
}

static bool run_shape(const struct shape *sh, uint64_t steps) {
  struct queue q;
  queue_init(&q);
  memset(pool_live, 0, sizeof pool_live);
  uint64_t order = 0;
  unsigned most_waiting = 0;
  failed_submissions = read_barriers = write_barriers = 0;
  for (uint64_t step = 0; step < steps; step++) {
    int i = (int)below((uint64_t)sh->slots);
    if (!pool_live[i] && below(100) >= sh->done_pct) {
      model_submit(sh, &q, i, order++);
    } else {
      int d = pick_started(sh);
      if (d >= 0)
        model_done(sh, &q, d);
    }
    if (!check_model(sh, &q, step))
      return false;
    if (q.waiting > most_waiting)
      most_waiting = q.waiting;
  }
  printf("queue: %s: %llu requests, at most %u waiting at once, %llu submissions failed, "
         "%llu READ and %llu WRITE barriers\n",
         sh->name, (unsigned long long)order, most_waiting, (unsigned long long)failed_submissions,
         (unsigned long long)read_barriers, (unsigned long long)write_barriers);
  /* A workload where nothing ever waits, or no submission ever fails,
   * would check nothing. */
  if (steps >= 5000 && (most_waiting < 4 || failed_submissions == 0)) {
    fprintf(stderr, "%s: at most %u requests waiting, %llu submissions failed: the workload "
                    "tests nothing\n",
            sh->name, most_waiting, (unsigned long long)failed_submissions);
    return false;
  }
  if (steps >= 5000 && ((sh->read_barriers && read_barriers == 0) ||
                        (sh->write_barriers && write_barriers == 0))) {
    fprintf(stderr, "%s: %llu READ and %llu WRITE barriers: the workload tests no barriers\n",
            sh->name, (unsigned long long)read_barriers, (unsigned long long)write_barriers);
    return false;
  }
  /* Drain: every item must start eventually. */
  for (uint64_t step = steps;; step++) {
    int d = pick_started(sh);
    if (d < 0)
      break;
    model_done(sh, &q, d);
    if (!check_model(sh, &q, step))
      return false;
  }
  if (!queue_empty(&q)) {
    fprintf(stderr, "%s: items left waiting with nothing running\n", sh->name);
    return false;
  }
  return true;
}

static const struct shape shapes[] = {
    /* Few items, a narrow export: every kind of overlap, often. */
    {"small", 24, 16, 4, 4, 40, 10, 40, false, false},
    {"narrow", 64, 16, 16, 16, 45, 5, 45, false, false},
    /* Many waiters: long writes with many short reads behind them. */
    {"long-writes", POOL, 1024, 1024, 1024, 85, 2, 20, false, false},
    /* Flush barriers among many writes. */
    {"flushes", 128, 256, 32, 32, 20, 30, 45, false, false},
    /* Wide requests behind many short ones of the other kind still in the
     * queue: barriers. */
    {"wide-reads", POOL, 4096, 4096, 4, 50, 1, 10, true, false},
    {"wide-writes", POOL, 4096, 4, 4096, 85, 1, 10, false, true},
};

static void test_random(void) {
  const char *s = getenv("VHD_TEST_SEED");
  uint64_t seed;
  if (s && *s) {
    seed = strtoull(s, NULL, 0);
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed = (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec;
  }
  const char *it = getenv("VHD_TEST_ITERS");
  uint64_t iters = it && *it ? strtoull(it, NULL, 10) : 0;
  if (!iters)
    iters = 1500;
  printf("queue: seed %llu (set VHD_TEST_SEED to reproduce), workload length %llu "
         "(VHD_TEST_ITERS)\n",
         (unsigned long long)seed, (unsigned long long)iters);
  for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
    rng_state = seed + k;
    if (!run_shape(&shapes[k], iters * 20)) {
      fprintf(stderr, "queue: reproduce with VHD_TEST_SEED=%llu\n", (unsigned long long)seed);
      failures++;
      return;
    }
  }
}

int main(void) {
  test_reads_run_in_parallel();
  test_overlapping_write_waits();
  test_writes_keep_order();
  test_flush_waits_for_earlier_writes_only();
  test_empty_ranges();
  test_long_write_zeroes_releases_all_readers();
  test_covering_write_keeps_order();
  test_partly_covered_read_still_blocks();
  test_hostile_wide_reads_behind_small_writes();
  test_hostile_wide_write_behind_small_reads();
  test_random();
  return check_finish("queue");
}
