/* loops.c: the event loops and their mailboxes (see loops.h). */
#include "config.h"

#include "loops.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "server.h"

static struct loop *loops;
static unsigned n_loops;
static atomic_int shutdown_level;

void loops_set_shutdown(int level) { atomic_store(&shutdown_level, level); }

int loops_shutdown(void) { return atomic_load(&shutdown_level); }

unsigned loops_count(void) { return n_loops; }

struct loop *loops_main(void) { return &loops[0]; }

struct loop *loops_pick(void) {
  struct loop *best = &loops[0];
  unsigned least = atomic_load(&loops[0].serving);
  for (unsigned i = 1; i < n_loops; i++) {
    unsigned n = atomic_load(&loops[i].serving);
    /* A tie with the main loop goes to a loop that does not also negotiate. */
    if (n < least || (n == least && best == &loops[0])) {
      best = &loops[i];
      least = n;
    }
  }
  atomic_fetch_add(&best->serving, 1);
  return best;
}

static void on_flush_prepare(uv_prepare_t *h) {
  struct loop *l = h->data;
  conn_flush_all(l);
  l->inline_bytes = 0;
}

static void on_flush_check(uv_check_t *h) { conn_flush_all(h->data); }

void loop_post(struct loop *l, struct loop_msg *msg) {
  msg->next = NULL;
  pthread_mutex_lock(&l->mail_lock);
  if (l->mail_tail)
    l->mail_tail->next = msg;
  else
    l->mail_head = msg;
  l->mail_tail = msg;
  /* Under the lock, as workers.c does: the loop cannot end in between. */
  uv_async_send(&l->mail);
  pthread_mutex_unlock(&l->mail_lock);
}

static void on_mail(uv_async_t *h) {
  struct loop *l = h->data;
  pthread_mutex_lock(&l->mail_lock);
  struct loop_msg *msg = l->mail_head;
  l->mail_head = l->mail_tail = NULL;
  pthread_mutex_unlock(&l->mail_lock);
  while (msg) {
    struct loop_msg *next = msg->next;
    msg->fn(l, msg);
    msg = next;
  }
}

/* The hooks and the timer every loop has. */
static void init_common(struct loop *l, uint64_t max_inflight) {
  l->max_inflight = max_inflight;
  uv_timer_init(l->uv, &l->resume_timer);
  l->resume_timer.data = l;
  uv_prepare_init(l->uv, &l->flush_prepare);
  uv_check_init(l->uv, &l->flush_check);
  l->flush_prepare.data = l->flush_check.data = l;
  uv_prepare_start(&l->flush_prepare, on_flush_prepare);
  uv_check_start(&l->flush_check, on_flush_check);
  uv_unref((uv_handle_t *)&l->flush_prepare);
  uv_unref((uv_handle_t *)&l->flush_check);
}

void loops_main_wait(bool wait) {
  if (wait)
    uv_ref((uv_handle_t *)&loops[0].mail);
  else
    uv_unref((uv_handle_t *)&loops[0].mail);
}

void loops_close_handles(struct loop *l) {
  uv_handle_t *hs[] = {(uv_handle_t *)&l->resume_timer, (uv_handle_t *)&l->flush_prepare,
                       (uv_handle_t *)&l->flush_check, (uv_handle_t *)&l->mail};
  for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
    if (!uv_is_closing(hs[i]))
      uv_close(hs[i], NULL);
}

static void *loop_main(void *arg) {
  struct loop *l = arg;
  char name[16];
  snprintf(name, sizeof name, "vhdnbd-loop%u", l->index);
  pthread_setname_np(pthread_self(), name);
  uv_run(l->uv, UV_RUN_DEFAULT);
  return NULL;
}

static int open_mail(struct loop *l) {
  pthread_mutex_init(&l->mail_lock, NULL);
  l->mail.data = l;
  return uv_async_init(l->uv, &l->mail, on_mail);
}

static int start_other(struct loop *l, uint64_t max_inflight) {
  int r = uv_loop_init(&l->own);
  if (r < 0)
    return r;
  l->uv = &l->own;
  r = open_mail(l);
  if (r == 0)
    r = workers_home_open(l->uv, &l->home);
  if (r < 0)
    return r; /* the process ends */
  init_common(l, max_inflight);
  guard_loop_start(l);
  r = -pthread_create(&l->thread, NULL, loop_main, l);
  return r;
}

int loops_start(uv_loop_t *main_uv, unsigned n, uint64_t max_inflight) {
  loops = calloc(n, sizeof *loops);
  if (!loops)
    return -ENOMEM;
  /* Each loop buffers for its own connections: the total stays the cap. */
  uint64_t share = max_inflight / n ? max_inflight / n : 1;
  for (unsigned i = 0; i < n; i++) {
    loops[i].index = i;
    atomic_init(&loops[i].serving, 0);
  }
  loops[0].uv = main_uv;
  loops[0].home = NULL; /* workers_start's */
  int r = open_mail(&loops[0]);
  if (r < 0) {
    log_msg(LOG_LEVEL_ERR, "cannot set up the main event loop: %s", uv_strerror(r));
    return r;
  }
  /* Only while other loops serve connections (see loops_main_wait). */
  uv_unref((uv_handle_t *)&loops[0].mail);
  init_common(&loops[0], share);
  n_loops = 1;
  for (unsigned i = 1; i < n; i++) {
    r = start_other(&loops[i], share);
    if (r < 0) {
      log_msg(LOG_LEVEL_ERR, "cannot start event loop %u: %s", i, strerror(-r));
      return r;
    }
    n_loops++;
  }
  return 0;
}

struct each_msg {
  struct loop_msg msg;
  void (*fn)(struct loop *l, uintptr_t arg);
  uintptr_t arg;
};

static void run_each(struct loop *l, struct loop_msg *msg) {
  struct each_msg *m = (struct each_msg *)msg;
  m->fn(l, m->arg);
  free(m);
}

unsigned loops_each_other(void (*fn)(struct loop *l, uintptr_t arg), uintptr_t arg) {
  unsigned failed = 0;
  for (unsigned i = 1; i < n_loops; i++) {
    struct each_msg *m = malloc(sizeof *m);
    if (!m) {
      log_msg(LOG_LEVEL_ERR, "out of memory asking event loop %u", i);
      failed++;
      continue;
    }
    m->msg.fn = run_each;
    m->fn = fn;
    m->arg = arg;
    loop_post(&loops[i], &m->msg);
  }
  return failed;
}

static void close_walk(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h))
    uv_close(h, NULL);
}

/* Every connection is gone: nothing but the loop's own handles is left. */
static void end_loop(struct loop *l, uintptr_t arg) {
  (void)arg;
  guard_loop_stop(l);
  uv_walk(l->uv, close_walk, NULL);
}

void loops_stop(void) {
  if (loops_each_other(end_loop, 0) > 0)
    return; /* without the memory to ask them the threads stay: the process ends */
  for (unsigned i = 1; i < n_loops; i++) {
    pthread_join(loops[i].thread, NULL);
    uv_loop_close(loops[i].uv);
    workers_home_free(loops[i].home);
    pthread_mutex_destroy(&loops[i].mail_lock);
  }
  free(loops);
  loops = NULL;
  n_loops = 0;
}
