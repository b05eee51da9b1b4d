/* connection.c: one client connection: input staging and framing, back-pressure,
 * serialized writes, and a close that waits for every outstanding request. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cleanup.h"
#include "log.h"
#include "metrics.h"
#include "server.h"

/* Payload reads at least this large skip the staging buffer and land
 * directly in the request's buffer (no copy). */
#define DIRECT_READ_MIN (16u * 1024)

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);
static void conn_flush_output(struct connection *conn);
static void conn_process(struct connection *conn);
static void on_eof(struct connection *conn);

/* Whom to tell when a write is done: one per reply coalesced into it. */
struct write_done {
  conn_write_cb cb;
  void *opaque;
};

struct write_req {
  uv_write_t req;
  struct connection *conn;
  struct write_done *done; /* n_done entries (heap), or NULL */
  unsigned n_done;
  size_t len;
  uint8_t *cipher; /* TLS: what is actually written */
  uint8_t copy[];  /* conn_write_copy only */
};

/* Tells every waiter its write is over, and frees the array. */
static void write_done_all(struct connection *conn, struct write_done *done, unsigned n,
                           int status) {
  for (unsigned i = 0; i < n; i++)
    if (done[i].cb)
      done[i].cb(conn, done[i].opaque, status);
  free(done);
}

static void write_req_finish(struct write_req *w, int status) {
  write_done_all(w->conn, w->done, w->n_done, status);
  free(w->cipher);
  free(w);
}

void conn_ref(struct connection *conn) { conn->refs++; }

void conn_unref(struct connection *conn) {
  if (--conn->refs > 0)
    return;
  if (conn->prev)
    conn->prev->next = conn->next;
  else
    server.conns = conn->next;
  if (conn->next)
    conn->next->prev = conn->prev;
  server.n_conns--;
  if (conn->exp)
    export_put(conn->exp); /* taken when transmission started */
  free(conn->inbuf);
  free(conn->optbuf);
  tls_session_free(conn->tls);
  free(conn->tls_in);
  free(conn->tls_out);
  free(conn->meta_export);
  free(conn->outq);
  free(conn->outq_done);
  free(conn);
  server_check_done(&server);
}

static void on_handle_closed(uv_handle_t *h) { conn_unref(h->data); }

static void on_resume(uv_timer_t *t) {
  /* Connections are freed only from close callbacks, so the list stays
   * valid while we walk it. */
  for (struct connection *c = server.conns; c; c = c->next)
    if (!c->closing)
      conn_update(c);
}

void server_inflight_add(uint64_t n) { server.inflight_bytes += n; }

void server_inflight_sub(uint64_t n) {
  server.inflight_bytes -= n;
  if (server.inflight_blocked && server.inflight_bytes < server.cfg->max_inflight) {
    server.inflight_blocked = false;
    /* Not from here: we are inside some connection's callback. */
    uv_timer_start(&server.resume_timer, on_resume, 0, 0);
  }
}

/* Under load the cap can stop and restart reading with every completion:
 * one line a second at most, with how many pauses it stands for. */
static void note_cap_pause(void) {
  server.cap_pauses++;
  uint64_t now = uv_now(server.loop) + 1; /* never 0, which means "not yet" */
  if (server.cap_logged_ms && now - server.cap_logged_ms < 1000)
    return;
  log_msg(LOG_LEVEL_DEBUG,
          "%" PRIu64 " bytes buffered, --max-inflight %" PRIu64
          ": stopped reading from every client until replies drain (%" PRIu64 " pause%s)",
          server.inflight_bytes, server.cfg->max_inflight, server.cap_pauses,
          server.cap_pauses == 1 ? "" : "s");
  server.cap_pauses = 0;
  server.cap_logged_ms = now;
}

static bool server_under_cap(void) {
  if (server.inflight_bytes < server.cfg->max_inflight)
    return true;
  if (!server.inflight_blocked)
    note_cap_pause();
  server.inflight_blocked = true;
  return false;
}

/* Whether we may start reading the next message: bounded requests and bytes,
 * per connection and for the whole server. */
