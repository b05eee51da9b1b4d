/* test-vhd-model.c: the engine against a reference model.
 *
 * Long random sequences of writes, zero writes, trims, reads, flushes, maps
 * and close/reopen run on fixed, dynamic and differencing images, against a
 * plain byte array holding what the disk must contain: every read and map is
 * compared with it, every mutation is read back with a margin around it and
 * at a random range, and the whole image is compared every 250 steps, after
 * each reopen and at the end of each workload.  vhd_map is checked against
 * the same model and, through the file offsets it reports, against the image
 * files themselves.
 *
 * The model keeps a "known" flag per byte: vhd_trim leaves the whole sectors
 * of its range undefined, so they are not compared until written again (the
 * partial sectors at its edges must keep their content).
 *
 * vhd_check must find a closed image clean; VHD_CHECK_LEAKS is tolerated only
 * after VHD_MAY_TRIM zero writes or trims, which may drop whole blocks from the
 * BAT and leave their space unreferenced (a documented, harmless leak).
 *
 * VHD_TEST_SEED reproduces a run; VHD_TEST_ITERS sets the length of the
 * longest workloads (1500 steps by default), the others scale with it.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd.h"

#define MAX_CHAIN 3

struct img {
  const char *label;
  vhd_t *v;
  uint64_t size;
  uint32_t block_size;              /* of the top image; 0 for fixed */
  enum vhd_type type;
  int levels;                       /* 1 + number of parents */
  char paths[MAX_CHAIN][4096];      /* [0] = top, [1] = its parent... */
  int fds[MAX_CHAIN];               /* opened on demand by level_pread, 0 = not yet */
  uint8_t *model;
  uint8_t *known;
  bool may_leak;
  uint64_t steps;
  char last_op[512];                /* for failure messages */
};

static struct vhd_err err;

static const char *op_desc(struct img *m, const char *op, uint64_t off, uint64_t len,
                           unsigned flags) {
  snprintf(m->last_op, sizeof m->last_op,
           "%s: step %" PRIu64 ": %s off=%" PRIu64 " len=%" PRIu64 " flags=0x%x", m->label,
           m->steps, op, off, len, flags);
  return m->last_op;
}

static void model_set(struct img *m, uint64_t off, uint64_t len, const uint8_t *data) {
  if (data)
    memcpy(m->model + off, data, len);
  else
    memset(m->model + off, 0, len);
  memset(m->known + off, 1, len);
}

/* Index of the first known byte of [off, off+n) where buf differs from the
 * model, or n.  memcmp first: byte loops are slow under ASan. */
static size_t first_mismatch(const struct img *m, uint64_t off, const uint8_t *buf, size_t n) {
  for (size_t c = 0; c < n; c += 4096) {
    size_t k = MIN(n - c, (size_t)4096);
    if (memcmp(buf + c, m->model + off + c, k) == 0)
      continue;
    for (size_t i = c; i < c + k; i++)
      if (m->known[off + i] && buf[i] != m->model[off + i])
        return i;
  }
  return n;
}

/* One scratch buffer for all reads: large allocations are slow under ASan. */
#define SCRATCH_SIZE (4u << 20)
static uint8_t *scratch(void) {
  static uint8_t *buf;
  if (!buf)
    buf = t_xmalloc(SCRATCH_SIZE);
  return buf;
}

/* Index of the first known non-zero byte of the model in [off, off+n), or n. */
static size_t first_nonzero(const struct img *m, uint64_t off, size_t n) {
  static const uint8_t zeros[4096];
  size_t i = 0;
  while (i < n) {
    size_t k = MIN(n - i, sizeof zeros);
    if (memcmp(m->model + off + i, zeros, k) != 0)
      break;
    i += k;
  }
  for (; i < n; i++)
    if (m->known[off + i] && m->model[off + i] != 0)
      return i;
  return n;
}

/* Reads [off, off+len) through the engine and compares the known bytes. */
static void verify_range(struct img *m, uint64_t off, uint64_t len, const char *why) {
  const size_t chunk = SCRATCH_SIZE;
  uint8_t *buf = scratch();
  while (len > 0) {
    size_t n = (size_t)MIN(len, chunk);
    memset(buf, 0xee, n);
    int r = vhd_read(m->v, buf, off, n, &err);
    if (r < 0)
      t_fail("%s: vhd_read off=%" PRIu64 " len=%zu (after %s): %s: %s", m->label, off, n,
             m->last_op[0] ? m->last_op : "-", t_strerr(r), err.msg);
    size_t i = first_mismatch(m, off, buf, n);
    if (i < n)
      t_fail("%s: %s: byte %" PRIu64 " reads 0x%02x, model has 0x%02x (last op: %s)", m->label,
             why, off + i, buf[i], m->model[off + i], m->last_op[0] ? m->last_op : "-");
    off += n;
    len -= n;
  }
}

static void verify_all(struct img *m, const char *why) { verify_range(m, 0, m->size, why); }

/* ---- vhd_map ---- */

/* Reads a level's file directly, as a reader of the mapping would. */
static void level_pread(struct img *m, int depth, void *buf, size_t n, uint64_t off) {
  if (m->fds[depth] <= 0) {
    m->fds[depth] = open(m->paths[depth], O_RDONLY | O_CLOEXEC);
    T_ASSERT(m->fds[depth] > 0, "open %s: %s", m->paths[depth], strerror(errno));
  }
  ssize_t r = pread(m->fds[depth], buf, n, (off_t)off);
  T_ASSERT(r == (ssize_t)n, "%s: pread %zu bytes at %" PRIu64 " of %s: %zd", m->label, n, off,
           m->paths[depth], r);
}

