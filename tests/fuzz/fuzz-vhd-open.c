/* fuzz-vhd-open.c: arbitrary bytes as an image file, through the engine's
 * public API (vhd.h) only.
 *
 * Per input: the bytes go into a memfd opened as /proc/self/fd/N; then
 *   1. a read-only open (parents looked up) whose map and reads must agree:
 *      runs mapped as unallocated read as zeros, runs held by the image read
 *      as the file bytes the map points at, and a write must be refused;
 *   2. vhd_check;
 *   3. a read-write session (with or without the parent, so differencing
 *      images are written even when it is missing) of writes, zeroing, trims
 *      and flushes at input-derived offsets: every write must read back at
 *      once, the image must reopen after vhd_close with every write in
 *      place, and an image that checked clean must still check clean;
 *   4. (FUZZ_VHD_REPAIR=1) vhd_check with repair, which must not change
 *      what the disk reads;
 *   5. (FUZZ_VHD_COMPACT=1) vhd_compact, which moves and frees blocks:
 *      whether it succeeds or refuses, the disk (with its parent) must read
 *      as before, and an image that opened before must open after;
 *   6. (FUZZ_VHD_REBASE=1) vhd_rebase -u onto a copy of the parent at
 *      another path (the header's parent fields and both locators
 *      rewritten, new locator data placed among what the input holds):
 *      whether it succeeds or refuses, an image that opened before must
 *      open after and read the same;
 *   7. (FUZZ_VHD_RESIZE=1) vhd_resize to an input-derived size, larger or
 *      smaller: the image must still open, keep what the smaller size held,
 *      read zeros in what growing added, and a refusal change nothing.
 * Any broken rule aborts (FUZZ_ASSERT), which libFuzzer reports as a crash. */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "endian-be.h"
#include "fuzz-common.h"
#include "vhd-parent.h"
#include "vhd.h"

#define MAX_IO (16u * 1024)       /* per read or write: keeps one input fast */
#define MAX_OPS 8
#define MAP_LIMIT (64u * 1024 * 1024) /* mapped per full pass */
#define MAP_MAX_RUNS 4096u        /* runs examined per vhd_map call */
#define VERIFY_BUDGET (1u << 20)  /* bytes compared against the file per input */

static void ignore_warning(void *opaque, const char *msg) {
  (void)opaque;
  (void)msg;
}

static void ignore_report(void *opaque, const char *level, const char *msg) {
  (void)opaque;
  (void)level;
  (void)msg;
}

/* Engine errors are negative errnos with a message naming what is at fault. */
static void assert_error(int r, const struct vhd_err *err, const char *what) {
  FUZZ_ASSERT(r < 0 && r > -4096, "%s returned %d, not a negative errno", what, r);
  FUZZ_ASSERT(err->msg[0] != '\0', "%s failed (%s) without a message", what, strerror(-r));
}

/* The input as the content of the one memfd every input uses: rewritten
 * in place and cut to size, so its pages are reused rather than freed and
 * zeroed again for each input. */
static int memfd_with(const uint8_t *data, size_t size) {
  static int fd = -1;
  if (fd < 0) {
    fd = memfd_create("vhdnbd-fuzz-image", MFD_CLOEXEC);
    FUZZ_ASSERT(fd >= 0, "memfd_create: %s", strerror(errno));
  }
  size_t done = 0;
  while (done < size) {
    ssize_t n = pwrite(fd, data + done, size - done, (off_t)done);
    FUZZ_ASSERT(n > 0, "writing the input to the memfd: %s", strerror(errno));
    done += (size_t)n;
  }
  FUZZ_ASSERT(ftruncate(fd, (off_t)size) == 0, "ftruncate: %s", strerror(errno));
  return fd;
}

/* A range inside the disk, biased towards the first blocks and the end,
 * with unaligned starts and lengths half the time (sub-sector paths). */