static bool under_limits(const struct connection *conn) {
  if (conn->inflight >= SERVER_MAX_INFLIGHT_REQUESTS ||
      conn->inflight_bytes + conn->write_bytes >= SERVER_MAX_INFLIGHT_BYTES)
    return false;
  /* The shared budget never stops a connection with nothing of its own in
   * flight: clients that fill it without reading their replies must not
   * silence the others.  What this admits beyond the budget is one request
   * per connection: a READ slice, or a WRITE payload as it arrives. */
  if (conn->inflight == 0 && conn->write_bytes == 0)
    return true;
  return server_under_cap();
}

static bool mid_message(const struct connection *conn) {
  return conn->want_done > 0 || conn->want_dst != conn->hdr;
}

static bool input_allowed(const struct connection *conn) {
  if (conn->closing || conn->eof || !conn->want_cb)
    return false;
  /* Once a message has started (a payload being read), finish it even when
   * draining: the bytes it costs were counted when its header arrived. */
  if (mid_message(conn))
    return true;
  return !conn->draining && under_limits(conn);
}

void conn_update(struct connection *conn) {
  if (!conn->closing)
    conn_process(conn);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  struct connection *conn = h->data;
  if (conn->tls) {
    /* Ciphertext: decrypted into inbuf later, never straight into payloads. */
    *buf = uv_buf_init((char *)conn->tls_in, SERVER_INBUF_SIZE);
    return;
  }
  uint64_t left = conn->want_len - conn->want_done;
  if (conn->in_start == conn->in_end && conn->want_dst && conn->want_dst != conn->hdr &&
      left >= DIRECT_READ_MIN) {
    *buf = uv_buf_init((char *)conn->want_dst + conn->want_done, (unsigned)MIN(left, 1u << 30));
    return;
  }
  if (conn->in_start == conn->in_end) {
    conn->in_start = conn->in_end = 0;
  } else if (conn->in_start > 0 && SERVER_INBUF_SIZE - conn->in_end < 4096) {
    memmove(conn->inbuf, conn->inbuf + conn->in_start, conn->in_end - conn->in_start);
    conn->in_end -= conn->in_start;
    conn->in_start = 0;
  }
  *buf = uv_buf_init((char *)conn->inbuf + conn->in_end,
                     (unsigned)(SERVER_INBUF_SIZE - conn->in_end));
}

/* The real read start: libuv wants the alloc callback here. */
static void start_reading(struct connection *conn) {
  int r = uv_read_start(&conn->sock.stream, on_alloc, on_read);
  if (r < 0) {
    log_msg(LOG_LEVEL_WARNING, "%s: cannot read: %s", conn->peer, uv_strerror(r));
    conn_close(conn, "read error");
    return;
  }
  conn->reading = true;
}

static void tls_flush(struct connection *conn);

static void update_reading(struct connection *conn) {
  if (conn->closing)
    return;
  if (conn->lingering) {
    if (!conn->reading)
      start_reading(conn);
    return;
  }
  if (conn->draining && conn->inflight == 0 && conn->writes_pending == 0) {
    /* An orderly end of a TLS session says so (close_notify), so the client
     * can tell it from a connection cut by an attacker; once that alert is
     * written, this runs again and closes. */
    if (conn->tls && !conn->tls_handshaking && !conn->tls_bye_sent) {
      conn->tls_bye_sent = true;
      tls_session_bye(conn->tls);
      tls_flush(conn);
      if (conn->closing || conn->writes_pending > 0)
        return;
    }
    conn_close(conn, NULL);
    return;
  }
  bool want = conn->tls_handshaking ||
              (input_allowed(conn) && conn->in_end - conn->in_start < SERVER_INBUF_SIZE);
  if (want && !conn->reading)
    start_reading(conn);
  else if (!want && conn->reading) {
    uv_read_stop(&conn->sock.stream);
    conn->reading = false;
  }
}

static void on_eof(struct connection *conn) {
  conn->eof = true;
  if (conn->phase == PHASE_HANDSHAKE) {
    conn_close(conn, "client closed the connection during the handshake");
  } else if (mid_message(conn)) {
    conn_close(conn, "client closed the connection in the middle of a request");
  } else {
    /* Answer what is in flight (a half-closed client may still read), then close. */
    conn_drain(conn);
  }
}

