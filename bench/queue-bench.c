/* queue-bench: cost of the server's serializing queue (src/server/queue.c)
 * with tens of thousands of requests waiting, without a server or a disk.
 *
 *   worst: one WRITE_ZEROES over 256 MiB, then N-1 small READs and
 *          BLOCK_STATUS requests inside it (all waiting for it), then every
 *          request completes in submission order.  Default limits allow
 *          65536 requests in flight per export (128 connections x 512).
 *   mixed: N requests of every kind at random offsets of a 4 GiB export
 *          (4 KiB to 1 MiB; WRITE_ZEROES up to 64 MiB; one in 64 a FLUSH),
 *          with up to `depth` in the queue at once and a random started
 *          request completing whenever the queue is full.
 *   hostile: N/2 small WRITEs at disjoint offsets (all running), then N/2
 *          READs and BLOCK_STATUS requests each covering all of them, then
 *          the writes completing in random order and the reads after them.
 *          One dependency record per (read, write) pair would be N^2/4
 *          records; run it alone to read the process's peak memory.
 *
 * Prints, for each case, the total time, the time of all submissions and of
 * all completions, and the mean and worst time of one completion (and for
 * the hostile case the dependency records held once every request is
 * queued, the bytes of their arrays and the process's peak RSS).  Figures
 * depend on the machine and its load; compare builds run side by side.
 *
 * Usage: queue-bench [N [depth [worst|mixed|hostile]]]
 *        (defaults 65536, 4096 and every case) */
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "queue.h"

static struct queue_item *items;
static unsigned char *started;
static unsigned *started_list; /* started, not yet completed: indexes */
static size_t n_started_list;

static void on_start(struct queue_item *it) {
  size_t i = (size_t)(it - items);
  started[i] = 1;
  started_list[n_started_list++] = (unsigned)i;
}

