/* test-vhd-open.c: vhd_open on damaged and hostile images, and image locking.
 *
 * A good dynamic image is made with vhd_create and written through the
 * engine; each case damages one field of a copy (fixing up checksums where
 * the point is the field, not the checksum) and requires vhd_open to refuse
 * it with a negative errno and a message naming the file and the field, or,
 * for a damaged trailing footer, to open it from the copy at offset 0 with a
 * warning.
 */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <strings.h>
#include <limits.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cleanup.h"
#include "endian-be.h"
#include "testutil.h"
#include "vhd.h"

static uint8_t *good;           /* the good image's bytes */
static uint64_t good_len;
static char good_path[4096];
static uint8_t *good_content;   /* what the good image reads as */
static uint64_t vsize;
/* Where its structures are, found from the file itself. */
static uint64_t hdr_off, bat_off;
static uint32_t bat_entries, block_size;

struct warnings {
  unsigned n;
  char last[1024];
};

static void on_warn(void *opaque, const char *msg) {
  struct warnings *w = opaque;
  w->n++;
  snprintf(w->last, sizeof w->last, "%s", msg);
}

/* Ones' complement of the byte sum, checksum field counted as zero: the
 * spec's algorithm, written here so that the test does not trust the engine's. */
static void fix_checksum(uint8_t *raw, size_t len, size_t csum_off) {
  uint32_t sum = 0;
  for (size_t i = 0; i < len; i++)
    if (i < csum_off || i >= csum_off + 4)
      sum += raw[i];
  be32_store(raw + csum_off, ~sum);
}

static void fix_footers(uint8_t *img, uint64_t len) {
  fix_checksum(img, 512, 64);
  fix_checksum(img + len - 512, 512, 64);
}

static void fix_header(uint8_t *img) { fix_checksum(img + hdr_off, 1024, 36); }

static bool mentions_any(const char *msg, const char *words) {
  /* words: '|'-separated alternatives, matched without case. */
  char buf[256];
  snprintf(buf, sizeof buf, "%s", words);
  char *save = NULL;
  for (char *w = strtok_r(buf, "|", &save); w; w = strtok_r(NULL, "|", &save))
    if (strcasestr(msg, w))
      return true;
  return false;
}

static const char *write_case(const char *name, const uint8_t *img, uint64_t len) {
  const char *p = t_path(t_fmt("%s.vhd", name));
  int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  T_ASSERT(fd >= 0, "create %s: %s", p, strerror(errno));
  T_ASSERT(write(fd, img, (size_t)len) == (ssize_t)len, "write %s: %s", p, strerror(errno));
  close(fd);
  return p;
}

/* The case image must not open; the message must name the file and one of `words`. */
static void expect_refused(const char *name, const uint8_t *img, uint64_t len,
                           const char *words) {
  char path[4096];
  snprintf(path, sizeof path, "%s", write_case(name, img, len));
  struct warnings w = {0};
  struct vhd_open_opts o = {.flags = VHD_OPEN_RDONLY, .warn = on_warn, .warn_opaque = &w};
  struct vhd_err err = {{0}};
  vhd_t *v = (vhd_t *)&w; /* must be reset to NULL */
  int r = vhd_open(path, &o, &v, &err);
  if (r >= 0) {
    vhd_close(v, &err);
    t_fail("%s: vhd_open accepted the damaged image (warnings: %u, last: %s)", name, w.n, w.last);
  }
  T_ASSERT(v == NULL, "%s: failed open left a handle", name);
  T_ASSERT(r != -ENOMEM && r != -ENOENT, "%s: unexpected error %d (%s): %s", name, r, t_strerr(r),
           err.msg);
  T_ASSERT(strstr(err.msg, path) != NULL, "%s: message does not name the file: %s", name,
           err.msg);
  T_ASSERT(mentions_any(err.msg, words), "%s: message does not mention %s: %s", name, words,
           err.msg);
  printf("ok %s: %s\n", name, err.msg);
  /* vhd_check must not call it clean either. */
  struct vhd_check_opts co = {0};
  r = vhd_check(path, &co, &err);
  T_ASSERT(r < 0 || (r & VHD_CHECK_CORRUPT), "%s: vhd_check returned %d on a damaged image", name,
           r);
}

static void make_good(void) {
  snprintf(good_path, sizeof good_path, "%s", t_path("good.vhd"));
  t_create(good_path, VHD_TYPE_DYNAMIC, (1u << 20) + 3 * 512, 4096, true, NULL);
  vhd_t *v = t_open(good_path, false);
  vsize = vhd_virtual_size(v);
  struct vhd_err err = {{0}};
  uint8_t buf[6000];
  /* Blocks 0, 1 and 5 (the write straddles 0 and 1), and the last block. */
  static const uint64_t offs[] = {1000, 5 * 4096 + 17};
  for (size_t i = 0; i < ARRAY_SIZE(offs); i++) {
    t_fill_nonzero(buf, sizeof buf);
    T_OK(vhd_write(v, buf, offs[i], 4000, 0, &err), &err, "vhd_write");
  }
  T_OK(vhd_write(v, buf, vsize - 700, 700, 0, &err), &err, "vhd_write at the end");
  good_content = t_xmalloc(vsize);
  T_OK(vhd_read(v, good_content, 0, vsize, &err), &err, "vhd_read");
  T_OK(vhd_close(v, &err), &err, "vhd_close");

  good_len = t_file_size(good_path);
  good = t_xmalloc(good_len);
  t_pread_file(good_path, good, good_len, 0);
  const uint8_t *foot = good + good_len - 512;
  T_ASSERT(memcmp(foot, "conectix", 8) == 0, "no trailing footer");
  T_ASSERT(memcmp(good, foot, 512) == 0, "the footer copy at 0 differs from the trailing footer");
  hdr_off = be64_load(foot + 16);
  T_ASSERT(hdr_off + 1024 <= good_len && memcmp(good + hdr_off, "cxsparse", 8) == 0,
           "no dynamic header at %" PRIu64, hdr_off);
  bat_off = be64_load(good + hdr_off + 16);
  bat_entries = be32_load(good + hdr_off + 28);
  block_size = be32_load(good + hdr_off + 32);
  T_ASSERT(block_size == 4096, "block size %u", block_size);
  T_ASSERT(bat_entries >= DIV_ROUND_UP(vsize, 4096), "%u BAT entries", bat_entries);
  /* The checksums this test writes agree with the engine's. */
  CLEANUP_FREE uint8_t *copy = t_xmalloc(good_len);
  memcpy(copy, good, good_len);
  fix_footers(copy, good_len);
  fix_header(copy);
  T_ASSERT(memcmp(copy, good, good_len) == 0, "recomputed checksums differ from the engine's");
  unsigned allocated = 0;
  for (uint32_t i = 0; i < bat_entries; i++)
    if (be32_load(good + bat_off + 4 * i) != 0xffffffffu)
      allocated++;
  T_ASSERT(allocated == 4, "%u blocks allocated, expected 4", allocated);
}

