/* Unit tests of the NBD codec: each encoder against the wire bytes of the
 * spec, each decoder with good, malformed and oversized inputs. */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "codec.h"
#include "endian-be.h"

/* Builds INFO/GO data: name, then count and types. */
static size_t build_info(uint8_t *buf, const char *name, uint32_t claimed_len, uint16_t n,
                         const uint16_t *types, size_t ntypes) {
  size_t len = strlen(name);
  be32_store(buf, claimed_len);
  memcpy(buf + 4, name, len);
  be16_store(buf + 4 + len, n);
  for (size_t i = 0; i < ntypes; i++)
    be16_store(buf + 6 + len + 2 * i, types[i]);
  return 6 + len + 2 * ntypes;
}

static void test_greeting(void) {
  uint8_t g[NBD_GREETING_SIZE];
  nbd_encode_greeting(g, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  CHECK(memcmp(g, "NBDMAGICIHAVEOPT\0\3", 18) == 0);

  uint8_t f[4];
  uint32_t cf = 99;
  const char *why = NULL;
  be32_store(f, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  CHECK_EQ(nbd_decode_client_flags(f, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES, &cf, &why), 0);
  CHECK_EQ(cf, 3);
  be32_store(f, 0);
  CHECK_EQ(nbd_decode_client_flags(f, 3, &cf, &why), 0);
  CHECK_EQ(cf, 0);
  /* Unknown bit, and a bit the server did not offer. */
  be32_store(f, 1u << 2);
  CHECK_EQ(nbd_decode_client_flags(f, 3, &cf, &why), -EPROTO);
  CHECK(why != NULL);
  be32_store(f, NBD_FLAG_C_NO_ZEROES);
  CHECK_EQ(nbd_decode_client_flags(f, NBD_FLAG_FIXED_NEWSTYLE, &cf, NULL), -EPROTO);
  be32_store(f, 0x80000000u);
  CHECK_EQ(nbd_decode_client_flags(f, 3, &cf, NULL), -EPROTO);
}

static void test_option_hdr(void) {
  uint8_t h[16];
  struct nbd_option_hdr oh;
  be64_store(h, NBD_NEW_VERSION);
  be32_store(h + 8, NBD_OPT_GO);
  be32_store(h + 12, 0xffffffffu);
  CHECK_EQ(nbd_decode_option_hdr(h, &oh, NULL), 0);
  CHECK_EQ(oh.option, NBD_OPT_GO);
  CHECK_EQ(oh.length, 0xffffffffu);
  be64_store(h, NBD_MAGIC);
  const char *why = NULL;
  CHECK_EQ(nbd_decode_option_hdr(h, &oh, &why), -EPROTO);
  CHECK(why && strstr(why, "IHAVEOPT"));
}

static void test_info_request(void) {
  uint8_t buf[8192];
  struct nbd_info_request ir;
  const char *why;
  uint16_t types[] = {NBD_INFO_BLOCK_SIZE, 77, NBD_INFO_NAME, NBD_INFO_EXPORT};
  size_t len = build_info(buf, "disk", 4, 4, types, 4);
  CHECK_EQ(nbd_parse_info_request(buf, len, &ir, &why), 0);
  CHECK_EQ(ir.name_len, 4);
  CHECK(memcmp(ir.name, "disk", 4) == 0);
  CHECK_EQ(ir.n_requests, 4);
  CHECK(ir.want & NBD_INFO_WANT_BLOCK_SIZE);
  CHECK(ir.want & NBD_INFO_WANT_NAME);
  CHECK(!(ir.want & NBD_INFO_WANT_DESCRIPTION));

  /* Default export, no requests (what the kernel's nbd-client sends). */
  len = build_info(buf, "", 0, 0, NULL, 0);
  CHECK_EQ(len, 6);
  CHECK_EQ(nbd_parse_info_request(buf, len, &ir, &why), 0);
  CHECK_EQ(ir.name_len, 0);
  CHECK_EQ(ir.want, 0);

  /* Too short. */
  CHECK_EQ(nbd_parse_info_request(buf, 5, &ir, &why), -EINVAL);
  CHECK_EQ(nbd_parse_info_request(buf, 0, &ir, &why), -EINVAL);
  /* Name length past the data; also the overflow-prone 0xffffffff. */
  len = build_info(buf, "disk", 5, 0, NULL, 0);
  CHECK_EQ(nbd_parse_info_request(buf, len, &ir, &why), -EINVAL);
  len = build_info(buf, "disk", 0xffffffffu, 0, NULL, 0);
  CHECK_EQ(nbd_parse_info_request(buf, len, &ir, &why), -EINVAL);
  len = build_info(buf, "disk", 0xfffffffau, 0, NULL, 0);
  CHECK_EQ(nbd_parse_info_request(buf, len, &ir, &why), -EINVAL);
  /* Count disagrees with the length (too many, too few, odd trailing byte). */
  len = build_info(buf, "disk", 4, 3, types, 2);
  CHECK_EQ(nbd_parse_info_request(buf, len, &ir, &why), -EINVAL);
  len = build_info(buf, "disk", 4, 1, types, 2);
  CHECK_EQ(nbd_parse_info_request(buf, len, &ir, &why), -EINVAL);
  len = build_info(buf, "disk", 4, 1, types, 1);
  CHECK_EQ(nbd_parse_info_request(buf, len + 1, &ir, &why), -EINVAL);
  len = build_info(buf, "disk", 4, 0xffff, types, 1);
  CHECK_EQ(nbd_parse_info_request(buf, len, &ir, &why), -EINVAL);
  /* NUL inside the name. */
  len = build_info(buf, "di\0k", 4, 0, NULL, 0);
  memcpy(buf + 4, "di\0k", 4);
  be16_store(buf + 8, 0);
  CHECK_EQ(nbd_parse_info_request(buf, 10, &ir, &why), -EINVAL);
  /* 4096-byte name is fine, 4097 is not. */
  char name[4098];
  memset(name, 'a', sizeof name - 1);
  name[4096] = '\0';
  len = build_info(buf, name, 4096, 0, NULL, 0);
  CHECK_EQ(nbd_parse_info_request(buf, len, &ir, &why), 0);
  name[4096] = 'a';
  name[4097] = '\0';
  len = build_info(buf, name, 4097, 0, NULL, 0);
  CHECK_EQ(nbd_parse_info_request(buf, len, &ir, &why), -EINVAL);
}

static size_t build_meta(uint8_t *buf, const char *name, uint32_t nq, const char **q,
                         size_t count) {
  size_t len = strlen(name), pos;
  be32_store(buf, (uint32_t)len);
  memcpy(buf + 4, name, len);
  be32_store(buf + 4 + len, nq);
  pos = 8 + len;
  for (size_t i = 0; i < count; i++) {
    size_t ql = strlen(q[i]);
    be32_store(buf + pos, (uint32_t)ql);
    memcpy(buf + pos + 4, q[i], ql);
    pos += 4 + ql;
  }
  return pos;
}

static void test_meta_request(void) {
  uint8_t buf[16384];
  struct nbd_meta_request mr;
  const char *why;
  const char *qs[] = {"base:allocation", "qemu:dirty-bitmap:x", "base:"};
  size_t len = build_meta(buf, "exp", 3, qs, 3);
  CHECK_EQ(nbd_parse_meta_request(buf, len, &mr, &why), 0);
  CHECK_EQ(mr.name_len, 3);
  CHECK(memcmp(mr.name, "exp", 3) == 0);
  CHECK_EQ(mr.n_queries, 3);
  size_t pos = 0;
  const char *q;
  uint32_t ql;
  int i = 0;
  while (nbd_meta_query_next(&mr, &pos, &q, &ql)) {
    CHECK(i < 3);
    if (i < 3) {
      CHECK_EQ(ql, strlen(qs[i]));
      CHECK(memcmp(q, qs[i], ql) == 0);
    }
    i++;
  }
  CHECK_EQ(i, 3);

  /* No queries. */
  len = build_meta(buf, "", 0, NULL, 0);
  CHECK_EQ(nbd_parse_meta_request(buf, len, &mr, &why), 0);
  CHECK_EQ(mr.n_queries, 0);
  pos = 0;
  CHECK(!nbd_meta_query_next(&mr, &pos, &q, &ql));

  /* Malformed: short, count too large, query past the end, trailing bytes. */
  CHECK_EQ(nbd_parse_meta_request(buf, 7, &mr, &why), -EINVAL);
  len = build_meta(buf, "exp", 4, qs, 3);
  CHECK_EQ(nbd_parse_meta_request(buf, len, &mr, &why), -EINVAL);
  len = build_meta(buf, "exp", 0xffffffffu, qs, 3);
  CHECK_EQ(nbd_parse_meta_request(buf, len, &mr, &why), -EINVAL);
  len = build_meta(buf, "exp", 3, qs, 3);
  CHECK_EQ(nbd_parse_meta_request(buf, len - 1, &mr, &why), -EINVAL);
  len = build_meta(buf, "exp", 2, qs, 3);
  CHECK_EQ(nbd_parse_meta_request(buf, len, &mr, &why), -EINVAL);
  /* Query length field claiming more than remains. */
  len = build_meta(buf, "exp", 1, qs, 1);
  be32_store(buf + 11, 0xfffffff0u);
  CHECK_EQ(nbd_parse_meta_request(buf, len, &mr, &why), -EINVAL);
  /* Export name length past the end. */
  len = build_meta(buf, "exp", 0, NULL, 0);
  be32_store(buf, 0xffffffffu);
  CHECK_EQ(nbd_parse_meta_request(buf, len, &mr, &why), -EINVAL);
  /* Oversized query. */
  char big[4098];
  memset(big, 'x', 4097);
  memcpy(big, "base:", 5);
  big[4097] = '\0';
  const char *bq[] = {big};
  len = build_meta(buf, "exp", 1, bq, 1);
  CHECK_EQ(nbd_parse_meta_request(buf, len, &mr, &why), -EINVAL);
  big[4096] = '\0';
  len = build_meta(buf, "exp", 1, bq, 1);
  CHECK_EQ(nbd_parse_meta_request(buf, len, &mr, &why), 0);
}

static void test_option_replies(void) {
  uint8_t buf[NBD_OPTION_REPLY_MAX];
  ssize_t n;

  n = nbd_encode_rep_ack(buf, sizeof buf, NBD_OPT_ABORT);
  CHECK_EQ(n, 20);
  CHECK_EQ(be64_load(buf), NBD_OPT_REPLY_MAGIC);
  CHECK_EQ(be32_load(buf + 8), NBD_OPT_ABORT);
  CHECK_EQ(be32_load(buf + 12), NBD_REP_ACK);
  CHECK_EQ(be32_load(buf + 16), 0);
  CHECK_EQ(nbd_encode_rep_ack(buf, 19, NBD_OPT_ABORT), -ENOBUFS);

  n = nbd_encode_rep_server(buf, sizeof buf, NBD_OPT_LIST, "disk", 4, "A disk", 6);
  CHECK_EQ(n, 20 + 4 + 4 + 6);
  CHECK_EQ(be32_load(buf + 12), NBD_REP_SERVER);
  CHECK_EQ(be32_load(buf + 16), 14);
  CHECK_EQ(be32_load(buf + 20), 4);
  CHECK(memcmp(buf + 24, "diskA disk", 10) == 0);
  CHECK_EQ(nbd_encode_rep_server(buf, 27, NBD_OPT_LIST, "disk", 4, "", 0), -ENOBUFS);

  n = nbd_encode_rep_info_export(buf, sizeof buf, NBD_OPT_GO, UINT64_C(0x123456789a),
                                 NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY);
  CHECK_EQ(n, 32);
  CHECK_EQ(be32_load(buf + 12), NBD_REP_INFO);
  CHECK_EQ(be32_load(buf + 16), 12);
  CHECK_EQ(be16_load(buf + 20), NBD_INFO_EXPORT);
  CHECK_EQ(be64_load(buf + 22), UINT64_C(0x123456789a));
  CHECK_EQ(be16_load(buf + 30), 3);

  n = nbd_encode_rep_info_name(buf, sizeof buf, NBD_OPT_INFO, "x", 1);
  CHECK_EQ(n, 23);
  CHECK_EQ(be32_load(buf + 16), 3);
  CHECK_EQ(be16_load(buf + 20), NBD_INFO_NAME);
  CHECK_EQ(buf[22], 'x');
  n = nbd_encode_rep_info_description(buf, sizeof buf, NBD_OPT_INFO, "", 0);
  CHECK_EQ(n, 22);
  CHECK_EQ(be16_load(buf + 20), NBD_INFO_DESCRIPTION);
  CHECK_EQ(nbd_encode_rep_info_name(buf, sizeof buf, NBD_OPT_INFO, "x", 4097), -ENOBUFS);

  n = nbd_encode_rep_info_block_size(buf, sizeof buf, NBD_OPT_GO, 1, 4096, 32u << 20);
  CHECK_EQ(n, 34);
  CHECK_EQ(be32_load(buf + 16), 14);
  CHECK_EQ(be16_load(buf + 20), NBD_INFO_BLOCK_SIZE);
  CHECK_EQ(be32_load(buf + 22), 1);
  CHECK_EQ(be32_load(buf + 26), 4096);
  CHECK_EQ(be32_load(buf + 30), 32u << 20);

  n = nbd_encode_rep_meta_context(buf, sizeof buf, NBD_OPT_SET_META_CONTEXT, 7,
                                  NBD_CONTEXT_BASE_ALLOCATION, 15);
  CHECK_EQ(n, 20 + 4 + 15);
  CHECK_EQ(be32_load(buf + 12), NBD_REP_META_CONTEXT);
  CHECK_EQ(be32_load(buf + 20), 7);
  CHECK(memcmp(buf + 24, "base:allocation", 15) == 0);

  n = nbd_encode_rep_error(buf, sizeof buf, 42, NBD_REP_ERR_UNSUP, "no");
  CHECK_EQ(n, 22);
  CHECK_EQ(be32_load(buf + 8), 42);
  CHECK_EQ(be32_load(buf + 12), 0x80000001u);
  CHECK_EQ(be32_load(buf + 16), 2);
  n = nbd_encode_rep_error(buf, sizeof buf, 42, NBD_REP_ERR_POLICY, NULL);
  CHECK_EQ(n, 20);
  CHECK_EQ(nbd_encode_rep_error(buf, sizeof buf, 42, NBD_REP_ACK, "x"), -EINVAL);
  /* An oversized message is cut to 4096 bytes, never overflowing. */
  char *longmsg = malloc(10000);
  memset(longmsg, 'm', 9999);
  longmsg[9999] = '\0';
  n = nbd_encode_rep_error(buf, sizeof buf, 1, NBD_REP_ERR_INVALID, longmsg);
  CHECK_EQ(n, 20 + 4096);
  CHECK_EQ(nbd_encode_rep_error(buf, 100, 1, NBD_REP_ERR_INVALID, longmsg), -ENOBUFS);
  free(longmsg);

  CHECK_EQ(NBD_REP_ERR_TOO_BIG, 0x80000009u);
  CHECK_EQ(NBD_REP_ERR_EXT_HEADER_REQD, 0x8000000au);
}

static void test_export_name_reply(void) {
  uint8_t buf[NBD_EXPORT_NAME_REPLY_SIZE];
  memset(buf, 0xaa, sizeof buf);
  CHECK_EQ(nbd_encode_export_name_reply(buf, 1u << 20, 0x0101, true), 10);
  CHECK_EQ(be64_load(buf), 1u << 20);
  CHECK_EQ(be16_load(buf + 8), 0x0101);
  CHECK_EQ(buf[10], 0xaa);
  CHECK_EQ(nbd_encode_export_name_reply(buf, 1u << 20, 0x0101, false), 134);
  for (size_t i = 10; i < 134; i++)
    CHECK_EQ(buf[i], 0);
}

static void test_request(void) {
  uint8_t r[28];
  struct nbd_request req;
  be32_store(r, NBD_REQUEST_MAGIC);
  be16_store(r + 4, NBD_CMD_FLAG_FUA);
  be16_store(r + 6, NBD_CMD_WRITE);
  be64_store(r + 8, UINT64_C(0xdeadbeefcafef00d));
  be64_store(r + 16, UINT64_C(0x1122334455667788));
  be32_store(r + 24, 4096);
  CHECK_EQ(nbd_decode_request(r, &req, NULL), 0);
  CHECK_EQ(req.flags, NBD_CMD_FLAG_FUA);
  CHECK_EQ(req.type, NBD_CMD_WRITE);
  CHECK(req.cookie == UINT64_C(0xdeadbeefcafef00d));
  CHECK(req.offset == UINT64_C(0x1122334455667788));
  CHECK_EQ(req.length, 4096);
  const char *why = NULL;
  be32_store(r, NBD_EXTENDED_REQUEST_MAGIC);
  CHECK_EQ(nbd_decode_request(r, &req, &why), -EPROTO);
  CHECK(why != NULL);
  be32_store(r, 0);
  CHECK_EQ(nbd_decode_request(r, &req, NULL), -EPROTO);
  CHECK(!nbd_request_has_payload(&(struct nbd_request){.type = NBD_CMD_READ}, false));
  CHECK(nbd_request_has_payload(&(struct nbd_request){.type = NBD_CMD_WRITE}, false));
  CHECK(strcmp(nbd_cmd_name(NBD_CMD_BLOCK_STATUS), "BLOCK_STATUS") == 0);
  CHECK(strcmp(nbd_cmd_name(999), "unknown") == 0);
}

/* The 32-byte header: a 64-bit length, and each header refuses the other. */
static void test_request_ext(void) {
  uint8_t r[NBD_EXTENDED_REQUEST_SIZE];
  struct nbd_request req;
  be32_store(r, NBD_EXTENDED_REQUEST_MAGIC);
  be16_store(r + 4, NBD_CMD_FLAG_PAYLOAD_LEN);
  be16_store(r + 6, NBD_CMD_WRITE);
  be64_store(r + 8, UINT64_C(0xdeadbeefcafef00d));
  be64_store(r + 16, UINT64_C(0x1122334455667788));
  be64_store(r + 24, UINT64_C(0x1fe00000000)); /* 2040 GiB */
  CHECK_EQ(nbd_decode_request_ext(r, &req, NULL), 0);
  CHECK_EQ(req.flags, NBD_CMD_FLAG_PAYLOAD_LEN);
  CHECK_EQ(req.type, NBD_CMD_WRITE);
  CHECK(req.cookie == UINT64_C(0xdeadbeefcafef00d));
  CHECK(req.offset == UINT64_C(0x1122334455667788));
  CHECK(req.length == UINT64_C(0x1fe00000000));
  CHECK(nbd_request_has_payload(&req, true));
  req.type = NBD_CMD_BLOCK_STATUS;
  CHECK(nbd_request_has_payload(&req, true));
  req.flags = 0;
  CHECK(!nbd_request_has_payload(&req, true));
  req.type = NBD_CMD_WRITE; /* an extended WRITE without the flag has no payload */
  CHECK(!nbd_request_has_payload(&req, true));
  const char *why = NULL;
  be32_store(r, NBD_REQUEST_MAGIC);
  CHECK_EQ(nbd_decode_request_ext(r, &req, &why), -EPROTO);
  CHECK(why && strstr(why, "compact"));
  be32_store(r, NBD_SIMPLE_REPLY_MAGIC);
  CHECK_EQ(nbd_decode_request_ext(r, &req, NULL), -EPROTO);
  CHECK_EQ(nbd_request_size(true), 32);
  CHECK_EQ(nbd_request_size(false), 28);
}

static void test_block_status_payload(void) {
  uint8_t p[24];
  uint64_t effect = 0;
  uint32_t chosen = 0;
  const uint32_t one = NBD_CONTEXT_BIT(1), two = NBD_CONTEXT_BIT(2), both = one | two;
  const char *why = NULL;
  be64_store(p, UINT64_C(2040) << 30);
  be32_store(p + 8, 1);
  CHECK_EQ(nbd_parse_block_status_payload(p, 12, one, &effect, &chosen, &why), 0);
  CHECK(effect == UINT64_C(2040) << 30 && chosen == one);
  be32_store(p + 12, 1);
  why = NULL;
  CHECK_EQ(nbd_parse_block_status_payload(p, 16, both, &effect, &chosen, &why), -EINVAL);
  CHECK(why && strstr(why, "repeats"));
  be32_store(p + 12, 2);
  why = NULL;
  CHECK_EQ(nbd_parse_block_status_payload(p, 16, one, &effect, &chosen, &why), -EINVAL);
  CHECK(why && strstr(why, "not selected"));
  /* Both selected: either, or both in any order. */
  CHECK_EQ(nbd_parse_block_status_payload(p, 16, both, &effect, &chosen, &why), 0);
  CHECK(chosen == both);
  be32_store(p + 8, 2);
  be32_store(p + 12, 1);
  CHECK_EQ(nbd_parse_block_status_payload(p, 16, both, &effect, &chosen, &why), 0);
  CHECK(chosen == both);
  CHECK_EQ(nbd_parse_block_status_payload(p, 12, both, &effect, &chosen, &why), 0);
  CHECK(chosen == two && effect == UINT64_C(2040) << 30);
  CHECK_EQ(nbd_parse_block_status_payload(p, 12, one, &effect, &chosen, &why), -EINVAL);
  be32_store(p + 8, 40); /* beyond any mask bit */
  CHECK_EQ(nbd_parse_block_status_payload(p, 12, UINT32_MAX, &effect, &chosen, &why), -EINVAL);
  be32_store(p + 8, 1);
  CHECK_EQ(nbd_parse_block_status_payload(p, 8, one, &effect, &chosen, &why), -EINVAL);  /* no id */
  CHECK_EQ(nbd_parse_block_status_payload(p, 13, one, &effect, &chosen, &why), -EINVAL); /* 8+4n */
  CHECK_EQ(nbd_parse_block_status_payload(p, 0, one, &effect, &chosen, &why), -EINVAL);
}

static uint32_t check(uint16_t type, uint16_t flags, uint64_t off, uint64_t len,
                      const struct nbd_request_limits *lim) {
  struct nbd_request req = {.flags = flags, .type = type, .offset = off, .length = len};
  const char *why = NULL;
  uint32_t e = nbd_check_request(&req, lim, &why);
  if (e && !why) {
    fprintf(stderr, "error without a reason\n");
    failures++;
  }
  return e;
}

static void test_check_request(void) {
  const uint16_t rw = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                      NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF |
                      NBD_FLAG_SEND_FAST_ZERO | NBD_FLAG_SEND_CACHE;
  struct nbd_request_limits lim = {.export_size = 1 << 20, .tflags = rw, .structured = true,
                                   .meta_allocation = true, .max_payload = 32u << 20};
  CHECK_EQ(check(NBD_CMD_READ, 0, 0, 4096, &lim), 0);
  CHECK_EQ(check(NBD_CMD_READ, 0, (1 << 20) - 1, 1, &lim), 0);
  CHECK_EQ(check(NBD_CMD_READ, 0, 0, 1 << 20, &lim), 0);
  CHECK_EQ(check(NBD_CMD_READ, 0, 0, 0, &lim), 0);
  CHECK_EQ(check(NBD_CMD_READ, 0, 1 << 20, 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_READ, 0, UINT64_MAX, 2, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_WRITE, 0, UINT64_MAX - 1, 4, &lim), NBD_ENOSPC);
  CHECK_EQ(check(NBD_CMD_WRITE_ZEROES, 0, 1 << 20, 1, &lim), NBD_ENOSPC);
  CHECK_EQ(check(NBD_CMD_TRIM, 0, 1 << 20, 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_CACHE, 0, 1 << 20, 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_BLOCK_STATUS, 0, 1 << 20, 1, &lim), NBD_EINVAL);
  /* Flags. */
  CHECK_EQ(check(NBD_CMD_READ, NBD_CMD_FLAG_FUA, 0, 1, &lim), 0);
  CHECK_EQ(check(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1, &lim), 0);
  CHECK_EQ(check(NBD_CMD_WRITE, NBD_CMD_FLAG_DF, 0, 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO, 0, 1, &lim),
           0);
  CHECK_EQ(check(NBD_CMD_WRITE, NBD_CMD_FLAG_NO_HOLE, 0, 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_REQ_ONE, 0, 1, &lim), 0);
  CHECK_EQ(check(NBD_CMD_BLOCK_STATUS, 0, 0, 0, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_READ, NBD_CMD_FLAG_REQ_ONE, 0, 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_READ, NBD_CMD_FLAG_PAYLOAD_LEN, 0, 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_READ, 0x8000, 0, 1, &lim), NBD_EINVAL);
  /* Unknown commands, FLUSH/DISC with a range. */
  CHECK_EQ(check(NBD_CMD_RESIZE, 0, 0, 0, &lim), NBD_EINVAL);
  CHECK_EQ(check(1000, 0, 0, 0, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_FLUSH, 0, 0, 0, &lim), 0);
  CHECK_EQ(check(NBD_CMD_FLUSH, 0, 1, 0, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_FLUSH, 0, 0, 1, &lim), NBD_EINVAL);
  /* Payload limits apply to READ and WRITE only. */
  lim.export_size = UINT64_C(1) << 40;
  CHECK_EQ(check(NBD_CMD_WRITE, 0, 0, 32u << 20, &lim), 0);
  CHECK_EQ(check(NBD_CMD_WRITE, 0, 0, (32u << 20) + 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_READ, 0, 0, (32u << 20) + 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_TRIM, 0, 0, 0xffffffffu, &lim), 0);
  CHECK_EQ(check(NBD_CMD_WRITE_ZEROES, 0, 0, 0xffffffffu, &lim), 0);
  /* Without structured replies: no DF, no BLOCK_STATUS. */
  lim.structured = false;
  CHECK_EQ(check(NBD_CMD_READ, NBD_CMD_FLAG_DF, 0, 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_BLOCK_STATUS, 0, 0, 1, &lim), NBD_EINVAL);
  lim.structured = true;
  lim.meta_allocation = false;
  CHECK_EQ(check(NBD_CMD_BLOCK_STATUS, 0, 0, 1, &lim), NBD_EINVAL);
  /* Read-only. */
  lim.tflags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_READ_ONLY | NBD_FLAG_SEND_FLUSH;
  CHECK_EQ(check(NBD_CMD_WRITE, 0, 0, 1, &lim), NBD_EPERM);
  CHECK_EQ(check(NBD_CMD_TRIM, 0, 0, 1, &lim), NBD_EPERM);
  CHECK_EQ(check(NBD_CMD_WRITE_ZEROES, 0, 0, 1, &lim), NBD_EPERM);
  CHECK_EQ(check(NBD_CMD_WRITE_ZEROES, NBD_CMD_FLAG_FAST_ZERO, 0, 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_READ, 0, 0, 1, &lim), 0);
  CHECK_EQ(check(NBD_CMD_FLUSH, 0, 0, 0, &lim), 0);
}

static void test_check_request_ext(void) {
  const uint16_t rw = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA |
                      NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_DF |
                      NBD_FLAG_SEND_CACHE;
  const uint64_t size = UINT64_C(2040) << 30;
  struct nbd_request_limits lim = {.export_size = size, .tflags = rw, .structured = true,
                                   .extended = true, .meta_allocation = true,
                                   .max_payload = 32u << 20};
  /* 64-bit effect lengths cover the whole export in one request... */
  CHECK_EQ(check(NBD_CMD_WRITE_ZEROES, 0, 0, size, &lim), 0);
  CHECK_EQ(check(NBD_CMD_TRIM, 0, 0, size, &lim), 0);
  CHECK_EQ(check(NBD_CMD_BLOCK_STATUS, 0, 0, size, &lim), 0);
  CHECK_EQ(check(NBD_CMD_CACHE, 0, 0, size, &lim), 0);
  CHECK_EQ(check(NBD_CMD_TRIM, 0, 1, size, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_WRITE_ZEROES, 0, 512, size, &lim), NBD_ENOSPC);
  CHECK_EQ(check(NBD_CMD_BLOCK_STATUS, 0, 0, size + 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_TRIM, 0, UINT64_MAX, UINT64_MAX, &lim), NBD_EINVAL);
  /* ...but READ and WRITE payloads stay within the maximum. */
  CHECK_EQ(check(NBD_CMD_READ, 0, 0, 32u << 20, &lim), 0);
  CHECK_EQ(check(NBD_CMD_READ, 0, 0, (32u << 20) + 1, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_READ, 0, 0, UINT64_C(1) << 32, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_WRITE, NBD_CMD_FLAG_PAYLOAD_LEN, 0, 32u << 20, &lim), 0);
  CHECK_EQ(check(NBD_CMD_WRITE, NBD_CMD_FLAG_PAYLOAD_LEN, 0, (32u << 20) + 1, &lim),
           NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_WRITE, NBD_CMD_FLAG_PAYLOAD_LEN | NBD_CMD_FLAG_FUA, 0, 4096, &lim), 0);
  /* PAYLOAD_LEN: required on WRITE, refused elsewhere. */
  CHECK_EQ(check(NBD_CMD_WRITE, 0, 0, 4096, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_READ, NBD_CMD_FLAG_PAYLOAD_LEN, 0, 4096, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_BLOCK_STATUS, NBD_CMD_FLAG_PAYLOAD_LEN, 0, 12, &lim), NBD_EINVAL);
  CHECK_EQ(check(NBD_CMD_FLUSH, NBD_CMD_FLAG_PAYLOAD_LEN, 0, 0, &lim), NBD_EINVAL);
  /* Read-only still wins over a well-formed WRITE. */
  lim.tflags |= NBD_FLAG_READ_ONLY;
  CHECK_EQ(check(NBD_CMD_WRITE, NBD_CMD_FLAG_PAYLOAD_LEN, 0, 4096, &lim), NBD_EPERM);
  CHECK_EQ(check(NBD_CMD_WRITE_ZEROES, 0, 0, size, &lim), NBD_EPERM);
}

static void test_replies(void) {
  uint8_t buf[256];
  nbd_encode_simple_reply(buf, 0x0102030405060708u, NBD_EIO);
  CHECK_EQ(be32_load(buf), NBD_SIMPLE_REPLY_MAGIC);
  CHECK_EQ(be32_load(buf + 4), 5);
  CHECK(be64_load(buf + 8) == 0x0102030405060708u);

  struct nbd_reply_to c9 = {.cookie = 9}, c11 = {.cookie = 11}, c3 = {.cookie = 3},
                      c4 = {.cookie = 4};
  CHECK_EQ(nbd_encode_chunk_offset_data(buf, &c9, NBD_REPLY_FLAG_DONE, 4096, 512), 28);
  CHECK_EQ(be32_load(buf), NBD_STRUCTURED_REPLY_MAGIC);
  CHECK_EQ(be16_load(buf + 4), NBD_REPLY_FLAG_DONE);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_OFFSET_DATA);
  CHECK_EQ(be64_load(buf + 8), 9);
  CHECK_EQ(be32_load(buf + 16), 520);
  CHECK_EQ(be64_load(buf + 20), 4096);

  CHECK_EQ(nbd_encode_chunk_offset_hole(buf, &c9, 0, 8192, 65536), 32);
  CHECK_EQ(be16_load(buf + 4), 0);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_OFFSET_HOLE);
  CHECK_EQ(be32_load(buf + 16), 12);
  CHECK_EQ(be64_load(buf + 20), 8192);
  CHECK_EQ(be32_load(buf + 28), 65536);

  CHECK_EQ(nbd_encode_chunk_none(buf, &c11), 20);
  CHECK_EQ(be16_load(buf + 4), NBD_REPLY_FLAG_DONE);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_NONE);
  CHECK_EQ(be32_load(buf + 16), 0);

  struct nbd_extent ext[2] = {{4096, 0}, {8192, NBD_STATE_HOLE | NBD_STATE_ZERO}};
  ssize_t n = nbd_encode_chunk_block_status(buf, sizeof buf, &c3, NBD_REPLY_FLAG_DONE, 1, ext, 2);
  CHECK_EQ(n, 20 + 4 + 16);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_BLOCK_STATUS);
  CHECK_EQ(be32_load(buf + 16), 20);
  CHECK_EQ(be32_load(buf + 20), 1);
  CHECK_EQ(be32_load(buf + 24), 4096);
  CHECK_EQ(be32_load(buf + 28), 0);
  CHECK_EQ(be32_load(buf + 32), 8192);
  CHECK_EQ(be32_load(buf + 36), 3);
  CHECK_EQ(nbd_encode_chunk_block_status(buf, 39, &c3, 0, 1, ext, 2), -ENOBUFS);
  CHECK_EQ(nbd_encode_chunk_block_status(buf, sizeof buf, &c3, 0, 1, ext, 0), -EINVAL);
  /* A compact descriptor cannot say more than 32 bits. */
  struct nbd_extent big = {UINT64_C(1) << 32, 0};
  CHECK_EQ(nbd_encode_chunk_block_status(buf, sizeof buf, &c3, 0, 1, &big, 1), -EOVERFLOW);

  n = nbd_encode_chunk_error(buf, sizeof buf, &c4, NBD_REPLY_FLAG_DONE, NBD_EIO, "bad", false, 0);
  CHECK_EQ(n, 20 + 6 + 3);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_ERROR);
  CHECK_EQ(be32_load(buf + 16), 9);
  CHECK_EQ(be32_load(buf + 20), NBD_EIO);
  CHECK_EQ(be16_load(buf + 24), 3);
  CHECK(memcmp(buf + 26, "bad", 3) == 0);
  n = nbd_encode_chunk_error(buf, sizeof buf, &c4, NBD_REPLY_FLAG_DONE, NBD_EIO, "bad", true,
                             12345);
  CHECK_EQ(n, 20 + 6 + 3 + 8);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_ERROR_OFFSET);
  CHECK_EQ(be32_load(buf + 16), 17);
  CHECK_EQ(be64_load(buf + 29), 12345);
  CHECK_EQ(nbd_encode_chunk_error(buf, sizeof buf, &c4, 0, 0, "x", false, 0), -EINVAL);
  CHECK_EQ(nbd_encode_chunk_error(buf, 25, &c4, 0, NBD_EIO, NULL, false, 0), -ENOBUFS);
  CHECK_EQ(nbd_encode_chunk_error(buf, 26, &c4, 0, NBD_EIO, NULL, false, 0), 26);
}

