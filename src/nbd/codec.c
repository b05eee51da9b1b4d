#include "config.h"

#include "codec.h"

#include <errno.h>
#include <limits.h>
#include <string.h>

#include "endian-be.h"

#define WHY(msg) \
  do {           \
    if (why)     \
      *why = (msg); \
  } while (0)

/* ---- handshake ---- */

void nbd_encode_greeting(uint8_t out[NBD_GREETING_SIZE], uint16_t handshake_flags) {
  be64_store(out, NBD_MAGIC);
  be64_store(out + 8, NBD_NEW_VERSION);
  be16_store(out + 16, handshake_flags);
}

int nbd_decode_client_flags(const uint8_t in[NBD_CLIENT_FLAGS_SIZE], uint16_t handshake_flags,
                            uint32_t *client_flags, const char **why) {
  uint32_t f = be32_load(in);
  /* The client flag bits mirror the handshake bits: a client may only echo
   * what the server offered. */
  uint32_t allowed = 0;
  if (handshake_flags & NBD_FLAG_FIXED_NEWSTYLE)
    allowed |= NBD_FLAG_C_FIXED_NEWSTYLE;
  if (handshake_flags & NBD_FLAG_NO_ZEROES)
    allowed |= NBD_FLAG_C_NO_ZEROES;
  if (f & ~allowed) {
    WHY("client flags contain unknown or unoffered bits");
    return -EPROTO;
  }
  *client_flags = f;
  return 0;
}

int nbd_decode_option_hdr(const uint8_t in[NBD_OPTION_HDR_SIZE], struct nbd_option_hdr *hdr,
                          const char **why) {
  if (be64_load(in) != NBD_NEW_VERSION) {
    WHY("option does not start with IHAVEOPT");
    return -EPROTO;
  }
  hdr->option = be32_load(in + 8);
  hdr->length = be32_load(in + 12);
  return 0;
}

int nbd_check_string(const char *s, size_t len, const char **why) {
  if (len > NBD_MAX_STRING) {
    WHY("string longer than 4096 bytes");
    return -EINVAL;
  }
  if (len && memchr(s, '\0', len)) {
    WHY("string contains a NUL byte");
    return -EINVAL;
  }
  return 0;
}

int nbd_parse_info_request(const uint8_t *data, size_t len, struct nbd_info_request *out,
                           const char **why) {
  memset(out, 0, sizeof *out);
  /* name length u32 + name + count u16 + types */
  if (len < 6) {
    WHY("INFO/GO data shorter than 6 bytes");
    return -EINVAL;
  }
  uint32_t name_len = be32_load(data);
  if (name_len > len - 6) {
    WHY("INFO/GO export name length runs past the option data");
    return -EINVAL;
  }
  const char *name = (const char *)data + 4;
  int r = nbd_check_string(name, name_len, why);
  if (r < 0)
    return r;
  const uint8_t *p = data + 4 + name_len;
  uint16_t n = be16_load(p);
  p += 2;
  size_t rest = len - 6 - name_len;
  if ((size_t)n * 2 != rest) {
    WHY("INFO/GO information request count does not match the option length");
    return -EINVAL;
  }
  out->name = name;
  out->name_len = name_len;
  out->n_requests = n;
  for (uint16_t i = 0; i < n; i++) {
    uint16_t t = be16_load(p + 2 * (size_t)i);
    if (t == NBD_INFO_NAME || t == NBD_INFO_DESCRIPTION || t == NBD_INFO_BLOCK_SIZE)
      out->want |= 1u << t;
    /* NBD_INFO_EXPORT is always sent; unknown types are ignored (spec). */
  }
  return 0;
}

