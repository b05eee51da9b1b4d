/* NBD_CMD_BLOCK_STATUS with base:allocation: the reply's shape (one chunk for
 * the context, first extent at the offset, contiguous, no zero lengths,
 * REQ_ONE = one extent), and its meaning against what was written: untouched
 * blocks of a dynamic image are HOLE|ZERO, written data is neither, every ZERO
 * extent reads as zeros; differencing children report their parent's data. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbd-proto.h"
#include "harness.h"

#define SIZE (16 * MiB)
#define SECTOR 512u
#define UNSET 0xffu

static char sock[4096], sock_fixed[4096], sock_diff[4096];

struct query {
  uint64_t off, len, size;
  bool req_one;
  uint8_t *map; /* status per sector of the export, UNSET = not described yet */
  uint64_t described; /* bytes described from off */
  int calls;
};

static int extent_cb(void *opaque, const char *context, uint64_t offset, uint32_t *entries,
                     size_t nr_entries, int *error) {
  struct query *q = opaque;
  q->calls++;
  CHECK(strcmp(context, NBD_CONTEXT_BASE_ALLOCATION) == 0, "extents for context %s", context);
  CHECK(*error == 0, "extent callback with error %d", *error);
  CHECK(offset == q->off, "extents start at %" PRIu64 ", request at %" PRIu64, offset, q->off);
  CHECK(nr_entries >= 2 && nr_entries % 2 == 0, "%zu extent words", nr_entries);
  size_t n = nr_entries / 2;
  if (q->req_one)
    CHECK(n == 1, "REQ_ONE: %zu extents", n);
  uint64_t pos = offset;
  for (size_t i = 0; i < n; i++) {
    uint32_t len = entries[2 * i], flags = entries[2 * i + 1];
    CHECK(len > 0, "extent %zu of length 0", i);
    CHECK((flags & ~(uint32_t)(NBD_STATE_HOLE | NBD_STATE_ZERO)) == 0, "extent flags 0x%" PRIx32,
          flags);
    CHECK(pos + len <= q->size, "extent %" PRIu64 "+%" PRIu32 " past the export end", pos, len);
    /* The first k-1 extents sum to less than the request length. */
    if (i + 1 < n)
      CHECK(pos + len < q->off + q->len, "extent %zu of %zu ends past the request", i, n);
    if (q->req_one)
      CHECK(len <= q->len, "REQ_ONE extent of %" PRIu32 " for a request of %" PRIu64, len, q->len);
    for (uint64_t s = pos / SECTOR; s < DIV_ROUND_UP(pos + len, SECTOR) && s < q->size / SECTOR;
         s++)
      if (s * SECTOR >= q->off && s * SECTOR < q->off + q->len)
        q->map[s] = (uint8_t)flags;
    pos += len;
  }
  q->described = pos - offset;
  return 0;
}

static void block_status(struct nbd_handle *h, struct query *q, uint32_t flags) {
  q->calls = 0;
  q->req_one = flags & LIBNBD_CMD_FLAG_REQ_ONE;
  NBD_OK(nbd_block_status(h, q->len, q->off,
                          (nbd_extent_callback){.callback = extent_cb, .user_data = q}, flags));
  CHECK(q->calls == 1, "%d BLOCK_STATUS chunks for one context", q->calls);
}

/* Status of every sector of the export, asking again where a reply stopped short. */
static uint8_t *get_map(struct nbd_handle *h, uint64_t size) {
  uint8_t *map = malloc(size / SECTOR);
  memset(map, UNSET, size / SECTOR);
  uint64_t pos = 0;
  for (int i = 0; pos < size; i++) {
    CHECK(i < 100000, "BLOCK_STATUS makes no progress at %" PRIu64, pos);
    struct query q = {.off = pos, .len = MIN(size - pos, 0xfffffe00u), .size = size, .map = map};
    block_status(h, &q, 0);
    pos += MIN(q.described, size - pos);
  }
  for (uint64_t s = 0; s < size / SECTOR; s++)
    CHECK(map[s] != UNSET, "sector %" PRIu64 " not described", s);
  return map;
}

