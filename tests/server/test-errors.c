/* Errors in transmission: out-of-range READ (EINVAL) and WRITE/WRITE_ZEROES
 * (ENOSPC), u64 overflow, writes on read-only exports (EPERM, with -r and with
 * an ",ro" export), zero-length requests, unknown or misplaced flags, unknown
 * commands, oversized payloads.  After every error the connection must still
 * work, and refused writes must change nothing. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "endian-be.h"
#include "nbd-proto.h"
#include "harness.h"

#define SIZE (40 * MiB)

static char sock[4096], sock_ro[4096];

/* The connection still answers, and the image's last sector is untouched. */
static void still_works(struct nbd_handle *h, const char *after) {
  uint8_t buf[512];
  if (nbd_pread(h, buf, sizeof buf, SIZE - 512, 0) == -1)
    FAIL("connection unusable after %s: %s", after, nbd_get_error());
  CHECK(pattern_check(buf, sizeof buf, SIZE - 512, 1) < 0, "last sector changed after %s",
        after);
}

static void test_ranges(struct nbd_handle *h) {
  uint8_t buf[1024];
  pattern_fill(buf, sizeof buf, 0, 99);

  NBD_ERRNO(nbd_pread(h, buf, 512, SIZE, 0), EINVAL);
  still_works(h, "READ at the end");
  NBD_ERRNO(nbd_pread(h, buf, 1024, SIZE - 512, 0), EINVAL);
  still_works(h, "READ across the end");
  NBD_ERRNO(nbd_pread(h, buf, 512, UINT64_MAX - 255, 0), EINVAL);
  still_works(h, "READ with offset+length overflowing");

  NBD_ERRNO(nbd_pwrite(h, buf, 512, SIZE, 0), ENOSPC);
  still_works(h, "WRITE at the end");
  NBD_ERRNO(nbd_pwrite(h, buf, 1024, SIZE - 512, 0), ENOSPC);
  still_works(h, "WRITE across the end (must not write the part inside)");
  NBD_ERRNO(nbd_pwrite(h, buf, 512, UINT64_MAX - 255, 0), ENOSPC);
  still_works(h, "WRITE with offset+length overflowing");

  if (nbd_can_zero(h) == 1) {
    NBD_ERRNO(nbd_zero(h, 1024, SIZE - 512, 0), ENOSPC);
    still_works(h, "WRITE_ZEROES across the end");
  }
  if (nbd_can_trim(h) == 1) {
    NBD_ERRNO(nbd_trim(h, 1024, SIZE - 512, 0), EINVAL);
    still_works(h, "TRIM across the end");
  }
  if (nbd_can_cache(h) == 1) {
    NBD_ERRNO(nbd_cache(h, 1024, SIZE - 512, 0), EINVAL);
    still_works(h, "CACHE across the end");
  }

  /* The very end is fine. */
  NBD_OK(nbd_pread(h, buf, 1, SIZE - 1, 0));
  CHECK(pattern_check(buf, 1, SIZE - 1, 1) < 0, "last byte");
}

static void test_zero_length(struct nbd_handle *h) {
  uint8_t buf[1];
  /* Unspecified by the spec, but never a disconnect. */
  int r = nbd_pread(h, buf, 0, 4096, 0);
  harness_note("zero-length READ: %s", r == 0 ? "success" : nbd_get_error());
  still_works(h, "zero-length READ");
  r = nbd_pwrite(h, buf, 0, 4096, 0);
  harness_note("zero-length WRITE: %s", r == 0 ? "success" : nbd_get_error());
  still_works(h, "zero-length WRITE");
  if (nbd_can_zero(h) == 1) {
    r = nbd_zero(h, 0, 4096, 0);
    harness_note("zero-length WRITE_ZEROES: %s", r == 0 ? "success" : nbd_get_error());
    still_works(h, "zero-length WRITE_ZEROES");
  }
}