static uint8_t *fresh_copy(void) {
  uint8_t *c = t_xmalloc(good_len);
  memcpy(c, good, good_len);
  return c;
}

static void test_footer_copy(void) {
  /* Only the trailing footer damaged: the copy at 0 serves, with a warning. */
  CLEANUP_FREE uint8_t *img = fresh_copy();
  img[good_len - 512 + 200] ^= 0x5a; /* reserved byte: checksum now wrong */
  char path[4096];
  snprintf(path, sizeof path, "%s", write_case("trailing-footer-checksum", img, good_len));
  struct warnings w = {0};
  struct vhd_open_opts o = {.flags = VHD_OPEN_RDONLY, .warn = on_warn, .warn_opaque = &w};
  struct vhd_err err = {{0}};
  vhd_t *v = NULL;
  int r = vhd_open(path, &o, &v, &err);
  if (r < 0)
    t_fail("damaged trailing footer with a good copy: vhd_open: %s: %s", t_strerr(r), err.msg);
  struct vhd_info info;
  vhd_get_info(v, &info);
  T_ASSERT(info.footer_copy_used, "footer_copy_used not set");
  T_ASSERT(w.n >= 1 && mentions_any(w.last, "footer") && mentions_any(w.last, "checksum"),
           "expected a warning about the footer checksum, got %u: %s", w.n, w.last);
  CLEANUP_FREE uint8_t *buf = t_xmalloc(vsize);
  T_OK(vhd_read(v, buf, 0, vsize, &err), &err, "vhd_read");
  T_ASSERT(memcmp(buf, good_content, vsize) == 0, "content differs when read via the footer copy");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  printf("ok trailing-footer-checksum: %s\n", w.last);

  /* Without a warn callback it opens all the same. */
  v = NULL;
  struct vhd_open_opts quiet = {.flags = VHD_OPEN_RDONLY};
  T_OK(vhd_open(path, &quiet, &v, &err), &err, "vhd_open without warn callback");
  T_OK(vhd_close(v, &err), &err, "vhd_close");

  /* check reports it, repair rewrites it, and then it opens silently. */
  struct vhd_check_opts co = {0};
  r = vhd_check(path, &co, &err);
  T_ASSERT(r > 0, "vhd_check found nothing wrong with a damaged trailing footer (%d)", r);
  co.repair = true;
  r = vhd_check(path, &co, &err);
  T_ASSERT(r >= 0 && (r & VHD_CHECK_REPAIRED), "vhd_check --repair returned %d: %s", r, err.msg);
  co.repair = false;
  r = vhd_check(path, &co, &err);
  T_ASSERT(r == 0, "after repair vhd_check returned %d", r);
  w.n = 0;
  v = NULL;
  T_OK(vhd_open(path, &o, &v, &err), &err, "vhd_open after repair");
  vhd_get_info(v, &info);
  T_ASSERT(!info.footer_copy_used && w.n == 0, "still using the copy after repair (%u warnings)",
           w.n);
  T_OK(vhd_read(v, buf, 0, vsize, &err), &err, "vhd_read");
  T_ASSERT(memcmp(buf, good_content, vsize) == 0, "content differs after repair");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  printf("ok trailing footer repaired\n");

  /* The trailing footer lost whole: the file ends with its last block,
   * whose data stands where a damaged footer would.  It opens through the
   * copy, reads the same, and the repair puts the footer back after it. */
  snprintf(path, sizeof path, "%s", write_case("trailing-footer-lost", good, good_len - 512));
  v = NULL;
  T_OK(vhd_open(path, &quiet, &v, &err), &err, "vhd_open without its trailing footer");
  vhd_get_info(v, &info);
  T_ASSERT(info.footer_copy_used, "footer_copy_used not set without a trailing footer");
  T_OK(vhd_read(v, buf, 0, vsize, &err), &err, "vhd_read");
  T_ASSERT(memcmp(buf, good_content, vsize) == 0, "content differs without the trailing footer");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  co.repair = true;
  r = vhd_check(path, &co, &err);
  T_ASSERT(r >= 0 && (r & VHD_CHECK_REPAIRED), "vhd_check --repair of a file without its "
           "trailing footer returned %d: %s", r, err.msg);
  co.repair = false;
  r = vhd_check(path, &co, &err);
  T_ASSERT(r == 0 && t_file_size(path) == good_len,
           "after the repair vhd_check returned %d, the file is %" PRIu64 " bytes (was %" PRIu64
           ")", r, t_file_size(path), good_len);
  v = NULL;
  T_OK(vhd_open(path, &quiet, &v, &err), &err, "vhd_open after the repair");
  T_OK(vhd_read(v, buf, 0, vsize, &err), &err, "vhd_read");
  T_ASSERT(memcmp(buf, good_content, vsize) == 0, "content differs after the repair");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  printf("ok trailing footer lost whole: opened through the copy and repaired\n");
}

