/* loops.h: the event loops that serve the connections.
 *
 * The main loop (the process's default loop, on the main thread) accepts
 * every connection and negotiates it, and does everything that is not one
 * client's I/O: signals, reloads, overlays, metrics, the guard's counts.
 * With --loops N, N-1 more loops run on threads of their own.  A client on
 * a plain socket (TCP or Unix, no TLS, not --stdio) moves, once its
 * handshake is over, to the loop serving the fewest such clients, main
 * included, and stays there: reading its requests, dispatching them and
 * writing its replies.  One loop's thread does the socket I/O of every
 * client it serves, and the wake-ups of their threads; with several
 * loops, several CPUs share that work.
 *
 * What the loops share is locked where it lives: an export's queue
 * (queue.h), the workers (workers.h), the buffer pool, the metrics
 * counters.  What a loop owns (its connections, their budget, the replies
 * waiting for its flush) only its thread touches; another thread asks it
 * through its mailbox (loop_post), and a connection's end is reported to
 * the main loop the same way, which owns the export references and the
 * guard's accounting.
 */
#ifndef VHDNBD_LOOPS_H
#define VHDNBD_LOOPS_H

#include <stdbool.h>
#include <stdint.h>

#include <pthread.h>
#include <stdatomic.h>

#include <uv.h>

#include "workers.h"

#define LOOPS_MAX 64u

struct loop;
struct connection;

/* A function run on a loop's thread; embed it in whatever it is about. */
struct loop_msg {
  struct loop_msg *next;
  void (*fn)(struct loop *l, struct loop_msg *msg);
};

struct loop {
  uv_loop_t *uv;
  unsigned index;          /* 0: the main loop */
  struct work_home *home;  /* where its requests' completions come back */
  struct connection *conns; /* its connections, doubly linked */
  atomic_uint serving;     /* connections in transmission it serves or will */
  /* Connections with replies queued, written before the loop polls
   * (flush_prepare) and right after the poll's callbacks (flush_check). */
  struct connection *outq_head;
  uv_prepare_t flush_prepare;
  uv_check_t flush_check;
  uint64_t inline_bytes;   /* READ and WRITE bytes served on the loop this iteration */
  /* Bytes buffered for its connections, against its share of
   * --max-inflight (see conn-input.c). */
  uint64_t inflight_bytes;
  uint64_t max_inflight;
  bool inflight_blocked;   /* some connection stopped reading for the cap */
  uint64_t cap_pauses;     /* times the cap stopped reading, not yet logged */
  uint64_t cap_logged_ms;  /* uv_now of the last line about them, 0: none yet */
  uv_timer_t resume_timer; /* wakes every connection once below the cap */
  uv_timer_t guard_tick;   /* not the main loop: stalled payloads (guard.c) */
  /* Other loops only: the thread, and the mailbox. */
  pthread_t thread;
  uv_loop_t own;
  uv_async_t mail;
  pthread_mutex_t mail_lock;
  struct loop_msg *mail_head, *mail_tail;
};

/* Main thread, once: sets up n loops (the first on main_uv, whose
 * completions come back through main_home), starting a thread for each of
 * the others; the budget is shared out among them.  Returns 0 or a
 * negative errno (logged). */
int loops_start(uv_loop_t *main_uv, unsigned n, uint64_t max_inflight);
unsigned loops_count(void);
struct loop *loops_main(void);
/* The loop a connection whose transmission starts should be served by:
 * the one serving fewest, the others before the main loop; counted as
 * serving one more from now on. */
struct loop *loops_pick(void);
/* Any thread: runs msg->fn on l's thread, soon. */
void loop_post(struct loop *l, struct loop_msg *msg);
/* Main thread: runs fn(l, arg) on the thread of every loop but the main
 * one.  Returns how many could not be asked (out of memory; logged). */
unsigned loops_each_other(void (*fn)(struct loop *l, uintptr_t arg), uintptr_t arg);
/* The server's shutdown as connections arriving at a loop must see it:
 * 0 none, 1 clients drained, 2 clients closed.  Set by the main loop
 * before it asks the loops (so one arriving later sees it). */
void loops_set_shutdown(int level);
int loops_shutdown(void);
/* Main thread, once its loop has ended with no connection left: ends the
 * other loops and joins their threads. */
void loops_stop(void);
/* Main thread: whether the main loop must stay alive for the news of
 * connections other loops serve (while there are any). */
void loops_main_wait(bool wait);
/* The main loop's own handles (flush hooks, resume timer, mailbox), once
 * nothing is left for them to do. */
void loops_close_handles(struct loop *l);

#endif
