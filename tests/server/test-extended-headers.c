/* NBD_OPT_EXTENDED_HEADERS, spoken by a raw client (Debian 12's libnbd
 * predates it): the negotiation rules (STRUCTURED_REPLY refused after it,
 * EXPORT_NAME ending the session, SET_META_CONTEXT allowed by it), every
 * command with 32-byte requests and replies (BLOCK_STATUS answering with
 * BLOCK_STATUS_EXT, and its payload form), PAYLOAD_LEN refused where it does
 * not belong with the payload consumed, READ/WRITE kept within the maximum payload, 64-bit
 * WRITE_ZEROES/TRIM/BLOCK_STATUS over a whole 2040 GiB image in one request,
 * and data written this way read back identically by libnbd. */
#include <config.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "endian-be.h"
#include "harness.h"
#include "nbd-proto.h"

#define SIZE (64 * MiB)
#define HUGE (UINT64_C(2040) << 30)
#define CONTEXT_ID 1u /* the id the server gives base:allocation */

static uint64_t next_cookie = 100;

static uint32_t expect_option_reply(int fd, uint32_t option) {
  uint32_t opt, type, len;
  void *data = NULL;
  int r = raw_recv_option_reply(fd, &opt, &type, &data, &len);
  CHECK(r == 0, "reading the reply to option %" PRIu32 ": %s", option, strerror(-r));
  CHECK(opt == option, "reply names option %" PRIu32 ", not %" PRIu32, opt, option);
  free(data);
  return type;
}

/* Extended headers, base:allocation, GO: a connection ready for requests.
 * The BLOCK_STATUS payload form is advertised exactly when a context was
 * selected. */
static int connect_extended(const char *sock, bool meta) {
  int fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  CHECK(raw_send_option(fd, NBD_OPT_EXTENDED_HEADERS, NULL, 0) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_EXTENDED_HEADERS) == NBD_REP_ACK,
        "NBD_OPT_EXTENDED_HEADERS refused");
  if (meta) {
    static const char q[] = NBD_CONTEXT_BASE_ALLOCATION;
    uint8_t data[4 + 4 + 4 + sizeof q];
    be32_store(data, 0);
    be32_store(data + 4, 1);
    be32_store(data + 8, (uint32_t)strlen(q));
    memcpy(data + 12, q, strlen(q));
    CHECK(raw_send_option(fd, NBD_OPT_SET_META_CONTEXT, data, (uint32_t)(12 + strlen(q))) == 0,
          "send");
    /* Extended headers imply structured replies: the context is granted. */
    CHECK(expect_option_reply(fd, NBD_OPT_SET_META_CONTEXT) == NBD_REP_META_CONTEXT,
          "base:allocation not granted after extended headers");
    CHECK(expect_option_reply(fd, NBD_OPT_SET_META_CONTEXT) == NBD_REP_ACK, "no ACK");
  }
  uint64_t size;
  uint16_t flags;
  CHECK(raw_opt_go(fd, "", &size, &flags) == NBD_REP_ACK, "NBD_OPT_GO refused");
  CHECK(flags & NBD_FLAG_SEND_DF, "DF not advertised with extended headers");
  CHECK(!(flags & NBD_FLAG_BLOCK_STATUS_PAYLOAD) == !meta,
        "NBD_FLAG_BLOCK_STATUS_PAYLOAD %s with%s a meta context",
        meta ? "not advertised" : "advertised", meta ? "" : "out");
  return fd;
}

/* Sends a request and reads its one-chunk reply, which must echo the cookie
 * and the offset and be final.  Returns the NBD error (0: a NONE chunk). */
