/* test-vhd-race: the engine keeps its "never corrupting" promise for
 * overlapping requests by itself, without the server's serializing queue.
 *
 * The danger is the gap between the engine choosing a file offset (under
 * the image lock) and its I/O there (without it): meanwhile another thread
 * may free the block (whole-block trim or write-zeroes), a flush may make
 * its space reusable and an allocation may hand that space to another
 * block.  A late write or punch would then land in the other block, a late
 * read would return its data.
 *
 * Every sector the test writes carries a tag naming its block and sector,
 * so wherever data lands it shows where it was meant to go.  The cases:
 *  - gap: one thread is held in that gap by the test VFS (before its
 *    pwrite, pread or punch) while the main thread trims the block,
 *    flushes and fills another block, which must keep its own data; the
 *    held request must see or leave only tags of its own block, or zeros.
 *  - hammer: threads overlap tagged writes, reads, whole-block trims and
 *    write-zeroes, partial zeroing and flushes on a few blocks, with the
 *    gap widened at random; each whole-block zeroing is followed by a
 *    write to another block, which takes freed space.  Every sector read
 *    must hold zeros or its own tag, a thread reading back its own sector
 *    with no whole-block zeroing in between must find what it wrote, and
 *    afterwards the image must check clean and hold exactly what a last
 *    sequential pass wrote.
 * After each case the file itself, read without the engine, must hold in
 * every block's data area only zeros and that block's own tags. */
#include "config.h"

#include <endian.h>
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"

#define BLOCK (64u * 1024)
#define SPB (BLOCK / 512) /* sectors per block */
#define NBLOCKS 16u
#define SIZE ((uint64_t)NBLOCKS * BLOCK)
#define HOT 8u /* the hammer works on blocks [0, HOT) */
#define NWORKERS 3u
#define HOLD_LIMIT_S 60 /* a held thread never waits longer (a deadlock guard) */

/* ---- tagged sectors ---- */

struct tag {
  char magic[8];
  uint32_t blk, sector, writer, seq;
};

/* The bytes after a tag depend on its block and sector only.  A read that
 * overlaps a write of the same sector may return part of each (the page
 * cache copies a write in while readers copy out, in pieces: a torn
 * sector, damaged at byte 64, 96 or 192 when the filler also depended on
 * the write's sequence number), which NBD allows for requests in flight
 * together; what must never show is another sector's bytes. */
static uint8_t filler(const struct tag *t, size_t i) {
  return (uint8_t)(t->blk * 7u + t->sector * 13u + i);
}

static void tag_sector(uint8_t *s, uint32_t blk, uint32_t sector, uint32_t writer, uint32_t seq) {
  struct tag t = {"vhdrace", blk, sector, writer, seq};
  memcpy(s, &t, sizeof t);
  for (size_t i = sizeof t; i < 512; i++)
    s[i] = filler(&t, i);
}

static bool all_zero(const uint8_t *s, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (s[i])
      return false;
  return true;
}

/* NULL when the sector at virtual sector vs holds zeros or its own tag,
 * else what it holds. */
static const char *sector_wrong(const uint8_t *s, uint64_t vs) {
  if (all_zero(s, 512))
    return NULL;
  struct tag t;
  memcpy(&t, s, sizeof t);
  if (memcmp(t.magic, "vhdrace", 8) != 0)
    return "bytes that are neither zeros nor a tag";
  for (size_t i = sizeof t; i < 512; i++)
    if (s[i] != filler(&t, i))
      return t_fmt("a damaged tag (byte %zu)", i);
  if (t.blk != vs / SPB || t.sector != vs % SPB)
    return t_fmt("the tag of block %u sector %u (writer %u, seq %u)", t.blk, t.sector, t.writer,
                 t.seq);
  return NULL;
}

