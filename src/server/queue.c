#include "config.h"

#include "queue.h"

#include <errno.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>

/* Why the dependency records below are enough (queue.h states the rules):
 * an item starts once every item it recorded itself with has completed.
 * Those are the earlier items in the trees that conflict with it.  An
 * earlier conflicting item c missing from the trees was covered by a later
 * WRITE-kind item w (c's range inside w's, and so on up to one still in the
 * tree), which conflicts with the new item as well and waited for c
 * directly; w completing means w started, which means c had completed.
 * A barrier (rule 5) records nothing and covers nothing: it waits for every
 * earlier item it could conflict with, so it needs no records, and items
 * it covers stay in the trees for later items to find. */

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
  struct queue *q;
  struct queue_item *item;
  struct queue_item *covered; /* list through uncover_next */
  unsigned n_found;
  struct queue_item *found[QUEUE_MAX_RECORDS]; /* recorded with, so far */
};

/* wait_for_overlaps found more than QUEUE_MAX_RECORDS items to wait for. */
#define TOO_MANY_BLOCKERS 1

static int add_waiter(struct queue *q, struct queue_item *blocker, struct queue_item *w) {
  if (blocker->n_waiters == blocker->cap_waiters) {
    unsigned cap = blocker->cap_waiters ? blocker->cap_waiters * 2 : 4;
    if (cap < blocker->cap_waiters)
      return -ENOMEM;
    struct queue_item **p = QUEUE_REALLOC(blocker->waiters, cap * sizeof *p);
    if (!p)
      return -ENOMEM;
    blocker->waiters = p;
    q->record_slots += cap - blocker->cap_waiters;
    blocker->cap_waiters = cap;
  }
  blocker->waiters[blocker->n_waiters++] = w;
  q->records++;
  return 0;
}

/* Records s->item as waiting for every item of t overlapping it.  Returns 0,
 * a negative errno, or TOO_MANY_BLOCKERS (having stopped at once) when that
 * would take more than QUEUE_MAX_RECORDS records, so that a submission
 * costs O(QUEUE_MAX_RECORDS log N) however many items it overlaps. */
static int wait_for_overlaps(struct queue_item *t, struct submission *s) {
  const struct queue_item *it = s->item;
  if (!t || t->max_end <= it->off)
    return 0;
  int r = wait_for_overlaps(t->left, s);
  if (r != 0 || t->off >= it->end)
    return r;
  if (it->off < t->end) {
    if (s->n_found == QUEUE_MAX_RECORDS)
      return TOO_MANY_BLOCKERS;
    r = add_waiter(s->q, t, s->item);
    if (r < 0)
      return r;
    s->found[s->n_found++] = t;
    if (it->kind == QUEUE_WRITE && it->off <= t->off && t->end <= it->end) {
      t->uncover_next = s->covered;
      s->covered = t;
    }
  }
  return wait_for_overlaps(t->right, s);
}

/* Undoes wait_for_overlaps: the item is the last waiter of every item it
 * was recorded with. */
static void unwait(struct submission *s) {
  for (unsigned i = 0; i < s->n_found; i++)
    s->found[i]->n_waiters--;
  s->q->records -= s->n_found;
  s->n_found = 0;
}

/* ---- the queue ---- */

void queue_init(struct queue *q) {
  pthread_mutex_init(&q->lock, NULL);
  q->reads = q->writes = NULL;
  q->reads_head = q->reads_tail = NULL;
  q->writes_head = q->writes_tail = NULL;
  q->after_writes_head = q->after_writes_tail = NULL;
  q->after_all_head = q->after_all_tail = NULL;
  q->next_seq = 0;
  q->running = q->waiting = 0;
  q->records = q->record_slots = 0;
}

bool queue_empty(struct queue *q) {
  pthread_mutex_lock(&q->lock);
  bool empty = q->running == 0 && q->waiting == 0;
  pthread_mutex_unlock(&q->lock);
  return empty;
}

unsigned queue_waiting(struct queue *q) {
  pthread_mutex_lock(&q->lock);
  unsigned n = q->waiting;
  pthread_mutex_unlock(&q->lock);
  return n;
}