static void close_levels(struct img *m) {
  for (int d = 0; d < MAX_CHAIN; d++)
    if (m->fds[d] > 0) {
      close(m->fds[d]);
      m->fds[d] = 0;
    }
}

struct extents {
  struct vhd_extent *e;
  size_t n, cap;
};

static int collect_extent(void *opaque, const struct vhd_extent *ext) {
  struct extents *x = opaque;
  if (x->n == x->cap) {
    x->cap = x->cap ? x->cap * 2 : 16;
    x->e = realloc(x->e, x->cap * sizeof *x->e);
    T_ASSERT(x->e != NULL, "out of memory");
  }
  x->e[x->n++] = *ext;
  return 0;
}

/* Maps [off, off+len) and checks the extents: contiguous cover, sane flags,
 * zero extents read as zeros, data extents hold the model's bytes at the file
 * offset they name. */
static void map_checked(struct img *m, uint64_t off, uint64_t len, struct extents *x) {
  x->n = 0;
  int r = vhd_map(m->v, off, len, collect_extent, x, &err);
  if (r != 0)
    t_fail("%s: vhd_map off=%" PRIu64 " len=%" PRIu64 " returned %d (%s): %s", m->label, off, len,
           r, t_strerr(r), err.msg);
  uint64_t pos = off;
  for (size_t i = 0; i < x->n; i++) {
    const struct vhd_extent *e = &x->e[i];
    const char *where =
        t_fmt("%s: vhd_map(%" PRIu64 ", %" PRIu64 ") extent %zu {off=%" PRIu64 " len=%" PRIu64
              " flags=%u depth=%d file=%" PRIu64 "} (last op: %s)",
              m->label, off, len, i, e->offset, e->length, e->flags, e->depth, e->file_offset,
              m->last_op[0] ? m->last_op : "-");
    T_ASSERT(e->offset == pos, "%s: expected to start at %" PRIu64, where, pos);
    T_ASSERT(e->length > 0 && e->length <= off + len - pos, "%s: bad length", where);
    T_ASSERT((e->flags & (VHD_MAP_DATA | VHD_MAP_ZERO)) != 0 &&
                 (e->flags & ~(unsigned)(VHD_MAP_DATA | VHD_MAP_ZERO)) == 0,
             "%s: flags", where);
    if (e->flags & VHD_MAP_DATA) {
      T_ASSERT(e->depth >= 0 && e->depth < m->levels, "%s: depth out of the chain", where);
      /* The named file offset must hold exactly what the disk reads there. */
      const size_t chunk = SCRATCH_SIZE;
      uint8_t *buf = scratch();
      for (uint64_t done = 0; done < e->length;) {
        size_t n = (size_t)MIN(e->length - done, chunk);
        level_pread(m, e->depth, buf, n, e->file_offset + done);
        size_t k = first_mismatch(m, e->offset + done, buf, n);
        if (k < n)
          t_fail("%s: file byte for disk byte %" PRIu64 " is 0x%02x, model has 0x%02x", where,
                 e->offset + done + k, buf[k], m->model[e->offset + done + k]);
        done += n;
      }
    } else {
      T_ASSERT(e->depth == -1, "%s: a ZERO extent must have depth -1", where);
      size_t k = first_nonzero(m, e->offset, (size_t)e->length);
      if (k < e->length)
        t_fail("%s: reported ZERO but disk byte %" PRIu64 " is 0x%02x", where, e->offset + k,
               m->model[e->offset + k]);
    }
    /* The header promises merged runs. */
    if (i > 0) {
      const struct vhd_extent *p = &x->e[i - 1];
      bool mergeable = p->flags == e->flags && p->depth == e->depth &&
                       (e->depth < 0 || p->file_offset + p->length == e->file_offset);
      T_ASSERT(!mergeable, "%s: not merged with the previous extent", where);
    }
    pos += e->length;
  }
  T_ASSERT(pos == off + len, "%s: vhd_map(%" PRIu64 ", %" PRIu64 ") covered only up to %" PRIu64,
           m->label, off, len, pos);
}

/* Every sector of [off, off+len) must be held by the top image. */
static void expect_top_data(struct img *m, uint64_t off, uint64_t len, const char *what) {
  struct extents x = {0};
  map_checked(m, off, len, &x);
  for (size_t i = 0; i < x.n; i++)
    if (!(x.e[i].flags & VHD_MAP_DATA) || x.e[i].depth != 0)
      t_fail("%s: after %s, extent {off=%" PRIu64 " len=%" PRIu64 " flags=%u depth=%d} is not "
             "data of the top image",
             m->label, what, x.e[i].offset, x.e[i].length, x.e[i].flags, x.e[i].depth);
  free(x.e);
}

/* Every extent of [off, off+len) must be ZERO (unallocated). */
static void expect_zero_map(struct img *m, uint64_t off, uint64_t len, const char *what) {
  if (len == 0)
    return;
  struct extents x = {0};
  map_checked(m, off, len, &x);
  for (size_t i = 0; i < x.n; i++)
    if (x.e[i].flags != VHD_MAP_ZERO)
      t_fail("%s: after %s, extent {off=%" PRIu64 " len=%" PRIu64 " flags=%u depth=%d} is not "
             "ZERO",
             m->label, what, x.e[i].offset, x.e[i].length, x.e[i].flags, x.e[i].depth);
  free(x.e);
}

