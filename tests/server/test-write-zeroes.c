/* WRITE_ZEROES (plain, NO_HOLE, FAST_ZERO, FUA, larger than the maximum
 * payload) and TRIM on dynamic, fixed and differencing exports.  Each export
 * has an in-memory model of its content; every operation is checked by reading
 * back, by block status where the outcome is defined, and at the end the
 * images must be check-clean and hold exactly the model. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbd-proto.h"
#include "harness.h"

#define SIZE (48 * MiB)
#define DATA_END (8 * MiB) /* the images hold data in [0, DATA_END) */
#define SECTOR 512u

struct export {
  const char *what;
  struct nbd_handle *h;
  uint8_t *model;
  char image[4096];
};

static void verify(struct export *e, uint64_t off, uint64_t len, const char *after) {
  if (len == 0)
    return;
  uint8_t *buf = malloc(len);
  NBD_OK(nbd_pread(e->h, buf, len, off, 0));
  if (memcmp(buf, e->model + off, len) != 0)
    for (uint64_t i = 0; i < len; i++)
      if (buf[i] != e->model[off + i])
        FAIL("%s: after %s: byte %" PRIu64 " is 0x%02x, expected 0x%02x", e->what, after,
             off + i, buf[i], e->model[off + i]);
  free(buf);
}

static void do_zero(struct export *e, uint64_t off, uint64_t len, uint32_t flags,
                    const char *what) {
  if (nbd_zero(e->h, len, off, flags) == -1)
    FAIL("%s: %s (zero %" PRIu64 "+%" PRIu64 " flags 0x%x): %s", e->what, what, off, len, flags,
         nbd_get_error());
  memset(e->model + off, 0, len);
  /* The bytes around the range must survive. */
  uint64_t lo = off >= 4096 ? off - 4096 : 0;
  uint64_t hi = MIN(off + len + 4096, SIZE);
  if (len <= 8 * MiB)
    verify(e, lo, hi - lo, what);
  else {
    verify(e, lo, MIN(8 * MiB, hi - lo), what);
    verify(e, hi - MIN(8 * MiB, hi - lo), MIN(8 * MiB, hi - lo), what);
  }
}

static void do_write(struct export *e, uint64_t off, uint64_t len, uint32_t seed) {
  pattern_fill(e->model + off, len, off, seed);
  for (uint64_t done = 0; done < len; done += 16 * MiB) {
    uint64_t n = MIN(16 * MiB, len - done);
    NBD_OK(nbd_pwrite(e->h, e->model + off + done, n, off + done, 0));
  }
}

/* TRIM leaves the range undefined; the bytes around it must survive.  The
 * range is rewritten so the model stays exact. */
static void do_trim(struct export *e, uint64_t off, uint64_t len, const char *what) {
  if (nbd_trim(e->h, len, off, 0) == -1)
    FAIL("%s: %s (trim %" PRIu64 "+%" PRIu64 "): %s", e->what, what, off, len, nbd_get_error());
  uint64_t lo = off >= 4096 ? off - 4096 : 0;
  verify(e, lo, off - lo, what);
  verify(e, off + len, MIN(4096, SIZE - off - len), what);
  do_write(e, off, len, 31);
  for (uint64_t done = 0; done < len; done += 16 * MiB)
    verify(e, off + done, MIN(16 * MiB, len - done), "rewriting a trimmed range");
}

struct status {
  uint64_t end;       /* of the range asked about */
  uint64_t described; /* up to where the reply went */
  uint32_t all_or, all_and;
};

static int extent_cb(void *opaque, const char *context, uint64_t offset, uint32_t *entries,
                     size_t nr, int *error) {
  struct status *s = opaque;
  uint64_t pos = offset;
  for (size_t i = 0; i + 1 < nr && pos < s->end; i += 2) {
    CHECK(entries[i] > 0, "extent of length 0");
    s->all_or |= entries[i + 1];
    s->all_and &= entries[i + 1];
    pos += entries[i];
  }
  s->described = pos;
  return 0;
}

/* OR and AND of the status flags over [off, off+len). */
static struct status status_of(struct export *e, uint64_t off, uint64_t len) {
  struct status s = {.end = off + len, .described = off, .all_and = ~0u};
  for (int i = 0; s.described < s.end; i++) {
    CHECK(i < 10000, "block status makes no progress at %" PRIu64, s.described);
    uint64_t pos = s.described;
    NBD_OK(nbd_block_status(e->h, s.end - pos, pos,
                            (nbd_extent_callback){.callback = extent_cb, .user_data = &s}, 0));
    CHECK(s.described > pos, "block status at %" PRIu64 " described nothing", pos);
  }
  return s;
}