static uint64_t rng = 1;
static uint64_t next_rand(void) {
  uint64_t z = (rng += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

struct timing {
  double submit, done, worst_done;
  size_t completions;
};

static void submit(struct queue *q, size_t i, enum queue_kind kind, uint64_t off, uint64_t len,
                   struct timing *t) {
  struct queue_item *it = &items[i];
  memset(it, 0, sizeof *it);
  it->kind = kind;
  it->off = off;
  it->end = off + len;
  it->start = on_start;
  double t0 = now();
  if (queue_submit(q, it) != 0) {
    fprintf(stderr, "queue-bench: queue_submit of request %zu failed\n", i);
    exit(1);
  }
  t->submit += now() - t0;
}

static void complete(struct queue *q, size_t i, struct timing *t) {
  double t0 = now();
  queue_done(q, &items[i]);
  double d = now() - t0;
  t->done += d;
  if (d > t->worst_done)
    t->worst_done = d;
  t->completions++;
}

/* Completes the started request at position k of started_list. */
static void complete_started(struct queue *q, size_t k, struct timing *t) {
  unsigned i = started_list[k];
  started_list[k] = started_list[--n_started_list];
  complete(q, i, t);
}

static void report(const char *name, size_t n, const struct timing *t) {
  printf("%-7s N=%-6zu total %8.3f ms  submit %8.3f ms  complete %8.3f ms  "
         "per completion %8.3f us (worst %8.3f ms)\n",
         name, n, (t->submit + t->done) * 1e3, t->submit * 1e3, t->done * 1e3,
         t->completions ? t->done / (double)t->completions * 1e6 : 0.0, t->worst_done * 1e3);
}

static int bench_worst(size_t n) {
  struct queue q;
  struct timing t = {0};
  queue_init(&q);
  n_started_list = 0;
  memset(started, 0, n);
  const uint64_t span = UINT64_C(256) << 20;
  submit(&q, 0, QUEUE_WRITE, 0, span, &t);
  for (size_t i = 1; i < n; i++) {
    uint64_t off = (next_rand() % (span / 4096)) * 4096;
    submit(&q, i, QUEUE_READ, off, 4096, &t);
  }
  if (n_started_list != 1) {
    fprintf(stderr, "queue-bench: worst: %zu requests started, expected 1\n", n_started_list);
    return 1;
  }
  for (size_t i = 0; i < n; i++) {
    if (!started[i]) {
      fprintf(stderr, "queue-bench: worst: request %zu never started\n", i);
      return 1;
    }
    /* Submission order: the WRITE_ZEROES first, which starts all the rest. */
    complete(&q, i, &t);
  }
  if (!queue_empty(&q)) {
    fprintf(stderr, "queue-bench: worst: queue not empty at the end\n");
    return 1;
  }
  report("worst", n, &t);
  return 0;
}

static int bench_mixed(size_t n, size_t depth) {
  struct queue q;
  struct timing t = {0};
  queue_init(&q);
  n_started_list = 0;
  memset(started, 0, n);
  const uint64_t disk = UINT64_C(4) << 30;
  size_t in_queue = 0;
  for (size_t i = 0; i < n; i++) {
    while (in_queue >= depth) {
      if (n_started_list == 0) {
        fprintf(stderr, "queue-bench: mixed: %zu waiting, none running\n", in_queue);
        return 1;
      }
      complete_started(&q, next_rand() % n_started_list, &t);
      in_queue--;
    }
    unsigned r = (unsigned)(next_rand() % 64);
    enum queue_kind kind = r == 0 ? QUEUE_FLUSH : r < 40 ? QUEUE_READ : QUEUE_WRITE;
    uint64_t len = (UINT64_C(4096) << (next_rand() % 9)); /* 4 KiB .. 1 MiB */
    if (kind == QUEUE_WRITE && r >= 60)
      len = (1 + next_rand() % 64) << 20; /* WRITE_ZEROES, TRIM */
    uint64_t off = (next_rand() % ((disk - len) / 4096)) * 4096;
    if (kind == QUEUE_FLUSH)
      off = len = 0;
    submit(&q, i, kind, off, len, &t);
    in_queue++;
  }
  while (in_queue > 0) {
    if (n_started_list == 0) {
      fprintf(stderr, "queue-bench: mixed: %zu waiting, none running\n", in_queue);
      return 1;
    }
    complete_started(&q, next_rand() % n_started_list, &t);
    in_queue--;
  }
  if (!queue_empty(&q)) {
    fprintf(stderr, "queue-bench: mixed: queue not empty at the end\n");
    return 1;
  }
  report("mixed", n, &t);
  return 0;
}

/* Records held and bytes of record arrays, summed over every request. */
static void count_records(size_t n, uint64_t *records, uint64_t *bytes) {
  *records = *bytes = 0;
  for (size_t i = 0; i < n; i++) {
    *records += items[i].n_waiters;
    *bytes += (uint64_t)items[i].cap_waiters * sizeof *items[i].waiters;
  }
}

static int bench_hostile(size_t n) {
  struct queue q;
  struct timing t = {0};
  queue_init(&q);
  n_started_list = 0;
  memset(started, 0, n);
  size_t writes = n / 2;
  for (size_t i = 0; i < writes; i++)
    submit(&q, i, QUEUE_WRITE, (uint64_t)i * 8192, 4096, &t);
  if (n_started_list != writes) {
    fprintf(stderr, "queue-bench: hostile: %zu of %zu writes started\n", n_started_list, writes);
    return 1;
  }
  for (size_t i = writes; i < n; i++)
    submit(&q, i, QUEUE_READ, 0, (uint64_t)writes * 8192, &t);
  uint64_t records, bytes;
  count_records(n, &records, &bytes);
  while (n_started_list > 0)
    complete_started(&q, next_rand() % n_started_list, &t);
  for (size_t i = 0; i < n; i++) {
    if (!started[i]) {
      fprintf(stderr, "queue-bench: hostile: request %zu never started\n", i);
      return 1;
    }
  }
  if (!queue_empty(&q)) {
    fprintf(stderr, "queue-bench: hostile: queue not empty at the end\n");
    return 1;
  }
  report("hostile", n, &t);
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  printf("        %" PRIu64 " records held, %" PRIu64 " bytes of record arrays, "
         "peak RSS %ld KiB\n",
         records, bytes, ru.ru_maxrss);
  return 0;
}

int main(int argc, char **argv) {
  size_t n = argc > 1 ? strtoul(argv[1], NULL, 10) : 65536;
  size_t depth = argc > 2 ? strtoul(argv[2], NULL, 10) : 4096;
  if (n < 1 || depth < 1) {
    fprintf(stderr,
            "usage: queue-bench [N [depth [worst|mixed|hostile]]] (N, depth at least 1)\n");
    return 2;
  }
  const char *only = argc > 3 ? argv[3] : "";
  if (*only && strcmp(only, "worst") && strcmp(only, "mixed") && strcmp(only, "hostile")) {
    fprintf(stderr, "queue-bench: unknown case %s (worst, mixed or hostile)\n", only);
    return 2;
  }
  items = calloc(n, sizeof *items);
  started = calloc(n, 1);
  started_list = calloc(n, sizeof *started_list);
  if (!items || !started || !started_list) {
    fprintf(stderr, "queue-bench: out of memory for %zu requests\n", n);
    return 1;
  }
  int rc = 0;
  if (!*only || !strcmp(only, "worst"))
    rc = bench_worst(n);
  if (!rc && (!*only || !strcmp(only, "mixed")))
    rc = bench_mixed(n, depth);
  if (!rc && (!*only || !strcmp(only, "hostile")))
    rc = bench_hostile(n);
  free(items);
  free(started);
  free(started_list);
  return rc;
}
