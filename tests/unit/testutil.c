/* testutil.c: shared helpers of the engine unit tests (see testutil.h). */
#include "config.h"

#include "testutil.h"

#include "cleanup.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

static uint64_t rng_state;
static uint64_t seed;
static char tmp_dir[4096];
static const char *name = "test";

static void remove_tmp_dir(void) {
  if (!tmp_dir[0])
    return;
  DIR *d = opendir(tmp_dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
      if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
        continue;
      char p[8192];
      snprintf(p, sizeof p, "%s/%s", tmp_dir, e->d_name);
      unlink(p);
    }
    closedir(d);
  }
  rmdir(tmp_dir);
  tmp_dir[0] = '\0';
}

void t_fail_at(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fflush(stdout);
  fprintf(stderr, "%s: FAIL %s:%d: ", name, file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n%s: reproduce with VHD_TEST_SEED=%llu\n", name, (unsigned long long)seed);
  if (getenv("VHD_TEST_KEEP") && tmp_dir[0]) {
    fprintf(stderr, "%s: images kept in %s\n", name, tmp_dir);
    tmp_dir[0] = '\0';
  }
  exit(1);
}

const char *t_fmt(const char *fmt, ...) {
  static char bufs[8][2048];
  static unsigned next;
  char *b = bufs[next++ % 8];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b, sizeof bufs[0], fmt, ap);
  va_end(ap);
  return b;
}

const char *t_strerr(long negerrno) { return negerrno < 0 ? strerror((int)-negerrno) : "ok"; }