/* ---- random ranges that hit the edges ---- */

static void pick_range(struct img *m, uint64_t *offp, uint64_t *lenp) {
  uint64_t size = m->size, off, len;
  uint64_t bs = m->block_size ? m->block_size : 65536;
  uint64_t maxlen = MIN(size, MAX(3 * bs, (uint64_t)4096));
  maxlen = MIN(maxlen, (uint64_t)512 << 10);
  switch (t_below(6)) {
  case 0: /* small and unaligned */
    off = t_below(size);
    len = t_range(1, 700);
    break;
  case 1: /* whole sectors */
    off = t_below(size / 512) * 512;
    len = t_range(1, 16) * 512;
    break;
  case 2: { /* straddling a block boundary */
    uint64_t nb = DIV_ROUND_UP(size, bs);
    uint64_t boundary = nb > 1 ? t_range(1, nb - 1) * bs : 0;
    uint64_t back = t_below(MIN(bs, (uint64_t)1200) + 1);
    off = boundary > back ? boundary - back : 0;
    len = back + t_range(1, 1200);
    break;
  }
  case 3: /* the tail of the disk, last byte included */
    off = size - t_range(1, MIN(size, (uint64_t)5000));
    len = size - off;
    if (t_chance(30) && len > 1)
      len = t_range(1, len);
    break;
  case 4: /* whole blocks */
    off = t_below(DIV_ROUND_UP(size, bs)) * bs;
    len = t_range(1, 3) * bs;
    break;
  default: /* anything */
    off = t_below(size);
    len = t_range(1, maxlen);
    break;
  }
  if (off >= size)
    off = size - 1;
  len = MIN(len, size - off);
  len = MIN(len, maxlen);
  if (len == 0)
    len = 1;
  *offp = off;
  *lenp = len;
}

/* After a mutation: the range itself, a margin around it, and a random range. */
static void verify_after(struct img *m, uint64_t off, uint64_t len) {
  uint64_t lo = off >= 1024 ? off - 1024 : 0;
  uint64_t hi = MIN(m->size, off + len + 1024);
  verify_range(m, lo, hi - lo, "right after the operation");
  uint64_t o, l;
  pick_range(m, &o, &l);
  verify_range(m, o, l, "random read-back");
}

/* ---- operations ---- */

static void do_write(struct img *m) {
  uint64_t off, len;
  pick_range(m, &off, &len);
  bool zeros = t_chance(8);
  unsigned flags = t_chance(5) ? VHD_FUA : 0;
  CLEANUP_FREE uint8_t *buf = t_xmalloc(len);
  if (zeros)
    memset(buf, 0, len);
  else
    t_fill_nonzero(buf, len);
  const char *d = op_desc(m, "vhd_write", off, len, flags);
  int r = vhd_write(m->v, buf, off, len, flags, &err);
  if (r < 0)
    t_fail("%s: %s: %s", d, t_strerr(r), err.msg);
  model_set(m, off, len, buf);
  if (!zeros) {
    /* The sectors holding the new bytes belong to the top image now. */
    expect_top_data(m, ROUND_DOWN(off, 512), ROUND_UP(off + len, 512) - ROUND_DOWN(off, 512),
                    d);
  }
  verify_after(m, off, len);
}

static void do_write_zeroes(struct img *m) {
  uint64_t off, len;
  pick_range(m, &off, &len);
  static const unsigned choices[] = {0,           VHD_MAY_TRIM, VHD_NO_HOLE, 0, VHD_MAY_TRIM,
                                     VHD_NO_HOLE, VHD_FUA | VHD_MAY_TRIM};
  unsigned flags = choices[t_below(ARRAY_SIZE(choices))];
  const char *d = op_desc(m, "vhd_write_zeroes", off, len, flags);
  int r = vhd_write_zeroes(m->v, off, len, flags, &err);
  if (r < 0)
    t_fail("%s: %s: %s", d, t_strerr(r), err.msg);
  if (flags & VHD_MAY_TRIM)
    m->may_leak = true;
  model_set(m, off, len, NULL);
  uint64_t s0 = ROUND_UP(off, 512), s1 = ROUND_DOWN(off + len, 512);
  if (flags & VHD_NO_HOLE)
    expect_top_data(m, ROUND_DOWN(off, 512), ROUND_UP(off + len, 512) - ROUND_DOWN(off, 512), d);
  else if (m->type == VHD_TYPE_DYNAMIC && s1 > s0)
    /* Whole sectors: bitmap bits cleared or block unallocated, never data. */
    expect_zero_map(m, s0, s1 - s0, d);
  verify_after(m, off, len);
}

static void do_trim(struct img *m) {
  uint64_t off, len;
  pick_range(m, &off, &len);
  const char *d = op_desc(m, "vhd_trim", off, len, 0);
  int r = vhd_trim(m->v, off, len, 0, &err);
  if (r < 0)
    t_fail("%s: %s: %s", d, t_strerr(r), err.msg);
  m->may_leak = true;
  /* Only whole sectors inside the range may change. */
  uint64_t s0 = ROUND_UP(off, 512), s1 = ROUND_DOWN(off + len, 512);
  if (s1 > s0)
    memset(m->known + s0, 0, s1 - s0);
  verify_after(m, off, len);
}

