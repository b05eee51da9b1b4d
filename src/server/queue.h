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
 * Empty ranges overlap nothing.
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

struct queue_item {
  struct queue_item *prev, *next;
  enum queue_kind kind;
  uint64_t off, end; /* [off, end) */
  bool running;
  queue_start_fn start;
};

struct queue {
  struct queue_item *head, *tail;
  unsigned running, waiting;
};

void queue_init(struct queue *q);
/* Adds item; starts it at once (calling item->start) when nothing earlier
 * conflicts with it. */
void queue_submit(struct queue *q, struct queue_item *item);
/* Removes a finished item and starts every waiting item it unblocked. */
void queue_done(struct queue *q, struct queue_item *item);
bool queue_empty(const struct queue *q);
/* Whether item, submitted now, would start at once (nothing in the queue
 * conflicts with it).  Lets the caller run a request that completes on the
 * spot without queueing it. */
bool queue_may_start_now(const struct queue *q, const struct queue_item *item);

#endif