/* splitmix64: tiny, good enough, and the same sequence on every platform. */
uint64_t t_rand(void) {
  uint64_t z = (rng_state += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

uint64_t t_below(uint64_t n) { return n ? t_rand() % n : 0; }
uint64_t t_range(uint64_t lo, uint64_t hi) { return lo + t_below(hi - lo + 1); }
bool t_chance(unsigned percent) { return t_below(100) < percent; }
uint64_t t_seed(void) { return seed; }

void t_fill_random(void *buf, size_t len) {
  uint8_t *p = buf;
  while (len >= 8) {
    uint64_t v = t_rand();
    memcpy(p, &v, 8);
    p += 8;
    len -= 8;
  }
  if (len) {
    uint64_t v = t_rand();
    memcpy(p, &v, len);
  }
}

void t_fill_nonzero(void *buf, size_t len) {
  t_fill_random(buf, len);
  uint8_t *p = buf;
  for (size_t i = 0; i < len; i++)
    if (!p[i])
      p[i] = 0xa5;
}

static uint64_t iters(void) {
  const char *s = getenv("VHD_TEST_ITERS");
  unsigned long long v = s && *s ? strtoull(s, NULL, 10) : 0;
  return v ? (uint64_t)v : T_DEFAULT_ITERS;
}

void t_init(const char *test_name) {
  name = test_name;
  const char *s = getenv("VHD_TEST_SEED");
  if (s && *s) {
    char *end;
    seed = strtoull(s, &end, 0);
    if (*end)
      t_fail("VHD_TEST_SEED=%s is not a number", s);
  } else {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    seed = (uint64_t)ts.tv_sec * 1000003u ^ (uint64_t)ts.tv_nsec ^ ((uint64_t)getpid() << 32);
  }
  rng_state = seed;
  printf("%s: seed %llu (set VHD_TEST_SEED to reproduce), workload length %llu "
         "(VHD_TEST_ITERS)\n",
         name, (unsigned long long)seed, (unsigned long long)iters());

  const char *base = getenv("TMPDIR");
  if (!base || !*base)
    base = "/tmp";
  snprintf(tmp_dir, sizeof tmp_dir, "%s/vhdnbd-%s-XXXXXX", base, name);
  if (!mkdtemp(tmp_dir)) {
    int e = errno;
    tmp_dir[0] = '\0';
    t_fail("mkdtemp under %s: %s", base, strerror(e));
  }
  atexit(remove_tmp_dir);
  fflush(stdout);
}

uint64_t t_scaled(uint64_t base) {
  uint64_t n = base * iters() / T_DEFAULT_ITERS;
  return n ? n : 1;
}

const char *t_dir(void) { return tmp_dir; }

const char *t_path(const char *file) { return t_fmt("%s/%s", tmp_dir, file); }

void *t_xmalloc(size_t len) {
  void *p = malloc(len ? len : 1);
  if (!p)
    t_fail("out of memory (%zu bytes)", len);
  return p;
}

void *t_xcalloc(size_t n, size_t len) {
  void *p = calloc(n ? n : 1, len ? len : 1);
  if (!p)
    t_fail("out of memory (%zu x %zu bytes)", n, len);
  return p;
}

void t_copy_file(const char *from, const char *to) {
  int in = open(from, O_RDONLY | O_CLOEXEC);
  if (in < 0)
    t_fail("open %s: %s", from, strerror(errno));
  int out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (out < 0)
    t_fail("create %s: %s", to, strerror(errno));
  char buf[65536];
  for (;;) {
    ssize_t r = read(in, buf, sizeof buf);
    if (r < 0)
      t_fail("read %s: %s", from, strerror(errno));
    if (r == 0)
      break;
    if (write(out, buf, (size_t)r) != r)
      t_fail("write %s: %s", to, strerror(errno));
  }
  close(in);
  if (close(out) < 0)
    t_fail("close %s: %s", to, strerror(errno));
}

static int map_hash_extent(void *opaque, const struct vhd_extent *e) {
  uint64_t *h = opaque;
  uint64_t v[] = {e->offset, e->length, e->flags, (uint64_t)e->depth, e->file_offset};
  for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
    *h = (*h ^ v[i]) * 0x100000001b3ull;
  return 0;
}

uint64_t t_map_hash(vhd_t *v, uint64_t size) {
  struct vhd_err err = {{0}};
  uint64_t h = 0xcbf29ce484222325ull;
  int r = vhd_map(v, 0, size, map_hash_extent, &h, &err);
  if (r < 0)
    t_fail("vhd_map: %s", err.msg);
  return h;
}

void t_expect_model(vhd_t *v, const uint8_t *model, size_t size, const char *when) {
  uint8_t *got = malloc(size);
  if (!got)
    t_fail("%s: out of memory", when);
  struct vhd_err err = {{0}};
  if (vhd_read(v, got, 0, size, &err) < 0)
    t_fail("%s: vhd_read: %s", when, err.msg);
  for (size_t i = 0; i < size; i++)
    if (got[i] != model[i])
      t_fail("%s: byte %zu reads %#x, the model has %#x", when, i, got[i], model[i]);
  free(got);
}

uint64_t t_file_hash(const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    t_fail("open %s: %s", path, strerror(errno));
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  uint8_t buf[65536];
  for (;;) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0)
      t_fail("read %s: %s", path, strerror(errno));
    if (r == 0)
      break;
    for (ssize_t i = 0; i < r; i++) {
      h ^= buf[i];
      h *= UINT64_C(0x100000001b3);
    }
  }
  close(fd);
  return h;
}

uint64_t t_file_size(const char *path) {
  struct stat st;
  if (stat(path, &st) < 0)
    t_fail("stat %s: %s", path, strerror(errno));
  return (uint64_t)st.st_size;
}

uint32_t t_be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

uint64_t t_be64(const uint8_t *p) {
  return (uint64_t)t_be32(p) << 32 | t_be32(p + 4);
}

void t_pread_file(const char *path, void *buf, size_t len, uint64_t off) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    t_fail("open %s: %s", path, strerror(errno));
  ssize_t r = pread(fd, buf, len, (off_t)off);
  if (r != (ssize_t)len)
    t_fail("pread %s: %zu bytes at %llu: got %zd (%s)", path, len, (unsigned long long)off, r,
           r < 0 ? strerror(errno) : "short");
  close(fd);
}

void t_read_locators(const char *path, struct t_locator out[8]) {
  uint8_t h[1024];
  t_pread_file(path, h, sizeof h, 512);
  for (int i = 0; i < 8; i++) {
    const uint8_t *l = h + 576 + 24 * i;
    out[i] = (struct t_locator){t_be32(l), t_be32(l + 4), t_be32(l + 8), t_be64(l + 16)};
  }
}

