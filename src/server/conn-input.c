/* conn-input.c: a connection's input: the staging buffer, framing (the one
 * message conn_expect asked for), and the budgets that decide whether the
 * socket is read at all (per connection and --max-inflight). */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn-internal.h"
#include "log.h"
#include "metrics.h"
#include "server.h"
#include "splice.h"

/* Payload reads at least this large skip the staging buffer and land
 * directly in the request's buffer (no copy). */
#define DIRECT_READ_MIN (16u * 1024)

/* A TCP payload at least this large still to come is read in one piece
 * (SO_RCVLOWAT), up to RCVLOWAT_MAX at a time. */
#define RCVLOWAT_MIN (64u * 1024)
#define RCVLOWAT_MAX (1u << 20)

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_resume(uv_timer_t *t) {
  struct loop *l = t->data;
  /* Connections are freed only from close callbacks, so the list stays
   * valid while we walk it. */
  for (struct connection *c = l->conns; c; c = c->next)
    if (!c->closing)
      conn_update(c);
}

void loop_inflight_add(struct loop *l, uint64_t n) { l->inflight_bytes += n; }

void loop_inflight_sub(struct loop *l, uint64_t n) {
  l->inflight_bytes -= n;
  if (l->inflight_blocked && l->inflight_bytes < l->max_inflight) {
    l->inflight_blocked = false;
    /* Not from here: we are inside some connection's callback. */
    uv_timer_start(&l->resume_timer, on_resume, 0, 0);
  }
}

/* Under load the cap can stop and restart reading with every completion:
 * one line a second at most, with how many pauses it stands for. */
static void note_cap_pause(struct loop *l) {
  l->cap_pauses++;
  uint64_t now = uv_now(l->uv) + 1; /* never 0, which means "not yet" */
  if (l->cap_logged_ms && now - l->cap_logged_ms < 1000)
    return;
  /* With several loops each has its share of the cap (loops.h). */
  bool shared = loops_count() > 1;
  char whose[32] = "";
  if (shared)
    snprintf(whose, sizeof whose, " by event loop %u", l->index);
  log_msg(LOG_LEVEL_DEBUG,
          "%" PRIu64 " bytes buffered%s, %s--max-inflight %" PRIu64
          ": stopped reading from %s until replies drain (%" PRIu64 " pause%s)",
          l->inflight_bytes, whose, shared ? "its share of " : "", l->max_inflight,
          shared ? "its clients" : "every client", l->cap_pauses, l->cap_pauses == 1 ? "" : "s");
  l->cap_pauses = 0;
  l->cap_logged_ms = now;
}

static bool loop_under_cap(struct loop *l) {
  if (l->inflight_bytes < l->max_inflight)
    return true;
  if (!l->inflight_blocked)
    note_cap_pause(l);
  l->inflight_blocked = true;
  return false;
}

/* Its WRITE payloads not yet stored and answered reach the cap (server.h). */
static bool write_ahead_full(const struct connection *conn) {
  return conn->write_ahead >= SERVER_WRITE_AHEAD_BYTES;
}

/* Whether we may start reading the next message: bounded requests and bytes,
 * per connection and for the whole server. */
static bool under_limits(const struct connection *conn) {
  if (conn->inflight >= SERVER_MAX_INFLIGHT_REQUESTS ||
      conn->inflight_bytes + conn->write_bytes >= SERVER_MAX_INFLIGHT_BYTES ||
      write_ahead_full(conn))
    return false;
  /* The shared budget never stops a connection with nothing of its own in
   * flight: clients that fill it without reading their replies must not
   * silence the others.  What this admits beyond the budget is one request
   * per connection: a READ slice, or a WRITE payload as it arrives. */
  if (conn->inflight == 0 && conn->write_bytes == 0)
    return true;
  return loop_under_cap(conn->loop);
}

static bool mid_message(const struct connection *conn) {
  return conn->want_done > 0 || conn->want_dst != conn->hdr;
}

