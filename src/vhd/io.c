/* io.c: every byte the engine reads from or writes to an image file passes
 * here, so that fault injection can stop the world after the Nth write or
 * sync, as a power cut would. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "cleanup.h"
#include "vhd-internal.h"

static atomic_long fault_remaining = -1; /* < 0: disarmed */
static atomic_bool fault_hit;
static pthread_once_t fault_once = PTHREAD_ONCE_INIT;

static void fault_init_from_env(void) {
  const char *s = getenv("VHDNBD_FAULT_AFTER");
  if (s && *s) {
    char *end;
    long n = strtol(s, &end, 10);
    if (*end == '\0' && n >= 0)
      atomic_store(&fault_remaining, n);
  }
}

void vhd_fault_arm(long n) {
  pthread_once(&fault_once, fault_init_from_env);
  atomic_store(&fault_hit, false);
  atomic_store(&fault_remaining, n < 0 ? -1 : n);
}

bool vhd_fault_tripped(void) { return atomic_load(&fault_hit); }

/* Returns true when this mutating operation must fail. */
static bool fault_consume(void) {
  pthread_once(&fault_once, fault_init_from_env);
  long cur = atomic_load(&fault_remaining);
  while (cur >= 0) {
    if (cur == 0) {
      atomic_store(&fault_hit, true);
      return true;
    }
    if (atomic_compare_exchange_weak(&fault_remaining, &cur, cur - 1))
      return false;
  }
  return false;
}

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

int vhd_io_pwrite(int fd, const void *buf, size_t len, uint64_t off) {
  if (fault_consume())
    return -EIO;
  const uint8_t *p = buf;
  while (len > 0) {
    ssize_t r = pwrite(fd, p, len, (off_t)off);
    if (r < 0) {
      if (errno == EINTR)
        continue;
      return -errno;
    }
    p += r;
    len -= (size_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

int vhd_io_sync(int fd) {
  if (fault_consume())
    return -EIO;
  if (fdatasync(fd) < 0)
    return -errno;
  return 0;
}

int vhd_io_truncate(int fd, uint64_t size) {
  if (fault_consume())
    return -EIO;
  if (ftruncate(fd, (off_t)size) < 0)
    return -errno;
  return 0;
}

int vhd_io_punch(int fd, uint64_t off, uint64_t len) {
  if (fault_consume())
    return -EIO;
  if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len) < 0)
    return -errno;
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

/* Whether buf[0, n) (at file offset pos) is blank: zeros, or the 512-byte
 * sector `same` where a whole aligned sector holds it. */
static bool piece_blank(const uint8_t *buf, size_t n, uint64_t pos, const uint8_t *same) {
  size_t i = 0;
  while (i < n) {
    size_t k = (size_t)MIN((uint64_t)(n - i), 512 - (pos + i) % 512);
    if (same && k == 512 && memcmp(buf + i, same, 512) == 0) {
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

int vhd_io_range_is_blank(int fd, uint64_t off, uint64_t len, const uint8_t *same) {
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
      if (!piece_blank(buf, n, p, same))
        return 0;
      p += n;
    }
    off = stop;
  }
  return 1;
}

int vhd_io_zero(int fd, uint64_t off, uint64_t len) {
  if (vhd_io_punch(fd, off, len) == 0)
    return 0;
  static const uint8_t zeros[65536];
  for (uint64_t done = 0; done < len;) {
    size_t n = (size_t)MIN(len - done, (uint64_t)sizeof zeros);
    int r = vhd_io_pwrite(fd, zeros, n, off + done);
    if (r < 0)
      return r;
    done += n;
  }
  return 0;
}
