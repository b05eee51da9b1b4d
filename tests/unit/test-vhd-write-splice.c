/* vhd_write_splice: a WRITE whose bytes wait in a pipe (after a head
 * held in memory) goes into the file by splice(2): whole sectors always,
 * a range with partial sectors where it changes no metadata; otherwise it
 * is declined (1) with the pipe untouched.
 *
 * - Declined, pipe holding every byte and file and map as they were: a
 *   range with partial sectors over a block not allocated, over a sector
 *   whose bit is clear, over more blocks than VHD_WRITE_NOWAIT_MAX_BLOCKS,
 *   or in a differencing child over its parent's data.
 * - Taken in place: the data is what vhd_write leaves (against a model),
 *   at any alignment and head length, across blocks, with bitmaps not yet
 *   in memory (read on the way), on dynamic, differencing and fixed images;
 *   the map and the file size do not change; FUA syncs.
 * - Taken with allocation (whole sectors): new blocks, blocks with some
 *   sectors marked, a child's block over its parent's data (the sectors
 *   not written still read the parent's), more than 16 blocks; the data is
 *   the model's and vhd_check finds the image clean.
 * - A write fault fails it and latches the image as vhd_write's does; a
 *   pipe holding fewer bytes than promised fails with EPIPE and does not.
 * - A file system that takes no splice (EINVAL, injected): every kind of
 *   spliced write is declined with the pipe untouched, nothing latched,
 *   no bit set for data not written (a new block, a half-marked one, a
 *   child over its parent, head bytes already written), and the plain
 *   write that follows gives the model's data; splices that fail with EIO
 *   latch the image.
 * - A random workload mixes plain writes, spliced ones (declined ones then
 *   read out of the pipe and written plainly, as the server does), trims
 *   and reopens; the model is checked at every step and vhd_check at the
 *   end. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cleanup.h"
#include "testutil.h"

#define BS 8192u /* 16 sectors a block */
#define SIZE (40 * BS)
#define MAXW (20 * BS)

static uint8_t model[SIZE];
static int pipefd[2];

static void pipe_fill(const uint8_t *p, size_t len) {
  while (len > 0) {
    ssize_t n = write(pipefd[1], p, len);
    T_ASSERT(n > 0, "writing %zu bytes into the pipe: %s", len, strerror(errno));
    p += n;
    len -= (size_t)n;
  }
}

static size_t pipe_bytes(void) {
  int n = 0;
  T_ASSERT(ioctl(pipefd[0], FIONREAD, &n) == 0, "FIONREAD: %s", strerror(errno));
  return (size_t)n;
}

static void pipe_drain(uint8_t *p, size_t len) {
  while (len > 0) {
    ssize_t n = read(pipefd[0], p, len);
    T_ASSERT(n > 0, "reading %zu bytes back from the pipe: %s", len, strerror(errno));
    p += n;
    len -= (size_t)n;
  }
}

/* Writes buf at off through vhd_write_splice, the first head bytes from
 * memory and the rest through the pipe; returns what it returned, and on a
 * decline checks the pipe still holds the rest. */
static int spliced(vhd_t *v, const uint8_t *buf, size_t head, uint64_t off, size_t len,
                   unsigned flags, struct vhd_err *err) {
  head = MIN(head, len); /* the engine takes no more than len from the head */
  T_ASSERT(pipe_bytes() == 0, "the pipe holds %zu bytes before a write", pipe_bytes());
  pipe_fill(buf + head, len - head);
  int r = vhd_write_splice(v, buf, head, pipefd[0], off, len, flags, err);
  if (r == 1)
    T_ASSERT(pipe_bytes() == len - head,
             "declined write of %zu at %llu took bytes from the pipe: %zu of %zu left", len,
             (unsigned long long)off, pipe_bytes(), len - head);
  if (r == 0)
    T_ASSERT(pipe_bytes() == 0, "a write of %zu at %llu left %zu bytes in the pipe", len,
             (unsigned long long)off, pipe_bytes());
  return r;
}

static void check_model(vhd_t *v, const char *when) { t_expect_model(v, model, SIZE, when); }

