/* transmission.c: NBD requests on a negotiated connection.
 *
 * Headers are validated on the loop thread (codec nbd_check_request), WRITE
 * payloads are read straight into the request's buffer, valid requests go
 * through their export's queue to a worker thread (or, for a READ of cached
 * data or a WRITE the kernel takes at once, are served on the spot), and
 * replies are queued in completion order as buffers (headers and data, never
 * copied) that the connection writes together. */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "bufpool.h"
#include "cleanup.h"
#include "log.h"
#include "metrics.h"
#include "request.h"
#include "server.h"

static void read_request_header(struct connection *conn);

static struct request *request_new(struct connection *conn) {
  struct request *req = calloc(1, sizeof *req);
  if (!req)
    return NULL;
  req->conn = conn;
  req->exp = conn->exp;
  req->started_ns = uv_hrtime();
  req->pipe = (struct splice_pipe){-1, -1};
  req->work.home = conn->loop->home;
  metrics_request_begin(req->exp);
  conn_ref(conn);
  conn->inflight++;
  atomic_fetch_add_explicit(&conn->unanswered, 1, memory_order_relaxed);
  return req;
}

/* Its reply is sent, queued or never coming (any thread, once). */
static void request_answered(struct request *req) {
  if (!req->answered) {
    req->answered = true;
    atomic_fetch_sub_explicit(&req->conn->unanswered, 1, memory_order_relaxed);
  }
}

/* Counts n more bytes held for req against its connection's and its
 * loop's budgets (given back by request_free). */
static void request_charge(struct request *req, uint64_t n) {
  req->accounted += n;
  req->conn->inflight_bytes += n;
  loop_inflight_add(req->conn->loop, n);
}

/* A WRITE payload's bytes, counted also against the write-ahead cap. */
static void request_charge_payload(struct request *req, uint64_t n) {
  request_charge(req, n);
  req->payload_accounted += n;
  req->conn->write_ahead += n;
}

static void request_free(struct request *req) {
  struct connection *conn = req->conn;
  request_answered(req);
  metrics_request_end(req->exp, req->r.type, req->error, req->r.length,
                      uv_hrtime() - req->started_ns, req->replied);
  conn->inflight--;
  conn->inflight_bytes -= req->accounted;
  conn->write_ahead -= req->payload_accounted;
  loop_inflight_sub(conn->loop, req->accounted);
  splice_pipe_put(&req->pipe, false); /* still held: bytes may be left in it */
  bufpool_put(req->data, req->data_size);
  free(req->errmsg);
  free(req->chunks);
  free(req->ext);
  free(req->depth_ext);
  free(req->reply);
  free(req->bufs);
  free(req);
  conn_unref(conn);
}

void transmission_abort_payload(struct connection *conn) {
  if (conn->payload_req) {
    request_free(conn->payload_req);
    conn->payload_req = NULL;
  }
  while (conn->held_head) {
    struct request *req = conn->held_head;
    conn->held_head = req->held_next;
    request_free(req);
  }
  conn->held_tail = NULL;
}

bool transmission_payload_pending(const struct connection *conn) {
  return conn->want_cb && (conn->want_dst != conn->hdr || conn->want_done > 0);
}

static void on_reply_written(struct connection *conn, void *opaque, int status) {
  struct request *req = opaque;
  req->replied = true;
  request_free(req);
}

/* A spliced READ's reply is written (or cancelled): its pipe is empty
 * only when all of it went out. */
static void on_splice_written(struct connection *conn, void *opaque, int status) {
  struct request *req = opaque;
  if (status == 0)
    metrics_read_spliced(req->exp);
  splice_pipe_put(&req->pipe, status == 0);
  on_reply_written(conn, opaque, status);
}

static bool last_slice(const struct request *req) {
  return req->io_off + req->io_len == req->r.offset + req->r.length;
}

/* A reply whose framing was sent whole with its first slice: a simple
 * reply, or a structured READ the client asked not to fragment (DF), which
 * is one data chunk.  Later slices are bare data: a simple reply cannot
 * end in error, a DF one only after its chunk is made whole. */
static bool one_frame(const struct request *req) {
  return !req->structured || (req->r.flags & NBD_CMD_FLAG_DF);
}

static struct nbd_reply_to reply_to(const struct request *req) {
  return (struct nbd_reply_to){.cookie = req->r.cookie, .offset = req->r.offset,
                               .extended = req->conn->extended};
}

/* A sliced DF READ: one data chunk for the whole range, streamed.  The
 * chunk cannot say DONE: a later slice may still fail (then
 * build_df_failed ends the reply), so a NONE chunk follows the last. */
static int build_df_slice(struct request *req) {
  struct nbd_reply_to to = reply_to(req);
  req->reply = malloc(MAX(NBD_CHUNK_OFFSET_DATA_PREFIX, NBD_CHUNK_NONE_SIZE));
  req->bufs = malloc(2 * sizeof *req->bufs);
  if (!req->reply || !req->bufs)
    return -ENOMEM;
  int nb = 0;
  if (!req->streaming) {
    size_t h = nbd_encode_chunk_offset_data(req->reply, &to, 0, req->r.offset,
                                            (uint32_t)req->r.length);
    req->bufs[nb++] = uv_buf_init((char *)req->reply, (unsigned)h);
  }
  req->bufs[nb++] = uv_buf_init((char *)req->data, req->io_len);
  if (last_slice(req)) {
    size_t h = nbd_encode_chunk_none(req->reply, &to);
    req->bufs[nb++] = uv_buf_init((char *)req->reply, (unsigned)h);
  }
  return nb;
}

static const char *error_text(const struct request *req) {
  return req->errmsg ? req->errmsg : req->why;
}

/* What the client is told: its own mistakes as they are, but an engine
 * failure only in the client's terms, the command and the NBD error (whose
 * values are Linux errno values); the engine's message names server paths
 * and file offsets and stays in the log. */