static uint32_t simple_request(int fd, uint16_t flags, uint16_t type, uint64_t off,
                               uint64_t len, const void *payload, size_t payload_len) {
  uint64_t cookie = next_cookie++;
  CHECK(raw_send_request_ext(fd, flags, type, cookie, off, len) == 0, "sending %s", "request");
  if (payload_len)
    CHECK(raw_write(fd, payload, payload_len) == 0, "sending a payload");
  struct raw_ext_reply rep;
  int r = raw_recv_ext_reply(fd, &rep);
  CHECK(r == 0, "reading the reply to command %u: %s", type, strerror(-r));
  CHECK(rep.cookie == cookie, "reply cookie %" PRIu64 ", want %" PRIu64, rep.cookie, cookie);
  CHECK(rep.offset == off, "reply offset %" PRIu64 ", want the request's %" PRIu64, rep.offset,
        off);
  CHECK(rep.flags & NBD_REPLY_FLAG_DONE, "command %u: reply not final", type);
  uint32_t error = 0;
  if (rep.type == NBD_REPLY_TYPE_ERROR) {
    CHECK(rep.length >= 6, "short error chunk");
    error = be32_load(rep.payload);
    CHECK(error != 0, "error chunk with error 0");
  } else {
    CHECK(rep.type == NBD_REPLY_TYPE_NONE, "command %u: reply type %u, not NONE", type,
          rep.type);
    CHECK(rep.length == 0, "NONE chunk with %" PRIu64 " bytes", rep.length);
  }
  free(rep.payload);
  return error;
}

/* READ: data and holes chunks until DONE; fills buf (len bytes at off). */
static void read_ext(int fd, uint64_t off, uint8_t *buf, uint32_t len) {
  uint64_t cookie = next_cookie++;
  memset(buf, 0xa5, len);
  CHECK(raw_send_request_ext(fd, 0, NBD_CMD_READ, cookie, off, len) == 0, "sending READ");
  uint64_t covered = 0;
  for (;;) {
    struct raw_ext_reply rep;
    CHECK(raw_recv_ext_reply(fd, &rep) == 0, "reading a READ chunk");
    CHECK(rep.cookie == cookie && rep.offset == off, "READ chunk cookie/offset");
    if (rep.type == NBD_REPLY_TYPE_OFFSET_DATA) {
      uint64_t o = be64_load(rep.payload), n = rep.length - 8;
      CHECK(o >= off && o + n <= off + len, "data chunk %" PRIu64 "+%" PRIu64 " outside", o, n);
      memcpy(buf + (o - off), rep.payload + 8, n);
      covered += n;
    } else if (rep.type == NBD_REPLY_TYPE_OFFSET_HOLE) {
      CHECK(rep.length == 12, "hole chunk of %" PRIu64 " bytes", rep.length);
      uint64_t o = be64_load(rep.payload);
      uint32_t n = be32_load(rep.payload + 8);
      CHECK(o >= off && o + n <= off + len, "hole chunk outside the request");
      memset(buf + (o - off), 0, n);
      covered += n;
    } else {
      FAIL("READ: chunk type %u", rep.type);
    }
    free(rep.payload);
    if (rep.flags & NBD_REPLY_FLAG_DONE)
      break;
  }
  CHECK(covered == len, "READ chunks cover %" PRIu64 " of %" PRIu32 " bytes", covered, len);
}

struct ext_status {
  uint32_t count;
  uint64_t len[1024];
  uint64_t flags[1024];
  uint64_t total;
};

/* BLOCK_STATUS: one BLOCK_STATUS_EXT chunk for context 1.  With payload
 * (the payload form), len is its length. */