static void plain(vhd_t *v, const uint8_t *buf, uint64_t off, size_t len) {
  struct vhd_err err = {{0}};
  T_OK(vhd_write(v, buf, off, len, 0, &err), &err, "vhd_write");
  memcpy(model + off, buf, len);
}

/* A write the engine must take in place: data as the model says, map and
 * file size unchanged. */
static void taken(vhd_t *v, const char *path, size_t head, uint64_t off, size_t len,
                  unsigned flags, const char *what) {
  static uint8_t buf[MAXW];
  struct vhd_err err = {{0}};
  t_fill_random(buf, len);
  uint64_t map0 = t_map_hash(v, SIZE), size0 = t_file_size(path);
  int r = spliced(v, buf, head, off, len, flags, &err);
  T_OK(r, &err, what);
  T_ASSERT(r == 0, "%s: declined (%d), expected in place", what, r);
  memcpy(model + off, buf, len);
  check_model(v, what);
  T_ASSERT(t_map_hash(v, SIZE) == map0, "%s: the map changed", what);
  T_ASSERT(t_file_size(path) == size0, "%s: the file grew from %llu to %llu", what,
           (unsigned long long)size0, (unsigned long long)t_file_size(path));
}

/* Whole sectors the engine must take, allocating where it needs to. */
static void taken_alloc(vhd_t *v, size_t head, uint64_t off, size_t len, const char *what) {
  static uint8_t buf[MAXW];
  struct vhd_err err = {{0}};
  T_ASSERT(off % 512 == 0 && len % 512 == 0, "%s: not whole sectors", what);
  t_fill_random(buf, len);
  int r = spliced(v, buf, head, off, len, 0, &err);
  T_OK(r, &err, what);
  T_ASSERT(r == 0, "%s: declined (%d), expected taken", what, r);
  memcpy(model + off, buf, len);
  check_model(v, what);
}

/* A write the engine must decline: nothing changes. */
static void declined(vhd_t *v, const char *path, size_t head, uint64_t off, size_t len,
                     const char *what) {
  static uint8_t buf[MAXW], back[MAXW];
  struct vhd_err err = {{0}};
  t_fill_random(buf, len);
  uint64_t map0 = t_map_hash(v, SIZE), file0 = t_file_hash(path);
  int r = spliced(v, buf, head, off, len, 0, &err);
  T_OK(r, &err, what);
  T_ASSERT(r == 1, "%s: returned %d, expected a decline", what, r);
  T_ASSERT(t_map_hash(v, SIZE) == map0, "%s: declined, but the map changed", what);
  T_ASSERT(t_file_hash(path) == file0, "%s: declined, but the file changed", what);
  pipe_drain(back, len - MIN(head, len));
  T_ASSERT(memcmp(back, buf + MIN(head, len), len - MIN(head, len)) == 0, "%s: the pipe's bytes changed", what);
  check_model(v, what);
}