static void check_range_tags(const uint8_t *buf, uint64_t off, size_t len, const char *when) {
  for (size_t i = 0; i < len; i += 512) {
    uint64_t vs = (off + i) / 512;
    const char *w = sector_wrong(buf + i, vs);
    T_ASSERT(w == NULL, "%s: block %llu sector %llu holds %s", when,
             (unsigned long long)(vs / SPB), (unsigned long long)(vs % SPB), w);
  }
}

static void check_whole_disk(vhd_t *v, const char *when) {
  uint8_t *buf = t_xmalloc(SIZE);
  struct vhd_err err = {{0}};
  T_OK(vhd_read(v, buf, 0, SIZE, &err), &err, "vhd_read of the whole disk");
  check_range_tags(buf, 0, SIZE, when);
  free(buf);
}

static void write_tagged(vhd_t *v, uint32_t blk, uint32_t s0, uint32_t n, uint32_t writer,
                         uint32_t seq) {
  uint8_t *buf = t_xmalloc((size_t)n * 512);
  for (uint32_t i = 0; i < n; i++)
    tag_sector(buf + (size_t)i * 512, blk, s0 + i, writer, seq);
  struct vhd_err err = {{0}};
  T_OK(vhd_write(v, buf, (uint64_t)blk * BLOCK + (uint64_t)s0 * 512, (size_t)n * 512, 0, &err),
       &err, "vhd_write");
  free(buf);
}

/* Block blk must hold, in every sector, exactly the tag written with seq. */
static void expect_block(vhd_t *v, uint32_t blk, uint32_t writer, uint32_t seq, const char *when) {
  uint8_t *buf = t_xmalloc(BLOCK), want[512];
  struct vhd_err err = {{0}};
  T_OK(vhd_read(v, buf, (uint64_t)blk * BLOCK, BLOCK, &err), &err, "vhd_read");
  for (uint32_t s = 0; s < SPB; s++) {
    tag_sector(want, blk, s, writer, seq);
    if (memcmp(buf + (size_t)s * 512, want, 512) != 0) {
      const char *w = sector_wrong(buf + (size_t)s * 512, (uint64_t)blk * SPB + s);
      t_fail("%s: block %u sector %u does not hold its last write (seq %u) but %s", when, blk, s,
             seq, w ? w : all_zero(buf + (size_t)s * 512, 512) ? "zeros" : "an older tag");
    }
  }
  free(buf);
}

/* The closed image's file, bypassing the engine and the bitmaps: every
 * block the BAT holds has, in its data area, only zeros and its own tags.
 * (Data that landed in a sector whose bit is clear is invisible through
 * the engine, but it is still in the wrong block.) */
static void check_raw_blocks(const char *path, const char *when) {
  vhd_t *v = t_open(path, true);
  struct vhd_info info;
  vhd_get_info(v, &info);
  struct vhd_err err = {{0}};
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(info.block_size == BLOCK, "%s: block size %u", path, info.block_size);
  uint32_t n = MIN(info.max_table_entries, NBLOCKS);
  uint32_t bat[NBLOCKS];
  t_pread_file(path, bat, (size_t)n * 4, info.bat_offset);
  uint8_t *data = t_xmalloc(BLOCK);
  for (uint32_t blk = 0; blk < n; blk++) {
    uint32_t e = be32toh(bat[blk]);
    if (e == 0xFFFFFFFFu)
      continue;
    uint64_t at = (uint64_t)e * 512 + 512; /* one sector of bitmap for 128 sectors */
    t_pread_file(path, data, BLOCK, at);
    for (uint32_t sec = 0; sec < SPB; sec++) {
      const char *w = sector_wrong(data + (size_t)sec * 512, (uint64_t)blk * SPB + sec);
      T_ASSERT(w == NULL, "%s: in the file, block %u (at offset %llu) sector %u holds %s", when,
               blk, (unsigned long long)at, sec, w);
    }
  }
  free(data);
}

