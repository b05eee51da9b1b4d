/* Writes that share a sector but not a byte, all in flight at once, on one
 * connection and spread over four: every one must take effect.  VHD stores
 * whole sectors, so the server reads, modifies and writes them back; if two
 * such updates of one sector overlap in time, one is lost.  Also concurrent
 * first writes into one unallocated block (allocation races), and the same
 * on a differencing child, whose sector heads and tails come from the parent. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define SIZE (8 * MiB)
#define NCONN 4

static int failures;

static int done_cb(void *opaque, int *error) {
  if (*error) {
    fprintf(stderr, "write failed: %s\n", strerror(*error));
    failures++;
  }
  return 1;
}

static void drain(struct nbd_handle **h, int n) {
  for (int rounds = 0;; rounds++) {
    CHECK(rounds < 1000000, "writes never completed");
    int busy = 0;
    for (int i = 0; i < n; i++)
      if (nbd_aio_in_flight(h[i]) > 0) {
        busy++;
        NBD_OK(nbd_poll(h[i], 1));
      }
    if (!busy)
      return;
  }
}

static void submit(struct nbd_handle *h, uint8_t *model, uint64_t off, size_t len, uint8_t v) {
  memset(model + off, v, len);
  NBD_OK(nbd_aio_pwrite(h, model + off, len, off,
                        (nbd_completion_callback){.callback = done_cb}, 0));
}

/* Byte-, sector- and block-sharing writes spread over the connections. */
static void workload(struct nbd_handle **h, int n, uint8_t *model, uint64_t base) {
  failures = 0;
  /* 2048 single bytes, 4 sectors, neighbours on different connections. */
  for (uint64_t i = 0; i < 2048; i++)
    submit(h[i % (uint64_t)n], model, base + i, 1, (uint8_t)(i * 7 + 1));
  /* Odd-sized pieces straddling sector boundaries. */
  for (uint64_t i = 0; i < 64; i++)
    submit(h[(i + 1) % (uint64_t)n], model, base + 8192 + i * 100, 100, (uint8_t)(i + 3));
  /* Every sector of a block never written before, all at once. */
  for (uint64_t s = 0; s < 256; s++)
    submit(h[s % (uint64_t)n], model, base + 2 * MiB + s * 512, 512, (uint8_t)(s | 0x80));
  /* Half sectors of another fresh block. */
  for (uint64_t s = 0; s < 512; s++)
    submit(h[s % (uint64_t)n], model, base + 4 * MiB + s * 256, 256, (uint8_t)(s + 9));
  drain(h, n);
  CHECK(failures == 0, "%d writes failed", failures);
}

static void verify(struct nbd_handle *h, const uint8_t *model, const char *what) {
  uint8_t *buf = malloc(SIZE);
  NBD_OK(nbd_pread(h, buf, SIZE, 0, 0));
  if (memcmp(buf, model, SIZE) != 0)
    for (uint64_t i = 0; i < SIZE; i++)
      if (buf[i] != model[i])
        FAIL("%s: byte %" PRIu64 " is 0x%02x, expected 0x%02x (a lost update)", what, i, buf[i],
             model[i]);
  free(buf);
}

static void run(const char *sock, uint8_t *model, const char *what) {
  struct nbd_handle *h[NCONN];
  for (int i = 0; i < NCONN; i++)
    h[i] = harness_connect(sock, "");
  workload(h, 1, model, 0);
  verify(h[0], model, what);
  workload(h, NCONN, model, 512 * KiB + 1);
  for (int i = 0; i < NCONN; i++)
    verify(h[i], model, what);
  for (int i = 0; i < NCONN; i++)
    harness_close(h[i]);
}

int main(void) {
  harness_init("test-sub-sector", 60);
  char sock[4096], sock2[4096], img[4096], parent[4096], child[4096];
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  XSNPRINTF(sock2, sizeof sock2, "%s", harness_path("sock2"));
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image("img.vhd", "dynamic", SIZE));

  uint8_t *model = calloc(1, SIZE);
  harness_start_server_image(sock, img, false);
  run(sock, model, "dynamic");

  uint8_t *pmodel = malloc(SIZE);
  pattern_fill(pmodel, SIZE, 0, 3);
  XSNPRINTF(parent, sizeof parent, "%s",
            harness_qemu_image_from("parent.vhd", "dynamic", pmodel, SIZE));
  XSNPRINTF(child, sizeof child, "%s",
            harness_vhdimg_create("child.vhd", "differencing", parent, 0));
  harness_start_server_image(sock2, child, false);
  run(sock2, pmodel, "differencing");

  int rc = harness_finish();
  if (rc == 0) {
    CHECK(harness_check_image(img) == 0, "%s is not clean", img);
    CHECK(harness_check_image(child) == 0, "%s is not clean", child);
    harness_expect_image_content(img, model, SIZE, true);
    harness_expect_image_content(child, pmodel, SIZE, false);
  }
  free(model);
  free(pmodel);
  return rc;
}