static void pick_range(struct fuzz_rng *rng, uint64_t vsize, uint64_t *off, size_t *len) {
  uint64_t o;
  switch (fuzz_rng_below(rng, 4)) {
  case 0:
  case 1:
    o = fuzz_rng_below(rng, vsize < 262144 ? vsize : 262144);
    break;
  case 2: {
    uint64_t back = 1 + fuzz_rng_below(rng, 65536);
    o = back < vsize ? vsize - back : 0;
    break;
  }
  default:
    o = fuzz_rng_below(rng, vsize);
  }
  if (fuzz_rng_below(rng, 2))
    o &= ~(uint64_t)511;
  uint64_t l = 1 + fuzz_rng_below(rng, MAX_IO);
  if (fuzz_rng_below(rng, 2))
    l = (l + 511) & ~(uint64_t)511;
  if (l > vsize - o)
    l = vsize - o;
  *off = o;
  *len = (size_t)l;
}

/* ---- map and read must agree ---- */

struct map_check {
  uint64_t next, end;
  unsigned runs;
  const uint8_t *file; /* the input: what depth-0 runs must read as */
  size_t file_size;
  const uint8_t *buf;  /* what vhd_read returned for [start, end), or NULL */
  uint64_t start;
  size_t *budget;
};

FUZZ_NO_COVERAGE
static int check_run(void *opaque, const struct vhd_extent *e) {
  struct map_check *m = opaque;
  FUZZ_ASSERT(e->offset == m->next, "map run at %llu, expected %llu (gap or overlap)",
              (unsigned long long)e->offset, (unsigned long long)m->next);
  FUZZ_ASSERT(e->length > 0 && e->length <= m->end - e->offset,
              "map run at %llu of %llu bytes leaves the range ending at %llu",
              (unsigned long long)e->offset, (unsigned long long)e->length,
              (unsigned long long)m->end);
  FUZZ_ASSERT(!(e->flags & ~(unsigned)(VHD_MAP_DATA | VHD_MAP_ZERO)), "map run flags 0x%x",
              e->flags);
  FUZZ_ASSERT((e->depth < 0) == !(e->flags & VHD_MAP_DATA),
              "map run at %llu: depth %d with flags 0x%x", (unsigned long long)e->offset,
              e->depth, e->flags);
  FUZZ_ASSERT(e->depth >= -1 && e->depth < VHD_MAX_CHAIN_DEPTH, "map run depth %d", e->depth);
  if (e->depth == 0)
    FUZZ_ASSERT(e->file_offset <= m->file_size && e->length <= m->file_size - e->file_offset,
                "map run at %llu points at file bytes %llu+%llu outside the %zu-byte file",
                (unsigned long long)e->offset, (unsigned long long)e->file_offset,
                (unsigned long long)e->length, m->file_size);
  if (m->buf) {
    size_t n = (size_t)e->length;
    if (n > *m->budget)
      n = *m->budget;
    *m->budget -= n;
    const uint8_t *got = m->buf + (e->offset - m->start);
    for (size_t i = 0; i < n; i++) {
      if (e->depth < 0)
        FUZZ_ASSERT(got[i] == 0, "byte %llu is in a run mapped as zeros but reads as 0x%02x",
                    (unsigned long long)(e->offset + i), got[i]);
      else if (e->depth == 0)
        FUZZ_ASSERT(got[i] == m->file[e->file_offset + i],
                    "byte %llu reads as 0x%02x but the map points at file offset %llu holding "
                    "0x%02x",
                    (unsigned long long)(e->offset + i), got[i],
                    (unsigned long long)(e->file_offset + i), m->file[e->file_offset + i]);
    }
  }
  m->next = e->offset + e->length;
  return ++m->runs >= MAP_MAX_RUNS;
}

static void map_and_check(vhd_t *v, uint64_t off, uint64_t len, const uint8_t *buf,
                          const uint8_t *data, size_t size, size_t *budget) {
  struct map_check m = {.next = off,
                        .end = off + len,
                        .file = data,
                        .file_size = size,
                        .buf = buf,
                        .start = off,
                        .budget = budget};
  struct vhd_err err = {.msg = ""};
  int r = vhd_map(v, off, len, check_run, &m, &err);
  if (r < 0) {
    assert_error(r, &err, "vhd_map");
    return;
  }
  if (r == 0)
    FUZZ_ASSERT(m.next == m.end, "vhd_map of [%llu, %llu) stopped at %llu",
                (unsigned long long)off, (unsigned long long)(off + len),
                (unsigned long long)m.next);
}

