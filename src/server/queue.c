#include "config.h"

#include "queue.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>

/* Why the dependency records below are enough (queue.h states the rules):
 * an item starts once every item it recorded itself with has completed.
 * Those are the earlier items in the trees that conflict with it.  An
 * earlier conflicting item c missing from the trees was covered by a later
 * WRITE-kind item w (c's range inside w's, and so on up to one still in the
 * tree), which conflicts with the new item as well and waited for c
 * directly; w completing means w started, which means c had completed. */

/* ---- interval trees ---- */

/* A treap: priorities come from the submission number, scrambled, so the
 * tree stays balanced whatever order the offsets arrive in. */
static uint64_t priority(const struct queue_item *it) {
  uint64_t z = it->seq + UINT64_C(0x9e3779b97f4a7c15);
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static bool key_less(const struct queue_item *a, const struct queue_item *b) {
  return a->off < b->off || (a->off == b->off && a->seq < b->seq);
}

static void update(struct queue_item *t) {
  uint64_t m = t->end;
  if (t->left && t->left->max_end > m)
    m = t->left->max_end;
  if (t->right && t->right->max_end > m)
    m = t->right->max_end;
  t->max_end = m;
}

static struct queue_item *rotate_right(struct queue_item *t) {
  struct queue_item *l = t->left;
  t->left = l->right;
  l->right = t;
  update(t);
  update(l);
  return l;
}

static struct queue_item *rotate_left(struct queue_item *t) {
  struct queue_item *r = t->right;
  t->right = r->left;
  r->left = t;
  update(t);
  update(r);
  return r;
}

static struct queue_item *tree_insert(struct queue_item *t, struct queue_item *n) {
  if (!t) {
    n->left = n->right = NULL;
    n->max_end = n->end;
    return n;
  }
  if (key_less(n, t)) {
    t->left = tree_insert(t->left, n);
    if (priority(t->left) > priority(t))
      return rotate_right(t);
  } else {
    t->right = tree_insert(t->right, n);
    if (priority(t->right) > priority(t))
      return rotate_left(t);
  }
  update(t);
  return t;
}

/* Joins two treaps, every key of a below every key of b. */
static struct queue_item *tree_join(struct queue_item *a, struct queue_item *b) {
  if (!a)
    return b;
  if (!b)
    return a;
  if (priority(a) > priority(b)) {
    a->right = tree_join(a->right, b);
    update(a);
    return a;
  }
  b->left = tree_join(a, b->left);
  update(b);
  return b;
}

static struct queue_item *tree_remove(struct queue_item *t, struct queue_item *n) {
  if (t == n)
    return tree_join(n->left, n->right);
  if (key_less(n, t))
    t->left = tree_remove(t->left, n);
  else
    t->right = tree_remove(t->right, n);
  update(t);
  return t;
}

/* Whether anything in t overlaps [off, end).  If the left subtree reaches
 * past off without overlapping, everything in it that does starts at or
 * after end, and so does everything to its right: no need to look there. */
static bool tree_any_overlap(const struct queue_item *t, uint64_t off, uint64_t end) {
  while (t) {
    if (t->off < end && off < t->end)
      return true;
    if (t->left && t->left->max_end > off)
      t = t->left;
    else if (t->off < end)
      t = t->right;
    else
      return false;
  }
  return false;
}

/* ---- dependency records ---- */

/* The unit test builds this file with an allocator that fails on demand. */
#ifdef QUEUE_REALLOC
void *QUEUE_REALLOC(void *p, size_t size);
#else
#define QUEUE_REALLOC realloc
#endif

struct submission {
  struct queue_item *item;
  struct queue_item *covered; /* list through uncover_next */
};

static int add_waiter(struct queue_item *blocker, struct queue_item *w) {
  if (blocker->n_waiters == blocker->cap_waiters) {
    unsigned cap = blocker->cap_waiters ? blocker->cap_waiters * 2 : 4;
    if (cap < blocker->cap_waiters)
      return -ENOMEM;
    struct queue_item **p = QUEUE_REALLOC(blocker->waiters, cap * sizeof *p);
    if (!p)
      return -ENOMEM;
    blocker->waiters = p;
    blocker->cap_waiters = cap;
  }
  blocker->waiters[blocker->n_waiters++] = w;
  return 0;
}

/* Records s->item as waiting for every item of t overlapping it. */
static int wait_for_overlaps(struct queue_item *t, struct submission *s) {
  const struct queue_item *it = s->item;
  if (!t || t->max_end <= it->off)
    return 0;
  int r = wait_for_overlaps(t->left, s);
  if (r < 0 || t->off >= it->end)
    return r;
  if (it->off < t->end) {
    r = add_waiter(t, s->item);
    if (r < 0)
      return r;
    s->item->blockers++;
    if (it->kind == QUEUE_WRITE && it->off <= t->off && t->end <= it->end) {
      t->uncover_next = s->covered;
      s->covered = t;
    }
  }
  return wait_for_overlaps(t->right, s);
}

/* Undoes wait_for_overlaps after a failure: the item is the last waiter of
 * every blocker it was recorded with. */
static void unwait_overlaps(struct queue_item *t, struct queue_item *it) {
  if (!t || t->max_end <= it->off)
    return;
  unwait_overlaps(t->left, it);
  if (t->off >= it->end)
    return;
  if (t->n_waiters && t->waiters[t->n_waiters - 1] == it)
    t->n_waiters--;
  unwait_overlaps(t->right, it);
}

/* ---- the queue ---- */

void queue_init(struct queue *q) {
  q->reads = q->writes = NULL;
  q->writes_head = q->writes_tail = NULL;
  q->flushes_head = q->flushes_tail = NULL;
  q->next_seq = 0;
  q->running = q->waiting = 0;
}

bool queue_empty(const struct queue *q) { return q->running == 0 && q->waiting == 0; }

bool queue_may_start_now(const struct queue *q, const struct queue_item *item) {
  switch (item->kind) {
  case QUEUE_FLUSH:
    return q->writes_head == NULL;
  case QUEUE_READ:
    return !tree_any_overlap(q->writes, item->off, item->end);
  case QUEUE_WRITE:
    return !tree_any_overlap(q->writes, item->off, item->end) &&
           !tree_any_overlap(q->reads, item->off, item->end);
  }
  return false;
}

static void start(struct queue *q, struct queue_item *item) {
  item->running = true;
  q->running++;
  item->start(item);
}

static void append(struct queue_item **head, struct queue_item **tail, struct queue_item *it) {
  it->next = NULL;
  it->prev = *tail;
  if (*tail)
    (*tail)->next = it;
  else
    *head = it;
  *tail = it;
}

static void unlink_item(struct queue_item **head, struct queue_item **tail, struct queue_item *it) {
  if (it->prev)
    it->prev->next = it->next;
  else
    *head = it->next;
  if (it->next)
    it->next->prev = it->prev;
  else
    *tail = it->prev;
  it->prev = it->next = NULL;
}

/* Finds what a READ or WRITE item waits for; on success, covered items
 * leave the trees and the item enters its own. */
static int record_blockers(struct queue *q, struct queue_item *item) {
  struct submission s = {.item = item, .covered = NULL};
  int r = wait_for_overlaps(q->writes, &s);
  if (r == 0 && item->kind == QUEUE_WRITE)
    r = wait_for_overlaps(q->reads, &s);
  if (r < 0) {
    unwait_overlaps(q->writes, item);
    if (item->kind == QUEUE_WRITE)
      unwait_overlaps(q->reads, item);
    item->blockers = 0;
    return r;
  }
  for (struct queue_item *c = s.covered; c; c = c->uncover_next) {
    if (c->kind == QUEUE_WRITE)
      q->writes = tree_remove(q->writes, c);
    else
      q->reads = tree_remove(q->reads, c);
    c->in_tree = false;
  }
  if (item->kind == QUEUE_WRITE)
    q->writes = tree_insert(q->writes, item);
  else
    q->reads = tree_insert(q->reads, item);
  item->in_tree = true;
  return 0;
}

int queue_submit(struct queue *q, struct queue_item *item) {
  item->running = false;
  item->in_tree = false;
  item->seq = q->next_seq;
  item->blockers = 0;
  item->waiters = NULL;
  item->n_waiters = item->cap_waiters = 0;
  item->left = item->right = item->uncover_next = NULL;
  item->prev = item->next = NULL;

  if (item->kind == QUEUE_FLUSH) {
    /* Every WRITE-kind item still in the queue came earlier. */
    q->next_seq++;
    if (q->writes_head) {
      append(&q->flushes_head, &q->flushes_tail, item);
      q->waiting++;
    } else {
      start(q, item);
    }
    return 0;
  }
  int r = record_blockers(q, item);
  if (r < 0)
    return r;
  q->next_seq++;
  if (item->kind == QUEUE_WRITE)
    append(&q->writes_head, &q->writes_tail, item);
  if (item->blockers == 0)
    start(q, item);
  else
    q->waiting++;
  return 0;
}

/* FLUSHes whose earlier writes have all completed, up to submission seq. */
static void start_flushes_before(struct queue *q, uint64_t seq) {
  while (q->flushes_head && q->flushes_head->seq < seq &&
         (!q->writes_head || q->flushes_head->seq < q->writes_head->seq)) {
    struct queue_item *f = q->flushes_head;
    unlink_item(&q->flushes_head, &q->flushes_tail, f);
    q->waiting--;
    start(q, f);
  }
}

void queue_done(struct queue *q, struct queue_item *item) {
  if (item->in_tree) {
    if (item->kind == QUEUE_WRITE)
      q->writes = tree_remove(q->writes, item);
    else
      q->reads = tree_remove(q->reads, item);
    item->in_tree = false;
  }
  if (item->kind == QUEUE_WRITE)
    unlink_item(&q->writes_head, &q->writes_tail, item);
  item->running = false;
  q->running--;

  /* Start what this completion released in submission order, FLUSHes
   * included.  start() never completes an item inside this call (a
   * completion comes back through the loop), so the records are stable. */
  struct queue_item **waiters = item->waiters;
  unsigned n = item->n_waiters;
  item->waiters = NULL;
  item->n_waiters = item->cap_waiters = 0;
  for (unsigned i = 0; i < n; i++) {
    struct queue_item *w = waiters[i];
    start_flushes_before(q, w->seq);
    if (--w->blockers == 0) {
      q->waiting--;
      start(q, w);
    }
  }
  start_flushes_before(q, UINT64_MAX);
  free(waiters);
}