static void do_read(struct img *m) {
  uint64_t off, len;
  pick_range(m, &off, &len);
  op_desc(m, "vhd_read", off, len, 0);
  verify_range(m, off, len, "vhd_read");
}

static void do_map(struct img *m) {
  uint64_t off, len;
  pick_range(m, &off, &len);
  if (t_chance(3)) {
    off = 0;
    len = m->size;
  }
  op_desc(m, "vhd_map", off, len, 0);
  struct extents x = {0};
  map_checked(m, off, len, &x);
  free(x.e);
}

/* vhd_read_map: the data as vhd_read gives it, runs that agree with vhd_map,
 * holes untouched or zeroed under VHD_READ_SKIP_ZERO, and under VHD_READ_NOWAIT
 * either all of that or -EAGAIN. */
static uint64_t read_map_eagain, read_map_done, read_map_nowait_data;

static void do_read_map(struct img *m) {
  uint64_t off, len;
  pick_range(m, &off, &len);
  unsigned flags = (t_chance(50) ? VHD_READ_SKIP_ZERO : 0) | (t_chance(50) ? VHD_READ_NOWAIT : 0);
  const char *d = op_desc(m, "vhd_read_map", off, len, flags);
  uint8_t *buf = t_xmalloc((size_t)len);
  memset(buf, 0xee, (size_t)len);
  struct extents x = {0};
  int r = vhd_read_map(m->v, buf, off, (size_t)len, flags, collect_extent, &x, &err);
  if (r == -EAGAIN && (flags & VHD_READ_NOWAIT)) {
    read_map_eagain++;
    free(buf);
    free(x.e);
    return;
  }
  if (r != 0)
    t_fail("%s: returned %d (%s): %s", d, r, t_strerr(r), err.msg);
  read_map_done++;
  uint64_t pos = off;
  for (size_t i = 0; i < x.n; i++) {
    const struct vhd_extent *e = &x.e[i];
    T_ASSERT(e->offset == pos && e->length > 0 && e->length <= off + len - pos,
             "%s: run %zu {off=%" PRIu64 " len=%" PRIu64 "} does not continue at %" PRIu64, d, i,
             e->offset, e->length, pos);
    T_ASSERT(e->flags == VHD_MAP_DATA || e->flags == VHD_MAP_ZERO, "%s: run %zu flags %u", d, i,
             e->flags);
    T_ASSERT(i == 0 || x.e[i - 1].flags != e->flags, "%s: run %zu not merged", d, i);
    const uint8_t *b = buf + (e->offset - off);
    if (e->flags == VHD_MAP_ZERO) {
      size_t k = first_nonzero(m, e->offset, (size_t)e->length);
      T_ASSERT(k == e->length, "%s: ZERO run holds model byte %" PRIu64 " = 0x%02x", d,
               e->offset + k, m->model[e->offset + k]);
      /* Under VHD_READ_SKIP_ZERO untouched, or zeroed (a short run between
       * data read in one piece); never anything else. */
      bool skip = flags & VHD_READ_SKIP_ZERO;
      for (uint64_t j = 0; j < e->length; j++)
        T_ASSERT(b[j] == 0 || (skip && b[j] == 0xee), "%s: hole byte %" PRIu64 " is 0x%02x", d,
                 e->offset + j, b[j]);
    } else {
      size_t k = first_mismatch(m, e->offset, b, (size_t)e->length);
      T_ASSERT(k == e->length, "%s: byte %" PRIu64 " reads 0x%02x, model has 0x%02x", d,
               e->offset + k, b[k], m->model[e->offset + k]);
    }
    pos += e->length;
  }
  T_ASSERT(pos == off + len, "%s: runs end at %" PRIu64, d, pos);
  if (flags & VHD_READ_NOWAIT)
    for (size_t k = 0; k < x.n; k++)
      if (x.e[k].flags == VHD_MAP_DATA) {
        read_map_nowait_data++;
        break;
      }
  /* Same classification as vhd_map, byte for byte. */
  struct extents mx = {0};
  r = vhd_map(m->v, off, len, collect_extent, &mx, &err);
  T_ASSERT(r == 0, "%s: vhd_map: %s", d, err.msg);
  size_t i = 0, j = 0;
  for (pos = off; pos < off + len;) {
    while (x.e[i].offset + x.e[i].length <= pos)
      i++;
    while (mx.e[j].offset + mx.e[j].length <= pos)
      j++;
    T_ASSERT((x.e[i].flags == VHD_MAP_ZERO) == !(mx.e[j].flags & VHD_MAP_DATA),
             "%s: at %" PRIu64 " read_map says flags %u, vhd_map %u", d, pos, x.e[i].flags,
             mx.e[j].flags);
    pos = MIN(x.e[i].offset + x.e[i].length, mx.e[j].offset + mx.e[j].length);
  }
  free(mx.e);
  free(x.e);
  free(buf);
}

/* A bitmap not yet read from the file must make VHD_READ_NOWAIT give up
 * (reading it would wait for the disk); once it is loaded, the same read
 * completes. */
