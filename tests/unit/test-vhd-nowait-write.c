/* VHD_WRITE_NOWAIT: a write that never waits and never changes metadata,
 * or gives up with -EAGAIN having written nothing, so that an event loop
 * can do it itself and hand only the rest to a worker.
 *
 * - Each give-up case answers -EAGAIN with the file byte for byte as it was
 *   and the map unchanged: a block not allocated, a sector touched whose
 *   bit is clear (the bitmap would change), a bitmap not in memory, the
 *   image lock held by another thread (held by the test inside a bitmap
 *   read), a write over more blocks than VHD_WRITE_NOWAIT_MAX_BLOCKS, FUA,
 *   a latched write error, the kernel refusing RWF_NOWAIT; and a range whose
 *   first block could be written but not its second: nothing of it lands.
 * - Otherwise the data is what a plain write leaves (against a model), at
 *   any alignment, across blocks, with the kernel's RWF_NOWAIT write cut
 *   short (the rest must follow), on dynamic, differencing and fixed images;
 *   the map (bitmaps, BAT) and the file size do not change.
 * - A random workload mixes plain and NOWAIT writes, trims (clearing bits)
 *   and reopens (dropping cached bitmaps); each give-up is checked, then
 *   retried without the flag as the server does.
 * The test VFS answers the RWF_NOWAIT writes (t_set_nowait_write): this
 * host's kernel may refuse them all (see vhd_io_pwrite_nowait). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"

#define BS 8192u /* 16 sectors a block */
#define SIZE (32 * BS)

static uint8_t model[SIZE];
static const char *path;

/* A hash of the file's size and of each 512-byte sector that is not all
 * zeros, with its offset.  Only the data extents are read: the allocation
 * window leaves tens of MiB of hole after the blocks while the image is
 * open, too slow to read at every step.  Zero sectors count for nothing,
 * so the hash does not move with how the file system reports its extents:
 * the window's reserved (unwritten) ranges show as data or as holes
 * depending on the page cache and on writeback, both of which run on
 * their own between two calls. */
static uint64_t file_hash(const char *p) {
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  T_ASSERT(fd >= 0, "open %s: %s", p, strerror(errno));
  struct stat st;
  T_ASSERT(fstat(fd, &st) == 0, "fstat %s: %s", p, strerror(errno));
  uint64_t h = 0xcbf29ce484222325ull ^ (uint64_t)st.st_size;
  static uint8_t buf[65536];
  static const uint8_t zero[512];
  off_t off = 0;
  for (;;) {
    off_t d = lseek(fd, off, SEEK_DATA);
    if (d < 0)
      break;
    off_t e = lseek(fd, d, SEEK_HOLE);
    T_ASSERT(e > d, "lseek SEEK_HOLE %s: %s", p, strerror(errno));
    /* Extents start and end on file system blocks, sectors' multiples. */
    for (off = d; off < e;) {
      ssize_t r = pread(fd, buf, (size_t)MIN((off_t)sizeof buf, e - off), off);
      T_ASSERT(r > 0, "pread %s: %s", p, strerror(errno));
      for (ssize_t s = 0; s < r; s += 512) {
        size_t n = (size_t)MIN((ssize_t)512, r - s);
        if (memcmp(buf + s, zero, n) == 0)
          continue;
        h = (h ^ (uint64_t)(off + s)) * 0x100000001b3ull;
        for (size_t i = 0; i < n; i++)
          h = (h ^ buf[s + i]) * 0x100000001b3ull;
      }
      off += r;
    }
  }
  close(fd);
  return h;
}

static void verify(vhd_t *v, const char *when) {
  static uint8_t buf[SIZE];
  struct vhd_err err = {{0}};
  T_OK(vhd_read(v, buf, 0, SIZE, &err), &err, "vhd_read");
  for (size_t i = 0; i < SIZE; i++)
    T_ASSERT(buf[i] == model[i], "%s: byte %zu reads %u, the model has %u", when, i, buf[i],
             model[i]);
}

static void plain_write(vhd_t *v, uint64_t off, size_t len) {
  uint8_t buf[4 * BS];
  struct vhd_err err = {{0}};
  T_ASSERT(len <= sizeof buf, "plain_write of %zu bytes", len);
  t_fill_nonzero(buf, len);
  T_OK(vhd_write(v, buf, off, len, 0, &err), &err, "vhd_write");
  memcpy(model + off, buf, len);
}

/* A NOWAIT write that must give up: -EAGAIN, nothing in the file or the
 * map changed. */
