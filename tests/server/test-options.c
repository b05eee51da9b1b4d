/* Option haggling at the byte level, beyond what libnbd sends: malformed
 * INFO/GO and meta context requests, oversized names and options, repeated
 * STRUCTURED_REPLY, SET_META_CONTEXT rules (before structured replies,
 * replacement, which export it applies to, ids echoed in BLOCK_STATUS), NAME
 * and DESCRIPTION infos, STARTTLS without TLS, withdrawn and unknown options.
 * After every refused option the next one must still work. */
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

#define SIZE (4 * MiB)
#define DESC "Disk A"

static char sock[4096];
static pid_t server;

static int conn(uint32_t flags) {
  int fd = raw_connect(sock);
  raw_handshake(fd, flags);
  return fd;
}

/* Sends an option and returns the type of its final reply (skipping
 * intermediate ones, which are counted in *n_info when non-NULL). */
static uint32_t ask(int fd, uint32_t option, const void *data, uint32_t len, int *n_info) {
  CHECK(raw_send_option(fd, option, data, len) == 0, "sending option %" PRIu32, option);
  for (int i = 0; i < 64; i++) {
    uint32_t opt, type, rlen;
    int r = raw_recv_option_reply(fd, &opt, &type, NULL, &rlen);
    CHECK(r == 0, "option %" PRIu32 ": no reply (%s)", option, strerror(-r));
    CHECK(opt == option, "reply for option %" PRIu32 " to option %" PRIu32, opt, option);
    if (type == NBD_REP_ACK || (type & NBD_REP_FLAG_ERROR))
      return type;
    if (n_info)
      (*n_info)++;
  }
  FAIL("option %" PRIu32 ": more than 64 replies", option);
}

/* The connection still negotiates: LIST gets its ACK. */
static void still_negotiates(int fd, const char *after) {
  if (raw_send_option(fd, NBD_OPT_LIST, NULL, 0) < 0)
    FAIL("after %s the server closed the connection", after);
  for (int i = 0; i < 16; i++) {
    uint32_t opt, type, len;
    if (raw_recv_option_reply(fd, &opt, &type, NULL, &len) < 0)
      FAIL("after %s the server closed the connection", after);
    if (type == NBD_REP_ACK)
      return;
    CHECK(type == NBD_REP_SERVER, "after %s: LIST reply 0x%" PRIx32, after, type);
  }
  FAIL("after %s: LIST never ended", after);
}

/* INFO/GO data: name length, name, N, N info types. */
static size_t info_data(uint8_t *buf, const char *name, size_t nlen, const uint16_t *infos,
                        uint16_t n) {
  be32_store(buf, (uint32_t)nlen);
  memcpy(buf + 4, name, nlen);
  be16_store(buf + 4 + nlen, n);
  for (uint16_t i = 0; i < n; i++)
    be16_store(buf + 6 + nlen + 2 * i, infos[i]);
  return 6 + nlen + 2u * n;
}

/* LIST/SET_META_CONTEXT data with the given queries. */
static size_t meta_data(uint8_t *buf, const char *export, const char *const *queries, int nq) {
  size_t p = 0, elen = strlen(export);
  be32_store(buf, (uint32_t)elen);
  memcpy(buf + 4, export, elen);
  p = 4 + elen;
  be32_store(buf + p, (uint32_t)nq);
  p += 4;
  for (int i = 0; i < nq; i++) {
    size_t qlen = strlen(queries[i]);
    be32_store(buf + p, (uint32_t)qlen);
    memcpy(buf + p + 4, queries[i], qlen);
    p += 4 + qlen;
  }
  return p;
}