static void test_read_nowait_bitmap(void) {
  const char *path = t_path("nowait.vhd");
  t_create(path, VHD_TYPE_DYNAMIC, 4u << 20, 65536, true, NULL);
  uint8_t data[4096], got[4096];
  t_fill_nonzero(data, sizeof data);
  vhd_t *v = t_open(path, false);
  T_ASSERT(vhd_write(v, data, 65536 + 512, sizeof data, 0, &err) == 0, "write: %s", err.msg);
  T_ASSERT(vhd_close(v, &err) == 0, "close: %s", err.msg);
  v = t_open(path, true);
  int r = vhd_read_map(v, got, 65536 + 512, sizeof got, VHD_READ_NOWAIT, NULL, NULL, &err);
  T_ASSERT(r == -EAGAIN, "NOWAIT read with the bitmap on disk returned %d, not -EAGAIN", r);
  /* An unallocated block needs no bitmap: served at once, as zeros. */
  memset(got, 0xee, sizeof got);
  r = vhd_read_map(v, got, 3 * 65536, sizeof got, VHD_READ_NOWAIT, NULL, NULL, &err);
  T_ASSERT(r == 0 && got[0] == 0 && got[sizeof got - 1] == 0,
           "NOWAIT read of an unallocated block: %d", r);
  T_ASSERT(vhd_read(v, got, 65536 + 512, sizeof got, &err) == 0, "read: %s", err.msg);
  memset(got, 0, sizeof got);
  r = vhd_read_map(v, got, 65536 + 512, sizeof got, VHD_READ_NOWAIT, NULL, NULL, &err);
  T_ASSERT(r == 0, "NOWAIT read with the bitmap loaded and the data cached returned %d", r);
  T_ASSERT(memcmp(got, data, sizeof data) == 0, "NOWAIT read returned other bytes");
  T_ASSERT(vhd_read_map(v, got, 0, 512, VHD_READ_SKIP_ZERO, NULL, NULL, &err) == -EINVAL,
           "VHD_READ_SKIP_ZERO without a callback was accepted");
  T_ASSERT(vhd_close(v, &err) == 0, "close: %s", err.msg);
}

static void do_flush(struct img *m) {
  const char *d = op_desc(m, "vhd_flush", 0, 0, 0);
  int r = vhd_flush(m->v, &err);
  if (r < 0)
    t_fail("%s: %s: %s", d, t_strerr(r), err.msg);
}

static void check_closed(struct img *m, const char *when) {
  int r = t_check(m->paths[0]);
  int allowed = m->may_leak ? VHD_CHECK_LEAKS : 0;
  if (r & ~allowed)
    t_fail("%s: vhd_check %s %s returned 0x%x (leaks %s)", m->label, when, m->paths[0], r,
           m->may_leak ? "allowed" : "not allowed");
}

static void img_close(struct img *m) {
  int r = vhd_close(m->v, &err);
  m->v = NULL;
  if (r < 0)
    t_fail("%s: vhd_close: %s: %s", m->label, t_strerr(r), err.msg);
}

static void img_open(struct img *m) {
  m->v = t_open(m->paths[0], false);
  T_ASSERT(m->size == 0 || vhd_virtual_size(m->v) == m->size,
           "%s: reopened with size %" PRIu64 ", was %" PRIu64, m->label, vhd_virtual_size(m->v),
           m->size);
  T_ASSERT(vhd_get_type(m->v) == m->type, "%s: type %d after reopen", m->label,
           (int)vhd_get_type(m->v));
  T_ASSERT(!vhd_is_readonly(m->v), "%s: opened read-write but reports read-only", m->label);
}

static void do_reopen(struct img *m) {
  op_desc(m, "close+reopen", 0, 0, 0);
  img_close(m);
  check_closed(m, "after close");
  img_open(m);
  verify_all(m, "full compare after reopen");
}

/* Requests outside the disk fail and change nothing. */
static void check_out_of_range(struct img *m) {
  uint8_t buf[1024] = {0};
  op_desc(m, "out-of-range requests", m->size, 0, 0);
  T_ASSERT(vhd_read(m->v, buf, m->size - 1, 2, &err) < 0, "%s: read across the end succeeded",
           m->label);
  T_ASSERT(vhd_write(m->v, buf, m->size - 1, 2, 0, &err) < 0,
           "%s: write across the end succeeded", m->label);
  T_ASSERT(vhd_write(m->v, buf, m->size, 512, 0, &err) < 0, "%s: write past the end succeeded",
           m->label);
  T_ASSERT(vhd_write_zeroes(m->v, m->size - 512, 1024, 0, &err) < 0,
           "%s: write_zeroes across the end succeeded", m->label);
  T_ASSERT(vhd_read(m->v, buf, UINT64_MAX - 100, 512, &err) < 0,
           "%s: read at an overflowing offset succeeded", m->label);
  verify_range(m, m->size - MIN(m->size, (uint64_t)1024), MIN(m->size, (uint64_t)1024),
               "after out-of-range requests");
}

static void run_workload(struct img *m, uint64_t steps) {
  for (uint64_t i = 0; i < steps; i++) {
    m->steps++;
    unsigned p = (unsigned)t_below(100);
    /* Flushes and reopens are rare: each costs real fdatasyncs. */
    if (p < 36)
      do_write(m);
    else if (p < 53)
      do_write_zeroes(m);
    else if (p < 60)
      do_trim(m);
    else if (p < 74)
      do_read(m);
    else if (p < 80)
      do_read_map(m);
    else if (p < 95)
      do_map(m);
    else if (p < 99)
      do_flush(m);
    else
      do_reopen(m);
    if (m->steps % 250 == 0)
      verify_all(m, "periodic full compare");
  }
  verify_all(m, "full compare at the end of the workload");
}

/* ---- image set-ups ---- */