static void test_flags(struct nbd_handle *h) {
  uint8_t buf[512], back[512];
  NBD_OK(nbd_pread(h, back, sizeof back, 8192, 0));

  NBD_ERRNO(nbd_pread(h, buf, sizeof buf, 0, 0x40), EINVAL);
  still_works(h, "READ with an unknown flag");
  NBD_ERRNO(nbd_pread(h, buf, sizeof buf, 0, 0x8000), EINVAL);
  still_works(h, "READ with flag bit 15");
  NBD_ERRNO(nbd_pread(h, buf, sizeof buf, 0, LIBNBD_CMD_FLAG_REQ_ONE), EINVAL);
  still_works(h, "READ with REQ_ONE");

  /* A WRITE refused for its flags must not write. */
  pattern_fill(buf, sizeof buf, 8192, 42);
  NBD_ERRNO(nbd_pwrite(h, buf, sizeof buf, 8192, 0x40), EINVAL);
  still_works(h, "WRITE with an unknown flag");
  NBD_ERRNO(nbd_pwrite(h, buf, sizeof buf, 8192, LIBNBD_CMD_FLAG_NO_HOLE), EINVAL);
  still_works(h, "WRITE with NO_HOLE");
  NBD_ERRNO(nbd_pwrite(h, buf, sizeof buf, 8192, LIBNBD_CMD_FLAG_REQ_ONE), EINVAL);
  still_works(h, "WRITE with REQ_ONE");
  uint8_t now[512];
  NBD_OK(nbd_pread(h, now, sizeof now, 8192, 0));
  CHECK(memcmp(now, back, sizeof now) == 0, "a WRITE refused for its flags changed the data");

  NBD_ERRNO(nbd_flush(h, 0x40), EINVAL);
  still_works(h, "FLUSH with an unknown flag");
  if (nbd_can_fua(h) == 1) {
    NBD_OK(nbd_pwrite(h, buf, sizeof buf, 8192, LIBNBD_CMD_FLAG_FUA));
    NBD_OK(nbd_pread(h, now, sizeof now, 8192, 0));
    CHECK(memcmp(now, buf, sizeof now) == 0, "FUA write: data");
  }
}

/* Without structured replies, DF is not advertised and must be refused. */
static void test_df_without_structured(void) {
  struct nbd_handle *h = harness_handle("");
  NBD_OK(nbd_set_request_structured_replies(h, false));
  NBD_OK(nbd_connect_unix(h, sock));
  NBD_OK(nbd_set_strict_mode(h, 0));
  CHECK(nbd_can_df(h) == 0, "SEND_DF without structured replies");
  uint8_t buf[512];
  NBD_ERRNO(nbd_pread(h, buf, sizeof buf, 0, LIBNBD_CMD_FLAG_DF), EINVAL);
  still_works(h, "DF READ without structured replies");
  NBD_ERRNO(nbd_pread(h, buf, 512, SIZE, 0), EINVAL);
  still_works(h, "simple-reply READ past the end");
  harness_close(h);
}

/* The largest payload works.  Beyond the advertised 32 MiB (see vhdnbd(8)):
 * a READ or WRITE gets EINVAL and the connection stays, the refused WRITE's
 * payload read and dropped, never written; a WRITE beyond 64 MiB closes the
 * connection without its payload being read. */
