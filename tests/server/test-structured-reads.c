/* READ with structured replies (chunks checked one by one: inside the request,
 * no overlap, full cover, data and holes matching the image, DF = one chunk)
 * and with simple replies, against an image of known content; a DF read that
 * fails after its data chunk began completes the chunk and ends in an error
 * chunk. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define SIZE (40 * MiB)

static uint8_t *expected;
static char sock[4096];

/* Known content: data, an all-zero 2 MiB block (unallocated), data with zero
 * sectors inside an allocated block, a zero tail. */
static void make_content(void) {
  expected = calloc(1, SIZE);
  if (!expected)
    FAIL("calloc");
  pattern_fill(expected, 2 * MiB, 0, 2);
  pattern_fill(expected + 4 * MiB, 1 * MiB, 4 * MiB, 3);
  memset(expected + 4 * MiB + 4096, 0, 8192);
  pattern_fill(expected + 36 * MiB - 512, 512, 36 * MiB - 512, 4);
  pattern_fill(expected + SIZE - 1000, 1000, SIZE - 1000, 5);
}

struct range {
  uint64_t off, len;
};

static const struct range ranges[] = {
    {0, 1},
    {0, 512},
    {SIZE - 1, 1},
    {SIZE - 4096, 4096},
    {2 * MiB - 1000, 5000},        /* data into a hole */
    {4 * MiB - 3, 4096 + 8192 + 7}, /* hole, data, zero sectors, data */
    {1 * MiB + 17, 3 * MiB + 5},
    {4 * MiB, 32 * MiB},            /* the maximum payload */
};

static void check_pread(struct nbd_handle *h, const char *what) {
  uint8_t *buf = malloc(32 * MiB);
  if (!buf)
    FAIL("malloc");
  for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
    const struct range *r = &ranges[i];
    memset(buf, 0xa5, r->len);
    NBD_OK(nbd_pread(h, buf, r->len, r->off, 0));
    if (memcmp(buf, expected + r->off, r->len) != 0) {
      size_t j = 0;
      while (buf[j] == expected[r->off + j])
        j++;
      FAIL("%s: read of %" PRIu64 "+%" PRIu64 ": wrong byte at %" PRIu64 " (0x%02x, expected 0x%02x)",
           what, r->off, r->len, r->off + j, buf[j], expected[r->off + j]);
    }
  }
  free(buf);
}

struct chunks {
  uint64_t off, len;
  uint8_t *covered; /* one byte per request byte */
  int data_chunks, hole_chunks;
};

static int chunk_cb(void *opaque, const void *subbuf, size_t count, uint64_t offset,
                    unsigned status, int *error) {
  struct chunks *c = opaque;
  CHECK(count > 0, "empty chunk at %" PRIu64, offset);
  CHECK(offset >= c->off && offset + count <= c->off + c->len,
        "chunk %" PRIu64 "+%zu outside the request %" PRIu64 "+%" PRIu64, offset, count, c->off,
        c->len);
  uint64_t rel = offset - c->off;
  const uint8_t *overlap = memchr(c->covered + rel, 1, count);
  CHECK(!overlap, "chunk %" PRIu64 "+%zu overlaps an earlier one at %" PRIu64, offset, count,
        offset + (uint64_t)(overlap - (c->covered + rel)));
  memset(c->covered + rel, 1, count);
  switch (status) {
  case LIBNBD_READ_DATA:
    c->data_chunks++;
    CHECK(memcmp(subbuf, expected + offset, count) == 0, "data chunk %" PRIu64 "+%zu: wrong data",
          offset, count);
    break;
  case LIBNBD_READ_HOLE:
    c->hole_chunks++;
    CHECK(is_zero(expected + offset, count), "hole chunk %" PRIu64 "+%zu over non-zero data",
          offset, count);
    break;
  default:
    FAIL("chunk %" PRIu64 "+%zu: status %u (error %d)", offset, count, status, *error);
  }
  return 0;
}

static void check_chunks(struct nbd_handle *h, uint32_t flags) {
  uint8_t *buf = malloc(32 * MiB);
  if (!buf)
    FAIL("malloc");
  for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++) {
    const struct range *r = &ranges[i];
    /* The spec lets a server refuse DF reads over 64 KiB; vhdnbd answers
     * them in one chunk, also those it produces a slice at a time. */
    struct chunks c = {.off = r->off, .len = r->len, .covered = calloc(1, r->len)};
    NBD_OK(nbd_pread_structured(h, buf, r->len, r->off,
                                (nbd_chunk_callback){.callback = chunk_cb, .user_data = &c},
                                flags));
    const uint8_t *gap = memchr(c.covered, 0, r->len);
    CHECK(!gap, "read %" PRIu64 "+%" PRIu64 ": byte %" PRIu64 " in no chunk", r->off, r->len,
          r->off + (uint64_t)(gap - c.covered));
    CHECK(memcmp(buf, expected + r->off, r->len) == 0, "read %" PRIu64 "+%" PRIu64 ": data",
          r->off, r->len);
    if (flags & LIBNBD_CMD_FLAG_DF)
      CHECK(c.data_chunks + c.hole_chunks == 1, "DF read %" PRIu64 "+%" PRIu64 ": %d chunks",
            r->off, r->len, c.data_chunks + c.hole_chunks);
    free(c.covered);
  }
  free(buf);
}

