/* vhd_open_opts.parent and vhd_open_opts.max_file_size.
 *
 * - Two differencing children opened with one borrowed parent read the
 *   parent's data and keep their own writes apart; closing them leaves the
 *   parent open and readable; a parent with another unique id is refused.
 * - With a ceiling, writes that need a block past it fail with ENOSPC
 *   before anything is written: the handle stays writable (no latched
 *   error), earlier data reads back and survives a reopen, and the file
 *   never grows past the ceiling; the image checks clean. */
#include "config.h"

#include <errno.h>
#include <string.h>

#include "testutil.h"

#define MiB (1024 * 1024)
#define BLOCK (64 * 1024)

static void fill(uint8_t *buf, size_t len, int byte) { memset(buf, byte, len); }

static void expect(vhd_t *vhd, uint64_t off, size_t len, int byte, const char *what) {
  struct vhd_err err = {0};
  uint8_t *buf = t_xmalloc(len);
  T_OK(vhd_read(vhd, buf, off, len, &err), &err, what);
  for (size_t i = 0; i < len; i++)
    T_ASSERT(buf[i] == byte, "%s: byte %zu at %llu is 0x%02x, expected 0x%02x", what, i,
             (unsigned long long)off, buf[i], byte);
  free(buf);
}

static void borrowed_parent(void) {
  char *base = strdup(t_path("base.vhd"));
  char *a = strdup(t_path("a.vhd")), *b = strdup(t_path("b.vhd"));
  char *other = strdup(t_path("other.vhd"));
  struct vhd_err err = {0};
  uint8_t buf[4096];
  t_create(base, VHD_TYPE_DYNAMIC, 4 * MiB, BLOCK, true, NULL);
  vhd_t *p = t_open(base, false);
  fill(buf, sizeof buf, 0x11);
  T_OK(vhd_write(p, buf, 0, sizeof buf, 0, &err), &err, "write base");
  T_OK(vhd_close(p, &err), &err, "close base");
  t_create(a, VHD_TYPE_DIFFERENCING, 0, 0, false, base);
  t_create(b, VHD_TYPE_DIFFERENCING, 0, 0, false, base);
  t_create(other, VHD_TYPE_DYNAMIC, 4 * MiB, BLOCK, true, NULL);

  p = t_open(base, true);
  struct vhd_open_opts o = {.parent = p};
  vhd_t *ca = NULL, *cb = NULL;
  T_OK(vhd_open(a, &o, &ca, &err), &err, "open a with a borrowed parent");
  T_OK(vhd_open(b, &o, &cb, &err), &err, "open b with a borrowed parent");
  T_ASSERT(vhd_parent(ca) == p && vhd_parent(cb) == p, "the children do not use the parent given");
  fill(buf, sizeof buf, 0xaa);
  T_OK(vhd_write(ca, buf, 4096, sizeof buf, 0, &err), &err, "write a");
  fill(buf, sizeof buf, 0xbb);
  T_OK(vhd_write(cb, buf, 4096, sizeof buf, 0, &err), &err, "write b");
  expect(ca, 0, 4096, 0x11, "a reads the parent");
  expect(cb, 0, 4096, 0x11, "b reads the parent");
  expect(ca, 4096, 4096, 0xaa, "a reads its own write");
  expect(cb, 4096, 4096, 0xbb, "b reads its own write");
  T_OK(vhd_close(ca, &err), &err, "close a");
  T_OK(vhd_close(cb, &err), &err, "close b");
  expect(p, 0, 4096, 0x11, "the parent after its children closed");
  expect(p, 4096, 4096, 0x00, "the parent was written through a child");

  vhd_t *q = t_open(other, true), *cx = NULL;
  o.parent = q;
  int r = vhd_open(a, &o, &cx, &err);
  T_ASSERT(r == -EINVAL && cx == NULL, "a parent with another unique id: %d", r);
  T_ASSERT(strstr(err.msg, "unique id") != NULL, "message: %s", err.msg);
  T_OK(vhd_close(q, &err), &err, "close other");
  T_OK(vhd_close(p, &err), &err, "close base");
  T_ASSERT(t_check(a) == 0 && t_check(b) == 0, "children do not check clean");
  free(base), free(a), free(b), free(other);
}

static void ceiling(void) {
  char *path = strdup(t_path("capped.vhd"));
  struct vhd_err err = {0};
  t_create(path, VHD_TYPE_DYNAMIC, 4 * MiB, BLOCK, true, NULL);
  /* Room for two blocks (bitmap sector plus data each) and the footer.
   * Their data is 4 KiB-aligned: the first one's bitmap goes to the last
   * sector of a page at or after the old footer, the second one's to the
   * last sector of the page after the first one's data. */
  uint64_t start = t_file_size(path);
  uint64_t first = (start + 4095) / 4096 * 4096 - 512;
  uint64_t second = first + 512 + BLOCK + 4096 - 512;
  uint64_t max = second + 512 + BLOCK + 512;
  struct vhd_open_opts o = {.max_file_size = max};
  vhd_t *vhd = NULL;
  T_OK(vhd_open(path, &o, &vhd, &err), &err, "open with a ceiling");
  uint8_t buf[4096];
  fill(buf, sizeof buf, 0xcc);
  T_OK(vhd_write(vhd, buf, 0, sizeof buf, 0, &err), &err, "block 0");
  T_OK(vhd_write(vhd, buf, BLOCK, sizeof buf, 0, &err), &err, "block 1");
  int r = vhd_write(vhd, buf, 2 * BLOCK, sizeof buf, 0, &err);
  T_ASSERT(r == -ENOSPC, "a third block past the ceiling: %d (%s)", r, err.msg);
  T_ASSERT(vhd_write_error(vhd, NULL) == 0, "ENOSPC at the ceiling latched the handle");
  T_OK(vhd_write(vhd, buf, 8192, sizeof buf, VHD_FUA, &err), &err,
       "a write into an allocated block after ENOSPC");
  T_OK(vhd_flush(vhd, &err), &err, "flush after ENOSPC");
  expect(vhd, 0, 4096, 0xcc, "block 0");
  expect(vhd, BLOCK, 4096, 0xcc, "block 1");
  expect(vhd, 2 * BLOCK, 4096, 0x00, "the refused block");
  T_OK(vhd_close(vhd, &err), &err, "close");
  T_ASSERT(t_file_size(path) <= max, "the file grew to %llu bytes, past %llu",
           (unsigned long long)t_file_size(path), (unsigned long long)max);
  T_ASSERT(t_check(path) == 0, "the capped image does not check clean");
  vhd = t_open(path, true);
  expect(vhd, 0, 4096, 0xcc, "block 0 after reopening");
  expect(vhd, BLOCK, 4096, 0xcc, "block 1 after reopening");
  expect(vhd, 8192, 4096, 0xcc, "the write after ENOSPC, after reopening");
  T_OK(vhd_close(vhd, &err), &err, "close");
  free(path);
}

int main(void) {
  t_init("test-vhd-open-opts");
  borrowed_parent();
  ceiling();
  printf("PASS\n");
  return 0;
}
