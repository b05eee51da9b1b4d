/* io.c: every byte the engine reads from or writes to an image file passes
 * here, so that
 *  - a failed write or sync is remembered for the image (the write-error
 *    latch, see "Write errors" in vhd.h) and nothing more is written to it;
 *  - fault injection can fail the Nth write or sync, once or for good. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cleanup.h"
#include "vhd-internal.h"

/* ---- the fault switch (tests) ---------------------------------------- */

/* Which operations the armed mode counts. */
enum fault_op {
  FAULT_OP_WRITE,
  FAULT_OP_SYNC,
  FAULT_OP_OTHER, /* truncate, punch */
  FAULT_OP_SPLICE /* the splice call itself: counted by VHD_FAULT_NO_SPLICE only */
};

static atomic_long fault_remaining = -1; /* < 0: disarmed */
static atomic_int fault_mode = VHD_FAULT_POWER_CUT;
static atomic_int fault_errnum = EIO;
static atomic_bool fault_hit;
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;

static bool parse_mode(const char *s, enum vhd_fault_mode *mode) {
  static const struct {
    const char *name;
    enum vhd_fault_mode mode;
  } modes[] = {
      {"power-cut", VHD_FAULT_POWER_CUT},
      {"sync-once", VHD_FAULT_SYNC_ONCE},
      {"write-once", VHD_FAULT_WRITE_ONCE},
      {"no-splice", VHD_FAULT_NO_SPLICE},
  };
  for (size_t i = 0; i < ARRAY_SIZE(modes); i++)
    if (strcmp(s, modes[i].name) == 0) {
      *mode = modes[i].mode;
      return true;
    }
  return false;
}

static bool parse_errnum(const char *s, int *errnum) {
  static const struct {
    const char *name;
    int errnum;
  } names[] = {{"EIO", EIO}, {"ENOSPC", ENOSPC}, {"EDQUOT", EDQUOT}, {"EINVAL", EINVAL}};
  for (size_t i = 0; i < ARRAY_SIZE(names); i++)
    if (strcmp(s, names[i].name) == 0) {
      *errnum = names[i].errnum;
      return true;
    }
  char *end;
  long n = strtol(s, &end, 10);
  if (*s == '\0' || *end != '\0' || n <= 0 || n > 4095)
    return false;
  *errnum = (int)n;
  return true;
}

/* VHDNBD_FAULT_AFTER=N arms the switch; VHDNBD_FAULT_MODE and
 * VHDNBD_FAULT_ERRNO choose how.  Anything unparsable leaves it disarmed,
 * so that a typo cannot inject a different fault than the one asked for. */
static void fault_init_from_env(void) {
  const char *after = getenv("VHDNBD_FAULT_AFTER");
  const char *mode_s = getenv("VHDNBD_FAULT_MODE");
  const char *errnum_s = getenv("VHDNBD_FAULT_ERRNO");
  if (!after || !*after)
    return;
  char *end;
  long n = strtol(after, &end, 10);
  enum vhd_fault_mode mode = VHD_FAULT_POWER_CUT;
  int errnum = EIO;
  if (*end != '\0' || n < 0 || (mode_s && *mode_s && !parse_mode(mode_s, &mode)) ||
      (errnum_s && *errnum_s && !parse_errnum(errnum_s, &errnum)))
    return;
  atomic_store(&fault_mode, (int)mode);
  atomic_store(&fault_errnum, errnum);
  atomic_store(&fault_remaining, n);
}

void vhd_fault_arm_mode(enum vhd_fault_mode mode, long n, int errnum) {
  pthread_once(&fault_once, fault_init_from_env);
  atomic_store(&fault_remaining, -1); /* no I/O sees a half-set switch */
  atomic_store(&fault_mode, (int)mode);
  atomic_store(&fault_errnum, errnum > 0 ? errnum : EIO);
  atomic_store(&fault_hit, false);
  atomic_store(&fault_remaining, n < 0 ? -1 : n);
}

void vhd_fault_arm(long n) { vhd_fault_arm_mode(VHD_FAULT_POWER_CUT, n, EIO); }