/* Whatever is ZERO must read as zeros: a false ZERO makes clients skip data. */
static void check_zero_claims(struct nbd_handle *h, const uint8_t *map, uint64_t size) {
  uint8_t *buf = malloc(size);
  NBD_OK(nbd_pread(h, buf, size, 0, 0));
  for (uint64_t s = 0; s < size / SECTOR; s++)
    if (map[s] & NBD_STATE_ZERO)
      CHECK(is_zero(buf + s * SECTOR, SECTOR), "sector %" PRIu64 " is ZERO but holds data", s);
  free(buf);
}

static void expect_range(const uint8_t *map, uint64_t off, uint64_t len, bool want_hole_zero,
                         const char *what) {
  for (uint64_t s = off / SECTOR; s < DIV_ROUND_UP(off + len, SECTOR); s++) {
    if (want_hole_zero)
      CHECK(map[s] == (NBD_STATE_HOLE | NBD_STATE_ZERO),
            "%s: sector %" PRIu64 " has status %u, expected HOLE|ZERO", what, s, map[s]);
    else
      CHECK((map[s] & (NBD_STATE_HOLE | NBD_STATE_ZERO)) == 0,
            "%s: sector %" PRIu64 " holds written data but has status %u", what, s, map[s]);
  }
}

static struct nbd_handle *connect_ctx(const char *s) {
  struct nbd_handle *h = harness_handle("");
  NBD_OK(nbd_add_meta_context(h, NBD_CONTEXT_BASE_ALLOCATION));
  NBD_OK(nbd_connect_unix(h, s));
  CHECK(nbd_can_meta_context(h, NBD_CONTEXT_BASE_ALLOCATION) == 1, "base:allocation refused");
  return h;
}

static void write_pattern(struct nbd_handle *h, uint64_t off, uint64_t len, uint32_t seed) {
  uint8_t *buf = malloc(len);
  pattern_fill(buf, len, off, seed);
  NBD_OK(nbd_pwrite(h, buf, len, off, 0));
  free(buf);
}

static void test_dynamic(void) {
  struct nbd_handle *h = connect_ctx(sock);
  uint8_t *map = get_map(h, SIZE);
  expect_range(map, 0, SIZE, true, "empty dynamic image");
  free(map);

  write_pattern(h, 2 * MiB + 4096, 4096, 1);
  write_pattern(h, 10 * MiB + 100, 1, 2);
  write_pattern(h, 12 * MiB - 512, 3 * MiB, 3);
  map = get_map(h, SIZE);
  expect_range(map, 0, 2 * MiB, true, "untouched block 0");
  expect_range(map, 4 * MiB, 6 * MiB, true, "untouched blocks 2-4");
  expect_range(map, 2 * MiB + 4096, 4096, false, "4 KiB write");
  expect_range(map, 10 * MiB + 100, 1, false, "1-byte write");
  expect_range(map, 12 * MiB - 512, 3 * MiB, false, "3 MiB write");
  check_zero_claims(h, map, SIZE);
  free(map);

  /* REQ_ONE: one extent, starting at the offset, no longer than asked. */
  struct query q = {.off = 0, .len = SIZE, .size = SIZE, .map = calloc(1, SIZE / SECTOR)};
  block_status(h, &q, LIBNBD_CMD_FLAG_REQ_ONE);
  CHECK(q.map[0] == (NBD_STATE_HOLE | NBD_STATE_ZERO), "REQ_ONE at 0: status %u", q.map[0]);
  CHECK(q.described <= 2 * MiB + 4096, "REQ_ONE at 0 describes %" PRIu64 " bytes, into data",
        q.described);
  q.off = 2 * MiB + 4096 + 100;
  q.len = 1000;
  block_status(h, &q, LIBNBD_CMD_FLAG_REQ_ONE);
  CHECK(q.map[q.off / SECTOR] == 0, "REQ_ONE inside data: status %u", q.map[q.off / SECTOR]);
  /* The last extent may run past an unaligned request, never past the end. */
  q.off = SIZE - 700;
  q.len = 600;
  block_status(h, &q, 0);
  free(q.map);

  /* Past the end: EINVAL, and the connection goes on. */
  NBD_OK(nbd_set_strict_mode(h, 0));
  q = (struct query){.off = SIZE, .len = 512, .size = SIZE, .map = calloc(1, SIZE / SECTOR)};
  NBD_ERRNO(nbd_block_status(h, 512, SIZE,
                             (nbd_extent_callback){.callback = extent_cb, .user_data = &q}, 0),
            EINVAL);
  NBD_ERRNO(nbd_block_status(h, 4096, SIZE - 512,
                             (nbd_extent_callback){.callback = extent_cb, .user_data = &q}, 0),
            EINVAL);
  free(q.map);
  uint8_t b[512];
  NBD_OK(nbd_pread(h, b, sizeof b, 0, 0));
  harness_close(h);

  /* No context negotiated: BLOCK_STATUS is EINVAL. */
  h = harness_connect(sock, "");
  NBD_OK(nbd_set_strict_mode(h, 0));
  q = (struct query){.off = 0, .len = 512, .size = SIZE, .map = calloc(1, SIZE / SECTOR)};
  NBD_ERRNO(nbd_block_status(h, 512, 0,
                             (nbd_extent_callback){.callback = extent_cb, .user_data = &q}, 0),
            EINVAL);
  free(q.map);
  NBD_OK(nbd_pread(h, b, sizeof b, 0, 0));
  harness_close(h);
}

