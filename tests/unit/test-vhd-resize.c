/* test-vhd-resize.c: vhd_resize against an in-memory model, with a crash
 * at every I/O point.
 *
 * Each scenario builds an image (fixed; dynamic whose BAT grows into its
 * padding, over the blocks right after it, or, in a differencing child
 * whose locators follow the BAT, anew past everything; shrinks), with
 * random data the model records.  Then for every n the resize runs on a
 * fresh copy with the fault switch cutting the power after n writes, syncs,
 * truncates or punches; once with what reached the page cache kept, once
 * with the writes since the last sync lost.  After each crash the image must
 * open with the old size or the new one, read the model within the smaller,
 * have nothing vhd_check calls corrupt, and a second vhd_resize must finish
 * the job: the new size, the model's data, zeros past the old end.  The run
 * without a fault is the last n.  Refusals (shrink without the flag, data
 * past the new end, an image in use) leave the file as it was. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"
#include "vhd.h"

struct scenario {
  const char *name;
  enum vhd_type type;      /* of the resized image */
  uint64_t size, new_size; /* exact sizes */
  uint32_t block_size;
  bool shrink;
  bool relocates; /* the BAT must move (something not a block follows it) */
  uint64_t parent_len; /* differencing: the parent's data (0: PARENT_DATA_LEN) */
  /* Data written: [off, off+len) ranges (random bytes). */
  struct {
    uint64_t off, len;
  } writes[6];
};

static const struct scenario scenarios[] = {
    {"fixed-grow", VHD_TYPE_FIXED, 1024 * 1024 + 1536, 3 * 1024 * 1024 + 512, 0, false, false, 0,
     {{0, 4096}, {1024 * 1024 - 700, 2000}, {1024 * 1024 + 1024, 512}}},
    {"fixed-shrink", VHD_TYPE_FIXED, 1024 * 1024, 300 * 1024 + 512, 0, true, false, 0,
     {{0, 4096}, {200 * 1024 + 7, 100 * 1024}}},
    {"dynamic-padding", VHD_TYPE_DYNAMIC, 3 * 1024 * 1024, 200 * 1024 * 1024, 2 * 1024 * 1024,
     false, false, 0, {{0, 4096}, {3 * 1024 * 1024 - 512, 512}}},
    /* 128 entries fill the BAT's one sector: blocks 0 and 1 follow it. */
    {"dynamic-move", VHD_TYPE_DYNAMIC, 512 * 1024, 1024 * 1024 + 1536, 4096, false, false, 0,
     {{0, 9000}, {20 * 1024, 4096}, {508 * 1024, 4096}, {100 * 1024 + 3, 1}}},
    {"dynamic-move-many", VHD_TYPE_DYNAMIC, 512 * 1024, 3 * 1024 * 1024, 4096, false, false, 0,
     {{0, 40 * 1024}, {300 * 1024, 4096}}},
    /* The same with blocks the engine aligns: the first block after the BAT
     * starts up to 3.5 KiB later (vhd_block_place), and the table grows
     * over those blank bytes instead of moving past everything. */
    {"dynamic-move-aligned", VHD_TYPE_DYNAMIC, 64 * 1024 * 1024, 64 * 1024 * 1024 + 512 * 1024,
     512 * 1024, false, false, 0,
     {{0, 4096}, {512 * 1024 + 5, 100}, {64 * 1024 * 1024 - 4096, 4096}}},
    {"differencing-relocate", VHD_TYPE_DIFFERENCING, 512 * 1024, 1024 * 1024 + 512, 4096, false,
     true, 0, {{4096, 4096}, {510 * 1024, 2048}}},
    {"dynamic-shrink", VHD_TYPE_DYNAMIC, 1024 * 1024, 600 * 1024 - 512, 4096, true, false, 0,
     {{0, 4096}, {590 * 1024, 10 * 1024 - 512}}},
    /* The parent's data ends before the new end: a shrink over it is
     * refused (refusals). */
    {"differencing-shrink", VHD_TYPE_DIFFERENCING, 512 * 1024, 256 * 1024, 4096, true, false,
     200 * 1024, {{4096, 4096}, {100 * 1024, 1000}}},
};

