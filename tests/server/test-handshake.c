/* Handshake and option haggling: LIST, INFO, GO, export names and
 * descriptions, ERR_UNKNOWN, block size info, ABORT, meta context listing,
 * and the old EXPORT_NAME path with and without NO_ZEROES (raw bytes). */
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

#define SIZE0 (4 * MiB)
#define SIZE1 (6 * MiB)
#define SIZE2 (2 * MiB)
#define DESC1 "First disk"

static char sock[4096];
static char img0[4096], img1[4096], img2[4096];

struct listed {
  int count;
  bool seen_default, seen_disk1, seen_ro1;
  char disk1_desc[256];
};

static int list_cb(void *opaque, const char *name, const char *description) {
  struct listed *l = opaque;
  l->count++;
  printf("listed export \"%s\" (\"%s\")\n", name, description);
  if (strcmp(name, "") == 0)
    l->seen_default = true;
  else if (strcmp(name, "disk1") == 0) {
    l->seen_disk1 = true;
    XSNPRINTF(l->disk1_desc, sizeof l->disk1_desc, "%s", description);
  } else if (strcmp(name, "ro1") == 0)
    l->seen_ro1 = true;
  else
    FAIL("LIST: unexpected export \"%s\"", name);
  return 0;
}

struct contexts {
  int count;
  bool base_allocation;
};

static int context_cb(void *opaque, const char *name) {
  struct contexts *c = opaque;
  c->count++;
  printf("meta context %s\n", name);
  if (strcmp(name, NBD_CONTEXT_BASE_ALLOCATION) == 0)
    c->base_allocation = true;
  return 0;
}

static void check_block_sizes(struct nbd_handle *h) {
  int64_t min = nbd_get_block_size(h, LIBNBD_SIZE_MINIMUM);
  int64_t pref = nbd_get_block_size(h, LIBNBD_SIZE_PREFERRED);
  int64_t max = nbd_get_block_size(h, LIBNBD_SIZE_MAXIMUM);
  CHECK(min == 1, "minimum block size %" PRId64 ", expected 1", min);
  CHECK(pref == 4096, "preferred block size %" PRId64 ", expected 4096", pref);
  CHECK(max == (int64_t)(32 * MiB), "maximum payload %" PRId64 ", expected 32 MiB", max);
}

/* libnbd in option mode: LIST, INFO (with names, descriptions, block sizes),
 * unknown export, meta contexts, then GO. */
