/* codec.h: NBD messages as bytes <-> structs.
 *
 * No sockets, no event loop, no allocation: decoders take a byte buffer and its
 * length (so each one can be fuzzed on its own), encoders write into a caller's
 * buffer and return the number of bytes written.
 *
 * Return conventions:
 *   - decoders return 0, or a negative errno: -EPROTO for a message the
 *     connection cannot survive (bad magic, unknown client flag), -EINVAL for a
 *     malformed option payload (answer NBD_REP_ERR_INVALID), -E2BIG for a valid
 *     but too large one (NBD_REP_ERR_TOO_BIG).  `why`, when not NULL, receives
 *     a static human-readable reason (suitable for an error reply).
 *   - encoders with a capacity return the size written or -ENOBUFS.
 */
#ifndef VHDNBD_NBD_CODEC_H
#define VHDNBD_NBD_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "nbd-proto.h"

/* ---- handshake ---- */

/* Writes the 18-byte fixed newstyle greeting. */
void nbd_encode_greeting(uint8_t out[NBD_GREETING_SIZE], uint16_t handshake_flags);

/* Decodes the 4 client flags; -EPROTO when a bit is unknown or was not offered
 * in handshake_flags (the server MUST then drop the connection). */
int nbd_decode_client_flags(const uint8_t in[NBD_CLIENT_FLAGS_SIZE], uint16_t handshake_flags,
                            uint32_t *client_flags, const char **why);

struct nbd_option_hdr {
  uint32_t option;
  uint32_t length; /* the client's claim: never allocate by it unchecked */
};
/* -EPROTO on a wrong magic. */
int nbd_decode_option_hdr(const uint8_t in[NBD_OPTION_HDR_SIZE], struct nbd_option_hdr *hdr,
                          const char **why);

/* NBD_OPT_INFO / NBD_OPT_GO payload.  name points into the caller's buffer and
 * is NOT NUL-terminated. */
#define NBD_INFO_WANT_NAME (1u << NBD_INFO_NAME)
#define NBD_INFO_WANT_DESCRIPTION (1u << NBD_INFO_DESCRIPTION)
#define NBD_INFO_WANT_BLOCK_SIZE (1u << NBD_INFO_BLOCK_SIZE)
struct nbd_info_request {
  const char *name;
  uint32_t name_len;
  uint16_t n_requests;
  unsigned want; /* NBD_INFO_WANT_* bits; unknown info types are ignored */
};
int nbd_parse_info_request(const uint8_t *data, size_t len, struct nbd_info_request *out,
                           const char **why);

/* NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT payload.  The whole
 * payload is validated before returning (every query inside the data, each
 * at most NBD_MAX_STRING bytes, no NUL), so replies can be produced while
 * iterating afterwards with nbd_meta_query_next. */
struct nbd_meta_request {
  const char *name;
  uint32_t name_len;
  uint32_t n_queries;
  const uint8_t *queries; /* n_queries x (u32 length, bytes) */
  size_t queries_len;
};
int nbd_parse_meta_request(const uint8_t *data, size_t len, struct nbd_meta_request *out,
                           const char **why);
/* Iterates over a validated request: *pos starts at 0; returns false at the end. */
bool nbd_meta_query_next(const struct nbd_meta_request *req, size_t *pos, const char **query,
                         uint32_t *query_len);

/* Validates a string field: at most NBD_MAX_STRING bytes and no NUL inside. */
int nbd_check_string(const char *s, size_t len, const char **why);

/* ---- option replies ---- */

/* Size of an option reply carrying `payload` bytes of data. */
#define NBD_OPTION_REPLY_SIZE(payload) (NBD_OPTION_REPLY_HDR_SIZE + (payload))
/* Large enough for any single option reply this codec encodes. */
#define NBD_OPTION_REPLY_MAX NBD_OPTION_REPLY_SIZE(8 + 2 * NBD_MAX_STRING)

/* The 20-byte header only (the caller appends `length` bytes). */
void nbd_encode_option_reply_hdr(uint8_t out[NBD_OPTION_REPLY_HDR_SIZE], uint32_t option,
                                 uint32_t reply_type, uint32_t length);
