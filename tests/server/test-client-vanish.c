/* Misbehaving clients must never take the server down: clients that vanish
 * at every stage of the handshake and mid-payload, garbage magics, a 4 GiB
 * option length, thousands of options, replies nobody reads, handshakes that
 * never finish, more clients than --max-connections.  After each, a good
 * client still works; at the end the server exits 0 (so a sanitizer build
 * reports no leak or memory error from all this). */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "endian-be.h"
#include "nbd-proto.h"
#include "harness.h"

#define SIZE (8 * MiB)

static char sock[4096];
static pid_t server;
static uint8_t *expected;

static void good_client_works(const char *after) {
  CHECK(harness_server_alive(server), "server died after %s", after);
  struct nbd_handle *h = harness_handle("");
  if (nbd_connect_unix(h, sock) == -1)
    FAIL("after %s a good client cannot connect: %s", after, nbd_get_error());
  uint8_t buf[4096];
  static uint32_t seed = 1000;
  uint64_t off = (seed % 1024) * 4096;
  pattern_fill(expected + off, sizeof buf, off, seed++);
  if (nbd_pwrite(h, expected + off, sizeof buf, off, 0) == -1 ||
      nbd_pread(h, buf, sizeof buf, off, 0) == -1)
    FAIL("after %s a good client's I/O fails: %s", after, nbd_get_error());
  CHECK(memcmp(buf, expected + off, sizeof buf) == 0, "after %s: wrong data", after);
  harness_close(h);
}

/* A connection negotiated with NBD_OPT_GO, ready for requests. */
static int raw_transmission(void) {
  int fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  CHECK(raw_opt_go(fd, "", NULL, NULL) == NBD_REP_ACK, "GO");
  return fd;
}

static void vanish_during_handshake(void) {
  int fd = raw_connect(sock);
  close(fd);
  good_client_works("a client closing before the greeting");

  fd = raw_connect(sock);
  uint8_t greeting[NBD_GREETING_SIZE];
  CHECK(raw_read(fd, greeting, sizeof greeting) == 0, "greeting");
  close(fd);
  good_client_works("a client closing after the greeting");

  fd = raw_connect(sock);
  CHECK(raw_read(fd, greeting, sizeof greeting) == 0, "greeting");
  CHECK(raw_write(fd, "\0\0", 2) == 0, "half the client flags");
  close(fd);
  good_client_works("a client closing inside its flags");

  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  uint8_t hdr[NBD_OPTION_HDR_SIZE];
  be64_store(hdr, NBD_NEW_VERSION);
  be32_store(hdr + 8, NBD_OPT_GO);
  be32_store(hdr + 12, 100);
  CHECK(raw_write(fd, hdr, 10) == 0, "half an option header");
  close(fd);
  good_client_works("a client closing inside an option header");

  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  uint8_t data[10] = {0, 0, 0, 1};
  CHECK(raw_write(fd, hdr, sizeof hdr) == 0 && raw_write(fd, data, sizeof data) == 0,
        "option with 10 of 100 data bytes");
  close(fd);
  good_client_works("a client closing inside option data");

  /* Replies to options nobody reads. */
  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  for (int i = 0; i < 20; i++)
    CHECK(raw_send_option(fd, NBD_OPT_LIST, NULL, 0) == 0, "LIST");
  close(fd);
  good_client_works("a client closing with option replies unread");
}

static void garbage(void) {
  int fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  uint8_t junk[NBD_REQUEST_SIZE];
  memset(junk, 0xee, sizeof junk);
  CHECK(raw_write(fd, junk, sizeof junk) == 0, "garbage option");
  CHECK(raw_expect_close(fd, 5000) == 0, "garbage option magic: the server kept the connection");
  close(fd);
  good_client_works("a garbage option magic");

  /* A 4 GiB option must be refused by closing, never allocated or read. */
  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  uint8_t hdr[NBD_OPTION_HDR_SIZE];
  be64_store(hdr, NBD_NEW_VERSION);
  be32_store(hdr + 8, NBD_OPT_INFO);
  be32_store(hdr + 12, UINT32_MAX);
  CHECK(raw_write(fd, hdr, sizeof hdr) == 0, "4 GiB option header");
  CHECK(raw_write(fd, junk, sizeof junk) == 0, "some of its data");
  CHECK(raw_expect_close(fd, 5000) == 0, "4 GiB option: the server kept the connection");
  close(fd);
  good_client_works("a 4 GiB option");

  fd = raw_transmission();
  CHECK(raw_write(fd, junk, NBD_REQUEST_SIZE - 8) == 0 && raw_write(fd, junk, 8) == 0,
        "garbage request");
  CHECK(raw_expect_close(fd, 5000) == 0, "garbage request magic: the server kept the connection");
  close(fd);
  good_client_works("a garbage request magic");
}