struct df_failure {
  int data_chunks, error_chunks;
  uint64_t data_len, error_off;
};

static int df_failure_cb(void *opaque, const void *subbuf, size_t count, uint64_t offset,
                         unsigned status, int *error) {
  struct df_failure *f = opaque;
  if (status == LIBNBD_READ_DATA) {
    f->data_chunks++;
    f->data_len += count;
    /* The slice read before the failure carries the image's data. */
    CHECK(offset == 0 && memcmp(subbuf, expected, 1 * MiB) == 0,
          "DF read failing in its second slice: data chunk at %" PRIu64 " holds wrong data",
          offset);
  } else if (status == LIBNBD_READ_ERROR) {
    f->error_chunks++;
    f->error_off = offset;
  } else {
    FAIL("DF read failing in its second slice: chunk status %u (error %d)", status, *error);
  }
  return 0;
}

/* A DF READ whose second slice fails (its image cut short under the
 * server): its one data chunk must still be whole, an error chunk must
 * follow it, and the connection must go on serving. */
static void check_df_failure(const char *img) {
  char copy[4096], sock2[4096];
  XSNPRINTF(copy, sizeof copy, "%s", harness_path("cut.vhd"));
  XSNPRINTF(sock2, sizeof sock2, "%s", harness_path("sock2"));
  harness_run_ok((const char *const[]){"cp", img, copy, NULL});
  harness_start_server_image(sock2, copy, true);
  struct nbd_handle *h = harness_connect(sock2, "");
  /* Block 0's data: its BAT entry's sector, past a bitmap of one sector
   * (2 MiB blocks); the file ends 4 KiB into its second MiB. */
  FILE *f = fopen(copy, "r+b");
  uint8_t hdr[1024], ent[4];
  CHECK(f && fseek(f, 512, SEEK_SET) == 0 && fread(hdr, 1, sizeof hdr, f) == sizeof hdr,
        "%s: reading its header", copy);
  uint64_t bat = 0;
  for (int i = 0; i < 8; i++)
    bat = bat << 8 | hdr[16 + i];
  CHECK(fseek(f, (long)bat, SEEK_SET) == 0 && fread(ent, 1, 4, f) == 4, "%s: its BAT", copy);
  uint64_t data = ((uint64_t)ent[0] << 24 | ent[1] << 16 | ent[2] << 8 | ent[3]) * 512 + 512;
  CHECK(ftruncate(fileno(f), (off_t)(data + 1 * MiB + 4096)) == 0, "%s: truncate", copy);
  fclose(f);

  uint8_t *buf = malloc(2 * MiB);
  if (!buf)
    FAIL("malloc");
  struct df_failure c = {0};
  int r = nbd_pread_structured(h, buf, 2 * MiB, 0,
                               (nbd_chunk_callback){.callback = df_failure_cb, .user_data = &c},
                               LIBNBD_CMD_FLAG_DF);
  CHECK(r == -1 && nbd_get_errno() == EIO, "DF read failing in its second slice: %s",
        r == -1 ? nbd_get_error() : "succeeded");
  CHECK(c.data_chunks == 1 && c.data_len == 2 * MiB,
        "DF read failing in its second slice: %d data chunks, %" PRIu64 " bytes", c.data_chunks,
        c.data_len);
  CHECK(c.error_chunks == 1 && c.error_off == 1 * MiB,
        "DF read failing in its second slice: %d error chunks, the last at %" PRIu64,
        c.error_chunks, c.error_off);
  /* The reply was framed whole: the connection goes on. */
  NBD_OK(nbd_pread(h, buf, 4096, 0, 0));
  CHECK(memcmp(buf, expected, 4096) == 0, "after the failed DF read: data");
  free(buf);
  harness_close(h);
}

int main(void) {
  harness_init("test-structured-reads", 60);
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  make_content();
  const char *img = harness_qemu_image_from("img.vhd", "dynamic", expected, SIZE);
  harness_start_server_image(sock, img, false);

  struct nbd_handle *h = harness_connect(sock, "");
  CHECK(nbd_get_structured_replies_negotiated(h) == 1, "structured replies not negotiated");
  CHECK(nbd_get_size(h) == (int64_t)SIZE, "size %" PRId64, nbd_get_size(h));
  check_pread(h, "structured");
  check_chunks(h, 0);
  CHECK(nbd_can_df(h) == 1, "SEND_DF not advertised with structured replies");
  check_chunks(h, LIBNBD_CMD_FLAG_DF);
  /* FUA is valid on any command once SEND_FUA is advertised. */
  if (nbd_can_fua(h) == 1) {
    uint8_t b[512];
    NBD_OK(nbd_set_strict_mode(h, 0));
    NBD_OK(nbd_pread(h, b, sizeof b, 0, LIBNBD_CMD_FLAG_FUA));
    CHECK(memcmp(b, expected, sizeof b) == 0, "READ with FUA: data");
  }
  harness_close(h);

  h = harness_handle("");
  NBD_OK(nbd_set_request_structured_replies(h, false));
  NBD_OK(nbd_connect_unix(h, sock));
  CHECK(nbd_get_structured_replies_negotiated(h) == 0, "structured replies negotiated");
  CHECK(nbd_can_df(h) == 0, "SEND_DF advertised without structured replies");
  check_pread(h, "simple");
  harness_close(h);

  check_df_failure(img);

  free(expected);
  return harness_finish();
}
