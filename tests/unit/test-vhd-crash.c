/* test-vhd-crash.c: crash safety, the SQLite way.
 *
 * A fixed workload (allocations, overwrites, zero writes, flushes, FUA
 * writes) runs on a dynamic or differencing image.  Two kinds of crash, one
 * per program built from this file (test-vhd-crash, test-vhd-crash-lost):
 *
 * 1. Fault injection: the workload runs once to count its writes and syncs;
 *    then for EVERY n up to that count a fresh copy of the starting image gets
 *    the workload with vhd_fault_arm(n): the (n+1)th write or sync and all
 *    later ones fail with EIO, the workload stops at its first failure and
 *    the handle is dropped with vhd_abandon (nothing more is written).
 *    Then single failures: for every n, the (n+1)th sync fails once (EIO,
 *    ENOSPC or EDQUOT in turn) and loses the pages written since the last
 *    sync, as Linux may; likewise the (n+1)th write, without the loss.  The
 *    workload goes on to its end: the op that met the failure must return
 *    its errno, every later one EIO (no flush may claim durability after a
 *    failed write-back), and the image is then checked as after a crash.
 *
 * 2. Lost writes: the I/O of one complete run is journaled (the test defines
 *    pwrite/fdatasync itself, see testutil.h); a crash at journal position k
 *    keeps every write before the last sync preceding k, and a random subset
 *    of the writes between that sync and k: what a power cut may leave of an
 *    unsynced page cache.  One more crash image per k tears each of those
 *    writes instead, keeping a random subset of its 512-byte sectors: a
 *    disk writes a sector whole, but nothing more.
 *
 * After each crash the image must open, vhd_check must find nothing
 * VHD_CHECK_CORRUPT (leaks are fine), and every byte must be acceptable: the
 * value it had when last made durable (by a vhd_flush that returned 0, or an
 * FUA write that did), or the value of any write issued after that (the write
 * that failed included).  A read-write open and close must keep the content,
 * and so must vhd_check --repair, after which only leaks may remain.
 *
 * VHD_TEST_SEED reproduces a run; VHD_TEST_ITERS scales the workloads (1500
 * is the default: 30-40 operations each, every crash point tried; the cost
 * grows with the square of the length).
 *
 * Our own reader is not the only judge: with VHD_CRASH_SAMPLE_DIR set, every
 * VHD_CRASH_SAMPLE_EVERY-th crash image (default 8) is saved there as it is
 * after the crash, with what the model knows of it, for
 * tests/interop/test-vhd-crash-readers.sh to read with QEMU and libvhdi (see
 * save_sample).
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd.h"

enum op_kind { OP_WRITE, OP_ZEROES, OP_FLUSH, OP_CLOSE };

struct op {
  enum op_kind kind;
  uint64_t off, len;
  unsigned flags;
  uint8_t *data; /* OP_WRITE */
};

struct workload {
  const char *label;
  char pristine[4096];    /* the starting image, never modified */
  char work[4096];        /* the copy that crashes */
  char parents[2][4096];  /* hashed before and after */
  uint64_t parent_hash[2];
  int n_parents;
  uint64_t size;
  uint8_t *initial;       /* the disk's content at the start */
  struct op *ops;
  size_t n_ops;
};

enum byte_src { SRC_START, SRC_ZEROES, SRC_DATA };

/* What each byte may read after a crash. */
struct expect {
  uint64_t size;
  uint8_t *durable;   /* value as of the last durable point for that byte */
  uint64_t *dseq;     /* 1 + index of the op that made it durable (0: initial) */
  uint8_t *cur;       /* the latest value issued */
  /* Who wrote each byte last, among ops issued (cur_src) and as of the
   * durable point (durable_src): SRC_START, SRC_ZEROES or SRC_DATA. */
  uint8_t *cur_src, *durable_src;
  size_t *pending;    /* indices of ops issued since the last flush */
  size_t n_pending;
};

static const char *op_name(const struct op *o) {
  switch (o->kind) {
  case OP_WRITE: return "write";
  case OP_ZEROES: return "write_zeroes";
  case OP_FLUSH: return "flush";
  default: return "close";
  }
}

static const char *op_str(const struct workload *w, size_t i) {
  const struct op *o = &w->ops[i];
  return t_fmt("op %zu %s off=%" PRIu64 " len=%" PRIu64 " flags=0x%x", i, op_name(o), o->off,
               o->len, o->flags);
}

/* ---- the workload ---- */

static void gen_range(struct workload *w, uint32_t bs, uint64_t *off, uint64_t *len) {
  uint64_t nb = DIV_ROUND_UP(w->size, bs);
  switch (t_below(5)) {
  case 0: /* a whole block */
    *off = t_below(nb) * bs;
    *len = bs;
    break;
  case 1: /* sub-sector */
    *off = t_below(w->size);
    *len = t_range(1, 300);
    break;
  case 2: /* straddling blocks */
    *off = t_range(1, nb) * bs - t_range(1, MIN((uint64_t)bs, (uint64_t)700));
    *len = t_range(2, MIN(2 * (uint64_t)bs, (uint64_t)3000));
    break;
  case 3: /* whole sectors */
    *off = t_below(w->size / 512) * 512;
    *len = t_range(1, 8) * 512;
    break;
  default: /* the end of the disk */
    *len = t_range(1, MIN(w->size, (uint64_t)2000));
    *off = w->size - *len;
    break;
  }
  if (*off >= w->size)
    *off = w->size - 1;
  *len = MIN(*len, w->size - *off);
}