static void img_init_model(struct img *m) {
  m->model = t_xcalloc(1, (size_t)m->size);
  m->known = t_xmalloc((size_t)m->size);
  memset(m->known, 1, (size_t)m->size); /* a new image reads as zeros */
}

static void img_free(struct img *m) {
  close_levels(m);
  free(m->model);
  free(m->known);
}

/* Fixes undefined bytes (trimmed) to what they read now: used when an image
 * becomes a read-only parent, whose content can no longer change. */
static void adopt_unknown(struct img *m) {
  CLEANUP_FREE uint8_t *buf = t_xmalloc((size_t)m->size);
  int r = vhd_read(m->v, buf, 0, (size_t)m->size, &err);
  if (r < 0)
    t_fail("%s: vhd_read of the whole disk: %s: %s", m->label, t_strerr(r), err.msg);
  for (uint64_t b = 0; b < m->size; b++)
    if (!m->known[b]) {
      m->model[b] = buf[b];
      m->known[b] = 1;
    }
}

static uint64_t steps_for(uint64_t base) { return t_scaled(base); }

static void test_single(const char *label, enum vhd_type type, uint64_t req, uint32_t bs,
                        bool exact, uint64_t steps) {
  struct img m = {.label = label, .type = type, .levels = 1, .block_size = 0};
  snprintf(m.paths[0], sizeof m.paths[0], "%s", t_path(t_fmt("%s.vhd", label)));
  t_create(m.paths[0], type, req, bs, exact, NULL);
  img_open(&m);
  m.size = vhd_virtual_size(m.v);
  if (exact)
    T_ASSERT(m.size == ROUND_UP(req, 512), "%s: exact size %" PRIu64 " for a request of %" PRIu64,
             label, m.size, req);
  T_ASSERT(m.size > 0, "%s: empty disk", label);
  img_init_model(&m);
  if (type != VHD_TYPE_FIXED) {
    struct vhd_info info;
    vhd_get_info(m.v, &info);
    m.block_size = info.block_size;
    T_ASSERT(info.block_size == (bs ? bs : VHD_DEFAULT_BLOCK_SIZE), "%s: block size %u", label,
             info.block_size);
    T_ASSERT(info.allocated_blocks == 0, "%s: new image has %u blocks", label,
             info.allocated_blocks);
    T_ASSERT(vhd_zero_is_fast(m.v, 0, m.size), "%s: zeroing an empty dynamic disk is not fast",
             label);
    expect_zero_map(&m, 0, m.size, "create");
  }
  verify_all(&m, "new image");
  check_out_of_range(&m);
  run_workload(&m, steps_for(steps));
  img_close(&m);
  check_closed(&m, "at the end");
  /* Once more from a fresh open, read-only this time. */
  m.v = t_open(m.paths[0], true);
  T_ASSERT(vhd_is_readonly(m.v), "%s: read-only open is writable", label);
  uint8_t b = 0;
  T_ASSERT(vhd_write(m.v, &b, 0, 1, 0, &err) < 0, "%s: write to a read-only handle succeeded",
           label);
  verify_all(&m, "read-only reopen");
  img_close(&m);
  img_free(&m);
  printf("ok %s: size %" PRIu64 ", %" PRIu64 " steps\n", label, m.size, m.steps);
  fflush(stdout);
}

struct level_spec {
  enum vhd_type type; /* of the base; the others are differencing */
  uint32_t bs;
};

/* A chain of `n` images: base (fixed or dynamic), then differencing ones; each
 * non-top level gets a random workload through the engine and is closed, then
 * the top gets the long workload.  Parents must not change by a single byte. */
static void test_chain(const char *label, int n, enum vhd_type base_type, uint64_t req,
                       const uint32_t *bss, uint64_t steps) {
  struct img m = {.label = label, .levels = 1};
  char files[MAX_CHAIN][4096];
  uint64_t hashes[MAX_CHAIN];
  for (int lvl = 0; lvl < n; lvl++) {
    snprintf(files[lvl], sizeof files[lvl], "%s", t_path(t_fmt("%s-%d.vhd", label, lvl)));
    char level_label[256];
    snprintf(level_label, sizeof level_label, "%s level %d", label, lvl);
    m.label = level_label;
    if (lvl == 0)
      t_create(files[0], base_type, req, bss[0], true, NULL);
    else
      t_create(files[lvl], VHD_TYPE_DIFFERENCING, 0, bss[lvl], false, files[lvl - 1]);
    /* paths[d]: the file at depth d from the current top. */
    close_levels(&m);
    for (int d = 0; d <= lvl; d++)
      memcpy(m.paths[d], files[lvl - d], sizeof m.paths[d]);
    m.levels = lvl + 1;
    m.type = lvl == 0 ? base_type : VHD_TYPE_DIFFERENCING;
    m.may_leak = false;
    img_open(&m);
    if (lvl == 0) {
      m.size = vhd_virtual_size(m.v);
      img_init_model(&m);
    } else {
      T_ASSERT(vhd_virtual_size(m.v) == m.size, "%s: child size %" PRIu64 " != parent %" PRIu64,
               label, vhd_virtual_size(m.v), m.size);
      vhd_t *p = vhd_parent(m.v);
      T_ASSERT(p != NULL, "%s: differencing disk without a parent", label);
      T_ASSERT(vhd_is_readonly(p), "%s: parent opened writable", label);
      struct vhd_info info;
      vhd_get_info(m.v, &info);
      T_ASSERT(info.type == VHD_TYPE_DIFFERENCING, "%s: type %d", label, (int)info.type);
      T_ASSERT(info.allocated_blocks == 0, "%s: new child has %u blocks", label,
               info.allocated_blocks);
    }
    m.block_size = 0;
    if (m.type != VHD_TYPE_FIXED) {
      struct vhd_info info;
      vhd_get_info(m.v, &info);
      m.block_size = info.block_size;
    }
    verify_all(&m, lvl ? "new child shows its parent" : "new base");
    /* A parent is only ever read: hash the files below the top. */
    for (int d = 0; d < lvl; d++)
      hashes[d] = t_file_hash(files[d]);
    bool top = lvl == n - 1;
    run_workload(&m, top ? steps_for(steps) : steps_for(steps) / 3 + 50);
    if (!top)
      adopt_unknown(&m);
    img_close(&m);
    check_closed(&m, top ? "of the top" : "of a parent");
    for (int d = 0; d < lvl; d++)
      T_ASSERT(t_file_hash(files[d]) == hashes[d], "%s: parent %s changed while its child was "
                                                   "written",
               label, files[d]);
  }
  m.label = label;
  m.v = t_open(files[n - 1], true);
  verify_all(&m, "read-only reopen of the chain");
  img_close(&m);
  img_free(&m);
  printf("ok %s: chain of %d, size %" PRIu64 "\n", label, n, m.size);
  fflush(stdout);
}