static const char *client_error_text(const struct request *req, char *buf, size_t size) {
  if (!req->errmsg)
    return req->why;
  snprintf(buf, size, "%s failed on the server: %s", nbd_cmd_name(req->r.type),
           strerror((int)req->error));
  return buf;
}

/* A DF READ's slice failed after its data chunk began: the chunk is
 * completed with zeros, as the protocol asks, and an error chunk naming
 * the failed slice's offset ends the reply. */
static int build_df_failed(struct request *req) {
  struct nbd_reply_to to = reply_to(req);
  char text[128];
  const char *msg = client_error_text(req, text, sizeof text);
  uint64_t rest = req->r.offset + req->r.length - req->io_off;
  size_t piece = req->data_size, npieces = (size_t)((rest + piece - 1) / piece);
  req->reply = malloc(NBD_CHUNK_ERROR_MAX);
  req->bufs = malloc((npieces + 1) * sizeof *req->bufs);
  if (!req->reply || !req->bufs)
    return -ENOMEM;
  memset(req->data, 0, piece);
  int nb = 0;
  for (uint64_t left = rest; left; left -= MIN(left, (uint64_t)piece))
    req->bufs[nb++] = uv_buf_init((char *)req->data, (unsigned)MIN(left, (uint64_t)piece));
  ssize_t n = nbd_encode_chunk_error(req->reply, NBD_CHUNK_ERROR_MAX, &to, NBD_REPLY_FLAG_DONE,
                                     req->error, msg, true, req->io_off);
  if (n < 0)
    return (int)n;
  req->bufs[nb++] = uv_buf_init((char *)req->reply, (unsigned)n);
  return nb;
}

/* Encodes the reply into req->reply / req->bufs; returns the buffer count. */
static int build_structured(struct request *req) {
  struct nbd_reply_to to = reply_to(req);
  if (req->error) {
    char text[128];
    const char *msg = client_error_text(req, text, sizeof text);
    /* The message's own size, not the largest the protocol allows. */
    size_t size = NBD_CHUNK_ERROR_MAX - NBD_MAX_STRING + MIN(strlen(msg ? msg : ""),
                                                             (size_t)NBD_MAX_STRING);
    req->reply = malloc(size);
    req->bufs = malloc(sizeof *req->bufs);
    if (!req->reply || !req->bufs)
      return -ENOMEM;
    ssize_t n = nbd_encode_chunk_error(req->reply, size, &to, NBD_REPLY_FLAG_DONE, req->error,
                                       msg, false, 0);
    if (n < 0)
      return (int)n;
    req->bufs[0] = uv_buf_init((char *)req->reply, (unsigned)n);
    return 1;
  }
  if (req->r.type == NBD_CMD_BLOCK_STATUS) {
    /* One chunk per selected context, the last one flagged DONE. */
    size_t n_alloc = req->want_alloc ? req->n_ext : 0;
    size_t n_depth = req->want_depth ? req->n_depth_ext : 0;
    size_t size = (n_alloc ? NBD_CHUNK_BLOCK_STATUS_SIZE(n_alloc) : 0) +
                  (n_depth ? NBD_CHUNK_BLOCK_STATUS_SIZE(n_depth) : 0);
    req->reply = malloc(size);
    req->bufs = malloc(sizeof *req->bufs);
    if (!req->reply || !req->bufs)
      return -ENOMEM;
    size_t len = 0;
    if (n_alloc) {
      ssize_t n = nbd_encode_chunk_block_status(req->reply, size, &to,
                                                n_depth ? 0 : NBD_REPLY_FLAG_DONE,
                                                SERVER_META_CONTEXT_ID, req->ext, n_alloc);
      if (n < 0)
        return (int)n;
      len += (size_t)n;
    }
    if (n_depth) {
      ssize_t n = nbd_encode_chunk_block_status(req->reply + len, size - len, &to,
                                                NBD_REPLY_FLAG_DONE, SERVER_META_DEPTH_ID,
                                                req->depth_ext, n_depth);
      if (n < 0)
        return (int)n;
      len += (size_t)n;
    }
    req->bufs[0] = uv_buf_init((char *)req->reply, (unsigned)len);
    return 1;
  }
  if (req->sliced && (req->r.flags & NBD_CMD_FLAG_DF))
    return build_df_slice(req);
  /* An empty READ, or with extended headers (which have no simple replies)
   * any other command's success. */
  if (req->r.type != NBD_CMD_READ || req->r.length == 0) {
    req->reply = malloc(NBD_CHUNK_NONE_SIZE);
    req->bufs = malloc(sizeof *req->bufs);
    if (!req->reply || !req->bufs)
      return -ENOMEM;
    size_t h = nbd_encode_chunk_none(req->reply, &to);
    req->bufs[0] = uv_buf_init((char *)req->reply, (unsigned)h);
    return 1;
  }
  struct read_chunk whole = {.off = req->io_off, .len = req->io_len, .hole = false};
  const struct read_chunk *chunks = req->n_chunks ? req->chunks : &whole;
  size_t n = req->n_chunks ? req->n_chunks : 1;
  bool last = last_slice(req);
  req->reply = malloc(n * NBD_CHUNK_OFFSET_HOLE_SIZE);
  req->bufs = malloc(2 * n * sizeof *req->bufs);
  if (!req->reply || !req->bufs)
    return -ENOMEM;
  uint8_t *p = req->reply;
  int nb = 0;
  for (size_t i = 0; i < n; i++) {
    const struct read_chunk *c = &chunks[i];
    uint16_t flags = i == n - 1 && last ? NBD_REPLY_FLAG_DONE : 0;
    if (c->hole) {
      size_t h = nbd_encode_chunk_offset_hole(p, &to, flags, c->off, c->len);
      req->bufs[nb++] = uv_buf_init((char *)p, (unsigned)h);
      p += h;
    } else {
      size_t h = nbd_encode_chunk_offset_data(p, &to, flags, c->off, c->len);
      req->bufs[nb++] = uv_buf_init((char *)p, (unsigned)h);
      req->bufs[nb++] = uv_buf_init((char *)req->data + (c->off - req->io_off), c->len);
      p += h;
    }
  }
  return nb;
}