static void check_image(const char *path, const char *when) {
  int c = t_check(path);
  T_ASSERT((c & ~VHD_CHECK_LEAKS) == 0, "%s: vhd_check %s reports 0x%x", when, path, c);
  check_raw_blocks(path, when);
}

/* ---- holding one thread in the gap ---- */

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool armed;     /* the next matching I/O of `thread` is held */
  pthread_t thread;
  enum t_io_op op;
  bool in_gap, go;
} hold = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void deadline(struct timespec *ts) {
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += HOLD_LIMIT_S;
}

static void hold_hook(void *opaque, enum t_io_op op, int fd, uint64_t len, uint64_t off) {
  (void)opaque, (void)fd, (void)len, (void)off;
  pthread_mutex_lock(&hold.mu);
  /* A zeroing punches only the file system blocks it covers whole and
   * writes zeros over the rest (vhd_io_punch): of a few sectors, a write. */
  bool match = op == hold.op || (hold.op == T_OP_PUNCH && op == T_OP_WRITE);
  if (!hold.armed || !match || !pthread_equal(pthread_self(), hold.thread)) {
    pthread_mutex_unlock(&hold.mu);
    return;
  }
  hold.armed = false;
  hold.in_gap = true;
  pthread_cond_broadcast(&hold.cv);
  struct timespec ts;
  deadline(&ts);
  int r = 0;
  while (!hold.go && r == 0)
    r = pthread_cond_timedwait(&hold.cv, &hold.mu, &ts);
  bool released = hold.go;
  pthread_mutex_unlock(&hold.mu);
  T_ASSERT(released, "the held %s was not released within %d s: the engine waits for it",
           op == T_OP_WRITE ? "write" : op == T_OP_READ ? "read" : "punch", HOLD_LIMIT_S);
}

static void wait_in_gap(void) {
  struct timespec ts;
  deadline(&ts);
  pthread_mutex_lock(&hold.mu);
  int r = 0;
  while (!hold.in_gap && r == 0)
    r = pthread_cond_timedwait(&hold.cv, &hold.mu, &ts);
  bool there = hold.in_gap;
  pthread_mutex_unlock(&hold.mu);
  T_ASSERT(there, "the request to hold never reached its I/O within %d s", HOLD_LIMIT_S);
}

static void release_gap(void) {
  pthread_mutex_lock(&hold.mu);
  hold.go = true;
  pthread_cond_broadcast(&hold.cv);
  pthread_mutex_unlock(&hold.mu);
}

/* The request held in the gap: sectors [3, 5) of block 0. */
#define HELD_S0 3u
#define HELD_N 2u

struct held {
  vhd_t *v;
  enum t_io_op op;
  uint8_t buf[HELD_N * 512];
  int r;
  struct vhd_err err;
};

static void *held_request(void *arg) {
  struct held *h = arg;
  uint64_t off = (uint64_t)HELD_S0 * 512;
  if (h->op == T_OP_WRITE) {
    for (uint32_t i = 0; i < HELD_N; i++)
      tag_sector(h->buf + i * 512, 0, HELD_S0 + i, 1, 2);
    h->r = vhd_write(h->v, h->buf, off, sizeof h->buf, 0, &h->err);
  } else if (h->op == T_OP_READ) {
    h->r = vhd_read(h->v, h->buf, off, sizeof h->buf, &h->err);
  } else {
    h->r = vhd_write_zeroes(h->v, off, sizeof h->buf, 0, &h->err);
  }
  return NULL;
}