static bool input_allowed(const struct connection *conn) {
  if (conn->closing || conn->eof || !conn->want_cb || conn->move_to)
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

void conn_inbuf_compact(struct connection *conn) {
  if (conn->in_start == conn->in_end) {
    conn->in_start = conn->in_end = 0;
  } else if (conn->in_start > 0 && SERVER_INBUF_SIZE - conn->in_end < 4096) {
    memmove(conn->inbuf, conn->inbuf + conn->in_start, conn->in_end - conn->in_start);
    conn->in_end -= conn->in_start;
    conn->in_start = 0;
  }
}

/* Moves everything already in the pipe to the spill buffer and reads the
 * rest of the payload there: the pipe is full (or the socket cannot
 * splice), and the bytes must keep their order. */
static int spill_pipe(struct connection *conn) {
  int r = splice_read_full(conn->want_pipe_rd, conn->want_spill + conn->want_head,
                           (size_t)(conn->want_done - conn->want_head), -1);
  if (r < 0)
    return r;
  conn->want_dst = conn->want_spill;
  conn->want_pipe_rd = conn->want_pipe_wr = -1;
  conn->want_spilled = true;
  return 0;
}

static bool pipe_has_room(int pipe_wr) {
  struct pollfd p = {.fd = pipe_wr, .events = POLLOUT};
  int r;
  do
    r = poll(&p, 1, 0);
  while (r < 0 && errno == EINTR);
  return r == 1 && (p.revents & POLLOUT);
}

/* libuv asks for a buffer when the socket is readable: a payload bound for
 * a pipe is spliced right here, and an empty buffer tells libuv to read
 * nothing (on_read then gets UV_ENOBUFS and accounts the splice).  The
 * poll is level-triggered, so bytes left in the socket ask again. */
static bool splice_in_now(struct connection *conn) {
  if (conn->want_pipe_wr < 0 || conn->closing || conn->in_start != conn->in_end)
    return false;
  uint64_t left = conn->want_len - conn->want_done;
  ssize_t n;
  do
    n = splice(conn->direct_fd, NULL, conn->want_pipe_wr, NULL, (size_t)left,
               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
  while (n < 0 && errno == EINTR);
  conn->splice_in = n < 0 ? -errno : n;
  conn->splice_in_made = true;
  return true;
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  struct connection *conn = h->data;
  if (splice_in_now(conn)) {
    *buf = uv_buf_init(NULL, 0);
    return;
  }
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
  conn_inbuf_compact(conn);
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

void conn_update_reading(struct connection *conn) {
  if (conn->closing || conn_move_step(conn))
    return;
  if (conn->lingering) {
    if (!conn->reading)
      start_reading(conn);
    return;
  }
  if (conn->draining && conn->inflight == 0 && conn->writes_pending == 0) {
    /* Under TLS, once close_notify is written this runs again and closes. */
    if (conn_tls_bye(conn))
      return;
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

void conn_on_eof(struct connection *conn) {
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

/* Over TCP on loopback a 1 MiB payload arrives in pieces of a few dozen
 * KiB, and the loop woke for each: an epoll_wait, a read and a context
 * switch every piece (about ten a 1 MiB WRITE), where a thread blocked in
 * recv(MSG_WAITALL) wakes once.  With the low-water mark at what is still
 * to come, the kernel wakes the loop when the payload is whole (or at
 * EOF, an error, or memory pressure, which leave it short: then the mark
 * only ever goes down, never above what is left).  The same for a payload
 * spliced into a pipe: one splice of the whole payload, not one a piece.
 * Back to 1 for the next header.  Unix sockets ignore the mark. */
static void update_rcvlowat(struct connection *conn, bool drained) {
  if (!conn->is_tcp || conn->direct_fd < 0 || conn->closing)
    return;
  uint64_t left = conn->want_len - conn->want_done;
  unsigned want = 1;
  bool payload = (conn->want_dst && conn->want_dst != conn->hdr) || conn->want_pipe_wr >= 0;
  if (!conn->tls && payload && conn->in_start == conn->in_end && left >= RCVLOWAT_MIN)
    want = (unsigned)MIN(left, (uint64_t)RCVLOWAT_MAX);
  /* Raised only once a read found the socket empty: libuv reads again
   * straight after a read that filled its buffer, and the mark would
   * otherwise be set for every read of the same wake-up. */
  if (want == conn->rcvlowat || (want > 1 && !drained) ||
      (want > 1 && conn->rcvlowat > 1 && want > conn->rcvlowat))
    return;
  int v = (int)want;
  if (setsockopt(conn->direct_fd, SOL_SOCKET, SO_RCVLOWAT, &v, sizeof v) == 0)
    conn->rcvlowat = want;
  conn->rcvlowat_queued = 0;
}

bool conn_input_queued_grew(struct connection *conn) {
  int queued = 0;
  if (conn->rcvlowat <= 1 || ioctl(conn->direct_fd, FIONREAD, &queued) < 0 ||
      (uint64_t)queued <= conn->rcvlowat_queued)
    return false;
  conn->rcvlowat_queued = (uint64_t)queued;
  return true;
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
    conn->last_input = uv_now(conn->loop->uv);
  if (nread > 0 && conn->tls) {
    conn_tls_read(conn, (const uint8_t *)buf->base, (size_t)nread);
    return;
  }
  if (nread > 0) {
    const uint8_t *b = (const uint8_t *)buf->base;
    if (b >= conn->inbuf && b < conn->inbuf + SERVER_INBUF_SIZE)
      conn->in_end += (size_t)nread;
    else
      conn->want_done += (uint64_t)nread;
    conn_process(conn);
    /* A short read emptied the socket (libuv reads no further). */
    if ((size_t)nread < buf->len)
      update_rcvlowat(conn, true);
    return;
  }
  if (nread == UV_ENOBUFS && conn->splice_in_made) {
    conn->splice_in_made = false;
    ssize_t n = conn->splice_in;
    if (n > 0) {
      uint64_t left = conn->want_len - conn->want_done;
      conn->last_input = uv_now(conn->loop->uv);
      conn->want_done += (uint64_t)n;
      conn_process(conn);
      /* splice(2) takes all the socket has, up to what the pipe holds:
       * short of the payload, the socket is empty. */
      if ((uint64_t)n < left)
        update_rcvlowat(conn, true);
      return;
    }
    if (n == 0) {
      conn_on_eof(conn);
      return;
    }
    /* splice(2) answers EAGAIN both for an empty socket and for a full
     * pipe, and looks for room in the pipe before it looks at the socket:
     * with the pipe full it says EAGAIN even at the socket's EOF, which the
     * level-triggered poll would then report on every iteration.  So the
     * pipe decides: with room left the socket was empty. */
    if (n == -EAGAIN && pipe_has_room(conn->want_pipe_wr))
      return; /* nothing there after all: wait for more */
    /* The pipe is full (its pages partly filled: the socket's data came in
     * small pieces), or the socket cannot splice: copy from here on (a
     * copying read sees the EOF, if that is what is left). */
    if (n != -EAGAIN) {
      log_msg(LOG_LEVEL_DEBUG, "%s: cannot splice from the socket (%s): WRITE payloads copied",
              conn->peer, strerror((int)-n));
      conn->no_splice_in = true;
    } else {
      log_msg(LOG_LEVEL_DEBUG, "%s: WRITE payload pipe full after %" PRIu64 " bytes: copied",
              conn->peer, conn->want_done);
    }
    int r = spill_pipe(conn);
    if (r < 0) {
      log_msg(LOG_LEVEL_WARNING, "%s: reading back a WRITE payload: %s", conn->peer,
              strerror(-r));
      conn_close(conn, "payload pipe error");
      return;
    }
    conn_process(conn);
    return;
  }
  if (nread == 0) {
    update_rcvlowat(conn, true); /* EAGAIN */
    return;
  }
  if (nread == UV_ENOBUFS)
    return;
  if (nread == UV_EOF) {
    if (conn->in_end > conn->in_start) {
      /* Leftover bytes that never formed a whole message. */
      conn->in_start = conn->in_end;
    }
    conn_on_eof(conn);
    return;
  }
  log_msg(LOG_LEVEL_INFO, "%s: read error: %s", conn->peer, uv_strerror((int)nread));
  conn_close(conn, "read error");
}

void conn_process(struct connection *conn) {
  if (conn->in_process)
    return;
  conn->in_process = true;
  conn_ref(conn);
  while (input_allowed(conn)) {
    if (conn->tls && conn_tls_pull(conn) < 0)
      break;
    if (!input_allowed(conn))
      break;
    uint64_t left = conn->want_len - conn->want_done;
    size_t avail = conn->in_end - conn->in_start;
    size_t n = 0;
    if (left > 0 && avail > 0 && conn->want_pipe_wr >= 0 && conn->want_done == conn->want_head) {
      /* What came in with the header goes ahead of the pipe, into
       * memory: the same copy as into the pipe, and it leaves the pipe's
       * room to the socket's pieces. */
      n = (size_t)MIN(left, (uint64_t)avail);
      memcpy(conn->want_spill + conn->want_done, conn->inbuf + conn->in_start, n);
      conn->want_head += n;
      conn->want_done += n;
      conn->in_start += n;
      continue;
    }
    if (left > 0 && avail > 0 && conn->want_pipe_wr >= 0) {
      /* Input staged after the pipe got bytes (not expected: the socket
       * is spliced whenever the staging buffer is empty): in order. */
      ssize_t w = write(conn->want_pipe_wr, conn->inbuf + conn->in_start,
                        (size_t)MIN(left, (uint64_t)avail));
      if (w < 0 && errno != EAGAIN && errno != EINTR) {
        log_msg(LOG_LEVEL_WARNING, "%s: WRITE payload pipe: %s", conn->peer, strerror(errno));
        conn_close(conn, "payload pipe error");
        break;
      }
      if (w <= 0) {
        if (spill_pipe(conn) < 0) {
          conn_close(conn, "payload pipe error");
          break;
        }
        continue;
      }
      conn->want_done += (uint64_t)w;
      conn->in_start += (size_t)w;
      continue;
    }
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
    conn->want_pipe_rd = conn->want_pipe_wr = -1;
    cb(conn);
  }
  if (conn->in_start == conn->in_end)
    conn->in_start = conn->in_end = 0;
  /* Counted once a pause, for the metrics: the client writes faster than
   * its payloads are stored (between messages, a full write-ahead is what
   * stops input; a closing, ended or draining connection is not paused). */
  bool capped = write_ahead_full(conn) && !mid_message(conn) && !conn->closing && !conn->eof &&
                !conn->draining && conn->want_cb;
  if (capped && !conn->write_ahead_paused && conn->exp)
    metrics_write_ahead_pause(conn->exp);
  conn->write_ahead_paused = capped;
  conn->in_process = false;
  update_rcvlowat(conn, false);
  conn_update_reading(conn);
  conn_unref(conn);
}

void conn_expect(struct connection *conn, uint8_t *dst, uint64_t len, conn_input_cb cb) {
  conn->want_dst = dst;
  conn->want_pipe_rd = conn->want_pipe_wr = -1;
  conn->want_len = len;
  conn->want_done = 0;
  conn->want_cb = cb;
}

bool conn_may_splice_in(const struct connection *conn) {
  if (conn->direct_fd < 0 || conn->tls || conn->no_splice_in)
    return false;
  /* Splicing is the cheaper path for the server's CPU, but not always the
   * faster one (bench/RESULTS.md).  From TCP on loopback it made 1 MiB
   * WRITEs of one client slower at queue depths 1 and 16 than copying with
   * the low-water mark, and those of four clients faster: the copy is the
   * loop's, and it is the loop that several clients wait for.  From a Unix
   * socket it was as fast or faster at depth, and at depth 1 slower, with
   * a longer tail, more often than not.  So a payload is spliced while
   * other connections of its loop have bytes in flight, and from a Unix socket also
   * while this connection has another request outstanding (the one being
   * read is counted too; a reply a worker sends itself is counted off just
   * after the send, so a quick client's next payload may still splice). */
  if (conn->loop->inflight_bytes > conn->inflight_bytes + conn->write_bytes)
    return true;
  return !conn->is_tcp && atomic_load_explicit(&conn->unanswered, memory_order_relaxed) > 1;
}

void conn_expect_pipe(struct connection *conn, int pipe_rd, int pipe_wr, uint8_t *spill,
                      uint64_t len, conn_input_cb cb) {
  conn_expect(conn, NULL, len, cb);
  conn->want_pipe_rd = pipe_rd;
  conn->want_pipe_wr = pipe_wr;
  conn->want_spill = spill;
  conn->want_head = 0;
  conn->want_spilled = false;
}


void conn_drain(struct connection *conn) {
  conn->draining = true;
  conn_update_reading(conn);
}