/* A simple reply has one header: a sliced READ's later slices are bare data. */
static int build_simple(struct request *req) {
  nbd_encode_simple_reply(req->simple, req->r.cookie, req->error);
  req->bufs = malloc(2 * sizeof *req->bufs);
  if (!req->bufs)
    return -ENOMEM;
  int nb = 0;
  if (!req->streaming)
    req->bufs[nb++] = uv_buf_init((char *)req->simple, NBD_SIMPLE_REPLY_SIZE);
  if (req->r.type == NBD_CMD_READ && !req->error && req->io_len > 0)
    req->bufs[nb++] = uv_buf_init((char *)req->data, req->io_len);
  return nb;
}

/* Once an image latched a write error every write and flush of it fails:
 * that is said once per export, as an error naming the image and the first
 * failure (even when the client that met it has gone). */
static void log_image_failure(struct export *exp) {
  /* Whichever loop meets it first says it (loops.h). */
  if (__atomic_exchange_n(&exp->write_error_logged, true, __ATOMIC_RELAXED))
    return;
  struct vhd_err err = {{0}};
  vhd_write_error(exp->vhd, &err);
  log_msg(LOG_LEVEL_ERR,
          "export '%s': %s; writes since the last successful flush may be lost, and every "
          "flush and write of this export now fails with EIO until vhdnbd is restarted",
          exp->name, err.msg);
}

static void on_slice_written(struct connection *conn, void *opaque, int status);

/* Replies that completed while a sliced READ streams wait for its end: the
 * slices of one reply cannot be interleaved with other replies. */
static void hold_reply(struct connection *conn, struct request *req) {
  req->held_next = NULL;
  if (conn->held_tail)
    conn->held_tail->held_next = req;
  else
    conn->held_head = req;
  conn->held_tail = req;
}

static void send_reply(struct request *req);

static void release_held(struct connection *conn) {
  while (conn->held_head && !conn->streaming && !conn->closing) {
    struct request *req = conn->held_head;
    conn->held_head = req->held_next;
    if (!conn->held_head)
      conn->held_tail = NULL;
    send_reply(req);
  }
}

/* A client writing past its overlay's overlay-max (or onto a full file
 * system) gets ENOSPC for every write that needs a new block, as fast as
 * it sends them: each is answered, but logged at most once an interval per
 * export (an overlay instance is one), or the log would grow as fast. */
#define ENOSPC_LOG_INTERVAL_S 60

/* Whether this ENOSPC of exp is logged; if so, *unlogged says how many
 * were not since the last that was.  Any loop's thread (loops.h). */
static bool enospc_log_due(struct export *exp, uint64_t *unlogged) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  int64_t now = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
  int64_t next = __atomic_load_n(&exp->enospc_log_next, __ATOMIC_RELAXED);
  if ((next != 0 && now < next) ||
      !__atomic_compare_exchange_n(&exp->enospc_log_next, &next,
                                   now + (int64_t)ENOSPC_LOG_INTERVAL_S * 1000000000, false,
                                   __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    __atomic_add_fetch(&exp->enospc_unlogged, 1, __ATOMIC_RELAXED);
    return false;
  }
  *unlogged = __atomic_exchange_n(&exp->enospc_unlogged, 0, __ATOMIC_RELAXED);
  return true;
}

void transmission_log_unlogged_enospc(struct export *exp, const char *child) {
  uint64_t unlogged = __atomic_exchange_n(&exp->enospc_unlogged, 0, __ATOMIC_RELAXED);
  if (unlogged)
    log_msg(LOG_LEVEL_WARNING,
            "export '%s': %s%s%s%" PRIu64 " more ENOSPC failures since the last line that said so",
            exp->name, child ? "overlay " : "", child ? child : "", child ? ": " : "", unlogged);
}

/* Engine failures are warnings, a client's mistakes only debugging, and
 * so are the requests an image refuses after a write error. */
static void log_reply_error(const struct request *req) {
  if (!req->error)
    return;
  bool engine = req->errmsg && !req->image_failed;
  uint64_t unlogged = 0;
  char note[160] = "";
  if (engine && req->error == NBD_ENOSPC) {
    if (!enospc_log_due(req->exp, &unlogged))
      return;
    if (unlogged)
      snprintf(note, sizeof note,
               " (and %" PRIu64 " more ENOSPC failures of export '%s' since the last such "
               "line; at most one such line every %d s)",
               unlogged, req->exp->name, ENOSPC_LOG_INTERVAL_S);
    else
      snprintf(note, sizeof note,
               " (further ENOSPC failures of export '%s' are logged at most once every %d s)",
               req->exp->name, ENOSPC_LOG_INTERVAL_S);
  }
  log_msg(engine ? LOG_LEVEL_WARNING : LOG_LEVEL_DEBUG,
          "%s: %s at %" PRIu64 "+%" PRIu64 ": error %" PRIu32 ": %s%s", req->conn->peer,
          nbd_cmd_name(req->r.type), req->r.offset, req->r.length, req->error,
          error_text(req) ? error_text(req) : "", note);
}

/* The data a direct reply carries after its header: a READ's. */
static size_t direct_data_len(const struct request *req) {
  return req->r.type == NBD_CMD_READ ? req->io_len : 0;
}