/* The parent of the differencing scenarios: data everywhere it is read. */
#define PARENT_DATA_OFF (8 * 1024)
#define PARENT_DATA_LEN (500 * 1024)

static uint8_t *model;    /* the resized image's disk, as it must read */
static uint64_t model_len; /* max(size, new_size) */

static void write_range(vhd_t *v, uint64_t off, uint64_t len, uint8_t *mirror) {
  struct vhd_err err = {{0}};
  CLEANUP_FREE uint8_t *buf = t_xmalloc(len);
  t_fill_nonzero(buf, len);
  T_OK(vhd_write(v, buf, off, len, 0, &err), &err, "vhd_write");
  memcpy(mirror + off, buf, len);
}

/* Builds the scenario's starting image at path (and its parent). */
static void build(const struct scenario *s, const char *path) {
  struct vhd_err err = {{0}};
  free(model);
  model_len = MAX(s->size, s->new_size);
  model = t_xcalloc(1, model_len);
  if (s->type == VHD_TYPE_DIFFERENCING) {
    CLEANUP_FREE char *parent = strdup(t_path("parent.vhd"));
    remove(parent);
    t_create(parent, VHD_TYPE_DYNAMIC, s->size, s->block_size, true, NULL);
    vhd_t *p = t_open(parent, false);
    write_range(p, PARENT_DATA_OFF, s->parent_len ? s->parent_len : PARENT_DATA_LEN, model);
    T_OK(vhd_close(p, &err), &err, "vhd_close parent");
    t_create(path, VHD_TYPE_DIFFERENCING, 0, s->block_size, false, parent);
  } else {
    t_create(path, s->type, s->size, s->block_size, true, NULL);
  }
  vhd_t *v = t_open(path, false);
  T_ASSERT(vhd_virtual_size(v) == s->size, "%s: size %llu", s->name,
           (unsigned long long)vhd_virtual_size(v));
  for (size_t i = 0; i < ARRAY_SIZE(s->writes) && s->writes[i].len; i++)
    write_range(v, s->writes[i].off, s->writes[i].len, model);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  /* Growing a differencing child past its parent shows zeros there. */
}

/* The image opens with the old or the new size (final: the new one) and
 * reads the model within the smaller (final: all of it, zeros past the old
 * end). */
static void verify(const struct scenario *s, const char *path, bool final, const char *when) {
  int c = t_check(path);
  T_ASSERT(!(c & VHD_CHECK_CORRUPT), "%s %s: vhd_check finds corruption (0x%x)", s->name, when,
           c);
  vhd_t *v = t_open(path, true);
  uint64_t size = vhd_virtual_size(v);
  T_ASSERT(size == s->new_size || (!final && size == s->size),
           "%s %s: size %llu, expected %llu%s", s->name, when, (unsigned long long)size,
           (unsigned long long)s->new_size, final ? "" : " or the old size");
  uint64_t check = final ? size : MIN(s->size, s->new_size);
  CLEANUP_FREE uint8_t *buf = t_xmalloc(check);
  struct vhd_err err = {{0}};
  T_OK(vhd_read(v, buf, 0, check, &err), &err, "vhd_read");
  for (uint64_t i = 0; i < check; i++)
    T_ASSERT(buf[i] == model[i], "%s %s: byte at %llu reads 0x%02x, expected 0x%02x", s->name,
             when, (unsigned long long)i, buf[i], model[i]);
  vhd_close(v, NULL);
  /* Finished, a dynamic image's two footers agree (the copy at 0 is what
   * readers fall back to). */
  if (final && s->type != VHD_TYPE_FIXED) {
    uint8_t head[512], tail[512];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    off_t end = fd < 0 ? -1 : lseek(fd, 0, SEEK_END);
    T_ASSERT(end >= 1024 && pread(fd, head, 512, 0) == 512 && pread(fd, tail, 512, end - 512) == 512,
             "%s %s: reading the footers: %m", s->name, when);
    close(fd);
    T_ASSERT(memcmp(head, tail, 512) == 0,
             "%s %s: the footer copy at offset 0 differs from the trailing footer", s->name, when);
  }
}