static void read_phase(const char *path, const uint8_t *data, size_t size,
                       struct fuzz_rng *rng) {
  static const enum vhd_size_rule rules[4] = {VHD_SIZE_AUTO, VHD_SIZE_AUTO, VHD_SIZE_CURRENT,
                                              VHD_SIZE_CHS};
  struct vhd_open_opts oo = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
                             .size_rule = rules[fuzz_rng_below(rng, 4)],
                             .warn = ignore_warning};
  vhd_t *v = NULL;
  struct vhd_err err = {.msg = ""};
  int r = vhd_open(path, &oo, &v, &err);
  if (r < 0) {
    assert_error(r, &err, "vhd_open (read-only)");
    return;
  }
  struct vhd_info info;
  vhd_get_info(v, &info);
  uint64_t vsize = vhd_virtual_size(v);
  FUZZ_ASSERT(vsize > 0 && vsize % 512 == 0 && vsize <= VHD_MAX_VIRTUAL_SIZE,
              "virtual size %llu", (unsigned long long)vsize);
  FUZZ_ASSERT(info.virtual_size == vsize && info.type == vhd_get_type(v), "info disagrees");
  FUZZ_ASSERT(vhd_is_readonly(v), "read-only open gave a writable handle");

  size_t budget = VERIFY_BUDGET;
  map_and_check(v, 0, vsize < MAP_LIMIT ? vsize : MAP_LIMIT, NULL, data, size, &budget);

  static uint8_t buf[MAX_IO];
  for (int i = 0; i < 4; i++) {
    uint64_t off;
    size_t len;
    pick_range(rng, vsize, &off, &len);
    err.msg[0] = '\0';
    r = vhd_read(v, buf, off, len, &err);
    if (r < 0) {
      assert_error(r, &err, "vhd_read");
      continue;
    }
    map_and_check(v, off, len, buf, data, size, &budget);
    (void)vhd_zero_is_fast(v, off, len);
  }
  /* Out-of-range requests are refused, never served. */
  err.msg[0] = '\0';
  r = vhd_read(v, buf, vsize - 512, 1024, &err);
  FUZZ_ASSERT(r < 0, "a read past the end of the disk succeeded");
  err.msg[0] = '\0';
  r = vhd_write(v, buf, 0, 512, 0, &err);
  FUZZ_ASSERT(r < 0, "a write through a read-only handle succeeded");
  r = vhd_close(v, &err);
  FUZZ_ASSERT(r == 0, "closing a read-only handle failed: %s", err.msg);
}

/* ---- read-write session ---- */

enum op_kind { OP_WRITE, OP_ZERO, OP_TRIM, OP_FLUSH };
struct op {
  enum op_kind kind;
  uint64_t off;
  size_t len;
  uint8_t seed;
  bool ok;
};

/* Not periodic within a block, so misplaced sectors are noticed.  No branch:
 * nothing to instrument, so it may be inlined anywhere. */
static inline uint8_t pattern(uint8_t seed, uint64_t i) {
  return (uint8_t)(seed + i * 7 + (i >> 9) * 13);
}

FUZZ_NO_COVERAGE
static void fill_pattern(uint8_t *buf, size_t len, uint8_t seed, uint64_t from) {
  for (size_t b = 0; b < len; b++)
    buf[b] = pattern(seed, from + b);
}

/* What [off, off+len) must hold after ops: known[i] says whether byte i is
 * determined (a trim or a failed operation makes it undefined).  Returns
 * whether every byte is. */