void t_write_header(const char *path, uint8_t *h, uint64_t off) {
  memset(h + 36, 0, 4);
  uint32_t sum = 0;
  for (size_t i = 0; i < 1024; i++)
    sum += h[i];
  sum = ~sum;
  for (int i = 0; i < 4; i++)
    h[36 + i] = (uint8_t)(sum >> (24 - 8 * i));
  t_pwrite_file(path, h, 1024, off);
}

void t_pwrite_file(const char *path, const void *buf, size_t len, uint64_t off) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0)
    t_fail("open %s: %s", path, strerror(errno));
  if (pwrite(fd, buf, len, (off_t)off) != (ssize_t)len)
    t_fail("pwrite %s: %zu bytes at %llu: %s", path, len, (unsigned long long)off,
           strerror(errno));
  close(fd);
}

void t_truncate_file(const char *path, uint64_t size) {
  if (truncate(path, (off_t)size) < 0)
    t_fail("truncate %s to %llu: %s", path, (unsigned long long)size, strerror(errno));
}

void t_create(const char *path, enum vhd_type type, uint64_t size, uint32_t block_size,
              bool exact, const char *parent) {
  struct vhd_create_opts o = {
      .type = type, .size = size, .block_size = block_size, .exact_size = exact, .parent = parent};
  struct vhd_err err = {{0}};
  int r = vhd_create(path, &o, &err);
  if (r < 0)
    t_fail("vhd_create %s (type %d, size %llu, block %u, exact %d): %s: %s", path, (int)type,
           (unsigned long long)size, block_size, (int)exact, t_strerr(r), err.msg);
}

vhd_t *t_open(const char *path, bool rdonly) {
  struct vhd_open_opts o = {.flags = rdonly ? VHD_OPEN_RDONLY : 0};
  struct vhd_err err = {{0}};
  vhd_t *v = NULL;
  int r = vhd_open(path, &o, &v, &err);
  if (r < 0)
    t_fail("vhd_open %s: %s: %s", path, t_strerr(r), err.msg);
  T_ASSERT(v != NULL, "vhd_open %s returned 0 but no handle", path);
  return v;
}

static void print_report(void *opaque, const char *level, const char *msg) {
  fprintf(stderr, "  check %s: %s: %s\n", (const char *)opaque, level, msg);
}

int t_check(const char *path) {
  struct vhd_check_opts o = {.repair = false, .report = NULL, .opaque = (void *)path};
  struct vhd_err err = {{0}};
  int r = vhd_check(path, &o, &err);
  if (r < 0)
    t_fail("vhd_check %s: %s: %s", path, t_strerr(r), err.msg);
  if (r & ~VHD_CHECK_LEAKS) {
    /* Run again to show what it found. */
    o.report = print_report;
    vhd_check(path, &o, &err);
  }
  return r;
}

/* ---- the test VFS (see testutil.h) ---- */

static t_io_hook io_hook;
static void *io_hook_opaque;
static uint64_t sync_count;
static int real_sync = -1;

void t_set_io_hook(t_io_hook hook, void *opaque) {
  io_hook = hook;
  io_hook_opaque = opaque;
}

static t_io_before_hook before_hook;
static void *before_hook_opaque;

void t_set_io_before_hook(t_io_before_hook hook, void *opaque) {
  before_hook = hook;
  before_hook_opaque = opaque;
}

static ssize_t do_pread(int fd, void *buf, size_t n, off_t off) {
  if (before_hook)
    before_hook(before_hook_opaque, T_OP_READ, fd, (uint64_t)n, (uint64_t)off);
  return syscall(SYS_pread64, fd, buf, n, off);
}

ssize_t pread(int fd, void *buf, size_t n, off_t off) { return do_pread(fd, buf, n, off); }
ssize_t pread64(int fd, void *buf, size_t n, off64_t off) {
  return do_pread(fd, buf, n, (off_t)off);
}

uint64_t t_sync_count(void) { return sync_count; }