static void test_options(void) {
  struct nbd_handle *h = harness_handle("");
  NBD_OK(nbd_set_opt_mode(h, true));
  NBD_OK(nbd_set_full_info(h, true));
  NBD_OK(nbd_connect_unix(h, sock));
  CHECK(nbd_aio_is_negotiating(h) == 1, "not in option mode after connect");

  struct listed l = {0};
  int n = nbd_opt_list(h, (nbd_list_callback){.callback = list_cb, .user_data = &l});
  NBD_OK(n);
  CHECK(l.seen_disk1 && l.seen_ro1, "LIST misses an -e export (disk1 %d, ro1 %d)",
        l.seen_disk1, l.seen_ro1);
  CHECK(strcmp(l.disk1_desc, DESC1) == 0, "LIST: description of disk1 is \"%s\"",
        l.disk1_desc);

  /* INFO on a named export: everything it says must match the image. */
  NBD_OK(nbd_set_export_name(h, "disk1"));
  NBD_OK(nbd_opt_info(h));
  CHECK(nbd_get_size(h) == (int64_t)SIZE1, "INFO disk1: size %" PRId64, nbd_get_size(h));
  CHECK(nbd_is_read_only(h) == 0, "INFO disk1: read-only");
  CHECK(nbd_can_flush(h) == 1, "INFO disk1: no flush");
  CHECK(nbd_can_multi_conn(h) == 1, "INFO disk1: no multi-conn");
  check_block_sizes(h);
  char *desc = nbd_get_export_description(h);
  CHECK(desc && strcmp(desc, DESC1) == 0, "INFO disk1: description \"%s\"",
        desc ? desc : nbd_get_error());
  free(desc);
  char *canon = nbd_get_canonical_export_name(h);
  CHECK(canon && strcmp(canon, "disk1") == 0, "INFO disk1: canonical name \"%s\"",
        canon ? canon : "(null)");
  free(canon);

  NBD_OK(nbd_set_export_name(h, "ro1"));
  NBD_OK(nbd_opt_info(h));
  CHECK(nbd_get_size(h) == (int64_t)SIZE2, "INFO ro1: size %" PRId64, nbd_get_size(h));
  CHECK(nbd_is_read_only(h) == 1, "INFO ro1: ,ro export not read-only");

  /* A missing export is NBD_REP_ERR_UNKNOWN (libnbd: ENOENT), and haggling goes on. */
  NBD_OK(nbd_set_export_name(h, "no-such-export"));
  NBD_ERRNO(nbd_opt_info(h), ENOENT);
  CHECK(nbd_aio_is_negotiating(h) == 1, "connection lost after ERR_UNKNOWN");
  NBD_ERRNO(nbd_opt_go(h), ENOENT);
  CHECK(nbd_aio_is_negotiating(h) == 1, "connection lost after GO on a missing export");

  /* Meta contexts: base:allocation is offered, unknown namespaces select nothing. */
  struct contexts c = {0};
  NBD_OK(nbd_set_export_name(h, ""));
  NBD_OK(nbd_clear_meta_contexts(h));
  n = nbd_opt_list_meta_context(h, (nbd_context_callback){.callback = context_cb,
                                                          .user_data = &c});
  NBD_OK(n);
  CHECK(c.base_allocation, "LIST_META_CONTEXT with no query lacks base:allocation");
  c = (struct contexts){0};
  NBD_OK(nbd_add_meta_context(h, NBD_CONTEXT_BASE_ALLOCATION));
  NBD_OK(nbd_opt_list_meta_context(h, (nbd_context_callback){.callback = context_cb,
                                                             .user_data = &c}));
  CHECK(c.count == 1 && c.base_allocation, "query base:allocation: %d contexts", c.count);
  c = (struct contexts){0};
  NBD_OK(nbd_clear_meta_contexts(h));
  NBD_OK(nbd_add_meta_context(h, "x-no-such-namespace:thing"));
  NBD_OK(nbd_opt_list_meta_context(h, (nbd_context_callback){.callback = context_cb,
                                                             .user_data = &c}));
  CHECK(c.count == 0, "unknown namespace matched %d contexts", c.count);
  NBD_OK(nbd_clear_meta_contexts(h));
  NBD_OK(nbd_add_meta_context(h, NBD_CONTEXT_BASE_ALLOCATION));

  /* GO on the default export; the answers must match what INFO gave. */
  NBD_OK(nbd_opt_go(h));
  CHECK(nbd_aio_is_ready(h) == 1, "not ready after GO");
  CHECK(nbd_get_size(h) == (int64_t)SIZE0, "GO \"\": size %" PRId64, nbd_get_size(h));
  CHECK(nbd_can_meta_context(h, NBD_CONTEXT_BASE_ALLOCATION) == 1,
        "base:allocation not negotiated");
  check_block_sizes(h);
  uint8_t *buf = malloc(64 * KiB);
  NBD_OK(nbd_pread(h, buf, 64 * KiB, SIZE0 - 64 * KiB, 0));
  CHECK(pattern_check(buf, 64 * KiB, SIZE0 - 64 * KiB, 0) < 0, "default export content");
  free(buf);
  harness_close(h);
}

static void test_abort(void) {
  struct nbd_handle *h = harness_handle("");
  NBD_OK(nbd_set_opt_mode(h, true));
  NBD_OK(nbd_connect_unix(h, sock));
  NBD_OK(nbd_opt_abort(h));
  CHECK(nbd_aio_is_closed(h) == 1, "not closed after ABORT");
  nbd_close(h);
}