static void test_payload_limits(pid_t pid) {
  struct nbd_handle *h = harness_connect(sock, "");
  NBD_OK(nbd_set_strict_mode(h, 0));
  int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  CHECK(max == 32 * MiB, "advertised maximum payload %" PRId64, max);
  uint8_t *buf = calloc(1, 33 * MiB);
  pattern_fill(buf, 32 * MiB, 4 * MiB, 5);
  NBD_OK(nbd_pwrite(h, buf, 32 * MiB, 4 * MiB, 0));
  memset(buf, 0, 32 * MiB);
  NBD_OK(nbd_pread(h, buf, 32 * MiB, 4 * MiB, 0));
  CHECK(pattern_check(buf, 32 * MiB, 4 * MiB, 5) < 0, "32 MiB write/read: data");

  /* libnbd (strict mode off) sends what the server advertised it refuses. */
  memset(buf, 0x66, 33 * MiB);
  NBD_ERRNO(nbd_pwrite(h, buf, 33 * MiB, 0, 0), EINVAL);
  still_works(h, "a 33 MiB WRITE");
  NBD_ERRNO(nbd_pread(h, buf, 33 * MiB, 0, 0), EINVAL);
  still_works(h, "a 33 MiB READ");
  NBD_OK(nbd_pread(h, buf, 8 * KiB, 0, 0)); /* what test_flags left of pattern 2 */
  CHECK(pattern_check(buf, 8 * KiB, 0, 2) < 0, "a refused 33 MiB WRITE changed the data");
  harness_close(h);

  /* The same on the wire, with simple replies: the READ's error reply carries
   * no data, and the byte after the WRITE's payload is read as the next
   * request header. */
  int fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  CHECK(raw_opt_go(fd, "", NULL, NULL) == NBD_REP_ACK, "GO");
  uint64_t cookie;
  uint32_t error;
  CHECK(raw_send_request(fd, 0, NBD_CMD_WRITE, 1, 0, 32 * MiB + 512) == 0, "WRITE");
  CHECK(raw_write(fd, buf, 32 * MiB + 512) == 0, "32 MiB + 512 of payload");
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "reply to the oversized WRITE");
  CHECK(cookie == 1 && error == NBD_EINVAL, "WRITE of 32 MiB + 512: error %" PRIu32, error);
  CHECK(raw_send_request(fd, 0, NBD_CMD_READ, 2, 0, 32 * MiB + 512) == 0, "READ");
  CHECK(raw_send_request(fd, 0, NBD_CMD_READ, 3, 0, 512) == 0, "READ");
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "reply to the oversized READ");
  CHECK(cookie == 2 && error == NBD_EINVAL, "READ of 32 MiB + 512: error %" PRIu32, error);
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "reply to the next READ");
  CHECK(cookie == 3 && error == 0, "READ after the oversized one: cookie %" PRIu64
        ", error %" PRIu32, cookie, error);
  CHECK(raw_read(fd, buf, 512) == 0, "READ data");
  CHECK(pattern_check(buf, 512, 0, 2) < 0, "a refused WRITE changed the data");
  /* Too large to be worth reading past: closed, whatever follows. */
  CHECK(raw_send_request(fd, 0, NBD_CMD_WRITE, 4, 0, 64 * MiB + 512) == 0, "WRITE");
  CHECK(raw_write(fd, buf, 4096) == 0, "the start of its payload");
  CHECK(raw_expect_close(fd, 30000) == 0, "a 64 MiB + 512 WRITE did not close the connection");
  close(fd);
  free(buf);

  CHECK(harness_server_alive(pid), "server died on oversized requests");
  h = harness_connect(sock, "");
  still_works(h, "oversized requests on other connections");
  harness_close(h);
}

static void test_read_only(const char *s, const char *name, const char *what) {
  struct nbd_handle *h = harness_connect(s, name);
  CHECK(nbd_is_read_only(h) == 1, "%s: not read-only", what);
  NBD_OK(nbd_set_strict_mode(h, 0));
  uint8_t buf[4096], back[4096];
  NBD_OK(nbd_pread(h, back, sizeof back, 0, 0));
  pattern_fill(buf, sizeof buf, 0, 77);
  NBD_ERRNO(nbd_pwrite(h, buf, sizeof buf, 0, 0), EPERM);
  NBD_ERRNO(nbd_pwrite(h, buf, sizeof buf, 0, LIBNBD_CMD_FLAG_FUA), EPERM);
  NBD_ERRNO(nbd_zero(h, sizeof buf, 0, 0), EPERM);
  NBD_ERRNO(nbd_trim(h, sizeof buf, 0, 0), EPERM);
  uint8_t now[4096];
  NBD_OK(nbd_pread(h, now, sizeof now, 0, 0));
  CHECK(memcmp(now, back, sizeof now) == 0, "%s: a refused write changed the data", what);
  harness_close(h);
}

/* What libnbd will not send: an unknown command, FLUSH with a length, a bad
 * request magic. */