bool vhd_fault_tripped(void) { return atomic_load(&fault_hit); }

/* 0, or the negative errno this operation must fail with (doing nothing). */
static int fault_check(enum fault_op op) {
  pthread_once(&fault_once, fault_init_from_env);
  long cur = atomic_load(&fault_remaining);
  if (cur < 0)
    return 0;
  int mode = atomic_load(&fault_mode);
  if ((mode == VHD_FAULT_SYNC_ONCE && op != FAULT_OP_SYNC) ||
      (mode == VHD_FAULT_WRITE_ONCE && op != FAULT_OP_WRITE) ||
      ((mode == VHD_FAULT_NO_SPLICE) != (op == FAULT_OP_SPLICE)))
    return 0;
  while (cur >= 0) {
    if (cur == 0) {
      /* A power cut (or a file system without splices) stays; a single
       * failure disarms the switch, and only the thread that disarms it
       * fails. */
      if (mode != VHD_FAULT_POWER_CUT && mode != VHD_FAULT_NO_SPLICE &&
          !atomic_compare_exchange_weak(&fault_remaining, &cur, -1))
        continue;
      atomic_store(&fault_hit, true);
      return -atomic_load(&fault_errnum);
    }
    if (atomic_compare_exchange_weak(&fault_remaining, &cur, cur - 1))
      return 0;
  }
  return 0;
}

/* ---- the write-error latch ------------------------------------------- */

/* Records the image's first failed write or sync (what failed and why) and
 * returns r.  sync_lock held: see vhd_io_sync. */
static int latch_locked(vhd_t *vhd, int r, const char *what) {
  if (atomic_load(&vhd->write_error) == 0) {
    snprintf(vhd->write_error_what, sizeof vhd->write_error_what, "%s: %s", what, strerror(-r));
    atomic_store(&vhd->write_error, r);
  }
  return r;
}