/* Option after option: the server answers each or cuts the client off. */
static void many_options(void) {
  int fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  int answered = 0, i;
  for (i = 0; i < 5000; i++) {
    uint32_t opt, type, len;
    if (raw_send_option(fd, 0x4000 + (uint32_t)(i % 100), NULL, 0) < 0)
      break;
    if (raw_recv_option_reply(fd, &opt, &type, NULL, &len) < 0)
      break;
    CHECK(type == NBD_REP_ERR_UNSUP || (type & NBD_REP_FLAG_ERROR),
          "unknown option %d: reply 0x%" PRIx32, i, type);
    answered++;
  }
  harness_note("%d of 5000 unknown options answered before the server %s", answered,
               i == 5000 ? "(no limit)" : "cut the client off");
  close(fd);
  good_client_works("thousands of options");

  /* The same, all sent without reading a reply. */
  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  uint8_t hdrs[200 * NBD_OPTION_HDR_SIZE];
  for (i = 0; i < 200; i++) {
    be64_store(hdrs + i * NBD_OPTION_HDR_SIZE, NBD_NEW_VERSION);
    be32_store(hdrs + i * NBD_OPTION_HDR_SIZE + 8, NBD_OPT_LIST);
    be32_store(hdrs + i * NBD_OPTION_HDR_SIZE + 12, 0);
  }
  for (i = 0; i < 25; i++)
    if (raw_write(fd, hdrs, sizeof hdrs) < 0)
      break;
  close(fd);
  good_client_works("5000 options sent without reading replies");
}

static void vanish_during_transmission(void) {
  /* Half a request header. */
  int fd = raw_transmission();
  uint8_t req[NBD_REQUEST_SIZE];
  be32_store(req, NBD_REQUEST_MAGIC);
  CHECK(raw_write(fd, req, 10) == 0, "half a request");
  close(fd);
  good_client_works("a client closing inside a request header");

  /* 100 KiB of a 1 MiB write payload. */
  fd = raw_transmission();
  uint8_t *payload = calloc(1, 100 * KiB);
  CHECK(raw_send_request(fd, 0, NBD_CMD_WRITE, 1, 0, 1 * MiB) == 0, "WRITE");
  CHECK(raw_write(fd, payload, 100 * KiB) == 0, "part of the payload");
  close(fd);
  good_client_works("a client closing mid-write-payload");

  /* A full 32 MiB write announced, nothing sent. */
  fd = raw_transmission();
  CHECK(raw_send_request(fd, 0, NBD_CMD_WRITE, 2, 0, 32 * MiB) == 0, "WRITE");
  close(fd);
  good_client_works("a client closing right after a 32 MiB write header");

  /* Reads whose replies nobody reads: the server writes into a dead socket. */
  fd = raw_transmission();
  for (uint64_t i = 0; i < 64; i++)
    CHECK(raw_send_request(fd, 0, NBD_CMD_READ, i, 0, 1 * MiB) == 0, "READ %" PRIu64, i);
  close(fd);
  fd = raw_transmission();
  for (uint64_t i = 0; i < 64; i++)
    CHECK(raw_send_request(fd, 0, NBD_CMD_READ, i, (i % 8) * MiB, 1 * MiB) == 0, "READ");
  usleep(100000);
  close(fd);
  good_client_works("clients closing with 64 MiB of read replies pending");

  /* Writes in flight when the client goes. */
  fd = raw_transmission();
  for (uint64_t i = 0; i < 32; i++) {
    uint64_t off = 6 * MiB + i * 4096;
    pattern_fill(expected + off, 4096, off, 77);
    if (raw_send_request(fd, 0, NBD_CMD_WRITE, i, off, 4096) < 0 ||
        raw_write(fd, expected + off, 4096) < 0)
      FAIL("sending write %" PRIu64, i);
  }
  /* The writes are answered before the close, so they are in the image. */
  for (uint64_t i = 0; i < 32; i++) {
    uint64_t cookie;
    uint32_t error;
    CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "write reply %" PRIu64, i);
    CHECK(error == 0, "write %" PRIu64 ": error %" PRIu32, cookie, error);
  }
  close(fd);
  good_client_works("a client closing without DISC");

  free(payload);
}

static void many_half_open(void) {
  int fds[50];
  for (int i = 0; i < 50; i++) {
    fds[i] = raw_connect(sock);
    uint8_t greeting[NBD_GREETING_SIZE];
    CHECK(raw_read(fds[i], greeting, sizeof greeting) == 0, "greeting %d", i);
  }
  good_client_works("50 idle half-open clients");
  for (int i = 0; i < 50; i++)
    close(fds[i]);
  good_client_works("50 half-open clients closing");
}

