/* fuzz-nbd-codec.c: every NBD codec decoder that takes a client's bytes
 * (codec.h), fed the way a server reads them, plus the encoders that echo
 * client-chosen data back.
 *
 * Input layout (the seeds in corpus-nbd follow it):
 *   byte 0       handshake flags the server offered (low 2 bits)
 *   bytes 1..4   the client flags
 *   then records, each starting with a tag byte (even: option, odd: request):
 *     option:  16-byte option header, then min(length, rest) payload bytes
 *     request: 2 bytes transmission flags, 1 byte of negotiated booleans,
 *              8 bytes export size, 4 bytes maximum payload (the limits),
 *              then the 28-byte request; a WRITE's payload follows.
 * Decoders must stay inside their buffer (ASan), give a reason with every
 * refusal, and what they accept must satisfy the rules the server relies on
 * (FUZZ_ASSERT). */
#include "config.h"

#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "codec.h"
#include "endian-be.h"
#include "fuzz-common.h"

struct cursor {
  const uint8_t *p;
  size_t left;
};

static const uint8_t *take(struct cursor *c, size_t n) {
  if (c->left < n)
    return NULL;
  const uint8_t *r = c->p;
  c->p += n;
  c->left -= n;
  return r;
}

static void assert_refusal(int r, const char *why, const char *what) {
  FUZZ_ASSERT(r == -EPROTO || r == -EINVAL || r == -E2BIG, "%s returned %d", what, r);
  FUZZ_ASSERT(why && why[0], "%s refused the message without a reason", what);
}

static bool in_buffer(const void *p, size_t n, const uint8_t *buf, size_t len) {
  const uint8_t *q = p;
  return q >= buf && q <= buf + len && n <= (size_t)(buf + len - q);
}

/* Replies built from client-chosen strings must fit what the codec promises. */
static void echo_string(uint32_t option, const char *s, size_t len) {
  static uint8_t out[NBD_OPTION_REPLY_MAX];
  ssize_t n = nbd_encode_rep_server(out, sizeof out, option, s, len, s, len);
  FUZZ_ASSERT(n == -ENOBUFS || (n >= NBD_OPTION_REPLY_HDR_SIZE && (size_t)n <= sizeof out),
              "nbd_encode_rep_server returned %zd for %zu-byte strings", n, len);
  if (n > 0)
    FUZZ_ASSERT(be32_load(out + 16) == (size_t)n - NBD_OPTION_REPLY_HDR_SIZE,
                "NBD_REP_SERVER length field %u for a %zd-byte reply", be32_load(out + 16), n);
  n = nbd_encode_rep_info_name(out, sizeof out, option, s, len);
  FUZZ_ASSERT(n == -ENOBUFS || (n > 0 && (size_t)n <= sizeof out), "info name returned %zd", n);
  n = nbd_encode_rep_info_description(out, sizeof out, option, s, len);
  FUZZ_ASSERT(n == -ENOBUFS || (n > 0 && (size_t)n <= sizeof out), "info desc returned %zd", n);
  n = nbd_encode_rep_meta_context(out, sizeof out, option, 1, s, len);
  FUZZ_ASSERT(n == -ENOBUFS || (n > 0 && (size_t)n <= sizeof out), "meta context returned %zd",
              n);
  /* A too-small buffer is refused, never overrun. */
  n = nbd_encode_rep_server(out, NBD_OPTION_REPLY_HDR_SIZE + 3, option, s, len, "", 0);
  FUZZ_ASSERT(n == -ENOBUFS, "NBD_REP_SERVER into a 23-byte buffer returned %zd", n);
}

static void echo_error(uint32_t option, const uint8_t *payload, size_t len) {
  static char msg[2 * NBD_MAX_STRING + 1];
  size_t m = len < sizeof msg - 1 ? len : sizeof msg - 1;
  memcpy(msg, payload, m);
  msg[m] = '\0';
  static uint8_t out[NBD_OPTION_REPLY_MAX];
  ssize_t n = nbd_encode_rep_error(out, sizeof out, option, NBD_REP_ERR_INVALID, msg);
  FUZZ_ASSERT(n >= NBD_OPTION_REPLY_HDR_SIZE &&
                  (size_t)n <= NBD_OPTION_REPLY_HDR_SIZE + NBD_MAX_STRING,
              "error reply of %zd bytes for a %zu-byte message", n, strlen(msg));
  static uint8_t chunk[NBD_CHUNK_ERROR_MAX];
  struct nbd_reply_to to = {.cookie = 7, .offset = len, .extended = len & 2};
  n = nbd_encode_chunk_error(chunk, sizeof chunk, &to, NBD_REPLY_FLAG_DONE, NBD_EINVAL, msg,
                             len & 1, len);
  FUZZ_ASSERT(n > 0 && (size_t)n <= sizeof chunk, "error chunk returned %zd", n);
}

