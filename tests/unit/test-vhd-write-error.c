/* test-vhd-write-error.c: a failed write or sync is never followed by a
 * flush that lies, and a flush really syncs.
 *
 * 1. vhd_flush reaches fdatasync: the test VFS counts the syncs a flush asks
 *    the kernel for (one for data alone, data then metadata when bitmaps or
 *    BAT entries changed, see the write order in vhd-internal.h).
 *
 * 2. The write-error latch ("Write errors" in vhd.h).  On fixed, dynamic and
 *    differencing images, with EIO and ENOSPC, a fault is injected once (the
 *    switch then lets everything through) at each place a flush or a write
 *    can fail: the flush's data sync, its metadata sync, its first metadata
 *    write, a data write.  A failed sync also loses the pages written since
 *    the last sync (t_lose_unsynced), as Linux may.  Then: the failing call
 *    returns the injected errno; vhd_write_error names the image and the
 *    error; every later flush, FUA write and plain write, zeroing and trim
 *    fails with EIO; reads go on; close reports EIO.  Reopened, the image
 *    checks clean (leaks allowed), holds the data flushed before the fault
 *    byte for byte and, where writes were not flushed, either the old or the
 *    new bytes; and it is writable again.
 *
 * 3. The latch belongs to one image: another one open at the same time
 *    flushes normally.
 *
 * 4. A pwrite that makes no progress (returns 0) is an error (EIO) at once,
 *    not a retry without end, and latches as any failed write.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd.h"

#define SIZE (256 * 1024)
#define BS 4096
/* A: at offset 0, flushed before the fault.  B: written after that flush,
 * overlapping the end of A and running into blocks A never touched. */
#define A_LEN (64 * 1024)
#define B_OFF (32 * 1024)
#define B_LEN (64 * 1024)

enum fault_point {
  AT_FLUSH_DATA_SYNC,
  AT_FLUSH_META_SYNC,
  AT_FLUSH_META_WRITE,
  AT_DATA_WRITE,
};

static const char *point_name(enum fault_point p) {
  switch (p) {
  case AT_FLUSH_DATA_SYNC: return "the flush's data sync";
  case AT_FLUSH_META_SYNC: return "the flush's metadata sync";
  case AT_FLUSH_META_WRITE: return "the flush's first metadata write";
  default: return "a data write";
  }
}

static const char *type_name(enum vhd_type t) {
  return t == VHD_TYPE_FIXED ? "fixed" : t == VHD_TYPE_DYNAMIC ? "dynamic" : "differencing";
}

/* A new image of `type` (a differencing one over a parent holding data);
 * returns its path (a copy). */
