#include "config.h"

#include "workers.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Idle workers wait on their own condition variable, in a stack: the
 * worker woken is the one that went idle last, whose stack and CPU caches
 * are still warm.  With one shared condition variable the wake-ups rotate
 * over every thread, and each request paid for waking a cold one. */
struct worker {
  pthread_t thread;
  pthread_cond_t wake;
  struct worker *next_idle;
  bool woken;
};

/* Where finished items go back to: one per event loop. */
struct work_home {
  uv_async_t async;
  /* Items run, waiting for the loop (LIFO; reversed when taken). */
  pthread_mutex_t done_lock;
  struct work_item *done;
  /* The loop's thread only. */
  unsigned outstanding;
};

static struct {
  struct work_home main_home;
  struct worker *workers;
  unsigned n_workers;
  /* Items waiting for a worker (FIFO), idle workers, under lock. */
  pthread_mutex_t lock;
  struct work_item *head, *tail;
  struct worker *idle;
  bool stop;
} wp = {
    .main_home = {.done_lock = PTHREAD_MUTEX_INITIALIZER},
    .lock = PTHREAD_MUTEX_INITIALIZER,
};

static struct work_home *home_of(const struct work_item *w) {
  return w->home ? w->home : &wp.main_home;
}

static void *worker_main(void *arg) {
  struct worker *self = arg;
  pthread_mutex_lock(&wp.lock);
  for (;;) {
    if (!wp.head) {
      if (wp.stop)
        break;
      self->woken = false;
      self->next_idle = wp.idle;
      wp.idle = self;
      /* Whoever sets woken has taken us off the idle stack. */
      while (!self->woken)
        pthread_cond_wait(&self->wake, &wp.lock);
      continue;
    }
    struct work_item *w = wp.head;
    wp.head = w->next;
    if (!wp.head)
      wp.tail = NULL;
    while (w) {
      pthread_mutex_unlock(&wp.lock);
      struct work_serial *serial = w->serial;
      w->run(w);

      /* The serial's next item, if any, is ours (it stays busy).  Settled
       * before the loop can see w done: from then on the serial's owner
       * may be gone (an export closed at exit). */
      struct work_item *next = NULL;
      if (serial) {
        pthread_mutex_lock(&wp.lock);
        next = serial->head;
        if (next) {
          serial->head = next->next;
          if (!serial->head)
            serial->tail = NULL;
        } else {
          serial->busy = false;
        }
        pthread_mutex_unlock(&wp.lock);
      }

      struct work_home *h = home_of(w);
      pthread_mutex_lock(&h->done_lock);
      w->next = h->done;
      h->done = w;
      /* Coalesced by libuv: one wake-up however many items finish.  Sent
       * under the lock so the loop cannot finish this item, see nothing
       * outstanding and close the handle before the send. */
      uv_async_send(&h->async);
      pthread_mutex_unlock(&h->done_lock);

      pthread_mutex_lock(&wp.lock);
      w = next;
    }
  }
  pthread_mutex_unlock(&wp.lock);
  return NULL;
}

/* Takes the most recently idle worker off the stack; under wp.lock. */
static struct worker *idle_pop(void) {
  struct worker *k = wp.idle;
  if (k) {
    wp.idle = k->next_idle;
    k->woken = true;
  }
  return k;
}

static void on_async(uv_async_t *handle) {
  struct work_home *h = (struct work_home *)((char *)handle - offsetof(struct work_home, async));
  pthread_mutex_lock(&h->done_lock);
  struct work_item *list = h->done;
  h->done = NULL;
  pthread_mutex_unlock(&h->done_lock);
  /* Oldest first. */
  struct work_item *rev = NULL;
  while (list) {
    struct work_item *next = list->next;
    list->next = rev;
    rev = list;
    list = next;
  }
  while (rev) {
    struct work_item *w = rev;
    rev = w->next;
    workers_release(h);
    w->done(w);
  }
}

/* Workers run as SCHED_BATCH: a worker the loop wakes then does not
 * preempt the loop, which goes on reading and dispatching the requests it
 * has in hand, so the worker finds several waiting when it runs and sleeps
 * less often.  Under 4k WRITEs at QD16 that cut the context switches a
 * request costs from about 0.7 to 0.4 and the server's CPU per GiB by about
 * a quarter, and on this 2-CPU machine bought 10-30 % more IOPS
 * (bench/RESULTS.md).  On a machine with idle CPUs the worker starts at
 * once on another one either way.  The policy is a hint: where it is
 * refused (a seccomp filter without sched_setscheduler) the workers simply
 * stay SCHED_OTHER. */