int nbd_parse_meta_request(const uint8_t *data, size_t len, struct nbd_meta_request *out,
                           const char **why) {
  memset(out, 0, sizeof *out);
  if (len < 8) {
    WHY("meta context data shorter than 8 bytes");
    return -EINVAL;
  }
  uint32_t name_len = be32_load(data);
  if (name_len > len - 8) {
    WHY("meta context export name length runs past the option data");
    return -EINVAL;
  }
  const char *name = (const char *)data + 4;
  int r = nbd_check_string(name, name_len, why);
  if (r < 0)
    return r;
  const uint8_t *p = data + 4 + name_len;
  uint32_t n = be32_load(p);
  p += 4;
  size_t rest = len - 8 - name_len;
  /* Every query needs at least its 4-byte length: this bounds n before the loop. */
  if (n > rest / 4) {
    WHY("meta context query count runs past the option data");
    return -EINVAL;
  }
  size_t pos = 0;
  for (uint32_t i = 0; i < n; i++) {
    if (rest - pos < 4) {
      WHY("meta context query runs past the option data");
      return -EINVAL;
    }
    uint32_t qlen = be32_load(p + pos);
    pos += 4;
    if (qlen > rest - pos) {
      WHY("meta context query runs past the option data");
      return -EINVAL;
    }
    r = nbd_check_string((const char *)p + pos, qlen, why);
    if (r < 0)
      return r;
    pos += qlen;
  }
  if (pos != rest) {
    WHY("meta context data has trailing bytes after the last query");
    return -EINVAL;
  }
  out->name = name;
  out->name_len = name_len;
  out->n_queries = n;
  out->queries = p;
  out->queries_len = rest;
  return 0;
}

bool nbd_meta_query_next(const struct nbd_meta_request *req, size_t *pos, const char **query,
                         uint32_t *query_len) {
  if (*pos + 4 > req->queries_len)
    return false;
  uint32_t qlen = be32_load(req->queries + *pos);
  if (qlen > req->queries_len - *pos - 4)
    return false;
  *query = (const char *)req->queries + *pos + 4;
  *query_len = qlen;
  *pos += 4 + (size_t)qlen;
  return true;
}

/* ---- option replies ---- */

void nbd_encode_option_reply_hdr(uint8_t out[NBD_OPTION_REPLY_HDR_SIZE], uint32_t option,
                                 uint32_t reply_type, uint32_t length) {
  be64_store(out, NBD_OPT_REPLY_MAGIC);
  be32_store(out + 8, option);
  be32_store(out + 12, reply_type);
  be32_store(out + 16, length);
}

ssize_t nbd_encode_rep_ack(uint8_t *out, size_t cap, uint32_t option) {
  if (cap < NBD_OPTION_REPLY_HDR_SIZE)
    return -ENOBUFS;
  nbd_encode_option_reply_hdr(out, option, NBD_REP_ACK, 0);
  return NBD_OPTION_REPLY_HDR_SIZE;
}

ssize_t nbd_encode_rep_server(uint8_t *out, size_t cap, uint32_t option, const char *name,
                              size_t name_len, const char *desc, size_t desc_len) {
  if (name_len > NBD_MAX_STRING || desc_len > NBD_MAX_STRING)
    return -ENOBUFS;
  size_t payload = 4 + name_len + desc_len;
  if (cap < NBD_OPTION_REPLY_SIZE(payload))
    return -ENOBUFS;
  nbd_encode_option_reply_hdr(out, option, NBD_REP_SERVER, (uint32_t)payload);
  uint8_t *p = out + NBD_OPTION_REPLY_HDR_SIZE;
  be32_store(p, (uint32_t)name_len);
  if (name_len)
    memcpy(p + 4, name, name_len);
  if (desc_len)
    memcpy(p + 4 + name_len, desc, desc_len);
  return (ssize_t)NBD_OPTION_REPLY_SIZE(payload);
}

static uint8_t *info_start(uint8_t *out, uint32_t option, uint16_t info, size_t payload) {
  nbd_encode_option_reply_hdr(out, option, NBD_REP_INFO, (uint32_t)(2 + payload));
  be16_store(out + NBD_OPTION_REPLY_HDR_SIZE, info);
  return out + NBD_OPTION_REPLY_HDR_SIZE + 2;
}

ssize_t nbd_encode_rep_info_export(uint8_t *out, size_t cap, uint32_t option, uint64_t size,
                                   uint16_t tflags) {
  if (cap < NBD_OPTION_REPLY_SIZE(12))
    return -ENOBUFS;
  uint8_t *p = info_start(out, option, NBD_INFO_EXPORT, 10);
  be64_store(p, size);
  be16_store(p + 8, tflags);
  return NBD_OPTION_REPLY_SIZE(12);
}