/* What changed the file since the last sync, for t_lose_unsynced. */
struct unsynced {
  dev_t dev;           /* the file it changed */
  ino_t ino;
  enum t_io_kind kind;
  uint64_t off, len;   /* T_IO_TRUNCATE: len is the new size */
  uint8_t *old;        /* T_IO_WRITE: the bytes it replaced (old_len of them);
                        * T_IO_WRITE_DSYNC: the bytes it wrote (len) */
  uint64_t old_len;
  uint64_t old_size;   /* T_IO_WRITE: the file size before it */
};
static bool tracking;
static struct unsynced *unsynced;
static size_t n_unsynced, cap_unsynced;

static void forget_unsynced(void) {
  for (size_t i = 0; i < n_unsynced; i++)
    free(unsynced[i].old);
  n_unsynced = 0;
}

/* Forgets what changed the file st names, keeping the others' records. */
static void forget_unsynced_of(const struct stat *st) {
  size_t k = 0;
  for (size_t i = 0; i < n_unsynced; i++) {
    if (unsynced[i].dev == st->st_dev && unsynced[i].ino == st->st_ino)
      free(unsynced[i].old);
    else
      unsynced[k++] = unsynced[i];
  }
  n_unsynced = k;
}

static struct unsynced *add_unsynced(enum t_io_kind kind, int fd, uint64_t off, uint64_t len) {
  struct stat st;
  T_ASSERT(fstat(fd, &st) == 0, "fstat: %s", strerror(errno));
  if (n_unsynced == cap_unsynced) {
    cap_unsynced = cap_unsynced ? 2 * cap_unsynced : 64;
    unsynced = realloc(unsynced, cap_unsynced * sizeof *unsynced);
    T_ASSERT(unsynced != NULL, "out of memory");
  }
  struct unsynced *u = &unsynced[n_unsynced++];
  *u = (struct unsynced){
      .dev = st.st_dev, .ino = st.st_ino, .kind = kind, .off = off, .len = len};
  return u;
}

void t_track_unsynced(bool on) {
  tracking = on;
  forget_unsynced();
}

/* keep: -1 loses every unsynced write; 0 or 1 keeps the sectors whose
 * index has that parity (see t_tear_unsynced). */
static void undo_unsynced(const char *path, int keep) {
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  T_ASSERT(fd >= 0, "t_lose_unsynced: open %s: %s", path, strerror(errno));
  struct stat st;
  T_ASSERT(fstat(fd, &st) == 0, "fstat %s: %s", path, strerror(errno));
#define OTHER_FILE(u) ((u)->dev != st.st_dev || (u)->ino != st.st_ino)
  /* Straight to the kernel: these writes are the test's, not the engine's. */
  for (size_t i = n_unsynced; i-- > 0;) {
    const struct unsynced *u = &unsynced[i];
    if (u->kind != T_IO_WRITE || OTHER_FILE(u))
      continue;
    bool grew = u->off + u->len > u->old_size;
    if (keep < 0 || grew) {
      /* A write that grew the file: its size and data go together (a
       * journaling file system does not show a size before its data). */
      if (keep == 1)
        continue;
      T_ASSERT(syscall(SYS_pwrite64, fd, u->old, u->old_len, u->off) == (long)u->old_len,
               "t_lose_unsynced: pwrite %s: %s", path, strerror(errno));
      if (grew)
        T_ASSERT(syscall(SYS_ftruncate, fd, u->old_size) == 0,
                 "t_lose_unsynced: ftruncate %s: %s", path, strerror(errno));
      continue;
    }
    /* Torn: each 512-byte sector it covered holds its new bytes or the old
     * ones, by the parity of its index (the same for every write, so that
     * a sector's content is that of the newest write that reached it). */
    for (uint64_t p = u->off; p < u->off + u->old_len;) {
      uint64_t e = MIN(ROUND_DOWN(p, 512) + 512, u->off + u->old_len);
      if ((int)(p / 512 % 2) != keep)
        T_ASSERT(syscall(SYS_pwrite64, fd, u->old + (p - u->off), e - p, p) == (long)(e - p),
                 "t_tear_unsynced: pwrite %s: %s", path, strerror(errno));
      p = e;
    }
  }
  for (size_t i = 0; i < n_unsynced; i++) {
    const struct unsynced *u = &unsynced[i];
    if (OTHER_FILE(u))
      continue;
    if (u->kind == T_IO_PUNCH)
      T_ASSERT(syscall(SYS_fallocate, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, u->off,
                       u->len) == 0,
               "t_lose_unsynced: punch %s: %s", path, strerror(errno));
    else if (u->kind == T_IO_TRUNCATE)
      T_ASSERT(syscall(SYS_ftruncate, fd, u->len) == 0, "t_lose_unsynced: ftruncate %s: %s", path,
               strerror(errno));
  }
  /* O_DSYNC writes reached the disk, whatever happened around them. */
  for (size_t i = 0; i < n_unsynced; i++) {
    const struct unsynced *u = &unsynced[i];
    if (u->kind == T_IO_WRITE_DSYNC && !OTHER_FILE(u))
      T_ASSERT(syscall(SYS_pwrite64, fd, u->old, u->len, u->off) == (long)u->len,
               "t_lose_unsynced: pwrite %s: %s", path, strerror(errno));
  }
#undef OTHER_FILE
  close(fd);
  forget_unsynced_of(&st);
}