/* Without fixed newstyle libnbd can only send NBD_OPT_EXPORT_NAME. */
static void test_export_name_libnbd(void) {
  for (int flags = 0; flags <= (int)LIBNBD_HANDSHAKE_FLAG_NO_ZEROES; flags += 2) {
    struct nbd_handle *h = harness_handle("disk1");
    NBD_OK(nbd_set_handshake_flags(h, (uint32_t)flags));
    NBD_OK(nbd_connect_unix(h, sock));
    CHECK(nbd_get_size(h) == (int64_t)SIZE1, "EXPORT_NAME disk1 (flags %d): size %" PRId64,
          flags, nbd_get_size(h));
    uint8_t buf[4096];
    NBD_OK(nbd_pread(h, buf, sizeof buf, 12345, 0));
    CHECK(pattern_check(buf, sizeof buf, 12345, 1) < 0, "EXPORT_NAME disk1: content");
    harness_close(h);
  }
}

/* The raw bytes after NBD_OPT_EXPORT_NAME: 10 with NO_ZEROES, 134 without,
 * then a working transmission phase (a READ lands where it should). */
static void test_export_name_raw(bool no_zeroes) {
  int fd = raw_connect(sock);
  uint8_t greeting[NBD_GREETING_SIZE];
  CHECK(raw_read(fd, greeting, sizeof greeting) == 0, "greeting");
  CHECK(be16_load(greeting + 16) == (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES),
        "handshake flags 0x%x, expected FIXED_NEWSTYLE|NO_ZEROES", be16_load(greeting + 16));
  uint8_t cflags[4];
  be32_store(cflags, NBD_FLAG_C_FIXED_NEWSTYLE | (no_zeroes ? NBD_FLAG_C_NO_ZEROES : 0));
  CHECK(raw_write(fd, cflags, 4) == 0, "client flags");
  CHECK(raw_send_option(fd, NBD_OPT_EXPORT_NAME, "disk1", 5) == 0, "EXPORT_NAME");

  uint8_t reply[NBD_EXPORT_NAME_REPLY_SIZE];
  size_t want = no_zeroes ? 10 : NBD_EXPORT_NAME_REPLY_SIZE;
  CHECK(raw_read(fd, reply, want) == 0, "EXPORT_NAME reply (%zu bytes)", want);
  CHECK(be64_load(reply) == SIZE1, "EXPORT_NAME: size %" PRIu64, be64_load(reply));
  uint16_t tflags = be16_load(reply + 8);
  CHECK(tflags & NBD_FLAG_HAS_FLAGS, "EXPORT_NAME: transmission flags 0x%x", tflags);
  CHECK(!(tflags & NBD_FLAG_SEND_DF), "SEND_DF without structured replies");
  if (!no_zeroes)
    CHECK(is_zero(reply + 10, NBD_EXPORT_NAME_REPLY_ZEROES), "the 124 bytes are not zero");

  /* Misframing (too many or too few zeros) would garble this reply. */
  CHECK(raw_send_request(fd, 0, NBD_CMD_READ, 0xfeedbeefcafe, 4096, 512) == 0, "READ");
  uint64_t cookie;
  uint32_t error;
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "READ reply");
  CHECK(cookie == 0xfeedbeefcafe && error == 0, "READ reply: cookie %" PRIx64 " error %" PRIu32,
        cookie, error);
  uint8_t data[512];
  CHECK(raw_read(fd, data, sizeof data) == 0, "READ data");
  CHECK(pattern_check(data, sizeof data, 4096, 1) < 0, "READ data after EXPORT_NAME");
  CHECK(raw_send_request(fd, 0, NBD_CMD_DISC, 1, 0, 0) == 0, "DISC");
  CHECK(raw_expect_close(fd, 5000) == 0, "server kept the connection after DISC");
  close(fd);
}