static ssize_t encode_info_string(uint8_t *out, size_t cap, uint32_t option, uint16_t info,
                                  const char *s, size_t len) {
  if (len > NBD_MAX_STRING || cap < NBD_OPTION_REPLY_SIZE(2 + len))
    return -ENOBUFS;
  uint8_t *p = info_start(out, option, info, len);
  if (len)
    memcpy(p, s, len);
  return (ssize_t)NBD_OPTION_REPLY_SIZE(2 + len);
}

ssize_t nbd_encode_rep_info_name(uint8_t *out, size_t cap, uint32_t option, const char *name,
                                 size_t name_len) {
  return encode_info_string(out, cap, option, NBD_INFO_NAME, name, name_len);
}

ssize_t nbd_encode_rep_info_description(uint8_t *out, size_t cap, uint32_t option,
                                        const char *desc, size_t desc_len) {
  return encode_info_string(out, cap, option, NBD_INFO_DESCRIPTION, desc, desc_len);
}

ssize_t nbd_encode_rep_info_block_size(uint8_t *out, size_t cap, uint32_t option,
                                       uint32_t minimum, uint32_t preferred, uint32_t maximum) {
  if (cap < NBD_OPTION_REPLY_SIZE(14))
    return -ENOBUFS;
  uint8_t *p = info_start(out, option, NBD_INFO_BLOCK_SIZE, 12);
  be32_store(p, minimum);
  be32_store(p + 4, preferred);
  be32_store(p + 8, maximum);
  return NBD_OPTION_REPLY_SIZE(14);
}

ssize_t nbd_encode_rep_meta_context(uint8_t *out, size_t cap, uint32_t option,
                                    uint32_t context_id, const char *name, size_t name_len) {
  if (name_len > NBD_MAX_STRING || cap < NBD_OPTION_REPLY_SIZE(4 + name_len))
    return -ENOBUFS;
  nbd_encode_option_reply_hdr(out, option, NBD_REP_META_CONTEXT, (uint32_t)(4 + name_len));
  be32_store(out + NBD_OPTION_REPLY_HDR_SIZE, context_id);
  if (name_len)
    memcpy(out + NBD_OPTION_REPLY_HDR_SIZE + 4, name, name_len);
  return (ssize_t)NBD_OPTION_REPLY_SIZE(4 + name_len);
}

ssize_t nbd_encode_rep_error(uint8_t *out, size_t cap, uint32_t option, uint32_t reply_type,
                             const char *msg) {
  size_t len = msg ? strnlen(msg, NBD_MAX_STRING) : 0;
  if (!(reply_type & NBD_REP_FLAG_ERROR))
    return -EINVAL;
  if (cap < NBD_OPTION_REPLY_SIZE(len))
    return -ENOBUFS;
  nbd_encode_option_reply_hdr(out, option, reply_type, (uint32_t)len);
  if (len)
    memcpy(out + NBD_OPTION_REPLY_HDR_SIZE, msg, len);
  return (ssize_t)NBD_OPTION_REPLY_SIZE(len);
}

size_t nbd_encode_export_name_reply(uint8_t out[NBD_EXPORT_NAME_REPLY_SIZE], uint64_t size,
                                    uint16_t tflags, bool no_zeroes) {
  be64_store(out, size);
  be16_store(out + 8, tflags);
  if (no_zeroes)
    return 10;
  memset(out + 10, 0, NBD_EXPORT_NAME_REPLY_ZEROES);
  return NBD_EXPORT_NAME_REPLY_SIZE;
}

/* ---- transmission ---- */

int nbd_decode_request(const uint8_t in[NBD_REQUEST_SIZE], struct nbd_request *req,
                       const char **why) {
  uint32_t magic = be32_load(in);
  if (magic != NBD_REQUEST_MAGIC) {
    WHY(magic == NBD_EXTENDED_REQUEST_MAGIC ? "extended request header was not negotiated"
                                            : "bad request magic");
    return -EPROTO;
  }
  req->flags = be16_load(in + 4);
  req->type = be16_load(in + 6);
  req->cookie = be64_load(in + 8);
  req->offset = be64_load(in + 16);
  req->length = be32_load(in + 24);
  return 0;
}

