/* NBD_FLAG_CAN_MULTI_CONN: four connections write disjoint ranges at the same
 * time; a write answered on one is visible to reads on every other; a FLUSH on
 * one persists all of them.  Afterwards the image is check-clean and holds
 * exactly what was written. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

#define NCONN 4
#define SIZE (16 * MiB)
#define SLICE (SIZE / NCONN)
#define CHUNK (256 * KiB)

static int write_done(void *opaque, int *error) {
  int *failed = opaque;
  if (*error) {
    fprintf(stderr, "aio write failed: %s\n", strerror(*error));
    (*failed)++;
  }
  return 1; /* retire the command */
}

/* Polls every handle until none has a command in flight. */
static void drain(struct nbd_handle **h, int n) {
  for (int rounds = 0;; rounds++) {
    CHECK(rounds < 100000, "commands never completed");
    bool busy = false;
    for (int i = 0; i < n; i++) {
      if (nbd_aio_in_flight(h[i]) > 0) {
        busy = true;
        NBD_OK(nbd_poll(h[i], 10));
      }
    }
    if (!busy)
      return;
  }
}

int main(void) {
  harness_init("test-multi-conn", 60);
  char sock[4096], img[4096];
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image("img.vhd", "dynamic", SIZE));
  harness_start_server_image(sock, img, false);

  uint8_t *expected = calloc(1, SIZE);
  struct nbd_handle *h[NCONN];
  for (int i = 0; i < NCONN; i++) {
    h[i] = harness_connect(sock, "");
    CHECK(nbd_can_multi_conn(h[i]) == 1, "connection %d: CAN_MULTI_CONN not advertised", i);
    CHECK(nbd_can_flush(h[i]) == 1, "connection %d: FLUSH not advertised", i);
  }

  /* Every connection fills its own slice, all at once; the last write of each
   * slice is unaligned so sector read-modify-write paths run too. */
  int failed = 0;
  for (int i = 0; i < NCONN; i++) {
    uint64_t base = (uint64_t)i * SLICE;
    pattern_fill(expected + base, SLICE - 4096, base, (uint32_t)i + 1);
    for (uint64_t off = 0; off < SLICE - 4096; off += CHUNK) {
      uint64_t len = MIN(CHUNK, SLICE - 4096 - off);
      NBD_OK(nbd_aio_pwrite(h[i], expected + base + off, len, base + off,
                            (nbd_completion_callback){.callback = write_done,
                                                      .user_data = &failed},
                            0));
    }
    uint64_t odd = base + SLICE - 4096 + 77;
    pattern_fill(expected + odd, 1000, odd, 100 + (uint32_t)i);
    NBD_OK(nbd_aio_pwrite(h[i], expected + odd, 1000, odd,
                          (nbd_completion_callback){.callback = write_done, .user_data = &failed},
                          0));
  }
  drain(h, NCONN);
  CHECK(failed == 0, "%d writes failed", failed);

  /* Visibility right after the reply, on every other connection. */
  uint8_t *buf = malloc(SIZE);
  for (int i = 0; i < NCONN; i++) {
    uint64_t off = (uint64_t)i * SLICE + 12345;
    pattern_fill(expected + off, 3000, off, 200 + (uint32_t)i);
    NBD_OK(nbd_pwrite(h[i], expected + off, 3000, off, 0));
    for (int j = 0; j < NCONN; j++) {
      NBD_OK(nbd_pread(h[j], buf, 3000, off, 0));
      CHECK(memcmp(buf, expected + off, 3000) == 0,
            "write answered on connection %d not seen by connection %d", i, j);
    }
  }

  /* One FLUSH covers everything already answered, on every connection. */
  NBD_OK(nbd_flush(h[NCONN - 1], 0));
  for (int j = 0; j < NCONN; j++) {
    NBD_OK(nbd_pread(h[j], buf, 16 * MiB, 0, 0));
    if (memcmp(buf, expected, SIZE) != 0)
      for (uint64_t k = 0; k < SIZE; k++)
        if (buf[k] != expected[k])
          FAIL("connection %d reads 0x%02x at %" PRIu64 ", expected 0x%02x", j, buf[k], k,
               expected[k]);
  }
  free(buf);
  for (int i = 0; i < NCONN; i++)
    harness_close(h[i]);

  int rc = harness_finish();
  if (rc == 0) {
    CHECK(harness_check_image(img) == 0, "%s is not clean", img);
    harness_expect_image_content(img, expected, SIZE, true);
  }
  free(expected);
  return rc;
}