static void test_bad_info(void) {
  int fd = conn(NBD_FLAG_C_FIXED_NEWSTYLE);
  uint8_t buf[8192];
  uint16_t infos[2] = {NBD_INFO_NAME, NBD_INFO_DESCRIPTION};

  /* N says 5 info requests, 2 follow. */
  size_t len = info_data(buf, "a", 1, infos, 2);
  be16_store(buf + 5, 5);
  CHECK(ask(fd, NBD_OPT_INFO, buf, (uint32_t)len, NULL) == NBD_REP_ERR_INVALID,
        "INFO with a short info list: not ERR_INVALID");
  still_negotiates(fd, "INFO with a short info list");

  /* A stray byte after the info list. */
  len = info_data(buf, "a", 1, infos, 2);
  buf[len++] = 0;
  CHECK(ask(fd, NBD_OPT_INFO, buf, (uint32_t)len, NULL) == NBD_REP_ERR_INVALID,
        "INFO with a trailing byte: not ERR_INVALID");
  still_negotiates(fd, "INFO with a trailing byte");

  /* Too short to hold the name length and N. */
  CHECK(ask(fd, NBD_OPT_GO, buf, 3, NULL) == NBD_REP_ERR_INVALID,
        "GO with 3 bytes of data: not ERR_INVALID");
  still_negotiates(fd, "a 3-byte GO");

  /* A 5000-byte name is over the 4096 limit: refused, not served, not fatal. */
  char *name = malloc(5000);
  memset(name, 'a', 5000);
  uint8_t *big = malloc(5000 + 64);
  len = info_data(big, name, 5000, NULL, 0);
  uint32_t t = ask(fd, NBD_OPT_INFO, big, (uint32_t)len, NULL);
  CHECK(t & NBD_REP_FLAG_ERROR, "INFO with a 5000-byte name: reply 0x%" PRIx32, t);
  still_negotiates(fd, "INFO with a 5000-byte name");
  free(big);
  close(fd);

  /* EXPORT_NAME cannot be refused politely: the server closes. */
  fd = conn(NBD_FLAG_C_FIXED_NEWSTYLE);
  CHECK(raw_send_option(fd, NBD_OPT_EXPORT_NAME, name, 5000) == 0, "EXPORT_NAME");
  CHECK(raw_expect_close(fd, 5000) == 0, "EXPORT_NAME with a 5000-byte name: no close");
  close(fd);
  free(name);

  /* A 1 MiB option: refused or cut off, never a crash. */
  fd = conn(NBD_FLAG_C_FIXED_NEWSTYLE);
  uint8_t *mb = calloc(1, MiB);
  be32_store(mb, 16);
  uint8_t hdr[NBD_OPTION_HDR_SIZE];
  be64_store(hdr, NBD_NEW_VERSION);
  be32_store(hdr + 8, NBD_OPT_INFO);
  be32_store(hdr + 12, MiB);
  int r = raw_write(fd, hdr, sizeof hdr);
  if (r == 0)
    r = raw_write(fd, mb, MiB);
  if (r == 0) {
    uint32_t opt, type, rlen;
    r = raw_recv_option_reply(fd, &opt, &type, NULL, &rlen);
    if (r == 0)
      CHECK(type & NBD_REP_FLAG_ERROR, "a 1 MiB INFO: reply 0x%" PRIx32, type);
  }
  harness_note("1 MiB option: %s", r == 0 ? "error reply" : "connection closed");
  close(fd);
  free(mb);
  CHECK(harness_server_alive(server), "server died on a 1 MiB option");
}

