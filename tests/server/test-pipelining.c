/* Pipelining: thousands of requests in flight on one connection (writes, then
 * small and large reads mixed), every reply matched to its cookie and its data
 * verified; replies may come back in any order.  Then NBD_CMD_DISC with writes
 * still in flight: the server must answer them all before closing, and they
 * must all be in the image. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define SIZE (32 * MiB)
#define SLOT (16 * KiB)
#define NSLOTS (SIZE / SLOT) /* 2048 */
#define WLEN 4096u

struct op {
  int64_t cookie;
  uint64_t off;
  size_t len;
  uint8_t *buf;
  bool done;
  int error;
};

struct run {
  struct op *ops;
  size_t nops;
  size_t completed;
  int64_t last_cookie;
  size_t out_of_order;
};

struct ctx {
  struct run *run;
  size_t index;
};

static struct ctx *ctxs;

static int completed(void *opaque, int *error) {
  struct ctx *c = opaque;
  struct op *op = &c->run->ops[c->index];
  CHECK(!op->done, "request %zu completed twice", c->index);
  op->done = true;
  op->error = *error;
  c->run->completed++;
  if (op->cookie < c->run->last_cookie)
    c->run->out_of_order++;
  else
    c->run->last_cookie = op->cookie;
  return 1;
}

static void wait_all(struct nbd_handle *h, struct run *r) {
  for (int i = 0; r->completed < r->nops; i++) {
    CHECK(i < 1000000, "only %zu of %zu requests completed", r->completed, r->nops);
    NBD_OK(nbd_poll(h, 1000));
  }
  CHECK(nbd_aio_in_flight(h) == 0, "%d requests still in flight", nbd_aio_in_flight(h));
  for (size_t i = 0; i < r->nops; i++)
    CHECK(r->ops[i].error == 0, "request %zu (%" PRIu64 "+%zu) failed: %s", i, r->ops[i].off,
          r->ops[i].len, strerror(r->ops[i].error));
}

static void run_init(struct run *r, size_t n) {
  *r = (struct run){.ops = calloc(n, sizeof *r->ops), .nops = n, .last_cookie = -1};
  ctxs = realloc(ctxs, n * sizeof *ctxs);
  for (size_t i = 0; i < n; i++)
    ctxs[i] = (struct ctx){.run = r, .index = i};
}

static nbd_completion_callback cb(size_t i) {
  return (nbd_completion_callback){.callback = completed, .user_data = &ctxs[i]};
}

/* Slot k holds WLEN bytes of pattern at k*SLOT + (k % 8) * 512; the rest is zero. */
static uint64_t slot_off(size_t k) { return k * SLOT + (k % 8) * 512; }