int nbd_decode_request_ext(const uint8_t in[NBD_EXTENDED_REQUEST_SIZE], struct nbd_request *req,
                           const char **why) {
  uint32_t magic = be32_load(in);
  if (magic != NBD_EXTENDED_REQUEST_MAGIC) {
    /* The spec lets no client fall back once extended headers were agreed. */
    WHY(magic == NBD_REQUEST_MAGIC ? "compact request header after extended headers were "
                                     "negotiated"
                                   : "bad request magic");
    return -EPROTO;
  }
  req->flags = be16_load(in + 4);
  req->type = be16_load(in + 6);
  req->cookie = be64_load(in + 8);
  req->offset = be64_load(in + 16);
  req->length = be64_load(in + 24);
  return 0;
}

bool nbd_request_has_payload(const struct nbd_request *req, bool extended) {
  if (extended)
    return req->flags & NBD_CMD_FLAG_PAYLOAD_LEN;
  return req->type == NBD_CMD_WRITE;
}

int nbd_parse_block_status_payload(const uint8_t *data, size_t len, uint32_t selected,
                                   uint64_t *effect_length, uint32_t *chosen, const char **why) {
  if (len < 12 || (len - 8) % 4 != 0) {
    WHY("BLOCK_STATUS payload is not an effect length and one or more context ids");
    return -EINVAL;
  }
  uint32_t named = 0;
  for (size_t i = 8; i < len; i += 4) {
    uint32_t id = be32_load(data + i);
    if (id >= 32 || !(selected & NBD_CONTEXT_BIT(id))) {
      WHY("BLOCK_STATUS payload names a context that was not selected");
      return -EINVAL;
    }
    if (named & NBD_CONTEXT_BIT(id)) {
      WHY("BLOCK_STATUS payload repeats a context id");
      return -EINVAL;
    }
    named |= NBD_CONTEXT_BIT(id);
  }
  *effect_length = be64_load(data);
  *chosen = named;
  return 0;
}

const char *nbd_cmd_name(uint16_t type) {
  switch (type) {
  case NBD_CMD_READ: return "READ";
  case NBD_CMD_WRITE: return "WRITE";
  case NBD_CMD_DISC: return "DISC";
  case NBD_CMD_FLUSH: return "FLUSH";
  case NBD_CMD_TRIM: return "TRIM";
  case NBD_CMD_CACHE: return "CACHE";
  case NBD_CMD_WRITE_ZEROES: return "WRITE_ZEROES";
  case NBD_CMD_BLOCK_STATUS: return "BLOCK_STATUS";
  case NBD_CMD_RESIZE: return "RESIZE";
  default: return "unknown";
  }
}

/* Flags each command may carry (FUA is accepted on every command: the spec
 * says a server MUST accept it once advertised, and ignoring it on commands
 * that write nothing is harmless). */
static uint16_t valid_flags(uint16_t type, const struct nbd_request_limits *lim) {
  uint16_t f = NBD_CMD_FLAG_FUA;
  switch (type) {
  case NBD_CMD_READ:
    if (lim->structured && (lim->tflags & NBD_FLAG_SEND_DF))
      f |= NBD_CMD_FLAG_DF;
    break;
  case NBD_CMD_WRITE_ZEROES:
    f |= NBD_CMD_FLAG_NO_HOLE;
    if (lim->tflags & NBD_FLAG_SEND_FAST_ZERO)
      f |= NBD_CMD_FLAG_FAST_ZERO;
    break;
  case NBD_CMD_BLOCK_STATUS:
    f |= NBD_CMD_FLAG_REQ_ONE;
    break;
  default:
    break;
  }
  /* With extended headers a WRITE says its payload length with this flag;
   * no other command takes a payload here (the server reads BLOCK_STATUS's
   * payload form itself and checks the plain request it stands for), so
   * there it is refused after the payload is read. */
  if (type == NBD_CMD_WRITE && lim->extended)
    f |= NBD_CMD_FLAG_PAYLOAD_LEN;
  return f;
}