/* Extended replies: 32-byte headers echoing the request's offset, 64-bit
 * lengths, BLOCK_STATUS_EXT with a descriptor count and 64-bit fields. */
static void test_replies_ext(void) {
  uint8_t buf[256];
  const uint64_t off = UINT64_C(0x0123456789abcdef);
  struct nbd_reply_to to = {.cookie = 0x0102030405060708u, .offset = off, .extended = true};
  CHECK_EQ(nbd_encode_chunk_none(buf, &to), 32);
  CHECK_EQ(be32_load(buf), NBD_EXTENDED_REPLY_MAGIC);
  CHECK_EQ(be16_load(buf + 4), NBD_REPLY_FLAG_DONE);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_NONE);
  CHECK(be64_load(buf + 8) == 0x0102030405060708u);
  CHECK(be64_load(buf + 16) == off);
  CHECK(be64_load(buf + 24) == 0);

  CHECK_EQ(nbd_encode_chunk_offset_data(buf, &to, 0, off + 4096, 512), 40);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_OFFSET_DATA);
  CHECK(be64_load(buf + 16) == off); /* the request's, not the chunk's */
  CHECK(be64_load(buf + 24) == 520);
  CHECK(be64_load(buf + 32) == off + 4096);

  CHECK_EQ(nbd_encode_chunk_offset_hole(buf, &to, NBD_REPLY_FLAG_DONE, off + 8192, 65536), 44);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_OFFSET_HOLE);
  CHECK(be64_load(buf + 24) == 12);
  CHECK(be64_load(buf + 32) == off + 8192);
  CHECK_EQ(be32_load(buf + 40), 65536);

  struct nbd_extent ext[2] = {{UINT64_C(2040) << 30, NBD_STATE_HOLE | NBD_STATE_ZERO},
                              {4096, 0}};
  ssize_t n = nbd_encode_chunk_block_status(buf, sizeof buf, &to, NBD_REPLY_FLAG_DONE, 7, ext, 2);
  CHECK_EQ(n, 32 + 8 + 32);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_BLOCK_STATUS_EXT);
  CHECK(be64_load(buf + 24) == 8 + 32);
  CHECK_EQ(be32_load(buf + 32), 7);
  CHECK_EQ(be32_load(buf + 36), 2);
  CHECK(be64_load(buf + 40) == UINT64_C(2040) << 30);
  CHECK(be64_load(buf + 48) == 3);
  CHECK(be64_load(buf + 56) == 4096);
  CHECK(be64_load(buf + 64) == 0);
  CHECK_EQ(nbd_encode_chunk_block_status(buf, 71, &to, 0, 7, ext, 2), -ENOBUFS);
  ext[1].length = 0;
  CHECK_EQ(nbd_encode_chunk_block_status(buf, sizeof buf, &to, 0, 7, ext, 2), -EINVAL);

  n = nbd_encode_chunk_error(buf, sizeof buf, &to, NBD_REPLY_FLAG_DONE, NBD_EINVAL, "no", false,
                             0);
  CHECK_EQ(n, 32 + 6 + 2);
  CHECK_EQ(be16_load(buf + 6), NBD_REPLY_TYPE_ERROR);
  CHECK(be64_load(buf + 24) == 8);
  CHECK_EQ(be32_load(buf + 32), NBD_EINVAL);
  CHECK_EQ(be16_load(buf + 36), 2);
  CHECK(memcmp(buf + 38, "no", 2) == 0);
  CHECK_EQ(nbd_encode_chunk_error(buf, 37, &to, 0, NBD_EIO, NULL, false, 0), -ENOBUFS);
  CHECK_EQ(nbd_encode_chunk_error(buf, 38, &to, 0, NBD_EIO, NULL, false, 0), 38);
}