static void gen_workload(struct workload *w, uint32_t bs, size_t n) {
  n = (size_t)MAX(t_scaled(n), (uint64_t)6);
  w->ops = t_xcalloc(n + 1, sizeof *w->ops);
  for (size_t i = 0; i < n; i++) {
    struct op *o = &w->ops[i];
    unsigned p = (unsigned)t_below(100);
    if (p < 55) {
      o->kind = OP_WRITE;
      gen_range(w, bs, &o->off, &o->len);
      o->flags = t_chance(20) ? VHD_FUA : 0;
      o->data = t_xmalloc(o->len);
      t_fill_nonzero(o->data, o->len);
    } else if (p < 80) {
      o->kind = OP_ZEROES;
      gen_range(w, bs, &o->off, &o->len);
      static const unsigned fl[] = {0, VHD_MAY_TRIM, VHD_NO_HOLE, VHD_MAY_TRIM | VHD_FUA, VHD_FUA};
      o->flags = fl[t_below(ARRAY_SIZE(fl))];
    } else {
      o->kind = OP_FLUSH;
    }
  }
  w->ops[n].kind = OP_CLOSE;
  w->n_ops = n + 1;
}

static void free_workload(struct workload *w) {
  for (size_t i = 0; i < w->n_ops; i++)
    free(w->ops[i].data);
  free(w->ops);
  free(w->initial);
}

/* ---- expectations ---- */

static void expect_init(struct expect *e, const struct workload *w) {
  e->size = w->size;
  e->durable = t_xmalloc(w->size);
  e->cur = t_xmalloc(w->size);
  memcpy(e->durable, w->initial, w->size);
  memcpy(e->cur, w->initial, w->size);
  e->cur_src = t_xcalloc(w->size, 1);
  e->durable_src = t_xcalloc(w->size, 1);
  e->dseq = t_xcalloc(w->size, sizeof *e->dseq);
  e->pending = t_xcalloc(w->n_ops, sizeof *e->pending);
  e->n_pending = 0;
}

static void expect_free(struct expect *e) {
  free(e->durable);
  free(e->cur);
  free(e->cur_src);
  free(e->durable_src);
  free(e->dseq);
  free(e->pending);
}

static uint8_t op_byte(const struct op *o, uint64_t b) {
  return o->kind == OP_WRITE ? o->data[b - o->off] : 0;
}

/* An op was issued: its bytes may be on disk from now on. */
static void expect_issue(struct expect *e, const struct workload *w, size_t i) {
  const struct op *o = &w->ops[i];
  if (o->kind == OP_WRITE || o->kind == OP_ZEROES) {
    e->pending[e->n_pending++] = i;
    for (uint64_t b = o->off; b < o->off + o->len; b++) {
      e->cur[b] = op_byte(o, b);
      e->cur_src[b] = o->kind == OP_WRITE ? SRC_DATA : SRC_ZEROES;
    }
  }
}

/* An op returned 0: what it made durable. */
static void expect_complete(struct expect *e, const struct workload *w, size_t i) {
  const struct op *o = &w->ops[i];
  if (o->kind == OP_FLUSH || o->kind == OP_CLOSE) {
    memcpy(e->durable, e->cur, e->size);
    memcpy(e->durable_src, e->cur_src, e->size);
    for (uint64_t b = 0; b < e->size; b++)
      e->dseq[b] = i + 1;
    e->n_pending = 0;
  } else if (o->flags & VHD_FUA) {
    for (uint64_t b = o->off; b < o->off + o->len; b++) {
      e->durable[b] = op_byte(o, b);
      e->durable_src[b] = o->kind == OP_WRITE ? SRC_DATA : SRC_ZEROES;
      e->dseq[b] = i + 1;
    }
  }
}

static bool byte_ok(const struct expect *e, const struct workload *w, uint64_t b, uint8_t v) {
  if (v == e->durable[b])
    return true;
  for (size_t k = 0; k < e->n_pending; k++) {
    const struct op *o = &w->ops[e->pending[k]];
    if (e->pending[k] + 1 > e->dseq[b] && b >= o->off && b < o->off + o->len && op_byte(o, b) == v)
      return true;
  }
  return false;
}

/* True when no op issued after b was made durable covers b: b must read
 * its durable value, not just one of several. */
static bool byte_settled(const struct expect *e, const struct workload *w, uint64_t b) {
  for (size_t k = 0; k < e->n_pending; k++) {
    const struct op *o = &w->ops[e->pending[k]];
    if (e->pending[k] + 1 > e->dseq[b] && b >= o->off && b < o->off + o->len)
      return false;
  }
  return true;
}

/* ---- crash images for other readers ---- */

static const char *sample_dir;
static unsigned long sample_every = 8, n_crashes, n_samples;

static void write_file(const char *path, const void *buf, size_t len) {
  FILE *f = fopen(path, "wb");
  T_ASSERT(f != NULL, "fopen %s: %m", path);
  T_ASSERT(fwrite(buf, 1, len, f) == len && fclose(f) == 0, "writing %s: %m", path);
}

/* Copies leaving holes where the image has zeros: crash images keep the
 * engine's preallocated tail (tens of MiB for small blocks). */
static void copy_sparse(const char *from, const char *to) {
  int in = open(from, O_RDONLY | O_CLOEXEC);
  T_ASSERT(in >= 0, "open %s: %m", from);
  int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  T_ASSERT(out >= 0, "create %s: %m", to);
  static uint8_t buf[65536];
  static const uint8_t zero[65536];
  off_t off = 0;
  ssize_t n;
  while ((n = pread(in, buf, sizeof buf, off)) > 0) {
    if (memcmp(buf, zero, (size_t)n) != 0)
      T_ASSERT(pwrite(out, buf, (size_t)n, off) == n, "write %s: %m", to);
    off += n;
  }
  T_ASSERT(n == 0, "read %s: %m", from);
  T_ASSERT(ftruncate(out, off) == 0 && close(out) == 0 && close(in) == 0, "ftruncate %s: %m", to);
}