static void block_status_payload(int fd, uint16_t flags, uint64_t off, uint64_t len,
                                 const void *payload, struct ext_status *st) {
  uint64_t cookie = next_cookie++;
  CHECK(raw_send_request_ext(fd, flags, NBD_CMD_BLOCK_STATUS, cookie, off, len) == 0, "send");
  if (payload)
    CHECK(raw_write(fd, payload, len) == 0, "sending the BLOCK_STATUS payload");
  struct raw_ext_reply rep;
  CHECK(raw_recv_ext_reply(fd, &rep) == 0, "reading BLOCK_STATUS");
  CHECK(rep.cookie == cookie && rep.offset == off, "BLOCK_STATUS cookie/offset");
  CHECK(rep.type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT, "BLOCK_STATUS reply type %u, want _EXT",
        rep.type);
  CHECK(rep.flags & NBD_REPLY_FLAG_DONE, "BLOCK_STATUS not final");
  CHECK(rep.length >= 8 + 16 && (rep.length - 8) % 16 == 0, "BLOCK_STATUS_EXT length %" PRIu64,
        rep.length);
  CHECK(be32_load(rep.payload) == CONTEXT_ID, "context id %" PRIu32,
        be32_load(rep.payload));
  st->count = be32_load(rep.payload + 4);
  CHECK(st->count == (rep.length - 8) / 16, "descriptor count %" PRIu32 " for %" PRIu64 " bytes",
        st->count, rep.length);
  CHECK(st->count <= 1024, "%" PRIu32 " descriptors", st->count);
  st->total = 0;
  for (uint32_t i = 0; i < st->count; i++) {
    st->len[i] = be64_load(rep.payload + 8 + 16 * i);
    st->flags[i] = be64_load(rep.payload + 16 + 16 * i);
    CHECK(st->len[i] > 0, "descriptor %" PRIu32 " of length 0", i);
    st->total += st->len[i];
  }
  free(rep.payload);
}

static void block_status_ext(int fd, uint16_t flags, uint64_t off, uint64_t len,
                             struct ext_status *st) {
  block_status_payload(fd, flags, off, len, NULL, st);
}

static void test_negotiation(const char *sock) {
  /* Data with the option, a repeat, then STRUCTURED_REPLY: refused, each
   * with the error the spec names; the session goes on. */
  int fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  CHECK(raw_send_option(fd, NBD_OPT_EXTENDED_HEADERS, "x", 1) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_EXTENDED_HEADERS) == NBD_REP_ERR_INVALID,
        "NBD_OPT_EXTENDED_HEADERS with data accepted");
  CHECK(raw_send_option(fd, NBD_OPT_EXTENDED_HEADERS, NULL, 0) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_EXTENDED_HEADERS) == NBD_REP_ACK, "refused");
  CHECK(raw_send_option(fd, NBD_OPT_EXTENDED_HEADERS, NULL, 0) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_EXTENDED_HEADERS) == NBD_REP_ERR_INVALID,
        "a second NBD_OPT_EXTENDED_HEADERS accepted");
  CHECK(raw_send_option(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_STRUCTURED_REPLY) == NBD_REP_ERR_EXT_HEADER_REQD,
        "NBD_OPT_STRUCTURED_REPLY after extended headers not refused with EXT_HEADER_REQD");
  CHECK(raw_send_option(fd, NBD_OPT_ABORT, NULL, 0) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_ABORT) == NBD_REP_ACK, "ABORT");
  close(fd);

  /* STRUCTURED_REPLY first, then extended headers: allowed. */
  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE);
  CHECK(raw_send_option(fd, NBD_OPT_STRUCTURED_REPLY, NULL, 0) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_STRUCTURED_REPLY) == NBD_REP_ACK, "refused");
  CHECK(raw_send_option(fd, NBD_OPT_EXTENDED_HEADERS, NULL, 0) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_EXTENDED_HEADERS) == NBD_REP_ACK,
        "extended headers refused after structured replies");
  CHECK(raw_opt_go(fd, "", NULL, NULL) == NBD_REP_ACK, "GO");
  CHECK(simple_request(fd, 0, NBD_CMD_FLUSH, 0, 0, NULL, 0) == 0, "FLUSH failed");
  close(fd);

  /* EXPORT_NAME after extended headers: the client broke a MUST NOT and the
   * option has no error reply, so the server ends the session without the
   * export's size and flags. */
  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  CHECK(raw_send_option(fd, NBD_OPT_EXTENDED_HEADERS, NULL, 0) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_EXTENDED_HEADERS) == NBD_REP_ACK, "refused");
  CHECK(raw_send_option(fd, NBD_OPT_EXPORT_NAME, NULL, 0) == 0, "send");
  uint8_t b[10];
  int r = raw_read(fd, b, sizeof b);
  CHECK(r == -EPIPE, "EXPORT_NAME after extended headers answered (%s)",
        r == 0 ? "an export reply" : strerror(-r));
  close(fd);

  /* Once negotiated, a compact request header is a protocol error (the
   * server reads 32 bytes: the 28 are followed by another request's). */
  fd = connect_extended(sock, false);
  CHECK(raw_send_request(fd, 0, NBD_CMD_FLUSH, 1, 0, 0) == 0, "send");
  CHECK(raw_send_request(fd, 0, NBD_CMD_FLUSH, 2, 0, 0) == 0, "send");
  CHECK(raw_expect_close(fd, 5000) == 0, "compact request after extended headers accepted");
  close(fd);
}