static void test_damaged(void) {
  uint8_t *img;

  img = fresh_copy();
  img[good_len - 512 + 200] ^= 0x5a;
  img[200] ^= 0x5a;
  expect_refused("both-footer-checksums", img, good_len, "checksum");
  free(img);

  img = fresh_copy();
  memcpy(img + good_len - 512, "conectiy", 8);
  memcpy(img, "conectiy", 8);
  fix_footers(img, good_len);
  expect_refused("footer-cookies", img, good_len, "cookie|conectix");
  free(img);

  img = fresh_copy();
  be32_store(img + 60, 5);
  be32_store(img + good_len - 512 + 60, 5);
  fix_footers(img, good_len);
  expect_refused("disk-type-5", img, good_len, "disk type");
  free(img);

  img = fresh_copy();
  be64_store(img + 16, good_len + 4096);
  be64_store(img + good_len - 512 + 16, good_len + 4096);
  fix_footers(img, good_len);
  expect_refused("data-offset-beyond-eof", img, good_len, "data offset|header");
  free(img);

  img = fresh_copy();
  memcpy(img + hdr_off, "cxsparsf", 8);
  fix_header(img);
  expect_refused("header-cookie", img, good_len, "cookie|cxsparse");
  free(img);

  img = fresh_copy();
  img[hdr_off + 900] ^= 1;
  expect_refused("header-checksum", img, good_len, "checksum");
  free(img);

  img = fresh_copy();
  be32_store(img + hdr_off + 32, 3000);
  fix_header(img);
  expect_refused("block-size-3000", img, good_len, "block size");
  free(img);

  img = fresh_copy();
  be32_store(img + hdr_off + 32, 0);
  fix_header(img);
  expect_refused("block-size-0", img, good_len, "block size");
  free(img);

  img = fresh_copy();
  be32_store(img + hdr_off + 28, 0xffffffffu);
  fix_header(img);
  expect_refused("max-table-entries-huge", img, good_len, "table entries|max_table_entries");
  free(img);

  img = fresh_copy();
  be32_store(img + hdr_off + 28, 3);
  fix_header(img);
  expect_refused("max-table-entries-too-few", img, good_len, "table entries|max_table_entries");
  free(img);

  img = fresh_copy();
  be64_store(img + hdr_off + 16, good_len + 4096);
  fix_header(img);
  expect_refused("bat-beyond-eof", img, good_len, "BAT|table offset");
  free(img);

  img = fresh_copy();
  be64_store(img + hdr_off + 16, hdr_off);
  fix_header(img);
  expect_refused("bat-on-header", img, good_len, "overlap");
  free(img);

  /* Two BAT entries naming one block. */
  img = fresh_copy();
  memcpy(img + bat_off + 4 * 1, img + bat_off + 4 * 0, 4);
  expect_refused("bat-duplicate", img, good_len, "overlap");
  free(img);

  /* A block on top of the dynamic header. */
  img = fresh_copy();
  be32_store(img + bat_off + 4 * 2, (uint32_t)(hdr_off / 512));
  expect_refused("bat-entry-in-header", img, good_len, "overlap");
  free(img);

  /* A block on top of the BAT. */
  img = fresh_copy();
  be32_store(img + bat_off + 4 * 3, (uint32_t)(bat_off / 512));
  expect_refused("bat-entry-in-bat", img, good_len, "overlap");
  free(img);

  /* A block past the end of the file. */
  img = fresh_copy();
  be32_store(img + bat_off + 4 * 7, (uint32_t)(good_len / 512 + 10));
  expect_refused("bat-entry-beyond-eof", img, good_len, "BAT entry|end");
  free(img);

  /* Half-sized blocks: a block straddles the next one.  Block 1 is set
   * half a block into block 0, whatever gap alignment left between them. */
  img = fresh_copy();
  uint32_t b0 = be32_load(img + bat_off + 4 * 0);
  be32_store(img + bat_off + 4 * 1, b0 + 4);
  expect_refused("bat-entry-overlapping-next", img, good_len, "overlap");
  free(img);

  /* Truncations. */
  expect_refused("empty-file", good, 0, "small|size|footer");
  expect_refused("truncated-300", good, 300, "small|size|footer");
  /* The trailing footer and half of the last block gone: the copy at 0
   * serves, and then the last block runs past the end. */
  expect_refused("truncated-last-block", good, good_len - 512 - 2048, "BAT entry|end");
}

static void test_fixed_damaged(void) {
  const char *p = t_path("fixed.vhd");
  char path[4096];
  snprintf(path, sizeof path, "%s", p);
  t_create(path, VHD_TYPE_FIXED, 64 * 1024, 0, true, NULL);
  uint64_t len = t_file_size(path);
  T_ASSERT(len == 64 * 1024 + 512, "fixed image of %" PRIu64 " bytes", len);
  CLEANUP_FREE uint8_t *img = t_xmalloc(len);
  t_pread_file(path, img, len, 0);
  /* A footer claiming more data than the file holds. */
  be64_store(img + len - 512 + 48, 128 * 1024);
  fix_checksum(img + len - 512, 512, 64);
  expect_refused("fixed-size-beyond-file", img, len, "size");
  /* No footer at all: a fixed disk has no copy to fall back on. */
  t_pread_file(path, img, len, 0);
  expect_refused("fixed-footer-cut", img, len - 512, "cookie|footer|checksum");
  t_pread_file(path, img, len, 0);
  img[len - 512 + 300] ^= 1;
  expect_refused("fixed-footer-checksum", img, len, "checksum");
}

/* ---- locking ---- */

static int try_open(const char *path, unsigned flags, vhd_t **v, struct vhd_err *err) {
  struct vhd_open_opts o = {.flags = flags};
  *v = NULL;
  return vhd_open(path, &o, v, err);
}

static void expect_locked(const char *path, unsigned flags, const char *what) {
  vhd_t *v;
  struct vhd_err err = {{0}};
  int r = try_open(path, flags, &v, &err);
  if (r >= 0) {
    vhd_close(v, &err);
    t_fail("%s: the second open succeeded", what);
  }
  T_ASSERT(r == -EBUSY || r == -EAGAIN, "%s: error %d (%s), expected EBUSY or EAGAIN: %s", what,
           r, t_strerr(r), err.msg);
  T_ASSERT(mentions_any(err.msg, "lock"), "%s: message does not mention the lock: %s", what,
           err.msg);
  printf("ok %s: %s\n", what, err.msg);
}

static vhd_t *expect_opens(const char *path, unsigned flags, const char *what) {
  vhd_t *v;
  struct vhd_err err = {{0}};
  int r = try_open(path, flags, &v, &err);
  if (r < 0)
    t_fail("%s: vhd_open: %s: %s", what, t_strerr(r), err.msg);
  return v;
}

static void close_ok(vhd_t *v) {
  struct vhd_err err = {{0}};
  T_OK(vhd_close(v, &err), &err, "vhd_close");
}