static const char *base_name(const char *path) {
  const char *s = strrchr(path, '/');
  return s ? s + 1 : path;
}

/* Saves the crash image at `path` as NAME.vhd in sample_dir, with
 *   NAME.want: the bytes the model expects (the durable content);
 *   NAME.mask: one byte per disk byte: bit 0 set where every reader that
 *     honours the sector bitmaps must read the NAME.want byte (the byte is
 *     settled; in a differencing image, its sector was also written through
 *     the image since it started, so that the sector's bit is set: Debian
 *     12's libvhdi misreads clear bits after a set one in a bitmap byte);
 *     bit 1 set where QEMU, which ignores the bitmaps, must too: every byte
 *     of the sector was last made durable by a data write (which leaves the
 *     whole sector in the data area, bit set), not by zeroes (which may just
 *     clear the bit) or the starting image;
 *   NAME.txt: what crashed, then "parent FILE" lines, nearest parent first
 *     (copies in sample_dir). */
static void save_sample(const struct workload *w, const struct expect *e, const char *path,
                        const char *what) {
  char name[512], file[4096];
  snprintf(name, sizeof name, "%s-%04lu", w->label, n_samples++);
  snprintf(file, sizeof file, "%s/%s.vhd", sample_dir, name);
  copy_sparse(path, file);
  snprintf(file, sizeof file, "%s/%s.want", sample_dir, name);
  write_file(file, e->durable, w->size);
  CLEANUP_FREE uint8_t *mask = t_xcalloc(w->size, 1);
  for (uint64_t s = 0; s < w->size; s += 512) {
    uint64_t end = MIN(s + 512, w->size);
    bool written = false, all_data = true;
    for (uint64_t b = s; b < end; b++) {
      written |= e->durable_src[b] != SRC_START;
      all_data &= e->durable_src[b] == SRC_DATA;
    }
    for (uint64_t b = s; b < end; b++) {
      if (!byte_settled(e, w, b))
        continue;
      if (w->n_parents == 0 || written)
        mask[b] |= 1;
      if (all_data)
        mask[b] |= 2;
    }
  }
  snprintf(file, sizeof file, "%s/%s.mask", sample_dir, name);
  write_file(file, mask, w->size);
  snprintf(file, sizeof file, "%s/%s.txt", sample_dir, name);
  FILE *f = fopen(file, "w");
  T_ASSERT(f != NULL, "fopen %s: %m", file);
  fprintf(f, "%s\n", what);
  for (int p = w->n_parents - 1; p >= 0; p--) {
    fprintf(f, "parent %s\n", base_name(w->parents[p]));
    snprintf(file, sizeof file, "%s/%s", sample_dir, base_name(w->parents[p]));
    if (access(file, F_OK) != 0)
      t_copy_file(w->parents[p], file);
  }
  T_ASSERT(fclose(f) == 0, "writing %s/%s.txt: %m", sample_dir, name);
}

/* ---- after the crash ---- */

/* What the crash image is made of, printed when it fails. */
static char crash_detail[8192];

static void print_detail(void) {
  if (crash_detail[0])
    fprintf(stderr, "  crash image: %s\n", crash_detail);
}

static void report_line(void *opaque, const char *level, const char *msg) {
  fprintf(stderr, "  check %s: %s: %s\n", (const char *)opaque, level, msg);
}

/* What vhd_check finds in the starting image, and in a repaired copy of
 * it, besides leaks: another writer's image may carry a finding of its own
 * (a damaged footer, a warning no repair clears), which a crash may leave
 * as it was.  0 for the images made here. */
static int start_findings, start_findings_repaired;

static void check_not_corrupt(const char *path, const char *what) {
  struct vhd_check_opts o = {.report = NULL, .opaque = (void *)path};
  struct vhd_err err = {{0}};
  int r = vhd_check(path, &o, &err);
  if (r < 0 || (r & VHD_CHECK_CORRUPT & ~start_findings)) {
    o.report = report_line;
    vhd_check(path, &o, &err);
    print_detail();
    if (r < 0)
      t_fail("%s: vhd_check failed: %s: %s", what, t_strerr(r), err.msg);
    t_fail("%s: vhd_check returned 0x%x (VHD_CHECK_CORRUPT set; see the report above)", what, r);
  }
}

static void read_all(const char *path, bool rdonly, uint8_t *buf, uint64_t size,
                     const char *what) {
  struct vhd_open_opts oo = {.flags = rdonly ? VHD_OPEN_RDONLY : 0};
  struct vhd_err err = {{0}};
  vhd_t *v = NULL;
  int r = vhd_open(path, &oo, &v, &err);
  if (r < 0)
    t_fail("%s: the image does not open %s: %s: %s", what, rdonly ? "read-only" : "read-write",
           t_strerr(r), err.msg);
  T_ASSERT(vhd_virtual_size(v) == size, "%s: size %" PRIu64 " after the crash", what,
           vhd_virtual_size(v));
  r = vhd_read(v, buf, 0, size, &err);
  if (r < 0)
    t_fail("%s: reading the image after the crash: %s: %s", what, t_strerr(r), err.msg);
  r = vhd_close(v, &err);
  if (r < 0)
    t_fail("%s: closing the image after the crash: %s: %s", what, t_strerr(r), err.msg);
}