/* A second server whose only tight limit is the handshake timeout. */
static void handshake_timeout(void) {
  char sock2[4096];
  XSNPRINTF(sock2, sizeof sock2, "%s", harness_path("sock-timeout"));
  char img2[4096];
  XSNPRINTF(img2, sizeof img2, "%s", harness_qemu_image("timeout.vhd", "dynamic", MiB));
  const char *args[] = {"--handshake-timeout", "1", img2, NULL};
  pid_t pid = harness_start_server(sock2, args);

  /* A handshake that never finishes is cut off; a client already in
   * transmission before it started has by then outlived the timeout too,
   * and must stay. */
  struct nbd_handle *a = harness_connect(sock2, "");
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  int fd = raw_connect(sock2);
  CHECK(raw_expect_close(fd, 30000) == 0, "an idle client outlived --handshake-timeout 1");
  clock_gettime(CLOCK_MONOTONIC, &t1);
  close(fd);
  double waited = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  harness_note("idle client closed after %.1f s", waited);
  CHECK(waited >= 0.9, "an idle client was closed after %.2f s, before the 1 s timeout", waited);
  uint8_t buf[512];
  NBD_OK(nbd_pread(a, buf, sizeof buf, 0, 0));
  harness_close(a);
  CHECK(harness_server_alive(pid), "the server with a handshake timeout died");
}

/* A third server whose only tight limit is --max-connections 2; its
 * handshake timeout is far longer than anything waited for here, so only
 * the limit can close a client. */
static void max_connections(void) {
  char sock3[4096], log3[4096];
  XSNPRINTF(sock3, sizeof sock3, "%s", harness_path("sock-limit"));
  XSNPRINTF(log3, sizeof log3, "%s", harness_path("limit.log"));
  char img3[4096];
  XSNPRINTF(img3, sizeof img3, "%s", harness_qemu_image("limit.vhd", "dynamic", MiB));
  const char *args[] = {"--max-connections", "2", "--handshake-timeout", "600", img3, NULL};
  pid_t pid = harness_start_server_logged(sock3, args, log3);

  /* Two clients in transmission, a third refused at once: closed before
   * the greeting, with a log line. */
  struct nbd_handle *a = harness_connect(sock3, ""), *b = harness_connect(sock3, "");
  int fd = raw_connect(sock3);
  uint8_t greeting[NBD_GREETING_SIZE];
  int r = raw_read(fd, greeting, sizeof greeting);
  CHECK(r != 0, "a third client beyond --max-connections 2 got the greeting");
  CHECK(r == -EPIPE, "a third client beyond --max-connections 2 was not closed: %s",
        strerror(-r));
  close(fd);
  /* Refusals are logged in aggregate, once a second: wait for the line
   * (bounded). */
  char *log = NULL;
  for (int i = 0; i < 300; i++) {
    free(log);
    log = harness_read_file(log3);
    if (strstr(log, "over --max-connections"))
      break;
    usleep(100 * 1000);
  }
  CHECK(strstr(log, "connections closed in the last second: ") &&
            strstr(log, "over --max-connections"),
        "no log line for the refused client: %s", log);
  free(log);
  uint8_t buf[512];
  NBD_OK(nbd_pread(a, buf, sizeof buf, 0, 0));
  harness_close(a);
  /* A slot is free again once a client leaves (the server notices the
   * close in its own time: retry, bounded). */
  struct nbd_handle *c = NULL;
  for (int i = 0; i < 300 && !c; i++) {
    c = harness_handle("");
    if (nbd_connect_unix(c, sock3) == -1) {
      nbd_close(c);
      c = NULL;
      usleep(100000);
    }
  }
  CHECK(c, "no new client accepted after one of two left");
  NBD_OK(nbd_pread(c, buf, sizeof buf, 0, 0));
  NBD_OK(nbd_pread(b, buf, sizeof buf, 0, 0));
  harness_close(b);
  harness_close(c);
  CHECK(harness_server_alive(pid), "the limited server died");
}

int main(void) {
  harness_init("test-client-vanish", 60);
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  char img[4096];
  XSNPRINTF(img, sizeof img, "%s", harness_qemu_image("img.vhd", "dynamic", SIZE));
  expected = calloc(1, SIZE);
  server = harness_start_server_image(sock, img, false);

  good_client_works("startup");
  vanish_during_handshake();
  garbage();
  many_options();
  vanish_during_transmission();
  many_half_open();
  handshake_timeout();
  max_connections();

  int rc = harness_finish();
  if (rc == 0) {
    CHECK(harness_check_image(img) == 0, "%s is not clean", img);
    harness_expect_image_content(img, expected, SIZE, true);
  }
  free(expected);
  return rc;
}
