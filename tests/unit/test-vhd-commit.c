/* test-vhd-commit.c: vhd_commit and vhd_rebase against an in-memory model,
 * with a crash at every I/O point.
 *
 * A chain base <- mid <- top (dynamic, differencing, differencing) gets
 * random writes at every level; the model is what each level reads.  For
 * every n, fresh copies of the chain get the operation with the fault
 * switch armed at n (the (n+1)th write, sync, rename or unlink and all later
 * ones fail, as after a power cut).  After each crash:
 *  - top reads exactly what it read before (commit: unless --remove already
 *    removed it, and then mid reads it), base is untouched, and each sector
 *    of mid reads either its old bytes or top's (commit);
 *  - every image left passes vhd_check without corruption;
 *  - rebase again (4 KiB blocks) with every write since the child's last
 *    sync lost too;
 *  - the operation run again succeeds and leaves the documented end state:
 *    commit: mid reads top's content, top is empty with mid's new footer
 *    timestamp as its parent timestamp (no stale-timestamp warning), or is
 *    gone with remove; rebase: top reads the same over its new parent, whose
 *    unique id, timestamp, name and W2ru/W2ku locators its header holds.
 * Then the refusals: a locked parent, a read-only parent, other children
 * (and --force), a loop.
 *
 * Block sizes 4 KiB, 512 B and 64 KiB (fewer with a VHD_TEST_ITERS below
 * the default), an odd virtual size.  VHD_TEST_SEED reproduces a run. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd.h"

#define SIZE (256u * 1024 + 7 * 512) /* odd: not a whole number of blocks */

static uint8_t *base_m, *mid_m, *top_m, *base2_m;
static unsigned warnings;

static void count_warning(void *opaque, const char *msg) {
  (void)opaque;
  (void)msg; /* a stale parent timestamp is expected after some crashes */
  warnings++;
}

static vhd_t *open_counting(const char *path, unsigned flags) {
  struct vhd_open_opts o = {.flags = flags | VHD_OPEN_RDONLY, .warn = count_warning};
  struct vhd_err err = {{0}};
  vhd_t *v = NULL;
  int r = vhd_open(path, &o, &v, &err);
  T_OK(r, &err, t_fmt("vhd_open %s", path));
  return v;
}

static void read_all(const char *path, uint8_t *buf) {
  vhd_t *v = open_counting(path, 0);
  struct vhd_err err = {{0}};
  T_ASSERT(vhd_virtual_size(v) == SIZE, "%s: size %llu", path,
           (unsigned long long)vhd_virtual_size(v));
  T_OK(vhd_read(v, buf, 0, SIZE, &err), &err, "vhd_read");
  vhd_close(v, NULL);
}

static void expect_content(const char *path, const uint8_t *model) {
  CLEANUP_FREE uint8_t *buf = t_xmalloc(SIZE);
  read_all(path, buf);
  for (size_t i = 0; i < SIZE; i++)
    if (buf[i] != model[i])
      t_fail("%s: byte %zu reads 0x%02x, the model says 0x%02x", path, i, buf[i], model[i]);
}

/* Random sector-aligned writes through the engine, mirrored in model. */
static void scribble(const char *path, uint8_t *model, unsigned n) {
  vhd_t *v = t_open(path, false);
  struct vhd_err err = {{0}};
  CLEANUP_FREE uint8_t *buf = t_xmalloc(64 * 1024);
  for (unsigned i = 0; i < n; i++) {
    uint64_t sectors = t_range(1, 24);
    uint64_t off = t_below(SIZE / 512 - sectors + 1) * 512;
    size_t len = (size_t)sectors * 512;
    t_fill_nonzero(buf, len);
    T_OK(vhd_write(v, buf, off, len, 0, &err), &err, "vhd_write");
    memcpy(model + off, buf, len);
  }
  T_OK(vhd_close(v, &err), &err, "vhd_close");
}