/* ---- sizes and geometry ---- */

/* The spec's algorithm, written independently of the engine's. */
static uint64_t ref_geometry(uint64_t size, unsigned *c, unsigned *h, unsigned *s) {
  uint64_t total = size / 512;
  uint64_t spt, heads, cth;
  if (total > UINT64_C(65535) * 16 * 255)
    total = UINT64_C(65535) * 16 * 255;
  if (total >= UINT64_C(65535) * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = total / spt;
  } else {
    spt = 17;
    cth = total / spt;
    heads = (cth + 1023) / 1024;
    if (heads < 4)
      heads = 4;
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = total / spt;
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = total / spt;
    }
  }
  *c = (unsigned)(cth / heads);
  *h = (unsigned)heads;
  *s = (unsigned)spt;
  return (uint64_t)*c * heads * spt * 512;
}

static void check_geometry(uint64_t size, unsigned ec, unsigned eh, unsigned es, uint64_t ebytes) {
  uint16_t c;
  uint8_t h, s;
  uint64_t r = vhd_geometry_for_size(size, &c, &h, &s);
  T_ASSERT(c == ec && h == eh && s == es && r == ebytes,
           "vhd_geometry_for_size(%" PRIu64 ") = %u/%u/%u %" PRIu64 ", expected %u/%u/%u %" PRIu64,
           size, c, h, s, r, ec, eh, es, ebytes);
}

static void test_geometry(void) {
  /* Worked examples (the spec's algorithm): 2 GiB fits 4161 cylinders of
   * 16 x 63, a little under 2 GiB. */
  check_geometry(UINT64_C(2) << 30, 4161, 16, 63, UINT64_C(4161) * 16 * 63 * 512);
  check_geometry(UINT64_C(1) << 20, 30, 4, 17, UINT64_C(30) * 4 * 17 * 512);
  check_geometry(UINT64_C(128) << 20, 963, 16, 17, UINT64_C(963) * 16 * 17 * 512);
  /* Above 65535*16*63 sectors: 255 sectors per track, then capped. */
  check_geometry(UINT64_C(200) << 30, 65535, 16, 255, UINT64_C(65535) * 16 * 255 * 512);
  check_geometry(VHD_MAX_VIRTUAL_SIZE, 65535, 16, 255, UINT64_C(65535) * 16 * 255 * 512);
  /* And a few thousand random sizes against the independent version. */
  for (unsigned i = 0; i < 5000; i++) {
    uint64_t size = t_below(VHD_MAX_VIRTUAL_SIZE >> t_below(30)) + 1;
    unsigned c, h, s;
    uint64_t exp = ref_geometry(size, &c, &h, &s);
    check_geometry(size, c, h, s, exp);
  }
  printf("ok geometry\n");
}