static void test_raw(pid_t pid) {
  int fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  CHECK(raw_opt_go(fd, "", NULL, NULL) == NBD_REP_ACK, "GO");
  uint64_t cookie;
  uint32_t error;
  CHECK(raw_send_request(fd, 0, 42, 1, 0, 512) == 0, "command 42");
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "reply to command 42");
  CHECK(cookie == 1 && error == NBD_EINVAL, "unknown command: error %" PRIu32, error);
  CHECK(raw_send_request(fd, 0, NBD_CMD_FLUSH, 2, 0, 512) == 0, "FLUSH with a length");
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "reply to FLUSH");
  CHECK(cookie == 2 && error == NBD_EINVAL, "FLUSH with a length: error %" PRIu32, error);
  /* A refused WRITE still has its payload on the wire; the server must skip it. */
  uint8_t payload[4096];
  memset(payload, 0x55, sizeof payload);
  CHECK(raw_send_request(fd, 0, NBD_CMD_WRITE, 3, SIZE, sizeof payload) == 0, "WRITE");
  CHECK(raw_write(fd, payload, sizeof payload) == 0, "WRITE payload");
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "reply to WRITE");
  CHECK(cookie == 3 && error == NBD_ENOSPC, "WRITE past the end: error %" PRIu32, error);
  CHECK(raw_send_request(fd, 0, NBD_CMD_READ, 4, SIZE - 512, 512) == 0, "READ");
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "reply to READ");
  CHECK(cookie == 4 && error == 0, "READ after a refused WRITE: error %" PRIu32, error);
  CHECK(raw_read(fd, payload, 512) == 0, "READ data");
  CHECK(pattern_check(payload, 512, SIZE - 512, 1) < 0, "READ after a refused WRITE: data");

  uint8_t garbage[NBD_REQUEST_SIZE];
  memset(garbage, 0x13, sizeof garbage);
  CHECK(raw_write(fd, garbage, sizeof garbage) == 0, "garbage request");
  CHECK(raw_expect_close(fd, 5000) == 0, "bad request magic: no close");
  close(fd);
  CHECK(harness_server_alive(pid), "server died on a bad request");
}

int main(void) {
  harness_init("test-errors", 60);
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  XSNPRINTF(sock_ro, sizeof sock_ro, "%s", harness_path("sock-ro"));

  uint8_t *content = calloc(1, SIZE);
  pattern_fill(content + SIZE - 64 * KiB, 64 * KiB, SIZE - 64 * KiB, 1);
  pattern_fill(content, 64 * KiB, 0, 2);
  char img[4096], img_ro[4096], img_ro2[4096], ro_export[8192];
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image_from("rw.vhd", "dynamic", content, SIZE));
  XSNPRINTF(img_ro, sizeof img_ro, "%s",
            harness_qemu_image_from("ro.vhd", "dynamic", content, SIZE));
  XSNPRINTF(img_ro2, sizeof img_ro2, "%s",
            harness_qemu_image_from("ro2.vhd", "fixed", content, SIZE));
  free(content);
  char ro_before[65], ro_after[65], ro2_before[65], ro2_after[65];
  harness_sha256(img_ro, ro_before);
  harness_sha256(img_ro2, ro2_before);
  XSNPRINTF(ro_export, sizeof ro_export, "ro=%s,ro", img_ro2);
  const char *args[] = {"-e", ro_export, img, NULL};
  pid_t pid = harness_start_server(sock, args);
  harness_start_server_image(sock_ro, img_ro, true);

  struct nbd_handle *h = harness_connect(sock, "");
  NBD_OK(nbd_set_strict_mode(h, 0));
  CHECK(nbd_is_read_only(h) == 0, "writable export is read-only");
  test_ranges(h);
  test_zero_length(h);
  test_flags(h);
  harness_close(h);
  test_df_without_structured();
  test_read_only(sock_ro, "", "-r");
  test_read_only(sock, "ro", "\",ro\" export");
  test_raw(pid);
  test_payload_limits(pid);

  int rc = harness_finish();
  CHECK(strcmp(ro_before, harness_sha256(img_ro, ro_after)) == 0,
        "the image served with -r changed");
  CHECK(strcmp(ro2_before, harness_sha256(img_ro2, ro2_after)) == 0,
        "the image of the \",ro\" export changed");
  if (rc == 0)
    CHECK(harness_check_image(img) == 0, "%s is not clean after the test", img);
  return rc;
}