/* Prints only errors: a crash may leave leaks (an allocation window) and
 * a stale parent timestamp (between the commit's steps 2 and 3). */
static void report_unexpected(void *opaque, const char *level, const char *msg) {
  if (strcmp(level, "error") == 0)
    fprintf(stderr, "  check %s: %s: %s\n", (const char *)opaque, level, msg);
}

static void not_corrupt(const char *path) {
  struct vhd_check_opts o = {.report = report_unexpected, .opaque = (void *)path};
  struct vhd_err err = {{0}};
  int bits = vhd_check(path, &o, &err);
  T_OK(bits, &err, t_fmt("vhd_check %s", path));
  T_ASSERT(!(bits & VHD_CHECK_CORRUPT), "%s: vhd_check says %d", path, bits);
}

/* What a crash left of an allocation window (zeros, footers of the image
 * however old, blocks whose BAT entry never landed) is given back by
 * check --repair and compact: afterwards check finds nothing to report.
 * A window handed back only in part has a stale footer that predates the
 * rerun's new timestamp; blocks allocated in a window before the cut are
 * allocated again past it by the rerun.  Returns the file's size then. */
static uint64_t leftovers_reclaimed(const char *path, long n) {
  struct vhd_check_opts o = {.repair = true, .report = report_unexpected, .opaque = (void *)path};
  struct vhd_err err = {{0}};
  T_OK(vhd_check(path, &o, &err), &err, t_fmt("n=%ld: vhd_check --repair %s", n, path));
  struct vhd_compact_opts co = {0};
  struct vhd_compact_result cr;
  T_OK(vhd_compact(path, &co, &cr, &err), &err, t_fmt("n=%ld: vhd_compact %s", n, path));
  o = (struct vhd_check_opts){.report = report_unexpected, .opaque = (void *)path};
  int bits = vhd_check(path, &o, &err);
  T_OK(bits, &err, t_fmt("n=%ld: vhd_check %s after compact", n, path));
  T_ASSERT(bits == 0, "n=%ld: %s: check after check --repair and compact says %d", n, path, bits);
  return t_file_size(path);
}

static const char *const names[] = {"base.vhd", "mid.vhd", "top.vhd", "base2.vhd"};

static void save_all(void) {
  for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
    char from[PATH_MAX];
    snprintf(from, sizeof from, "%s", t_path(names[i]));
    t_copy_file(from, t_path(t_fmt("%s.orig", names[i])));
  }
}

/* The saved chain back in place, as it was before the operation. */
static void restore_all(void) {
  for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
    char to[PATH_MAX];
    snprintf(to, sizeof to, "%s", t_path(names[i]));
    unlink(to);
    t_copy_file(t_path(t_fmt("%s.orig", names[i])), to);
  }
}

static void build_chain(uint32_t bs) {
  for (size_t i = 0; i < ARRAY_SIZE(names); i++)
    unlink(t_path(names[i]));
  char base[PATH_MAX], mid[PATH_MAX];
  snprintf(base, sizeof base, "%s", t_path("base.vhd"));
  snprintf(mid, sizeof mid, "%s", t_path("mid.vhd"));
  t_create(base, VHD_TYPE_DYNAMIC, SIZE, bs, true, NULL);
  t_create(t_path("base2.vhd"), VHD_TYPE_DYNAMIC, SIZE, bs, true, NULL);
  memset(base_m, 0, SIZE);
  memset(base2_m, 0, SIZE);
  scribble(base, base_m, 8);
  /* base2 shares some of base's bytes, so that rebase copies only part. */
  {
    vhd_t *v = t_open(t_path("base2.vhd"), false);
    struct vhd_err err = {{0}};
    T_OK(vhd_write(v, base_m, 0, SIZE / 2 / 512 * 512, 0, &err), &err, "vhd_write");
    memcpy(base2_m, base_m, SIZE / 2 / 512 * 512);
    T_OK(vhd_close(v, &err), &err, "vhd_close");
  }
  scribble(t_path("base2.vhd"), base2_m, 3);
  t_create(mid, VHD_TYPE_DIFFERENCING, 0, bs, false, base);
  memcpy(mid_m, base_m, SIZE);
  scribble(mid, mid_m, 6);
  t_create(t_path("top.vhd"), VHD_TYPE_DIFFERENCING, 0, bs, false, mid);
  memcpy(top_m, mid_m, SIZE);
  scribble(t_path("top.vhd"), top_m, 6);
}