static void test_dynamic(void) {
  CLEANUP_FREE char *path = strdup(t_path("dyn.vhd"));
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  vhd_t *v = t_open(path, false);
  memset(model, 0, sizeof model);
  static uint8_t buf[MAXW];

  declined(v, path, 0, 77, BS - 100, "partial sectors in an unallocated block");
  declined(v, path, 100, 3 * BS + 513, 4096, "partial sectors, unallocated, with a head");
  t_fill_random(buf, 512);
  plain(v, buf, 5 * BS + 3 * 512, 512);
  declined(v, path, 0, 5 * BS + 1, BS - 2, "partial sectors in a block with one marked");
  declined(v, path, 7, 5 * BS + 3 * 512 + 1, 1000, "one marked sector and one clear, partly");
  taken_alloc(v, 0, 31 * BS, BS, "whole sectors into a new block");
  taken_alloc(v, 1000, 32 * BS + 1024, 3 * BS, "whole sectors into new blocks, with a head");
  taken_alloc(v, 0, 6 * BS - 512, 2 * 512, "whole sectors across an unallocated block");
  check_model(v, "the block with one sector marked, after a write beside it");
  /* Blocks 8..27 fully written. */
  t_fill_random(buf, MAXW);
  plain(v, buf, 8 * BS, MAXW);
  taken(v, path, 0, 8 * BS, BS, 0, "a whole block");
  taken(v, path, 4096, 9 * BS + 512, 3 * 512, 0, "sectors, all from the head");
  taken(v, path, 1000, 10 * BS + 77, 5000, 0, "unaligned, head and pipe");
  taken(v, path, 0, 11 * BS - 300, 600, 0, "across two blocks, partial sectors");
  taken(v, path, 3 * 512, 12 * BS, 16 * BS, 0, "16 blocks");
  declined(v, path, 0, 8 * BS + 1, 17 * BS - 2, "17 blocks, partial sectors");
  taken(v, path, 512, 8 * BS, 17 * BS, 0, "17 blocks, whole sectors");
  taken(v, path, 512, 13 * BS, 2 * BS, VHD_FUA, "with FUA");
  /* A block whose sectors are all marked only after its first write. */
  t_fill_random(buf, BS);
  plain(v, buf, 5 * BS, BS);
  taken(v, path, 0, 5 * BS + 1024, 2048, 0, "a block marked by a later write");

  /* Bitmaps not in memory after a reopen: read on the way. */
  struct vhd_err err = {{0}};
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  v = t_open(path, false);
  taken(v, path, 0, 20 * BS + 512, 3 * BS, 0, "bitmaps read from the file");
  declined(v, path, 0, 30 * BS + 9, BS - 9, "still unallocated after a reopen");

  /* Writes that failed leave the image latched only for file errors. */
  t_fill_random(buf, BS);
  pipe_fill(buf, BS / 2);
  int r = vhd_write_splice(v, buf, 0, pipefd[0], 8 * BS, BS, 0, &err);
  T_ASSERT(r == -EPIPE, "a pipe short of bytes: %d (%s), expected EPIPE", r, err.msg);
  T_ASSERT(vhd_write_error(v, NULL) == 0, "a short pipe latched the image");
  T_ASSERT(pipe_bytes() == 0, "bytes left in the pipe");
  t_fill_random(buf, BS);
  plain(v, buf, 8 * BS, BS); /* undo the half write for the model */
  vhd_fault_arm_mode(VHD_FAULT_WRITE_ONCE, 0, ENOSPC);
  pipe_fill(buf, BS);
  r = vhd_write_splice(v, buf, 0, pipefd[0], 8 * BS, BS, 0, &err);
  vhd_fault_arm(-1);
  T_ASSERT(r == -ENOSPC, "a failing write: %d (%s), expected ENOSPC", r, err.msg);
  T_ASSERT(strstr(err.msg, "dyn.vhd") != NULL, "the message does not name the image: %s",
           err.msg);
  T_ASSERT(vhd_write_error(v, NULL) == -ENOSPC, "the failure did not latch the image");
  pipe_drain(buf, pipe_bytes());
  vhd_abandon(v);
}

static void test_fixed(void) {
  CLEANUP_FREE char *path = strdup(t_path("fixed.vhd"));
  t_create(path, VHD_TYPE_FIXED, SIZE, 0, true, NULL);
  vhd_t *v = t_open(path, false);
  memset(model, 0, sizeof model);
  taken(v, path, 0, 0, BS, 0, "fixed, from the start");
  taken(v, path, 333, SIZE - 5000, 5000, 0, "fixed, to the end");
  taken(v, path, 0, 12345, MAXW, 0, "fixed, 20 blocks' worth, unaligned");
  uint64_t s0 = t_sync_count();
  taken(v, path, 4096, 4096, 8192, VHD_FUA, "fixed, FUA");
  T_ASSERT(t_sync_count() > s0, "a FUA write made no sync");
  struct vhd_err err = {{0}};
  static uint8_t buf[BS];
  int r = vhd_write_splice(v, buf, 0, pipefd[0], SIZE - 512, 1024, 0, &err);
  T_ASSERT(r == -EINVAL, "a write past the end: %d, expected EINVAL", r);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
}