static void test_errno(void) {
  CHECK_EQ(nbd_errno_to_nbd(0), 0);
  CHECK_EQ(nbd_errno_to_nbd(EPERM), NBD_EPERM);
  CHECK_EQ(nbd_errno_to_nbd(-EROFS), NBD_EPERM);
  CHECK_EQ(nbd_errno_to_nbd(-EIO), NBD_EIO);
  CHECK_EQ(nbd_errno_to_nbd(-ENOMEM), NBD_ENOMEM);
  CHECK_EQ(nbd_errno_to_nbd(-EINVAL), NBD_EINVAL);
  CHECK_EQ(nbd_errno_to_nbd(-ENOSPC), NBD_ENOSPC);
  CHECK_EQ(nbd_errno_to_nbd(-EDQUOT), NBD_ENOSPC);
  CHECK_EQ(nbd_errno_to_nbd(-EFBIG), NBD_ENOSPC);
  CHECK_EQ(nbd_errno_to_nbd(-EOVERFLOW), NBD_EOVERFLOW);
  CHECK_EQ(nbd_errno_to_nbd(-ENOTSUP), NBD_ENOTSUP);
  CHECK_EQ(nbd_errno_to_nbd(-EOPNOTSUPP), NBD_ENOTSUP);
  CHECK_EQ(nbd_errno_to_nbd(-ESHUTDOWN), NBD_ESHUTDOWN);
  CHECK_EQ(nbd_errno_to_nbd(-EBADMSG), NBD_EIO);
  CHECK_EQ(nbd_errno_to_nbd(-ENOENT), NBD_EIO);
}