static void gap_case(enum t_io_op op, enum vhd_type type) {
  static const char *const names[] = {"read", "write", "punch"};
  const char *name = names[op];
  printf("gap: %s held while its block is freed and its space reused (%s)\n", name,
         type == VHD_TYPE_DIFFERENCING ? "differencing" : "dynamic");
  fflush(stdout);
  char path[4096], ppath[4096];
  snprintf(path, sizeof path, "%s", t_path(t_fmt("gap-%s-%d.vhd", name, (int)type)));
  snprintf(ppath, sizeof ppath, "%s", t_path(t_fmt("gap-%s-parent.vhd", name)));
  if (type == VHD_TYPE_DIFFERENCING) {
    t_create(ppath, VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, NULL);
    t_create(path, VHD_TYPE_DIFFERENCING, 0, 0, true, ppath);
  } else {
    t_create(path, VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, NULL);
  }
  vhd_t *v = t_open(path, false);
  struct vhd_err err = {{0}};
  write_tagged(v, 0, 0, SPB, 0, 1);
  T_OK(vhd_flush(v, &err), &err, "vhd_flush");

  struct held h = {.v = v, .op = op};
  pthread_t th;
  t_set_io_before_hook(hold_hook, NULL);
  pthread_mutex_lock(&hold.mu);
  hold.in_gap = hold.go = false;
  hold.op = op;
  hold.armed = true;
  T_ASSERT(pthread_create(&th, NULL, held_request, &h) == 0, "pthread_create");
  hold.thread = th;
  pthread_mutex_unlock(&hold.mu);
  wait_in_gap();

  /* Block 0 freed, its space made reusable, and block 5 allocated. */
  T_OK(vhd_write_zeroes(v, 0, BLOCK, VHD_MAY_TRIM, &err), &err, "vhd_write_zeroes of block 0");
  T_OK(vhd_flush(v, &err), &err, "vhd_flush");
  write_tagged(v, 5, 0, SPB, 0, 3);

  release_gap();
  pthread_join(th, NULL);
  t_set_io_before_hook(NULL, NULL);
  T_OK(h.r, &h.err, t_fmt("the held %s", name));
  if (op == T_OP_READ)
    check_range_tags(h.buf, (uint64_t)HELD_S0 * 512, sizeof h.buf,
                     "the read held while its block was freed");
  expect_block(v, 5, 0, 3, t_fmt("after a %s held in the gap", name));
  check_whole_disk(v, t_fmt("after a %s held in the gap", name));
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  check_image(path, name);
  v = t_open(path, true);
  expect_block(v, 5, 0, 3, t_fmt("after a %s held in the gap, reopened", name));
  check_whole_disk(v, t_fmt("after a %s held in the gap, reopened", name));
  T_OK(vhd_close(v, &err), &err, "vhd_close");
}

/* ---- the hammer ---- */

static vhd_t *hv;
static atomic_uint seq_next = 1;
static atomic_bool workers_done;
/* Per hot block: odd while a whole-block zeroing runs, bumped at its start
 * and at its end. */
static atomic_uint zero_gen[HOT];
static _Thread_local uint64_t rng;
static unsigned JITTER_US = 3000;

static uint64_t xrand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

/* Widens the gap now and then: the thread gives way to the others. */
static void jitter_hook(void *opaque, enum t_io_op op, int fd, uint64_t len, uint64_t off) {
  (void)opaque, (void)op, (void)fd, (void)len, (void)off;
  if (!rng)
    return; /* not a worker */
  unsigned k = (unsigned)(xrand() % 16);
  if (k == 0)
    usleep(JITTER_US);
  else if (k < 8)
    sched_yield();
}

/* In the first half of a block, sector s belongs to thread s % NWORKERS:
 * no other thread writes or zeroes it but by zeroing the whole block. */
static uint32_t owned_sector(unsigned id) {
  return (uint32_t)(xrand() % (SPB / 2 / NWORKERS)) * NWORKERS + id;
}

struct worker {
  unsigned id;
  uint64_t seed;
  uint64_t steps;
};

