/* lanes.h: whether an export's plain WRITEs use all their lanes or one.
 *
 * A buffered write holds the file's inode lock for its whole length, so
 * two writes to one file never run inside the kernel at once; what lanes
 * buy is the work around that lock (the worker's own steps, the system
 * call's entry and exit) done in parallel.  That pays while writes are
 * short.  When each write holds the lock long (4k writes into 2 MiB page
 * cache folios of a file read through, about 20-30 us each on the machine
 * of bench/RESULTS.md, against 3 us with the cache dropped), a second lane
 * can only sleep on the lock and be woken: one lane measured 1.3-1.5x the
 * IOPS of two there and used less CPU, while with short writes two lanes
 * beat one.  So the workers time each lane WRITE, and the loop sends the
 * writes to one lane while the recent ones were long, to all again once
 * they are short, with a gap between the two thresholds so that a mix near
 * one of them does not flip the choice back and forth.
 *
 * Which lanes a write may take never matters for correctness (the queue
 * orders overlapping requests); only for speed.
 */
#ifndef VHDNBD_LANES_H
#define VHDNBD_LANES_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* Writes longer than this on average, in nanoseconds, narrow the lanes to
 * one; shorter than LANES_WIDEN_NS widen them again. */
#define LANES_NARROW_NS 16000u
#define LANES_WIDEN_NS 8000u

/* Embedded in struct export (no allocation); zero-initialized it is wide
 * with no history.  avg_ns is written by workers and read by the loops,
 * narrow by whichever loop starts a write (two at once decide alike, or
 * one write later). */
struct lane_policy {
  _Atomic uint32_t avg_ns; /* moving average of the lane WRITEs' durations */
  _Atomic bool narrow;     /* writes go to one lane */
  bool fixed;              /* never narrow (VHDNBD_ADAPTIVE_LANES=0) */
};

/* A lane WRITE took ns nanoseconds (any thread).  Each write weighs an
 * eighth in the average, so a single slow write (a page fault, a
 * preemption) does not narrow the lanes; about eight long ones in a row
 * do, and as many short ones widen them again. */
void lane_policy_note(struct lane_policy *p, uint64_t ns);

/* Whether the next write goes to one lane (any loop's thread): updates the
 * choice from the average, with the hysteresis above. */
bool lane_policy_narrow(struct lane_policy *p);

#endif