static void test_dynamic(struct export *e) {
  CHECK(nbd_can_zero(e->h) == 1, "dynamic: WRITE_ZEROES not advertised");
  CHECK(nbd_can_fast_zero(e->h) == 1, "dynamic: FAST_ZERO not advertised");
  CHECK(nbd_can_trim(e->h) == 1, "dynamic: TRIM not advertised");

  do_zero(e, 100, 5000, 0, "unaligned zero in data");
  do_zero(e, 2 * MiB, 2 * MiB, 0, "zero of a whole data block");
  CHECK(status_of(e, 2 * MiB, 2 * MiB).all_and & NBD_STATE_ZERO,
        "dynamic: a zeroed block is not reported ZERO");

  /* Unallocated blocks stay holes without NO_HOLE, get allocated with it. */
  do_zero(e, 14 * MiB, 2 * MiB, 0, "zero of an unallocated block");
  struct status s = status_of(e, 14 * MiB, 2 * MiB);
  CHECK(s.all_and == (NBD_STATE_HOLE | NBD_STATE_ZERO),
        "dynamic: zeroing a hole allocated it (status or 0x%x)", s.all_or);
  do_zero(e, 10 * MiB, 2 * MiB, LIBNBD_CMD_FLAG_NO_HOLE, "NO_HOLE zero of an unallocated block");
  s = status_of(e, 10 * MiB, 2 * MiB);
  CHECK(!(s.all_or & NBD_STATE_HOLE), "dynamic: NO_HOLE left a hole");
  do_zero(e, 12 * MiB + 512, 3584, LIBNBD_CMD_FLAG_NO_HOLE, "NO_HOLE zero of a few sectors");
  s = status_of(e, 12 * MiB + 512, 3584);
  CHECK(!(s.all_or & NBD_STATE_HOLE), "dynamic: NO_HOLE left a hole in a partial block");

  /* FAST_ZERO: clearing allocation is fast; having to write zeros is not. */
  do_zero(e, 4 * MiB, 2 * MiB, LIBNBD_CMD_FLAG_FAST_ZERO, "FAST_ZERO over data");
  do_zero(e, 16 * MiB, 2 * MiB, LIBNBD_CMD_FLAG_FAST_ZERO, "FAST_ZERO over a hole");
  NBD_ERRNO(nbd_zero(e->h, 2 * MiB, 20 * MiB, LIBNBD_CMD_FLAG_FAST_ZERO | LIBNBD_CMD_FLAG_NO_HOLE),
            ENOTSUP);
  verify(e, 20 * MiB, 2 * MiB, "FAST_ZERO|NO_HOLE over a hole (refused)");
  CHECK(status_of(e, 20 * MiB, 2 * MiB).all_or & NBD_STATE_HOLE,
        "dynamic: a refused FAST_ZERO|NO_HOLE allocated the block");
  /* Part of a sector that holds data keeps its other bytes: a read and a
   * write of the sector, no faster than a WRITE.  Refused, nothing
   * changed; whole sectors around it, or part of a blank one, are fast. */
  NBD_ERRNO(nbd_zero(e->h, 100, 7 * MiB + 3, LIBNBD_CMD_FLAG_FAST_ZERO), ENOTSUP);
  verify(e, 7 * MiB, 4096, "FAST_ZERO inside a sector of data (refused)");
  NBD_ERRNO(nbd_zero(e->h, 600, 7 * MiB, LIBNBD_CMD_FLAG_FAST_ZERO), ENOTSUP);
  verify(e, 7 * MiB, 4096, "FAST_ZERO ending inside a sector of data (refused)");
  do_zero(e, 7 * MiB + 512, 1024, LIBNBD_CMD_FLAG_FAST_ZERO, "FAST_ZERO of whole sectors of data");
  do_zero(e, 7 * MiB + 700, 200, LIBNBD_CMD_FLAG_FAST_ZERO, "FAST_ZERO inside a zeroed sector");
  do_zero(e, 24 * MiB + 3, 100, LIBNBD_CMD_FLAG_FAST_ZERO, "FAST_ZERO inside a hole's sector");

  if (nbd_can_fua(e->h) == 1)
    do_zero(e, 6 * MiB + 4096, 4096, LIBNBD_CMD_FLAG_FUA, "FUA zero");

  /* Payload-less commands may exceed the 32 MiB maximum payload. */
  do_write(e, 30 * MiB, 4096, 8);
  do_write(e, 46 * MiB - 4096, 4096, 9);
  do_zero(e, 13 * MiB, 34 * MiB, 0, "a 34 MiB zero");

  do_write(e, 6 * MiB, 2 * MiB, 10);
  do_trim(e, 6 * MiB + 100, 3000, "unaligned trim");
  do_trim(e, 6 * MiB, 2 * MiB, "trim of a whole block");
  do_trim(e, 0, 40 * MiB, "a 40 MiB trim");
  verify(e, 0, 16 * MiB, "the dynamic test");
}