/* The end of a reply its worker wrote itself, whole or in part. */
static void finish_direct(struct request *req) {
  struct connection *conn = req->conn;
  log_reply_error(req);
  metrics_reply_from_worker(req->exp);
  size_t data_len = direct_data_len(req);
  if (req->direct_sent < req->direct_len + data_len) {
    req->bufs = malloc(2 * sizeof *req->bufs);
    if (!req->bufs) {
      request_free(req);
      conn_close(conn, "out of memory sending a reply");
      return;
    }
    unsigned nb = 0;
    size_t sent = req->direct_sent;
    if (sent < req->direct_len) {
      req->bufs[nb++] = uv_buf_init((char *)req->direct + sent, (unsigned)(req->direct_len - sent));
      sent = 0;
    } else {
      sent -= req->direct_len;
    }
    if (data_len > sent)
      req->bufs[nb++] = uv_buf_init((char *)req->data + sent, (unsigned)(data_len - sent));
    conn_send_rest(conn, req->bufs, nb, on_reply_written, req);
    return;
  }
  req->replied = true;
  conn_ref(conn);
  request_free(req);
  conn_reply_sent(conn);
  conn_unref(conn);
}

static void send_reply(struct request *req) {
  struct connection *conn = req->conn;
  request_answered(req);
  if (req->image_failed)
    log_image_failure(req->exp);
  if (conn->closing) {
    if (conn->streaming == req)
      conn->streaming = NULL;
    request_free(req);
    return;
  }
  if (req->direct_sent) {
    finish_direct(req);
    return;
  }
  if (conn->streaming && conn->streaming != req) {
    hold_reply(conn, req);
    return;
  }
  free(req->reply);
  free(req->bufs);
  req->reply = NULL;
  req->bufs = NULL;
  if (req->error && req->streaming && req->structured && one_frame(req)) {
    log_reply_error(req);
    int nb = build_df_failed(req);
    if (nb < 0) {
      conn->streaming = NULL;
      request_free(req);
      conn_close(conn, "out of memory building a reply");
      return;
    }
    conn_write(conn, req->bufs, (unsigned)nb, on_slice_written, req);
    return;
  }
  if (req->error && req->streaming && one_frame(req)) {
    /* A simple reply's header already said success: nothing can tell the
     * client now. */
    log_msg(LOG_LEVEL_WARNING, "%s: READ at %" PRIu64 "+%" PRIu64 " failed after part of "
            "its reply was sent: %s", conn->peer, req->r.offset, req->r.length,
            error_text(req) ? error_text(req) : "");
    conn->streaming = NULL;
    request_free(req);
    conn_close(conn, "READ failed in the middle of its reply");
    return;
  }
  log_reply_error(req);
  if (req->spliced && !req->error) {
    /* One data chunk (or a simple reply) whose data is in the pipe, but
     * for its first splice_head bytes, which follow the header. */
    uint8_t hdr[NBD_CHUNK_OFFSET_DATA_PREFIX + REQUEST_SPLICE_HEAD_MAX];
    size_t h;
    if (req->structured) {
      struct nbd_reply_to to = reply_to(req);
      h = nbd_encode_chunk_offset_data(hdr, &to, NBD_REPLY_FLAG_DONE, req->io_off, req->io_len);
    } else {
      nbd_encode_simple_reply(hdr, req->r.cookie, 0);
      h = NBD_SIMPLE_REPLY_SIZE;
    }
    memcpy(hdr + h, req->data, req->splice_head); /* at most REQUEST_SPLICE_HEAD_MAX */
    conn_write_splice(conn, hdr, h + req->splice_head, req->pipe.rd,
                      req->io_len - req->splice_head, on_splice_written, req);
    return;
  }
  int nb = req->structured ? build_structured(req) : build_simple(req);
  if (nb < 0) {
    if (conn->streaming == req)
      conn->streaming = NULL;
    request_free(req);
    conn_close(conn, "out of memory building a reply");
    return;
  }
  if (req->sliced) {
    req->streaming = true;
    conn->streaming = req;
    conn_write(conn, req->bufs, (unsigned)nb, on_slice_written, req);
    return;
  }
  conn_write(conn, req->bufs, (unsigned)nb, on_reply_written, req);
}

/* ---- dispatch ---- */

/* Worker thread: the reply of a request alone on its connection (no other
 * reply outstanding) goes out from here, when it is short (or a READ of at
 * most SERVER_DIRECT_READ_MAX, all data) and the connection's output is idle.
 * At queue depth 1 that takes a thread hand-off off every request's path:
 * the client has its reply before the loop even wakes to free the request.
 * The loop serves cached READs itself; the ones that come here waited for
 * the disk. */
static void reply_from_worker(struct request *req) {
  struct connection *conn = req->conn;
  /* With others outstanding the loop sends replies in batches, one write
   * for many, and that costs less than a write from each worker. */
  if (atomic_load_explicit(&conn->unanswered, memory_order_relaxed) != 1)
    return;
  size_t len;
  _Static_assert(NBD_CHUNK_NONE_SIZE <= CONN_DIRECT_MAX, "a NONE chunk fits");
  _Static_assert(NBD_CHUNK_OFFSET_DATA_PREFIX <= CONN_DIRECT_MAX, "a data chunk header fits");
  if (req->r.type == NBD_CMD_READ) {
    if (req->error || req->spliced || req->io_len == 0)
      return;
    if (!req->structured) {
      nbd_encode_simple_reply(req->direct, req->r.cookie, 0);
      len = NBD_SIMPLE_REPLY_SIZE;
    } else if (req->n_chunks == 0 || (req->n_chunks == 1 && !req->chunks[0].hole)) {
      struct nbd_reply_to to = reply_to(req);
      len = nbd_encode_chunk_offset_data(req->direct, &to, NBD_REPLY_FLAG_DONE, req->io_off,
                                         req->io_len);
    } else {
      return; /* holes: the loop builds the chunks */
    }
    req->direct_len = (uint8_t)len;
    req->direct_sent = conn_send_direct(conn, req->direct, len, req->data, req->io_len);
    if (req->direct_sent)
      request_answered(req);
    return;
  }
  if (!req->structured) {
    nbd_encode_simple_reply(req->direct, req->r.cookie, req->error);
    len = NBD_SIMPLE_REPLY_SIZE;
  } else if (!req->error) {
    struct nbd_reply_to to = reply_to(req);
    len = nbd_encode_chunk_none(req->direct, &to);
  } else {
    return; /* an error chunk carries a message: the loop builds it */
  }
  req->direct_len = (uint8_t)len;
  req->direct_sent = conn_send_direct(conn, req->direct, len, NULL, 0);
  if (req->direct_sent)
    request_answered(req);
}

