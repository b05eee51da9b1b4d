/* handshake.c: fixed newstyle negotiation, one option at a time.
 *
 * Every option is read whole (at most SERVER_OPTION_MAX bytes) before it is
 * answered; larger ones are discarded through the staging buffer and refused,
 * absurd ones close the connection.  Replies are built in one buffer per
 * option and written with a single write. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "log.h"
#include "server.h"

static const uint16_t handshake_flags = NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES;

/* Accumulates the replies to one option. */
struct replies {
  uint8_t *buf;
  size_t len, cap;
  bool failed;
};

static uint8_t *replies_reserve(struct replies *r, size_t n) {
  if (r->failed)
    return NULL;
  if (r->cap - r->len < n) {
    size_t cap = MAX(r->cap * 2, r->len + n);
    uint8_t *b = realloc(r->buf, cap);
    if (!b) {
      r->failed = true;
      return NULL;
    }
    r->buf = b;
    r->cap = cap;
  }
  return r->buf + r->len;
}

/* Runs an encoder into reserved space: the macro keeps call sites short. */
#define REPLY(r, maxlen, call)                           \
  do {                                                   \
    uint8_t *out_ = replies_reserve((r), (maxlen));      \
    if (out_) {                                          \
      ssize_t n_ = call;                                 \
      if (n_ < 0)                                        \
        (r)->failed = true;                              \
      else                                               \
        (r)->len += (size_t)n_;                          \
    }                                                    \
  } while (0)
#define OUT out_
#define CAP (r->cap - r->len)

static void replies_send(struct connection *conn, struct replies *r) {
  if (r->failed) {
    free(r->buf);
    conn_close(conn, "out of memory building option replies");
    return;
  }
  conn_write_copy(conn, r->buf, r->len);
  free(r->buf);
}