static void test_commands(const char *sock, const char *image) {
  int fd = connect_extended(sock, true);
  const uint32_t len = 1 * MiB;
  uint8_t *buf = malloc(len), *back = malloc(len);
  CHECK(buf && back, "malloc");
  pattern_fill(buf, len, 1 * MiB, 7);
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_WRITE, 1 * MiB, len, buf, len) == 0,
        "WRITE failed");
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN | NBD_CMD_FLAG_FUA, NBD_CMD_WRITE, 3 * MiB,
                       len, buf, len) == 0,
        "FUA WRITE failed");
  read_ext(fd, 1 * MiB, back, len);
  CHECK(memcmp(buf, back, len) == 0, "READ returned other data than written");
  CHECK(simple_request(fd, 0, NBD_CMD_FLUSH, 0, 0, NULL, 0) == 0, "FLUSH failed");
  CHECK(simple_request(fd, 0, NBD_CMD_CACHE, 0, len, NULL, 0) == 0, "CACHE failed");
  CHECK(simple_request(fd, 0, NBD_CMD_TRIM, 3 * MiB, len, NULL, 0) == 0, "TRIM failed");
  CHECK(simple_request(fd, 0, NBD_CMD_WRITE_ZEROES, 1 * MiB + 4096, 4096, NULL, 0) == 0,
        "WRITE_ZEROES failed");
  memset(buf + 4096, 0, 4096);
  read_ext(fd, 1 * MiB, back, len);
  CHECK(memcmp(buf, back, len) == 0, "READ after WRITE_ZEROES differs");
  read_ext(fd, 3 * MiB, back, len);
  CHECK(is_zero(back, len), "trimmed range does not read as zeros");

  /* BLOCK_STATUS: the untouched first MiB is a hole, then data. */
  static struct ext_status st;
  block_status_ext(fd, 0, 0, SIZE, &st);
  CHECK(st.count >= 2, "%" PRIu32 " descriptors for a written image", st.count);
  CHECK(st.len[0] == 1 * MiB && st.flags[0] == (NBD_STATE_HOLE | NBD_STATE_ZERO),
        "first extent %" PRIu64 " flags %" PRIu64, st.len[0], st.flags[0]);
  CHECK(st.flags[1] == 0, "written data reported with flags %" PRIu64, st.flags[1]);
  CHECK(st.total >= SIZE || st.count == 1024, "extents cover %" PRIu64, st.total);
  block_status_ext(fd, NBD_CMD_FLAG_REQ_ONE, 0, SIZE, &st);
  CHECK(st.count == 1 && st.len[0] == 1 * MiB, "REQ_ONE: %" PRIu32 " extents", st.count);

  /* Refusals: each answered, the connection goes on. */
  CHECK(simple_request(fd, 0, NBD_CMD_READ, 0, 32 * MiB + 1, NULL, 0) == NBD_EINVAL,
        "READ above the maximum payload accepted");
  CHECK(simple_request(fd, 0, NBD_CMD_READ, 0, UINT64_C(1) << 32, NULL, 0) == NBD_EINVAL,
        "READ of 4 GiB accepted");
  CHECK(simple_request(fd, 0, NBD_CMD_WRITE, 0, 4096, NULL, 0) == NBD_EINVAL,
        "WRITE without NBD_CMD_FLAG_PAYLOAD_LEN accepted");
  /* The BLOCK_STATUS payload form: effect length, then context ids. */
  uint8_t bs[100] = {0}; /* longer than any valid payload with one context */
  be64_store(bs, 2 * MiB);
  be32_store(bs + 8, CONTEXT_ID);
  block_status_payload(fd, NBD_CMD_FLAG_PAYLOAD_LEN, 0, 12, bs, &st);
  CHECK(st.count >= 2 && st.len[0] == 1 * MiB && st.total == 2 * MiB,
        "payload form: %" PRIu32 " extents over %" PRIu64 " bytes, want the effect length",
        st.count, st.total);
  be32_store(bs + 12, CONTEXT_ID);
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 0, 16, bs, 16) ==
            NBD_EINVAL,
        "BLOCK_STATUS payload with a repeated context id accepted");
  be32_store(bs + 8, CONTEXT_ID + 1);
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 0, 12, bs, 12) ==
            NBD_EINVAL,
        "BLOCK_STATUS payload with an unknown context id accepted");
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 0, 8, bs, 8) ==
            NBD_EINVAL,
        "BLOCK_STATUS payload without a context id accepted");
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 0, sizeof bs, bs,
                       sizeof bs) == NBD_EINVAL,
        "BLOCK_STATUS payload longer than any valid one accepted");
  be32_store(bs + 8, CONTEXT_ID);
  be64_store(bs, SIZE + 1);
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 0, 12, bs, 12) ==
            NBD_EINVAL,
        "BLOCK_STATUS payload form past the end accepted");
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_READ, 0, 8, "12345678", 8) ==
            NBD_EINVAL,
        "READ with a payload accepted");
  /* A WRITE above the maximum payload: refused, its payload consumed. */
  uint8_t *big = calloc(1, 32 * MiB + 512);
  CHECK(big, "calloc");
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_WRITE, 0, 32 * MiB + 512, big,
                       32 * MiB + 512) == NBD_EINVAL,
        "WRITE above the maximum payload accepted");
  free(big);
  CHECK(simple_request(fd, 0, NBD_CMD_TRIM, SIZE - 512, 1024, NULL, 0) == NBD_EINVAL,
        "TRIM past the end accepted");
  CHECK(simple_request(fd, 0, NBD_CMD_FLUSH, 0, 0, NULL, 0) == 0, "FLUSH after refusals failed");

  /* DISC: the server closes. */
  CHECK(raw_send_request_ext(fd, 0, NBD_CMD_DISC, next_cookie++, 0, 0) == 0, "send DISC");
  CHECK(raw_expect_close(fd, 5000) == 0, "DISC: server kept the connection");
  close(fd);

  /* What the extended client wrote, through libnbd's compact headers. */
  struct nbd_handle *h = harness_connect(sock, "");
  NBD_OK(nbd_pread(h, back, len, 1 * MiB, 0));
  CHECK(memcmp(buf, back, len) == 0, "libnbd reads other data than was written");
  harness_close(h);
  free(buf);
  free(back);
  (void)image;
}