/* Option-level error handling, byte by byte. */
static void test_raw_options(pid_t pid) {
  uint32_t opt, type, len;
  void *data;

  /* An unknown export on EXPORT_NAME cannot be answered: the server closes. */
  int fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  CHECK(raw_send_option(fd, NBD_OPT_EXPORT_NAME, "nope", 4) == 0, "EXPORT_NAME");
  CHECK(raw_expect_close(fd, 5000) == 0, "EXPORT_NAME of a missing export: no close");
  close(fd);

  /* Client flags the server did not offer: the server MUST drop the connection. */
  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | (1u << 7));
  CHECK(raw_expect_close(fd, 5000) == 0, "unknown client flag: no close");
  close(fd);

  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);

  /* Unknown option: ERR_UNSUP, its data dropped, the next option parses. */
  char junk[100] = "junk";
  CHECK(raw_send_option(fd, 0x4242, junk, sizeof junk) == 0, "unknown option");
  CHECK(raw_recv_option_reply(fd, &opt, &type, NULL, &len) == 0, "reply to unknown option");
  CHECK(opt == 0x4242 && type == NBD_REP_ERR_UNSUP, "unknown option: reply 0x%" PRIx32, type);

  /* LIST with data is invalid. */
  CHECK(raw_send_option(fd, NBD_OPT_LIST, junk, 8) == 0, "LIST with data");
  CHECK(raw_recv_option_reply(fd, &opt, &type, NULL, &len) == 0, "reply to LIST with data");
  CHECK(type == NBD_REP_ERR_INVALID, "LIST with data: reply 0x%" PRIx32, type);

  /* LIST: SERVER replies, then ACK. */
  CHECK(raw_send_option(fd, NBD_OPT_LIST, NULL, 0) == 0, "LIST");
  int servers = 0;
  for (;;) {
    CHECK(raw_recv_option_reply(fd, &opt, &type, &data, &len) == 0, "LIST reply");
    CHECK(opt == NBD_OPT_LIST, "LIST reply for option %" PRIu32, opt);
    if (type == NBD_REP_ACK) {
      free(data);
      break;
    }
    CHECK(type == NBD_REP_SERVER, "LIST: reply type 0x%" PRIx32, type);
    CHECK(len >= 4 && be32_load(data) <= len - 4, "LIST: name length %" PRIu32 " in %" PRIu32,
          be32_load(data), len);
    free(data);
    CHECK(++servers <= 8, "LIST: too many replies");
  }
  CHECK(servers >= 2, "LIST: %d exports", servers);

  /* INFO whose name length runs past the option data: ERR_INVALID. */
  uint8_t bad[10];
  be32_store(bad, 200);
  memcpy(bad + 4, "disk1", 5);
  bad[9] = 0;
  CHECK(raw_send_option(fd, NBD_OPT_INFO, bad, sizeof bad) == 0, "bad INFO");
  CHECK(raw_recv_option_reply(fd, &opt, &type, NULL, &len) == 0, "reply to bad INFO");
  CHECK(type == NBD_REP_ERR_INVALID, "INFO with a bad name length: 0x%" PRIx32, type);

  /* INFO asking for BLOCK_SIZE and an unknown info type (ignored). */
  uint8_t info[4 + 5 + 2 + 4];
  be32_store(info, 5);
  memcpy(info + 4, "disk1", 5);
  be16_store(info + 9, 2);
  be16_store(info + 11, NBD_INFO_BLOCK_SIZE);
  be16_store(info + 13, 0x7777);
  CHECK(raw_send_option(fd, NBD_OPT_INFO, info, sizeof info) == 0, "INFO");
  bool got_export = false, got_bs = false;
  for (int i = 0;; i++) {
    CHECK(i < 16, "INFO: too many replies");
    CHECK(raw_recv_option_reply(fd, &opt, &type, &data, &len) == 0, "INFO reply");
    if (type == NBD_REP_ACK) {
      free(data);
      break;
    }
    CHECK(type == NBD_REP_INFO && len >= 2, "INFO: reply 0x%" PRIx32 " len %" PRIu32, type, len);
    uint16_t itype = be16_load(data);
    CHECK(itype != 0x7777, "INFO: server echoed an unknown info type");
    if (itype == NBD_INFO_EXPORT) {
      CHECK(len == 12, "NBD_INFO_EXPORT length %" PRIu32, len);
      got_export = true;
    } else if (itype == NBD_INFO_BLOCK_SIZE) {
      CHECK(len == 14, "NBD_INFO_BLOCK_SIZE length %" PRIu32, len);
      uint8_t *p = data;
      CHECK(be32_load(p + 2) == 1 && be32_load(p + 6) == 4096 && be32_load(p + 10) == 32 * MiB,
            "block sizes %" PRIu32 "/%" PRIu32 "/%" PRIu32, be32_load(p + 2), be32_load(p + 6),
            be32_load(p + 10));
      got_bs = true;
    }
    free(data);
  }
  CHECK(got_export && got_bs, "INFO: export %d block size %d", got_export, got_bs);

  /* STRUCTURED_REPLY with data is invalid. */
  CHECK(raw_send_option(fd, NBD_OPT_STRUCTURED_REPLY, junk, 4) == 0, "SR with data");
  CHECK(raw_recv_option_reply(fd, &opt, &type, NULL, &len) == 0, "reply to SR with data");
  CHECK(type == NBD_REP_ERR_INVALID, "STRUCTURED_REPLY with data: 0x%" PRIx32, type);

  /* GO on a missing export: ERR_UNKNOWN with no INFO before it. */
  CHECK(raw_opt_go(fd, "nope", NULL, NULL) == NBD_REP_ERR_UNKNOWN, "GO nope: not ERR_UNKNOWN");

  /* GO "": ACK, then transmission right away; FLUSH with an offset is EINVAL. */
  uint64_t size = 0;
  uint16_t tflags = 0;
  CHECK(raw_opt_go(fd, "", &size, &tflags) == NBD_REP_ACK, "GO \"\": not ACK");
  CHECK(size == SIZE0, "GO \"\": size %" PRIu64, size);
  CHECK(tflags & NBD_FLAG_SEND_FLUSH, "GO \"\": flags 0x%x", tflags);
  uint64_t cookie;
  uint32_t error;
  CHECK(raw_send_request(fd, 0, NBD_CMD_FLUSH, 7, 4096, 0) == 0, "FLUSH");
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "FLUSH reply");
  CHECK(cookie == 7 && error == NBD_EINVAL, "FLUSH with an offset: error %" PRIu32, error);
  CHECK(raw_send_request(fd, 0, NBD_CMD_FLUSH, 8, 0, 0) == 0, "FLUSH");
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0, "FLUSH reply");
  CHECK(cookie == 8 && error == 0, "FLUSH: error %" PRIu32, error);
  CHECK(raw_send_request(fd, 0, NBD_CMD_DISC, 9, 0, 0) == 0, "DISC");
  CHECK(raw_expect_close(fd, 5000) == 0, "no close after DISC");
  close(fd);

  /* ABORT: ACK (the client may not wait for it), then close. */
  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  CHECK(raw_send_option(fd, NBD_OPT_ABORT, NULL, 0) == 0, "ABORT");
  int r = raw_recv_option_reply(fd, &opt, &type, NULL, &len);
  CHECK(r == 0 || r == -EPIPE, "ABORT reply: %s", strerror(-r));
  if (r == 0)
    CHECK(type == NBD_REP_ACK, "ABORT: reply 0x%" PRIx32, type);
  CHECK(raw_expect_close(fd, 5000) == 0, "no close after ABORT");
  close(fd);

  CHECK(harness_server_alive(pid), "server died during the option tests");
}

int main(void) {
  harness_init("test-handshake", 60);
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));

  uint8_t *data = malloc(SIZE1);
  pattern_fill(data, SIZE0, 0, 0);
  XSNPRINTF(img0, sizeof img0, "%s", harness_qemu_image_from("img0.vhd", "dynamic", data, SIZE0));
  pattern_fill(data, SIZE1, 0, 1);
  XSNPRINTF(img1, sizeof img1, "%s", harness_qemu_image_from("img1.vhd", "dynamic", data, SIZE1));
  free(data);
  XSNPRINTF(img2, sizeof img2, "%s", harness_qemu_image("img2.vhd", "fixed", SIZE2));

  char e1[8192], e2[8192];
  XSNPRINTF(e1, sizeof e1, "disk1=%s,description=" DESC1, img1);
  XSNPRINTF(e2, sizeof e2, "ro1=%s,ro", img2);
  const char *args[] = {"-e", e1, "-e", e2, img0, NULL};
  pid_t pid = harness_start_server(sock, args);

  test_options();
  test_abort();
  test_export_name_libnbd();
  test_export_name_raw(true);
  test_export_name_raw(false);
  test_raw_options(pid);
  return harness_finish();
}