static int latch(vhd_t *vhd, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int latch(vhd_t *vhd, int r, const char *fmt, ...) {
  char what[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(what, sizeof what, fmt, ap);
  va_end(ap);
  pthread_mutex_lock(&vhd->sync_lock);
  latch_locked(vhd, r, what);
  pthread_mutex_unlock(&vhd->sync_lock);
  return r;
}

bool vhd_io_refuses_writes(const vhd_t *vhd) { return atomic_load(&vhd->write_error) != 0; }

int vhd_write_error(const vhd_t *vhd, struct vhd_err *err) {
  int r = atomic_load(&vhd->write_error);
  if (r)
    vhd_set_err(err, r, "%s: %s", vhd->path, vhd->write_error_what);
  return r;
}

/* ---- I/O --------------------------------------------------------------- */

int vhd_io_pread(int fd, void *buf, size_t len, uint64_t off) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t r = pread(fd, p, len, (off_t)off);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (r == 0)
      return -ENODATA; /* short file: the caller names the structure */
    p += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

/* Kernels without RWF_NOWAIT (or without preadv2) answer EOPNOTSUPP (ENOSYS):
 * remember it and stop asking.  Any other failure only sends this read to
 * the waiting path, which reports it properly. */
static atomic_bool nowait_unsupported;

int vhd_io_pread_nowait(int fd, void *buf, size_t len, uint64_t off) {
  if (atomic_load_explicit(&nowait_unsupported, memory_order_relaxed))
    return -EAGAIN;
  struct iovec iov = {.iov_base = buf, .iov_len = len};
  ssize_t r = preadv2(fd, &iov, 1, (off_t)off, RWF_NOWAIT);
  if (r == (ssize_t)len)
    return 0;
  if (r < 0 && (errno == EOPNOTSUPP || errno == ENOSYS))
    atomic_store(&nowait_unsupported, true);
  /* Partly cached, short file, or an error: the waiting path sorts it out
   * and reports it properly. */
  return -EAGAIN;
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off) {
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = pwrite(fd, p, len, (off_t)off);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    if (n == 0) /* no progress (a FUSE file system may say so): not a loop */
      return -EIO;
    p += n;
    len -= (size_t)n;
    off += (uint64_t)n;
  }
  return 0;
}

int vhd_io_pwrite_fd(int fd, const void *buf, size_t len, uint64_t off) {
  int r = fault_check(FAULT_OP_WRITE);
  return r < 0 ? r : pwrite_all(fd, buf, len, off);
}

/* A failed pwrite may have written part of the range, and a write that
 * cannot be trusted ends what the image can promise: it latches too. */
int vhd_io_pwrite(vhd_t *vhd, const void *buf, size_t len, uint64_t off) {
  if (vhd_io_refuses_writes(vhd))
    return -EIO;
  int r = vhd_io_pwrite_fd(vhd->fd, buf, len, off);
  if (r < 0)
    return latch(vhd, r, "writing %zu bytes at offset %llu", len, (unsigned long long)off);
  return 0;
}

/* The file side of vhd_write_splice: len bytes from the pipe into the file
 * at off.  A write fault or failure latches as vhd_io_pwrite's; a pipe
 * that runs dry (it is non-blocking: EAGAIN) is the caller's mistake and
 * fails with EPIPE, which does not.  A file system that takes no splice
 * (EINVAL before any byte moved) is no write failure either: it answers
 * EOPNOTSUPP with the pipe untouched, and so does every later call. */
int vhd_io_splice_in(vhd_t *vhd, int pipe_fd, size_t len, uint64_t off) {
  if (vhd_io_refuses_writes(vhd))
    return -EIO;
  if (atomic_load_explicit(&vhd->splice_in_unsupported, memory_order_relaxed))
    return -EOPNOTSUPP;
  int r = fault_check(FAULT_OP_WRITE);
  if (r < 0)
    return latch(vhd, r, "writing %zu bytes at offset %llu", len, (unsigned long long)off);
  loff_t at = (loff_t)off;
  while (len > 0) {
    int injected = fault_check(FAULT_OP_SPLICE);
    ssize_t n = injected ? (errno = -injected, -1)
                         : splice(pipe_fd, NULL, vhd->fd, &at, len, SPLICE_F_MOVE);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EINVAL || errno == EOPNOTSUPP || errno == ENOSYS) &&
        at == (loff_t)off) {
      atomic_store(&vhd->splice_in_unsupported, true);
      return -EOPNOTSUPP;
    }
    if (n == 0 || (n < 0 && errno == EAGAIN))
      return -EPIPE;
    if (n < 0)
      return latch(vhd, -errno, "writing %zu bytes at offset %llu", len,
                   (unsigned long long)at);
    len -= (size_t)n;
  }
  return 0;
}

/* Measured on Linux 6.18, ext4 and tmpfs: every buffered pwritev2 with
 * RWF_NOWAIT fails with EOPNOTSUPP (cached or not, allocated or a hole,
 * aligned or not), so there a NOWAIT write always goes to a worker, after one
 * refused call per handle.  File systems that do buffered writes without
 * waiting (XFS, btrfs on later kernels) accept them, and some kernels
 * answer EINVAL instead of EOPNOTSUPP: the arguments were checked, so it
 * means the same. */
int vhd_io_pwrite_nowait(vhd_t *vhd, const void *buf, size_t len, uint64_t off) {
  if (vhd_io_refuses_writes(vhd) ||
      atomic_load_explicit(&vhd->nowait_write_unsupported, memory_order_relaxed))
    return -EAGAIN;
  int r = fault_check(FAULT_OP_WRITE);
  if (r < 0)
    return latch(vhd, r, "writing %zu bytes at offset %llu", len, (unsigned long long)off);
  struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
  ssize_t n;
  do
    n = pwritev2(vhd->fd, &iov, 1, (off_t)off, RWF_NOWAIT);
  while (n < 0 && errno == EINTR);
  if (n < 0) {
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)
      atomic_store(&vhd->nowait_write_unsupported, true);
    if (errno == EAGAIN || errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL)
      return -EAGAIN; /* nothing was written */
    /* A failed write may have written part of the range: as vhd_io_pwrite. */
    return latch(vhd, -errno, "writing %zu bytes at offset %llu", len, (unsigned long long)off);
  }
  if ((size_t)n == len)
    return 0;
  /* Part of it is in the file already, and the caller was promised all or
   * nothing: the rest is written the waiting way.  Rare (the kernel stops
   * short only where a page would need to be read or allocated), and never
   * a metadata change: the caller only comes here for blocks it holds. */
  return vhd_io_pwrite(vhd, (const uint8_t *)buf + n, len - (size_t)n, off + (uint64_t)n);
}