static void test_fixed(struct export *e) {
  CHECK(nbd_can_zero(e->h) == 1, "fixed: WRITE_ZEROES not advertised");
  do_zero(e, 100, 5000, 0, "unaligned zero in data");
  do_zero(e, 1 * MiB, 1 * MiB, LIBNBD_CMD_FLAG_NO_HOLE, "NO_HOLE zero");
  /* A fixed image may or may not zero fast; either way the outcome is defined. */
  do_write(e, 3 * MiB, 4096, 11);
  if (nbd_can_fast_zero(e->h) == 1) {
    if (nbd_zero(e->h, 4096, 3 * MiB, LIBNBD_CMD_FLAG_FAST_ZERO) == 0)
      memset(e->model + 3 * MiB, 0, 4096);
    else
      CHECK(nbd_get_errno() == ENOTSUP, "fixed: FAST_ZERO failed with %s", nbd_get_error());
    verify(e, 3 * MiB, 4096, "FAST_ZERO on a fixed image");
  }
  if (nbd_can_trim(e->h) == 1)
    do_trim(e, 5 * MiB + 100, 3000, "unaligned trim");
  do_zero(e, 13 * MiB, 34 * MiB, 0, "a 34 MiB zero");
}

/* A child's zeros must hide the parent's data. */
static void test_differencing(struct export *e) {
  CHECK(nbd_can_zero(e->h) == 1, "differencing: WRITE_ZEROES not advertised");
  do_zero(e, 100, 5000, 0, "zero over parent data");
  do_zero(e, 2 * MiB, 2 * MiB, 0, "zero of a whole block of parent data");
  do_zero(e, 5 * MiB, 4096, LIBNBD_CMD_FLAG_NO_HOLE, "NO_HOLE zero over parent data");
  if (nbd_can_fast_zero(e->h) == 1) {
    NBD_ERRNO(nbd_zero(e->h, 4096, 6 * MiB, LIBNBD_CMD_FLAG_FAST_ZERO), ENOTSUP);
    verify(e, 6 * MiB, 4096, "a refused FAST_ZERO over parent data");
  }
  do_zero(e, 20 * MiB, 2 * MiB, 0, "zero where the parent has none");
  verify(e, 0, 16 * MiB, "the differencing test");
}

static void open_export(struct export *e, const char *sock, const char *name) {
  e->h = harness_handle(name);
  NBD_OK(nbd_add_meta_context(e->h, NBD_CONTEXT_BASE_ALLOCATION));
  NBD_OK(nbd_connect_unix(e->h, sock));
  CHECK(nbd_get_size(e->h) == (int64_t)SIZE, "%s: size %" PRId64, e->what, nbd_get_size(e->h));
}

int main(void) {
  harness_init("test-write-zeroes", 60);
  const char *sock = harness_path("sock");
  char sockbuf[4096];
  XSNPRINTF(sockbuf, sizeof sockbuf, "%s", sock);

  uint8_t *base = calloc(1, SIZE);
  pattern_fill(base, DATA_END, 0, 1);
  struct export dyn = {.what = "dynamic"}, fixed = {.what = "fixed"},
                diff = {.what = "differencing"};
  XSNPRINTF(dyn.image, sizeof dyn.image, "%s",
            harness_qemu_image_from("dyn.vhd", "dynamic", base, SIZE));
  XSNPRINTF(fixed.image, sizeof fixed.image, "%s",
            harness_qemu_image_from("fixed.vhd", "fixed", base, SIZE));
  char parent[4096];
  XSNPRINTF(parent, sizeof parent, "%s",
            harness_qemu_image_from("parent.vhd", "dynamic", base, SIZE));
  XSNPRINTF(diff.image, sizeof diff.image, "%s",
            harness_vhdimg_create("child.vhd", "differencing", parent, 0));
  char parent_sum[65], parent_after[65];
  harness_sha256(parent, parent_sum);

  dyn.model = base;
  fixed.model = malloc(SIZE);
  diff.model = malloc(SIZE);
  memcpy(fixed.model, base, SIZE);
  memcpy(diff.model, base, SIZE);

  char e_fixed[8192], e_diff[8192];
  XSNPRINTF(e_fixed, sizeof e_fixed, "fixed=%s", fixed.image);
  XSNPRINTF(e_diff, sizeof e_diff, "diff=%s", diff.image);
  const char *args[] = {"-e", e_fixed, "-e", e_diff, dyn.image, NULL};
  harness_start_server(sockbuf, args);

  open_export(&dyn, sockbuf, "");
  open_export(&fixed, sockbuf, "fixed");
  open_export(&diff, sockbuf, "diff");
  test_dynamic(&dyn);
  test_fixed(&fixed);
  test_differencing(&diff);
  NBD_OK(nbd_flush(dyn.h, 0));
  harness_close(dyn.h);
  harness_close(fixed.h);
  harness_close(diff.h);

  int rc = harness_finish();
  if (rc)
    return rc;
  struct export *all[] = {&dyn, &fixed, &diff};
  for (size_t i = 0; i < 3; i++) {
    CHECK(harness_check_image(all[i]->image) == 0, "%s: image not clean", all[i]->what);
    harness_expect_image_content(all[i]->image, all[i]->model, SIZE, all[i] != &diff);
    free(all[i]->model);
  }
  CHECK(strcmp(parent_sum, harness_sha256(parent, parent_after)) == 0,
        "the parent changed while its child was written");
  return 0;
}