static bool exists(const char *path) { return access(path, F_OK) == 0; }

static void expect_committed(bool removed, uint32_t mid_ts_before) {
  char top[PATH_MAX];
  snprintf(top, sizeof top, "%s", t_path("top.vhd"));
  expect_content(t_path("mid.vhd"), top_m);
  expect_content(t_path("base.vhd"), base_m);
  struct vhd_info mi, ti;
  vhd_t *m = open_counting(t_path("mid.vhd"), VHD_OPEN_NOPARENT);
  vhd_get_info(m, &mi);
  vhd_close(m, NULL);
  T_ASSERT(mi.timestamp != mid_ts_before, "the parent's footer timestamp did not change (%u)",
           mi.timestamp);
  if (removed) {
    T_ASSERT(!exists(top), "top.vhd still exists after commit --remove");
    return;
  }
  unsigned w = warnings;
  vhd_t *t = open_counting(top, 0);
  T_ASSERT(warnings == w, "opening the committed child warned");
  vhd_get_info(t, &ti);
  vhd_close(t, NULL);
  T_ASSERT(ti.allocated_blocks == 0, "the committed child still holds %u blocks",
           ti.allocated_blocks);
  T_ASSERT(ti.parent_timestamp == mi.timestamp,
           "child's parent timestamp %u, the parent's footer says %u", ti.parent_timestamp,
           mi.timestamp);
  expect_content(top, top_m);
  not_corrupt(top);
}

/* What a crash leaves of the writes to each image since its last sync: all
 * of them, none (as a power cut may), or each torn at its sectors
 * (t_tear_unsynced, both ways). */
enum crash_kind { CRASH_KEEP, CRASH_LOSE, CRASH_TEAR_EVEN, CRASH_TEAR_ODD };
static const char *const crash_said[] = {"", " (unsynced writes lost)",
                                         " (unsynced writes torn, even sectors kept)",
                                         " (unsynced writes torn, odd sectors kept)"};