/* ---- TLS ---- */

static void tls_send(void *opaque, const uint8_t *data, size_t len) {
  struct connection *conn = opaque;
  if (conn->tls_out_failed)
    return;
  if (conn->tls_out_cap - conn->tls_out_len < len) {
    size_t cap = MAX(conn->tls_out_cap * 2, conn->tls_out_len + len);
    uint8_t *b = realloc(conn->tls_out, cap);
    if (!b) {
      conn->tls_out_failed = true;
      return;
    }
    conn->tls_out = b;
    conn->tls_out_cap = cap;
  }
  memcpy(conn->tls_out + conn->tls_out_len, data, len);
  conn->tls_out_len += len;
}

static int write_bufs(struct connection *conn, struct write_req *w, const uv_buf_t *bufs,
                      unsigned nbufs);

/* Sends ciphertext GnuTLS produced on its own (handshake, alerts, tickets). */
static void tls_flush(struct connection *conn) {
  if (conn->tls_out_len == 0 && !conn->tls_out_failed)
    return;
  conn_flush_output(conn); /* may have sent the pending ciphertext already */
  if (conn->closing || (conn->tls_out_len == 0 && !conn->tls_out_failed))
    return;
  struct write_req *w = calloc(1, sizeof *w);
  if (!w) {
    conn_close(conn, "out of memory");
    return;
  }
  write_bufs(conn, w, NULL, 0);
}

/* Decrypts what fits into inbuf.  Returns < 0 when the connection ended. */
static int tls_pull(struct connection *conn) {
  if (!conn->tls || conn->tls_handshaking)
    return 0;
  for (;;) {
    if (conn->in_start == conn->in_end) {
      conn->in_start = conn->in_end = 0;
    } else if (conn->in_start > 0 && SERVER_INBUF_SIZE - conn->in_end < 4096) {
      memmove(conn->inbuf, conn->inbuf + conn->in_start, conn->in_end - conn->in_start);
      conn->in_end -= conn->in_start;
      conn->in_start = 0;
    }
    if (conn->in_end == SERVER_INBUF_SIZE)
      return 0;
    ssize_t n = tls_session_read(conn->tls, conn->inbuf + conn->in_end,
                                 SERVER_INBUF_SIZE - conn->in_end);
    tls_flush(conn);
    if (n > 0) {
      conn->in_end += (size_t)n;
      continue;
    }
    if (n == 0)
      return 0;
    if (n == -EPIPE) {
      on_eof(conn);
      return -EPIPE;
    }
    log_msg(LOG_LEVEL_INFO, "%s: %s", conn->peer, tls_session_error(conn->tls));
    conn_close(conn, "TLS error");
    return (int)n;
  }
}

static void on_tls_read(struct connection *conn, const uint8_t *data, size_t len) {
  if (tls_session_feed(conn->tls, data, len) < 0) {
    conn_close(conn, "out of memory");
    return;
  }
  if (conn->tls_handshaking) {
    int r = tls_session_handshake(conn->tls);
    tls_flush(conn);
    if (conn->closing)
      return;
    if (r < 0) {
      log_msg(LOG_LEVEL_WARNING, "%s: %s", conn->peer, tls_session_error(conn->tls));
      conn_close(conn, "TLS handshake failed");
      return;
    }
    if (r == 0)
      return;
    conn->tls_handshaking = false;
    log_msg(LOG_LEVEL_INFO, "%s: TLS established, peer %s", conn->peer,
            tls_session_peer(conn->tls));
    conn_input_cb cb = conn->tls_done_cb;
    conn->tls_done_cb = NULL;
    cb(conn);
  }
  conn_process(conn);
}