static void expect_give_up(vhd_t *v, uint64_t off, size_t len, unsigned flags, const char *why) {
  uint8_t buf[SIZE];
  struct vhd_err err = {{0}};
  T_ASSERT(len <= sizeof buf, "expect_give_up of %zu bytes", len);
  t_fill_nonzero(buf, len);
  uint64_t file = file_hash(path), map = t_map_hash(v, SIZE);
  int r = vhd_write(v, buf, off, len, flags | VHD_WRITE_NOWAIT, &err);
  T_ASSERT(r == -EAGAIN, "%s: NOWAIT write at %llu length %zu returned %d (%s), not -EAGAIN",
           why, (unsigned long long)off, len, r, t_strerr(r));
  T_ASSERT(file_hash(path) == file, "%s: a NOWAIT write that gave up changed the file", why);
  T_ASSERT(t_map_hash(v, SIZE) == map, "%s: a NOWAIT write that gave up changed the map", why);
}

/* The same without looking at the map first (vhd_map would load bitmaps
 * and wait for the image lock): the caller compares it afterwards. */
static void expect_give_up_unmapped(vhd_t *v, uint64_t off, size_t len, const char *why) {
  uint8_t buf[BS];
  struct vhd_err err = {{0}};
  T_ASSERT(len <= sizeof buf, "expect_give_up_unmapped of %zu bytes", len);
  t_fill_nonzero(buf, len);
  uint64_t file = file_hash(path);
  int r = vhd_write(v, buf, off, len, VHD_WRITE_NOWAIT, &err);
  T_ASSERT(r == -EAGAIN, "%s: NOWAIT write at %llu length %zu returned %d (%s), not -EAGAIN",
           why, (unsigned long long)off, len, r, t_strerr(r));
  T_ASSERT(file_hash(path) == file, "%s: a NOWAIT write that gave up changed the file", why);
}

/* A NOWAIT write that must succeed, changing only the data. */
static void expect_written(vhd_t *v, uint64_t off, size_t len, const char *why) {
  uint8_t buf[SIZE];
  struct vhd_err err = {{0}};
  t_fill_nonzero(buf, len);
  uint64_t map = t_map_hash(v, SIZE), size = t_file_size(path);
  int r = vhd_write(v, buf, off, len, VHD_WRITE_NOWAIT, &err);
  T_ASSERT(r == 0, "%s: NOWAIT write at %llu length %zu returned %d (%s): %s", why,
           (unsigned long long)off, len, r, t_strerr(r), err.msg);
  memcpy(model + off, buf, len);
  T_ASSERT(t_map_hash(v, SIZE) == map, "%s: a NOWAIT write changed the map", why);
  T_ASSERT(t_file_size(path) == size, "%s: a NOWAIT write changed the file size", why);
  verify(v, why);
}

static vhd_t *reopen(vhd_t *v) {
  struct vhd_err err = {{0}};
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  return t_open(path, false);
}

/* Block HOLD_BLOCK is never written elsewhere; HOLD_BLOCK - 1 neither,
 * until lock_contended makes room for it in the allocation window. */
#define HOLD_BLOCK (SIZE / BS - 1)
static uint8_t hold_data[512];

static void *allocate_block(void *opaque) {
  struct vhd_err err = {{0}};
  T_OK(vhd_write(opaque, hold_data, (uint64_t)HOLD_BLOCK * BS, sizeof hold_data, 0, &err), &err,
       "vhd_write in the holding thread");
  return NULL;
}

static void lock_contended(vhd_t *v) {
  uint8_t buf[BS];
  struct vhd_err err = {{0}};
  T_OK(vhd_read(v, buf, BS, BS, &err), &err, "vhd_read"); /* block 1's bitmap cached */
  /* The first block allocated after an open moves the footer (without
   * the lock); the next one then fits in the window. */
  plain_write(v, (uint64_t)(HOLD_BLOCK - 1) * BS, 512);
  t_fill_nonzero(hold_data, sizeof hold_data);
  /* Held inside its first write: the new block's bitmap, written under
   * the image lock.  (A bitmap read drops the lock.) */
  t_hold_start(T_OP_WRITE, 0, allocate_block, v);
  expect_give_up_unmapped(v, BS + 512, 1024, "image lock held by an allocation");
  t_hold_release();
  memcpy(model + (uint64_t)HOLD_BLOCK * BS, hold_data, sizeof hold_data);
  verify(v, "after a NOWAIT write met a held lock");
  expect_written(v, BS + 512, 1024, "lock free again");
}