/* The image reopened write-only with O_DSYNC, through /proc so that it is
 * the same inode even when the image's path names something else now (or
 * is itself a /proc/self/fd link).  Under vhd->lock rather than sync_lock:
 * a flush holds that one through its fdatasync, which the first footer
 * move would then wait for. */
void vhd_io_dsync_open(vhd_t *vhd) {
  if (vhd->dsync_tried)
    return;
  vhd->dsync_tried = true;
  char p[64];
  snprintf(p, sizeof p, "/proc/self/fd/%d", vhd->fd);
  int fd = open(p, O_WRONLY | O_DSYNC | O_CLOEXEC);
  struct stat a, b;
  if (fd >= 0 && (fstat(fd, &a) < 0 || fstat(vhd->fd, &b) < 0 || a.st_dev != b.st_dev ||
                  a.st_ino != b.st_ino)) {
    close(fd);
    fd = -1;
  }
  vhd->dsync_fd = fd;
}

/* For the footer move: an fdatasync of the image would write back every
 * dirty page of it (data written since the last flush, all of it, on ext4),
 * where only the footer and the file size need to be durable.  A write
 * through the O_DSYNC descriptor returns once its own range and the inode
 * (the size) are on the disk, and nothing else waits.  It is a write and a
 * sync to the fault switch: either injected failure means nothing was
 * written, as a write lost in a power cut.  A failure latches: a write-back
 * error of other pages may be what it reports (each descriptor sees each
 * error once, so the image's own next fdatasync still sees it too). */
int vhd_io_pwrite_durable(vhd_t *vhd, const void *buf, size_t len, uint64_t off) {
  int fd = vhd->dsync_fd;
  if (fd < 0) {
    int r = vhd_io_pwrite(vhd, buf, len, off);
    return r < 0 ? r : vhd_io_sync(vhd);
  }
  if (vhd_io_refuses_writes(vhd))
    return -EIO;
  int r = fault_check(FAULT_OP_WRITE);
  if (r == 0)
    r = fault_check(FAULT_OP_SYNC);
  if (r == 0)
    r = pwrite_all(fd, buf, len, off);
  if (r < 0)
    return latch(vhd, r, "writing %zu bytes at offset %llu (O_DSYNC)", len,
                 (unsigned long long)off);
  return 0;
}

/* Serialized by sync_lock, and a failure latched before the lock is
 * released: Linux reports a failed write-back to one fdatasync only, so two
 * syncs racing could otherwise see one fail and the other succeed, and a
 * flush go on to commit metadata for data that never reached the disk. */
int vhd_io_sync(vhd_t *vhd) {
  pthread_mutex_lock(&vhd->sync_lock);
  int r = vhd_io_refuses_writes(vhd) ? -EIO : fault_check(FAULT_OP_SYNC);
  if (r == 0 && fdatasync(vhd->fd) < 0)
    r = -errno;
  if (r < 0)
    latch_locked(vhd, r, "fdatasync");
  pthread_mutex_unlock(&vhd->sync_lock);
  return r;
}

int vhd_io_truncate(vhd_t *vhd, uint64_t size) {
  if (vhd_io_refuses_writes(vhd))
    return -EIO;
  int r = fault_check(FAULT_OP_OTHER);
  if (r == 0 && ftruncate(vhd->fd, (off_t)size) < 0)
    r = -errno;
  if (r < 0)
    return latch(vhd, r, "truncating to %llu bytes", (unsigned long long)size);
  return 0;
}