/* A differencing child at path over a new parent whose blocks 2-5 hold
 * data (the model's); returns the child, open. */
static vhd_t *chain_open(const char *parent, const char *path) {
  t_create(parent, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  vhd_t *p = t_open(parent, false);
  memset(model, 0, sizeof model);
  static uint8_t buf[4 * BS];
  t_fill_random(buf, sizeof buf);
  plain(p, buf, 2 * BS, sizeof buf);
  struct vhd_err err = {{0}};
  T_OK(vhd_close(p, &err), &err, "vhd_close");
  t_create(path, VHD_TYPE_DIFFERENCING, 0, 0, false, parent);
  return t_open(path, false);
}

static void test_differencing(void) {
  CLEANUP_FREE char *parent = strdup(t_path("parent.vhd"));
  CLEANUP_FREE char *path = strdup(t_path("child.vhd"));
  vhd_t *v = chain_open(parent, path);
  static uint8_t buf[4 * BS];
  struct vhd_err err = {{0}};
  declined(v, path, 0, 2 * BS + 5, BS - 10, "a child over its parent's data, partly");
  declined(v, path, 0, 10 * BS + 1, BS, "a child over nothing, partly");
  t_fill_random(buf, 2 * BS);
  plain(v, buf, 2 * BS, 2 * BS);
  taken(v, path, 100, 2 * BS + 700, BS, 0, "a child's own block");
  declined(v, path, 0, 3 * BS + 513, BS, "half the child's, half the parent's, partly");
  taken_alloc(v, 0, 4 * BS + 1024, 2048, "whole sectors of a child over its parent");
  taken_alloc(v, 64, 10 * BS, BS, "whole sectors of a child over nothing");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(t_check(path) == 0, "vhd_check found problems in the child");
}

/* Plain writes, spliced ones and trims at random, as the server does them. */
static void test_random(void) {
  CLEANUP_FREE char *path = strdup(t_path("random.vhd"));
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BS, true, NULL);
  vhd_t *v = t_open(path, false);
  memset(model, 0, sizeof model);
  static uint8_t buf[MAXW];
  struct vhd_err err = {{0}};
  unsigned taken_n = 0, declined_n = 0;
  for (int i = 0; i < (int)t_scaled(400); i++) {
    size_t len = t_chance(50) ? (size_t)t_range(1, 3 * BS) : (size_t)t_range(1, 24) * 512;
    uint64_t off = t_below(SIZE - len + 1);
    if (t_chance(50))
      off &= ~511ull;
    t_fill_random(buf, len);
    if (t_chance(10)) {
      uint64_t a = off & ~511ull, b = (off + len + 511) & ~511ull;
      if (b > SIZE)
        b = SIZE & ~511ull;
      T_OK(vhd_write_zeroes(v, a, b - a, VHD_MAY_TRIM, &err), &err, "vhd_write_zeroes");
      memset(model + a, 0, b - a);
    } else if (t_chance(30)) {
      plain(v, buf, off, len);
    } else {
      size_t head = t_chance(50) ? (size_t)t_below(len + 1) : 0;
      int r = spliced(v, buf, head, off, len, 0, &err);
      T_OK(r, &err, "vhd_write_splice");
      if (r == 1) {
        declined_n++;
        pipe_drain(buf + head, len - head);
        T_OK(vhd_write(v, buf, off, len, 0, &err), &err, "vhd_write after a decline");
      } else {
        taken_n++;
      }
      memcpy(model + off, buf, len);
    }
    if (t_chance(5)) {
      T_OK(vhd_close(v, &err), &err, "vhd_close");
      v = t_open(path, false);
    }
    check_model(v, t_fmt("random step %d", i));
  }
  T_ASSERT(taken_n > 0 && declined_n > 0, "the workload took %u and declined %u: both wanted",
           taken_n, declined_n);
  printf("random: %u spliced, %u declined\n", taken_n, declined_n);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(t_check(path) == 0, "vhd_check found problems after the workload");
}

/* A spliced write the engine must decline, leaving the pipe as it was;
 * then written plainly from the pipe's bytes, as the server does. */