static void *worker(void *arg) {
  struct worker *w = arg;
  rng = w->seed | 1;
  struct vhd_err err = {{0}};
  uint8_t buf[SPB / 2 * 512], back[512];
  for (uint64_t i = 0; i < w->steps; i++) {
    uint32_t blk = (uint32_t)(xrand() % HOT);
    uint64_t base = (uint64_t)blk * BLOCK;
    unsigned op = (unsigned)(xrand() % 100);
    if (op < 45) {
      /* Tagged write of a sector this thread owns, read back at once. */
      uint32_t s = owned_sector(w->id);
      uint32_t seq = atomic_fetch_add(&seq_next, 1);
      tag_sector(buf, blk, s, w->id, seq);
      unsigned g0 = atomic_load(&zero_gen[blk]);
      T_OK(vhd_write(hv, buf, base + (uint64_t)s * 512, 512, 0, &err), &err, "vhd_write");
      T_OK(vhd_read(hv, back, base + (uint64_t)s * 512, 512, &err), &err, "vhd_read");
      unsigned g1 = atomic_load(&zero_gen[blk]);
      const char *wrong = sector_wrong(back, base / 512 + s);
      T_ASSERT(wrong == NULL, "block %u sector %u reads back %s", blk, s, wrong);
      /* Nothing else touched this sector in between: it must read back. */
      T_ASSERT(g0 != g1 || (g0 & 1) || memcmp(back, buf, 512) == 0,
               "block %u sector %u: a write (seq %u) did not read back and no whole-block "
               "zeroing overlapped it",
               blk, s, seq);
    } else if (op < 60) {
      /* Runs of several sectors in the shared half: only the tag rule holds. */
      uint32_t n = (uint32_t)(1 + xrand() % 16);
      uint32_t s = SPB / 2 + (uint32_t)(xrand() % (SPB / 2 - n + 1));
      if (xrand() % 4 == 0)
        s = SPB / 2, n = SPB / 2;
      uint32_t seq = atomic_fetch_add(&seq_next, 1);
      for (uint32_t k = 0; k < n; k++)
        tag_sector(buf + (size_t)k * 512, blk, s + k, w->id, seq);
      T_OK(vhd_write(hv, buf, base + (uint64_t)s * 512, (size_t)n * 512, 0, &err), &err,
           "vhd_write");
    } else if (op < 75) {
      uint32_t n = (uint32_t)(1 + xrand() % 16);
      uint32_t s = (uint32_t)(xrand() % (SPB - n + 1));
      T_OK(vhd_read(hv, buf, base + (uint64_t)s * 512, (size_t)n * 512, &err), &err, "vhd_read");
      check_range_tags(buf, base + (uint64_t)s * 512, (size_t)n * 512, "a concurrent read");
    } else if (op < 87) {
      /* The whole block zeroed (freed) or trimmed. */
      atomic_fetch_add(&zero_gen[blk], 1);
      if (op < 81)
        T_OK(vhd_write_zeroes(hv, base, BLOCK, VHD_MAY_TRIM, &err), &err, "vhd_write_zeroes");
      else
        T_OK(vhd_trim(hv, base, BLOCK, 0, &err), &err, "vhd_trim");
      atomic_fetch_add(&zero_gen[blk], 1);
      /* Another block, maybe freed too, takes space freed before (so the
       * space of a block freed under a late write goes elsewhere). */
      uint32_t other = (blk + 1 + (uint32_t)(xrand() % (HOT - 1))) % HOT;
      uint32_t seq = atomic_fetch_add(&seq_next, 1);
      for (uint32_t k = 0; k < SPB / 2; k++)
        tag_sector(buf + (size_t)k * 512, other, SPB / 2 + k, w->id, seq);
      T_OK(vhd_write(hv, buf, (uint64_t)other * BLOCK + BLOCK / 2, BLOCK / 2, 0, &err), &err,
           "vhd_write");
    } else if (op < 95) {
      /* Some of this thread's own sectors zeroed: the block stays. */
      uint32_t s = owned_sector(w->id);
      T_OK(vhd_write_zeroes(hv, base + (uint64_t)s * 512, 512, 0, &err), &err,
           "vhd_write_zeroes");
      T_OK(vhd_read(hv, back, base + (uint64_t)s * 512, 512, &err), &err, "vhd_read");
      const char *wrong = sector_wrong(back, base / 512 + s);
      T_ASSERT(wrong == NULL, "block %u sector %u reads back %s", blk, s, wrong);
    } else {
      T_OK(vhd_flush(hv, &err), &err, "vhd_flush");
    }
  }
  return NULL;
}