static void test_fixed(void) {
  struct nbd_handle *h = connect_ctx(sock_fixed);
  uint64_t size = (uint64_t)nbd_get_size(h);
  uint8_t *map = get_map(h, size);
  for (uint64_t s = 0; s < size / SECTOR; s++)
    CHECK(!(map[s] & NBD_STATE_HOLE), "fixed image: sector %" PRIu64 " reported as a hole", s);
  check_zero_claims(h, map, size);
  free(map);
  harness_close(h);
}

/* A child sees its parent's data: reporting it as ZERO would lose it. */
static void test_differencing(const char *parent) {
  char before[65], after[65];
  harness_sha256(parent, before);
  struct nbd_handle *h = connect_ctx(sock_diff);
  uint8_t *map = get_map(h, SIZE);
  expect_range(map, 0, 1 * MiB, false, "parent data seen through the child");
  expect_range(map, 2 * MiB, SIZE - 2 * MiB, true, "unallocated in child and parent");
  free(map);
  write_pattern(h, 5 * MiB + 512, 8192, 7);
  NBD_OK(nbd_flush(h, 0));
  map = get_map(h, SIZE);
  expect_range(map, 0, 1 * MiB, false, "parent data seen through the child");
  expect_range(map, 5 * MiB + 512, 8192, false, "data written to the child");
  expect_range(map, 8 * MiB, SIZE - 8 * MiB, true, "unallocated in child and parent");
  check_zero_claims(h, map, SIZE);
  free(map);
  harness_close(h);
  CHECK(strcmp(before, harness_sha256(parent, after)) == 0,
        "the parent changed while its child was written");
}

int main(void) {
  harness_init("test-block-status", 60);
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  XSNPRINTF(sock_fixed, sizeof sock_fixed, "%s", harness_path("sock-fixed"));
  XSNPRINTF(sock_diff, sizeof sock_diff, "%s", harness_path("sock-diff"));

  harness_start_server_image(sock, harness_qemu_image("dyn.vhd", "dynamic", SIZE), false);
  harness_start_server_image(sock_fixed, harness_qemu_image("fixed.vhd", "fixed", 4 * MiB),
                             false);
  test_dynamic();
  test_fixed();

  uint8_t *content = calloc(1, SIZE);
  pattern_fill(content, 1 * MiB, 0, 9);
  char parent[4096], child[4096];
  XSNPRINTF(parent, sizeof parent, "%s",
            harness_qemu_image_from("parent.vhd", "dynamic", content, SIZE));
  free(content);
  XSNPRINTF(child, sizeof child, "%s",
            harness_vhdimg_create("child.vhd", "differencing", parent, 0));
  harness_start_server_image(sock_diff, child, false);
  test_differencing(parent);

  return harness_finish();
}