static void declined_then_plain(vhd_t *v, size_t head, uint64_t off, size_t len,
                                const char *what) {
  static uint8_t buf[MAXW];
  struct vhd_err err = {{0}};
  t_fill_random(buf, len);
  head = MIN(head, len);
  int r = spliced(v, buf, head, off, len, 0, &err);
  T_ASSERT(r == 1, "%s: %d (%s), expected declined", what, r, err.msg);
  T_ASSERT(vhd_write_error(v, NULL) == 0, "%s: a file system without splices latched the image",
           what);
  /* Parts written from the head before the refusal hold the new bytes
   * already; the plain write writes them again. */
  pipe_drain(buf + head, len - head);
  plain(v, buf, off, len);
  check_model(v, what);
}

static void test_no_splice(void) {
  CLEANUP_FREE char *parent = strdup(t_path("nsparent.vhd"));
  CLEANUP_FREE char *path = strdup(t_path("nschild.vhd"));
  vhd_t *v = chain_open(parent, path);
  static uint8_t buf[4 * BS];
  struct vhd_err err = {{0}};
  t_fill_random(buf, BS);
  plain(v, buf, 8 * BS, BS / 2); /* a half-marked block */

  /* Each case on a fresh handle, which has yet to find out. */
  static const struct {
    size_t head;
    uint64_t off;
    size_t len;
    const char *what;
  } cases[] = {
      {0, 0, 2 * BS, "no splice: new blocks"},
      {BS + 512, 4 * BS, 3 * BS, "no splice: a block written from the head first"},
      {512, 8 * BS, BS, "no splice: a half-marked block"},
      {0, 2 * BS + 1024, 2 * BS, "no splice: a child over its parent"},
      {100, 3 * BS + 7, 1000, "no splice: in place, partial sectors, head first"},
  };
  for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
    T_OK(vhd_close(v, &err), &err, "vhd_close");
    v = t_open(path, false);
    vhd_fault_arm_mode(VHD_FAULT_NO_SPLICE, 0, EINVAL);
    declined_then_plain(v, cases[i].head, cases[i].off, cases[i].len, cases[i].what);
    T_ASSERT(vhd_fault_tripped(), "%s: the no-splice fault was never injected", cases[i].what);
    vhd_fault_arm(-1);
  }
  /* Found out once, remembered: declined at once, with no fault armed. */
  declined_then_plain(v, 0, 20 * BS, BS, "no splice, remembered");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(t_check(path) == 0, "vhd_check found problems after the declined writes");
  v = t_open(path, false);
  check_model(v, "no splice, reopened");

  /* Splices that fail for the file's sake are write errors. */
  vhd_fault_arm_mode(VHD_FAULT_NO_SPLICE, 0, EIO);
  t_fill_random(buf, BS);
  pipe_fill(buf, BS);
  int r = vhd_write_splice(v, buf, 0, pipefd[0], 24 * BS, BS, 0, &err);
  vhd_fault_arm(-1);
  T_ASSERT(r == -EIO, "a failing splice: %d (%s), expected EIO", r, err.msg);
  T_ASSERT(vhd_write_error(v, NULL) == -EIO, "a failing splice did not latch the image");
  pipe_drain(buf, pipe_bytes());
  vhd_abandon(v);
}

int main(void) {
  t_init("test-vhd-write-splice");
  T_ASSERT(pipe2(pipefd, O_NONBLOCK | O_CLOEXEC) == 0, "pipe2: %s", strerror(errno));
  /* Room for the largest write of this test (as the server's pipes). */
  if (fcntl(pipefd[1], F_SETPIPE_SZ, 1 << 20) < 0)
    T_ASSERT(fcntl(pipefd[1], F_SETPIPE_SZ, 256 << 10) >= 0, "F_SETPIPE_SZ: %s",
             strerror(errno));
  test_dynamic();
  test_fixed();
  test_differencing();
  test_no_splice();
  test_random();
  close(pipefd[0]);
  close(pipefd[1]);
  printf("ok\n");
  return 0;
}