static void work_run(struct work_item *w) {
  struct request *req = CONTAINER_OF(w, struct request, work);
  if (w->serial) {
    /* A lane WRITE: its duration decides how many lanes the next take. */
    uint64_t t0 = uv_hrtime();
    ops_run(req);
    lane_policy_note(&req->exp->lanes, uv_hrtime() - t0);
  } else {
    ops_run(req);
  }
  if (req->may_direct)
    reply_from_worker(req);
}

static void work_done(struct work_item *w) {
  struct request *req = CONTAINER_OF(w, struct request, work);
  if (req->write_spliced)
    metrics_write_spliced(req->exp);
  queue_done(&req->exp->queue, &req->qi);
  send_reply(req);
}

/* Whether a worker may send the reply of a request of len bytes itself
 * (reply_from_worker). */
static bool may_direct(const struct request *req, uint64_t len) {
  return req->conn->direct_fd >= 0 && server.direct_replies &&
         req->r.type != NBD_CMD_BLOCK_STATUS &&
         (req->r.type != NBD_CMD_READ ||
          (!req->sliced && !req->may_splice && len <= SERVER_DIRECT_READ_MAX));
}

/* Called by the queue once nothing earlier conflicts.  Plain WRITEs to an
 * export then still run one at a time per lane, back to back on one worker
 * each: a buffered write holds the file's inode lock for its whole length,
 * so the kernel runs them one at a time anyway, and with one per worker in
 * flight the others spun on that lock (a fifth of the server's CPU in 4k
 * random writes at QD16 with eight).  One lane avoided that but left every
 * write to one core; a few lanes (--write-lanes, one per CPU) beat
 * both (bench/RESULTS.md).  FUA writes, whose flush runs outside that lock,
 * and everything else run in parallel.  The queue counts a WRITE waiting for
 * its turn as running, which only makes later conflicting requests wait
 * for it, as they must. */
static void start_work(struct queue_item *qi) {
  struct request *req = (struct request *)qi;
  req->work.run = work_run;
  req->work.done = work_done;
  if (req->r.type == NBD_CMD_WRITE && !(req->r.flags & NBD_CMD_FLAG_FUA))
    workers_enqueue(export_write_lane(req->exp, req->r.offset), &req->work);
  else
    workers_enqueue(NULL, &req->work);
}

enum served { NOT_TAKEN, SERVED_NOW, TO_WORKER };

/* Serves a request of len bytes that nothing queued conflicts with on the
 * spot, when now (ops_read_now, ops_write_now) can do it without waiting.
 * With several loops it holds its place in the queue meanwhile, so a
 * conflicting request of another loop's connection waits for it; when it
 * turns out to need a worker after all, it goes to one with its place
 * kept.  With one loop nothing else can be submitted before it is done,
 * so it needs no place (the queue's insertion and removal cost cached 4k
 * reads at depth a few per cent); when it needs a worker it is submitted
 * as any other (NOT_TAKEN). */
static enum served serve_now(struct request *req, uint64_t len, int (*now)(struct request *)) {
  struct queue_item *qi = &req->qi;
  if (loops_count() == 1) {
    if (!queue_may_start_now(&req->exp->queue, qi) || now(req) != 0)
      return NOT_TAKEN;
  } else {
    if (!queue_start_now(&req->exp->queue, qi))
      return NOT_TAKEN;
    if (now(req) != 0) {
      req->may_direct = may_direct(req, len);
      workers_hold(req->work.home);
      start_work(qi);
      return TO_WORKER;
    }
    queue_done(&req->exp->queue, qi);
  }
  req->conn->loop->inline_bytes += len;
  metrics_request_on_loop(req->exp, req->r.type);
  send_reply(req);
  return SERVED_NOW;
}