static void verify_crashed(const struct workload *w, const struct expect *e, const char *path,
                           const char *what_fmt) {
  char what[1024]; /* what_fmt may be a t_fmt buffer: keep a copy */
  snprintf(what, sizeof what, "%s", what_fmt);
  if (sample_dir && n_crashes++ % sample_every == 0)
    save_sample(w, e, path, what);
  check_not_corrupt(path, what);
  CLEANUP_FREE uint8_t *buf = t_xmalloc(w->size);
  read_all(path, true, buf, w->size, what);
  for (uint64_t b = 0; b < w->size; b++)
    if (!byte_ok(e, w, b, buf[b])) {
      print_detail();
      fprintf(stderr, "  pending ops:");
      for (size_t k = 0; k < e->n_pending; k++)
        fprintf(stderr, " %zu", e->pending[k]);
      fprintf(stderr, "\n");
      t_fail("%s: byte %" PRIu64 " reads 0x%02x; durable value 0x%02x (made durable by %s), "
             "latest issued 0x%02x",
             what, b, buf[b], e->durable[b],
             e->dseq[b] ? op_str(w, e->dseq[b] - 1) : "the starting image", e->cur[b]);
    }
  /* Opening read-write (which may tidy up) must not change what the disk says. */
  CLEANUP_FREE uint8_t *again = t_xmalloc(w->size);
  read_all(path, false, again, w->size, what);
  if (memcmp(buf, again, w->size) != 0)
    t_fail("%s: a read-write open and close changed the content", what);
  check_not_corrupt(path, t_fmt("%s, after a read-write open", what));
  /* Repair leaves a valid image with the same data.  Leaks may remain: a
   * block dropped by VHD_MAY_TRIM in the middle of the file cannot be
   * reclaimed without moving others. */
  struct vhd_check_opts co = {.repair = true};
  struct vhd_err err = {{0}};
  int r = vhd_check(path, &co, &err);
  if (r < 0 || (r & VHD_CHECK_CORRUPT))
    t_fail("%s: vhd_check --repair returned %d: %s", what, r, err.msg);
  co.repair = false;
  r = vhd_check(path, &co, &err);
  if (r < 0 || (r & ~(VHD_CHECK_LEAKS | start_findings_repaired))) {
    co.report = report_line;
    co.opaque = (void *)path;
    vhd_check(path, &co, &err);
    t_fail("%s: after vhd_check --repair, vhd_check still returns 0x%x (%s)", what, r, err.msg);
  }
  read_all(path, true, again, w->size, what);
  if (memcmp(buf, again, w->size) != 0)
    t_fail("%s: vhd_check --repair changed the content", what);
}

#ifndef CRASH_LOST_WRITES
/* ---- 1. fault injection ---- */

struct fault {
  enum vhd_fault_mode mode;
  long n;     /* < 0: none */
  int errnum;
};

struct run_result {
  bool completed; /* every op returned 0 */
  bool tripped;   /* the fault was injected */
  bool window_kept; /* ... into the close's giving back of its window, kept */
};

/* Runs the workload on `path` with the fault armed.  A power cut stops the
 * workload at its first failure and drops the handle (nothing more is
 * written).  After a single failure the workload goes on, as a client would:
 * the op that met the failure must return its errno and every later op
 * must fail with EIO (the write-error latch), however many succeed at the
 * disk; a failed sync also loses the pages written since the last one
 * (t_lose_unsynced), as Linux may. */
static struct run_result run_faulty(const struct workload *w, const char *path,
                                    const struct fault *f, struct expect *e) {
  bool once = f->mode != VHD_FAULT_POWER_CUT;
  vhd_t *v = t_open(path, false);
  if (f->mode == VHD_FAULT_SYNC_ONCE)
    t_track_unsynced(true);
  vhd_fault_arm_mode(f->mode, f->n, f->errnum);
  struct vhd_err err = {{0}};
  struct run_result res = {.completed = true};
  for (size_t i = 0; i < w->n_ops; i++) {
    const struct op *o = &w->ops[i];
    int r = 0;
    if (e)
      expect_issue(e, w, i);
    switch (o->kind) {
    case OP_WRITE: r = vhd_write(v, o->data, o->off, o->len, o->flags, &err); break;
    case OP_ZEROES: r = vhd_write_zeroes(v, o->off, o->len, o->flags, &err); break;
    case OP_FLUSH: r = vhd_flush(v, &err); break;
    case OP_CLOSE:
      r = vhd_close(v, &err);
      v = NULL;
      break;
    }
    bool tripped_now = vhd_fault_tripped() && !res.tripped;
    if (r < 0 && !vhd_fault_tripped())
      t_fail("%s: %s failed without an injected fault: %s: %s", w->label, op_str(w, i),
             t_strerr(r), err.msg);
    /* A close keeps its allocation window when giving it back meets a
     * full file system (vhd_window_release): nothing of the image's
     * failed, and the image is checked below as after any close. */
    bool window_kept = o->kind == OP_CLOSE && r == 0 &&
                       (f->errnum == ENOSPC || f->errnum == EDQUOT);
    if (once && tripped_now && r != -f->errnum && !window_kept)
      t_fail("%s: %s met the injected %s but returned %d (%s): %s", w->label, op_str(w, i),
             strerror(f->errnum), r, t_strerr(r), err.msg);
    if (once && res.tripped && r != -EIO)
      t_fail("%s: %s returned %d (%s) after an injected %s: every op after a failed write or "
             "sync must fail with EIO",
             w->label, op_str(w, i), r, t_strerr(r), strerror(f->errnum));
    if (tripped_now && f->mode == VHD_FAULT_SYNC_ONCE)
      t_lose_unsynced(path);
    res.tripped |= tripped_now;
    res.window_kept |= tripped_now && window_kept;
    if (r < 0) {
      res.completed = false;
      if (!once)
        break;
      continue;
    }
    if (e)
      expect_complete(e, w, i);
  }
  if (v)
    vhd_abandon(v);
  vhd_fault_arm(-1);
  t_track_unsynced(false);
  return res;
}