static void test_commit_crashes(bool remove, enum crash_kind crash) {
  char top[PATH_MAX];
  snprintf(top, sizeof top, "%s", t_path("top.vhd"));
  restore_all();
  struct vhd_info mi;
  vhd_t *m = open_counting(t_path("mid.vhd"), VHD_OPEN_NOPARENT);
  vhd_get_info(m, &mi);
  vhd_close(m, NULL);
  CLEANUP_FREE uint8_t *buf = t_xmalloc(SIZE);
  uint64_t clean_size = 0;
  if (!remove) {
    struct vhd_commit_opts o = {0};
    struct vhd_commit_result res;
    struct vhd_compact_opts co = {0};
    struct vhd_compact_result cr;
    struct vhd_err err = {{0}};
    T_OK(vhd_commit(top, &o, &res, &err), &err, "vhd_commit without a fault");
    T_OK(vhd_compact(t_path("mid.vhd"), &co, &cr, &err), &err, "vhd_compact");
    clean_size = t_file_size(t_path("mid.vhd"));
  }
  long n;
  for (n = 0;; n++) {
    restore_all();
    struct vhd_commit_opts o = {.remove = remove};
    struct vhd_commit_result res;
    struct vhd_err err = {{0}};
    t_track_unsynced(crash != CRASH_KEEP);
    vhd_fault_arm(n);
    int r = vhd_commit(top, &o, &res, &err);
    bool tripped = vhd_fault_tripped();
    vhd_fault_arm(-1);
    /* The parent takes the copy; the child is only replaced (a file
     * written and synced before the rename). */
    if (crash == CRASH_LOSE && tripped)
      t_lose_unsynced(t_path("mid.vhd"));
    else if (crash >= CRASH_TEAR_EVEN && tripped)
      t_tear_unsynced(t_path("mid.vhd"), crash == CRASH_TEAR_ODD);
    t_track_unsynced(false);
    if (!tripped) {
      T_OK(r, &err, "vhd_commit without a fault");
      expect_committed(remove, mi.timestamp);
      break;
    }
    T_ASSERT(r < 0, "n=%ld: vhd_commit returned 0 although an I/O failed", n);
    /* What a crash leaves. */
    expect_content(t_path("base.vhd"), base_m);
    not_corrupt(t_path("mid.vhd"));
    read_all(t_path("mid.vhd"), buf);
    for (size_t i = 0; i < SIZE; i++)
      if (buf[i] != mid_m[i] && buf[i] != top_m[i])
        t_fail("n=%ld: mid byte %zu reads 0x%02x: neither its own 0x%02x nor the child's 0x%02x",
               n, i, buf[i], mid_m[i], top_m[i]);
    if (!exists(top)) {
      T_ASSERT(remove, "n=%ld: top.vhd vanished without --remove", n);
      expect_content(t_path("mid.vhd"), top_m);
      continue;
    }
    expect_content(top, top_m);
    not_corrupt(top);
    /* Again, to the end. */
    T_OK(vhd_commit(top, &o, &res, &err), &err, t_fmt("n=%ld: vhd_commit again", n));
    expect_committed(remove, mi.timestamp);
    if (!remove) {
      uint64_t size = leftovers_reclaimed(t_path("mid.vhd"), n);
      /* A lost or torn crash can leave a block whose data and bitmap were
       * synced and whose BAT entry was not: sectors marked present, which
       * compaction cannot prove its own.  A leak, not a loss. */
      T_ASSERT(crash != CRASH_KEEP || size == clean_size,
               "n=%ld: mid.vhd: %llu bytes after check --repair and compact, a run never cut "
               "leaves %llu",
               n, (unsigned long long)size, (unsigned long long)clean_size);
      expect_content(t_path("mid.vhd"), top_m);
    }
  }
  printf("commit%s: %ld crash points%s\n", remove ? " --remove" : "", n, crash_said[crash]);
  T_ASSERT(n > 10, "only %ld I/O points: the fault switch does not see the commit", n);
}

/* The W2ru and W2ku locators and the name a rebase wrote, read from the file. */
static void expect_locators(const char *child, const char *parent_name) {
  uint8_t h[1024];
  t_pread_file(child, h, sizeof h, 512);
  char rel[512], abs_path[PATH_MAX], want_abs[PATH_MAX];
  size_t k;
  T_ASSERT(realpath(t_path(parent_name), want_abs) != NULL, "realpath");
  const char *want_rel = t_fmt(".\\%s", parent_name);
  struct t_locator locs[8];
  t_read_locators(child, locs);
  for (int i = 0; i < 2; i++) {
    uint32_t code = locs[i].code, len = locs[i].len;
    uint64_t off = locs[i].off;
    T_ASSERT(code == (i == 0 ? 0x57327275u : 0x57326B75u), "locator %d code 0x%08x", i, code);
    T_ASSERT(len % 2 == 0 && len / 2 < sizeof abs_path, "locator %d length %u", i, len);
    CLEANUP_FREE uint8_t *raw = t_xmalloc(len);
    t_pread_file(child, raw, len, off);
    char *out = i == 0 ? rel : abs_path;
    for (k = 0; k < len / 2; k++) {
      T_ASSERT(raw[2 * k + 1] == 0 && raw[2 * k] != 0, "locator %d: not ASCII UTF-16LE", i);
      out[k] = (char)raw[2 * k];
    }
    out[k] = '\0';
  }
  T_ASSERT(strcmp(rel, want_rel) == 0, "W2ru is \"%s\", expected \"%s\"", rel, want_rel);
  T_ASSERT(strcmp(abs_path, want_abs) == 0, "W2ku is \"%s\", expected \"%s\"", abs_path,
           want_abs);
  /* The header's name: UTF-16BE. */
  for (k = 0; parent_name[k]; k++)
    T_ASSERT(h[64 + 2 * k] == 0 && h[64 + 2 * k + 1] == (uint8_t)parent_name[k],
             "parent name character %zu", k);
}