static void dynamic_cases(void) {
  unlink(path);
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  memset(model, 0, sizeof model);
  vhd_t *v = t_open(path, false);
  t_set_nowait_write(T_NOWAIT_ACCEPT);
  expect_give_up(v, 0, 512, 0, "block not allocated");
  plain_write(v, 0, 4096); /* sectors 0-7 of block 0 */
  expect_written(v, 1000, 2000, "unaligned, inside sectors held");
  expect_written(v, 0, 4096, "all sectors held");
  expect_give_up(v, 3584, 1024, 0, "sector 8 not held");
  expect_give_up(v, 4096, 1, 0, "one byte of a sector not held");
  expect_give_up(v, 0, 4096, VHD_FUA, "FUA");
  plain_write(v, BS, BS);
  plain_write(v, 2 * BS, BS);
  expect_written(v, BS + 100, BS + 200, "across two blocks held");
  expect_give_up(v, 2 * BS + 512, BS, 0, "second block not allocated");
  plain_write(v, 3 * BS, 512);
  expect_give_up(v, 2 * BS + 512, BS + 512, 0, "second block partly held");
  t_set_nowait_write(T_NOWAIT_SHORT);
  expect_written(v, BS + 300, BS + 700, "kernel wrote part of it");
  expect_written(v, 10, 30, "kernel wrote part of a sector");
  t_set_nowait_write(T_NOWAIT_EAGAIN);
  expect_give_up(v, BS, 512, 0, "kernel would wait");
  expect_give_up(v, BS + 512, BS, 0, "kernel would wait, two blocks");
  t_set_nowait_write(T_NOWAIT_ACCEPT);

  for (uint32_t b = 4; b < 4 + VHD_WRITE_NOWAIT_MAX_BLOCKS + 1; b++)
    plain_write(v, (uint64_t)b * BS, BS);
  expect_written(v, 4 * BS, VHD_WRITE_NOWAIT_MAX_BLOCKS * BS, "the most blocks allowed");
  expect_give_up(v, 4 * BS, (VHD_WRITE_NOWAIT_MAX_BLOCKS + 1) * BS, 0, "too many blocks");

  uint64_t map = t_map_hash(v, SIZE);
  v = reopen(v);
  expect_give_up_unmapped(v, BS, 512, "bitmap not in memory");
  T_ASSERT(t_map_hash(v, SIZE) == map, "bitmap not in memory: the map changed");
  verify(v, "after reopening");
  v = reopen(v);
  lock_contended(v);

  /* A trim clears bits: the sectors are no longer held. */
  struct vhd_err err = {{0}};
  T_OK(vhd_trim(v, BS, 1024, 0, &err), &err, "vhd_trim");
  memset(model + BS, 0, 1024);
  expect_give_up(v, BS, 512, 0, "sectors trimmed");
  expect_written(v, BS + 1024, 1024, "sectors after the trim");

  /* A latched write error: the waiting retry reports it. */
  vhd_fault_arm_mode(VHD_FAULT_WRITE_ONCE, 0, EIO);
  uint8_t buf[512] = {1};
  T_ASSERT(vhd_write(v, buf, 0, 512, 0, &err) == -EIO, "the armed write did not fail");
  vhd_fault_arm(-1);
  expect_give_up(v, 0, 512, 0, "write error latched");
  T_ASSERT(vhd_write(v, buf, 0, 512, 0, &err) == -EIO, "a plain write after the latch");
  vhd_abandon(v);

  v = t_open(path, true);
  int r = vhd_write(v, buf, 0, 512, VHD_WRITE_NOWAIT, &err);
  T_ASSERT(r == -EPERM, "NOWAIT write on a read-only image returned %d (%s)", r, t_strerr(r));
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  printf("dynamic: every give-up case and every write checked\n");
}