static void crash_by_fault(const struct workload *w) {
  const char *work = w->work;
  struct fault none = {VHD_FAULT_POWER_CUT, -1, EIO};
  /* The number of writes and syncs of a complete run: the smallest n that
   * lets it complete (a run is deterministic, so this is monotonic). */
  t_copy_file(w->pristine, work);
  T_ASSERT(run_faulty(w, work, &none, NULL).completed, "%s: the workload fails without faults",
           w->label);
  long hi = 1;
  for (;;) {
    t_copy_file(w->pristine, work);
    if (run_faulty(w, work, &(struct fault){VHD_FAULT_POWER_CUT, hi, EIO}, NULL).completed)
      break;
    T_ASSERT(hi < (1L << 24), "%s: the workload never completes", w->label);
    hi *= 2;
  }
  long lo = hi / 2; /* fails at lo (or lo = 0), completes at hi */
  while (hi - lo > 1) {
    long mid = lo + (hi - lo) / 2;
    t_copy_file(w->pristine, work);
    if (run_faulty(w, work, &(struct fault){VHD_FAULT_POWER_CUT, mid, EIO}, NULL).completed)
      hi = mid;
    else
      lo = mid;
  }
  long count = hi;
  t_copy_file(w->pristine, work);
  if (run_faulty(w, work, &(struct fault){VHD_FAULT_POWER_CUT, 0, EIO}, NULL).completed &&
      count > 0)
    t_fail("%s: completed with no write allowed", w->label);

  for (long n = 0; n <= count; n++) {
    t_copy_file(w->pristine, work);
    struct expect e;
    expect_init(&e, w);
    bool done =
        run_faulty(w, work, &(struct fault){VHD_FAULT_POWER_CUT, n, EIO}, &e).completed;
    T_ASSERT(done == (n == count), "%s: fault after %ld of %ld I/Os: completed=%d", w->label, n,
             count, (int)done);
    verify_crashed(w, &e, work,
                   t_fmt("%s: fault after %ld of %ld writes/syncs", w->label, n, count));
    expect_free(&e);
  }
  printf("ok %s: fault injected at each of %ld writes/syncs\n", w->label, count + 1);
  fflush(stdout);
}

/* A single failure at each sync (or write) in turn, the workload carried on
 * to the end, then the image checked as after a crash: no flush may have
 * claimed data that a failed sync lost. */
static void fail_once_each(const struct workload *w, enum vhd_fault_mode mode) {
  static const int errnums[] = {EIO, ENOSPC, EDQUOT};
  const char *what = mode == VHD_FAULT_SYNC_ONCE ? "sync" : "write";
  long n = 0;
  for (;; n++) {
    int errnum = errnums[n % ARRAY_SIZE(errnums)];
    t_copy_file(w->pristine, w->work);
    struct expect e;
    expect_init(&e, w);
    struct run_result res = run_faulty(w, w->work, &(struct fault){mode, n, errnum}, &e);
    T_ASSERT(res.completed == !res.tripped || (res.completed && res.window_kept),
             "%s: %s %ld failing once: completed=%d", w->label, what, n, (int)res.completed);
    verify_crashed(w, &e, w->work,
                   t_fmt("%s: %s %ld failed once with %s, the workload went on", w->label, what,
                         n, strerror(errnum)));
    expect_free(&e);
    if (!res.tripped)
      break;
  }
  printf("ok %s: each of %ld %ss failed once in turn\n", w->label, n, what);
  fflush(stdout);
}

#else
/* ---- 2. lost unsynced writes ---- */

struct jentry {
  enum t_io_kind kind;
  uint64_t off, len;
  uint8_t *data;
};

struct journal {
  int fd;              /* a descriptor of the image: -1 until the first write */
  struct jentry *e;
  size_t n, cap;
  size_t *op_start;    /* journal length when op i started */
  size_t *op_end;      /* ... and when it returned */
};

static void journal_hook(void *opaque, enum t_io_kind kind, int fd, const void *buf, uint64_t len,
                         uint64_t off) {
  struct journal *j = opaque;
  if (j->fd < 0)
    j->fd = fd;
  /* The footer move writes through a second descriptor of the image. */
  struct stat a, b;
  T_ASSERT(fstat(fd, &a) == 0 && fstat(j->fd, &b) == 0, "fstat: %s", strerror(errno));
  T_ASSERT(a.st_dev == b.st_dev && a.st_ino == b.st_ino,
           "the engine wrote to two files (fd %d and %d) for one image", j->fd, fd);
  if (j->n == j->cap) {
    j->cap = j->cap ? 2 * j->cap : 64;
    j->e = realloc(j->e, j->cap * sizeof *j->e);
    T_ASSERT(j->e != NULL, "out of memory");
  }
  struct jentry *x = &j->e[j->n++];
  x->kind = kind;
  x->off = off;
  x->len = len;
  x->data = NULL;
  if (kind == T_IO_WRITE || kind == T_IO_WRITE_DSYNC) {
    x->data = t_xmalloc(len);
    memcpy(x->data, buf, len);
  }
}

static void apply_entry(int fd, const struct jentry *x) {
  switch (x->kind) {
  case T_IO_WRITE:
  case T_IO_WRITE_DSYNC:
    T_ASSERT(pwrite(fd, x->data, x->len, (off_t)x->off) == (ssize_t)x->len, "replay: pwrite");
    break;
  case T_IO_PUNCH: {
    CLEANUP_FREE uint8_t *z = t_xcalloc(1, x->len);
    T_ASSERT(pwrite(fd, z, x->len, (off_t)x->off) == (ssize_t)x->len, "replay: punch");
    break;
  }
  case T_IO_TRUNCATE:
    T_ASSERT(ftruncate(fd, (off_t)x->len) == 0, "replay: ftruncate");
    break;
  case T_IO_SYNC:
    break;
  }
}