static void expect_rebased(const char *parent_name) {
  char top[PATH_MAX];
  snprintf(top, sizeof top, "%s", t_path("top.vhd"));
  unsigned w = warnings;
  vhd_t *t = open_counting(top, 0);
  T_ASSERT(warnings == w, "opening the rebased child warned");
  struct vhd_info ti, pi;
  vhd_get_info(t, &ti);
  vhd_get_info(vhd_parent(t), &pi);
  T_ASSERT(strstr(vhd_path(vhd_parent(t)), parent_name) != NULL, "the child's parent is %s",
           vhd_path(vhd_parent(t)));
  vhd_close(t, NULL);
  T_ASSERT(memcmp(ti.parent_uuid, pi.uuid, 16) == 0, "parent unique id not the new parent's");
  T_ASSERT(ti.parent_timestamp == pi.timestamp, "parent timestamp %u, the parent's %u",
           ti.parent_timestamp, pi.timestamp);
  T_ASSERT(strcmp(ti.parent_name, parent_name) == 0, "parent name %s", ti.parent_name);
  expect_locators(top, parent_name);
  expect_content(top, top_m);
  not_corrupt(top);
}

/* Where the child's parent locator data ends in its file; *set_bytes (if
 * not NULL): the bytes the locators take, each a whole number of sectors. */
static uint64_t locators_end(const char *path, uint64_t *set_bytes) {
  struct t_locator locs[8];
  t_read_locators(path, locs);
  uint64_t end = 0, n = 0;
  for (int i = 0; i < 8; i++)
    if (locs[i].code) {
      end = MAX(end, locs[i].off + locs[i].len);
      n += (locs[i].len + 511) / 512 * 512;
    }
  if (set_bytes)
    *set_bytes = n;
  return end;
}

/* Whether the dynamic header at 512 fails its checksum (is torn). */
static bool header_torn(const char *path) {
  uint8_t h[1024];
  t_pread_file(path, h, sizeof h, 512);
  uint32_t sum = 0;
  for (size_t i = 0; i < sizeof h; i++)
    if (i < 36 || i >= 40)
      sum += h[i];
  return t_be32(h + 36) != ~sum;
}

/* A crash of kind `crash` at every I/O point of a rebase.  room:
 * the child has room for the new locator data among its blocks, which a
 * rebase without a fault must take (below `room`), else 0. */