static int do_resize(const struct scenario *s, const char *path, struct vhd_err *err) {
  struct vhd_resize_opts o = {.size = s->new_size, .exact_size = true, .shrink = s->shrink};
  struct vhd_resize_result res = {0};
  int r = vhd_resize(path, &o, &res, err);
  if (r == 0)
    T_ASSERT(res.new_size == s->new_size, "%s: vhd_resize reports %llu", s->name,
             (unsigned long long)res.new_size);
  return r;
}

static void crash_all(const struct scenario *s) {
  /* t_path's buffer is reused: keep copies. */
  CLEANUP_FREE char *start = strdup(t_path("start.vhd")), *work = strdup(t_path("work.vhd"));
  remove(start);
  build(s, start);
  verify(s, start, false, "before resizing");
  unsigned crashes = 0;
  for (long n = 0;; n++) {
    /* lose: 0 keeps what reached the page cache, 1 loses the writes since
     * the last sync, 2 and 3 tear them at sectors (t_tear_unsynced). */
    for (int lose = 0; lose < 4; lose++) {
      struct vhd_err err = {{0}};
      t_copy_file(start, work);
      t_track_unsynced(true);
      vhd_fault_arm(n);
      int r = do_resize(s, work, &err);
      bool tripped = vhd_fault_tripped();
      vhd_fault_arm(-1);
      if (!tripped) {
        t_track_unsynced(false);
        T_OK(r, &err, "vhd_resize");
        verify(s, work, true, "after the resize");
        if (s->type != VHD_TYPE_FIXED) {
          vhd_t *a = t_open(start, true), *b = t_open(work, true);
          struct vhd_info ia, ib;
          vhd_get_info(a, &ia);
          vhd_get_info(b, &ib);
          vhd_close(a, NULL);
          vhd_close(b, NULL);
          T_ASSERT((ia.bat_offset != ib.bat_offset) == s->relocates,
                   "%s: BAT at %llu, was at %llu", s->name, (unsigned long long)ib.bat_offset,
                   (unsigned long long)ia.bat_offset);
        }
        printf("%s: %ld I/O points, %u crash images checked\n", s->name, n, crashes);
        return;
      }
      T_ASSERT(r < 0, "%s: vhd_resize returned %d after the fault at %ld", s->name, r, n);
      if (lose == 1)
        t_lose_unsynced(work);
      else if (lose > 1)
        t_tear_unsynced(work, lose - 2);
      t_track_unsynced(false);
      static const char *const how[] = {"", " (unsynced lost)", " (unsynced torn, even sectors kept)",
                                        " (unsynced torn, odd sectors kept)"};
      const char *when = t_fmt("after a crash at I/O %ld%s", n, how[lose]);
      verify(s, work, false, when);
      crashes++;
      T_OK(do_resize(s, work, &err), &err, "vhd_resize after a crash");
      verify(s, work, true, t_fmt("resized again %s", when));
    }
  }
}

static void expect_refusal(const char *path, const struct vhd_resize_opts *o, int want,
                           const char *needle) {
  uint64_t before = t_file_hash(path);
  struct vhd_err err = {{0}};
  int r = vhd_resize(path, o, NULL, &err);
  T_ASSERT(r == want, "vhd_resize %s to %llu: %d (%s), expected %d", path,
           (unsigned long long)o->size, r, err.msg, want);
  T_ASSERT(strstr(err.msg, needle), "message '%s' lacks '%s'", err.msg, needle);
  T_ASSERT(t_file_hash(path) == before, "a refused resize changed %s", path);
}