FUZZ_NO_COVERAGE
static bool expected(const struct op *ops, int n, uint64_t off, size_t len, uint8_t *exp,
                     uint8_t *known) {
  memset(known, 0, len);
  for (int j = 0; j < n; j++) {
    const struct op *o = &ops[j];
    if (o->kind == OP_FLUSH)
      continue;
    uint64_t lo = o->off > off ? o->off : off;
    uint64_t hi = o->off + o->len < off + len ? o->off + o->len : off + len;
    if (lo >= hi)
      continue;
    size_t i = (size_t)(lo - off), k = (size_t)(hi - lo);
    if (!o->ok || o->kind == OP_TRIM) {
      memset(known + i, 0, k);
      continue;
    }
    memset(known + i, 1, k);
    if (o->kind == OP_WRITE)
      fill_pattern(exp + i, k, o->seed, lo - o->off);
    else
      memset(exp + i, 0, k);
  }
  return memchr(known, 0, len) == NULL;
}

FUZZ_NO_COVERAGE
static void verify_ops(vhd_t *v, const struct op *ops, int first, int n, const char *when) {
  static uint8_t got[MAX_IO], exp[MAX_IO], known[MAX_IO];
  for (int i = first; i < n; i++) {
    const struct op *o = &ops[i];
    if (o->kind == OP_FLUSH || o->len == 0)
      continue;
    struct vhd_err err = {.msg = ""};
    int r = vhd_read(v, got, o->off, o->len, &err);
    FUZZ_ASSERT(r == 0, "%s: reading back [%llu, +%zu): %s", when,
                (unsigned long long)o->off, o->len, err.msg);
    if (expected(ops, n, o->off, o->len, exp, known) && memcmp(got, exp, o->len) == 0)
      continue;
    for (size_t k = 0; k < o->len; k++)
      FUZZ_ASSERT(!known[k] || got[k] == exp[k],
                  "%s: byte %llu reads 0x%02x, expected 0x%02x (operation %d of %d)", when,
                  (unsigned long long)(o->off + k), got[k], exp[k], i, n);
  }
}

static int run_check(const char *path) {
  struct vhd_check_opts co = {.repair = false, .report = ignore_report};
  struct vhd_err err = {.msg = ""};
  int r = vhd_check(path, &co, &err);
  if (r < 0)
    assert_error(r, &err, "vhd_check");
  return r;
}

static void write_phase(const char *path, struct fuzz_rng *rng, int check_before) {
  /* Without the parent half of the time, so that differencing images whose
   * parent is not found are written too. */
  unsigned parent_flag = fuzz_rng_below(rng, 2) ? VHD_OPEN_NOPARENT : 0;
  struct vhd_open_opts oo = {.flags = VHD_OPEN_NOLOCK | parent_flag, .warn = ignore_warning};
  vhd_t *v = NULL;
  struct vhd_err err = {.msg = ""};
  int r = vhd_open(path, &oo, &v, &err);
  if (r < 0) {
    assert_error(r, &err, "vhd_open (read-write)");
    return;
  }
  FUZZ_ASSERT(!vhd_is_readonly(v), "read-write open gave a read-only handle");
  uint64_t vsize = vhd_virtual_size(v);
  struct op ops[MAX_OPS];
  int n = 1 + (int)fuzz_rng_below(rng, MAX_OPS);
  bool all_ok = true;
  static uint8_t buf[MAX_IO];
  for (int i = 0; i < n; i++) {
    struct op *o = &ops[i];
    uint64_t k = fuzz_rng_below(rng, 10);
    o->kind = k < 5 ? OP_WRITE : k < 7 ? OP_ZERO : k < 8 ? OP_TRIM : OP_FLUSH;
    o->seed = (uint8_t)fuzz_rng_next(rng);
    o->off = 0;
    o->len = 0;
    if (o->kind != OP_FLUSH)
      pick_range(rng, vsize, &o->off, &o->len);
    unsigned flags = 0;
    err.msg[0] = '\0';
    switch (o->kind) {
    case OP_WRITE:
      fill_pattern(buf, o->len, o->seed, 0);
      flags = fuzz_rng_below(rng, 3) == 0 ? VHD_FUA : 0;
      r = vhd_write(v, buf, o->off, o->len, flags, &err);
      break;
    case OP_ZERO:
      flags = (unsigned)fuzz_rng_below(rng, 3);
      flags = flags == 1 ? VHD_MAY_TRIM : flags == 2 ? VHD_NO_HOLE : 0;
      if (fuzz_rng_below(rng, 3) == 0)
        flags |= VHD_FUA;
      r = vhd_write_zeroes(v, o->off, o->len, flags, &err);
      break;
    case OP_TRIM:
      r = vhd_trim(v, o->off, o->len, 0, &err);
      break;
    case OP_FLUSH:
      r = vhd_flush(v, &err);
      break;
    }
    o->ok = r == 0;
    if (r < 0) {
      assert_error(r, &err, "a write, zero, trim or flush");
      all_ok = false;
      continue;
    }
    /* Read-your-writes, immediately. */
    if (o->kind == OP_WRITE || o->kind == OP_ZERO)
      verify_ops(v, ops, i, i + 1, "just after the write");
  }
  err.msg[0] = '\0';
  r = vhd_close(v, &err);
  if (r < 0) {
    assert_error(r, &err, "vhd_close");
    all_ok = false;
  }
  if (!all_ok)
    return; /* the engine said so: no promise about the image */

  /* What was written and closed must reopen, with the data in place. */
  oo.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK | parent_flag;
  err.msg[0] = '\0';
  r = vhd_open(path, &oo, &v, &err);
  FUZZ_ASSERT(r == 0, "the image does not reopen after a clean read-write session: %s",
              err.msg);
  verify_ops(v, ops, 0, n, "after close and reopen");
  vhd_close(v, NULL);

  if (check_before >= 0 && !(check_before & VHD_CHECK_CORRUPT)) {
    int after = run_check(path);
    FUZZ_ASSERT(after >= 0 && !(after & VHD_CHECK_CORRUPT),
                "an image that checked clean (0x%x) checks corrupt (%d) after writes",
                check_before, after);
  }
}