int conn_start_tls(struct connection *conn, conn_input_cb cb) {
  /* Plaintext that arrived after STARTTLS must not be taken as if it came
   * through TLS (CVE-2021-3716): drop it. */
  conn->in_start = conn->in_end = 0;
  conn->want_cb = NULL;
  conn->want_dst = NULL;
  conn->want_len = conn->want_done = 0;
  conn->tls_in = malloc(SERVER_INBUF_SIZE);
  if (!conn->tls_in)
    return -ENOMEM;
  int r = tls_session_new(server.tls, tls_send, conn, &conn->tls);
  if (r < 0)
    return r;
  conn->tls_handshaking = true;
  conn->tls_done_cb = cb;
  return 0;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf) {
  struct connection *conn = stream->data;
  if (conn->closing)
    return;
  if (conn->lingering) {
    conn->in_start = conn->in_end = 0;
    if (nread > 0)
      conn->linger_bytes += (uint64_t)nread;
    if (nread < 0 || conn->linger_bytes > SERVER_LINGER_MAX_BYTES)
      conn_close(conn, NULL);
    return;
  }
  if (nread > 0)
    conn->last_input = uv_now(server.loop);
  if (nread > 0 && conn->tls) {
    on_tls_read(conn, (const uint8_t *)buf->base, (size_t)nread);
    return;
  }
  if (nread > 0) {
    const uint8_t *b = (const uint8_t *)buf->base;
    if (b >= conn->inbuf && b < conn->inbuf + SERVER_INBUF_SIZE)
      conn->in_end += (size_t)nread;
    else
      conn->want_done += (uint64_t)nread;
    conn_process(conn);
    return;
  }
  if (nread == 0 || nread == UV_ENOBUFS)
    return;
  if (nread == UV_EOF) {
    if (conn->in_end > conn->in_start) {
      /* Leftover bytes that never formed a whole message. */
      conn->in_start = conn->in_end;
    }
    on_eof(conn);
    return;
  }
  log_msg(LOG_LEVEL_INFO, "%s: read error: %s", conn->peer, uv_strerror((int)nread));
  conn_close(conn, "read error");
}

/* Feeds buffered input to the current reader until it needs more bytes or
 * must stop (back-pressure, close, DISC). */
static void conn_process(struct connection *conn) {
  if (conn->in_process)
    return;
  conn->in_process = true;
  conn_ref(conn);
  while (input_allowed(conn)) {
    if (conn->tls && tls_pull(conn) < 0)
      break;
    if (!input_allowed(conn))
      break;
    uint64_t left = conn->want_len - conn->want_done;
    size_t avail = conn->in_end - conn->in_start;
    size_t n = 0;
    if (left > 0 && avail > 0) {
      n = (size_t)MIN(left, (uint64_t)avail);
      if (conn->want_dst)
        memcpy(conn->want_dst + conn->want_done, conn->inbuf + conn->in_start, n);
      conn->want_done += n;
      conn->in_start += n;
    }
    if (conn->want_done < conn->want_len) {
      /* Under TLS more plaintext may wait in the session, and no socket
       * read may come to fetch it: pull again while it keeps coming. */
      if (conn->tls && n > 0)
        continue;
      break;
    }
    conn_input_cb cb = conn->want_cb;
    conn->want_cb = NULL;
    cb(conn);
  }
  if (conn->in_start == conn->in_end)
    conn->in_start = conn->in_end = 0;
  conn->in_process = false;
  update_reading(conn);
  conn_unref(conn);
}

void conn_expect(struct connection *conn, uint8_t *dst, uint64_t len, conn_input_cb cb) {
  conn->want_dst = dst;
  conn->want_len = len;
  conn->want_done = 0;
  conn->want_cb = cb;
}


static void on_written(uv_write_t *req, int status) {
  struct write_req *w = (struct write_req *)req;
  struct connection *conn = w->conn;
  conn->write_bytes -= w->len;
  conn->writes_pending--;
  server_inflight_sub(w->len);
  if (status < 0 && status != UV_ECANCELED && !conn->closing) {
    log_msg(LOG_LEVEL_INFO, "%s: write error: %s", conn->peer, uv_strerror(status));
    conn_close(conn, "write error");
  }
  write_req_finish(w, status);
  if (!conn->closing)
    conn_process(conn);
  conn_unref(conn);
}