void t_lose_unsynced(const char *path) { undo_unsynced(path, -1); }

void t_tear_unsynced(const char *path, int parity) {
  T_ASSERT(parity == 0 || parity == 1, "t_tear_unsynced: parity %d", parity);
  undo_unsynced(path, parity);
}

/* The bytes a write is about to replace, and the file size before it. */
static void remember_old(int fd, size_t n, off_t off, struct unsynced *u) {
  struct stat st;
  T_ASSERT(fstat(fd, &st) == 0, "fstat: %s", strerror(errno));
  u->old_size = (uint64_t)st.st_size;
  u->old_len = (uint64_t)off < u->old_size ? MIN((uint64_t)n, u->old_size - (uint64_t)off) : 0;
  u->old = t_xmalloc(u->old_len ? u->old_len : 1);
  T_ASSERT(syscall(SYS_pread64, fd, u->old, u->old_len, off) == (long)u->old_len, "pread: %s",
           strerror(errno));
}

static uint64_t dsync_count;

uint64_t t_dsync_write_count(void) { return dsync_count; }

/* After a buffered write of r bytes (or a failure): records what it
 * overwrote as unsynced, taking `before` (the bytes there before), and
 * tells the I/O hook. */
static ssize_t note_write(long r, int fd, const void *buf, off_t off, struct unsynced *before) {
  if (r > 0 && tracking) {
    struct unsynced *u = add_unsynced(T_IO_WRITE, fd, (uint64_t)off, (uint64_t)r);
    u->old = before->old;
    u->old_len = MIN(before->old_len, (uint64_t)r);
    u->old_size = before->old_size;
  } else {
    free(before->old);
  }
  if (r > 0 && io_hook)
    io_hook(io_hook_opaque, T_IO_WRITE, fd, buf, (uint64_t)r, (uint64_t)off);
  return r;
}

static bool pwrite_stall;
static uint64_t stalled_writes;

void t_set_pwrite_stall(bool stall) {
  pwrite_stall = stall;
  stalled_writes = 0;
}
uint64_t t_stalled_writes(void) { return stalled_writes; }

static ssize_t do_pwrite(int fd, const void *buf, size_t n, off_t off) {
  if (pwrite_stall && n > 0) {
    if (++stalled_writes > 100) {
      errno = EDQUOT;
      return -1;
    }
    return 0;
  }
  if (before_hook)
    before_hook(before_hook_opaque, T_OP_WRITE, fd, (uint64_t)n, (uint64_t)off);
  int fl = fcntl(fd, F_GETFL);
  if (fl >= 0 && (fl & O_DSYNC) == O_DSYNC) {
    long r = syscall(SYS_pwrite64, fd, buf, n, off);
    if (r > 0) {
      dsync_count++;
      if (tracking) {
        struct unsynced *u = add_unsynced(T_IO_WRITE_DSYNC, fd, (uint64_t)off, (uint64_t)r);
        u->old = t_xmalloc((size_t)r);
        memcpy(u->old, buf, (size_t)r);
      }
      if (io_hook)
        io_hook(io_hook_opaque, T_IO_WRITE_DSYNC, fd, buf, (uint64_t)r, (uint64_t)off);
    }
    return r;
  }
  struct unsynced before = {0};
  if (tracking)
    remember_old(fd, n, off, &before);
  return note_write(syscall(SYS_pwrite64, fd, buf, n, off), fd, buf, off, &before);
}

ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return do_pwrite(fd, buf, n, off); }
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) {
  return do_pwrite(fd, buf, n, (off_t)off);
}