uint32_t nbd_check_request(const struct nbd_request *req, const struct nbd_request_limits *lim,
                           const char **why) {
  bool writes = false, ranged = true;
  switch (req->type) {
  case NBD_CMD_READ:
  case NBD_CMD_CACHE:
    break;
  case NBD_CMD_WRITE:
  case NBD_CMD_TRIM:
  case NBD_CMD_WRITE_ZEROES:
    writes = true;
    break;
  case NBD_CMD_BLOCK_STATUS:
    if (!lim->structured || (!lim->meta_allocation && !lim->meta_depth)) {
      WHY("BLOCK_STATUS without a negotiated meta context");
      return NBD_EINVAL;
    }
    if (req->length == 0) {
      /* No descriptor can describe nothing: every reply would be invalid. */
      WHY("BLOCK_STATUS of zero bytes");
      return NBD_EINVAL;
    }
    break;
  case NBD_CMD_FLUSH:
  case NBD_CMD_DISC:
    ranged = false;
    break;
  default:
    WHY("unknown command");
    return NBD_EINVAL;
  }
  if (req->flags & ~valid_flags(req->type, lim)) {
    if (!(req->flags & NBD_CMD_FLAG_PAYLOAD_LEN) || !lim->extended)
      WHY("command flag not valid for this command");
    else if (req->type == NBD_CMD_BLOCK_STATUS && (lim->tflags & NBD_FLAG_BLOCK_STATUS_PAYLOAD))
      WHY("BLOCK_STATUS payload longer than the contexts selected need");
    else
      WHY("NBD_CMD_FLAG_PAYLOAD_LEN: this command takes no payload");
    return NBD_EINVAL;
  }
  if (lim->extended && req->type == NBD_CMD_WRITE &&
      !(req->flags & NBD_CMD_FLAG_PAYLOAD_LEN)) {
    /* Its length is then an effect length with no payload behind it. */
    WHY("WRITE without NBD_CMD_FLAG_PAYLOAD_LEN under extended headers");
    return NBD_EINVAL;
  }
  if (writes && (lim->tflags & NBD_FLAG_READ_ONLY)) {
    WHY("export is read-only");
    return NBD_EPERM;
  }
  if (!ranged) {
    if (req->offset != 0 || req->length != 0) {
      WHY("offset and length must be 0");
      return NBD_EINVAL;
    }
    return 0;
  }
  if ((req->type == NBD_CMD_READ || req->type == NBD_CMD_WRITE) &&
      req->length > lim->max_payload) {
    WHY("request length exceeds the maximum payload");
    return NBD_EINVAL;
  }
  if (req->length > lim->export_size || req->offset > lim->export_size - req->length) {
    WHY("request runs past the end of the export");
    return (req->type == NBD_CMD_WRITE || req->type == NBD_CMD_WRITE_ZEROES) ? NBD_ENOSPC
                                                                              : NBD_EINVAL;
  }
  return 0;
}

void nbd_encode_simple_reply(uint8_t out[NBD_SIMPLE_REPLY_SIZE], uint64_t cookie,
                             uint32_t error) {
  be32_store(out, NBD_SIMPLE_REPLY_MAGIC);
  be32_store(out + 4, error);
  be64_store(out + 8, cookie);
}

size_t nbd_encode_chunk_hdr(uint8_t out[NBD_REPLY_HDR_MAX], const struct nbd_reply_to *to,
                            uint16_t flags, uint16_t type, uint64_t length) {
  if (to->extended) {
    be32_store(out, NBD_EXTENDED_REPLY_MAGIC);
    be16_store(out + 4, flags);
    be16_store(out + 6, type);
    be64_store(out + 8, to->cookie);
    be64_store(out + 16, to->offset);
    be64_store(out + 24, length);
    return NBD_EXTENDED_REPLY_SIZE;
  }
  be32_store(out, NBD_STRUCTURED_REPLY_MAGIC);
  be16_store(out + 4, flags);
  be16_store(out + 6, type);
  be64_store(out + 8, to->cookie);
  be32_store(out + 16, (uint32_t)length);
  return NBD_CHUNK_HDR_SIZE;
}

size_t nbd_encode_chunk_offset_data(uint8_t out[NBD_CHUNK_OFFSET_DATA_PREFIX],
                                    const struct nbd_reply_to *to, uint16_t flags,
                                    uint64_t offset, uint32_t data_len) {
  size_t h = nbd_encode_chunk_hdr(out, to, flags, NBD_REPLY_TYPE_OFFSET_DATA,
                                  8 + (uint64_t)data_len);
  be64_store(out + h, offset);
  return h + 8;
}

