/* test-vhd-footer-sync: when a new block needs room past the trailing
 * footer, the footer is written further on and the file synced before
 * anything may overwrite the old one.  That sync can take long on a busy
 * disk, and it must not stall the image's readers, which take the image
 * lock for their bitmap snapshots.
 *
 * With 64 MiB blocks every new block moves the footer.  The test VFS holds
 * the sync of one such move (the footer's O_DSYNC write, or its write and
 * fdatasync) until a reader has read an allocated block;
 * meanwhile other threads write into an allocated block, allocate another
 * new block (which must wait for the move) and flush.  The held sync gives
 * up after HOLD_LIMIT_S seconds, a deadlock guard: reaching it means the
 * read waited for the sync, and fails the test.  Afterwards every write is
 * in place, also after a reopen, and the image checks clean. */
#include "config.h"

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "testutil.h"

#define BLOCK (64u * 1024 * 1024)
#define SIZE (4ull * BLOCK)
#define HOLD_LIMIT_S 20

static vhd_t *v;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t mover;       /* the thread whose footer-move sync is held */
  bool armed;
  bool footer_written;   /* the mover's last write was a footer */
  bool footer_synced;    /* ... and the sync held came right after it */
  bool in_sync, read_done, timed_out;
} st = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void deadline(struct timespec *ts) {
  clock_gettime(CLOCK_REALTIME, ts);
  ts->tv_sec += HOLD_LIMIT_S;
}

static void hook(void *opaque, enum t_io_kind kind, int fd, const void *buf, uint64_t len,
                 uint64_t off) {
  (void)opaque, (void)fd, (void)off;
  pthread_mutex_lock(&st.mu);
  if (!st.armed || !pthread_equal(pthread_self(), st.mover)) {
    pthread_mutex_unlock(&st.mu);
    return;
  }
  if (kind == T_IO_WRITE) {
    st.footer_written = len == 512 && memcmp(buf, "conectix", 8) == 0;
  } else if (kind == T_IO_SYNC || kind == T_IO_WRITE_DSYNC) {
    /* Held before the engine sees the durable write return. */
    if (kind == T_IO_WRITE_DSYNC)
      st.footer_written = len == 512 && memcmp(buf, "conectix", 8) == 0;
    st.armed = false;
    st.footer_synced = st.footer_written;
    st.in_sync = true;
    pthread_cond_broadcast(&st.cv);
    struct timespec ts;
    deadline(&ts);
    int r = 0;
    while (!st.read_done && r == 0)
      r = pthread_cond_timedwait(&st.cv, &st.mu, &ts);
    st.timed_out = !st.read_done;
  }
  pthread_mutex_unlock(&st.mu);
}

static void fill(uint8_t *buf, size_t len, uint8_t seed) {
  for (size_t i = 0; i < len; i++)
    buf[i] = (uint8_t)(seed + i * 7 + 1) | 1;
}

static void write_at(uint64_t off, uint8_t seed) {
  uint8_t buf[4096];
  fill(buf, sizeof buf, seed);
  struct vhd_err err = {{0}};
  T_OK(vhd_write(v, buf, off, sizeof buf, 0, &err), &err, t_fmt("vhd_write at %llu",
                                                                 (unsigned long long)off));
}

static void expect_at(vhd_t *h, uint64_t off, uint8_t seed, const char *when) {
  uint8_t buf[4096], want[4096];
  fill(want, sizeof want, seed);
  struct vhd_err err = {{0}};
  T_OK(vhd_read(h, buf, off, sizeof buf, &err), &err, "vhd_read");
  T_ASSERT(memcmp(buf, want, sizeof buf) == 0, "%s: the 4 KiB at %llu do not hold what was written",
           when, (unsigned long long)off);
}

/* Allocates block 1: its footer move is the sync held. */
static void *mover(void *arg) {
  (void)arg;
  write_at(1ull * BLOCK + 8192, 0x11);
  return NULL;
}

/* Runs while the sync is held: a write into an allocated block, another
 * new block, which must wait for the move, and a flush. */
static void *other_writer(void *arg) {
  (void)arg;
  write_at(65536, 0x33);
  write_at(2ull * BLOCK, 0x22);
  struct vhd_err err = {{0}};
  T_OK(vhd_flush(v, &err), &err, "vhd_flush");
  return NULL;
}

int main(void) {
  t_init("test-vhd-footer-sync");
  char path[4096];
  snprintf(path, sizeof path, "%s", t_path("footer-sync.vhd"));
  t_create(path, VHD_TYPE_DYNAMIC, SIZE, BLOCK, true, NULL);
  v = t_open(path, false);
  write_at(4096, 0x01); /* block 0, allocated (and its bitmap in memory) */

  pthread_t m, o;
  t_set_io_hook(hook, NULL);
  pthread_mutex_lock(&st.mu);
  T_ASSERT(pthread_create(&m, NULL, mover, NULL) == 0, "pthread_create");
  st.mover = m;
  st.armed = true;
  struct timespec ts;
  deadline(&ts);
  int r = 0;
  while (!st.in_sync && r == 0)
    r = pthread_cond_timedwait(&st.cv, &st.mu, &ts);
  T_ASSERT(st.in_sync, "no sync within %d s of allocating block 1", HOLD_LIMIT_S);
  T_ASSERT(st.footer_synced, "the sync held is not the one that moves the footer");
  pthread_mutex_unlock(&st.mu);

  T_ASSERT(pthread_create(&o, NULL, other_writer, NULL) == 0, "pthread_create");
  /* The read the footer move must not hold up. */
  expect_at(v, 4096, 0x01, "read during the footer move");
  pthread_mutex_lock(&st.mu);
  st.read_done = true;
  pthread_cond_broadcast(&st.cv);
  pthread_mutex_unlock(&st.mu);
  pthread_join(m, NULL);
  pthread_join(o, NULL);
  t_set_io_hook(NULL, NULL);
  T_ASSERT(!st.timed_out,
           "a read of an allocated block did not complete within %d s while the footer-move "
           "sync was in progress: reads wait for that sync",
           HOLD_LIMIT_S);

  const uint64_t offs[] = {4096, BLOCK + 8192, 2ull * BLOCK, 65536};
  const uint8_t seeds[] = {0x01, 0x11, 0x22, 0x33};
  for (size_t i = 0; i < 4; i++)
    expect_at(v, offs[i], seeds[i], "after the footer move");
  struct vhd_err err = {{0}};
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  int c = t_check(path);
  T_ASSERT((c & ~VHD_CHECK_LEAKS) == 0, "vhd_check %s reports 0x%x", path, c);
  v = t_open(path, true);
  for (size_t i = 0; i < 4; i++)
    expect_at(v, offs[i], seeds[i], "after a reopen");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  printf("ok\n");
  return 0;
}