/* A 2040 GiB sparse image: one request each covers all of it. */
/* SET_META_CONTEXT for the default export with the given queries; returns
 * the ids granted, in query order (0: not granted). */
static void select_contexts(int fd, const char *const *queries, size_t n, uint32_t *ids) {
  uint8_t data[256];
  size_t len = 8;
  be32_store(data, 0);
  be32_store(data + 4, (uint32_t)n);
  for (size_t i = 0; i < n; i++) {
    size_t ql = strlen(queries[i]);
    CHECK(len + 4 + ql <= sizeof data, "queries too long");
    be32_store(data + len, (uint32_t)ql);
    memcpy(data + len + 4, queries[i], ql);
    len += 4 + ql;
    ids[i] = 0;
  }
  CHECK(raw_send_option(fd, NBD_OPT_SET_META_CONTEXT, data, (uint32_t)len) == 0, "send");
  for (;;) {
    uint32_t opt, type, rlen;
    void *reply = NULL;
    CHECK(raw_recv_option_reply(fd, &opt, &type, &reply, &rlen) == 0, "SET_META_CONTEXT reply");
    if (type == NBD_REP_ACK) {
      free(reply);
      return;
    }
    CHECK(type == NBD_REP_META_CONTEXT && rlen > 4, "SET_META_CONTEXT reply type %#" PRIx32,
          type);
    for (size_t i = 0; i < n; i++)
      if (rlen - 4 == strlen(queries[i]) && memcmp((uint8_t *)reply + 4, queries[i], rlen - 4) == 0)
        ids[i] = be32_load(reply);
    free(reply);
  }
}