static int write_bufs(struct connection *conn, struct write_req *w, const uv_buf_t *bufs,
                      unsigned nbufs) {
  w->conn = conn;
  w->len = 0;
  for (unsigned i = 0; i < nbufs; i++)
    w->len += bufs[i].len;
  int r = conn->closing || conn->lingering ? UV_ECANCELED : 0;
  uv_buf_t cbuf;
  if (r == 0 && conn->tls) {
    /* Encrypt now (the caller's buffers are not needed after this) and
     * write everything GnuTLS produced, including any of its own records
     * queued before, as one buffer. */
    for (unsigned i = 0; i < nbufs && r == 0; i++)
      if (bufs[i].len && tls_session_write(conn->tls, (const uint8_t *)bufs[i].base,
                                           bufs[i].len) < 0) {
        log_msg(LOG_LEVEL_INFO, "%s: %s", conn->peer, tls_session_error(conn->tls));
        r = UV_EPROTO;
      }
    if (r == 0 && conn->tls_out_failed)
      r = UV_ENOMEM;
    if (r == 0) {
      w->cipher = conn->tls_out;
      cbuf = uv_buf_init((char *)w->cipher, (unsigned)conn->tls_out_len);
      conn->tls_out = NULL;
      conn->tls_out_len = conn->tls_out_cap = 0;
      bufs = &cbuf;
      nbufs = 1;
    }
  }
  if (r == 0)
    r = uv_write(&w->req, conn->out, bufs, nbufs, on_written);
  if (r < 0) {
    write_req_finish(w, r);
    if (!conn->closing && !conn->lingering) {
      log_msg(LOG_LEVEL_INFO, "%s: write error: %s", conn->peer, uv_strerror(r));
      conn_close(conn, "write error");
    }
    return r;
  }
  conn_ref(conn);
  conn->write_bytes += w->len;
  conn->writes_pending++;
  server_inflight_add(w->len);
  return 0;
}

/* Replies are not written one by one: conn_write queues them, and the loop
 * writes each connection's queue as one uv_write (one writev) from
 * conn_flush_all, which runs after the poll phase and before the next one. */
static void conn_flush_output(struct connection *conn) {
  if (conn->outq_n_done == 0)
    return;
  uv_buf_t *bufs = conn->outq;
  unsigned nbufs = conn->outq_nbufs;
  struct write_done *done = conn->outq_done;
  unsigned n_done = conn->outq_n_done;
  conn->outq_nbufs = 0;
  conn->outq_n_done = 0;
  conn->outq_done = NULL;
  conn->outq_done_cap = 0;
  if (!conn->tls && conn->writes_pending == 0 && !conn->closing && !conn->lingering) {
    /* Nothing ahead of us on the socket: write now, and complete at once
     * what went out.  A uv_write that completes is cheaper to avoid than to
     * issue: libuv then re-arms the socket's epoll registration (one more
     * system call per batch of replies) and runs its callback later. */
    size_t total = 0;
    for (unsigned i = 0; i < nbufs; i++)
      total += bufs[i].len;
    int n = uv_try_write(conn->out, bufs, nbufs);
    if (n > 0 && (size_t)n == total) {
      write_done_all(conn, done, n_done, 0);
      return;
    }
    if (n > 0) {
      size_t left = (size_t)n;
      while (left >= bufs[0].len) {
        left -= bufs[0].len;
        bufs++;
        nbufs--;
      }
      bufs[0].base += left;
      bufs[0].len -= left;
    }
    /* UV_EAGAIN, or the rest: queue it.  Other errors show in uv_write. */
  }
  struct write_req *w = calloc(1, sizeof *w);
  if (!w) {
    write_done_all(conn, done, n_done, UV_ENOMEM);
    /* Dropping replies would hang the client: give up on it. */
    conn_close(conn, "out of memory");
    return;
  }
  w->done = done;
  w->n_done = n_done;
  /* uv_write copies the array of buffers, so outq is free again after it. */
  write_bufs(conn, w, bufs, nbufs);
}

void conn_flush_all(void) {
  while (server.outq_head) {
    struct connection *conn = server.outq_head;
    server.outq_head = conn->outq_next;
    conn->outq_next = NULL;
    conn->outq_listed = false;
    conn_flush_output(conn);
    /* Replies written at once freed their requests without on_written:
     * input stopped for back-pressure may resume (as on_written does). */
    if (!conn->closing)
      conn_process(conn);
    conn_unref(conn);
  }
}