static void test_rebase_crashes(enum crash_kind crash, uint64_t room) {
  char top[PATH_MAX], base2[PATH_MAX];
  snprintf(top, sizeof top, "%s", t_path("top.vhd"));
  snprintf(base2, sizeof base2, "%s", t_path("base2.vhd"));
  uint64_t clean_size, set_bytes;
  {
    restore_all();
    struct vhd_rebase_opts o = {.new_parent = base2};
    struct vhd_rebase_result res;
    struct vhd_compact_opts co = {0};
    struct vhd_compact_result cr;
    struct vhd_err err = {{0}};
    T_OK(vhd_rebase(top, &o, &res, &err), &err, "vhd_rebase without a fault");
    T_ASSERT(room == 0 || locators_end(top, NULL) <= room,
             "the new locator data ends at %llu, not in the room below %llu",
             (unsigned long long)locators_end(top, NULL), (unsigned long long)room);
    locators_end(top, &set_bytes);
    T_OK(vhd_compact(top, &co, &cr, &err), &err, "vhd_compact");
    clean_size = t_file_size(top);
  }
  long n;
  int torn = 0;
  for (n = 0;; n++) {
    restore_all();
    struct vhd_rebase_opts o = {.new_parent = base2};
    struct vhd_rebase_result res;
    struct vhd_err err = {{0}};
    t_track_unsynced(crash != CRASH_KEEP);
    vhd_fault_arm(n);
    int r = vhd_rebase(top, &o, &res, &err);
    bool tripped = vhd_fault_tripped();
    vhd_fault_arm(-1);
    if (crash == CRASH_LOSE && tripped)
      t_lose_unsynced(top);
    else if (crash >= CRASH_TEAR_EVEN && tripped)
      t_tear_unsynced(top, crash == CRASH_TEAR_ODD);
    t_track_unsynced(false);
    /* A header torn by the cut is read from the journal its rewrite
     * left, by every open below. */
    torn += tripped && header_torn(top);
    if (!tripped) {
      T_OK(r, &err, "vhd_rebase without a fault");
      T_ASSERT(res.bytes > 0, "nothing copied although the parents differ");
      expect_rebased("base2.vhd");
      expect_content(t_path("mid.vhd"), mid_m);
      break;
    }
    T_ASSERT(r < 0, "n=%ld: vhd_rebase returned 0 although an I/O failed", n);
    expect_content(top, top_m);
    not_corrupt(top);
    expect_content(t_path("mid.vhd"), mid_m);
    expect_content(base2, base2_m);
    T_OK(vhd_rebase(top, &o, &res, &err), &err, t_fmt("n=%ld: vhd_rebase again", n));
    expect_rebased("base2.vhd");
    /* Compaction moves the locator data past the blocks down after them,
     * so a window a crash left below it goes too.  A relink cut between
     * the header switch and the zeroing leaves the old parent's data,
     * which nothing recognises, and the rerun's own past the blocks when
     * the room it would take holds the cut run's: two sets at most.  A
     * header rewrite cut before it took its journal off again leaves a
     * footer copy (and the journal, which the rerun reuses) after the old
     * set: one sector more. */
    uint64_t size = leftovers_reclaimed(top, n);
    /* Torn, a new block's data can outlive its bitmap sector: bytes behind
     * a zero sector, which compaction leaves (they could be anyone's). */
    T_ASSERT(crash >= CRASH_TEAR_EVEN || size <= clean_size + 2 * set_bytes + 512,
             "n=%ld: top.vhd: %llu bytes after check --repair and compact, more than two sets "
             "of locator data and a footer past the %llu a run never cut leaves",
             n, (unsigned long long)size, (unsigned long long)clean_size);
    expect_content(top, top_m);
  }
  printf("rebase%s: %ld crash points, %d with the header torn\n", crash_said[crash], n, torn);
  T_ASSERT(n > 5, "only %ld I/O points: the fault switch does not see the rebase", n);
  /* The header's sectors are 1 and 2: each parity keeps one of them. */
  T_ASSERT(crash < CRASH_TEAR_EVEN || torn > 0,
           "no crash point tore the header: the tear does not reach its rewrite");
}

/* -u after the parent moved: the header may name the old place until the
 * rewrite lands, but is valid at every instant. */