size_t nbd_encode_chunk_offset_hole(uint8_t out[NBD_CHUNK_OFFSET_HOLE_SIZE],
                                    const struct nbd_reply_to *to, uint16_t flags,
                                    uint64_t offset, uint32_t hole_len) {
  size_t h = nbd_encode_chunk_hdr(out, to, flags, NBD_REPLY_TYPE_OFFSET_HOLE, 12);
  be64_store(out + h, offset);
  be32_store(out + h + 8, hole_len);
  return h + 12;
}

size_t nbd_encode_chunk_none(uint8_t out[NBD_CHUNK_NONE_SIZE], const struct nbd_reply_to *to) {
  return nbd_encode_chunk_hdr(out, to, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, 0);
}

ssize_t nbd_encode_chunk_block_status(uint8_t *out, size_t cap, const struct nbd_reply_to *to,
                                      uint16_t flags, uint32_t context_id,
                                      const struct nbd_extent *ext, size_t n) {
  if (n == 0 || n > NBD_MAX_BLOCK_STATUS_DESCRIPTORS)
    return -EINVAL;
  size_t payload = to->extended ? 8 + 16 * n : 4 + 8 * n;
  size_t size = nbd_reply_hdr_size(to) + payload;
  if (cap < size)
    return -ENOBUFS;
  for (size_t i = 0; i < n; i++) {
    if (ext[i].length == 0)
      return -EINVAL;
    if (!to->extended && ext[i].length > UINT32_MAX)
      return -EOVERFLOW;
  }
  uint8_t *p = out + nbd_encode_chunk_hdr(out, to, flags,
                                          to->extended ? NBD_REPLY_TYPE_BLOCK_STATUS_EXT
                                                       : NBD_REPLY_TYPE_BLOCK_STATUS,
                                          payload);
  be32_store(p, context_id);
  p += 4;
  if (to->extended) {
    be32_store(p, (uint32_t)n);
    p += 4;
    for (size_t i = 0; i < n; i++, p += 16) {
      be64_store(p, ext[i].length);
      be64_store(p + 8, ext[i].flags);
    }
  } else {
    for (size_t i = 0; i < n; i++, p += 8) {
      be32_store(p, (uint32_t)ext[i].length);
      be32_store(p + 4, ext[i].flags);
    }
  }
  return (ssize_t)size;
}

ssize_t nbd_encode_chunk_error(uint8_t *out, size_t cap, const struct nbd_reply_to *to,
                               uint16_t flags, uint32_t error, const char *msg,
                               bool has_offset, uint64_t offset) {
  size_t len = msg ? strnlen(msg, NBD_MAX_STRING) : 0;
  size_t payload = 6 + len + (has_offset ? 8 : 0);
  if (error == 0)
    return -EINVAL;
  if (cap < nbd_reply_hdr_size(to) + payload)
    return -ENOBUFS;
  uint8_t *p = out + nbd_encode_chunk_hdr(out, to, flags,
                                          has_offset ? NBD_REPLY_TYPE_ERROR_OFFSET
                                                     : NBD_REPLY_TYPE_ERROR,
                                          payload);
  be32_store(p, error);
  be16_store(p + 4, (uint16_t)len);
  if (len)
    memcpy(p + 6, msg, len);
  if (has_offset)
    be64_store(p + 6 + len, offset);
  return (ssize_t)(nbd_reply_hdr_size(to) + payload);
}

uint32_t nbd_errno_to_nbd(int err) {
  if (err == INT_MIN)
    return NBD_EINVAL; /* no errno; and -INT_MIN would overflow */
  if (err < 0)
    err = -err;
  switch (err) {
  case 0: return NBD_SUCCESS;
  case EPERM:
  case EROFS:
  case EACCES: return NBD_EPERM;
  case EIO: return NBD_EIO;
  case ENOMEM: return NBD_ENOMEM;
  case EINVAL:
  case ERANGE: return NBD_EINVAL;
  case ENOSPC:
  case EDQUOT:
  case EFBIG: return NBD_ENOSPC;
  case EOVERFLOW: return NBD_EOVERFLOW;
  case ENOTSUP: return NBD_ENOTSUP; /* EOPNOTSUPP is the same value on Linux */
  case ESHUTDOWN: return NBD_ESHUTDOWN;
  default: return NBD_EIO;
  }
}