static void worker_name_and_policy(struct worker *k, unsigned i, bool batch) {
  char name[32];
  snprintf(name, sizeof name, "vhdnbd-io%u", i);
  name[15] = '\0'; /* the kernel's limit for a thread name */
  pthread_setname_np(k->thread, name);
  if (!batch)
    return;
  struct sched_param sp = {.sched_priority = 0};
  int r = pthread_setschedparam(k->thread, SCHED_BATCH, &sp);
  if (r != 0 && i == 0)
    log_msg(LOG_LEVEL_INFO, "worker threads stay SCHED_OTHER: SCHED_BATCH refused: %s",
            strerror(r));
}

int workers_start(uv_loop_t *loop, unsigned n, bool batch) {
  int r = uv_async_init(loop, &wp.main_home.async, on_async);
  if (r < 0)
    return r;
  uv_unref((uv_handle_t *)&wp.main_home.async);
  wp.workers = calloc(n, sizeof *wp.workers);
  if (!wp.workers)
    return -ENOMEM;
  for (unsigned i = 0; i < n; i++) {
    struct worker *k = &wp.workers[i];
    pthread_cond_init(&k->wake, NULL);
    r = pthread_create(&k->thread, NULL, worker_main, k);
    if (r != 0) {
      pthread_cond_destroy(&k->wake);
      workers_stop();
      return -r;
    }
    wp.n_workers++;
    worker_name_and_policy(k, i, batch);
  }
  return 0;
}

int workers_home_open(uv_loop_t *loop, struct work_home **out) {
  struct work_home *h = calloc(1, sizeof *h);
  if (!h)
    return -ENOMEM;
  pthread_mutex_init(&h->done_lock, NULL);
  int r = uv_async_init(loop, &h->async, on_async);
  if (r < 0) {
    pthread_mutex_destroy(&h->done_lock);
    free(h);
    return r;
  }
  uv_unref((uv_handle_t *)&h->async);
  *out = h;
  return 0;
}

void workers_home_free(struct work_home *home) {
  if (!home)
    return;
  pthread_mutex_destroy(&home->done_lock);
  free(home);
}

void workers_hold(struct work_home *home) {
  struct work_home *h = home ? home : &wp.main_home;
  if (h->outstanding++ == 0)
    uv_ref((uv_handle_t *)&h->async);
}

void workers_release(struct work_home *home) {
  struct work_home *h = home ? home : &wp.main_home;
  if (--h->outstanding == 0)
    uv_unref((uv_handle_t *)&h->async);
}

void workers_enqueue(struct work_serial *s, struct work_item *w) {
  w->next = NULL;
  w->serial = s;
  pthread_mutex_lock(&wp.lock);
  if (s && s->busy) {
    /* Its worker will take it when the one before is done. */
    if (s->tail)
      s->tail->next = w;
    else
      s->head = w;
    s->tail = w;
    pthread_mutex_unlock(&wp.lock);
    return;
  }
  if (s)
    s->busy = true;
  if (wp.tail)
    wp.tail->next = w;
  else
    wp.head = w;
  wp.tail = w;
  struct worker *k = idle_pop();
  pthread_mutex_unlock(&wp.lock);
  /* After the unlock, so the woken worker does not block on the mutex. */
  if (k)
    pthread_cond_signal(&k->wake);
}

void workers_submit(struct work_item *w) {
  workers_hold(w->home);
  workers_enqueue(NULL, w);
}

void workers_stop(void) {
  pthread_mutex_lock(&wp.lock);
  wp.stop = true;
  struct worker *k;
  while ((k = idle_pop()))
    pthread_cond_signal(&k->wake);
  pthread_mutex_unlock(&wp.lock);
  for (unsigned i = 0; i < wp.n_workers; i++) {
    pthread_join(wp.workers[i].thread, NULL);
    pthread_cond_destroy(&wp.workers[i].wake);
  }
  free(wp.workers);
  wp.workers = NULL;
  wp.n_workers = 0;
}