static enum t_nowait_mode nowait_mode;
static uint64_t nowait_count;

void t_set_nowait_write(enum t_nowait_mode mode) { nowait_mode = mode; }
uint64_t t_nowait_write_count(void) { return nowait_count; }

static ssize_t do_pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags) {
  T_ASSERT(iovcnt == 1, "pwritev2 with %d buffers: the test VFS takes one", iovcnt);
  if (!(flags & RWF_NOWAIT))
    return do_pwrite(fd, iov->iov_base, iov->iov_len, off);
  nowait_count++;
  switch (nowait_mode) {
  case T_NOWAIT_ACCEPT:
    return do_pwrite(fd, iov->iov_base, iov->iov_len, off);
  case T_NOWAIT_SHORT:
    return do_pwrite(fd, iov->iov_base, iov->iov_len > 1 ? iov->iov_len / 2 : 1, off);
  case T_NOWAIT_EAGAIN:
    errno = EAGAIN;
    return -1;
  case T_NOWAIT_KERNEL:
    break;
  }
  if (before_hook)
    before_hook(before_hook_opaque, T_OP_WRITE, fd, (uint64_t)iov->iov_len, (uint64_t)off);
  struct unsynced before = {0};
  if (tracking)
    remember_old(fd, iov->iov_len, off, &before);
  long r = syscall(SYS_pwritev2, fd, iov, iovcnt, (unsigned long)off,
                   (unsigned long)((uint64_t)off >> 32), flags);
  return note_write(r, fd, iov->iov_base, off, &before);
}

ssize_t pwritev2(int fd, const struct iovec *iov, int iovcnt, off_t off, int flags) {
  return do_pwritev2(fd, iov, iovcnt, off, flags);
}
ssize_t pwritev64v2(int fd, const struct iovec *iov, int iovcnt, off64_t off, int flags) {
  return do_pwritev2(fd, iov, iovcnt, (off_t)off, flags);
}

static int do_sync(int fd, long nr) {
  if (real_sync < 0)
    real_sync = getenv("VHD_TEST_REAL_SYNC") != NULL;
  sync_count++;
  long r = real_sync ? syscall(nr, fd) : fcntl(fd, F_GETFD) < 0 ? -1 : 0;
  struct stat st;
  if (r == 0 && fstat(fd, &st) == 0)
    forget_unsynced_of(&st); /* a file's sync makes only its own writes durable */
  if (r == 0 && io_hook)
    io_hook(io_hook_opaque, T_IO_SYNC, fd, NULL, 0, 0);
  return (int)r;
}

int fdatasync(int fd) { return do_sync(fd, SYS_fdatasync); }
int fsync(int fd) { return do_sync(fd, SYS_fsync); }

static bool punch_unsupported;

void t_set_punch_unsupported(bool unsupported) { punch_unsupported = unsupported; }

static int do_fallocate(int fd, int mode, off_t off, off_t len) {
  if ((mode & FALLOC_FL_PUNCH_HOLE) && before_hook)
    before_hook(before_hook_opaque, T_OP_PUNCH, fd, (uint64_t)len, (uint64_t)off);
  if ((mode & FALLOC_FL_PUNCH_HOLE) && punch_unsupported) {
    errno = EOPNOTSUPP;
    return -1;
  }
  long r = syscall(SYS_fallocate, fd, mode, off, len);
  if (r == 0 && (mode & FALLOC_FL_PUNCH_HOLE) && tracking)
    add_unsynced(T_IO_PUNCH, fd, (uint64_t)off, (uint64_t)len);
  if (r == 0 && (mode & FALLOC_FL_PUNCH_HOLE) && io_hook)
    io_hook(io_hook_opaque, T_IO_PUNCH, fd, NULL, (uint64_t)len, (uint64_t)off);
  return (int)r;
}