int conn_write(struct connection *conn, const uv_buf_t *bufs, unsigned nbufs, conn_write_cb cb,
               void *opaque) {
  if (conn->closing || conn->lingering) {
    if (cb)
      cb(conn, opaque, UV_ECANCELED);
    return UV_ECANCELED;
  }
  if (conn->outq_nbufs + nbufs > conn->outq_cap) {
    unsigned cap = MAX(conn->outq_cap * 2, conn->outq_nbufs + nbufs + 16);
    uv_buf_t *b = realloc(conn->outq, cap * sizeof *b);
    if (!b)
      goto nomem;
    conn->outq = b;
    conn->outq_cap = cap;
  }
  if (conn->outq_n_done == conn->outq_done_cap) {
    unsigned cap = MAX(conn->outq_done_cap * 2, 16u);
    struct write_done *d = realloc(conn->outq_done, cap * sizeof *d);
    if (!d)
      goto nomem;
    conn->outq_done = d;
    conn->outq_done_cap = cap;
  }
  memcpy(conn->outq + conn->outq_nbufs, bufs, nbufs * sizeof *bufs);
  conn->outq_nbufs += nbufs;
  conn->outq_done[conn->outq_n_done++] = (struct write_done){cb, opaque};
  if (!conn->outq_listed) {
    conn->outq_listed = true;
    conn->outq_next = server.outq_head;
    server.outq_head = conn;
    conn_ref(conn);
  }
  return 0;
nomem:
  if (cb)
    cb(conn, opaque, UV_ENOMEM);
  conn_close(conn, "out of memory");
  return -ENOMEM;
}

int conn_write_copy(struct connection *conn, const void *data, size_t len) {
  conn_flush_output(conn); /* keep the order of everything written */
  struct write_req *w = calloc(1, sizeof *w + len);
  if (!w) {
    conn_close(conn, "out of memory");
    return -ENOMEM;
  }
  memcpy(w->copy, data, len);
  uv_buf_t b = uv_buf_init((char *)w->copy, (unsigned)len);
  return write_bufs(conn, w, &b, 1);
}

void conn_drain(struct connection *conn) {
  conn->draining = true;
  update_reading(conn);
}

void conn_close(struct connection *conn, const char *why) {
  if (conn->closing)
    return;
  /* Queued replies go to libuv first: written if the socket takes them at
   * once, cancelled by the close otherwise; their requests are freed either way.
   * A write that fails at once closes the connection from inside the flush. */
  conn_flush_output(conn);
  if (conn->closing)
    return;
  conn->closing = true;
  conn->eof = true;
  if (why)
    log_msg(LOG_LEVEL_INFO, "%s: closing connection: %s", conn->peer, why);
  else
    log_msg(LOG_LEVEL_INFO, "%s: connection closed", conn->peer);
  if (conn->reading)
    uv_read_stop(&conn->sock.stream);
  conn->reading = false;
  transmission_abort_payload(conn);
  uv_close(&conn->sock.handle, on_handle_closed);
  if (conn->has_out_pipe)
    uv_close((uv_handle_t *)&conn->out_pipe, on_handle_closed);
  uv_close((uv_handle_t *)&conn->timer, on_handle_closed);
}

static void on_linger_timeout(uv_timer_t *t) { conn_close(t->data, NULL); }

static void on_shutdown(uv_shutdown_t *req, int status) {
  struct connection *conn = req->data;
  if (status < 0 && !conn->closing)
    conn_close(conn, NULL);
}

void conn_reject(struct connection *conn, const char *why) {
  if (conn->closing || conn->lingering)
    return;
  log_msg(LOG_LEVEL_INFO, "%s: closing connection: %s", conn->peer, why);
  conn_flush_output(conn); /* before the shutdown that follows the last write */
  if (conn->closing || conn->lingering)
    return; /* the flush failed and closed the connection */
  conn->lingering = true;
  conn->want_cb = NULL;
  conn->want_dst = NULL;
  conn->want_len = conn->want_done = 0;
  conn->in_start = conn->in_end = 0;
  transmission_abort_payload(conn);
  uv_timer_stop(&conn->timer);
  uv_timer_start(&conn->timer, on_linger_timeout, SERVER_LINGER_MS, 0);
  conn->shutdown_req.data = conn;
  if (uv_shutdown(&conn->shutdown_req, conn->out, on_shutdown) < 0) {
    conn_close(conn, NULL);
    return;
  }
  update_reading(conn);
}