/* Part of a write that a power cut may leave: a disk writes 512-byte
 * sectors whole, but the sectors of one write in any order, so each of
 * them is kept or lost on its own. */
static void apply_torn(int fd, const struct jentry *x, char *detail, size_t detail_len,
                       size_t *used) {
  uint64_t off = x->off, end = x->off + x->len;
  while (off < end) {
    uint64_t next = MIN(end, (off / 512 + 1) * 512);
    bool keep = t_chance(50);
    if (keep)
      T_ASSERT(pwrite(fd, x->data + (off - x->off), next - off, (off_t)off) ==
                   (ssize_t)(next - off),
               "replay: pwrite");
    if (*used < detail_len)
      *used += (size_t)snprintf(detail + *used, detail_len - *used, "%c", keep ? '+' : '-');
    off = next;
  }
}

static void crash_by_lost_writes(const struct workload *w, unsigned subsets) {
  const char *work = w->work;
  struct journal j = {.fd = -1};
  j.op_start = t_xcalloc(w->n_ops, sizeof *j.op_start);
  j.op_end = t_xcalloc(w->n_ops, sizeof *j.op_end);

  t_copy_file(w->pristine, work);
  vhd_t *v = t_open(work, false);
  struct vhd_err err = {{0}};
  t_set_io_hook(journal_hook, &j);
  for (size_t i = 0; i < w->n_ops; i++) {
    const struct op *o = &w->ops[i];
    int r = 0;
    j.op_start[i] = j.n;
    switch (o->kind) {
    case OP_WRITE: r = vhd_write(v, o->data, o->off, o->len, o->flags, &err); break;
    case OP_ZEROES: r = vhd_write_zeroes(v, o->off, o->len, o->flags, &err); break;
    case OP_FLUSH: r = vhd_flush(v, &err); break;
    case OP_CLOSE: r = vhd_close(v, &err); break;
    }
    j.op_end[i] = j.n;
    if (r < 0)
      t_fail("%s: journaled run: %s: %s: %s", w->label, op_str(w, i), t_strerr(r), err.msg);
  }
  t_set_io_hook(NULL, NULL);

  unsigned tried = 0;
  for (size_t k = 0; k <= j.n; k++) {
    /* Entries before the last sync at or before k are on disk for sure. */
    size_t s = 0;
    for (size_t x = 0; x < k; x++)
      if (j.e[x].kind == T_IO_SYNC)
        s = x + 1;
    /* The last subset tears the unsynced writes (apply_torn). */
    unsigned n_sub = k > s ? subsets + 1 : 1;
    for (unsigned sub = 0; sub < n_sub; sub++) {
      t_copy_file(w->pristine, work);
      int fd = open(work, O_WRONLY | O_CLOEXEC);
      T_ASSERT(fd >= 0, "open %s: %s", work, strerror(errno));
      /* sub 0 keeps every write, sub 1 none of the unsynced ones, others a
       * random subset, in order; the last keeps a random part of each. */
      bool torn = n_sub > 1 && sub == n_sub - 1;
      size_t used = (size_t)snprintf(crash_detail, sizeof crash_detail,
                                     "entries before %zu kept; after it:", s);
      for (size_t x = 0; x < k; x++) {
        /* An O_DSYNC write that returned is on the disk. */
        bool durable = x < s || j.e[x].kind == T_IO_WRITE_DSYNC;
        bool tear = torn && !durable && j.e[x].kind == T_IO_WRITE;
        bool keep = durable || sub == 0 || (sub > 1 && !tear && t_chance(50));
        if (tear && used < sizeof crash_detail)
          used += (size_t)snprintf(crash_detail + used, sizeof crash_detail - used,
                                   " [%zu torn, sectors kept/lost: ", x);
        if (tear) {
          apply_torn(fd, &j.e[x], crash_detail, sizeof crash_detail, &used);
          if (used < sizeof crash_detail)
            used += (size_t)snprintf(crash_detail + used, sizeof crash_detail - used, "]");
          keep = false;
        } else if (keep)
          apply_entry(fd, &j.e[x]);
        if (x >= s && used < sizeof crash_detail)
          used += (size_t)snprintf(crash_detail + used, sizeof crash_detail - used,
                                   " [%zu %s %" PRIu64 "@%" PRIu64 " %s]", x,
                                   j.e[x].kind == T_IO_WRITE ? "write"
                                   : j.e[x].kind == T_IO_WRITE_DSYNC ? "O_DSYNC write"
                                   : j.e[x].kind == T_IO_SYNC ? "sync"
                                   : j.e[x].kind == T_IO_PUNCH ? "punch"
                                                               : "truncate",
                                   j.e[x].len, j.e[x].off, tear ? "torn" : keep ? "kept" : "lost");
      }
      close(fd);

      struct expect e;
      expect_init(&e, w);
      for (size_t i = 0; i < w->n_ops && j.op_start[i] <= k; i++) {
        /* An op whose I/O started before the crash point is issued; one that
         * returned before it completed.  An op without I/O (a flush with
         * nothing dirty) that starts at k has returned too. */
        expect_issue(&e, w, i);
        if (j.op_end[i] <= k)
          expect_complete(&e, w, i);
        else
          break;
      }
      verify_crashed(w, &e, work,
                     t_fmt("%s: crash at journal entry %zu of %zu (last sync before it: %zu), "
                           "unsynced writes kept: %s",
                           w->label, k, j.n, s,
                           sub == 0 ? "all" : sub == 1 ? "none"
                           : torn ? "a random part of each, by sectors" : "a random subset"));
      expect_free(&e);
      tried++;
    }
  }
  crash_detail[0] = '\0';
  for (size_t x = 0; x < j.n; x++)
    free(j.e[x].data);
  free(j.e);
  free(j.op_start);
  free(j.op_end);
  printf("ok %s: %u crash images from a journal of %zu writes/syncs\n", w->label, tried, j.n);
  fflush(stdout);
}