static void test_misc_options(void) {
  int fd = conn(NBD_FLAG_C_FIXED_NEWSTYLE);
  uint32_t t = ask(fd, NBD_OPT_PEEK_EXPORT, NULL, 0, NULL);
  CHECK(t == NBD_REP_ERR_UNSUP, "PEEK_EXPORT: 0x%" PRIx32 ", expected ERR_UNSUP", t);
  /* No TLS configured: STARTTLS is refused, TLS is never demanded. */
  t = ask(fd, NBD_OPT_STARTTLS, NULL, 0, NULL);
  CHECK(t == NBD_REP_ERR_POLICY || t == NBD_REP_ERR_UNSUP || t == NBD_REP_ERR_PLATFORM,
        "STARTTLS without TLS: 0x%" PRIx32, t);
  still_negotiates(fd, "STARTTLS");
  t = ask(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL);
  CHECK(t == NBD_REP_ACK, "STRUCTURED_REPLY: 0x%" PRIx32, t);
  t = ask(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL);
  CHECK(t & NBD_REP_FLAG_ERROR, "a second STRUCTURED_REPLY: 0x%" PRIx32, t);
  still_negotiates(fd, "a second STRUCTURED_REPLY");

  /* GO asking for NAME and DESCRIPTION gets them. */
  uint8_t buf[256];
  uint16_t infos[3] = {NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE};
  size_t len = info_data(buf, "a", 1, infos, 3);
  CHECK(raw_send_option(fd, NBD_OPT_GO, buf, (uint32_t)len) == 0, "GO");
  bool name = false, desc = false, export = false;
  for (int i = 0;; i++) {
    CHECK(i < 16, "GO: too many replies");
    uint32_t opt, type, rlen;
    void *data;
    CHECK(raw_recv_option_reply(fd, &opt, &type, &data, &rlen) == 0, "GO reply");
    if (type == NBD_REP_ACK) {
      free(data);
      break;
    }
    CHECK(type == NBD_REP_INFO && rlen >= 2, "GO: reply 0x%" PRIx32, type);
    uint8_t *p = data;
    switch (be16_load(p)) {
    case NBD_INFO_EXPORT:
      export = true;
      CHECK(be64_load(p + 2) == SIZE, "GO a: size");
      break;
    case NBD_INFO_NAME:
      name = true;
      CHECK(rlen == 3 && p[2] == 'a', "NBD_INFO_NAME: %" PRIu32 " bytes", rlen);
      break;
    case NBD_INFO_DESCRIPTION:
      desc = true;
      CHECK(rlen == 2 + strlen(DESC) && memcmp(p + 2, DESC, strlen(DESC)) == 0,
            "NBD_INFO_DESCRIPTION: %" PRIu32 " bytes", rlen);
      break;
    }
    free(data);
  }
  CHECK(export && name && desc, "GO: export %d name %d description %d", export, name, desc);
  CHECK(raw_send_request(fd, 0, NBD_CMD_DISC, 1, 0, 0) == 0, "DISC");
  close(fd);

  /* NO_ZEROES without FIXED_NEWSTYLE: EXPORT_NAME answers with 10 bytes. */
  fd = conn(NBD_FLAG_C_NO_ZEROES);
  CHECK(raw_send_option(fd, NBD_OPT_EXPORT_NAME, "a", 1) == 0, "EXPORT_NAME");
  uint8_t reply[10];
  CHECK(raw_read(fd, reply, sizeof reply) == 0, "EXPORT_NAME reply");
  CHECK(be64_load(reply) == SIZE, "EXPORT_NAME a: size %" PRIu64, be64_load(reply));
  CHECK(raw_send_request(fd, 0, NBD_CMD_FLUSH, 5, 0, 0) == 0, "FLUSH");
  uint64_t cookie;
  uint32_t error;
  CHECK(raw_recv_simple_reply(fd, &cookie, &error) == 0 && cookie == 5 && error == 0,
        "FLUSH after a 10-byte EXPORT_NAME reply");
  close(fd);
}

/* One META_CONTEXT reply per selected context; returns how many, and the id
 * of base:allocation in *id. */
static int set_meta(int fd, uint32_t option, const char *export, const char *const *q, int nq,
                    uint32_t *id, uint32_t *final) {
  uint8_t buf[1024];
  size_t len = meta_data(buf, export, q, nq);
  CHECK(raw_send_option(fd, option, buf, (uint32_t)len) == 0, "meta context option");
  int n = 0;
  for (;;) {
    uint32_t opt, type, rlen;
    void *data;
    CHECK(raw_recv_option_reply(fd, &opt, &type, &data, &rlen) == 0, "meta context reply");
    if (type != NBD_REP_META_CONTEXT) {
      *final = type;
      free(data);
      return n;
    }
    CHECK(rlen > 4, "META_CONTEXT reply of %" PRIu32 " bytes", rlen);
    uint8_t *p = data;
    if (rlen - 4 == strlen(NBD_CONTEXT_BASE_ALLOCATION) &&
        memcmp(p + 4, NBD_CONTEXT_BASE_ALLOCATION, rlen - 4) == 0 && id)
      *id = be32_load(p);
    n++;
    free(data);
    CHECK(n < 16, "too many META_CONTEXT replies");
  }
}