static void send_error(struct connection *conn, uint32_t type, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void send_error(struct connection *conn, uint32_t type, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  log_msg(LOG_LEVEL_DEBUG, "%s: option %" PRIu32 ": %s", conn->peer, conn->opt.option, msg);
  uint8_t buf[NBD_OPTION_REPLY_SIZE(sizeof msg)];
  ssize_t n = nbd_encode_rep_error(buf, sizeof buf, conn->opt.option, type, msg);
  if (n > 0)
    conn_write_copy(conn, buf, (size_t)n);
}

static void send_ack(struct connection *conn) {
  uint8_t buf[NBD_OPTION_REPLY_HDR_SIZE];
  nbd_encode_rep_ack(buf, sizeof buf, conn->opt.option);
  conn_write_copy(conn, buf, sizeof buf);
}

static void read_option_header(struct connection *conn);

/* Whether the export's allow list admits the client; when it does not,
 * logs who was refused by which rules and answers the option: with
 * NBD_REP_ERR_TLS_REQD when a dn: or psk: rule may admit the client once it
 * has negotiated TLS, NBD_REP_ERR_POLICY otherwise. */
static bool export_admits(struct connection *conn, const struct export *exp, const char *oname,
                          const char *name, uint32_t name_len) {
  enum acl_verdict v = export_access(exp, conn);
  if (v == ACL_ALLOW)
    return true;
  char rules[512], id[128];
  acl_describe(&exp->allow, rules, sizeof rules);
  log_msg(LOG_LEVEL_WARNING, "%s%s: %s: export '%s' refused: %s of its allow list (%s)",
          conn->peer, conn_describe_identity(conn, id, sizeof id), oname, exp->name,
          v == ACL_AFTER_TLS ? "without TLS, matches no rule" : "matches no rule", rules);
  if (v == ACL_AFTER_TLS)
    send_error(conn, NBD_REP_ERR_TLS_REQD, "export '%.*s' requires TLS",
               (int)MIN(name_len, 256u), name);
  else
    send_error(conn, NBD_REP_ERR_POLICY, "export '%.*s' not available to this client",
               (int)MIN(name_len, 256u), name);
  return false;
}

/* ---- options ---- */

static void opt_list(struct connection *conn) {
  if (conn->opt.length != 0) {
    send_error(conn, NBD_REP_ERR_INVALID, "NBD_OPT_LIST: unexpected data");
    return;
  }
  struct replies rr = {0}, *r = &rr;
  for (size_t i = 0; i < server.n_exports; i++) {
    const struct export *e = server.exports[i];
    if (!export_allows(e, conn)) {
      char rules[512], id[128];
      acl_describe(&e->allow, rules, sizeof rules);
      log_msg(LOG_LEVEL_INFO, "%s%s: NBD_OPT_LIST: export '%s' hidden by its allow list (%s)",
              conn->peer, conn_describe_identity(conn, id, sizeof id), e->name, rules);
      continue;
    }
    const char *d = e->description ? e->description : "";
    size_t nl = strlen(e->name), dl = strlen(d);
    REPLY(r, NBD_OPTION_REPLY_SIZE(4 + nl + dl),
          nbd_encode_rep_server(OUT, CAP, NBD_OPT_LIST, e->name, nl, d, dl));
  }
  REPLY(r, NBD_OPTION_REPLY_HDR_SIZE, nbd_encode_rep_ack(OUT, CAP, NBD_OPT_LIST));
  replies_send(conn, r);
}

/* Queues the replies to NBD_OPT_INFO or NBD_OPT_GO for exp; for GO, starts
 * transmission with the reference the caller took on exp. */
static void info_go_reply(struct connection *conn, uint32_t option, struct export *exp,
                          unsigned want) {
  struct replies rr = {0}, *r = &rr;
  REPLY(r, NBD_OPTION_REPLY_SIZE(12),
        nbd_encode_rep_info_export(OUT, CAP, option, exp->size,
                                   transmission_tflags(conn, exp)));
  if (want & NBD_INFO_WANT_NAME) {
    size_t nl = strlen(exp->name);
    REPLY(r, NBD_OPTION_REPLY_SIZE(2 + nl),
          nbd_encode_rep_info_name(OUT, CAP, option, exp->name, nl));
  }
  if ((want & NBD_INFO_WANT_DESCRIPTION) && exp->description) {
    size_t dl = strlen(exp->description);
    REPLY(r, NBD_OPTION_REPLY_SIZE(2 + dl),
          nbd_encode_rep_info_description(OUT, CAP, option, exp->description, dl));
  }
  if (want & NBD_INFO_WANT_BLOCK_SIZE)
    REPLY(r, NBD_OPTION_REPLY_SIZE(14),
          nbd_encode_rep_info_block_size(OUT, CAP, option, SERVER_BLOCK_MIN,
                                         SERVER_BLOCK_PREFERRED, SERVER_MAX_PAYLOAD));
  REPLY(r, NBD_OPTION_REPLY_HDR_SIZE, nbd_encode_rep_ack(OUT, CAP, option));
  replies_send(conn, r);
  if (option == NBD_OPT_GO && !conn->closing)
    transmission_start(conn, exp);
  else if (option == NBD_OPT_GO)
    export_put(exp);
}

/* The opaque of overlay_attach: the option and the NBD_INFO_WANT bits. */
#define ATTACH_OPAQUE(option, want) ((void *)(uintptr_t)((option) | (uintptr_t)(want) << 16))

/* What a client refused its overlay is told: the reason in its own terms,
 * for the engine's message names server paths and stays in the log. */
static const char *overlay_failure(int err) {
  return err == -ESTALE ? "the export's image changed since this client's overlay was made, "
                          "so the overlay no longer fits it"
                        : strerror(-err);
}

static void on_overlay_attached(struct connection *conn, struct export *inst, int err,
                                const char *name, void *opaque) {
  uint32_t option = (uint32_t)((uintptr_t)opaque & 0xffff);
  unsigned want = (unsigned)((uintptr_t)opaque >> 16);
  const char *oname = option == NBD_OPT_GO ? "NBD_OPT_GO" : "NBD_OPT_EXPORT_NAME";
  if (err < 0)
    log_msg(LOG_LEVEL_WARNING, "%s: %s: export '%s' refused: its overlay for this client "
            "cannot be opened: %s", conn->peer, oname, name, overlay_failure(err));
  if (option == NBD_OPT_EXPORT_NAME) {
    if (err < 0) {
      conn_reject(conn, "overlay unavailable");
      return;
    }
    uint8_t buf[NBD_EXPORT_NAME_REPLY_SIZE];
    size_t n = nbd_encode_export_name_reply(buf, inst->size, transmission_tflags(conn, inst),
                                            conn->client_flags & NBD_FLAG_C_NO_ZEROES);
    conn_write_copy(conn, buf, n);
    if (!conn->closing)
      transmission_start(conn, inst);
    else
      export_put(inst);
    return;
  }
  if (err < 0) {
    /* Not NBD_REP_ERR_UNKNOWN: the export exists, and clients take that
     * error for "no such export".  The server declines to serve this
     * client, which is what NBD_REP_ERR_POLICY says. */
    send_error(conn, NBD_REP_ERR_POLICY,
               "%s: export '%s' exists, but this client's overlay of it cannot be opened: %s",
               oname, name, overlay_failure(err));
    if (!conn->closing && !conn->draining)
      read_option_header(conn);
    return;
  }
  info_go_reply(conn, option, inst, want);
}

/* The answer to an NBD_OPT_GO, or the NBD_OPT_INFO before it, for a client
 * refused its overlay of exp (r from overlay_key_check/overlay_attach). */
static void send_overlay_refusal(struct connection *conn, const char *oname,
                                 const struct export *exp, int r, const char *why) {
  if (r == -EACCES)
    send_error(conn, NBD_REP_ERR_POLICY, "%s: export '%s' needs a client %s: %s", oname,
               exp->name,
               exp->overlay.key == OVERLAY_KEY_IDENTITY ? "TLS identity" : "IP address", why);
  else
    send_error(conn, NBD_REP_ERR_UNKNOWN, "%s: export '%s': %s", oname, exp->name, why);
}

/* Starts attaching conn to its overlay of exp: true when that is under
 * way (the option's answer comes later), false when the client was
 * refused (answered here). */
static bool start_overlay(struct connection *conn, struct export *exp, unsigned want) {
  uint32_t option = conn->opt.option;
  const char *why = "out of memory";
  int r = overlay_attach(conn, exp, on_overlay_attached, ATTACH_OPAQUE(option, want), &why);
  if (r == 0)
    return true;
  const char *oname = option == NBD_OPT_GO ? "NBD_OPT_GO" : "NBD_OPT_EXPORT_NAME";
  log_msg(LOG_LEVEL_WARNING, "%s: %s: export '%s' refused: overlay-key = %s, but %s",
          conn->peer, oname, exp->name,
          exp->overlay.key == OVERLAY_KEY_IDENTITY ? "identity" : "address", why);
  if (option == NBD_OPT_EXPORT_NAME)
    conn_reject(conn, "no overlay key");
  else
    send_overlay_refusal(conn, oname, exp, r, why);
  return false;
}

/* Returns true when the answer is left to an overlay being opened. */
static bool opt_info_go(struct connection *conn) {
  uint32_t option = conn->opt.option;
  const char *oname = option == NBD_OPT_GO ? "NBD_OPT_GO" : "NBD_OPT_INFO";
  struct nbd_info_request ir;
  const char *why = NULL;
  if (nbd_parse_info_request(conn->optbuf, conn->opt.length, &ir, &why) < 0) {
    send_error(conn, NBD_REP_ERR_INVALID, "%s: %s", oname, why);
    return false;
  }
  struct export *exp = exports_find(&server, ir.name, ir.name_len);
  if (!exp) {
    send_error(conn, NBD_REP_ERR_UNKNOWN, "%s: export '%.*s' not found", oname,
               (int)MIN(ir.name_len, 256u), ir.name);
    return false;
  }
  if (!export_admits(conn, exp, oname, ir.name, ir.name_len))
    return false;
  if (option == NBD_OPT_GO && exp->overlay.mode != OVERLAY_OFF)
    return start_overlay(conn, exp, ir.want);
  /* INFO answers as the same GO would: a client GO refuses for want of a
   * key is refused here too. */
  int r;
  if (option == NBD_OPT_INFO && (r = overlay_key_check(conn, exp, &why)) < 0) {
    send_overlay_refusal(conn, oname, exp, r, why ? why : "out of memory");
    return false;
  }
  if (option == NBD_OPT_GO)
    exp->refs++;
  info_go_reply(conn, option, exp, ir.want);
  return false;
}

static void opt_export_name(struct connection *conn) {
  const char *name = (const char *)conn->optbuf;
  uint32_t len = conn->opt.length;
  const char *why = NULL;
  /* Its reply has no room for the transmission it would start: the client
   * MUST NOT send it after extended headers, and we cannot answer an error. */
  if (conn->extended) {
    log_msg(LOG_LEVEL_WARNING, "%s: NBD_OPT_EXPORT_NAME after extended headers were negotiated",
            conn->peer);
    conn_reject(conn, "NBD_OPT_EXPORT_NAME after extended headers");
    return;
  }
  /* EXPORT_NAME cannot be answered with an error: the spec says close. */
  if (nbd_check_string(name, len, &why) < 0) {
    log_msg(LOG_LEVEL_WARNING, "%s: NBD_OPT_EXPORT_NAME: %s", conn->peer, why);
    conn_reject(conn, "bad export name");
    return;
  }
  struct export *exp = exports_find(&server, name, len);
  if (!exp) {
    log_msg(LOG_LEVEL_WARNING, "%s: NBD_OPT_EXPORT_NAME: export '%.*s' not found", conn->peer,
            (int)MIN(len, 256u), name);
    conn_reject(conn, "unknown export");
    return;
  }
  if (!export_allows(exp, conn)) {
    char rules[512], id[128];
    acl_describe(&exp->allow, rules, sizeof rules);
    log_msg(LOG_LEVEL_WARNING,
            "%s%s: NBD_OPT_EXPORT_NAME: export '%s' refused: matches no rule of its allow list "
            "(%s)",
            conn->peer, conn_describe_identity(conn, id, sizeof id), exp->name, rules);
    conn_reject(conn, "export not allowed");
    return;
  }
  if (exp->overlay.mode != OVERLAY_OFF) {
    start_overlay(conn, exp, 0);
    return;
  }
  uint8_t buf[NBD_EXPORT_NAME_REPLY_SIZE];
  size_t n = nbd_encode_export_name_reply(buf, exp->size, transmission_tflags(conn, exp),
                                          conn->client_flags & NBD_FLAG_C_NO_ZEROES);
  conn_write_copy(conn, buf, n);
  if (!conn->closing) {
    exp->refs++;
    transmission_start(conn, exp);
  }
}

static bool query_is(const char *q, uint32_t len, const char *what) {
  return len == strlen(what) && memcmp(q, what, len) == 0;
}

/* The contexts we offer, in the order opt_meta_context stores the selection.
 * A query names one, or (LIST only) its namespace: "base:" or "qemu:" lists
 * every context in it. */
static const struct {
  const char *name, *ns;
  uint32_t id;
} meta_contexts[] = {
    {NBD_CONTEXT_BASE_ALLOCATION, NBD_META_NS_BASE, SERVER_META_CONTEXT_ID},
    {NBD_CONTEXT_QEMU_ALLOCATION_DEPTH, NBD_META_NS_QEMU, SERVER_META_DEPTH_ID},
};
#define N_META_CONTEXTS (sizeof meta_contexts / sizeof meta_contexts[0])

static void opt_meta_context(struct connection *conn) {
  uint32_t option = conn->opt.option;
  bool set = option == NBD_OPT_SET_META_CONTEXT;
  const char *oname = set ? "NBD_OPT_SET_META_CONTEXT" : "NBD_OPT_LIST_META_CONTEXT";
  if (set) {
    /* Each SET replaces the selection, even when it fails. */
    free(conn->meta_export);
    conn->meta_export = NULL;
    conn->meta_allocation = false;
    conn->meta_depth = false;
  }
  if (!conn->structured) {
    send_error(conn, NBD_REP_ERR_INVALID, "%s: structured replies not negotiated", oname);
    return;
  }
  struct nbd_meta_request mr;
  const char *why = NULL;
  if (nbd_parse_meta_request(conn->optbuf, conn->opt.length, &mr, &why) < 0) {
    send_error(conn, NBD_REP_ERR_INVALID, "%s: %s", oname, why);
    return;
  }
  const struct export *mexp = exports_find(&server, mr.name, mr.name_len);
  if (mexp && !export_admits(conn, mexp, oname, mr.name, mr.name_len))
    return;
  if (!mexp) {
    send_error(conn, NBD_REP_ERR_UNKNOWN, "%s: export '%.*s' not found", oname,
               (int)MIN(mr.name_len, 256u), mr.name);
    return;
  }
  bool match[N_META_CONTEXTS] = {false};
  for (size_t i = 0; i < N_META_CONTEXTS; i++) {
    if (mr.n_queries == 0) {
      match[i] = !set; /* LIST: everything; SET: nothing */
      continue;
    }
    size_t pos = 0;
    const char *q;
    uint32_t ql;
    while (nbd_meta_query_next(&mr, &pos, &q, &ql))
      if (query_is(q, ql, meta_contexts[i].name) || (!set && query_is(q, ql, meta_contexts[i].ns)))
        match[i] = true;
  }
  struct replies rr = {0}, *r = &rr;
  for (size_t i = 0; i < N_META_CONTEXTS; i++) {
    if (!match[i])
      continue;
    size_t nl = strlen(meta_contexts[i].name);
    REPLY(r, NBD_OPTION_REPLY_SIZE(4 + nl),
          nbd_encode_rep_meta_context(OUT, CAP, option, set ? meta_contexts[i].id : 0,
                                      meta_contexts[i].name, nl));
  }
  REPLY(r, NBD_OPTION_REPLY_HDR_SIZE, nbd_encode_rep_ack(OUT, CAP, option));
  if (set) {
    conn->meta_export = malloc(mr.name_len + 1);
    if (!conn->meta_export) {
      free(rr.buf);
      conn_close(conn, "out of memory");
      return;
    }
    memcpy(conn->meta_export, mr.name, mr.name_len);
    conn->meta_export[mr.name_len] = '\0';
    conn->meta_export_len = mr.name_len;
    conn->meta_allocation = match[0];
    conn->meta_depth = match[1];
  }
  replies_send(conn, r);
}

/* The TLS identity is known now: the global allow list can decide on a
 * client it admitted only to negotiate TLS. */
static void on_tls_established(struct connection *conn) {
  if (conn->tls_first) {
    conn->tls_first = false;
    struct acl_peer who;
    conn_identity(conn, &who);
    if (acl_check(&server.cfg->allow, &who) != ACL_ALLOW) {
      char rules[512], id[128];
      acl_describe(&server.cfg->allow, rules, sizeof rules);
      log_msg(LOG_LEVEL_WARNING, "%s%s: refused: matches no rule of the global allow list (%s)",
              conn->peer, conn_describe_identity(conn, id, sizeof id), rules);
      conn->refused = true;
    }
  }
  read_option_header(conn);
}

static void opt_starttls(struct connection *conn) {
  if (!server.tls) {
    send_error(conn, NBD_REP_ERR_POLICY, "TLS is not configured on this server");
    return;
  }
  if (conn->tls) {
    send_error(conn, NBD_REP_ERR_INVALID, "TLS already negotiated");
    return;
  }
  if (conn->opt.length != 0) {
    send_error(conn, NBD_REP_ERR_INVALID, "NBD_OPT_STARTTLS: unexpected data");
    return;
  }
  send_ack(conn); /* the last plaintext we send */
  if (conn->closing)
    return;
  /* Nothing negotiated in the clear survives into TLS. */
  conn->structured = false;
  conn->extended = false;
  free(conn->meta_export);
  conn->meta_export = NULL;
  conn->meta_export_len = 0;
  conn->meta_allocation = false;
  conn->meta_depth = false;
  int r = conn_start_tls(conn, on_tls_established);
  if (r < 0) {
    log_msg(LOG_LEVEL_ERR, "%s: cannot start TLS: %s", conn->peer, strerror(-r));
    conn_close(conn, "TLS setup failed");
  }
}

static void handle_option(struct connection *conn) {
  const struct nbd_option_hdr *o = &conn->opt;
  if (conn->refused && o->option != NBD_OPT_ABORT) {
    if (o->option == NBD_OPT_EXPORT_NAME) {
      conn_reject(conn, "not allowed");
      return;
    }
    send_error(conn, NBD_REP_ERR_POLICY, "this client is not allowed on this server");
    if (!conn->closing && !conn->draining)
      read_option_header(conn);
    return;
  }
  if ((server.cfg->tls == TLS_REQUIRE || conn->tls_first) && !conn->tls &&
      o->option != NBD_OPT_STARTTLS && o->option != NBD_OPT_ABORT) {
    const char *why = conn->tls_first ? "the allow list needs the client's TLS identity"
                                      : "--tls=require";
    if (o->option == NBD_OPT_EXPORT_NAME) {
      log_msg(LOG_LEVEL_WARNING, "%s: NBD_OPT_EXPORT_NAME without TLS (%s)", conn->peer, why);
      conn_reject(conn, "TLS required");
      return;
    }
    log_msg(LOG_LEVEL_INFO, "%s: option %" PRIu32 " refused: TLS is required (%s)", conn->peer,
            o->option, why);
    send_error(conn, NBD_REP_ERR_TLS_REQD, "TLS is required: use NBD_OPT_STARTTLS first");
    if (!conn->closing && !conn->draining)
      read_option_header(conn);
    return;
  }
  switch (o->option) {
  case NBD_OPT_EXPORT_NAME:
    opt_export_name(conn);
    return;
  case NBD_OPT_ABORT:
    send_ack(conn);
    log_msg(LOG_LEVEL_DEBUG, "%s: client aborted the handshake", conn->peer);
    conn_drain(conn);
    return;
  case NBD_OPT_LIST:
    opt_list(conn);
    break;
  case NBD_OPT_STARTTLS:
    opt_starttls(conn);
    if (conn->tls_handshaking)
      return; /* options resume once the TLS handshake is done */
    break;
  case NBD_OPT_INFO:
  case NBD_OPT_GO:
    if (opt_info_go(conn))
      return; /* options resume once the overlay is open */
    if (o->option == NBD_OPT_GO && conn->phase == PHASE_TRANSMISSION)
      return;
    break;
  case NBD_OPT_STRUCTURED_REPLY:
    if (o->length != 0)
      send_error(conn, NBD_REP_ERR_INVALID, "NBD_OPT_STRUCTURED_REPLY: unexpected data");
    else if (conn->extended)
      send_error(conn, NBD_REP_ERR_EXT_HEADER_REQD,
                 "NBD_OPT_STRUCTURED_REPLY: extended headers already negotiated");
    else if (conn->structured)
      send_error(conn, NBD_REP_ERR_INVALID, "structured replies already negotiated");
    else {
      conn->structured = true;
      send_ack(conn);
    }
    break;
  case NBD_OPT_EXTENDED_HEADERS:
    /* Allowed after STRUCTURED_REPLY too: extended headers supersede it. */
    if (o->length != 0)
      send_error(conn, NBD_REP_ERR_INVALID, "NBD_OPT_EXTENDED_HEADERS: unexpected data");
    else if (conn->extended)
      send_error(conn, NBD_REP_ERR_INVALID, "extended headers already negotiated");
    else {
      conn->extended = true;
      conn->structured = true;
      send_ack(conn);
    }
    break;
  case NBD_OPT_LIST_META_CONTEXT:
  case NBD_OPT_SET_META_CONTEXT:
    opt_meta_context(conn);
    break;
  default: /* NBD_OPT_PEEK_EXPORT, unknown */
    send_error(conn, NBD_REP_ERR_UNSUP, "option %" PRIu32 " not supported", o->option);
    break;
  }
  if (!conn->closing && !conn->draining)
    read_option_header(conn);
}

static void on_option_data(struct connection *conn) {
  handle_option(conn);
  free(conn->optbuf);
  conn->optbuf = NULL;
}

static void on_option_discarded(struct connection *conn) {
  send_error(conn, NBD_REP_ERR_TOO_BIG, "option data of %" PRIu32 " bytes is too large",
             conn->opt.length);
  read_option_header(conn);
}

static void on_option_header(struct connection *conn) {
  const char *why = NULL;
  if (nbd_decode_option_hdr(conn->hdr, &conn->opt, &why) < 0) {
    log_msg(LOG_LEVEL_WARNING, "%s: %s", conn->peer, why);
    conn_reject(conn, "protocol error");
    return;
  }
  uint32_t len = conn->opt.length;
  if (++conn->n_options > SERVER_OPTION_COUNT_BASE + 2 * server.n_exports) {
    log_msg(LOG_LEVEL_WARNING, "%s: too many options (%u)", conn->peer, conn->n_options);
    conn_reject(conn, "too many options");
    return;
  }
  if (!(conn->client_flags & NBD_FLAG_C_FIXED_NEWSTYLE) &&
      conn->opt.option != NBD_OPT_EXPORT_NAME) {
    /* Plain newstyle knows no replies: we cannot say no, only hang up. */
    log_msg(LOG_LEVEL_WARNING, "%s: option %" PRIu32 " from a non-fixed-newstyle client",
            conn->peer, conn->opt.option);
    conn_reject(conn, "protocol error");
    return;
  }
  if (len > SERVER_OPTION_MAX) {
    if (len > SERVER_OPTION_DISCARD_MAX || conn->opt.option == NBD_OPT_EXPORT_NAME) {
      log_msg(LOG_LEVEL_WARNING, "%s: option %" PRIu32 " with %" PRIu32 " bytes of data",
              conn->peer, conn->opt.option, len);
      conn_reject(conn, "option too large");
      return;
    }
    conn_expect(conn, NULL, len, on_option_discarded);
    return;
  }
  conn->optbuf = malloc(len ? len : 1);
  if (!conn->optbuf) {
    conn_close(conn, "out of memory");
    return;
  }
  conn_expect(conn, conn->optbuf, len, on_option_data);
}

static void read_option_header(struct connection *conn) {
  conn_expect(conn, conn->hdr, NBD_OPTION_HDR_SIZE, on_option_header);
}

static void on_client_flags(struct connection *conn) {
  const char *why = NULL;
  if (nbd_decode_client_flags(conn->hdr, handshake_flags, &conn->client_flags, &why) < 0) {
    log_msg(LOG_LEVEL_WARNING, "%s: %s", conn->peer, why);
    conn_reject(conn, "protocol error");
    return;
  }
  read_option_header(conn);
}

void handshake_start(struct connection *conn) {
  uint8_t greeting[NBD_GREETING_SIZE];
  conn->phase = PHASE_HANDSHAKE;
  nbd_encode_greeting(greeting, handshake_flags);
  conn_write_copy(conn, greeting, sizeof greeting);
  conn_expect(conn, conn->hdr, NBD_CLIENT_FLAGS_SIZE, on_client_flags);
}