static void test_sizes(void) {
  static const uint64_t reqs[] = {512,        1000,      34816,        UINT64_C(1) << 20,
                                  3145733,    100000000, UINT64_C(2) << 30, UINT64_C(130) << 30,
                                  VHD_MAX_VIRTUAL_SIZE};
  for (size_t i = 0; i < ARRAY_SIZE(reqs); i++) {
    for (int exact = 0; exact <= 1; exact++) {
      const char *p = t_path(t_fmt("size-%zu-%d.vhd", i, exact));
      t_create(p, VHD_TYPE_DYNAMIC, reqs[i], 0, exact, NULL);
      vhd_t *v = t_open(p, true);
      uint64_t vs = vhd_virtual_size(v);
      struct vhd_info info;
      vhd_get_info(v, &info);
      const char *what = t_fmt("create %s size %" PRIu64 ": virtual size %" PRIu64
                               ", current %" PRIu64 ", CHS %u/%u/%u = %" PRIu64,
                               exact ? "exact" : "non-exact", reqs[i], vs, info.current_size,
                               info.cylinders, info.heads, info.sectors_per_track, info.chs_size);
      T_ASSERT(info.virtual_size == vs, "%s: info disagrees", what);
      T_ASSERT(info.chs_size == (uint64_t)info.cylinders * info.heads * info.sectors_per_track *
                                    512,
               "%s: chs_size", what);
      T_ASSERT(info.current_size == info.original_size, "%s: original size differs", what);
      T_ASSERT(info.max_table_entries >= DIV_ROUND_UP(vs, info.block_size),
               "%s: %u BAT entries are too few", what, info.max_table_entries);
      if (exact) {
        T_ASSERT(vs == ROUND_UP(reqs[i], 512), "%s", what);
      } else if (reqs[i] >= UINT64_C(65535) * 16 * 255 * 512) {
        /* Beyond what CHS can express the geometry is the maximum and the
         * size is kept (QEMU does the same). */
        T_ASSERT(info.cylinders == 65535 && info.heads == 16 && info.sectors_per_track == 255,
                 "%s: expected the maximum geometry", what);
        T_ASSERT(vs == ROUND_UP(reqs[i], 512), "%s: expected the requested size", what);
      } else {
        /* Rounded to a CHS size: the geometry of the size is the size. */
        uint16_t c;
        uint8_t h, s;
        uint64_t g = vhd_geometry_for_size(vs, &c, &h, &s);
        T_ASSERT(g == vs, "%s: not a CHS size (geometry gives %" PRIu64 ")", what, g);
        T_ASSERT(info.cylinders == c && info.heads == h && info.sectors_per_track == s,
                 "%s: footer geometry differs from vhd_geometry_for_size", what);
        T_ASSERT(vs > 0 && vs <= VHD_MAX_VIRTUAL_SIZE, "%s", what);
        T_ASSERT(vs >= reqs[i] && vs - reqs[i] < UINT64_C(16) * 255 * 512 * 2,
                 "%s: not the request rounded up to a CHS size", what);
      }
      /* QEMU's `create -f vpc 2G` reports 2147991552 bytes (4162/16/63). */
      if (!exact && reqs[i] == (UINT64_C(2) << 30))
        T_ASSERT(vs == UINT64_C(2147991552), "%s: expected 2147991552", what);
      struct vhd_err e = {{0}};
      T_OK(vhd_close(v, &e), &e, "vhd_close");
      unlink(p);
    }
  }
  /* Creation refuses what it cannot represent. */
  struct vhd_err e = {{0}};
  struct vhd_create_opts o = {.type = VHD_TYPE_DYNAMIC, .size = VHD_MAX_VIRTUAL_SIZE + 512,
                              .exact_size = true};
  T_ASSERT(vhd_create(t_path("too-big.vhd"), &o, &e) < 0, "created a disk above the maximum");
  o.size = 0;
  T_ASSERT(vhd_create(t_path("empty.vhd"), &o, &e) < 0, "created an empty disk");
  o.size = UINT64_C(1) << 20;
  o.block_size = 3000;
  T_ASSERT(vhd_create(t_path("bs.vhd"), &o, &e) < 0, "created a disk with 3000-byte blocks");
  printf("ok sizes\n");
}

int main(void) {
  t_init("test-vhd-model");
  test_geometry();
  test_sizes();

  test_single("fixed", VHD_TYPE_FIXED, (UINT64_C(1) << 20) + 1536, 0, true, 1200);
  test_single("fixed-1-sector", VHD_TYPE_FIXED, 512, 0, true, 200);
  test_single("fixed-chs", VHD_TYPE_FIXED, 3u << 20, 0, false, 500);
  test_single("dyn-512", VHD_TYPE_DYNAMIC, (200u << 10) + 3 * 512, 512, true, 1500);
  test_single("dyn-4k", VHD_TYPE_DYNAMIC, (1u << 20) + 1536, 4096, true, 1500);
  test_single("dyn-64k-unaligned", VHD_TYPE_DYNAMIC, (3u << 20) + 100000, 65536, true, 1500);
  test_single("dyn-2m", VHD_TYPE_DYNAMIC, (7u << 20) + 3 * 512, 0, true, 700);
  test_single("dyn-2m-chs", VHD_TYPE_DYNAMIC, 5u << 20, VHD_DEFAULT_BLOCK_SIZE, false, 600);
  test_single("dyn-1-sector", VHD_TYPE_DYNAMIC, 512, 4096, true, 200);
  test_single("dyn-3-sectors", VHD_TYPE_DYNAMIC, 3 * 512, 512, true, 300);
  test_single("dyn-odd-request", VHD_TYPE_DYNAMIC, 70001, 4096, true, 500);

  static const uint32_t bs2[] = {65536, 4096};
  test_chain("diff2", 2, VHD_TYPE_DYNAMIC, (2u << 20) + 512, bs2, 1500);
  static const uint32_t bs3[] = {4096, 65536, 512};
  test_chain("diff3", 3, VHD_TYPE_DYNAMIC, (1u << 20) + 7 * 512, bs3, 1200);
  static const uint32_t bs3f[] = {0, 0, 65536};
  test_chain("diff3-fixed-base", 3, VHD_TYPE_FIXED, (5u << 20) + 512, bs3f, 600);
  test_read_nowait_bitmap();
  /* The data was just written, so it is cached: NOWAIT reads of it must
   * complete, not always give up. */
  T_ASSERT(read_map_nowait_data > 0,
           "no VHD_READ_NOWAIT read of data completed (%" PRIu64 " gave up)", read_map_eagain);
  printf("vhd_read_map: %" PRIu64 " completed (%" PRIu64 " NOWAIT reads of data), %" PRIu64
         " would have waited\n",
         read_map_done, read_map_nowait_data, read_map_eagain);
  return 0;
}