static void refusals(void) {
  CLEANUP_FREE char *dyn = strdup(t_path("refuse.vhd")), *fix = strdup(t_path("refuse-fixed.vhd"));
  struct vhd_err err = {{0}};
  uint8_t one = 0x5a;
  t_create(dyn, VHD_TYPE_DYNAMIC, 1024 * 1024, 4096, true, NULL);
  vhd_t *v = t_open(dyn, false);
  T_OK(vhd_write(v, &one, 700 * 1024 + 3, 1, 0, &err), &err, "vhd_write");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  struct vhd_resize_opts o = {.size = 512 * 1024, .exact_size = true};
  expect_refusal(dyn, &o, -EINVAL, "--shrink");
  o.shrink = true;
  /* The sector holding the byte is the first data past the end. */
  expect_refusal(dyn, &o, -ENOTEMPTY, "offset 716800");

  t_create(fix, VHD_TYPE_FIXED, 1024 * 1024, 0, true, NULL);
  v = t_open(fix, false);
  T_OK(vhd_write(v, &one, 700 * 1024 + 3, 1, 0, &err), &err, "vhd_write");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  expect_refusal(fix, &o, -ENOTEMPTY, "offset 716803");

  /* A differencing image reading its parent's data past the new end: the
   * shrink would drop it, for its children too. */
  CLEANUP_FREE char *par = strdup(t_path("refuse-parent.vhd"));
  CLEANUP_FREE char *kid = strdup(t_path("refuse-child.vhd"));
  remove(par);
  remove(kid);
  t_create(par, VHD_TYPE_DYNAMIC, 1024 * 1024, 4096, true, NULL);
  v = t_open(par, false);
  T_OK(vhd_write(v, &one, 600 * 1024 + 9, 1, 0, &err), &err, "vhd_write");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  t_create(kid, VHD_TYPE_DIFFERENCING, 0, 4096, false, par);
  expect_refusal(kid, &o, -ENOTEMPTY, "from its parent");
  expect_refusal(kid, &o, -ENOTEMPTY, "offset 614409");

  /* In use: the image lock refuses it. */
  v = t_open(dyn, false);
  o.size = 2 * 1024 * 1024;
  expect_refusal(dyn, &o, -EBUSY, "locked");
  vhd_close(v, NULL);
}

/* A sector past the end whose bit is clear but whose data is not zero (as
 * another writer may leave it) must read as zeros once the disk grows over
 * it, also to readers that ignore bitmaps: the grow zeroes it on disk. */
static void stale_tail(void) {
  CLEANUP_FREE char *path = strdup(t_path("stale.vhd"));
  struct vhd_err err = {{0}};
  t_create(path, VHD_TYPE_DYNAMIC, 64 * 1024, 4096, true, NULL);
  vhd_t *v = t_open(path, false);
  uint8_t data[4096];
  memset(data, 0x77, sizeof data);
  T_OK(vhd_write(v, data, 60 * 1024, sizeof data, 0, &err), &err, "vhd_write");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  struct vhd_resize_opts o = {.size = 62 * 1024, .exact_size = true, .shrink = true};
  expect_refusal(path, &o, -ENOTEMPTY, "offset 63488");
  /* Clear the bits of the block's last 4 sectors by hand. */
  v = t_open(path, true);
  struct vhd_info info;
  vhd_get_info(v, &info);
  vhd_close(v, NULL);
  uint8_t entry[4], bm;
  t_pread_file(path, entry, 4, info.bat_offset + 15 * 4);
  uint64_t boff = ((uint64_t)entry[0] << 24 | entry[1] << 16 | entry[2] << 8 | entry[3]) * 512;
  t_pread_file(path, &bm, 1, boff);
  T_ASSERT(bm == 0xff, "bitmap byte 0x%02x", bm);
  bm = 0xf0;
  t_pwrite_file(path, &bm, 1, boff);
  T_OK(vhd_resize(path, &o, NULL, &err), &err, "vhd_resize --shrink");
  o.size = 64 * 1024;
  T_OK(vhd_resize(path, &o, NULL, &err), &err, "vhd_resize grow");
  uint8_t disk[2048];
  t_pread_file(path, disk, sizeof disk, boff + 512 + 2048);
  for (size_t i = 0; i < sizeof disk; i++)
    T_ASSERT(disk[i] == 0, "stale data at file offset %llu after growing over it",
             (unsigned long long)(boff + 512 + 2048 + i));
  v = t_open(path, true);
  T_OK(vhd_read(v, disk, 62 * 1024, 2048, &err), &err, "vhd_read");
  for (size_t i = 0; i < sizeof disk; i++)
    T_ASSERT(disk[i] == 0, "byte %zu past the old end reads 0x%02x", i, disk[i]);
  T_OK(vhd_read(v, disk, 60 * 1024, 2048, &err), &err, "vhd_read");
  T_ASSERT(disk[0] == 0x77 && disk[2047] == 0x77, "data before the old end lost");
  vhd_close(v, NULL);
}