static void test_rebase_unsafe_crashes(void) {
  char top[PATH_MAX], moved[PATH_MAX];
  snprintf(top, sizeof top, "%s", t_path("top.vhd"));
  snprintf(moved, sizeof moved, "%s", t_path("moved-mid.vhd"));
  long n;
  for (n = 0;; n++) {
    restore_all();
    unlink(moved);
    T_ASSERT(rename(t_path("mid.vhd"), moved) == 0, "rename");
    struct vhd_rebase_opts o = {.new_parent = moved, .unsafe = true};
    struct vhd_rebase_result res;
    struct vhd_err err = {{0}};
    vhd_fault_arm(n);
    int r = vhd_rebase(top, &o, &res, &err);
    bool tripped = vhd_fault_tripped();
    vhd_fault_arm(-1);
    if (tripped) {
      T_ASSERT(r < 0, "n=%ld: vhd_rebase -u returned 0 although an I/O failed", n);
      vhd_close(open_counting(top, VHD_OPEN_NOPARENT), NULL);
      T_OK(vhd_rebase(top, &o, &res, &err), &err, t_fmt("n=%ld: vhd_rebase -u again", n));
    } else {
      T_OK(r, &err, "vhd_rebase -u without a fault");
    }
    T_ASSERT(res.bytes == 0, "rebase -u copied %llu bytes", (unsigned long long)res.bytes);
    expect_rebased("moved-mid.vhd");
    if (!tripped)
      break;
  }
  printf("rebase -u: %ld crash points\n", n);

  /* A header torn at a sector with no journal of its rewrite (the rewrite
   * cuts it off once done): refused (checksum), never read as a mix of two
   * parents. */
  restore_all();
  uint8_t old_h[1024], new_h[1024];
  t_pread_file(top, old_h, sizeof old_h, 512);
  unlink(moved);
  T_ASSERT(rename(t_path("mid.vhd"), moved) == 0, "rename");
  struct vhd_rebase_opts o = {.new_parent = moved, .unsafe = true};
  struct vhd_rebase_result res;
  struct vhd_err err = {{0}};
  T_OK(vhd_rebase(top, &o, &res, &err), &err, "vhd_rebase -u");
  t_pread_file(top, new_h, sizeof new_h, 512);
  for (int torn = 0; torn < 2; torn++) {
    t_pwrite_file(top, torn ? new_h : old_h, 512, 512);
    t_pwrite_file(top, torn ? old_h + 512 : new_h + 512, 512, 1024);
    struct vhd_open_opts oo = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOPARENT};
    vhd_t *v = NULL;
    int r = vhd_open(top, &oo, &v, &err);
    T_ASSERT(r == -EINVAL && strstr(err.msg, "checksum"), "a torn header opened: %d %s", r,
             err.msg);
  }
  t_pwrite_file(top, new_h, sizeof new_h, 512);
  expect_rebased("moved-mid.vhd");
  unlink(moved);
}

static void test_refusals(void) {
  char top[PATH_MAX], mid[PATH_MAX];
  snprintf(top, sizeof top, "%s", t_path("top.vhd"));
  snprintf(mid, sizeof mid, "%s", t_path("mid.vhd"));
  struct vhd_commit_opts o = {0};
  struct vhd_commit_result res;
  struct vhd_err err = {{0}};
  restore_all();

  /* A parent open read-write elsewhere (its OFD lock). */
  vhd_t *holder = t_open(mid, false);
  int r = vhd_commit(top, &o, &res, &err);
  T_ASSERT(r == -EBUSY && strstr(err.msg, "locked"), "commit into a locked parent: %d %s", r,
           err.msg);
  /* The holder is named (found through /proc: OFD locks carry no pid). */
  T_ASSERT(strstr(err.msg, t_fmt("process %d (", (int)getpid())) != NULL,
           "the lock's holder is not named: %s", err.msg);
  struct vhd_rebase_opts ro = {.new_parent = t_path("base2.vhd")};
  struct vhd_rebase_result rres;
  vhd_close(holder, NULL);
  holder = t_open(top, false);
  r = vhd_rebase(top, &ro, &rres, &err);
  T_ASSERT(r == -EBUSY && strstr(err.msg, "locked"), "rebase of a locked child: %d %s", r,
           err.msg);
  r = vhd_commit(top, &o, &res, &err);
  T_ASSERT(r == -EBUSY && strstr(err.msg, "locked"), "commit of a locked child: %d %s", r,
           err.msg);
  vhd_close(holder, NULL);

  /* A parent nobody may write. */
  T_ASSERT(chmod(mid, 0444) == 0, "chmod");
  r = vhd_commit(top, &o, &res, &err);
  T_ASSERT(r == -EACCES && strstr(err.msg, "read-only"), "commit into a read-only parent: %d %s",
           r, err.msg);
  T_ASSERT(chmod(mid, 0644) == 0, "chmod");

  /* Another child of the parent. */
  char sib[PATH_MAX];
  snprintf(sib, sizeof sib, "%s", t_path("sibling.vhd"));
  t_create(sib, VHD_TYPE_DIFFERENCING, 0, 0, false, mid);
  r = vhd_commit(top, &o, &res, &err);
  T_ASSERT(r == -EBUSY && strstr(err.msg, "sibling.vhd") && strstr(err.msg, "--force"),
           "commit with another child: %d %s", r, err.msg);
  expect_content(mid, mid_m);
  unsigned w = warnings;
  o.force = true;
  o.warn = count_warning;
  T_OK(vhd_commit(top, &o, &res, &err), &err, "vhd_commit --force");
  T_ASSERT(warnings > w && res.other_children == 1, "--force did not list the other child");
  expect_content(mid, top_m);
  unlink(sib);

  /* A loop. */
  restore_all();
  ro.new_parent = top;
  r = vhd_rebase(top, &ro, &rres, &err);
  T_ASSERT(r == -ELOOP, "rebase onto itself: %d %s", r, err.msg);
  expect_content(top, top_m);
}

