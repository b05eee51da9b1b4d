/* splice.c: the pipe pool and the file side of spliced READs (splice.h). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include "server.h"
#include "splice.h"

static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static struct splice_pipe pool[SPLICE_PIPES_MAX];
static unsigned pool_free; /* pipes in pool[0..pool_free) */
static unsigned pool_made; /* pipes that exist, free or in use */
static size_t pipe_pages;  /* what every pipe holds, in pages */
static size_t page_size;

/* A pipe that holds a whole READ slice wherever it starts in a page: one
 * page more than the slice, where the system allows it (root, or
 * fs.pipe-max-size), else as much of that as it allows. */
static int pipe_make(struct splice_pipe *p) {
  int fds[2];
  /* Non-blocking both ways: the loop reads back what a full socket did not
   * take (conn-output.c), and must never wait on a pipe. */
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0)
    return -errno;
  int size = fcntl(fds[1], F_SETPIPE_SZ, (int)(SERVER_READ_SLICE + page_size));
  if (size < 0)
    size = fcntl(fds[1], F_SETPIPE_SZ, (int)SERVER_READ_SLICE);
  if (size < 0)
    size = fcntl(fds[1], F_GETPIPE_SZ);
  /* Every pipe holds what the first one did (splice_plan): the limits
   * do not change while we run, but a smaller pipe is refused all the same. */
  int e = size < 0 ? -errno : pipe_pages && (size_t)size / page_size < pipe_pages ? -ENOSPC : 0;
  if (e < 0) {
    close(fds[0]);
    close(fds[1]);
    return e;
  }
  *p = (struct splice_pipe){fds[0], fds[1]};
  if (!pipe_pages)
    pipe_pages = (size_t)size / page_size;
  return 0;
}

bool splice_available(void) {
  page_size = (size_t)sysconf(_SC_PAGESIZE);
  struct splice_pipe p;
  if (pipe_make(&p) < 0)
    return false;
  pool[pool_free++] = p;
  pool_made = 1;
  return true;
}

bool splice_pipe_get(struct splice_pipe *p) {
  pthread_mutex_lock(&pool_lock);
  bool ok = false;
  if (pool_free > 0) {
    *p = pool[--pool_free];
    ok = true;
  } else if (pool_made < SPLICE_PIPES_MAX && pipe_make(p) == 0) {
    pool_made++;
    ok = true;
  }
  pthread_mutex_unlock(&pool_lock);
  return ok;
}

void splice_pipe_put(struct splice_pipe *p, bool empty) {
  if (p->rd < 0)
    return;
  pthread_mutex_lock(&pool_lock);
  if (empty) {
    pool[pool_free++] = *p;
  } else {
    close(p->rd);
    close(p->wr);
    pool_made--;
  }
  pthread_mutex_unlock(&pool_lock);
  *p = (struct splice_pipe){-1, -1};
}

size_t splice_pipe_payload_max(void) {
  return pipe_pages * page_size;
}

static bool splice_fits(uint64_t off, size_t len) {
  size_t pages = (size_t)((off % page_size + len + page_size - 1) / page_size);
  return pipe_pages && pages <= pipe_pages;
}

bool splice_plan(uint64_t off, size_t len, size_t max_head, size_t *head) {
  *head = 0;
  if (splice_fits(off, len))
    return true;
  size_t h = (size_t)MIN((uint64_t)len, (page_size - off % page_size) % page_size);
  if (h == 0 || h > max_head || !splice_fits(off + h, len - h))
    return false;
  *head = h;
  return true;
}

int splice_read_full(int fd, void *buf, size_t len, int64_t off) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = off < 0 ? read(fd, p, len) : pread(fd, p, len, (off_t)off);
    if (n < 0 && errno == EINTR)
      continue;
    if (n <= 0)
      return n < 0 ? -errno : -ENODATA;
    p += n;
    len -= (size_t)n;
    if (off >= 0)
      off += n;
  }
  return 0;
}

int splice_fill(struct splice_pipe *p, int fd, uint64_t off, size_t len) {
  loff_t at = (loff_t)off;
  while (len > 0) {
    /* Non-blocking on the pipe only: a full pipe fails rather than waits
     * for a reader that is not there yet.  The file side may wait for the
     * disk, as any read on a worker does. */
    ssize_t n = splice(fd, &at, p->wr, NULL, len, SPLICE_F_NONBLOCK);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0)
      return -errno;
    if (n == 0)
      return -ENODATA; /* the file ends first */
    len -= (size_t)n;
  }
  return 0;
}