static void test_locking(void) {
  const char *p = good_path;
  /* OFD locks belong to the open file description: two opens in one
   * process conflict just as two processes would. */
  vhd_t *a = expect_opens(p, 0, "first read-write open");
  expect_locked(p, 0, "second read-write open");
  expect_locked(p, VHD_OPEN_RDONLY, "read-only open of an image open read-write");
  vhd_t *nolock = expect_opens(p, VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK, "read-only open without lock");
  close_ok(nolock);
  close_ok(a);
  a = expect_opens(p, 0, "read-write open after the first closed");
  close_ok(a);

  vhd_t *r1 = expect_opens(p, VHD_OPEN_RDONLY, "first read-only open");
  vhd_t *r2 = expect_opens(p, VHD_OPEN_RDONLY, "second read-only open");
  expect_locked(p, 0, "read-write open of an image open read-only");
  close_ok(r1);
  expect_locked(p, 0, "read-write open with one reader left");
  close_ok(r2);
  a = expect_opens(p, 0, "read-write open after the readers closed");
  close_ok(a);

  /* A parent in use by an open child is read-locked through it. */
  char child[4096];
  snprintf(child, sizeof child, "%s", t_path("child.vhd"));
  t_create(child, VHD_TYPE_DIFFERENCING, 0, 4096, false, p);
  vhd_t *c = expect_opens(child, 0, "child read-write open");
  expect_locked(p, 0, "read-write open of the parent of an open child");
  vhd_t *pr = expect_opens(p, VHD_OPEN_RDONLY, "read-only open of the parent of an open child");
  close_ok(pr);
  close_ok(c);
  a = expect_opens(p, 0, "read-write open of the parent after the child closed");
  /* Without a lock, a child opens even while its parent is open for
   * writing: the parent is not read-locked through it either. */
  c = expect_opens(child, VHD_OPEN_RDONLY | VHD_OPEN_NOLOCK,
                   "child open without lock while its parent is open read-write");
  T_ASSERT(vhd_parent(c) != NULL, "child opened without lock has no parent");
  close_ok(c);
  close_ok(a);
}

/* ---- differencing chains ---- */

/* vhd_open in a child process with a time limit: a hostile chain must fail,
 * and fail fast.  Returns the open's result; the message goes to msg. */
static int open_bounded(const char *path, unsigned flags, char *msg, size_t msg_len,
                        unsigned seconds) {
  int pipefd[2];
  T_ASSERT(pipe(pipefd) == 0, "pipe: %s", strerror(errno));
  fflush(NULL);
  pid_t pid = fork();
  T_ASSERT(pid >= 0, "fork: %s", strerror(errno));
  if (pid == 0) {
    close(pipefd[0]);
    alarm(seconds);
    vhd_t *v = NULL;
    struct vhd_err err = {{0}};
    struct vhd_open_opts o = {.flags = flags};
    int r = vhd_open(path, &o, &v, &err);
    if (r == 0)
      vhd_close(v, &err);
    char out[sizeof err.msg + 16];
    int n = snprintf(out, sizeof out, "%d %s", r, err.msg);
    if (write(pipefd[1], out, (size_t)n) < 0)
      _exit(2);
    _exit(0);
  }
  close(pipefd[1]);
  char buf[2048];
  size_t got = 0;
  ssize_t n;
  while (got < sizeof buf - 1 && (n = read(pipefd[0], buf + got, sizeof buf - 1 - got)) > 0)
    got += (size_t)n;
  buf[got] = '\0';
  close(pipefd[0]);
  int status;
  T_ASSERT(waitpid(pid, &status, 0) == pid, "waitpid: %s", strerror(errno));
  if (WIFSIGNALED(status))
    t_fail("vhd_open %s did not return within %u s (killed by signal %d)", path, seconds,
           WTERMSIG(status));
  T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0 && got > 0,
           "vhd_open %s: the child process failed", path);
  char *sp = strchr(buf, ' ');
  snprintf(msg, msg_len, "%s", sp ? sp + 1 : "");
  return atoi(buf);
}

static void test_chains(void) {
  char parent[4096], child[4096], moved[4096];
  snprintf(parent, sizeof parent, "%s", t_path("chain-parent.vhd"));
  snprintf(child, sizeof child, "%s", t_path("chain-child.vhd"));
  snprintf(moved, sizeof moved, "%s", t_path("chain-parent-moved.vhd"));
  t_create(parent, VHD_TYPE_DYNAMIC, 1u << 20, 4096, true, NULL);
  t_create(child, VHD_TYPE_DIFFERENCING, 0, 4096, false, parent);
  vhd_t *v = t_open(child, true);
  T_ASSERT(vhd_parent(v) != NULL, "child opened without its parent");
  struct vhd_err err = {{0}};
  T_OK(vhd_close(v, &err), &err, "vhd_close");

  /* The parent gone: refused, naming the parent; NOPARENT still opens. */
  T_ASSERT(rename(parent, moved) == 0, "rename: %s", strerror(errno));
  char msg[1100];
  int r = open_bounded(child, VHD_OPEN_RDONLY, msg, sizeof msg, 20);
  T_ASSERT(r < 0, "a child without its parent opened");
  T_ASSERT(mentions_any(msg, "parent") && strstr(msg, child),
           "missing parent: the message names neither the child nor the parent: %s", msg);
  printf("ok missing parent: %s\n", msg);
  struct vhd_open_opts np = {.flags = VHD_OPEN_RDONLY | VHD_OPEN_NOPARENT};
  v = NULL;
  T_OK(vhd_open(child, &np, &v, &err), &err, "vhd_open with VHD_OPEN_NOPARENT");
  T_ASSERT(vhd_parent(v) == NULL, "VHD_OPEN_NOPARENT opened a parent");
  T_ASSERT(vhd_get_type(v) == VHD_TYPE_DIFFERENCING, "type %d", (int)vhd_get_type(v));
  T_OK(vhd_close(v, &err), &err, "vhd_close");

  /* Another image under the parent's name: a different unique id. */
  t_create(parent, VHD_TYPE_DYNAMIC, 1u << 20, 4096, true, NULL);
  r = open_bounded(child, VHD_OPEN_RDONLY, msg, sizeof msg, 20);
  T_ASSERT(r < 0, "a child opened over an impostor parent");
  T_ASSERT(mentions_any(msg, "unique id|uuid|identifier"),
           "impostor parent: the message does not mention the unique id: %s", msg);
  printf("ok impostor parent: %s\n", msg);
  T_ASSERT(rename(moved, parent) == 0, "rename: %s", strerror(errno));
  v = t_open(child, true);
  T_OK(vhd_close(v, &err), &err, "vhd_close");

}

#ifdef OPEN_SELF_PARENT
/* A child that is its own parent: its locators name its own file and its
 * parent unique id is its own.  Refused, in bounded time.  Built as
 * test-vhd-open-loop: vhd_open retries every candidate path at every level,
 * so this takes (candidates)^32 opens today. */