/* Every decoder on every prefix of random bytes: nothing may read out of
 * bounds (run under ASan/valgrind in CI), and accepted results must be
 * consistent with the input length. */
static void test_random_inputs(void) {
  uint8_t *buf = malloc(512);
  unsigned seed = 12345;
  for (int iter = 0; iter < 20000; iter++) {
    size_t len = (size_t)(rand_r(&seed) % 64);
    for (size_t i = 0; i < len; i++)
      buf[i] = (uint8_t)rand_r(&seed);
    /* Small lengths make the length fields plausible now and then. */
    if (len >= 4 && (iter & 1))
      be32_store(buf, (uint32_t)(rand_r(&seed) % 16));
    uint8_t *copy = malloc(len ? len : 1);
    memcpy(copy, buf, len);
    struct nbd_info_request ir;
    if (nbd_parse_info_request(copy, len, &ir, NULL) == 0)
      CHECK(6 + ir.name_len + 2 * (size_t)ir.n_requests == len);
    struct nbd_meta_request mr;
    if (nbd_parse_meta_request(copy, len, &mr, NULL) == 0) {
      size_t pos = 0;
      const char *q;
      uint32_t ql;
      uint32_t count = 0;
      while (nbd_meta_query_next(&mr, &pos, &q, &ql)) {
        CHECK(q >= (const char *)copy && q + ql <= (const char *)copy + len);
        count++;
      }
      CHECK_EQ(count, mr.n_queries);
    }
    free(copy);
  }
  free(buf);
}

int main(void) {
  test_greeting();
  test_option_hdr();
  test_info_request();
  test_meta_request();
  test_option_replies();
  test_export_name_reply();
  test_request();
  test_request_ext();
  test_check_request();
  test_check_request_ext();
  test_block_status_payload();
  test_replies();
  test_replies_ext();
  test_errno();
  test_random_inputs();
  return check_finish("NBD codec");
}