ssize_t nbd_encode_rep_ack(uint8_t *out, size_t cap, uint32_t option);
/* NBD_REP_SERVER: name length, name, then the description (may be empty). */
ssize_t nbd_encode_rep_server(uint8_t *out, size_t cap, uint32_t option, const char *name,
                              size_t name_len, const char *desc, size_t desc_len);
ssize_t nbd_encode_rep_info_export(uint8_t *out, size_t cap, uint32_t option, uint64_t size,
                                   uint16_t tflags);
ssize_t nbd_encode_rep_info_name(uint8_t *out, size_t cap, uint32_t option, const char *name,
                                 size_t name_len);
ssize_t nbd_encode_rep_info_description(uint8_t *out, size_t cap, uint32_t option,
                                        const char *desc, size_t desc_len);
ssize_t nbd_encode_rep_info_block_size(uint8_t *out, size_t cap, uint32_t option,
                                       uint32_t minimum, uint32_t preferred, uint32_t maximum);
ssize_t nbd_encode_rep_meta_context(uint8_t *out, size_t cap, uint32_t option,
                                    uint32_t context_id, const char *name, size_t name_len);
/* An error reply (reply_type has bit 31 set); msg may be NULL. The message
 * is cut to NBD_MAX_STRING bytes. */
ssize_t nbd_encode_rep_error(uint8_t *out, size_t cap, uint32_t option, uint32_t reply_type,
                             const char *msg);

/* The reply to NBD_OPT_EXPORT_NAME: 10 bytes with NO_ZEROES, else 134. */
size_t nbd_encode_export_name_reply(uint8_t out[NBD_EXPORT_NAME_REPLY_SIZE], uint64_t size,
                                    uint16_t tflags, bool no_zeroes);

/* ---- transmission ---- */

struct nbd_request {
  uint16_t flags;
  uint16_t type;
  uint64_t cookie;
  uint64_t offset;
  uint64_t length; /* 32 bits on the wire unless extended headers were negotiated */
};
/* -EPROTO on a wrong magic (the server closes).  The compact header is
 * NBD_REQUEST_SIZE bytes, the extended one NBD_EXTENDED_REQUEST_SIZE; each
 * refuses the other's magic, since only one of them was negotiated. */
int nbd_decode_request(const uint8_t in[NBD_REQUEST_SIZE], struct nbd_request *req,
                       const char **why);
int nbd_decode_request_ext(const uint8_t in[NBD_EXTENDED_REQUEST_SIZE], struct nbd_request *req,
                           const char **why);
static inline size_t nbd_request_size(bool extended) {
  return extended ? NBD_EXTENDED_REQUEST_SIZE : NBD_REQUEST_SIZE;
}

/* What a connection negotiated, for nbd_check_request. */
struct nbd_request_limits {
  uint64_t export_size;
  uint16_t tflags;          /* transmission flags advertised */
  bool structured;          /* structured replies (implied by extended headers) */
  bool extended;            /* NBD_OPT_EXTENDED_HEADERS negotiated */
  bool meta_allocation;     /* base:allocation selected */
  bool meta_depth;          /* qemu:allocation-depth selected */
  uint32_t max_payload;     /* READ/WRITE larger than this are refused */
};
/* Validates a decoded request against the negotiated state.  Returns 0 or
 * the NBD error to answer with (NBD_EINVAL, NBD_EPERM, NBD_ENOSPC...), with a
 * reason in *why.  Ranges are checked without overflow. */
uint32_t nbd_check_request(const struct nbd_request *req, const struct nbd_request_limits *lim,
                           const char **why);
/* Whether `length` bytes of payload follow the request's header on the wire
 * (whatever the server then answers): a WRITE, or with extended headers any
 * command carrying NBD_CMD_FLAG_PAYLOAD_LEN. */
bool nbd_request_has_payload(const struct nbd_request *req, bool extended);
const char *nbd_cmd_name(uint16_t type);

/* The BLOCK_STATUS payload form (extended headers, NBD_CMD_FLAG_PAYLOAD_LEN,
 * advertised with NBD_FLAG_BLOCK_STATUS_PAYLOAD): a 64-bit effect length,
 * then the ids of the contexts wanted.  A server with a few contexts needs
 * no more than a few ids: a longer payload is consumed and refused unread. */