static void test_self_parent(void) {
  char msg[1100];
  int r;
  char loop[4096];
  snprintf(loop, sizeof loop, "%s", t_path("chain-loop.vhd"));
  t_create(loop, VHD_TYPE_DYNAMIC, 1u << 20, 4096, true, NULL);
  char loop_child[4096];
  snprintf(loop_child, sizeof loop_child, "%s", t_path("chain-loop-child.vhd"));
  t_create(loop_child, VHD_TYPE_DIFFERENCING, 0, 4096, false, loop);
  uint64_t len = t_file_size(loop_child);
  CLEANUP_FREE uint8_t *img = t_xmalloc(len);
  t_pread_file(loop_child, img, len, 0);
  uint64_t h = be64_load(img + len - 512 + 16);
  memcpy(img + h + 40, img + len - 512 + 68, 16); /* parent uuid := own uuid */
  fix_checksum(img + h, 1024, 36);
  unlink(loop);
  int fd = open(loop, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  T_ASSERT(fd >= 0 && write(fd, img, len) == (ssize_t)len, "write %s", loop);
  close(fd);
  r = open_bounded(loop, VHD_OPEN_RDONLY, msg, sizeof msg, 20);
  T_ASSERT(r < 0, "a self-parented image opened");
  T_ASSERT(mentions_any(msg, "loop|deep|depth|chain|cycle"),
           "self-parented: the message does not mention the loop: %s", msg);
  printf("ok self-parented image: %s\n", msg);
}
#endif

/* ---- the size rule ---- */

static void set_creator(const char *path, const char *creator) {
  uint64_t len = t_file_size(path);
  CLEANUP_FREE uint8_t *img = t_xmalloc(len);
  t_pread_file(path, img, len, 0);
  memcpy(img + 28, creator, 4);
  memcpy(img + len - 512 + 28, creator, 4);
  fix_footers(img, len);
  t_pwrite_file(path, img, len, 0);
}

static uint64_t size_with(const char *path, enum vhd_size_rule rule) {
  struct vhd_open_opts o = {.flags = VHD_OPEN_RDONLY, .size_rule = rule};
  struct vhd_err err = {{0}};
  vhd_t *v = NULL;
  T_OK(vhd_open(path, &o, &v, &err), &err, "vhd_open");
  uint64_t s = vhd_virtual_size(v);
  struct vhd_info info;
  vhd_get_info(v, &info);
  T_ASSERT(info.virtual_size == s, "info.virtual_size %" PRIu64 " != %" PRIu64,
           info.virtual_size, s);
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  return s;
}

static void test_size_rule(void) {
  char p[4096];
  snprintf(p, sizeof p, "%s", t_path("size-rule.vhd"));
  uint64_t cur = (10u << 20) + 512;
  t_create(p, VHD_TYPE_DYNAMIC, cur, 0, true, NULL);
  vhd_t *v = t_open(p, true);
  struct vhd_info info;
  vhd_get_info(v, &info);
  struct vhd_err err = {{0}};
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  uint64_t chs = info.chs_size;
  T_ASSERT(info.current_size == cur && chs > 0 && chs < cur,
           "an exact-size image of %" PRIu64 " has current %" PRIu64 " and CHS %" PRIu64, cur,
           info.current_size, chs);
  T_ASSERT(size_with(p, VHD_SIZE_AUTO) == cur, "AUTO on our own image is not the current size");
  T_ASSERT(size_with(p, VHD_SIZE_CURRENT) == cur, "CURRENT");
  T_ASSERT(size_with(p, VHD_SIZE_CHS) == chs, "CHS");
  /* Virtual PC and Virtual Server images showed the guest CHS... */
  set_creator(p, "vpc ");
  T_ASSERT(size_with(p, VHD_SIZE_AUTO) == chs, "AUTO on a \"vpc \" image is not the CHS size");
  T_ASSERT(size_with(p, VHD_SIZE_CURRENT) == cur, "CURRENT on a \"vpc \" image");
  set_creator(p, "vs  ");
  T_ASSERT(size_with(p, VHD_SIZE_AUTO) == chs, "AUTO on a \"vs  \" image is not the CHS size");
  /* ...every later writer means the current size. */
  static const char *later[] = {"win ", "qem2", "d2v\0", "vbox", "tap\0", "qemu"};
  for (size_t i = 0; i < ARRAY_SIZE(later); i++) {
    set_creator(p, later[i]);
    T_ASSERT(size_with(p, VHD_SIZE_AUTO) == cur, "AUTO on a \"%.4s\" image is not the current size",
             later[i]);
  }
  printf("ok size rule: current %" PRIu64 ", CHS %" PRIu64 "\n", cur, chs);
}

/* A dynamic disk whose header's locator entries hold what another writer
 * left there (the format gives a dynamic disk none): a room of 2 TiB must
 * not push new blocks past the limit, nor anything else change. */
static void test_dynamic_locator_junk(void) {
  CLEANUP_FREE uint8_t *img = fresh_copy();
  uint8_t *e = img + hdr_off + 576;
  be32_store(e, 0x57326B75);      /* "W2ku" */
  be32_store(e + 4, 0xFFFFFFFEu); /* less than the length: sectors, 2 TiB */
  be32_store(e + 8, 0xFFFFFFFFu);
  be64_store(e + 16, 512);
  fix_header(img);
  char path[4096];
  snprintf(path, sizeof path, "%s", write_case("dynamic-locator-junk", img, good_len));
  vhd_t *v = t_open(path, false);
  struct vhd_err err = {{0}};
  uint8_t buf[4096];
  t_fill_nonzero(buf, sizeof buf);
  uint64_t at = 9 * 4096; /* a block never allocated */
  T_OK(vhd_write(v, buf, at, sizeof buf, 0, &err), &err,
       "writing a new block of a dynamic disk with junk locator entries");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  T_ASSERT(t_file_size(path) < good_len + (1u << 20), "the file grew to %" PRIu64 " bytes",
           t_file_size(path));
  int c = t_check(path);
  T_ASSERT(!(c & VHD_CHECK_CORRUPT), "vhd_check says 0x%x", c);
  v = t_open(path, true);
  CLEANUP_FREE uint8_t *all = t_xmalloc(vsize);
  T_OK(vhd_read(v, all, 0, vsize, &err), &err, "vhd_read");
  vhd_close(v, NULL);
  CLEANUP_FREE uint8_t *want = t_xmalloc(vsize);
  memcpy(want, good_content, vsize);
  memcpy(want + at, buf, sizeof buf);
  T_ASSERT(memcmp(all, want, vsize) == 0,
           "a dynamic disk with junk locator entries reads other data than written");
  printf("ok dynamic disk with junk locator entries: a new block is written in place\n");
}

/* A differencing child whose first locator (W2ru) points past the end of
 * its data: once just past the footer, where the next new block goes, once
 * far past the 2 TiB a BAT entry reaches.  The child opens from its other
 * locator with a warning naming the entry; a new block keeps clear of the
 * stale entry's room (the next open would refuse the entry as overlapping
 * it), and the far one does not push new blocks out.  An entry whose data
 * starts inside the file and runs past its end is refused: grown over, the
 * file would hold it across what lies there. */
static void test_locator_past_end(void) {
  static const uint64_t far = 1ull << 50;
  for (int round = 0; round < 3; round++) {
    char parent[4096], child[4096];
    snprintf(parent, sizeof parent, "%s", t_path("stale-loc-parent.vhd"));
    snprintf(child, sizeof child, "%s", t_path("stale-loc-child.vhd"));
    unlink(parent);
    unlink(child);
    t_create(parent, VHD_TYPE_DYNAMIC, 1u << 20, 4096, true, NULL);
    uint8_t pdata[8192];
    t_fill_nonzero(pdata, sizeof pdata);
    vhd_t *v = t_open(parent, false);
    struct vhd_err err = {{0}};
    T_OK(vhd_write(v, pdata, 0, sizeof pdata, 0, &err), &err, "writing the parent");
    T_OK(vhd_close(v, &err), &err, "vhd_close");
    t_create(child, VHD_TYPE_DIFFERENCING, 0, 4096, false, parent);
    uint64_t len = t_file_size(child);
    CLEANUP_FREE uint8_t *img = t_xmalloc(len);
    t_pread_file(child, img, len, 0);
    uint64_t h = be64_load(img + len - 512 + 16);
    uint8_t *e = img + h + 576;
    T_ASSERT(be32_load(e) == 0x57327275, "the child's first locator is not W2ru");
    uint64_t at = round == 0 ? len : round == 1 ? far : 8; /* the footer ends at len - 512 */
    be64_store(e + 16, at);
    if (round == 2) /* from inside the file to past its end */
      be32_store(e + 8, (uint32_t)len);
    fix_checksum(img + h, 1024, 36);
    t_pwrite_file(child, img, len, 0);
    if (round == 2) {
      /* Grown over, the file would hold it across the footer copy and
       * more: refused, naming the entry. */
      struct vhd_open_opts ro = {.flags = VHD_OPEN_RDONLY};
      v = NULL;
      int r = vhd_open(child, &ro, &v, &err);
      if (r >= 0)
        vhd_close(v, NULL);
      T_ASSERT(r == -EINVAL && strstr(err.msg, "locator 0") && strstr(err.msg, "runs past"),
               "a locator from inside the file to past its end: %d (%s)", r, err.msg);
      printf("ok locator from inside the file to past its end: %s\n", err.msg);
      continue;
    }

    struct warnings w = {0};
    struct vhd_open_opts o = {.warn = on_warn, .warn_opaque = &w};
    v = NULL;
    T_OK(vhd_open(child, &o, &v, &err), &err, "opening a child with a locator past its end");
    T_ASSERT(vhd_parent(v) != NULL, "the child opened without its parent");
    T_ASSERT(w.n >= 1 && strstr(w.last, child) && strstr(w.last, "locator 0") &&
                 strstr(w.last, "beyond"),
             "no warning names the stale locator (%u warnings, last: %s)", w.n, w.last);
    uint8_t buf[4096];
    t_fill_nonzero(buf, sizeof buf);
    buf[0] ^= 0x5a;
    uint64_t wat = 5 * 4096; /* a block the child has not got */
    T_OK(vhd_write(v, buf, wat, sizeof buf, VHD_FUA, &err), &err,
         "writing a new block of the child");
    T_OK(vhd_close(v, &err), &err, "vhd_close");
    T_ASSERT(t_file_size(child) < len + (1u << 20), "the file grew to %" PRIu64 " bytes",
             t_file_size(child));

    w = (struct warnings){0};
    v = NULL;
    o.flags = VHD_OPEN_RDONLY;
    T_OK(vhd_open(child, &o, &v, &err), &err, "reopening the child after a new block");
    CLEANUP_FREE uint8_t *all = t_xmalloc(1u << 20);
    T_OK(vhd_read(v, all, 0, 1u << 20, &err), &err, "vhd_read");
    T_OK(vhd_close(v, &err), &err, "vhd_close");
    T_ASSERT(memcmp(all, pdata, sizeof pdata) == 0, "the parent's data reads otherwise");
    T_ASSERT(memcmp(all + wat, buf, sizeof buf) == 0, "the written block reads otherwise");
    int c = t_check(child);
    T_ASSERT(!(c & VHD_CHECK_CORRUPT), "vhd_check says 0x%x", c);

    /* The same child as it was, before its new block (which put the
     * entry's room inside the file): check warns of the entry, and
     * --repair clears it on disk, and nothing else of the header but its
     * checksum; the image then opens without a warning, reading the same. */
    char copy[4096];
    snprintf(copy, sizeof copy, "%s", t_path("stale-loc-copy.vhd"));
    unlink(copy);
    int cfd = open(copy, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    T_ASSERT(cfd >= 0 && pwrite(cfd, img, len, 0) == (ssize_t)len, "writing %s", copy);
    close(cfd);
    c = t_check(copy);
    T_ASSERT(c == VHD_CHECK_WARNINGS, "vhd_check of a stale locator says 0x%x, not a warning", c);
    uint8_t before[1024], after[1024];
    t_pread_file(copy, before, sizeof before, h);
    struct vhd_check_opts co = {.repair = true};
    c = vhd_check(copy, &co, &err);
    T_ASSERT(c >= 0 && (c & VHD_CHECK_REPAIRED) && !(c & ~VHD_CHECK_REPAIRED),
             "check --repair of a stale locator says 0x%x (%s)", c, err.msg);
    t_pread_file(copy, after, sizeof after, h);
    static const uint8_t zero[24];
    T_ASSERT(memcmp(after + 576, zero, 24) == 0, "the stale entry is still on disk");
    T_ASSERT(memcmp(after + 600, before + 600, 1024 - 600) == 0 &&
                 memcmp(after + 40, before + 40, 576 - 40) == 0 &&
                 memcmp(after, before, 36) == 0,
             "check --repair changed more of the header than the stale entry");
    w = (struct warnings){0};
    v = NULL;
    T_OK(vhd_open(copy, &o, &v, &err), &err, "reopening the repaired child");
    T_ASSERT(w.n == 0, "the repaired child still warns: %s", w.last);
    T_ASSERT(vhd_parent(v) != NULL, "the repaired child opened without its parent");
    CLEANUP_FREE uint8_t *again = t_xmalloc(1u << 20);
    T_OK(vhd_read(v, again, 0, 1u << 20, &err), &err, "vhd_read");
    T_OK(vhd_close(v, &err), &err, "vhd_close");
    CLEANUP_FREE uint8_t *want = calloc(1, 1u << 20);
    T_ASSERT(want, "out of memory");
    memcpy(want, pdata, sizeof pdata);
    T_ASSERT(memcmp(again, want, 1u << 20) == 0, "the repaired child reads otherwise");
    c = t_check(copy);
    T_ASSERT(c == 0, "vhd_check of the repaired child says 0x%x", c);
    printf("ok locator past the end (at %" PRIu64 "): opens, new block clear of it, "
           "cleared by check --repair\n", at);
  }
}

/* A BAT off the sector grid (shifted by two bytes into its slack): the
 * image reads as before, read-only; writing is refused with a message
 * that says why and what to do. */
static void test_bat_off_grid(void) {
  CLEANUP_FREE uint8_t *img = fresh_copy();
  T_ASSERT(ROUND_UP(bat_entries * 4u, 512u) - bat_entries * 4u >= 2, "no slack after the BAT");
  memmove(img + bat_off + 2, img + bat_off, (size_t)bat_entries * 4);
  be64_store(img + hdr_off + 16, bat_off + 2);
  fix_header(img);
  char path[4096];
  snprintf(path, sizeof path, "%s", write_case("bat-off-grid", img, good_len));
  vhd_t *v = t_open(path, true);
  struct vhd_err err = {{0}};
  CLEANUP_FREE uint8_t *all = t_xmalloc(vsize);
  T_OK(vhd_read(v, all, 0, vsize, &err), &err, "vhd_read");
  vhd_close(v, NULL);
  T_ASSERT(memcmp(all, good_content, vsize) == 0, "a BAT off the sector grid reads other data");
  struct vhd_open_opts o = {0};
  v = NULL;
  int r = vhd_open(path, &o, &v, &err);
  if (r >= 0)
    vhd_close(v, NULL);
  T_ASSERT(r == -EINVAL, "opening a BAT off the sector grid for writing gave %d", r);
  T_ASSERT(strstr(err.msg, path) && strstr(err.msg, "sector boundary") &&
               strstr(err.msg, "read-only"),
           "the refusal does not say what and why: %s", err.msg);
  T_ASSERT(t_file_size(path) == good_len, "the refused open changed the file");
  printf("ok BAT off the sector grid: read-only only (%s)\n", err.msg);
}

/* A child so deep below its parent's directory that the relative path up
 * to it ("../" for every level) passes PATH_MAX though both absolute paths
 * fit.  Creating it, or pointing it at a parent, fails with ENAMETOOLONG
 * and a message naming the paths, where a path cut short would have named
 * another file; one level less fits and opens with its parent. */
static void test_deep_child(void) {
  char parent[4096], dir[PATH_MAX], child[PATH_MAX];
  snprintf(parent, sizeof parent, "%s", t_path("p.vhd"));
  t_create(parent, VHD_TYPE_DYNAMIC, 1u << 20, 4096, true, NULL);
  size_t dl = (size_t)snprintf(dir, sizeof dir, "%s", t_dir());
  /* levels of "/d": each adds 2 bytes to the path and 3 to the way up */
  size_t levels = (PATH_MAX - 1 - strlen("p.vhd")) / 3 + 1;
  T_ASSERT(dl + 2 * levels + 16 < PATH_MAX, "the test directory's path is too long");
  for (size_t i = 0; i < levels; i++) {
    memcpy(dir + dl, "/d", 3);
    dl += 2;
    T_ASSERT(mkdir(dir, 0755) == 0 || errno == EEXIST, "mkdir: %s", strerror(errno));
  }
  struct vhd_err err = {{0}};
  struct vhd_create_opts co = {.type = VHD_TYPE_DIFFERENCING, .parent = parent};
  memcpy(child, dir, dl);
  memcpy(child + dl, "/c.vhd", 7);
  int r = vhd_create(child, &co, &err);
  T_ASSERT(r == -ENAMETOOLONG, "creating a child %zu levels down gave %d (%s)", levels, r,
           err.msg);
  T_ASSERT(strstr(err.msg, "too long") && strstr(err.msg, parent),
           "the refusal does not say why: %s", err.msg);
  T_ASSERT(access(child, F_OK) < 0, "the refused create left %s", child);

  /* Relinking a child moved there: refused, its header as it was. */
  char up[PATH_MAX];
  snprintf(up, sizeof up, "%s", child);
  *strrchr(up, '/') = '\0';
  *strrchr(up, '/') = '\0';
  strcat(up, "/c.vhd");
  T_OK(vhd_create(up, &co, &err), &err, "creating a child one level up");
  vhd_t *v = t_open(up, true);
  T_ASSERT(vhd_parent(v) != NULL, "the child one level up opened without its parent");
  vhd_close(v, NULL);
  T_ASSERT(rename(up, child) == 0, "rename: %s", strerror(errno));
  uint64_t len = t_file_size(child);
  CLEANUP_FREE uint8_t *before = t_xmalloc(len);
  t_pread_file(child, before, len, 0);
  struct vhd_rebase_opts ro = {.new_parent = parent, .unsafe = true};
  struct vhd_rebase_result res;
  r = vhd_rebase(child, &ro, &res, &err);
  T_ASSERT(r == -ENAMETOOLONG, "relinking a child %zu levels down gave %d (%s)", levels, r,
           err.msg);
  CLEANUP_FREE uint8_t *after = t_xmalloc(len);
  T_ASSERT(t_file_size(child) == len, "the refused relink changed the file's size");
  t_pread_file(child, after, len, 0);
  T_ASSERT(memcmp(before, after, len) == 0, "the refused relink changed the child");
  printf("ok child %zu levels below its parent: %s\n", levels, err.msg);
}

/* A header rewrite torn between its two sectors, with the journal the
 * rewrite writes past the end of the file first (the new header, then the
 * footer again): read from the journal, written back by an open for
 * writing, given back by check --repair.  A torn header without a journal,
 * or one the journal does not explain, stays refused. */
static void test_header_journal(void) {
  char path[4096];
  snprintf(path, sizeof path, "%s", t_path("journal.vhd"));
  t_create(path, VHD_TYPE_DYNAMIC, 1u << 20, 4096, true, NULL);
  struct vhd_err err = {{0}};
  vhd_t *v = t_open(path, false);
  uint8_t data[8192];
  t_fill_nonzero(data, sizeof data);
  T_OK(vhd_write(v, data, 12288, sizeof data, 0, &err), &err, "vhd_write");
  T_OK(vhd_close(v, &err), &err, "vhd_close");
  uint64_t len = t_file_size(path);
  uint8_t old_h[1024], new_h[1024], foot[512];
  t_pread_file(path, old_h, sizeof old_h, 512);
  t_pread_file(path, foot, sizeof foot, len - 512);
  /* The new header differs in both sectors: a parent name (sector 0 and 1),
   * as a relink writes, and its checksum. */
  memcpy(new_h, old_h, sizeof new_h);
  for (int i = 0; i < 300; i++)
    new_h[64 + 2 * i + 1] = 'a' + i % 26;
  fix_checksum(new_h, sizeof new_h, 36);
  T_ASSERT(memcmp(old_h, new_h, 512) != 0 && memcmp(old_h + 512, new_h + 512, 512) != 0,
           "the test's new header does not differ in both sectors");
  CLEANUP_FREE uint8_t *before = t_xmalloc(len);
  t_pread_file(path, before, len, 0);
  for (int torn = 0; torn < 2; torn++) {
    /* The journal, then the header torn: one sector new, the other old. */
    t_truncate_file(path, len);
    t_pwrite_file(path, before, len, 0);
    t_pwrite_file(path, new_h, sizeof new_h, len);
    t_pwrite_file(path, foot, sizeof foot, len + sizeof new_h);
    t_pwrite_file(path, torn ? new_h : old_h, 512, 512);
    t_pwrite_file(path, torn ? old_h + 512 : new_h + 512, 512, 1024);
    uint64_t hash = t_file_hash(path);

    struct warnings w = {0};
    struct vhd_open_opts ro = {.flags = VHD_OPEN_RDONLY, .warn = on_warn, .warn_opaque = &w};
    T_OK(vhd_open(path, &ro, &v, &err), &err, "opening a header torn with its journal");
    T_ASSERT(w.n == 1 && strstr(w.last, "cut short") && strstr(w.last, "checksum") &&
                 strstr(w.last, t_fmt("offset %llu", (unsigned long long)len)),
             "torn %d: %u warnings, the last: %s", torn, w.n, w.last);
    uint8_t got[8192];
    T_OK(vhd_read(v, got, 12288, sizeof got, &err), &err, "vhd_read");
    T_ASSERT(memcmp(got, data, sizeof got) == 0, "torn %d: the data reads otherwise", torn);
    vhd_close(v, NULL);
    T_ASSERT(t_file_hash(path) == hash, "torn %d: a read-only open changed the file", torn);
    int bits = t_check(path);
    T_ASSERT(bits >= 0 && !(bits & VHD_CHECK_CORRUPT) && (bits & VHD_CHECK_WARNINGS),
             "torn %d: check gave %d, not a warning", torn, bits);

    if (torn == 0) {
      /* Opened for writing, the header is written back at once. */
      w.n = 0;
      struct vhd_open_opts rw = {.warn = on_warn, .warn_opaque = &w};
      T_OK(vhd_open(path, &rw, &v, &err), &err, "opening a torn header for writing");
      T_ASSERT(w.n == 1 && strstr(w.last, "wrote back"), "torn %d: %u warnings, the last: %s",
               torn, w.n, w.last);
      uint8_t now[1024];
      t_pread_file(path, now, sizeof now, 512);
      T_ASSERT(memcmp(now, new_h, sizeof now) == 0,
               "an open for writing left the torn header on disk");
      T_OK(vhd_write(v, data, 65536, 4096, 0, &err), &err, "vhd_write into a new block");
      T_OK(vhd_close(v, &err), &err, "vhd_close");
      v = t_open(path, true);
      T_OK(vhd_read(v, got, 65536, 4096, &err), &err, "vhd_read");
      T_ASSERT(memcmp(got, data, 4096) == 0, "the block written after the write-back differs");
      vhd_close(v, NULL);
    } else {
      /* check --repair writes it back and gives the journal's bytes back. */
      struct vhd_check_opts co = {.repair = true};
      bits = vhd_check(path, &co, &err);
      T_ASSERT(bits >= 0 && (bits & VHD_CHECK_REPAIRED) && !(bits & ~VHD_CHECK_REPAIRED),
               "check --repair gave %d (%s)", bits, err.msg);
      T_ASSERT(t_check(path) == 0, "the image is not clean after check --repair");
      T_ASSERT(t_file_size(path) == len, "check --repair left the file %llu bytes, not %llu",
               (unsigned long long)t_file_size(path), (unsigned long long)len);
      uint8_t now[1024];
      t_pread_file(path, now, sizeof now, 512);
      T_ASSERT(memcmp(now, new_h, sizeof now) == 0, "check --repair did not write the header");
    }
  }

  /* Without the journal, or with one that matches neither sector: refused. */
  for (int k = 0; k < 2; k++) {
    t_truncate_file(path, len);
    t_pwrite_file(path, before, len, 0);
    if (k == 1) {
      uint8_t other[1024];
      memcpy(other, new_h, sizeof other);
      other[100] ^= 1;
      other[700] ^= 1;
      fix_checksum(other, sizeof other, 36);
      t_pwrite_file(path, other, sizeof other, len);
      t_pwrite_file(path, foot, sizeof foot, len + sizeof other);
    }
    t_pwrite_file(path, new_h, 512, 512);
    struct vhd_open_opts ro = {.flags = VHD_OPEN_RDONLY};
    int r = vhd_open(path, &ro, &v, &err);
    T_ASSERT(r == -EINVAL && strstr(err.msg, "checksum"),
             "a torn header %s opened: %d %s", k ? "with a journal of another" : "alone", r,
             err.msg);
  }
  printf("ok torn header and its journal\n");
}

int main(void) {
  t_init("test-vhd-open");
  make_good();
  test_footer_copy();
  test_damaged();
  test_fixed_damaged();
  test_locking();
  test_chains();
  test_size_rule();
  test_dynamic_locator_junk();
  test_bat_off_grid();
  test_locator_past_end();
  test_deep_child();
  test_header_journal();
#ifdef OPEN_SELF_PARENT
  test_self_parent();
#endif
  free(good);
  free(good_content);
  return 0;
}