static void on_handshake_timeout(uv_timer_t *t) {
  struct connection *conn = t->data;
  log_msg(LOG_LEVEL_INFO, "%s: handshake not finished within %u s", conn->peer,
          server.cfg->handshake_timeout);
  guard_handshake_timeout(conn);
}

static struct connection *conn_new(void) {
  struct connection *conn = calloc(1, sizeof *conn);
  if (!conn)
    return NULL;
  conn->inbuf = malloc(SERVER_INBUF_SIZE);
  if (!conn->inbuf) {
    free(conn);
    return NULL;
  }
  conn->id = ++server.next_conn_id;
  conn->last_input = conn->accepted = uv_now(server.loop);
  conn->out = &conn->sock.stream;
  conn->sock.handle.data = conn;
  uv_timer_init(server.loop, &conn->timer);
  conn->timer.data = conn;
  conn->refs = 1; /* the timer */
  conn->next = server.conns;
  if (server.conns)
    server.conns->prev = conn;
  server.conns = conn;
  server.n_conns++;
  return conn;
}

static void conn_begin(struct connection *conn) {
  log_msg(LOG_LEVEL_INFO, "%s: new connection", conn->peer);
  if (server.cfg->handshake_timeout)
    uv_timer_start(&conn->timer, on_handshake_timeout,
                   (uint64_t)server.cfg->handshake_timeout * 1000, 0);
  handshake_start(conn);
  conn_process(conn);
}

static void format_peer(struct connection *conn, bool is_tcp) {
  if (is_tcp) {
    struct sockaddr_storage ss;
    int len = sizeof ss;
    char host[64] = "?";
    int port = 0;
    if (uv_tcp_getpeername(&conn->sock.tcp, (struct sockaddr *)&ss, &len) == 0) {
      conn->addr = ss;
      if (ss.ss_family == AF_INET6) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        uv_ip6_name(s6, host, sizeof host);
        port = ntohs(s6->sin6_port);
        snprintf(conn->peer, sizeof conn->peer, "client [%s]:%d", host, port);
        return;
      }
      struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
      uv_ip4_name(s4, host, sizeof host);
      port = ntohs(s4->sin_port);
    }
    snprintf(conn->peer, sizeof conn->peer, "client %s:%d", host, port);
  } else {
    snprintf(conn->peer, sizeof conn->peer, "client #%" PRIu64 " (unix)", conn->id);
  }
}

/* Unix-socket clients: who connected, for uid: and gid: rules. */
static void read_peer_cred(struct connection *conn) {
  uv_os_fd_t fd;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (uv_fileno(&conn->sock.handle, &fd) == 0 &&
      getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && len == sizeof cred) {
    conn->has_cred = true;
    conn->uid = cred.uid;
    conn->gid = cred.gid;
  }
}

void conn_identity(const struct connection *conn, struct acl_peer *out) {
  *out = (struct acl_peer){
      .addr = conn->addr.ss_family == AF_UNSPEC ? NULL : (const struct sockaddr *)&conn->addr,
      .has_cred = conn->has_cred,
      .uid = conn->uid,
      .gid = conn->gid,
      .tls = conn->tls && !conn->tls_handshaking,
  };
  if (out->tls) {
    out->dn = tls_session_peer_dn(conn->tls);
    out->psk = tls_session_psk_identity(conn->tls);
  }
}

const char *conn_describe_identity(const struct connection *conn, char *buf, size_t len) {
  if (conn->tls && !conn->tls_handshaking)
    snprintf(buf, len, " (%s)", tls_session_peer(conn->tls));
  else if (conn->has_cred)
    snprintf(buf, len, " (uid %u, gid %u)", (unsigned)conn->uid, (unsigned)conn->gid);
  else
    buf[0] = '\0';
  return buf;
}