static void *flusher(void *arg) {
  (void)arg;
  struct vhd_err err = {{0}};
  for (unsigned i = 0; i < 100000 && !atomic_load(&workers_done); i++) {
    T_OK(vhd_flush(hv, &err), &err, "vhd_flush");
    usleep(200);
  }
  return NULL;
}

static void hammer(enum vhd_type type) {
  printf("hammer: %u threads on %u blocks (%s)\n", NWORKERS, HOT,
         type == VHD_TYPE_DIFFERENCING ? "differencing" : "dynamic");
  fflush(stdout);
  char path[4096], ppath[4096];
  snprintf(path, sizeof path, "%s", t_path(t_fmt("hammer-%d.vhd", (int)type)));
  snprintf(ppath, sizeof ppath, "%s", t_path("hammer-parent.vhd"));
  if (type == VHD_TYPE_DIFFERENCING) {
    t_create(ppath, VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, NULL);
    t_create(path, VHD_TYPE_DIFFERENCING, 0, 0, true, ppath);
  } else {
    t_create(path, VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, NULL);
  }
  hv = t_open(path, false);
  atomic_store(&workers_done, false);
  t_set_io_before_hook(jitter_hook, NULL);
  struct worker w[NWORKERS];
  pthread_t th[NWORKERS], fl;
  for (unsigned t = 0; t < NWORKERS; t++) {
    w[t] = (struct worker){.id = t, .seed = t_rand(), .steps = t_scaled(1500)};
    T_ASSERT(pthread_create(&th[t], NULL, worker, &w[t]) == 0, "pthread_create");
  }
  T_ASSERT(pthread_create(&fl, NULL, flusher, NULL) == 0, "pthread_create");
  for (unsigned t = 0; t < NWORKERS; t++)
    pthread_join(th[t], NULL);
  atomic_store(&workers_done, true);
  pthread_join(fl, NULL);
  t_set_io_before_hook(NULL, NULL);

  check_whole_disk(hv, "after the hammer");
  /* A last sequential pass: now every write's place is defined. */
  for (uint32_t blk = 0; blk < HOT; blk++)
    write_tagged(hv, blk, 0, SPB, 9, 1000000 + blk);
  for (uint32_t blk = 0; blk < HOT; blk++)
    expect_block(hv, blk, 9, 1000000 + blk, "after the hammer's last pass");
  struct vhd_err err = {{0}};
  T_OK(vhd_close(hv, &err), &err, "vhd_close");
  check_image(path, "after the hammer");
  hv = t_open(path, true);
  for (uint32_t blk = 0; blk < HOT; blk++)
    expect_block(hv, blk, 9, 1000000 + blk, "after the hammer, reopened");
  check_whole_disk(hv, "after the hammer, reopened");
  T_OK(vhd_close(hv, &err), &err, "vhd_close");
}

int main(void) {
  t_init("test-vhd-race");
  static const enum t_io_op ops[] = {T_OP_WRITE, T_OP_READ, T_OP_PUNCH};
  for (size_t i = 0; i < sizeof ops / sizeof ops[0]; i++) {
    gap_case(ops[i], VHD_TYPE_DYNAMIC);
    gap_case(ops[i], VHD_TYPE_DIFFERENCING);
  }
  hammer(VHD_TYPE_DYNAMIC);
  hammer(VHD_TYPE_DIFFERENCING);
  printf("ok\n");
  return 0;
}