int fallocate(int fd, int mode, off_t off, off_t len) { return do_fallocate(fd, mode, off, len); }
int fallocate64(int fd, int mode, off64_t off, off64_t len) {
  return do_fallocate(fd, mode, (off_t)off, (off_t)len);
}

static int do_ftruncate(int fd, off_t len) {
  long r = syscall(SYS_ftruncate, fd, len);
  if (r == 0 && tracking)
    add_unsynced(T_IO_TRUNCATE, fd, 0, (uint64_t)len);
  if (r == 0 && io_hook)
    io_hook(io_hook_opaque, T_IO_TRUNCATE, fd, NULL, (uint64_t)len, 0);
  return (int)r;
}

int ftruncate(int fd, off_t len) { return do_ftruncate(fd, len); }
int ftruncate64(int fd, off64_t len) { return do_ftruncate(fd, (off_t)len); }

/* Readahead advice, recorded for t_readahead_take. */
static pthread_mutex_t advice_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t advised[T_READAHEAD_MAX];
static size_t n_advised;

static int do_fadvise(int fd, off_t off, off_t len, int advice) {
  if (advice == POSIX_FADV_WILLNEED) {
    pthread_mutex_lock(&advice_mu);
    if (n_advised < T_READAHEAD_MAX)
      advised[n_advised++] = (uint64_t)off;
    pthread_mutex_unlock(&advice_mu);
  }
  return syscall(SYS_fadvise64, fd, off, len, advice) < 0 ? errno : 0;
}

int posix_fadvise(int fd, off_t off, off_t len, int advice) {
  return do_fadvise(fd, off, len, advice);
}
int posix_fadvise64(int fd, off64_t off, off64_t len, int advice) {
  return do_fadvise(fd, (off_t)off, (off_t)len, advice);
}

size_t t_readahead_take(uint64_t *offs) {
  pthread_mutex_lock(&advice_mu);
  size_t n = n_advised;
  memcpy(offs, advised, n * sizeof *offs);
  n_advised = 0;
  pthread_mutex_unlock(&advice_mu);
  return n;
}

/* The held thread (t_hold_start). */
static pthread_mutex_t hold_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hold_cv = PTHREAD_COND_INITIALIZER;
static pthread_t hold_thread;
static bool hold_armed, hold_entered, hold_released;
static enum t_io_op hold_op;
static uint64_t hold_len;

static void hold_hook(void *opaque, enum t_io_op op, int fd, uint64_t len, uint64_t off) {
  (void)opaque, (void)fd, (void)off;
  if (op != hold_op || (hold_len && len != hold_len))
    return;
  pthread_mutex_lock(&hold_mu);
  if (hold_armed && pthread_equal(pthread_self(), hold_thread)) {
    hold_armed = false;
    hold_entered = true;
    pthread_cond_broadcast(&hold_cv);
    while (!hold_released)
      pthread_cond_wait(&hold_cv, &hold_mu);
  }
  pthread_mutex_unlock(&hold_mu);
}

void t_hold_start(enum t_io_op op, uint64_t len, void *(*fn)(void *), void *arg) {
  hold_op = op;
  hold_len = len;
  hold_armed = true;
  hold_entered = hold_released = false;
  t_set_io_before_hook(hold_hook, NULL);
  pthread_mutex_lock(&hold_mu); /* hold_thread is set before the thread can look */
  T_ASSERT(pthread_create(&hold_thread, NULL, fn, arg) == 0, "pthread_create");
  while (!hold_entered)
    pthread_cond_wait(&hold_cv, &hold_mu);
  pthread_mutex_unlock(&hold_mu);
}

void t_hold_release(void) {
  pthread_mutex_lock(&hold_mu);
  hold_released = true;
  pthread_cond_broadcast(&hold_cv);
  pthread_mutex_unlock(&hold_mu);
  T_ASSERT(pthread_join(hold_thread, NULL) == 0, "pthread_join");
  t_set_io_before_hook(NULL, NULL);
}