static void differencing_cases(void) {
  char *parent = strdup(t_path("parent.vhd"));
  t_create(parent, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  memset(model, 0, sizeof model);
  vhd_t *p = t_open(parent, false);
  plain_write(p, 0, 2 * BS);
  struct vhd_err err = {{0}};
  T_OK(vhd_close(p, &err), &err, "vhd_close");
  unlink(path);
  t_create(path, VHD_TYPE_DIFFERENCING, 0, BS, true, parent);
  vhd_t *v = t_open(path, false);
  t_set_nowait_write(T_NOWAIT_ACCEPT);
  expect_give_up(v, 512, 512, 0, "child block not allocated over parent data");
  plain_write(v, 1024, 2048);
  expect_give_up(v, 512, 1024, 0, "a sector still the parent's");
  expect_written(v, 1500, 1000, "sectors the child holds");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  free(parent);
  printf("differencing: the parent's sectors are never written over\n");
}

static void fixed_cases(void) {
  unlink(path);
  t_create(path, VHD_TYPE_FIXED, SIZE, 0, true, NULL);
  memset(model, 0, sizeof model);
  vhd_t *v = t_open(path, false);
  t_set_nowait_write(T_NOWAIT_ACCEPT);
  expect_written(v, 777, 3 * BS, "fixed image");
  t_set_nowait_write(T_NOWAIT_SHORT);
  expect_written(v, 5, 5000, "fixed image, kernel wrote part of it");
  t_set_nowait_write(T_NOWAIT_EAGAIN);
  expect_give_up(v, 0, 512, 0, "fixed image, kernel would wait");
  expect_give_up(v, 0, 512, VHD_FUA, "fixed image, FUA");
  v = reopen(v);

  /* What this kernel does: either it takes the write, or the handle stops
   * asking after the first refusal. */
  t_set_nowait_write(T_NOWAIT_KERNEL);
  uint8_t buf[4096];
  t_fill_nonzero(buf, sizeof buf);
  struct vhd_err err = {{0}};
  uint64_t calls = t_nowait_write_count();
  int r = vhd_write(v, buf, 0, sizeof buf, VHD_WRITE_NOWAIT, &err);
  T_ASSERT(r == 0 || r == -EAGAIN, "NOWAIT write returned %d (%s)", r, t_strerr(r));
  if (r == 0) {
    memcpy(model, buf, sizeof buf);
    verify(v, "kernel NOWAIT write");
    printf("this kernel takes buffered RWF_NOWAIT writes here\n");
  } else {
    T_ASSERT(t_nowait_write_count() == calls + 1, "no RWF_NOWAIT write was tried");
    expect_give_up(v, 0, sizeof buf, 0, "kernel refused RWF_NOWAIT before");
    T_ASSERT(t_nowait_write_count() == calls + 1,
             "the kernel refused RWF_NOWAIT, and the handle asked again");
    printf("this kernel refuses buffered RWF_NOWAIT writes here: the handle stops asking\n");
  }
  T_OK(vhd_close(v, &err), &err, "vhd_close");
}

/* Plain and NOWAIT writes, trims and reopens at random. */
static void random_workload(void) {
  unlink(path);
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  memset(model, 0, sizeof model);
  vhd_t *v = t_open(path, false);
  struct vhd_err err = {{0}};
  uint64_t steps = t_scaled(600), written = 0, gave_up = 0;
  static const enum t_nowait_mode modes[] = {T_NOWAIT_ACCEPT, T_NOWAIT_ACCEPT, T_NOWAIT_SHORT,
                                             T_NOWAIT_EAGAIN};
  for (uint64_t i = 0; i < steps; i++) {
    size_t len = (size_t)t_range(1, t_chance(50) ? 1024 : 3 * BS);
    uint64_t off = t_below(SIZE - len + 1);
    unsigned what = (unsigned)t_below(100);
    if (what < 25) {
      plain_write(v, off, len);
    } else if (what < 30) {
      T_OK(vhd_trim(v, off, len, 0, &err), &err, "vhd_trim");
      /* Whole sectors inside the range read as zeros now. */
      uint64_t a = (off + 511) / 512 * 512, b = (off + len) / 512 * 512;
      if (a < b)
        memset(model + a, 0, b - a);
    } else if (what < 32) {
      v = reopen(v);
    } else {
      uint8_t buf[3 * BS];
      t_fill_nonzero(buf, len);
      t_set_nowait_write(modes[t_below(sizeof modes / sizeof modes[0])]);
      uint64_t file = file_hash(path), map = t_map_hash(v, SIZE);
      int r = vhd_write(v, buf, off, len, VHD_WRITE_NOWAIT, &err);
      T_ASSERT(r == 0 || r == -EAGAIN, "step %llu: NOWAIT write returned %d (%s): %s",
               (unsigned long long)i, r, t_strerr(r), err.msg);
      T_ASSERT(t_map_hash(v, SIZE) == map, "step %llu: a NOWAIT write changed the map",
               (unsigned long long)i);
      if (r == -EAGAIN) {
        T_ASSERT(file_hash(path) == file, "step %llu: a NOWAIT write that gave up changed "
                 "the file", (unsigned long long)i);
        gave_up++;
        T_OK(vhd_write(v, buf, off, len, 0, &err), &err, "vhd_write (retry)");
      } else {
        written++;
      }
      memcpy(model + off, buf, len);
    }
    if (i % 32 == 31)
      verify(v, t_fmt("step %llu", (unsigned long long)i));
  }
  verify(v, "end of the workload");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  t_set_nowait_write(T_NOWAIT_KERNEL);
  T_ASSERT(written > 0 && gave_up > 0, "the workload wrote %llu and gave up %llu times",
           (unsigned long long)written, (unsigned long long)gave_up);
  printf("random: %llu steps, %llu NOWAIT writes done, %llu given up and retried\n",
         (unsigned long long)steps, (unsigned long long)written, (unsigned long long)gave_up);
}

int main(void) {
  t_init("test-vhd-nowait-write");
  path = strdup(t_path("disk.vhd"));
  dynamic_cases();
  differencing_cases();
  fixed_cases();
  random_workload();
  printf("PASS\n");
  return 0;
}