int main(void) {
  t_init("test-vhd-commit");
  base_m = t_xmalloc(SIZE);
  mid_m = t_xmalloc(SIZE);
  top_m = t_xmalloc(SIZE);
  base2_m = t_xmalloc(SIZE);
  /* A shorter workload (VHD_TEST_ITERS) tries fewer block sizes. */
  static const uint32_t sizes[] = {4096, 512, 65536};
  size_t n_sizes = MIN(ARRAY_SIZE(sizes), (size_t)t_scaled(ARRAY_SIZE(sizes)));
  for (size_t i = 0; i < n_sizes; i++) {
    printf("block size %u\n", sizes[i]);
    build_chain(sizes[i]);
    save_all();
    test_commit_crashes(false, CRASH_KEEP);
    test_commit_crashes(true, CRASH_KEEP);
    if (sizes[i] == 4096)
      for (enum crash_kind k = CRASH_LOSE; k <= CRASH_TEAR_ODD; k++)
        test_commit_crashes(false, k);
    test_rebase_crashes(CRASH_KEEP, 0);
    if (sizes[i] == 4096)
      for (enum crash_kind k = CRASH_LOSE; k <= CRASH_TEAR_ODD; k++)
        test_rebase_crashes(k, 0);
    test_rebase_unsafe_crashes();
    test_refusals();
  }
  /* A child whose locator data an earlier rebase moved past its blocks
   * (a rebase -u onto the same parent), leaving room after the BAT: the
   * rebase's crash points with the new data going into that room. */
  {
    printf("block size 65536, locator room after the BAT\n");
    build_chain(65536);
    char top[PATH_MAX], mid[PATH_MAX];
    snprintf(top, sizeof top, "%s", t_path("top.vhd"));
    snprintf(mid, sizeof mid, "%s", t_path("mid.vhd"));
    uint64_t first = locators_end(top, NULL);
    struct vhd_rebase_opts o = {.new_parent = mid, .unsafe = true};
    struct vhd_rebase_result res;
    struct vhd_err err = {{0}};
    T_OK(vhd_rebase(top, &o, &res, &err), &err, "vhd_rebase -u onto the same parent");
    T_ASSERT(locators_end(top, NULL) > first,
             "rebase -u put the locator data at %llu, among the blocks",
             (unsigned long long)locators_end(top, NULL));
    save_all();
    test_rebase_crashes(CRASH_KEEP, (first + 511) / 512 * 512);
  }
  free(base_m);
  free(mid_m);
  free(top_m);
  free(base2_m);
  printf("ok\n");
  return 0;
}

