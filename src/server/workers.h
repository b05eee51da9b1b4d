/* workers.h: the threads that do the image I/O.
 *
 * The loop hands a request to workers_submit and gets it back, on the loop
 * thread, through its done callback.  This replaces libuv's shared thread
 * pool, which on every hand-off woke a worker while still holding the queue
 * mutex (the worker then blocked again on that mutex) and kept a
 * per-request bookkeeping on the loop; with two CPUs and thousands of small
 * requests per second those context switches were a third of the server's
 * CPU time.  Here a worker is woken after the mutex is released, takes every
 * waiting item in turn before sleeping again, and completions reach the loop
 * through one uv_async that coalesces however many finished meanwhile.
 */
#ifndef VHDNBD_WORKERS_H
#define VHDNBD_WORKERS_H

#include <stdbool.h>

#include <uv.h>

struct work_serial;
struct work_home;

struct work_item {
  struct work_item *next;
  void (*run)(struct work_item *w);  /* on a worker thread */
  void (*done)(struct work_item *w); /* then on its home's loop thread */
  struct work_serial *serial;        /* set by workers_enqueue */
  /* Whose loop runs done: NULL is the loop given to workers_start.  Set
   * before the item is held or submitted. */
  struct work_home *home;
};

/* Items submitted to one serial run one at a time, in submission order; a
 * worker that finishes one goes straight on to the next, with no trip
 * through the loop and no wake-up.  Zero-initialized before first use. */
struct work_serial {
  struct work_item *head, *tail; /* waiting, under the pool's lock */
  bool busy;
};

/* Starts n threads serving loop, named vhdnbd-io0, vhdnbd-io1, ...; with
 * batch, under the SCHED_BATCH policy where the system allows it (see
 * workers.c).  Returns 0 or a negative errno. */
int workers_start(uv_loop_t *loop, unsigned n, bool batch);
/* Where items of another loop's requests come back: that loop's thread,
 * before it runs.  Its handle is closed with the loop's others; free it
 * with workers_home_free once that loop has ended.  Returns 0 or a
 * negative errno. */
int workers_home_open(uv_loop_t *loop, struct work_home **out);
void workers_home_free(struct work_home *home);

/* The home's loop thread: holds w's place (workers_hold) and enqueues it. */
void workers_submit(struct work_item *w);
/* A home's loop thread.  While any item is held for a home its loop stays
 * alive (the handle is referenced only then; closing it is left to whoever
 * closes every handle of the loop).  Every item enqueued must have been
 * held for its home, and its done releases that hold; workers_release
 * gives one back for an item that will never be enqueued. */
void workers_hold(struct work_home *home);
void workers_release(struct work_home *home);
/* Any thread (a queue may start the request of another loop's
 * connection): w, held already, waits for a worker; with s, after every
 * item enqueued on s before it. */
void workers_enqueue(struct work_serial *s, struct work_item *w);
/* Joins the threads, once the loop has stopped with nothing outstanding. */
void workers_stop(void);

#endif