/* The payload form's BLOCK_STATUS for the context ids ids (n of them):
 * returns, as bits of the ids, the contexts it answered for, one chunk
 * each, the last one final. */
static uint32_t block_status_contexts(int fd, const uint32_t *ids, size_t n) {
  uint8_t payload[8 + 4 * 4];
  be64_store(payload, 2 * MiB);
  for (size_t i = 0; i < n; i++)
    be32_store(payload + 8 + 4 * i, ids[i]);
  uint64_t cookie = next_cookie++, len = 8 + 4 * n;
  CHECK(raw_send_request_ext(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, cookie, 0,
                             len) == 0, "send");
  CHECK(raw_write(fd, payload, len) == 0, "sending the BLOCK_STATUS payload");
  uint32_t seen = 0;
  for (;;) {
    struct raw_ext_reply rep;
    CHECK(raw_recv_ext_reply(fd, &rep) == 0, "reading BLOCK_STATUS");
    CHECK(rep.cookie == cookie, "BLOCK_STATUS cookie");
    CHECK(rep.type == NBD_REPLY_TYPE_BLOCK_STATUS_EXT, "BLOCK_STATUS reply type %u", rep.type);
    uint32_t id = be32_load(rep.payload);
    CHECK(id < 32 && !(seen & (1u << id)), "context id %" PRIu32 " answered twice", id);
    seen |= 1u << id;
    free(rep.payload);
    if (rep.flags & NBD_REPLY_FLAG_DONE)
      return seen;
  }
}

/* The payload form chooses among every context selected: base:allocation,
 * qemu:allocation-depth or both; with only one selected, the other's id
 * is refused. */
static void test_payload_contexts(const char *sock) {
  static const char *const both[] = {NBD_CONTEXT_BASE_ALLOCATION, "qemu:allocation-depth"};
  uint32_t ids[2];
  int fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  CHECK(raw_send_option(fd, NBD_OPT_EXTENDED_HEADERS, NULL, 0) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_EXTENDED_HEADERS) == NBD_REP_ACK, "refused");
  select_contexts(fd, both, 2, ids);
  CHECK(ids[0] && ids[1] && ids[0] != ids[1], "contexts granted as %" PRIu32 " and %" PRIu32,
        ids[0], ids[1]);
  uint16_t flags;
  CHECK(raw_opt_go(fd, "", NULL, &flags) == NBD_REP_ACK, "GO");
  CHECK(flags & NBD_FLAG_BLOCK_STATUS_PAYLOAD, "payload form not advertised");
  const uint32_t a = 1u << ids[0], d = 1u << ids[1];
  uint32_t got = block_status_contexts(fd, &ids[1], 1);
  CHECK(got == d, "payload naming qemu:allocation-depth answered for %#" PRIx32, got);
  got = block_status_contexts(fd, &ids[0], 1);
  CHECK(got == a, "payload naming base:allocation answered for %#" PRIx32, got);
  uint32_t rev[2] = {ids[1], ids[0]};
  got = block_status_contexts(fd, rev, 2);
  CHECK(got == (a | d), "payload naming both answered for %#" PRIx32, got);
  close(fd);

  /* Only qemu:allocation-depth: still the payload form, but not for id 1. */
  fd = raw_connect(sock);
  raw_handshake(fd, NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES);
  CHECK(raw_send_option(fd, NBD_OPT_EXTENDED_HEADERS, NULL, 0) == 0, "send");
  CHECK(expect_option_reply(fd, NBD_OPT_EXTENDED_HEADERS) == NBD_REP_ACK, "refused");
  select_contexts(fd, &both[1], 1, &ids[1]);
  CHECK(raw_opt_go(fd, "", NULL, &flags) == NBD_REP_ACK, "GO");
  CHECK(flags & NBD_FLAG_BLOCK_STATUS_PAYLOAD,
        "payload form not advertised with qemu:allocation-depth alone");
  got = block_status_contexts(fd, &ids[1], 1);
  CHECK(got == d, "depth alone answered for %#" PRIx32, got);
  uint8_t bs[12];
  be64_store(bs, 2 * MiB);
  be32_store(bs + 8, ids[0]);
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_BLOCK_STATUS, 0, 12, bs, 12) ==
            NBD_EINVAL,
        "payload naming base:allocation accepted though not selected");
  close(fd);
}

