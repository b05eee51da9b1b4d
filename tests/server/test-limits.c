/* At the limits: the largest VHD (0xff000000 sectors, just under 2040 GiB)
 * read and written at both ends and across its last block boundary; requests
 * without payload of almost 4 GiB (BLOCK_STATUS, WRITE_ZEROES, TRIM, CACHE, as
 * the kernel sends) that must never cost the connection; offsets that overflow;
 * and 64 clients doing I/O at once. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nbd-proto.h"
#include "harness.h"

#define HUGE (UINT64_C(0xff000000) * 512)
#define ALMOST_4G (UINT64_C(0xfffff000))

static char sock[4096];

static int count_extents(void *opaque, const char *context, uint64_t offset, uint32_t *entries,
                         size_t nr, int *error) {
  uint64_t *described = opaque;
  for (size_t i = 0; i + 1 < nr; i += 2)
    *described += entries[i];
  return 0;
}

static void alive(struct nbd_handle *h, const char *after) {
  uint8_t b[512];
  if (nbd_pread(h, b, sizeof b, HUGE - 512, 0) == -1)
    FAIL("connection unusable after %s: %s", after, nbd_get_error());
}

/* Payload-less commands beyond the maximum payload: success, or a clean
 * EINVAL/EOVERFLOW; never a dropped connection. */
static void big_command(struct nbd_handle *h, const char *what, int r) {
  if (r == -1) {
    int e = nbd_get_errno();
    CHECK(e == EINVAL || e == EOVERFLOW, "%s: %s", what, nbd_get_error());
    harness_note("%s: refused (%s)", what, strerror(e));
  } else
    harness_note("%s: done", what);
  alive(h, what);
}

static void test_huge_image(void) {
  struct nbd_handle *h = harness_handle("");
  NBD_OK(nbd_add_meta_context(h, NBD_CONTEXT_BASE_ALLOCATION));
  NBD_OK(nbd_connect_unix(h, sock));
  CHECK(nbd_get_size(h) == (int64_t)HUGE, "size %" PRId64 ", expected %" PRIu64,
        nbd_get_size(h), HUGE);

  /* Both ends, and across the last 2 MiB block boundary. */
  static uint8_t buf[MiB], back[MiB];
  const uint64_t offs[] = {0, HUGE - 1, HUGE - 512, HUGE - 2 * MiB - 1000, HUGE / 2 - 77};
  const size_t lens[] = {4096, 1, 512, 4096, 100000};
  for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
    pattern_fill(buf, lens[i], offs[i], 5);
    NBD_OK(nbd_pwrite(h, buf, lens[i], offs[i], 0));
    NBD_OK(nbd_pread(h, back, lens[i], offs[i], 0));
    CHECK(memcmp(buf, back, lens[i]) == 0, "huge image: data at %" PRIu64, offs[i]);
  }
  NBD_OK(nbd_flush(h, 0));

  NBD_OK(nbd_set_strict_mode(h, 0));
  NBD_ERRNO(nbd_pread(h, buf, 1024, HUGE - 512, 0), EINVAL);
  NBD_ERRNO(nbd_pwrite(h, buf, 1024, HUGE - 512, 0), ENOSPC);
  NBD_ERRNO(nbd_pread(h, buf, 512, UINT64_MAX - 511, 0), EINVAL);
  NBD_ERRNO(nbd_zero(h, 4096, UINT64_MAX - 2047, 0), ENOSPC);
  NBD_ERRNO(nbd_trim(h, 4096, UINT64_MAX - 2047, 0), EINVAL);
  alive(h, "overflowing offsets");

  /* Almost 4 GiB in one request, at the start, the middle and the end. */
  const uint64_t at[] = {0, HUGE / 2 - ALMOST_4G / 2, HUGE - ALMOST_4G};
  for (size_t i = 0; i < 3; i++) {
    uint64_t described = 0;
    big_command(h, "4 GiB BLOCK_STATUS",
                nbd_block_status(h, ALMOST_4G, at[i],
                                 (nbd_extent_callback){.callback = count_extents,
                                                       .user_data = &described},
                                 0));
    CHECK(described > 0, "4 GiB BLOCK_STATUS at %" PRIu64 " described nothing", at[i]);
    big_command(h, "4 GiB TRIM", nbd_trim(h, ALMOST_4G, at[i], 0));
    big_command(h, "4 GiB WRITE_ZEROES", nbd_zero(h, ALMOST_4G, at[i], 0));
    if (nbd_can_cache(h) == 1)
      big_command(h, "4 GiB CACHE", nbd_cache(h, ALMOST_4G, at[i], 0));
  }
  /* Whatever the big requests did, zeros were promised only where they succeeded;
   * rewrite the ends and read them back. */
  for (size_t i = 0; i < sizeof offs / sizeof offs[0]; i++) {
    pattern_fill(buf, lens[i], offs[i], 6);
    NBD_OK(nbd_pwrite(h, buf, lens[i], offs[i], 0));
    NBD_OK(nbd_pread(h, back, lens[i], offs[i], 0));
    CHECK(memcmp(buf, back, lens[i]) == 0, "huge image: rewritten data at %" PRIu64, offs[i]);
  }
  harness_close(h);
}

static int done_cb(void *opaque, int *error) {
  int *failures = opaque;
  if (*error)
    (*failures)++;
  return 1;
}

static void test_many_clients(const char *sock2) {
  enum { N = 64 };
  struct nbd_handle *h[N];
  static uint8_t data[N][65536], back[N][65536];
  int failures = 0;
  for (int i = 0; i < N; i++) {
    h[i] = harness_connect(sock2, "");
    pattern_fill(data[i], sizeof data[i], (uint64_t)i * 65536, 9);
    NBD_OK(nbd_aio_pwrite(h[i], data[i], sizeof data[i], (uint64_t)i * 65536,
                          (nbd_completion_callback){.callback = done_cb, .user_data = &failures},
                          0));
  }
  for (int rounds = 0;; rounds++) {
    CHECK(rounds < 100000, "64 clients: writes never completed");
    int busy = 0;
    for (int i = 0; i < N; i++)
      if (nbd_aio_in_flight(h[i]) > 0) {
        busy++;
        NBD_OK(nbd_poll(h[i], 1));
      }
    if (!busy)
      break;
  }
  CHECK(failures == 0, "64 clients: %d writes failed", failures);
  for (int i = 0; i < N; i++) {
    int j = (i + 17) % N; /* read what another client wrote */
    NBD_OK(nbd_pread(h[i], back[j], sizeof back[j], (uint64_t)j * 65536, 0));
    CHECK(memcmp(back[j], data[j], sizeof data[j]) == 0, "client %d reads client %d's data", i,
          j);
  }
  for (int i = 0; i < N; i++)
    harness_close(h[i]);
}

int main(void) {
  harness_init("test-limits", 60);
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  char img[4096], img2[4096], sock2[4096];
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image("huge.vhd", "dynamic", HUGE));
  harness_start_server_image(sock, img, false);
  test_huge_image();

  XSNPRINTF(sock2, sizeof sock2, "%s", harness_path("sock2"));
  XSNPRINTF(img2, sizeof img2, "%s", harness_qemu_image("small.vhd", "dynamic", 8 * MiB));
  harness_start_server_image(sock2, img2, false);
  test_many_clients(sock2);

  int rc = harness_finish();
  if (rc == 0) {
    CHECK(harness_check_image(img) == 0, "%s is not clean", img);
    CHECK(harness_check_image(img2) == 0, "%s is not clean", img2);
  }
  return rc;
}
