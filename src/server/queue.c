#include "config.h"

#include "queue.h"

#include <stddef.h>

void queue_init(struct queue *q) {
  q->head = q->tail = NULL;
  q->running = q->waiting = 0;
}

bool queue_empty(const struct queue *q) { return q->head == NULL; }

static bool overlaps(const struct queue_item *a, const struct queue_item *b) {
  return a->off < b->end && b->off < a->end;
}

/* Must `later` wait for `earlier`?  The rules of queue.h. */
static bool conflicts(const struct queue_item *earlier, const struct queue_item *later) {
  switch (later->kind) {
  case QUEUE_WRITE:
    return earlier->kind != QUEUE_FLUSH && overlaps(earlier, later);
  case QUEUE_READ:
    return earlier->kind == QUEUE_WRITE && overlaps(earlier, later);
  case QUEUE_FLUSH:
    return earlier->kind == QUEUE_WRITE;
  }
  return true;
}

static bool may_start(const struct queue_item *item) {
  for (const struct queue_item *e = item->prev; e; e = e->prev)
    if (conflicts(e, item))
      return false;
  return true;
}

bool queue_may_start_now(const struct queue *q, const struct queue_item *item) {
  for (const struct queue_item *e = q->tail; e; e = e->prev)
    if (conflicts(e, item))
      return false;
  return true;
}

static void start(struct queue *q, struct queue_item *item) {
  item->running = true;
  q->running++;
  item->start(item);
}

void queue_submit(struct queue *q, struct queue_item *item) {
  item->running = false;
  item->next = NULL;
  item->prev = q->tail;
  if (q->tail)
    q->tail->next = item;
  else
    q->head = item;
  q->tail = item;
  if (may_start(item)) {
    start(q, item);
  } else {
    q->waiting++;
  }
}

void queue_done(struct queue *q, struct queue_item *item) {
  if (item->prev)
    item->prev->next = item->next;
  else
    q->head = item->next;
  if (item->next)
    item->next->prev = item->prev;
  else
    q->tail = item->prev;
  item->prev = item->next = NULL;
  if (item->running)
    q->running--;
  else
    q->waiting--;
  if (q->waiting == 0)
    return;
  /* start() may complete synchronously only through the loop, never inside
   * this call, so the list is stable while we walk it. */
  for (struct queue_item *w = q->head; w; w = w->next) {
    if (!w->running && may_start(w)) {
      q->waiting--;
      start(q, w);
    }
  }
}