static void test_writes_then_reads(struct nbd_handle *h, uint8_t *data) {
  struct run r;
  run_init(&r, NSLOTS);
  int peak = 0;
  for (size_t k = 0; k < NSLOTS; k++) {
    struct op *op = &r.ops[k];
    op->off = slot_off(k);
    op->len = WLEN;
    pattern_fill(data + op->off, WLEN, op->off, 1);
    op->cookie = nbd_aio_pwrite(h, data + op->off, WLEN, op->off, cb(k), 0);
    NBD_OK(op->cookie);
    peak = MAX(peak, nbd_aio_in_flight(h));
  }
  harness_note("%zu writes issued, up to %d in flight", r.nops, peak);
  CHECK(peak >= 1000, "only %d requests were ever in flight", peak);
  wait_all(h, &r);
  harness_note("writes: %zu completions out of cookie order", r.out_of_order);
  free(r.ops);

  /* Reads: each slot's data, a zero area next to it, and every 64th a 1 MiB
   * read spanning many slots, all in flight together. */
  size_t nreads = NSLOTS * 2 + NSLOTS / 64;
  run_init(&r, nreads);
  uint8_t *rbuf = malloc(NSLOTS * (WLEN + 512) + (NSLOTS / 64) * MiB);
  uint8_t *p = rbuf;
  size_t i = 0;
  for (size_t k = 0; k < NSLOTS; k++) {
    struct op *op = &r.ops[i];
    *op = (struct op){.off = slot_off(k), .len = WLEN, .buf = p};
    p += WLEN;
    op->cookie = nbd_aio_pread(h, op->buf, op->len, op->off, cb(i++), 0);
    NBD_OK(op->cookie);
    op = &r.ops[i];
    *op = (struct op){.off = slot_off(k) + WLEN + 1000, .len = 512, .buf = p};
    p += 512;
    op->cookie = nbd_aio_pread(h, op->buf, op->len, op->off, cb(i++), 0);
    NBD_OK(op->cookie);
    if (k % 64 == 63) {
      op = &r.ops[i];
      *op = (struct op){.off = (k - 63) * SLOT, .len = MiB, .buf = p};
      p += MiB;
      op->cookie = nbd_aio_pread(h, op->buf, op->len, op->off, cb(i++), 0);
      NBD_OK(op->cookie);
    }
  }
  CHECK(i == nreads, "%zu reads issued, expected %zu", i, nreads);
  wait_all(h, &r);
  harness_note("reads: %zu of %zu completions out of cookie order", r.out_of_order, r.nops);
  for (i = 0; i < nreads; i++) {
    struct op *op = &r.ops[i];
    if (memcmp(op->buf, data + op->off, op->len) != 0)
      FAIL("read %zu (%" PRIu64 "+%zu) returned wrong data", i, op->off, op->len);
  }
  free(rbuf);
  free(r.ops);
}

/* DISC right behind 500 writes: all must be answered and stored. */
static void test_disc_with_writes_in_flight(const char *sock, uint8_t *data) {
  struct nbd_handle *h = harness_connect(sock, "");
  struct run r;
  run_init(&r, 500);
  for (size_t k = 0; k < r.nops; k++) {
    struct op *op = &r.ops[k];
    op->off = slot_off(k) + WLEN + 2048; /* inside the zero part of slot k */
    op->len = 2048;
    pattern_fill(data + op->off, op->len, op->off, 2);
    op->cookie = nbd_aio_pwrite(h, data + op->off, op->len, op->off, cb(k), 0);
    NBD_OK(op->cookie);
  }
  NBD_OK(nbd_shutdown(h, 0));
  CHECK(r.completed == r.nops, "DISC: %zu of %zu writes answered before the close",
        r.completed, r.nops);
  for (size_t k = 0; k < r.nops; k++)
    CHECK(r.ops[k].error == 0, "write %zu failed: %s", k, strerror(r.ops[k].error));
  nbd_close(h);
  free(r.ops);

  h = harness_connect(sock, "");
  uint8_t *buf = malloc(SIZE);
  NBD_OK(nbd_pread(h, buf, SIZE, 0, 0));
  if (memcmp(buf, data, SIZE) != 0)
    for (uint64_t k = 0; k < SIZE; k++)
      if (buf[k] != data[k])
        FAIL("after DISC: byte %" PRIu64 " is 0x%02x, expected 0x%02x", k, buf[k], data[k]);
  free(buf);
  harness_close(h);
}

int main(void) {
  harness_init("test-pipelining", 60);
  char sock[4096], img[4096];
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image("img.vhd", "dynamic", SIZE));
  harness_start_server_image(sock, img, false);

  uint8_t *data = calloc(1, SIZE);
  struct nbd_handle *h = harness_connect(sock, "");
  test_writes_then_reads(h, data);
  harness_close(h);
  test_disc_with_writes_in_flight(sock, data);

  int rc = harness_finish();
  if (rc == 0) {
    CHECK(harness_check_image(img) == 0, "%s is not clean", img);
    harness_expect_image_content(img, data, SIZE, true);
  }
  free(data);
  free(ctxs);
  return rc;
}