static void dispatch(struct request *req) {
  struct queue_item *qi = &req->qi;
  switch (req->r.type) {
  case NBD_CMD_READ:
  case NBD_CMD_BLOCK_STATUS:
    qi->kind = QUEUE_READ;
    break;
  case NBD_CMD_FLUSH:
    qi->kind = QUEUE_FLUSH;
    break;
  default:
    qi->kind = QUEUE_WRITE;
    break;
  }
  /* Conflicts are judged on whole sectors: the engine writes part of a
   * sector as a read-modify-write of all of it (see vhd.h). */
  uint64_t off = req->r.offset, len = req->r.length;
  if (req->sliced) {
    off = req->io_off;
    len = req->io_len;
  }
  qi->off = off & ~(uint64_t)511;
  qi->end = len ? (off + len + 511) & ~(uint64_t)511 : qi->off;
  qi->start = start_work;
  /* A READ that nothing earlier conflicts with may be served right here when
   * its bytes are in the page cache: no thread hand-off in either direction
   * (serve_now).  The budget bounds the copying done per loop iteration. */
  /* A large READ goes to a worker that splices it (ops.c), when the
   * connection has a plain socket: no copy beats a copy without a thread
   * hop.  Not a sliced one: its slices stream through the loop.  Over TCP
   * only while it is its client's one request: spliced page-cache pages
   * reach a loopback TCP socket in many small packets, and with several
   * 1 MiB READs in flight copying was faster and cost less CPU (see
   * bench/RESULTS.md, "1 MiB reads over TCP"); alone, splicing still wins. */
  req->may_splice =
      req->r.type == NBD_CMD_READ && server.splice_reads && req->conn->direct_fd >= 0 &&
      !req->sliced && len >= SERVER_SPLICE_MIN &&
      (!req->conn->is_tcp ||
       atomic_load_explicit(&req->conn->unanswered, memory_order_relaxed) <= 1);
  if (req->r.type == NBD_CMD_READ && len <= SERVER_INLINE_READ_MAX && !req->may_splice &&
      req->conn->loop->inline_bytes < SERVER_INLINE_BUDGET && serve_now(req, len, ops_read_now))
    return;
  /* So may a plain WRITE that the engine can store without waiting: into
   * blocks already allocated, sectors already marked, pages the kernel
   * takes at once (VHD_WRITE_NOWAIT).  It is then in the page cache before
   * its reply is queued, exactly as a worker's would be, so a later FLUSH
   * covers it; and it leaves no metadata behind for a FLUSH to write.  FUA
   * writes, which wait for the disk, always go to the workers. */
  if (req->r.type == NBD_CMD_WRITE && !(req->r.flags & NBD_CMD_FLAG_FUA) &&
      !req->payload_piped && server.loop_writes && len <= SERVER_INLINE_WRITE_MAX &&
      req->conn->loop->inline_bytes < SERVER_INLINE_BUDGET && serve_now(req, len, ops_write_now))
    return;
  req->may_direct = may_direct(req, len);
  workers_hold(req->work.home);
  if (queue_submit(&req->exp->queue, qi) < 0) {
    workers_release(req->work.home);
    req->error = NBD_ENOMEM;
    req->why = "out of memory queueing the request";
    send_reply(req);
  }
}

/* The next slice is produced only once the previous one was written: a
 * client that stops reading holds one slice of memory, and the slice
 * re-enters the queue on its own, so a READ that cannot be sent holds back
 * no WRITE of its range. */
static void on_slice_written(struct connection *conn, void *opaque, int status) {
  struct request *req = opaque;
  if (status < 0 || req->error || last_slice(req) || conn->closing) {
    req->replied = status == 0 && !conn->closing;
    if (conn->streaming == req)
      conn->streaming = NULL;
    request_free(req);
    if (!conn->closing) {
      release_held(conn);
      conn_stream_done(conn);
    }
    return;
  }
  req->io_off += req->io_len;
  req->io_len = (uint32_t)MIN((uint64_t)SERVER_READ_SLICE,
                              req->r.offset + req->r.length - req->io_off);
  dispatch(req);
}

/* ---- input ---- */

/* Extended headers have no simple replies; structured replies only for the
 * commands whose reply carries data. */
static bool reply_is_structured(const struct connection *conn, uint16_t type) {
  return conn->extended ||
         (conn->structured && (type == NBD_CMD_READ || type == NBD_CMD_BLOCK_STATUS));
}

static void on_write_payload(struct connection *conn) {
  struct request *req = conn->payload_req;
  conn->payload_req = NULL;
  dispatch(req);
  read_request_header(conn);
}

static void on_payload_step(struct connection *conn);

/* A payload is counted against the budgets a step ahead of its bytes, not
 * all at once when its header arrives: a client that declares a large WRITE
 * and trickles it holds only what it sent (the buffer's untouched pages are
 * not even resident). */
static void expect_payload_step(struct connection *conn) {
  struct request *req = conn->payload_req;
  uint32_t step = (uint32_t)MIN((uint64_t)SERVER_PAYLOAD_STEP, req->r.length - req->payload_done);
  request_charge_payload(req, step);
  conn_expect(conn, req->data + req->payload_done, step, on_payload_step);
}

static void on_payload_step(struct connection *conn) {
  struct request *req = conn->payload_req;
  req->payload_done += (uint32_t)conn->want_len;
  if (req->payload_done == req->r.length)
    on_write_payload(conn);
  else
    expect_payload_step(conn);
}

/* A large WRITE payload on a Unix socket goes into a pipe by splice(2),
 * and from there into the file (ops.c): no copy through the loop, which
 * reads every client's requests.  Its worker reads the pipe into data[]
 * where the engine cannot take it that way (partial sectors that would
 * need a read-modify-write).  All of it is counted at once: it is at most
 * one payload step. */
static void on_payload_piped(struct connection *conn) {
  struct request *req = conn->payload_req;
  req->payload_done = (uint32_t)req->r.length;
  req->payload_head = (uint32_t)conn->want_head;
  if (conn->want_spilled)
    splice_pipe_put(&req->pipe, true); /* read back whole into data[] */
  else
    req->payload_piped = true;
  on_write_payload(conn);
}

static bool expect_payload_piped(struct connection *conn) {
  struct request *req = conn->payload_req;
  uint64_t len = req->r.length;
  if (!server.splice_writes || len < SERVER_SPLICE_MIN || len > SERVER_PAYLOAD_STEP ||
      len > splice_pipe_payload_max() || !conn_may_splice_in(conn) ||
      !splice_pipe_get(&req->pipe))
    return false;
  request_charge_payload(req, len);
  conn_expect_pipe(conn, req->pipe.rd, req->pipe.wr, req->data, len, on_payload_piped);
  return true;
}

static void on_write_discarded(struct connection *conn) {
  struct request *req = request_new(conn);
  if (!req) {
    conn_close(conn, "out of memory");
    return;
  }
  req->r = conn->discard_req;
  req->structured = reply_is_structured(conn, req->r.type);
  req->error = conn->discard_error;
  req->why = conn->discard_why;
  send_reply(req);
  read_request_header(conn);
}

static void start_request(struct connection *conn, struct nbd_request r, uint32_t contexts);
static void on_status_payload(struct connection *conn);