#endif

/* ---- set-ups ---- */

static uint8_t *read_image(const char *path, uint64_t *size) {
  vhd_t *v = t_open(path, true);
  *size = vhd_virtual_size(v);
  uint8_t *buf = t_xmalloc(*size);
  struct vhd_err err = {{0}};
  T_OK(vhd_read(v, buf, 0, *size, &err), &err, "vhd_read");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  return buf;
}

/* Random data in some places of an image, through the engine. */
static void fill_some(const char *path, uint32_t bs) {
  vhd_t *v = t_open(path, false);
  uint64_t size = vhd_virtual_size(v);
  struct vhd_err err = {{0}};
  CLEANUP_FREE uint8_t *buf = t_xmalloc(2 * (size_t)bs + 4096);
  for (int i = 0; i < 12; i++) {
    uint64_t off = t_below(size);
    uint64_t len = t_range(1, 2 * (uint64_t)bs + 4096);
    len = MIN(len, size - off);
    t_fill_nonzero(buf, len);
    T_OK(vhd_write(v, buf, off, len, 0, &err), &err, "vhd_write (filling)");
  }
  T_OK(vhd_close(v, &err), &err, "vhd_close");
}

static void finish_setup(struct workload *w, uint32_t bs, size_t n_ops) {
  /* Beside the starting image, where its parents' locators lead. */
  const char *slash = strrchr(w->pristine, '/');
  T_ASSERT(slash != NULL, "%s: not a path", w->pristine);
  snprintf(w->work, sizeof w->work, "%.*s/%s-work.vhd", (int)(slash - w->pristine), w->pristine,
           w->label);
  w->initial = read_image(w->pristine, &w->size);
  for (int p = 0; p < w->n_parents; p++)
    w->parent_hash[p] = t_file_hash(w->parents[p]);
  gen_workload(w, bs, n_ops);
}

static void check_parents(const struct workload *w) {
  for (int p = 0; p < w->n_parents; p++)
    T_ASSERT(t_file_hash(w->parents[p]) == w->parent_hash[p], "%s: parent %s changed", w->label,
             w->parents[p]);
}

/* One source, two programs: test-vhd-crash injects faults, and
 * test-vhd-crash-lost (built with CRASH_LOST_WRITES) drops unsynced writes. */
static void run_both(struct workload *w, uint32_t bs, size_t n_ops) {
  finish_setup(w, bs, n_ops);
#ifdef CRASH_LOST_WRITES
  crash_by_lost_writes(w, 2 + (unsigned)t_scaled(3));
#else
  crash_by_fault(w);
  fail_once_each(w, VHD_FAULT_SYNC_ONCE);
  fail_once_each(w, VHD_FAULT_WRITE_ONCE);
#endif
  check_parents(w);
  free_workload(w);
}

static void test_dynamic(const char *label, uint64_t size, uint32_t bs, bool prefill,
                         size_t n_ops) {
  struct workload w = {.label = label};
  snprintf(w.pristine, sizeof w.pristine, "%s", t_path(t_fmt("%s.vhd", label)));
  /* The default block size as a user gets it: by asking for none. */
  t_create(w.pristine, VHD_TYPE_DYNAMIC, size, bs == VHD_DEFAULT_BLOCK_SIZE ? 0 : bs, true, NULL);
  if (prefill)
    fill_some(w.pristine, bs);
  run_both(&w, bs, n_ops);
}

static void test_differencing(const char *label, int depth, uint64_t size, uint32_t bs,
                              size_t n_ops) {
  struct workload w = {.label = label, .n_parents = depth - 1};
  char prev[4096];
  for (int lvl = 0; lvl < depth; lvl++) {
    const char *p = t_path(t_fmt("%s-%d.vhd", label, lvl));
    if (lvl == 0)
      t_create(p, VHD_TYPE_DYNAMIC, size, bs, true, NULL);
    else
      t_create(p, VHD_TYPE_DIFFERENCING, 0, bs, false, prev);
    if (lvl < depth - 1) {
      fill_some(p, bs);
      snprintf(w.parents[lvl], sizeof w.parents[lvl], "%s", p);
    } else {
      snprintf(w.pristine, sizeof w.pristine, "%s", p);
    }
    snprintf(prev, sizeof prev, "%s", p);
  }
  run_both(&w, bs, n_ops);
}

/* snprintf into the array buf, failing the test on a path too long. */
#define PATH_FMT(buf, ...)                                                                     \
  T_ASSERT(snprintf(buf, sizeof buf, __VA_ARGS__) < (int)sizeof buf, "path too long: %s", buf)

/* ---- images other writers laid out ----
 *
 * VHD_CRASH_FOREIGN=DIR: the workloads also run on the images of
 * DIR/manifest (tests/interop/make-foreign-vhd.py's, and what the shell
 * test adds: QEMU's), each with its parents: Windows', Xen's, VirtualBox's
 * and QEMU's layouts, block sizes, gaps and foreign bytes, not only the
 * engine's own.  NAME.raw, the writer's account of the content, must be
 * what the engine reads before anything runs. */