/* Sends BLOCK_STATUS; returns the NBD error (0 on success) and the context id
 * of the first BLOCK_STATUS chunk in *ctx. */
static uint32_t block_status(int fd, uint32_t *ctx) {
  CHECK(raw_send_request(fd, 0, NBD_CMD_BLOCK_STATUS, 77, 0, 65536) == 0, "BLOCK_STATUS");
  uint32_t err = 0;
  for (int i = 0; i < 16; i++) {
    uint8_t hdr[NBD_CHUNK_HDR_SIZE];
    CHECK(raw_read(fd, hdr, 4) == 0, "reply magic");
    if (be32_load(hdr) == NBD_SIMPLE_REPLY_MAGIC) {
      CHECK(raw_read(fd, hdr + 4, NBD_SIMPLE_REPLY_SIZE - 4) == 0, "simple reply");
      CHECK(be64_load(hdr + 8) == 77, "cookie");
      return be32_load(hdr + 4);
    }
    CHECK(be32_load(hdr) == NBD_STRUCTURED_REPLY_MAGIC, "reply magic 0x%" PRIx32,
          be32_load(hdr));
    CHECK(raw_read(fd, hdr + 4, NBD_CHUNK_HDR_SIZE - 4) == 0, "chunk header");
    uint16_t flags = be16_load(hdr + 4), type = be16_load(hdr + 6);
    uint32_t len = be32_load(hdr + 16);
    CHECK(be64_load(hdr + 8) == 77, "cookie");
    CHECK(len <= MiB, "chunk of %" PRIu32 " bytes", len);
    uint8_t *payload = malloc(len + 1);
    CHECK(raw_read(fd, payload, len) == 0, "chunk payload");
    if (type == NBD_REPLY_TYPE_BLOCK_STATUS) {
      CHECK(len >= 12, "BLOCK_STATUS chunk of %" PRIu32 " bytes", len);
      *ctx = be32_load(payload);
    } else if (type & NBD_REPLY_TYPE_ERROR_BIT) {
      CHECK(len >= 6, "error chunk of %" PRIu32 " bytes", len);
      err = be32_load(payload);
    }
    free(payload);
    if (flags & NBD_REPLY_FLAG_DONE)
      return err;
  }
  FAIL("BLOCK_STATUS: no DONE chunk");
}

