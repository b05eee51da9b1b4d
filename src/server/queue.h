/* queue.h: the per-export serializing queue between the loop and the workers.
 *
 * Every request that touches an export's image passes through its export's
 * queue, whatever connection it came from (all connections share one vhd_t,
 * which is what makes NBD_FLAG_CAN_MULTI_CONN truthful).  The queue only
 * decides *when* a request may start; it runs on the loop thread, needs no
 * lock, and starts requests through their start callback (which hands them
 * to a worker thread).
 *
 * Rules, applied against every earlier request still in the queue (running
 * or waiting), in submission order:
 *   1. A WRITE-kind request (WRITE, WRITE_ZEROES, TRIM) waits for every
 *      earlier request whose byte range overlaps its own.  The engine leaves
 *      concurrent overlapping writes, and a read racing a write, unspecified;
 *      clients expect them in order.
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
 * record is one pointer: repeated writes to one range hold one each, but
 * each of many wide READs behind many small disjoint writes holds one per
 * write.
 */
#ifndef VHDNBD_QUEUE_H
#define VHDNBD_QUEUE_H

#include <stdbool.h>
#include <stdint.h>

enum queue_kind {
  QUEUE_READ,
  QUEUE_WRITE,
  QUEUE_FLUSH,
};

struct queue_item;
typedef void (*queue_start_fn)(struct queue_item *item);

/* The caller sets kind, off, end and start; the rest belongs to the queue. */
struct queue_item {
  enum queue_kind kind;
  uint64_t off, end; /* [off, end) */
  queue_start_fn start;

  bool running;
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
  /* Unfinished WRITE-kind items, or waiting FLUSHes, in submission order. */
  struct queue_item *prev, *next;
};

struct queue {
  struct queue_item *reads, *writes; /* interval trees */
  struct queue_item *writes_head, *writes_tail; /* every unfinished WRITE-kind item */
  struct queue_item *flushes_head, *flushes_tail; /* waiting FLUSHes */
  uint64_t next_seq;
  unsigned running, waiting;
};

void queue_init(struct queue *q);
/* Adds item; starts it at once (calling item->start) when nothing earlier
 * conflicts with it.  Returns 0, or -ENOMEM with the queue unchanged. */
int queue_submit(struct queue *q, struct queue_item *item);
/* Removes a finished item (one the queue started) and starts every waiting
 * item it unblocked. */
void queue_done(struct queue *q, struct queue_item *item);
bool queue_empty(const struct queue *q);
/* Whether item, submitted now, would start at once (nothing in the queue
 * conflicts with it).  Lets the caller run a request that completes on the
 * spot without queueing it. */
bool queue_may_start_now(const struct queue *q, const struct queue_item *item);

#endif