static void test_foreign_image(const char *dir, const char *name, const char *type, uint32_t bs,
                               const char *parents, size_t n_ops) {
  struct workload w = {.label = strdup(t_fmt("foreign-%s", name))};
  T_ASSERT(w.label != NULL, "strdup");
  char here[4096]; /* t_path and t_fmt reuse their buffers */
  PATH_FMT(here, "%s", t_path("foreign"));
  PATH_FMT(w.pristine, "%s/%s.vhd", here, name);
  if (strcmp(parents, "-") != 0) {
    CLEANUP_FREE char *list = strdup(parents);
    T_ASSERT(list != NULL, "strdup");
    char *save = NULL;
    for (char *p = strtok_r(list, ",", &save); p; p = strtok_r(NULL, ",", &save)) {
      T_ASSERT(w.n_parents < (int)ARRAY_SIZE(w.parents), "%s: more than %zu parents", name,
               ARRAY_SIZE(w.parents));
      PATH_FMT(w.parents[w.n_parents], "%s/%s.vhd", here, p);
      w.n_parents++;
    }
  }
  uint64_t size;
  CLEANUP_FREE uint8_t *got = read_image(w.pristine, &size);
  CLEANUP_FREE uint8_t *want = t_xmalloc(size);
  char raw[4096];
  PATH_FMT(raw, "%s/%s.raw", dir, name);
  int fd = open(raw, O_RDONLY | O_CLOEXEC);
  T_ASSERT(fd >= 0 && pread(fd, want, size, 0) == (ssize_t)size && close(fd) == 0,
           "reading %" PRIu64 " bytes of %s: %m", size, raw);
  T_ASSERT(memcmp(got, want, size) == 0, "%s: the engine reads other data than %s", name, raw);

  struct vhd_check_opts co = {0};
  struct vhd_err err = {{0}};
  start_findings = vhd_check(w.pristine, &co, &err);
  T_ASSERT(start_findings >= 0, "%s: vhd_check: %s", name, err.msg);
  char copy[4096];
  PATH_FMT(copy, "%s/%s-repaired.vhd", here, name);
  t_copy_file(w.pristine, copy);
  co.repair = true;
  T_ASSERT(vhd_check(copy, &co, &err) >= 0, "%s: vhd_check --repair: %s", name, err.msg);
  co.repair = false;
  start_findings_repaired = vhd_check(copy, &co, &err);
  T_ASSERT(start_findings_repaired >= 0 && !(start_findings_repaired & VHD_CHECK_CORRUPT),
           "%s: a repaired copy still checks 0x%x: %s", name, start_findings_repaired, err.msg);
  unlink(copy);
  printf("# %s: %s, %u-byte blocks, starting findings 0x%x (0x%x repaired)\n", name, type, bs,
         start_findings, start_findings_repaired);
  run_both(&w, bs, n_ops);
  start_findings = start_findings_repaired = 0;
  free((char *)w.label);
}

static void test_foreign(const char *dir) {
  char here[4096];
  PATH_FMT(here, "%s", t_path("foreign"));
  T_ASSERT(mkdir(here, 0755) == 0 || errno == EEXIST, "mkdir %s: %m", here);
  char manifest[4096];
  PATH_FMT(manifest, "%s/manifest", dir);
  FILE *f = fopen(manifest, "re");
  T_ASSERT(f != NULL, "%s: %m", manifest);
  char line[4096];
  /* Every image first: children find their parents beside them. */
  while (fgets(line, sizeof line, f)) {
    char name[256];
    char from[4096];
    if (sscanf(line, "%255s", name) == 1) {
      PATH_FMT(from, "%s/%s.vhd", dir, name);
      t_copy_file(from, t_fmt("%s/%s.vhd", here, name));
    }
  }
  rewind(f);
  unsigned n = 0;
  while (fgets(line, sizeof line, f)) {
    char name[256], type[32], readers[64], parents[1024];
    unsigned long bs;
    if (sscanf(line, "%255s %31s %lu %*s %*s %63s %1023s", name, type, &bs, readers, parents) !=
        5)
      continue;
    test_foreign_image(dir, name, type, strcmp(type, "fixed") == 0 ? 4096 : (uint32_t)bs,
                       parents, 24);
    n++;
  }
  fclose(f);
  T_ASSERT(n > 0, "%s lists no image", manifest);
  printf("ok %u images other writers laid out\n", n);
}

int main(void) {
#ifdef CRASH_LOST_WRITES
  t_init("test-vhd-crash-lost");
#else
  t_init("test-vhd-crash");
#endif
  sample_dir = getenv("VHD_CRASH_SAMPLE_DIR");
  const char *every = getenv("VHD_CRASH_SAMPLE_EVERY");
  if (every && strtoul(every, NULL, 10) > 0)
    sample_every = strtoul(every, NULL, 10);
  /* VHD_CRASH_ONLY_FOREIGN: the images of VHD_CRASH_FOREIGN alone. */
  const char *only = getenv("VHD_CRASH_ONLY_FOREIGN");
  if (!only || !*only || strcmp(only, "0") == 0) {
    test_dynamic("dynamic-4k", 40 * 1024 + 1536, 4096, false, 40);
    test_dynamic("dynamic-4k-prefilled", 40 * 1024 + 1536, 4096, true, 40);
    test_dynamic("dynamic-512", 8 * 1024, 512, false, 40);
    test_dynamic("dynamic-64k", 256 * 1024 + 512, 65536, true, 30);
    /* Two blocks of the default 2 MiB, the second cut short by the disk's end. */
    test_dynamic("dynamic-2m", VHD_DEFAULT_BLOCK_SIZE + 96 * 1024 + 512, VHD_DEFAULT_BLOCK_SIZE,
                 false, 14);
    test_differencing("differencing", 2, 40 * 1024 + 1536, 4096, 40);
    test_differencing("differencing-3", 3, 24 * 1024, 4096, 30);
  }
  const char *foreign = getenv("VHD_CRASH_FOREIGN");
  if (foreign && *foreign)
    test_foreign(foreign);
  if (sample_dir)
    printf("%lu crash images saved for other readers, of %lu\n", n_samples, n_crashes);
  return 0;
}