static void test_meta_contexts(void) {
  const char *base[] = {NBD_CONTEXT_BASE_ALLOCATION};
  const char *wild[] = {"base:"};
  const char *unknown[] = {"x-nope:thing"};
  const char *broken = "broken";
  uint32_t id = 0, final;

  /* SET before STRUCTURED_REPLY is refused. */
  int fd = conn(NBD_FLAG_C_FIXED_NEWSTYLE);
  int n = set_meta(fd, NBD_OPT_SET_META_CONTEXT, "", base, 1, &id, &final);
  CHECK(n == 0 && final == NBD_REP_ERR_INVALID,
        "SET_META_CONTEXT before STRUCTURED_REPLY: %d contexts, reply 0x%" PRIx32, n, final);
  CHECK(ask(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL) == NBD_REP_ACK, "STRUCTURED_REPLY");

  /* LIST with the namespace wildcard; an unknown namespace matches nothing. */
  n = set_meta(fd, NBD_OPT_LIST_META_CONTEXT, "", wild, 1, NULL, &final);
  CHECK(n >= 1 && final == NBD_REP_ACK, "LIST base:: %d contexts, reply 0x%" PRIx32, n, final);
  n = set_meta(fd, NBD_OPT_SET_META_CONTEXT, "", unknown, 1, NULL, &final);
  CHECK(n == 0 && final == NBD_REP_ACK, "SET x-nope:thing: %d contexts, reply 0x%" PRIx32, n,
        final);

  /* A query length running past the option: ERR_INVALID (a MUST). */
  uint8_t buf[64];
  size_t len = meta_data(buf, "", &broken, 1);
  be32_store(buf + 8, 200);
  CHECK(raw_send_option(fd, NBD_OPT_LIST_META_CONTEXT, buf, (uint32_t)len) == 0, "bad LIST");
  uint32_t opt, type, rlen;
  CHECK(raw_recv_option_reply(fd, &opt, &type, NULL, &rlen) == 0, "reply to a bad LIST");
  CHECK(type == NBD_REP_ERR_INVALID, "LIST_META_CONTEXT with an overlong query: 0x%" PRIx32,
        type);
  still_negotiates(fd, "a malformed LIST_META_CONTEXT");

  /* SET for export "a", then GO to "": the selection does not carry over. */
  n = set_meta(fd, NBD_OPT_SET_META_CONTEXT, "a", base, 1, &id, &final);
  CHECK(n == 1 && final == NBD_REP_ACK, "SET base:allocation on a: %d, 0x%" PRIx32, n, final);
  CHECK(raw_opt_go(fd, "", NULL, NULL) == NBD_REP_ACK, "GO \"\"");
  uint32_t ctx = 0xdead;
  uint32_t err = block_status(fd, &ctx);
  CHECK(err == NBD_EINVAL, "BLOCK_STATUS with the contexts of another export: error %" PRIu32,
        err);
  close(fd);

  /* SET, SET again with nothing (replaces), GO: no contexts either. */
  fd = conn(NBD_FLAG_C_FIXED_NEWSTYLE);
  CHECK(ask(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL) == NBD_REP_ACK, "STRUCTURED_REPLY");
  n = set_meta(fd, NBD_OPT_SET_META_CONTEXT, "a", base, 1, &id, &final);
  CHECK(n == 1, "SET base:allocation: %d", n);
  n = set_meta(fd, NBD_OPT_SET_META_CONTEXT, "a", NULL, 0, NULL, &final);
  CHECK(n == 0 && final == NBD_REP_ACK, "SET with no query: %d, 0x%" PRIx32, n, final);
  CHECK(raw_opt_go(fd, "a", NULL, NULL) == NBD_REP_ACK, "GO a");
  err = block_status(fd, &ctx);
  CHECK(err == NBD_EINVAL, "BLOCK_STATUS after an empty SET: error %" PRIu32, err);
  close(fd);

  /* SET then GO on the same export: the chunk carries the id SET gave. */
  fd = conn(NBD_FLAG_C_FIXED_NEWSTYLE);
  CHECK(ask(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0, NULL) == NBD_REP_ACK, "STRUCTURED_REPLY");
  n = set_meta(fd, NBD_OPT_SET_META_CONTEXT, "a", base, 1, &id, &final);
  CHECK(n == 1 && final == NBD_REP_ACK, "SET base:allocation: %d", n);
  CHECK(raw_opt_go(fd, "a", NULL, NULL) == NBD_REP_ACK, "GO a");
  err = block_status(fd, &ctx);
  CHECK(err == 0, "BLOCK_STATUS: error %" PRIu32, err);
  CHECK(ctx == id, "BLOCK_STATUS chunk for context %" PRIu32 ", SET gave %" PRIu32, ctx, id);
  close(fd);
}

int main(void) {
  harness_init("test-options", 60);
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  char ea[8192], img0[4096];
  XSNPRINTF(img0, sizeof img0, "%s", harness_qemu_image("img0.vhd", "dynamic", 2 * MiB));
  XSNPRINTF(ea, sizeof ea, "a=%s,description=" DESC,
            harness_qemu_image("a.vhd", "dynamic", SIZE));
  const char *args[] = {"-e", ea, img0, NULL};
  server = harness_start_server(sock, args);

  test_bad_info();
  test_misc_options();
  test_meta_contexts();
  CHECK(harness_server_alive(server), "the server died");
  struct nbd_handle *h = harness_connect(sock, "a");
  harness_close(h);
  return harness_finish();
}