/* A footer standing near 2 TiB (a hole before it, as a crash or another
 * writer may leave it): the blocks a growing BAT would move past it could
 * not be pointed at by a 32-bit BAT entry.  Refused, nothing changed. */
static void bat_past_2tib(void) {
  CLEANUP_FREE char *path = strdup(t_path("far.vhd"));
  struct vhd_err err = {{0}};
  t_create(path, VHD_TYPE_DYNAMIC, 8u << 20, 2u << 20, true, NULL);
  vhd_t *v = t_open(path, false);
  CLEANUP_FREE uint8_t *data = t_xmalloc(3u << 20);
  t_fill_nonzero(data, 3u << 20);
  T_OK(vhd_write(v, data, 0, 3u << 20, 0, &err), &err, "vhd_write");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  uint64_t size = t_file_size(path), far = (1ull << 41) + (1u << 20);
  uint8_t foot[512];
  t_pread_file(path, foot, sizeof foot, size - 512);
  if (truncate(path, (off_t)far + 512) < 0) {
    printf("SKIP a footer near 2 TiB: this file system takes no file of %llu bytes (%s)\n",
           (unsigned long long)far + 512, strerror(errno));
    return;
  }
  t_pwrite_file(path, foot, sizeof foot, far);
  t_truncate_file(path, far + 512);
  CLEANUP_FREE uint8_t *before = t_xmalloc(size - 512);
  t_pread_file(path, before, size - 512, 0);
  struct vhd_resize_opts o = {.size = 512u << 20};
  int r = vhd_resize(path, &o, NULL, &err);
  T_ASSERT(r == -EFBIG && strstr(err.msg, "2 TiB"),
           "growing the BAT over blocks that would move past 2 TiB: %d (%s)", r, err.msg);
  CLEANUP_FREE uint8_t *after = t_xmalloc(size - 512);
  t_pread_file(path, after, size - 512, 0);
  uint8_t foot_after[512];
  t_pread_file(path, foot_after, sizeof foot_after, far);
  T_ASSERT(memcmp(before, after, size - 512) == 0 && memcmp(foot, foot_after, 512) == 0 &&
               t_file_size(path) == far + 512,
           "a refused resize changed the image");
  v = t_open(path, true);
  CLEANUP_FREE uint8_t *back = t_xmalloc(3u << 20);
  T_OK(vhd_read(v, back, 0, 3u << 20, &err), &err, "vhd_read");
  T_ASSERT(memcmp(back, data, 3u << 20) == 0, "the data changed");
  vhd_close(v, NULL);
  remove(path);
  printf("ok growing the BAT over blocks that would move past 2 TiB is refused: %s\n", err.msg);
}

int main(void) {
  t_init("test-vhd-resize");
  refusals();
  stale_tail();
  bat_past_2tib();
  for (size_t i = 0; i < ARRAY_SIZE(scenarios); i++)
    crash_all(&scenarios[i]);
  free(model);
  return 0;
}