int conn_accept(uv_stream_t *listener, bool is_tcp) {
  struct connection *conn = conn_new();
  if (!conn) {
    log_msg(LOG_LEVEL_ERR, "accept: out of memory");
    return -ENOMEM;
  }
  if (is_tcp)
    uv_tcp_init(server.loop, &conn->sock.tcp);
  else
    uv_pipe_init(server.loop, &conn->sock.pipe, 0);
  conn->sock.handle.data = conn;
  conn->refs++;
  int r = uv_accept(listener, &conn->sock.stream);
  if (r < 0) {
    log_msg(LOG_LEVEL_WARNING, "accept: %s", uv_strerror(r));
    snprintf(conn->peer, sizeof conn->peer, "client #%" PRIu64, conn->id);
    conn->closing = true;
    uv_close(&conn->sock.handle, on_handle_closed);
    uv_close((uv_handle_t *)&conn->timer, on_handle_closed);
    return r;
  }
  if (is_tcp)
    uv_tcp_nodelay(&conn->sock.tcp, 1);
  format_peer(conn, is_tcp);
  metrics_connection_accepted();
  if (server.shutting_down) {
    conn_close(conn, "server is shutting down");
    return 0;
  }
  if (!is_tcp)
    read_peer_cred(conn);
  struct acl_peer who;
  conn_identity(conn, &who);
  enum acl_verdict v = acl_check(&server.cfg->allow, &who);
  if (v == ACL_AFTER_TLS && !server.tls)
    v = ACL_DENY; /* cannot happen: startup refuses dn:, psk: without TLS */
  conn->tls_first = v == ACL_AFTER_TLS;
  if (v == ACL_DENY) {
    char rules[512], id[128];
    acl_describe(&server.cfg->allow, rules, sizeof rules);
    log_msg(LOG_LEVEL_WARNING, "%s%s: refused: matches no rule of the global allow list (%s)",
            conn->peer, conn_describe_identity(conn, id, sizeof id), rules);
    metrics_connection_refused("not_allowed");
    conn->closing = true; /* no "closing" line: the refusal said it all */
    conn->eof = true;
    uv_close(&conn->sock.handle, on_handle_closed);
    uv_close((uv_handle_t *)&conn->timer, on_handle_closed);
    return 0;
  }
  if (guard_admit(conn) < 0)
    return 0;
  conn_begin(conn);
  return 0;
}

int conn_start_stdio(void) {
  struct connection *conn = conn_new();
  if (!conn)
    return -ENOMEM;
  snprintf(conn->peer, sizeof conn->peer, "client (stdio)");
  uv_pipe_init(server.loop, &conn->sock.pipe, 0);
  conn->sock.handle.data = conn;
  conn->refs++;
  uv_pipe_init(server.loop, &conn->out_pipe, 0);
  conn->out_pipe.data = conn;
  conn->refs++;
  conn->has_out_pipe = true;
  conn->out = (uv_stream_t *)&conn->out_pipe;
  int r = uv_pipe_open(&conn->sock.pipe, STDIN_FILENO);
  if (r == 0)
    r = uv_pipe_open(&conn->out_pipe, STDOUT_FILENO);
  if (r < 0) {
    log_msg(LOG_LEVEL_ERR, "--stdio: cannot use stdin/stdout: %s", uv_strerror(r));
    conn_close(conn, NULL);
    return r;
  }
  conn_begin(conn);
  return 0;
}

/* Server shutdown: connections still negotiating are closed at once; those in
 * transmission stop reading and close when their requests are answered.
 * force closes everything (in-flight work finishes in the background). */
void conns_shutdown(struct server *srv, bool force) {
  struct connection *next;
  for (struct connection *c = srv->conns; c; c = next) {
    next = c->next;
    if (c->closing)
      continue;
    if (force)
      conn_close(c, "server shutdown timed out");
    else if (c->phase == PHASE_HANDSHAKE)
      conn_close(c, "server is shutting down");
    else
      conn_drain(c); /* a WRITE payload already started is still read */
  }
}
