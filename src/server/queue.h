/* queue.h: the per-export serializing queue between the loop and the workers.
 *
 * Every request that touches an export's image passes through its export's
 * queue, whatever connection it came from (all connections share one vhd_t,
 * which is what makes NBD_FLAG_CAN_MULTI_CONN truthful).  The queue only
 * decides *when* a request may start, and starts requests through their
 * start callback (which hands them to a worker thread).  Its functions may
 * be called from any thread: each holds the queue's lock, and start
 * callbacks run under it, so they must not call into the queue again.
 *
 * Rules, applied against every earlier request still in the queue (running
 * or waiting), in submission order:
 *   1. A WRITE-kind request (WRITE, WRITE_ZEROES, TRIM) waits for every
 *      earlier request whose byte range overlaps its own.  The engine leaves
 *      concurrent overlapping writes, and a read racing a write, unspecified;
 *      clients expect them in order.
 *      (A spliced READ (splice.h) completes here once its pages are in a
 *      pipe; until the client has read them, a WRITE that waited for it
 *      may still change bytes of its reply: see --no-splice in vhdnbd(8).)
 *   2. A READ-kind request (READ, BLOCK_STATUS) waits for every earlier
 *      overlapping WRITE-kind request; reads never wait for reads.
 *   3. A FLUSH waits for every earlier WRITE-kind request, whatever its
 *      range.  vhd_flush only covers writes completed before it starts, and
 *      NBD requires a flush to cover every write already answered, so waiting
 *      for every write *submitted* earlier is sufficient (and simple).
 *      Later requests do not wait for the flush.
 *   4. Everything else runs in parallel.
 * Waiting behind an earlier *waiting* request keeps overlapping requests in
 * arrival order, so a write can never overtake an earlier conflicting write.
 * Two ranges overlap when each starts before the other ends, so an empty
 * range [x, x) overlaps only a range with x strictly inside it.
 *   5. A READ- or WRITE-kind request that would have to wait directly for
 *      more than QUEUE_MAX_RECORDS earlier requests becomes a barrier
 *      (item->barrier): it starts once every earlier request of the kinds
 *      it conflicts with has completed, whatever their ranges (every
 *      WRITE-kind request for a READ, every READ- and WRITE-kind request
 *      for a WRITE), as a FLUSH does.  It may wait longer than the rules
 *      above require, never less, and only for requests submitted before
 *      it, so it cannot wait forever.
 *
 * Cost: tens of thousands of requests may wait at once (one long
 * WRITE_ZEROES with small READs behind it is enough), so nothing here walks
 * the whole queue.  A submission finds the requests it must wait for in an
 * interval tree and records itself with each of them; a completion starts
 * only the requests that waited for it.  A request that a later WRITE-kind
 * request covers entirely leaves the tree: whatever would conflict with it
 * conflicts with the covering request too, which waits for it.  So a
 * submission costs O(log N) per request it waits for directly, a completion
 * O(log N) plus O(1) per request recorded with it, and FLUSHes O(1).  A
 * record is one pointer: repeated writes to one range hold one each, and
 * rule 5 caps what one request holds, so that many wide READs behind many
 * small disjoint writes, which would hold one record per (read, write)
 * pair, hold none: the queue's memory stays O(N) whatever the requests'
 * shape.  Barriers and FLUSHes wait in submission order against the oldest
 * unfinished request of each kind, so starting them costs O(1) each, and a
 * completion O(1) more.
 */
#ifndef VHDNBD_QUEUE_H
#define VHDNBD_QUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pthread.h>

/* The most dependency records one request may hold (rule 5).  A record is
 * a pointer in the array of the request waited for, so one request costs at
 * most 64 x 8 = 512 bytes of them (twice that with the arrays' slack): a
 * connection's 512 requests in flight hold at most 256 KiB, against the
 * 64 MiB of payload it may have buffered, and 65536 requests (128
 * connections) at most 32 MiB, whatever their shape.  Conflicting with
 * more than 64 requests still unfinished is rare for real clients (a 1 MiB
 * read right behind sixty-five 4 KiB writes into it, a long WRITE_ZEROES
 * over a busy region); such a request already waits for the slowest of
 * them, and waiting for the other earlier requests of those kinds as well
 * costs it little more.  A smaller bound turned most long WRITE_ZEROES of
 * queue-bench's random mix into barriers (bench/RESULTS.md). */
#define QUEUE_MAX_RECORDS 64

enum queue_kind {
  QUEUE_READ,
  QUEUE_WRITE,
  QUEUE_FLUSH,
};

struct queue_item;
typedef void (*queue_start_fn)(struct queue_item *item);

/* The caller sets kind, off, end and start; the rest belongs to the queue
 * (tests read barrier). */
struct queue_item {
  enum queue_kind kind;
  uint64_t off, end; /* [off, end) */
  queue_start_fn start;

  bool running;
  bool barrier;      /* waits under rule 5, holding no records */
  bool in_tree;      /* in the interval tree of its kind */
  uint64_t seq;      /* submission order */
  unsigned blockers; /* unfinished requests it still waits for directly */
  /* Requests waiting for this one, in submission order. */
  struct queue_item **waiters;
  unsigned n_waiters, cap_waiters;
  /* Interval tree (a treap keyed by off, then seq). */
  struct queue_item *left, *right;
  uint64_t max_end; /* largest end in this subtree */
  struct queue_item *uncover_next; /* list of items a submission covers */
  /* Unfinished items of its kind (READ or WRITE), in submission order. */
  struct queue_item *prev, *next;
  /* Waiting FLUSHes and barriers, in submission order. */
  struct queue_item *barrier_next;
};

struct queue {
  pthread_mutex_t lock; /* taken by every queue_* call */
  struct queue_item *reads, *writes; /* interval trees */
  /* Every unfinished READ-kind and WRITE-kind item. */
  struct queue_item *reads_head, *reads_tail;
  struct queue_item *writes_head, *writes_tail;
  /* Waiting FLUSHes and READ barriers, which wait for every earlier
   * WRITE-kind item; waiting WRITE barriers, which wait for every earlier
   * READ- and WRITE-kind item. */
  struct queue_item *after_writes_head, *after_writes_tail;
  struct queue_item *after_all_head, *after_all_tail;
  uint64_t next_seq;
  unsigned running, waiting;
  /* Dependency records held, and slots allocated for them (tests, bench). */
  size_t records, record_slots;
};

void queue_init(struct queue *q);
/* Adds item; starts it at once (calling item->start) when nothing earlier
 * conflicts with it.  Returns 0, or -ENOMEM with the queue unchanged. */
int queue_submit(struct queue *q, struct queue_item *item);
/* Removes a finished item (one the queue started) and starts every waiting
 * item it unblocked. */
void queue_done(struct queue *q, struct queue_item *item);
bool queue_empty(struct queue *q);
/* Requests waiting to start (metrics). */
unsigned queue_waiting(struct queue *q);
/* Whether item, submitted now, would start at once (nothing in the queue
 * conflicts with it). */
bool queue_may_start_now(struct queue *q, const struct queue_item *item);
/* Submits item only if it would start at once, and then without calling
 * item->start: it is running, and the caller runs it and calls queue_done.
 * Returns whether it was submitted.  Lets a request that can be served on
 * the spot be served there, while later conflicting requests, from any
 * thread, wait for it as for any other. */
bool queue_start_now(struct queue *q, struct queue_item *item);

#endif