/* The meta contexts the client selected for this export, as bits of their
 * ids. */
static uint32_t selected_contexts(const struct connection *conn) {
  return (conn->limits.meta_allocation ? NBD_CONTEXT_BIT(SERVER_META_CONTEXT_ID) : 0) |
         (conn->limits.meta_depth ? NBD_CONTEXT_BIT(SERVER_META_DEPTH_ID) : 0);
}

static void on_request_header(struct connection *conn) {
  conn->last_request = uv_now(conn->loop->uv);
  struct nbd_request r;
  const char *why = NULL;
  int dr = conn->extended ? nbd_decode_request_ext(conn->hdr, &r, &why)
                          : nbd_decode_request(conn->hdr, &r, &why);
  if (dr < 0) {
    log_msg(LOG_LEVEL_WARNING, "%s: %s", conn->peer, why);
    conn_reject(conn, "protocol error");
    return;
  }
  if (r.type == NBD_CMD_DISC) {
    log_msg(LOG_LEVEL_DEBUG, "%s: NBD_CMD_DISC", conn->peer);
    conn_drain(conn);
    return;
  }
  if (r.type == NBD_CMD_BLOCK_STATUS && (r.flags & NBD_CMD_FLAG_PAYLOAD_LEN) &&
      conn->extended && (conn->limits.tflags & NBD_FLAG_BLOCK_STATUS_PAYLOAD)) {
    /* A longer payload is refused by nbd_check_request and consumed (or,
     * above any payload, ends the connection) like any other. */
    if (r.length <= NBD_BLOCK_STATUS_PAYLOAD_MAX) {
      conn->status_req = r;
      conn_expect(conn, conn->status_payload, r.length, on_status_payload);
      return;
    }
  }
  start_request(conn, r, selected_contexts(conn));
}

/* The payload form of BLOCK_STATUS, read: with a valid payload the request
 * is an ordinary one of the effect length it gives, for the contexts it
 * names among those selected. */
static void on_status_payload(struct connection *conn) {
  struct nbd_request r = conn->status_req;
  const char *why = NULL;
  uint64_t effect;
  uint32_t chosen;
  if (nbd_parse_block_status_payload(conn->status_payload, r.length, selected_contexts(conn),
                                     &effect, &chosen, &why) < 0) {
    conn->discard_req = r;
    conn->discard_error = NBD_EINVAL;
    conn->discard_why = why;
    on_write_discarded(conn);
    return;
  }
  r.length = effect;
  r.flags &= (uint16_t)~NBD_CMD_FLAG_PAYLOAD_LEN;
  start_request(conn, r, chosen);
}

/* contexts: the meta contexts a BLOCK_STATUS answers for, as bits of their
 * ids (NBD_CONTEXT_BIT). */
static void start_request(struct connection *conn, struct nbd_request r, uint32_t contexts) {
  const char *why = NULL;
  uint32_t error = nbd_check_request(&r, &conn->limits, &why);
  if (nbd_request_has_payload(&r, conn->extended)) {
    if (r.length > SERVER_ABSURD_PAYLOAD) {
      log_msg(LOG_LEVEL_WARNING, "%s: %s with a payload of %" PRIu64 " bytes", conn->peer,
              nbd_cmd_name(r.type), r.length);
      conn_reject(conn, "request too large");
      return;
    }
    if (error) {
      /* The payload is on the wire whatever we think of it: consume it. */
      conn->discard_req = r;
      conn->discard_error = error;
      conn->discard_why = why;
      conn_expect(conn, NULL, r.length, on_write_discarded);
      return;
    }
  }
  struct request *req = request_new(conn);
  if (!req) {
    conn_close(conn, "out of memory");
    return;
  }
  req->r = r;
  req->structured = reply_is_structured(conn, r.type);
  if (r.type == NBD_CMD_BLOCK_STATUS) {
    req->want_alloc = contexts & NBD_CONTEXT_BIT(SERVER_META_CONTEXT_ID);
    req->want_depth = contexts & NBD_CONTEXT_BIT(SERVER_META_DEPTH_ID);
  }
  request_charge(req, ops_overhead_max(req));
  if (error) {
    req->error = error;
    req->why = why;
    send_reply(req);
    read_request_header(conn);
    return;
  }
  bool needs_buffer = (r.type == NBD_CMD_READ || r.type == NBD_CMD_WRITE) && r.length > 0;
  req->io_off = r.offset;
  if (r.type == NBD_CMD_READ || r.type == NBD_CMD_WRITE)
    req->io_len = (uint32_t)r.length; /* at most the maximum payload: checked */
  if (r.type == NBD_CMD_READ && r.length > SERVER_READ_SLICE) {
    req->sliced = true;
    req->io_len = SERVER_READ_SLICE;
  }
  if (needs_buffer) {
    req->data_size = req->io_len;
    req->data = bufpool_get(req->data_size);
    if (!req->data) {
      if (r.type == NBD_CMD_WRITE) {
        request_free(req);
        conn_close(conn, "out of memory for a WRITE payload");
        return;
      }
      req->error = NBD_ENOMEM;
      send_reply(req);
      read_request_header(conn);
      return;
    }
    if (r.type == NBD_CMD_READ)
      request_charge(req, req->data_size);
  }
  if (r.type == NBD_CMD_WRITE && r.length > 0) {
    conn->payload_req = req;
    if (!expect_payload_piped(conn))
      expect_payload_step(conn);
    return;
  }
  if (r.type == NBD_CMD_CACHE || (r.type == NBD_CMD_READ && r.length == 0) ||
      (r.type == NBD_CMD_WRITE && r.length == 0 && !(r.flags & NBD_CMD_FLAG_FUA))) {
    /* Nothing to do on the image: CACHE is a hint we cannot act on.  An
     * empty WRITE with FUA goes to the image, which flushes for it. */
    send_reply(req);
  } else {
    dispatch(req);
  }
  read_request_header(conn);
}