/* The footer is written at its new place and synced before the cut, so
 * that at every instant the file ends with a valid footer: a crash leaves
 * either the old file (with a stale footer copy below its end, which
 * check and compact know) or the new one. */
int vhd_io_footer_copy_sync(vhd_t *vhd, bool write) {
  uint8_t head[VHD_FOOTER_SIZE];
  if (vhd->type == VHD_TYPE_FIXED || vhd_io_pread(vhd->fd, head, VHD_FOOTER_SIZE, 0) < 0 ||
      memcmp(head, vhd->footer_raw, VHD_FOOTER_SIZE) == 0)
    return 0;
  if (!write)
    return 1;
  int r = vhd_io_pwrite(vhd, vhd->footer_raw, VHD_FOOTER_SIZE, 0);
  if (r == 0)
    r = vhd_io_sync(vhd);
  return r < 0 ? r : 1;
}

int vhd_io_footer_cut(vhd_t *vhd, uint64_t end, bool keep_when_full) {
  if (vhd_io_refuses_writes(vhd))
    return -EIO;
  int r = vhd_io_pwrite_fd(vhd->fd, vhd->footer_raw, VHD_FOOTER_SIZE, end);
  /* The new place may be a hole: refused for want of space, nothing was
   * written and the old footer still ends the file. */
  if ((r == -ENOSPC || r == -EDQUOT) && keep_when_full)
    return 1;
  if (r < 0)
    return latch(vhd, r, "writing the footer at offset %llu", (unsigned long long)end);
  if ((r = vhd_io_sync(vhd)) < 0 || (r = vhd_io_truncate(vhd, end + VHD_FOOTER_SIZE)) < 0)
    return r;
  return vhd_io_sync(vhd);
}

/* A fixed image's footer, written whole where it starts and synced.  A
 * 511-byte footer (Virtual PC before 2004) becomes a standard one: the
 * file gains the missing byte, and file_size and footer_short say so. */
int vhd_io_fixed_footer_write(vhd_t *vhd, const uint8_t raw[VHD_FOOTER_SIZE], uint64_t *at) {
  pthread_mutex_lock(&vhd->lock);
  uint64_t pos = vhd_fixed_footer_pos(vhd);
  pthread_mutex_unlock(&vhd->lock);
  *at = pos;
  int r = vhd_io_pwrite(vhd, raw, VHD_FOOTER_SIZE, pos);
  if (r == 0)
    r = vhd_io_sync(vhd);
  if (r == 0 && vhd->footer_short) {
    pthread_mutex_lock(&vhd->lock);
    vhd->file_size = pos + VHD_FOOTER_SIZE;
    vhd->footer_short = false;
    pthread_mutex_unlock(&vhd->lock);
  }
  return r;
}

/* Zeros over [off, off+len), a part of one file system block, for
 * vhd_io_punch.  Bytes that read as zeros already (a hole, most often)
 * are left alone: writing them would take space, which a full file system
 * has not.  Where writing fails for want of space, the part is punched
 * after all (nothing is in flight there, or the file system zeroes no
 * more than the part).  0, 1 when punched instead, or a negative errno. */
static int zero_part(int fd, uint64_t off, uint64_t len) {
  uint8_t buf[65536];
  static const uint8_t zeros[sizeof buf];
  if (len > sizeof buf)
    return -EINVAL; /* a part is less than a block, and blocks are at most 64 KiB */
  ssize_t n;
  do
    n = pread(fd, buf, len, (off_t)off);
  while (n < 0 && errno == EINTR);
  if (n == (ssize_t)len && memcmp(buf, zeros, len) == 0)
    return 0;
  for (uint64_t done = 0; done < len;) {
    ssize_t w = pwrite(fd, zeros, len - done, (off_t)(off + done));
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == ENOSPC || errno == EDQUOT)) {
      if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(off + done),
                    (off_t)(len - done)) < 0)
        return -errno;
      return 1;
    }
    if (w <= 0)
      return w < 0 ? -errno : -EIO;
    done += (uint64_t)w;
  }
  return 0;
}