static bool may_start_now(const struct queue *q, const struct queue_item *item) {
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
  if (item->start)
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

static void barrier_push(struct queue_item **head, struct queue_item **tail,
                         struct queue_item *it) {
  it->barrier_next = NULL;
  if (*tail)
    (*tail)->barrier_next = it;
  else
    *head = it;
  *tail = it;
}

static struct queue_item *barrier_pop(struct queue_item **head, struct queue_item **tail) {
  struct queue_item *it = *head;
  *head = it->barrier_next;
  if (!*head)
    *tail = NULL;
  it->barrier_next = NULL;
  return it;
}

static uint64_t oldest(const struct queue_item *head) { return head ? head->seq : UINT64_MAX; }

/* Whether every item submitted before the FLUSH or barrier b, of the kinds
 * it waits for, has completed.  Items arrive in increasing seq, so once
 * true for b this stays true, and while false for b it is false for every
 * later one too. */
static bool barrier_ready(const struct queue *q, const struct queue_item *b) {
  uint64_t first = oldest(q->writes_head);
  if (b->kind == QUEUE_WRITE && oldest(q->reads_head) < first)
    first = oldest(q->reads_head);
  /* >=: a WRITE barrier is on the writes list itself. */
  return first >= b->seq;
}

/* Finds what a READ or WRITE item waits for; on success, covered items
 * leave the trees and the item enters its own.  An item that would need
 * too many records becomes a barrier instead. */
static int record_blockers(struct queue *q, struct queue_item *item) {
  struct submission s; /* not s = {...}: that would clear found[] every time */
  s.q = q;
  s.item = item;
  s.covered = NULL;
  s.n_found = 0;
  int r = wait_for_overlaps(q->writes, &s);
  if (r == 0 && item->kind == QUEUE_WRITE)
    r = wait_for_overlaps(q->reads, &s);
  if (r < 0) {
    unwait(&s);
    return r;
  }
  if (r == TOO_MANY_BLOCKERS) {
    unwait(&s);
    item->barrier = true;
    s.covered = NULL;
  } else {
    item->blockers = s.n_found;
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

static int submit(struct queue *q, struct queue_item *item) {
  item->running = false;
  item->barrier = false;
  item->in_tree = false;
  item->seq = q->next_seq;
  item->blockers = 0;
  item->waiters = NULL;
  item->n_waiters = item->cap_waiters = 0;
  item->left = item->right = item->uncover_next = NULL;
  item->prev = item->next = NULL;
  item->barrier_next = NULL;

  if (item->kind == QUEUE_FLUSH) {
    /* Every WRITE-kind item still in the queue came earlier. */
    q->next_seq++;
    if (q->writes_head) {
      barrier_push(&q->after_writes_head, &q->after_writes_tail, item);
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
  else
    append(&q->reads_head, &q->reads_tail, item);
  if (item->barrier) {
    /* Never ready yet: the items it overlapped are earlier and unfinished. */
    if (item->kind == QUEUE_WRITE)
      barrier_push(&q->after_all_head, &q->after_all_tail, item);
    else
      barrier_push(&q->after_writes_head, &q->after_writes_tail, item);
    q->waiting++;
  } else if (item->blockers == 0) {
    start(q, item);
  } else {
    q->waiting++;
  }
  return 0;
}

int queue_submit(struct queue *q, struct queue_item *item) {
  pthread_mutex_lock(&q->lock);
  int r = submit(q, item);
  pthread_mutex_unlock(&q->lock);
  return r;
}

bool queue_may_start_now(struct queue *q, const struct queue_item *item) {
  pthread_mutex_lock(&q->lock);
  bool now = may_start_now(q, item);
  pthread_mutex_unlock(&q->lock);
  return now;
}

bool queue_start_now(struct queue *q, struct queue_item *item) {
  pthread_mutex_lock(&q->lock);
  bool taken = may_start_now(q, item);
  if (taken) {
    queue_start_fn fn = item->start;
    item->start = NULL; /* running once submitted, started by nobody */
    taken = submit(q, item) == 0;
    item->start = fn;
  }
  pthread_mutex_unlock(&q->lock);
  return taken;
}

/* Starts the FLUSHes and barriers submitted before seq whose earlier items
 * have all completed, in submission order.  Each list is in submission
 * order, so only its head needs a look. */
static void start_barriers_before(struct queue *q, uint64_t seq) {
  while (q->after_writes_head || q->after_all_head) {
    struct queue_item *w = q->after_writes_head, *a = q->after_all_head;
    if (w && (w->seq >= seq || !barrier_ready(q, w)))
      w = NULL;
    if (a && (a->seq >= seq || !barrier_ready(q, a)))
      a = NULL;
    if (!w && !a)
      return;
    struct queue_item *b;
    if (w && (!a || w->seq < a->seq))
      b = barrier_pop(&q->after_writes_head, &q->after_writes_tail);
    else
      b = barrier_pop(&q->after_all_head, &q->after_all_tail);
    q->waiting--;
    start(q, b);
  }
}

static void done(struct queue *q, struct queue_item *item) {
  if (item->in_tree) {
    if (item->kind == QUEUE_WRITE)
      q->writes = tree_remove(q->writes, item);
    else
      q->reads = tree_remove(q->reads, item);
    item->in_tree = false;
  }
  if (item->kind == QUEUE_WRITE)
    unlink_item(&q->writes_head, &q->writes_tail, item);
  else if (item->kind == QUEUE_READ)
    unlink_item(&q->reads_head, &q->reads_tail, item);
  item->running = false;
  q->running--;

  /* Start what this completion released in submission order, FLUSHes and
   * barriers included.  start() never completes an item inside this call
   * (a completion comes back through the loop), so the records are stable,
   * and since only a completion makes a FLUSH or barrier ready, when no
   * list head is ready now none will be in this call. */
  bool barriers = (q->after_writes_head && barrier_ready(q, q->after_writes_head)) ||
                  (q->after_all_head && barrier_ready(q, q->after_all_head));
  struct queue_item **waiters = item->waiters;
  unsigned n = item->n_waiters;
  q->records -= n;
  q->record_slots -= item->cap_waiters;
  item->waiters = NULL;
  item->n_waiters = item->cap_waiters = 0;
  for (unsigned i = 0; i < n; i++) {
    struct queue_item *w = waiters[i];
    if (barriers)
      start_barriers_before(q, w->seq);
    if (--w->blockers == 0) {
      q->waiting--;
      start(q, w);
    }
  }
  if (barriers)
    start_barriers_before(q, UINT64_MAX);
  free(waiters);
}

void queue_done(struct queue *q, struct queue_item *item) {
  pthread_mutex_lock(&q->lock);
  done(q, item);
  pthread_mutex_unlock(&q->lock);
}