static void read_request_header(struct connection *conn) {
  if (conn->closing || conn->draining)
    return;
  conn_expect(conn, conn->hdr, nbd_request_size(conn->extended), on_request_header);
}

/* A connection is idle when no request arrived for --idle-timeout seconds and
 * nothing is in progress: no request in flight, no reply being written, no
 * payload half read.  Checked when the timer fires rather than re-armed on
 * every request. */
static void on_idle_timer(uv_timer_t *t) {
  struct connection *conn = t->data;
  if (conn->closing || conn->lingering)
    return;
  uint64_t limit = (uint64_t)server.cfg->idle_timeout * 1000;
  uint64_t idle = uv_now(conn->loop->uv) - conn->last_request;
  bool busy = conn->inflight > 0 || conn->writes_pending > 0 || conn->outq_n_done > 0 ||
              conn->want_done > 0 ||
              conn->want_dst != conn->hdr;
  if (idle >= limit && !busy) {
    log_msg(LOG_LEVEL_NOTICE, "%s: no request for %u s (--idle-timeout), closing", conn->peer,
            server.cfg->idle_timeout);
    conn_close(conn, "idle timeout");
    return;
  }
  uv_timer_start(&conn->timer, on_idle_timer, idle >= limit ? MIN(limit, 1000) : limit - idle, 0);
}

/* A Unix socket's send buffer is sized to hold a READ slice: with the
 * default (about 200 KiB) a 1 MiB reply waited for the client four or five
 * times, each wait a trip through the loop, and 1 MiB reads at QD16 ran at
 * half the speed (bench/RESULTS.md).  Beyond net.core.wmem_max only with
 * CAP_NET_ADMIN (SO_SNDBUFFORCE); elsewhere the default stays.  TCP sizes
 * its own buffers as it goes, which setting one would stop. */
static void size_send_buffer(int fd) {
  int domain = 0, have = 0, want = (int)SERVER_READ_SLICE;
  socklen_t len = sizeof domain;
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 || domain != AF_UNIX)
    return;
  len = sizeof have;
  /* The kernel doubles what it is given, for its bookkeeping. */
  if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &have, &len) < 0 || have >= 2 * want)
    return;
  if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &want, sizeof want) < 0)
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &want, sizeof want);
}

/* Whether the last SET_META_CONTEXT was for exp... */
static bool meta_for(const struct connection *conn, const struct export *exp) {
  return conn->meta_export && strcmp(conn->meta_export, exp->name) == 0;
}

/* ...and selected base:allocation. */
static bool meta_selected(const struct connection *conn, const struct export *exp) {
  return conn->meta_allocation && meta_for(conn, exp);
}

/* The spec allows the BLOCK_STATUS payload form only with extended headers,
 * and it means nothing without a context to choose. */
uint16_t transmission_tflags(const struct connection *conn, const struct export *exp) {
  uint16_t f = export_tflags(exp, conn->structured);
  if (conn->extended && (conn->meta_allocation || conn->meta_depth) && meta_for(conn, exp))
    f |= NBD_FLAG_BLOCK_STATUS_PAYLOAD;
  return f;
}

/* A client that cannot move (TLS, --stdio) stays on the main loop, and
 * is counted there instead. */
static void transmission_stay(struct connection *conn, struct loop *picked) {
  atomic_fetch_sub(&picked->serving, 1);
  atomic_fetch_add(&conn->loop->serving, 1);
  conn->serving_loop = conn->loop;
}

void transmission_start(struct connection *conn, struct export *exp) {
  conn->phase = PHASE_TRANSMISSION;
  conn->exp = exp;
  uv_timer_stop(&conn->timer);
  if (server.cfg->idle_timeout) {
    conn->last_request = uv_now(conn->loop->uv);
    uv_timer_start(&conn->timer, on_idle_timer, (uint64_t)server.cfg->idle_timeout * 1000, 0);
  }
  conn->limits = (struct nbd_request_limits){
      .export_size = exp->size,
      .tflags = transmission_tflags(conn, exp),
      .structured = conn->structured,
      .extended = conn->extended,
      .meta_allocation = meta_selected(conn, exp),
      .meta_depth = conn->meta_depth && meta_for(conn, exp),
      .max_payload = SERVER_MAX_PAYLOAD,
  };
  log_msg(LOG_LEVEL_INFO, "%s: serving export '%s'%s%s%s", conn->peer, exp->name,
          conn->extended     ? " with extended headers"
          : conn->structured ? " with structured replies"
                             : "",
          conn->limits.meta_allocation ? " and base:allocation" : "",
          conn->limits.meta_depth ? " and qemu:allocation-depth" : "");
  /* Replies straight from the workers need the socket itself: not under
   * TLS (the session is the loop's), not on --stdio's pipe pair. */
  uv_os_fd_t fd;
  if (!conn->tls && !conn->has_out_pipe && uv_fileno(&conn->sock.handle, &fd) == 0) {
    conn->direct_fd = fd;
    size_send_buffer(fd);
  }
  conn_direct_allow(conn);
  read_request_header(conn);
  /* Served here or by another loop (loops.h); only a plain socket moves. */
  struct loop *l = loops_pick();
  conn->serving_loop = l;
  if (l != conn->loop) {
    if (conn->direct_fd >= 0)
      conn_move(conn, l);
    else
      transmission_stay(conn, l);
  }
}

void transmission_arrived(struct connection *conn) {
  if (server.cfg->idle_timeout) {
    conn->last_request = uv_now(conn->loop->uv);
    uv_timer_start(&conn->timer, on_idle_timer, (uint64_t)server.cfg->idle_timeout * 1000, 0);
  }
  conn_direct_allow(conn);
  conn_update(conn);
}