/* A punch is a hint the callers may do without (file systems without hole
 * punching answer EOPNOTSUPP): a failure does not latch.
 *
 * Only the file system blocks wholly inside the range are punched; the
 * bytes of the range in a block it covers in part get zeros written.  A
 * file system may take the page cache of every block a punch touches out
 * or zero it whole (XFS does, by its blocks), and pages a spliced READ
 * still holds in a pipe (vhd_read_extent) cannot be taken out: their
 * bytes outside the range would go to the client as zeros.  Written
 * zeros change the range's bytes and nothing else.
 *
 * Returns 0 when the whole range was punched (its pages are out of the
 * file, left as they were to whoever holds them), 1 when part of it was
 * zeroed in place instead, or a negative errno (nothing is known then). */
int vhd_io_punch(vhd_t *vhd, uint64_t off, uint64_t len) {
  if (vhd_io_refuses_writes(vhd))
    return -EIO;
  int r = fault_check(FAULT_OP_OTHER);
  if (r < 0)
    return r;
  uint64_t unit = vhd->punch_unit ? vhd->punch_unit : 4096;
  uint64_t a = ROUND_UP(off, unit), b = ROUND_DOWN(off + len, unit);
  if (a >= b) /* inside one block, or across the edge of two */
    a = b = MIN(ROUND_UP(off, unit), off + len);
  else if (fallocate(vhd->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)a,
                     (off_t)(b - a)) < 0)
    return -errno;
  if ((off < a && (r = zero_part(vhd->fd, off, a - off)) < 0) ||
      (b < off + len && (r = zero_part(vhd->fd, b, off + len - b)) < 0))
    return r;
  return off < a || b < off + len;
}

int vhd_io_reserve(vhd_t *vhd, uint64_t off, uint64_t len) {
  if (vhd_io_refuses_writes(vhd))
    return -EIO;
  if (vhd->reserve_refused)
    return -EOPNOTSUPP;
  int r = fault_check(FAULT_OP_OTHER);
  if (r < 0)
    return r;
  /* KEEP_SIZE: never the reason the file grows, even were the range to
   * reach past its end. */
  if (fallocate(vhd->fd, FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0) {
    r = -errno;
    if (r == -EOPNOTSUPP || r == -ENOSYS)
      vhd->reserve_refused = true;
    return r;
  }
  return 0;
}

/* Bytes of [off, off+len) that the file system has allocated (not holes). */
uint64_t vhd_io_allocated_bytes(int fd, uint64_t off, uint64_t len) {
  uint64_t end = off + len, total = 0;
  while (off < end) {
    off_t d = lseek(fd, (off_t)off, SEEK_DATA);
    if (d < 0)
      return errno == ENXIO ? total : len;
    if ((uint64_t)d >= end)
      break;
    off_t h = lseek(fd, d, SEEK_HOLE);
    uint64_t stop = h < 0 ? end : MIN((uint64_t)h, end);
    total += stop - (uint64_t)d;
    off = stop;
  }
  return total;
}

uint64_t vhd_io_hole_end(int fd, uint64_t off, uint64_t end) {
  off_t d = lseek(fd, (off_t)off, SEEK_DATA);
  if (d < 0)
    return errno == ENXIO ? end : off; /* a hole to the end, or no SEEK_DATA */
  return MIN((uint64_t)d, end);
}

/* Whether buf[0, n) (at file offset pos) is blank: zeros, or a footer of
 * the image whose footer is `footer` where a whole aligned sector holds one. */
static bool piece_blank(const uint8_t *buf, size_t n, uint64_t pos, const uint8_t *footer) {
  size_t i = 0;
  while (i < n) {
    size_t k = (size_t)MIN((uint64_t)(n - i), 512 - (pos + i) % 512);
    if (footer && k == 512 && vhd_footer_of_image(buf + i, footer)) {
      i += k;
      continue;
    }
    for (size_t j = i; j < i + k; j++)
      if (buf[j])
        return false;
    i += k;
  }
  return true;
}

int vhd_io_range_is_blank(int fd, uint64_t off, uint64_t len, const uint8_t *footer) {
  uint64_t end = off + len;
  uint8_t buf[65536];
  while (off < end) {
    /* Holes read as zeros: only the extents holding data are read. */
    off_t d = lseek(fd, (off_t)off, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO)
        return 1; /* nothing but a hole up to the end of the file */
      d = (off_t)off; /* no SEEK_DATA here: read everything */
    }
    if ((uint64_t)d >= end)
      return 1;
    off_t h = lseek(fd, d, SEEK_HOLE);
    uint64_t stop = h < 0 ? end : MIN((uint64_t)h, end);
    for (uint64_t p = (uint64_t)d; p < stop;) {
      /* Pieces end on sector boundaries, so that no sector is split. */
      size_t n = (size_t)MIN(stop - p, (uint64_t)sizeof buf - p % 512);
      int r = vhd_io_pread(fd, buf, n, p);
      if (r < 0)
        return r;
      if (!piece_blank(buf, n, p, footer))
        return 0;
      p += n;
    }
    off = stop;
  }
  return 1;
}