static void handle_option(struct cursor *c) {
  const uint8_t *hdr_bytes = take(c, NBD_OPTION_HDR_SIZE);
  if (!hdr_bytes)
    return;
  struct nbd_option_hdr hdr;
  const char *why = NULL;
  int r = nbd_decode_option_hdr(hdr_bytes, &hdr, &why);
  if (r < 0) {
    assert_refusal(r, why, "nbd_decode_option_hdr");
    return;
  }
  size_t len = hdr.length < c->left ? hdr.length : c->left;
  const uint8_t *data = take(c, len);

  /* Whatever the option says, every payload parser must cope with it. */
  why = NULL;
  r = nbd_check_string((const char *)data, len, &why);
  if (r < 0)
    assert_refusal(r, why, "nbd_check_string");
  else
    echo_string(hdr.option, (const char *)data, len);

  struct nbd_info_request info;
  why = NULL;
  r = nbd_parse_info_request(data, len, &info, &why);
  if (r < 0) {
    assert_refusal(r, why, "nbd_parse_info_request");
  } else {
    FUZZ_ASSERT(in_buffer(info.name, info.name_len, data, len), "INFO name outside the data");
    FUZZ_ASSERT((size_t)info.name_len + 6 + 2 * (size_t)info.n_requests == len,
                "INFO accepted: name %u + 6 + 2 * %u requests != %zu bytes", info.name_len,
                info.n_requests, len);
    FUZZ_ASSERT(!(info.want & ~(unsigned)(NBD_INFO_WANT_NAME | NBD_INFO_WANT_DESCRIPTION |
                                          NBD_INFO_WANT_BLOCK_SIZE)),
                "INFO want bits 0x%x", info.want);
    FUZZ_ASSERT(nbd_check_string(info.name, info.name_len, NULL) == 0,
                "INFO accepted a name that nbd_check_string refuses");
    echo_string(hdr.option, info.name, info.name_len);
  }

  struct nbd_meta_request meta;
  why = NULL;
  r = nbd_parse_meta_request(data, len, &meta, &why);
  if (r < 0) {
    assert_refusal(r, why, "nbd_parse_meta_request");
  } else {
    FUZZ_ASSERT(in_buffer(meta.name, meta.name_len, data, len), "META name outside the data");
    FUZZ_ASSERT(in_buffer(meta.queries, meta.queries_len, data, len),
                "META queries outside the data");
    size_t pos = 0;
    uint32_t count = 0;
    const char *q;
    uint32_t qlen;
    while (nbd_meta_query_next(&meta, &pos, &q, &qlen)) {
      FUZZ_ASSERT(count < meta.n_queries, "more queries iterated than the %u counted",
                  meta.n_queries);
      FUZZ_ASSERT(in_buffer(q, qlen, meta.queries, meta.queries_len), "query outside the data");
      FUZZ_ASSERT(nbd_check_string(q, qlen, NULL) == 0, "an accepted query is not valid");
      echo_string(hdr.option, q, qlen);
      count++;
    }
    FUZZ_ASSERT(count == meta.n_queries && pos == meta.queries_len,
                "iterated %u queries up to byte %zu; parsed %u in %zu bytes", count, pos,
                meta.n_queries, meta.queries_len);
  }
  echo_error(hdr.option, data ? data : (const uint8_t *)"", len);

  static uint8_t reply[NBD_EXPORT_NAME_REPLY_SIZE];
  size_t n = nbd_encode_export_name_reply(reply, hdr.length, (uint16_t)hdr.option,
                                          hdr.option & 1);
  FUZZ_ASSERT(n == 10 || n == NBD_EXPORT_NAME_REPLY_SIZE, "export name reply of %zu bytes", n);
}

static bool known_errno_reply(uint32_t e) {
  switch (e) {
  case NBD_EPERM:
  case NBD_EIO:
  case NBD_ENOMEM:
  case NBD_EINVAL:
  case NBD_ENOSPC:
  case NBD_EOVERFLOW:
  case NBD_ENOTSUP:
  case NBD_ESHUTDOWN:
    return true;
  default:
    return false;
  }
}