/* vhd_check --repair may fix metadata, never change what the disk reads, and
 * what it calls repaired must then check clean.  On unless FUZZ_VHD_REPAIR=0
 * (regressions/vhd-open/repair-footer-over-bat is the case that once broke
 * it). */
static void repair_phase(const char *path) {
  static uint8_t before[4 * MAX_IO], after[4 * MAX_IO];
  struct vhd_open_opts oo = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK | VHD_OPEN_NOPARENT,
                             .warn = ignore_warning};
  vhd_t *v = NULL;
  size_t len = 0;
  if (vhd_open(path, &oo, &v, NULL) == 0) {
    uint64_t vsize = vhd_virtual_size(v);
    len = vsize < sizeof before ? (size_t)vsize : sizeof before;
    if (vhd_read(v, before, 0, len, NULL) < 0)
      len = 0;
    vhd_close(v, NULL);
  }
  struct vhd_check_opts co = {.repair = true, .report = ignore_report};
  struct vhd_err err = {.msg = ""};
  int r = vhd_check(path, &co, &err);
  if (r < 0) {
    assert_error(r, &err, "vhd_check --repair");
    return;
  }
  if (r & VHD_CHECK_CORRUPT)
    return;
  int again = run_check(path);
  FUZZ_ASSERT(again >= 0 && !(again & VHD_CHECK_CORRUPT),
              "check --repair found no corruption (0x%x) but a check after it did (%d)", r,
              again);
  if (!len)
    return;
  err.msg[0] = '\0';
  r = vhd_open(path, &oo, &v, &err);
  FUZZ_ASSERT(r == 0, "the image does not open after check --repair: %s", err.msg);
  r = vhd_read(v, after, 0, len, &err);
  FUZZ_ASSERT(r == 0, "reading after check --repair: %s", err.msg);
  FUZZ_ASSERT(memcmp(before, after, len) == 0, "check --repair changed the disk's content");
  vhd_close(v, NULL);
}

/* ---- vhd_compact: what the disk reads stays ---- */

/* What a disk reads, as a digest (FNV-1a over the offset and bytes of each
 * sector that is not all zeros), taken from the runs the map calls data:
 * the rest reads as zeros.  Disks holding more than the budget are not
 * digested. */
#define DIGEST_EMPTY 0xcbf29ce484222325ull /* of a range reading all zeros */