int vhd_io_zero(vhd_t *vhd, uint64_t off, uint64_t len) {
  if (vhd_io_punch(vhd, off, len) >= 0)
    return 0;
  static const uint8_t zeros[65536];
  for (uint64_t done = 0; done < len;) {
    size_t n = (size_t)MIN(len - done, (uint64_t)sizeof zeros);
    int r = vhd_io_pwrite(vhd, zeros, n, off + done);
    if (r < 0)
      return r;
    done += n;
  }
  return 0;
}

int vhd_io_first_nonzero(int fd, uint64_t off, uint64_t len, uint64_t *at) {
  uint64_t end = off + len;
  uint8_t buf[65536];
  while (off < end) {
    off_t d = lseek(fd, (off_t)off, SEEK_DATA);
    if (d < 0) {
      if (errno == ENXIO)
        return 0;
      d = (off_t)off;
    }
    if ((uint64_t)d >= end)
      return 0;
    off_t h = lseek(fd, d, SEEK_HOLE);
    uint64_t stop = h < 0 ? end : MIN((uint64_t)h, end);
    for (uint64_t p = (uint64_t)d; p < stop;) {
      size_t n = (size_t)MIN(stop - p, (uint64_t)sizeof buf);
      int r = vhd_io_pread(fd, buf, n, p);
      if (r < 0)
        return r;
      for (size_t i = 0; i < n; i++)
        if (buf[i]) {
          *at = p + i;
          return 1;
        }
      p += n;
    }
    off = stop;
  }
  return 0;
}

/* ---- whole files: new images, and files replaced or removed ------------ */

/* For a file that is not an open image (a new image being written, the
 * directory of a renamed one): counted by the fault switch, no latch. */
int vhd_io_truncate_fd(int fd, uint64_t size) {
  int r = fault_check(FAULT_OP_OTHER);
  if (r == 0 && ftruncate(fd, (off_t)size) < 0)
    r = -errno;
  return r;
}

int vhd_io_sync_fd(int fd) {
  int r = fault_check(FAULT_OP_SYNC);
  if (r == 0 && fsync(fd) < 0)
    r = -errno;
  return r;
}

int vhd_io_rename(const char *from, const char *to) {
  int r = fault_check(FAULT_OP_OTHER);
  if (r == 0 && rename(from, to) < 0)
    r = -errno;
  return r;
}

int vhd_io_unlink(const char *path) {
  int r = fault_check(FAULT_OP_OTHER);
  if (r == 0 && unlink(path) < 0)
    r = -errno;
  return r;
}

/* Makes a rename or unlink in the directory of path durable. */
int vhd_io_sync_dir_of(const char *path) {
  CLEANUP_FREE char *copy = strdup(path);
  if (!copy)
    return -ENOMEM;
  char *slash = strrchr(copy, '/');
  const char *dir = ".";
  if (slash) {
    *slash = '\0';
    dir = slash == copy ? "/" : copy;
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0)
    return -errno;
  int r = vhd_io_sync_fd(fd);
  close(fd);
  return r;
}