static void test_huge(const char *sock) {
  int fd = connect_extended(sock, true);
  const uint64_t at = UINT64_C(2000) << 30;
  uint8_t data[4096];
  pattern_fill(data, sizeof data, at, 3);
  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_WRITE, at, sizeof data, data,
                       sizeof data) == 0,
        "WRITE at 2000 GiB failed");
  static struct ext_status st;
  block_status_ext(fd, 0, 0, HUGE, &st);
  /* A hole longer than 32 bits can say, in one descriptor. */
  CHECK(st.len[0] == at && st.flags[0] == (NBD_STATE_HOLE | NBD_STATE_ZERO),
        "first extent %" PRIu64 " flags %" PRIu64 ", want the 2000 GiB hole", st.len[0],
        st.flags[0]);
  CHECK(st.count >= 2 && st.flags[1] == 0, "the written 4 KiB not reported as data");
  CHECK(st.total == HUGE, "extents cover %" PRIu64 " of %" PRIu64, st.total, HUGE);

  CHECK(simple_request(fd, 0, NBD_CMD_WRITE_ZEROES, 0, HUGE, NULL, 0) == 0,
        "WRITE_ZEROES of 2040 GiB failed");
  block_status_ext(fd, 0, 0, HUGE, &st);
  CHECK(st.count == 1 && st.len[0] == HUGE && (st.flags[0] & NBD_STATE_ZERO),
        "after WRITE_ZEROES: %" PRIu32 " extents, first %" PRIu64 " flags %" PRIu64, st.count,
        st.len[0], st.flags[0]);

  CHECK(simple_request(fd, NBD_CMD_FLAG_PAYLOAD_LEN, NBD_CMD_WRITE, at, sizeof data, data,
                       sizeof data) == 0,
        "WRITE failed");
  CHECK(simple_request(fd, 0, NBD_CMD_TRIM, 0, HUGE, NULL, 0) == 0, "TRIM of 2040 GiB failed");
  block_status_ext(fd, 0, 0, HUGE, &st);
  CHECK(st.count == 1 && st.len[0] == HUGE && st.flags[0] == (NBD_STATE_HOLE | NBD_STATE_ZERO),
        "after TRIM: %" PRIu32 " extents, first %" PRIu64 " flags %" PRIu64, st.count, st.len[0],
        st.flags[0]);
  CHECK(simple_request(fd, 0, NBD_CMD_BLOCK_STATUS, 0, HUGE + 1, NULL, 0) == NBD_EINVAL,
        "BLOCK_STATUS past the end accepted");
  CHECK(simple_request(fd, 0, NBD_CMD_FLUSH, 0, 0, NULL, 0) == 0, "FLUSH failed");
  close(fd);
}

int main(void) {
  harness_init("test-extended-headers", 120);
  char sock[4096], sock_huge[4096], image[4096];
  XSNPRINTF(image, sizeof image, "%s", harness_qemu_image("disk.vhd", "dynamic", SIZE));
  XSNPRINTF(sock, sizeof sock, "%s", harness_path("sock"));
  harness_start_server_image(sock, image, false);
  test_negotiation(sock);
  test_commands(sock, image);
  test_payload_contexts(sock);

  const char *huge = harness_vhdimg_create("huge.vhd", "dynamic", NULL, HUGE);
  XSNPRINTF(sock_huge, sizeof sock_huge, "%s", harness_path("sock-huge"));
  harness_start_server_image(sock_huge, huge, false);
  test_huge(sock_huge);
  CHECK(harness_check_image(image) == 0, "vhdimg check: the image is damaged");
  return harness_finish();
}