#define NBD_BLOCK_STATUS_PAYLOAD_MAX (8u + 4u * 16)
/* Context ids as bits of a mask: bit id (ids below 32). */
#define NBD_CONTEXT_BIT(id) (UINT32_C(1) << (id))
/* -EINVAL (with *why) unless len is 8 + 4n with n >= 1, and every id is one
 * of the contexts selected (bits of the mask `selected`), none repeated
 * (the spec refuses unknown and duplicate ids).  On success *chosen holds
 * the ids named, as bits. */
int nbd_parse_block_status_payload(const uint8_t *data, size_t len, uint32_t selected,
                                   uint64_t *effect_length, uint32_t *chosen, const char **why);

void nbd_encode_simple_reply(uint8_t out[NBD_SIMPLE_REPLY_SIZE], uint64_t cookie,
                             uint32_t error);

/* The request a chunk answers, and its header's form: 20 bytes (structured
 * replies) or 32 (extended headers, which echo the request's offset and
 * carry a 64-bit length).  The sizes below are the larger form's; encoders
 * return the bytes they wrote. */
struct nbd_reply_to {
  uint64_t cookie;
  uint64_t offset;
  bool extended;
};
#define NBD_REPLY_HDR_MAX NBD_EXTENDED_REPLY_SIZE
static inline size_t nbd_reply_hdr_size(const struct nbd_reply_to *to) {
  return to->extended ? NBD_EXTENDED_REPLY_SIZE : NBD_CHUNK_HDR_SIZE;
}
size_t nbd_encode_chunk_hdr(uint8_t out[NBD_REPLY_HDR_MAX], const struct nbd_reply_to *to,
                            uint16_t flags, uint16_t type, uint64_t length);

/* OFFSET_DATA: header + offset; the data_len bytes follow separately. */
#define NBD_CHUNK_OFFSET_DATA_PREFIX (NBD_REPLY_HDR_MAX + 8u)
size_t nbd_encode_chunk_offset_data(uint8_t out[NBD_CHUNK_OFFSET_DATA_PREFIX],
                                    const struct nbd_reply_to *to, uint16_t flags,
                                    uint64_t offset, uint32_t data_len);
#define NBD_CHUNK_OFFSET_HOLE_SIZE (NBD_REPLY_HDR_MAX + 12u)
size_t nbd_encode_chunk_offset_hole(uint8_t out[NBD_CHUNK_OFFSET_HOLE_SIZE],
                                    const struct nbd_reply_to *to, uint16_t flags,
                                    uint64_t offset, uint32_t hole_len);
#define NBD_CHUNK_NONE_SIZE NBD_REPLY_HDR_MAX
size_t nbd_encode_chunk_none(uint8_t out[NBD_CHUNK_NONE_SIZE], const struct nbd_reply_to *to);

struct nbd_extent {
  uint64_t length; /* over 32 bits only with extended headers */
  uint32_t flags;  /* NBD_STATE_* */
};
/* BLOCK_STATUS (compact descriptors, lengths must fit 32 bits: -EOVERFLOW
 * otherwise) or, with extended headers, BLOCK_STATUS_EXT. */
#define NBD_CHUNK_BLOCK_STATUS_SIZE(n) (NBD_REPLY_HDR_MAX + 8u + 16u * (n))
ssize_t nbd_encode_chunk_block_status(uint8_t *out, size_t cap, const struct nbd_reply_to *to,
                                      uint16_t flags, uint32_t context_id,
                                      const struct nbd_extent *ext, size_t n);
/* ERROR (has_offset false) or ERROR_OFFSET chunk; msg may be NULL, it is cut
 * to NBD_MAX_STRING bytes.  error must be non-zero. */
#define NBD_CHUNK_ERROR_MAX (NBD_REPLY_HDR_MAX + 6u + NBD_MAX_STRING + 8u)
ssize_t nbd_encode_chunk_error(uint8_t *out, size_t cap, const struct nbd_reply_to *to,
                               uint16_t flags, uint32_t error, const char *msg,
                               bool has_offset, uint64_t offset);

/* Host errno (positive or negative) -> NBD error; unknown values become NBD_EIO. */
uint32_t nbd_errno_to_nbd(int err);

#endif