struct digest {
  vhd_t *v;
  uint64_t h;
  size_t budget;
  bool over;
};

FUZZ_NO_COVERAGE
static void digest_bytes(struct digest *d, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++)
    d->h = (d->h ^ b[i]) * 0x100000001b3ull;
}

FUZZ_NO_COVERAGE
static int digest_run(void *opaque, const struct vhd_extent *e) {
  struct digest *d = opaque;
  if (!(e->flags & VHD_MAP_DATA))
    return 0;
  if (e->length > d->budget) {
    d->over = true;
    return 1;
  }
  d->budget -= (size_t)e->length;
  static uint8_t buf[MAX_IO];
  static const uint8_t zeros[512];
  for (uint64_t off = e->offset; off < e->offset + e->length;) {
    size_t n = (size_t)(e->offset + e->length - off < sizeof buf ? e->offset + e->length - off
                                                                 : sizeof buf);
    struct vhd_err err = {.msg = ""};
    int r = vhd_read(d->v, buf, off, n, &err);
    FUZZ_ASSERT(r == 0, "reading %zu bytes at %llu of a mapped run: %s", n,
                (unsigned long long)off, err.msg);
    for (size_t s = 0; s < n; s += 512) {
      size_t k = n - s < 512 ? n - s : 512;
      if (memcmp(buf + s, zeros, k) == 0)
        continue;
      uint64_t at = off + s;
      digest_bytes(d, &at, sizeof at);
      digest_bytes(d, buf + s, k);
    }
    off += n;
  }
  return 0;
}

/* The digest of [from, to) of path's disk (to capped at its size), opened
 * read-only with its parent; false when it does not open or [from, to)
 * holds more than the budget.  *vsize: the disk's size. */
static bool disk_digest(const char *path, uint64_t from, uint64_t to, uint64_t *h,
                        uint64_t *vsize) {
  struct vhd_open_opts oo = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK, .warn = ignore_warning};
  vhd_t *v = NULL;
  if (vhd_open(path, &oo, &v, NULL) < 0)
    return false;
  struct digest d = {.v = v, .h = DIGEST_EMPTY, .budget = VERIFY_BUDGET};
  *vsize = vhd_virtual_size(v);
  if (to > *vsize)
    to = *vsize;
  struct vhd_err err = {.msg = ""};
  int r = from < to ? vhd_map(v, from, to - from, digest_run, &d, &err) : 0;
  FUZZ_ASSERT(r >= 0, "vhd_map of an image that opened: %s", err.msg);
  vhd_close(v, NULL);
  *h = d.h;
  return !d.over;
}

/* Whether path opens read-only, with its parent. */
static bool opens(const char *path, struct vhd_err *err) {
  struct vhd_open_opts oo = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK, .warn = ignore_warning};
  vhd_t *v = NULL;
  if (vhd_open(path, &oo, &v, err) < 0)
    return false;
  vhd_close(v, NULL);
  return true;
}

/* Runs op on path.  Whether it succeeds or refuses (with a message), an
 * image that opened before must open after, at the same virtual size,
 * holding no more data and reading the same. */
static void keeps_disk(const char *path, const char *what,
                       int (*op)(const char *path, void *arg, struct vhd_err *err), void *arg) {
  uint64_t before = 0, vsize = 0;
  bool opened = disk_digest(path, 0, UINT64_MAX, &before, &vsize);
  struct vhd_err err = {.msg = ""};
  int r = op(path, arg, &err);
  if (r < 0)
    assert_error(r, &err, what);
  if (!opened)
    return;
  err.msg[0] = '\0';
  FUZZ_ASSERT(opens(path, &err), "the image opened before %s (which returned %d) and not after: %s",
              what, r, err.msg);
  uint64_t after = 0, vsize_after = 0;
  bool again = disk_digest(path, 0, UINT64_MAX, &after, &vsize_after);
  FUZZ_ASSERT(vsize_after == vsize, "%s changed the virtual size from %llu to %llu", what,
              (unsigned long long)vsize, (unsigned long long)vsize_after);
  /* Blocks may be freed or moved, never data added: what fitted still does. */
  FUZZ_ASSERT(again, "after %s the disk holds more data than before", what);
  FUZZ_ASSERT(after == before, "%s (which returned %d) changed what the disk reads", what, r);
}

