/* testutil.h: what every engine unit test needs and nothing more: a seeded
 * PRNG that prints its seed, a private temp directory removed at exit, file
 * helpers, and assertions that say what failed where. */
#ifndef VHDNBD_TESTUTIL_H
#define VHDNBD_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "vhd.h"

/* Prints "FAIL file:line: message" and exits 1 (the temp dir is kept when
 * VHD_TEST_KEEP is set, to look at the images). */
void t_fail_at(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4), noreturn));
#define t_fail(...) t_fail_at(__FILE__, __LINE__, __VA_ARGS__)
#define T_ASSERT(cond, ...)                                                                 \
  do {                                                                                      \
    if (!(cond))                                                                            \
      t_fail_at(__FILE__, __LINE__, "assertion `%s' failed: %s", #cond, t_fmt(__VA_ARGS__)); \
  } while (0)
/* For engine calls: r must be 0 (or >= 0), else print r and err->msg. */
#define T_OK(r, err, what)                                                                   \
  do {                                                                                       \
    long t_r_ = (long)(r);                                                                   \
    if (t_r_ < 0)                                                                            \
      t_fail_at(__FILE__, __LINE__, "%s returned %ld (%s): %s", (what), t_r_, t_strerr(t_r_), \
                (err)->msg);                                                                 \
  } while (0)

/* Formats into a rotating static buffer (for T_ASSERT messages). */
const char *t_fmt(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *t_strerr(long negerrno);

/* Seeds the PRNG from VHD_TEST_SEED or the clock and prints the seed, and
 * creates the temp dir.  Call first in main. */
void t_init(const char *test_name);
/* Workload length.  VHD_TEST_ITERS=N makes the main workloads N steps long
 * (the default is T_DEFAULT_ITERS); the others scale with them, never below
 * one step.  Larger for long runs by hand, smaller under valgrind. */
#define T_DEFAULT_ITERS 1500
uint64_t t_scaled(uint64_t base);

uint64_t t_seed(void);
uint64_t t_rand(void);
/* Uniform in [0, n); n > 0. */
uint64_t t_below(uint64_t n);
/* Uniform in [lo, hi]. */
uint64_t t_range(uint64_t lo, uint64_t hi);
bool t_chance(unsigned percent);
void t_fill_random(void *buf, size_t len);
/* Random bytes that are never zero: data that must show up as DATA in vhd_map. */
void t_fill_nonzero(void *buf, size_t len);

/* The private temp dir and a path inside it (in a rotating static buffer:
 * copy it to keep it). */
const char *t_dir(void);
const char *t_path(const char *name);

void *t_xmalloc(size_t len);
void *t_xcalloc(size_t n, size_t len);
void t_copy_file(const char *from, const char *to);
/* 64-bit FNV-1a over the whole file. */
uint64_t t_file_hash(const char *path);
/* A hash of the map of [0, size) as the engine holds it (vhd_map: runs,
 * flags, levels, file offsets): equal before and after a write that must
 * change no metadata. */
uint64_t t_map_hash(vhd_t *v, uint64_t size);
/* Reads [0, size) of v and fails the test (naming when) at the first byte
 * that differs from model. */
void t_expect_model(vhd_t *v, const uint8_t *model, size_t size, const char *when);
uint64_t t_file_size(const char *path);
/* Raw access to an image file, bypassing the engine. */
void t_pread_file(const char *path, void *buf, size_t len, uint64_t off);
void t_pwrite_file(const char *path, const void *buf, size_t len, uint64_t off);
void t_truncate_file(const char *path, uint64_t size);
/* Big-endian fields of bytes read that way (the format's byte order),
 * decoded here rather than with the engine's own helpers. */
uint32_t t_be32(const uint8_t *p);
uint64_t t_be64(const uint8_t *p);
/* The eight parent locator entries of the dynamic header at offset 512 of
 * path's file, decoded by the format's layout; code 0 is an unused one. */
struct t_locator {
  uint32_t code, space, len;
  uint64_t off;
};
void t_read_locators(const char *path, struct t_locator out[8]);
/* Writes the 1024-byte dynamic header h at offset off of path's file with
 * its checksum (the ones' complement of its bytes' sum, the field itself
 * counted as zeros) set, as a test that edits a header by hand needs. */
void t_write_header(const char *path, uint8_t *h, uint64_t off);

/* vhd_create with the given fields, failing the test on error. */
void t_create(const char *path, enum vhd_type type, uint64_t size, uint32_t block_size,
              bool exact, const char *parent);
/* vhd_open read-write (or read-only) with default options. */
vhd_t *t_open(const char *path, bool rdonly);
/* vhd_check on a closed image; returns the bits, prints the report lines
 * when the result is not clean. */
int t_check(const char *path);

/* The test "VFS": the test programs define pread, pwrite, fdatasync, fsync
 * and fallocate themselves, so the engine's calls land here before the kernel.
 * Syncs are skipped (the page cache is never lost during a test, and real
 * fdatasyncs made the suites slow on busy machines) unless VHD_TEST_REAL_SYNC
 * is set.  A hook sees every successful mutation, for the crash tests. */
/* T_IO_WRITE_DSYNC: a write through a descriptor opened with O_DSYNC,
 * durable when it returns, with nothing else of the file. */
enum t_io_kind { T_IO_WRITE, T_IO_SYNC, T_IO_PUNCH, T_IO_TRUNCATE, T_IO_WRITE_DSYNC };
typedef void (*t_io_hook)(void *opaque, enum t_io_kind kind, int fd, const void *buf,
                          uint64_t len, uint64_t off);
void t_set_io_hook(t_io_hook hook, void *opaque);
/* Called in the calling thread before every pread, pwrite and hole punch
 * reaches the kernel, so that a test can hold the caller there (until
 * another thread has done something) and widen a race window: the gap
 * between the engine choosing a file offset and its I/O at that offset. */
enum t_io_op { T_OP_READ, T_OP_WRITE, T_OP_PUNCH };
typedef void (*t_io_before_hook)(void *opaque, enum t_io_op op, int fd, uint64_t len,
                                 uint64_t off);
void t_set_io_before_hook(t_io_before_hook hook, void *opaque);
/* Hole punching fails with EOPNOTSUPP while set, as on a file system that
 * cannot punch holes. */
void t_set_punch_unsupported(bool unsupported);
/* While set, pwrite writes nothing and returns 0 (no progress, as a FUSE
 * file system may answer), for up to 100 calls in a row, then fails with
 * EDQUOT: a caller that retries forever would still stop.  The calls are
 * counted (t_stalled_writes). */
void t_set_pwrite_stall(bool stall);
uint64_t t_stalled_writes(void);
/* Number of syncs the engine asked for (skipped or not). */
uint64_t t_sync_count(void);
/* Number of writes through O_DSYNC descriptors. */
uint64_t t_dsync_write_count(void);
/* Lost write-back, as Linux may leave it after a failed fdatasync: the
 * failed pages never reach the disk, and the error is reported only once.
 * While tracking is on, the test VFS remembers, file by file, every pwrite
 * since that file's last sync (with the bytes it replaced), and every punch
 * and truncate.  Writes through an O_DSYNC descriptor are durable: they
 * stay (put back last).  t_lose_unsynced(path) then puts the replaced bytes
 * of path's file back, newest first (a write that grew the file is cut off
 * again), replays its punches and truncates (metadata, not written back
 * with the pages) and forgets them: the file as the disk would hold it had
 * its unsynced pages been lost.  Other files' records stay, for their own
 * call.
 * Single-threaded tests only. */
void t_track_unsynced(bool on);
void t_lose_unsynced(const char *path);
/* The same, but a disk that tears writes at sectors: of every unsynced
 * write, the 512-byte sectors whose index in the file has this parity (0
 * or 1) keep the new bytes and the others get the old ones back; the two
 * parities together split every write of two sectors or more both ways.
 * A write that grew the file is kept whole for parity 1, lost for 0. */
void t_tear_unsynced(const char *path, int parity);
/* How the test VFS answers a pwritev2 with RWF_NOWAIT (VHD_WRITE_NOWAIT's
 * data write), whatever the kernel under it does:
 *   T_NOWAIT_KERNEL  as the kernel answers (the default);
 *   T_NOWAIT_ACCEPT  written, as a pwrite;
 *   T_NOWAIT_SHORT   only the first half (at least one byte) written, and
 *                    that count returned, as when the kernel stops early;
 *   T_NOWAIT_EAGAIN  nothing written, EAGAIN. */
enum t_nowait_mode { T_NOWAIT_KERNEL, T_NOWAIT_ACCEPT, T_NOWAIT_SHORT, T_NOWAIT_EAGAIN };
void t_set_nowait_write(enum t_nowait_mode mode);
/* pwritev2 calls with RWF_NOWAIT so far. */
uint64_t t_nowait_write_count(void);
/* Runs fn(arg) on a new thread and returns once that thread is held inside
 * its first I/O of kind op (of len bytes; 0: any length), before the I/O
 * reaches the kernel; t_hold_release lets it go on and joins it.  Uses the
 * before-hook (t_set_io_before_hook), one held thread at a time. */
void t_hold_start(enum t_io_op op, uint64_t len, void *(*fn)(void *), void *arg);
void t_hold_release(void);
/* File offsets the engine asked the kernel to read ahead (posix_fadvise
 * POSIX_FADV_WILLNEED) since the last call, in order, at most
 * T_READAHEAD_MAX of them; offs has room for that many. */
#define T_READAHEAD_MAX 256
size_t t_readahead_take(uint64_t *offs);
#endif