static char *make_image(enum vhd_type type, const char *label) {
  char *path = strdup(t_path(t_fmt("%s.vhd", label)));
  T_ASSERT(path != NULL, "out of memory");
  if (type != VHD_TYPE_DIFFERENCING) {
    t_create(path, type, SIZE, BS, true, NULL);
    return path;
  }
  char parent[4096];
  snprintf(parent, sizeof parent, "%s", t_path(t_fmt("%s-parent.vhd", label)));
  t_create(parent, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  vhd_t *p = t_open(parent, false);
  CLEANUP_FREE uint8_t *buf = t_xmalloc(SIZE);
  t_fill_nonzero(buf, SIZE);
  struct vhd_err err = {{0}};
  T_OK(vhd_write(p, buf, 0, SIZE, 0, &err), &err, "vhd_write (parent)");
  T_OK(vhd_close(p, &err), &err, "vhd_close (parent)");
  t_create(path, VHD_TYPE_DIFFERENCING, 0, BS, false, parent);
  return path;
}

static void read_image(const char *path, uint8_t *buf) {
  vhd_t *v = t_open(path, true);
  struct vhd_err err = {{0}};
  T_OK(vhd_read(v, buf, 0, SIZE, &err), &err, "vhd_read");
  T_OK(vhd_close(v, &err), &err, "vhd_close (read-only)");
}

/* ---- 1. a flush syncs ---- */

static uint64_t syncs_of_flush(vhd_t *v, const char *what) {
  struct vhd_err err = {{0}};
  uint64_t before = t_sync_count();
  T_OK(vhd_flush(v, &err), &err, what);
  return t_sync_count() - before;
}

static void test_flush_syncs(void) {
  uint8_t buf[8192];
  t_fill_nonzero(buf, sizeof buf);
  struct vhd_err err = {{0}};

  CLEANUP_FREE char *fixed = make_image(VHD_TYPE_FIXED, "syncs-fixed");
  vhd_t *v = t_open(fixed, false);
  T_OK(vhd_write(v, buf, 4096, sizeof buf, 0, &err), &err, "vhd_write (fixed)");
  uint64_t n = syncs_of_flush(v, "vhd_flush (fixed)");
  T_ASSERT(n == 1, "a flush of a fixed image after a write asked for %" PRIu64 " syncs, not 1",
           n);
  T_OK(vhd_close(v, &err), &err, "vhd_close");

  CLEANUP_FREE char *dyn = make_image(VHD_TYPE_DYNAMIC, "syncs-dynamic");
  v = t_open(dyn, false);
  T_OK(vhd_write(v, buf, 4096, sizeof buf, 0, &err), &err, "vhd_write (new blocks)");
  n = syncs_of_flush(v, "vhd_flush (new blocks)");
  T_ASSERT(n == 2,
           "a flush after allocating writes asked for %" PRIu64 " syncs, not 2 (data, metadata)",
           n);
  /* Sectors already marked present: no metadata changes, the data still has
   * to reach the disk. */
  t_fill_nonzero(buf, sizeof buf);
  T_OK(vhd_write(v, buf, 4096, sizeof buf, 0, &err), &err, "vhd_write (overwrite)");
  n = syncs_of_flush(v, "vhd_flush (overwrite)");
  T_ASSERT(n == 1, "a flush after overwriting present sectors asked for %" PRIu64
                   " syncs, not 1", n);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  printf("ok flush syncs: fixed and dynamic, with and without metadata\n");
}

/* ---- 2. the latch ---- */

static bool applies(enum vhd_type type, enum fault_point p) {
  return type != VHD_TYPE_FIXED || p == AT_FLUSH_DATA_SYNC || p == AT_DATA_WRITE;
}

/* Every write-kind call must now fail with EIO, and say why. */
static void expect_refused(vhd_t *v, const char *what) {
  struct vhd_err err = {{0}};
  uint8_t buf[1024];
  t_fill_nonzero(buf, sizeof buf);
  for (int i = 0; i < 3; i++) {
    memset(&err, 0, sizeof err);
    int r = vhd_flush(v, &err);
    T_ASSERT(r == -EIO, "%s: flush %d after the failure returned %d (%s), not EIO", what, i + 2,
             r, t_strerr(r));
    T_ASSERT(strstr(err.msg, "refused") && strstr(err.msg, vhd_path(v)),
             "%s: the refused flush says: %s", what, err.msg);
  }
  struct {
    const char *name;
    int r;
  } calls[] = {
      {"FUA write", vhd_write(v, buf, 0, sizeof buf, VHD_FUA, &err)},
      {"FUA write elsewhere", vhd_write(v, buf, 200 * 1024, sizeof buf, VHD_FUA, &err)},
      {"plain write", vhd_write(v, buf, 100 * 1024, sizeof buf, 0, &err)},
      {"write zeroes", vhd_write_zeroes(v, 0, 4096, VHD_MAY_TRIM, &err)},
      {"FUA write zeroes", vhd_write_zeroes(v, 8192, 4096, VHD_FUA, &err)},
      {"trim", vhd_trim(v, 0, 4096, 0, &err)},
  };
  for (size_t i = 0; i < ARRAY_SIZE(calls); i++)
    T_ASSERT(calls[i].r == -EIO, "%s: %s after the failure returned %d (%s), not EIO", what,
             calls[i].name, calls[i].r, t_strerr(calls[i].r));
  CLEANUP_FREE uint8_t *all = t_xmalloc(SIZE);
  T_OK(vhd_read(v, all, 0, SIZE, &err), &err, t_fmt("%s: reading after the failure", what));
}

static void test_latch(enum vhd_type type, enum fault_point point, int errnum) {
  char label[256];
  snprintf(label, sizeof label, "%s, %s failing with %s", type_name(type), point_name(point),
           strerror(errnum));
  CLEANUP_FREE char *path = make_image(
      type, t_fmt("latch-%d-%d-%d", (int)type, (int)point, errnum));
  CLEANUP_FREE uint8_t *initial = t_xmalloc(SIZE);
  CLEANUP_FREE uint8_t *a = t_xmalloc(A_LEN);
  CLEANUP_FREE uint8_t *b = t_xmalloc(B_LEN);
  read_image(path, initial);
  t_fill_nonzero(a, A_LEN);
  t_fill_nonzero(b, B_LEN);

  vhd_t *v = t_open(path, false);
  struct vhd_err err = {{0}};
  T_OK(vhd_write(v, a, 0, A_LEN, 0, &err), &err, "vhd_write A");
  T_OK(vhd_flush(v, &err), &err, "vhd_flush A");
  T_ASSERT(vhd_write_error(v, &err) == 0, "%s: a write error before any failure", label);
  t_track_unsynced(true);

  int r;
  const char *failing;
  if (point == AT_DATA_WRITE) {
    vhd_fault_arm_mode(VHD_FAULT_WRITE_ONCE, 0, errnum);
    failing = "the write";
    r = vhd_write(v, b, B_OFF, B_LEN, 0, &err);
  } else {
    T_OK(vhd_write(v, b, B_OFF, B_LEN, 0, &err), &err, "vhd_write B");
    if (point == AT_FLUSH_META_WRITE)
      vhd_fault_arm_mode(VHD_FAULT_WRITE_ONCE, 0, errnum);
    else
      vhd_fault_arm_mode(VHD_FAULT_SYNC_ONCE, point == AT_FLUSH_META_SYNC ? 1 : 0, errnum);
    failing = "the flush";
    r = vhd_flush(v, &err);
  }
  T_ASSERT(vhd_fault_tripped(), "%s: the fault was not injected", label);
  vhd_fault_arm(-1);
  T_ASSERT(r == -errnum, "%s: %s returned %d (%s), not the injected error", label, failing, r,
           t_strerr(r));
  if (point != AT_DATA_WRITE && point != AT_FLUSH_META_WRITE)
    t_lose_unsynced(path);

  struct vhd_err first = {{0}};
  r = vhd_write_error(v, &first);
  T_ASSERT(r == -errnum, "%s: vhd_write_error returned %d (%s)", label, r, t_strerr(r));
  T_ASSERT(strstr(first.msg, path) && strstr(first.msg, strerror(errnum)),
           "%s: vhd_write_error says \"%s\": it must name the image and the error", label,
           first.msg);
  expect_refused(v, label);
  r = vhd_close(v, &err);
  T_ASSERT(r == -EIO, "%s: vhd_close after the failure returned %d (%s), not EIO", label, r,
           t_strerr(r));
  t_track_unsynced(false);

  int bits = t_check(path);
  T_ASSERT((bits & ~VHD_CHECK_LEAKS) == 0, "%s: vhd_check returned 0x%x after the failure",
           label, bits);
  CLEANUP_FREE uint8_t *now = t_xmalloc(SIZE);
  read_image(path, now);
  for (uint64_t i = 0; i < SIZE; i++) {
    uint8_t durable = i < A_LEN ? a[i] : initial[i];
    bool in_b = i >= B_OFF && i < B_OFF + B_LEN;
    T_ASSERT(now[i] == durable || (in_b && now[i] == b[i - B_OFF]),
             "%s: byte %" PRIu64 " reads 0x%02x after reopening; flushed 0x%02x%s", label, i,
             now[i], durable, in_b ? t_fmt(", or 0x%02x from the unflushed write", b[i - B_OFF])
                                   : "");
  }

  /* Reopened, the image is writable again. */
  v = t_open(path, false);
  T_ASSERT(vhd_write_error(v, NULL) == 0, "%s: a new handle starts latched", label);
  T_OK(vhd_write(v, b, B_OFF, B_LEN, VHD_FUA, &err), &err, "vhd_write after reopening");
  T_OK(vhd_close(v, &err), &err, "vhd_close after reopening");
  read_image(path, now);
  T_ASSERT(memcmp(now + B_OFF, b, B_LEN) == 0, "%s: a write after reopening is lost", label);
  bits = t_check(path);
  T_ASSERT((bits & ~VHD_CHECK_LEAKS) == 0, "%s: vhd_check returned 0x%x after reopening", label,
           bits);
}

/* ---- 3. one image's failure is its own ---- */

static void test_other_image(void) {
  CLEANUP_FREE char *bad = make_image(VHD_TYPE_DYNAMIC, "other-bad");
  CLEANUP_FREE char *good = make_image(VHD_TYPE_DYNAMIC, "other-good");
  vhd_t *vb = t_open(bad, false), *vg = t_open(good, false);
  uint8_t buf[4096];
  t_fill_nonzero(buf, sizeof buf);
  struct vhd_err err = {{0}};
  T_OK(vhd_write(vb, buf, 0, sizeof buf, 0, &err), &err, "vhd_write (bad)");
  T_OK(vhd_write(vg, buf, 0, sizeof buf, 0, &err), &err, "vhd_write (good)");
  vhd_fault_arm_mode(VHD_FAULT_SYNC_ONCE, 0, EIO);
  int r = vhd_flush(vb, &err);
  vhd_fault_arm(-1);
  T_ASSERT(r == -EIO, "the failing flush returned %d (%s)", r, t_strerr(r));
  T_ASSERT(vhd_flush(vb, &err) == -EIO, "the failed image flushed");
  T_ASSERT(vhd_write_error(vg, NULL) == 0, "the other image is latched too");
  T_OK(vhd_write(vg, buf, 8192, sizeof buf, VHD_FUA, &err), &err,
       "FUA write to the other image");
  T_OK(vhd_flush(vg, &err), &err, "flush of the other image");
  T_OK(vhd_close(vg, &err), &err, "vhd_close (good)");
  T_ASSERT(vhd_close(vb, &err) == -EIO, "closing the failed image did not report EIO");
  printf("ok a failure latches its own image only\n");
}

static void test_no_progress(enum vhd_type type) {
  CLEANUP_FREE char *path = make_image(type, t_fmt("stall-%s", type_name(type)));
  vhd_t *v = t_open(path, false);
  struct vhd_err err = {{0}};
  static uint8_t buf[BS];
  t_fill_nonzero(buf, sizeof buf);
  t_set_pwrite_stall(true);
  int r = vhd_write(v, buf, 2 * BS, sizeof buf, 0, &err);
  uint64_t calls = t_stalled_writes();
  t_set_pwrite_stall(false);
  T_ASSERT(r == -EIO && calls == 1,
           "%s image: a write the file system takes nothing of returned %d (%s) after %" PRIu64
           " pwrite calls; expected EIO after one",
           type_name(type), r, err.msg, calls);
  expect_refused(v, t_fmt("%s image after a write without progress", type_name(type)));
  vhd_close(v, NULL);
}

int main(void) {
  t_init("test-vhd-write-error");
  test_flush_syncs();
  static const enum vhd_type types[] = {VHD_TYPE_FIXED, VHD_TYPE_DYNAMIC,
                                        VHD_TYPE_DIFFERENCING};
  static const enum fault_point points[] = {AT_FLUSH_DATA_SYNC, AT_FLUSH_META_SYNC,
                                            AT_FLUSH_META_WRITE, AT_DATA_WRITE};
  static const int errnums[] = {EIO, ENOSPC};
  unsigned cases = 0;
  for (size_t t = 0; t < ARRAY_SIZE(types); t++)
    for (size_t p = 0; p < ARRAY_SIZE(points); p++)
      for (size_t e = 0; e < ARRAY_SIZE(errnums); e++)
        if (applies(types[t], points[p])) {
          test_latch(types[t], points[p], errnums[e]);
          cases++;
        }
  printf("ok the latch: %u cases (image type x fault point x errno)\n", cases);
  test_other_image();
  for (size_t t = 0; t < ARRAY_SIZE(types); t++)
    test_no_progress(types[t]);
  printf("ok a write without progress is EIO at once and latches\n");
  return 0;
}