static int compact_op(const char *path, void *arg, struct vhd_err *err) {
  (void)arg;
  struct vhd_compact_opts co = {.warn = ignore_warning};
  struct vhd_compact_result res;
  return vhd_compact(path, &co, &res, err);
}

/* ---- vhd_rebase -u: the child reads the same through the parent's copy ---- */

static char rebase_parent[4200];

static void remove_rebase_parent(void) {
  unlink(rebase_parent);
  *strrchr(rebase_parent, '/') = '\0';
  rmdir(rebase_parent);
}

/* The parent again, as a file (relink resolves the parent's path, which a
 * descriptor of an unlinked file has not): made as the one installed at
 * FUZZ_PARENT_FD is, so that its unique id and content are the same. */
static bool make_rebase_parent(void) {
  static int made = -1;
  if (made >= 0)
    return made;
  const char *tmp = getenv("TMPDIR");
  char dir[4096];
  snprintf(dir, sizeof dir, "%s/vhdnbd-fuzz-rebase.XXXXXX", tmp && *tmp ? tmp : "/tmp");
  made = mkdtemp(dir) != NULL;
  if (made) {
    snprintf(rebase_parent, sizeof rebase_parent, "%s/parent.vhd", dir);
    made = fuzz_vhd_make_parent(rebase_parent) == 0;
    if (made)
      atexit(remove_rebase_parent);
    else
      rmdir(dir);
  }
  if (!made)
    fprintf(stderr, "warning: no parent copy for the rebase phase\n");
  return made;
}

static int rebase_op(const char *path, void *arg, struct vhd_err *err) {
  (void)arg;
  struct vhd_rebase_opts ro = {.new_parent = rebase_parent, .unsafe = true,
                               .warn = ignore_warning};
  struct vhd_rebase_result res;
  return vhd_rebase(path, &ro, &res, err);
}

/* ---- vhd_resize: the disk up to the smaller size stays, the rest is zeros ---- */