static void handle_request(struct cursor *c) {
  const uint8_t *l = take(c, 15);
  /* Bit 2 of the third byte: extended headers, and the 32-byte header. */
  bool extended = l && (l[2] & 4);
  const uint8_t *raw = l ? take(c, nbd_request_size(extended)) : NULL;
  if (!raw)
    return;
  struct nbd_request_limits lim = {
      .tflags = be16_load(l),
      .structured = (l[2] & 1) || extended,
      .extended = extended,
      .meta_allocation = l[2] & 2,
      .export_size = be64_load(l + 3),
      .max_payload = be32_load(l + 11),
  };
  struct nbd_request req;
  const char *why = NULL;
  int r = extended ? nbd_decode_request_ext(raw, &req, &why) : nbd_decode_request(raw, &req, &why);
  if (r < 0) {
    assert_refusal(r, why, "nbd_decode_request");
    return;
  }
  FUZZ_ASSERT(nbd_cmd_name(req.type) != NULL, "no name for command %u", req.type);
  why = NULL;
  uint32_t e = nbd_check_request(&req, &lim, &why);
  if (e) {
    FUZZ_ASSERT(known_errno_reply(e), "nbd_check_request answered NBD error %u", e);
    FUZZ_ASSERT(why && why[0], "nbd_check_request refused %s without a reason",
                nbd_cmd_name(req.type));
  } else {
    bool ranged = req.type != NBD_CMD_FLUSH && req.type != NBD_CMD_DISC;
    FUZZ_ASSERT(req.type <= NBD_CMD_BLOCK_STATUS, "accepted unknown command %u", req.type);
    FUZZ_ASSERT(!(req.flags & ~(unsigned)(NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE |
                                          NBD_CMD_FLAG_DF | NBD_CMD_FLAG_REQ_ONE |
                                          NBD_CMD_FLAG_FAST_ZERO | NBD_CMD_FLAG_PAYLOAD_LEN)),
                "accepted command flags 0x%x", req.flags);
    /* PAYLOAD_LEN: only with extended headers, only and always on WRITE. */
    if (extended && req.type == NBD_CMD_WRITE)
      FUZZ_ASSERT(req.flags & NBD_CMD_FLAG_PAYLOAD_LEN, "accepted an extended WRITE without "
                  "NBD_CMD_FLAG_PAYLOAD_LEN");
    else
      FUZZ_ASSERT(!(req.flags & NBD_CMD_FLAG_PAYLOAD_LEN), "accepted PAYLOAD_LEN on %s%s",
                  nbd_cmd_name(req.type), extended ? "" : " without extended headers");
    if (ranged)
      FUZZ_ASSERT(req.length <= lim.export_size && req.offset <= lim.export_size - req.length,
                  "accepted %s at %llu+%llu on a %llu-byte export", nbd_cmd_name(req.type),
                  (unsigned long long)req.offset, (unsigned long long)req.length,
                  (unsigned long long)lim.export_size);
    else
      FUZZ_ASSERT(req.offset == 0 && req.length == 0, "accepted %s with a range",
                  nbd_cmd_name(req.type));
    if (req.type == NBD_CMD_READ || req.type == NBD_CMD_WRITE)
      FUZZ_ASSERT(req.length <= lim.max_payload, "accepted a %llu-byte %s over the %u limit",
                  (unsigned long long)req.length, nbd_cmd_name(req.type), lim.max_payload);
    bool writes = req.type == NBD_CMD_WRITE || req.type == NBD_CMD_TRIM ||
                  req.type == NBD_CMD_WRITE_ZEROES;
    FUZZ_ASSERT(!writes || !(lim.tflags & NBD_FLAG_READ_ONLY), "accepted %s on a read-only export",
                nbd_cmd_name(req.type));
    if (req.type == NBD_CMD_BLOCK_STATUS)
      FUZZ_ASSERT(lim.structured && lim.meta_allocation,
                  "accepted BLOCK_STATUS without a meta context");
    if (req.flags & NBD_CMD_FLAG_DF)
      FUZZ_ASSERT(req.type == NBD_CMD_READ && lim.structured, "accepted DF on %s",
                  nbd_cmd_name(req.type));
  }
  /* The server reads a payload whatever it answers. */
  bool payload = nbd_request_has_payload(&req, extended);
  FUZZ_ASSERT(payload == (extended ? (req.flags & NBD_CMD_FLAG_PAYLOAD_LEN) != 0
                                   : req.type == NBD_CMD_WRITE),
              "payload presence wrong for %s flags 0x%x", nbd_cmd_name(req.type), req.flags);
  if (payload) {
    size_t plen = req.length < c->left ? req.length : c->left;
    const uint8_t *p = take(c, plen);
    /* The BLOCK_STATUS payload form selects contexts 1 and 2, each once. */
    uint64_t effect = 0;
    uint32_t chosen = 0;
    why = NULL;
    if (p && nbd_parse_block_status_payload(p, plen, NBD_CONTEXT_BIT(1) | NBD_CONTEXT_BIT(2),
                                            &effect, &chosen, &why) == 0)
      FUZZ_ASSERT((plen == 12 || plen == 16) && effect == be64_load(p) &&
                      chosen == (NBD_CONTEXT_BIT(be32_load(p + 8)) |
                                 NBD_CONTEXT_BIT(be32_load(p + plen - 4))) &&
                      (plen == 12 || be32_load(p + 8) != be32_load(p + 12)),
                  "accepted a %zu-byte BLOCK_STATUS payload", plen);
    else if (p)
      FUZZ_ASSERT(why && why[0], "BLOCK_STATUS payload refused without a reason");
  }

  /* Replies echo the client's cookie and ranges. */
  uint8_t simple[NBD_SIMPLE_REPLY_SIZE];
  nbd_encode_simple_reply(simple, req.cookie, e);
  FUZZ_ASSERT(be64_load(simple + 8) == req.cookie, "simple reply lost the cookie");
  struct nbd_reply_to to = {.cookie = req.cookie, .offset = req.offset, .extended = extended};
  size_t hdr = nbd_reply_hdr_size(&to);
  uint8_t hole[NBD_CHUNK_OFFSET_HOLE_SIZE];
  FUZZ_ASSERT(nbd_encode_chunk_offset_hole(hole, &to, NBD_REPLY_FLAG_DONE, req.offset,
                                           (uint32_t)req.length) == hdr + 12,
              "hole chunk size");
  FUZZ_ASSERT(be64_load(hole + 8) == req.cookie, "hole chunk lost the cookie");
  if (extended)
    FUZZ_ASSERT(be64_load(hole + 16) == req.offset, "extended reply lost the request offset");
  uint8_t data[NBD_CHUNK_OFFSET_DATA_PREFIX];
  FUZZ_ASSERT(nbd_encode_chunk_offset_data(data, &to, 0, req.offset, (uint32_t)req.length) ==
                  hdr + 8,
              "data chunk size");
  uint8_t none[NBD_CHUNK_NONE_SIZE];
  FUZZ_ASSERT(nbd_encode_chunk_none(none, &to) == hdr, "none chunk size");
  struct nbd_extent ext[4] = {
      {req.length, 0}, {req.offset, NBD_STATE_HOLE}, {1, 3}, {req.flags, 0}};
  size_t next = (size_t)(req.cookie % 5);
  static uint8_t bs[NBD_CHUNK_BLOCK_STATUS_SIZE(4)];
  size_t cap = NBD_CHUNK_BLOCK_STATUS_SIZE(4) - (size_t)(req.cookie >> 58);
  ssize_t n = nbd_encode_chunk_block_status(bs, cap, &to, NBD_REPLY_FLAG_DONE, 1, ext, next);
  size_t want = hdr + (extended ? 8 + 16 * next : 4 + 8 * next);
  bool zero_len = false, too_long = false;
  for (size_t i = 0; i < next; i++) {
    zero_len |= ext[i].length == 0;
    too_long |= !extended && ext[i].length > UINT32_MAX;
  }
  if (next == 0)
    FUZZ_ASSERT(n == -EINVAL, "block status chunk without extents returned %zd", n);
  else if (cap < want)
    FUZZ_ASSERT(n == -ENOBUFS, "block status chunk of %zu bytes into %zu returned %zd", want,
                cap, n);
  else if (zero_len || too_long)
    /* With both faults, either refusal may come first. */
    FUZZ_ASSERT((zero_len && n == -EINVAL) || (too_long && n == -EOVERFLOW),
                "block status chunk with an empty or (compact) 64-bit extent returned %zd", n);
  else
    FUZZ_ASSERT(n == (ssize_t)want, "block status chunk of %zd bytes for %zu extents, want %zu",
                n, next, want);
  /* Any errno, either sign (INT_MIN is no errno and has no positive). */
  int host = (int)(req.cookie % 4096) * (req.cookie & (UINT64_C(1) << 63) ? -1 : 1);
  uint32_t mapped = nbd_errno_to_nbd(host);
  FUZZ_ASSERT(host == 0 ? mapped == 0 : known_errno_reply(mapped),
              "errno %d maps to NBD error %u", host, mapped);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  struct cursor c = {data, size};
  const uint8_t *hs = take(&c, 1);
  const uint8_t *cf = hs ? take(&c, NBD_CLIENT_FLAGS_SIZE) : NULL;
  if (!cf)
    return 0;
  uint16_t offered = hs[0] & (NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
  uint8_t greeting[NBD_GREETING_SIZE];
  nbd_encode_greeting(greeting, offered);
  uint32_t cflags = 0;
  const char *why = NULL;
  int r = nbd_decode_client_flags(cf, offered, &cflags, &why);
  if (r < 0)
    assert_refusal(r, why, "nbd_decode_client_flags");
  else
    FUZZ_ASSERT(!(cflags & ~(uint32_t)offered), "accepted client flags 0x%x for offer 0x%x",
                cflags, offered);

  /* Bounded: every record consumes at least its tag byte. */
  const uint8_t *tag;
  while ((tag = take(&c, 1))) {
    if (*tag & 1)
      handle_request(&c);
    else
      handle_option(&c);
  }
  return 0;
}