static void resize_phase(const char *path, struct fuzz_rng *rng) {
  uint64_t vsize = 0, h = 0;
  if (!disk_digest(path, 0, 0, &h, &vsize))
    return; /* does not open: resize must refuse it, as check did */
  /* At most 512 MiB: a BAT of 512-byte blocks for that is 4 MiB, which
   * keeps an input fast. */
  uint64_t step =
      (1 + fuzz_rng_below(rng, 64)) * (uint64_t)(64 * 1024) << fuzz_rng_below(rng, 8);
  bool shrink = fuzz_rng_below(rng, 3) == 0;
  /* A shrink to an exact size, so that the size kept is known; a growth
   * rounded as create rounds may still not end under the old size. */
  struct vhd_resize_opts ro = {.warn = ignore_warning, .shrink = shrink,
                               .exact_size = shrink || fuzz_rng_below(rng, 2)};
  ro.size = shrink ? (step < vsize ? vsize - step : 512) : vsize + step;
  if (ro.size > VHD_MAX_VIRTUAL_SIZE)
    ro.size = VHD_MAX_VIRTUAL_SIZE;
  /* What the smaller of the two sizes holds, before. */
  uint64_t keep = ro.size < vsize ? ro.size : vsize, before = 0, unused = 0;
  if (!disk_digest(path, 0, keep, &before, &unused))
    return;
  struct vhd_resize_result res = {0};
  struct vhd_err err = {.msg = ""};
  int r = vhd_resize(path, &ro, &res, &err);
  if (r < 0)
    assert_error(r, &err, "vhd_resize");
  err.msg[0] = '\0';
  FUZZ_ASSERT(opens(path, &err), "the image opened before vhd_resize (which returned %d) and not "
              "after: %s", r, err.msg);
  uint64_t now = 0, after = 0, tail = 0;
  FUZZ_ASSERT(disk_digest(path, 0, keep, &after, &now), "the disk holds more after vhd_resize");
  if (r < 0) {
    FUZZ_ASSERT(now == vsize, "a failed vhd_resize changed the size from %llu to %llu",
                (unsigned long long)vsize, (unsigned long long)now);
  } else {
    /* The size served may be the geometry's, under the current size. */
    FUZZ_ASSERT(now == res.new_size && res.old_size >= vsize,
                "vhd_resize reported %llu -> %llu; the disk was %llu and is %llu",
                (unsigned long long)res.old_size, (unsigned long long)res.new_size,
                (unsigned long long)vsize, (unsigned long long)now);
    FUZZ_ASSERT(shrink || now >= vsize, "growing made the disk smaller: %llu -> %llu",
                (unsigned long long)vsize, (unsigned long long)now);
  }
  FUZZ_ASSERT(after == before,
              "vhd_resize (which returned %d) changed the disk's first %llu bytes", r,
              (unsigned long long)keep);
  /* Growing adds zeros past the old current size (bytes between the
   * geometry's size and it were the image's, only not served). */
  if (r == 0 && now > res.old_size && disk_digest(path, res.old_size, now, &tail, &unused))
    FUZZ_ASSERT(tail == DIGEST_EMPTY, "the %llu bytes vhd_resize added do not read as zeros",
                (unsigned long long)(now - res.old_size));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static bool parent_tried;
  if (!parent_tried) {
    parent_tried = true;
    int r = fuzz_vhd_install_parent();
    if (r < 0)
      fprintf(stderr, "warning: no parent image for differencing inputs: %s\n", strerror(-r));
  }
  struct fuzz_rng rng;
  fuzz_rng_seed(&rng, data, size);
  int fd = memfd_with(data, size);
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);

  read_phase(path, data, size, &rng);
  int check_before = run_check(path);
  write_phase(path, &rng, check_before);
  /* Each later phase is on unless its variable is 0; read once. */
  static int on[4] = {-1, -1, -1, -1};
  static const char *const vars[4] = {"FUZZ_VHD_REPAIR", "FUZZ_VHD_COMPACT", "FUZZ_VHD_REBASE",
                                      "FUZZ_VHD_RESIZE"};
  for (int i = 0; i < 4; i++)
    if (on[i] < 0) {
      const char *e = getenv(vars[i]);
      on[i] = !(e && strcmp(e, "0") == 0);
    }
  if (on[0])
    repair_phase(path);
  if (on[1])
    keeps_disk(path, "vhd_compact", compact_op, NULL);
  if (on[2] && make_rebase_parent())
    keeps_disk(path, "vhd_rebase -u", rebase_op, NULL);
  if (on[3])
    resize_phase(path, &rng);
  return 0;
}

#ifndef FUZZ_STANDALONE
/* Most mutations break the footer or header checksum, and the engine then
 * rejects the image at once; recomputing them (most of the time) lets the
 * fuzzer reach the BAT, bitmaps, parent locators and the write paths. */
size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size);
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed);

FUZZ_NO_COVERAGE
static uint32_t checksum(const uint8_t *p, size_t len, size_t csum_off) {
  uint32_t sum = 0;
  for (size_t i = 0; i < len; i++)
    if (i < csum_off || i >= csum_off + 4)
      sum += p[i];
  return ~sum;
}

static void fix_checksums(uint8_t *data, size_t size) {
  if (size < 512)
    return;
  uint64_t header_off = 0;
  const size_t footers[2] = {size - 512, 0};
  for (int i = 0; i < 2; i++) {
    uint8_t *f = data + footers[i];
    if (memcmp(f, "conectix", 8) != 0)
      continue;
    be32_store(f + 64, checksum(f, 512, 64));
    if (!header_off)
      header_off = be64_load(f + 16);
  }
  if (header_off && header_off <= size && size - header_off >= 1024 &&
      memcmp(data + header_off, "cxsparse", 8) == 0)
    be32_store(data + header_off + 36, checksum(data + header_off, 1024, 36));
}

size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size, unsigned int seed) {
  size = LLVMFuzzerMutate(data, size, max_size);
  if (seed % 8 != 0)
    fix_checksums(data, size);
  return size;
}
#endif
