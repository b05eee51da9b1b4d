/* conn-output.c: a connection's output: replies queued during a loop
 * iteration leave in one write (conn_flush_all), encrypted under TLS, and
 * their callbacks run once written or cancelled; spliced READ replies go
 * between those writes, each whole before anything else is written. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "cleanup.h"
#include "conn-internal.h"
#include "log.h"
#include "server.h"
#include "splice.h"

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

/* A reply whose data waits in a pipe (conn_write_splice). */
struct splice_out {
  struct splice_out *next;
  int pipe;
  size_t len, sent;         /* data */
  size_t hdr_len, hdr_sent;
  conn_write_cb cb;
  void *opaque;
  uint8_t hdr[]; /* hdr_len bytes */
};

/* When the socket is full, this much of a spliced reply is copied into a
 * write of its own: libuv then says when the socket took it, which is when
 * to splice again. */
#define SPLICE_WAIT_CHUNK (64u * 1024)

static void outq_list(struct connection *conn) {
  if (!conn->outq_listed) {
    conn->outq_listed = true;
    conn->outq_next = conn->loop->outq_head;
    conn->loop->outq_head = conn;
    conn_ref(conn);
  }
}

static void write_req_finish(struct write_req *w, int status) {
  write_done_all(w->conn, w->done, w->n_done, status);
  free(w->cipher);
  free(w);
}

/* Before the loop writes anything itself: from here on no worker writes
 * (one that is writing holds the lock, so it has finished once we have it).
 * Returns true while a worker's reply went out in part: then nothing may
 * be written before conn_send_rest. */
static bool direct_stop(struct connection *conn) {
  if (conn->direct_fd < 0)
    return false;
  pthread_mutex_lock(&conn->direct_lock);
  conn->direct_ok = false;
  bool held = conn->direct_held;
  pthread_mutex_unlock(&conn->direct_lock);
  return held;
}

void conn_direct_allow(struct connection *conn) {
  if (conn->direct_ok || conn->direct_fd < 0 || conn->closing || conn->lingering ||
      conn->streaming || conn->writes_pending || conn->outq_n_done || conn->splice_head ||
      conn->splice_cur ||
      conn->phase != PHASE_TRANSMISSION || !server.direct_replies)
    return;
  pthread_mutex_lock(&conn->direct_lock);
  conn->direct_ok = !conn->direct_held;
  pthread_mutex_unlock(&conn->direct_lock);
}

size_t conn_send_direct(struct connection *conn, const void *hdr, size_t hdr_len,
                        const void *data, size_t data_len) {
  size_t sent = 0, len = hdr_len + data_len;
  struct iovec iov[2] = {{(void *)hdr, hdr_len}, {(void *)data, data_len}};
  struct msghdr msg = {.msg_iov = iov, .msg_iovlen = data_len ? 2 : 1};
  pthread_mutex_lock(&conn->direct_lock);
  if (conn->direct_ok && !conn->direct_held) {
    ssize_t n = sendmsg(conn->direct_fd, &msg, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      sent = (size_t)n;
      if (sent < len)
        conn->direct_held = true;
    }
  }
  pthread_mutex_unlock(&conn->direct_lock);
  return sent;
}

void conn_reply_sent(struct connection *conn) {
  if (!conn->closing)
    conn_process(conn);
}

static void on_written(uv_write_t *req, int status) {
  struct write_req *w = (struct write_req *)req;
  struct connection *conn = w->conn;
  conn->write_bytes -= w->len;
  conn->writes_pending--;
  loop_inflight_sub(conn->loop, w->len);
  if (status < 0 && status != UV_ECANCELED && !conn->closing) {
    log_msg(LOG_LEVEL_INFO, "%s: write error: %s", conn->peer, uv_strerror(status));
    conn_close(conn, "write error");
  }
  write_req_finish(w, status);
  if (!conn->closing) {
    if (conn->splice_cur || conn->splice_head)
      outq_list(conn); /* the socket took a write: splice on (conn_flush_all) */
    conn_direct_allow(conn);
    conn_process(conn);
  }
  conn_unref(conn);
}

static int write_bufs(struct connection *conn, struct write_req *w, const uv_buf_t *bufs,
                      unsigned nbufs) {
  direct_stop(conn); /* never held here: see conn_flush_output */
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
  loop_inflight_add(conn->loop, w->len);
  return 0;
}

/* Empties the reply queue and hands over its callbacks (n of them);
 * outq's buffers stay valid until the next conn_write. */
static struct write_done *outq_take(struct connection *conn, unsigned *n) {
  struct write_done *done = conn->outq_done;
  *n = conn->outq_n_done;
  conn->outq_nbufs = 0;
  conn->outq_n_done = 0;
  conn->outq_done = NULL;
  conn->outq_done_cap = 0;
  return done;
}

/* Replies are not written one by one: conn_write queues them, and the loop
 * writes each connection's queue as one uv_write (one writev) from
 * conn_flush_all, which runs after the poll phase and before the next one. */
static void flush_queue(struct connection *conn) {
  if (conn->outq_n_done == 0)
    return;
  if (direct_stop(conn))
    return; /* conn_send_rest lists the connection again */
  uv_buf_t *bufs = conn->outq;
  unsigned nbufs = conn->outq_nbufs, n_done;
  struct write_done *done = outq_take(conn, &n_done);
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
      conn_direct_allow(conn);
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

/* The socket is full (or takes no splice: then all of it): the next part
 * of the reply being written goes as a copy through libuv (see
 * SPLICE_WAIT_CHUNK). */
static void splice_copy_part(struct connection *conn, struct splice_out *s, bool all) {
  size_t n;
  bool hdr = s->hdr_sent < s->hdr_len;
  if (hdr)
    n = s->hdr_len - s->hdr_sent;
  else
    n = all ? s->len - s->sent : MIN(s->len - s->sent, (size_t)SPLICE_WAIT_CHUNK);
  struct write_req *w = calloc(1, sizeof *w + n);
  if (!w) {
    conn_close(conn, "out of memory");
    return;
  }
  if (hdr) {
    memcpy(w->copy, s->hdr + s->hdr_sent, n);
    s->hdr_sent += n;
  } else {
    int r = splice_read_full(s->pipe, w->copy, n, -1);
    if (r < 0) {
      free(w);
      log_msg(LOG_LEVEL_WARNING, "%s: reading a spliced reply back from its pipe: %s",
              conn->peer, strerror(-r));
      conn_close(conn, "write error");
      return;
    }
    s->sent += n;
  }
  uv_buf_t b = uv_buf_init((char *)w->copy, (unsigned)n);
  write_bufs(conn, w, &b, 1);
}

/* Writes queued replies and spliced ones, in turn: a spliced reply starts
 * once nothing else is being written and the queue before it is out, and
 * holds every other write back until it is whole. */
static void splice_pump(struct connection *conn) {
  for (;;) {
    if (conn->closing || conn->lingering)
      return;
    struct splice_out *s = conn->splice_cur;
    if (!s) {
      flush_queue(conn);
      if (conn->closing || conn->writes_pending || conn->outq_n_done || !conn->splice_head) {
        conn_direct_allow(conn); /* all written: workers may send short replies again */
        return;
      }
      /* Between two slices of a READ's reply nothing else may go out: the
       * client reads the slices as one reply.  conn_stream_done resumes. */
      if (conn->streaming)
        return;
      if (direct_stop(conn))
        return; /* a worker's reply went out in part: conn_send_rest first */
      s = conn->splice_head;
      conn->splice_head = s->next;
      if (!conn->splice_head)
        conn->splice_tail = NULL;
      conn->splice_cur = s;
    } else if (conn->writes_pending) {
      return; /* on_written lists the connection again */
    }
    int e = 0;
    while (!e && s->hdr_sent < s->hdr_len) {
      ssize_t n = send(conn->direct_fd, s->hdr + s->hdr_sent, s->hdr_len - s->hdr_sent,
                       MSG_DONTWAIT | MSG_NOSIGNAL | MSG_MORE);
      if (n > 0)
        s->hdr_sent += (size_t)n;
      else if (n < 0 && errno != EINTR)
        e = errno;
    }
    while (!e && s->sent < s->len) {
      ssize_t n = splice(s->pipe, NULL, conn->direct_fd, NULL, s->len - s->sent,
                         SPLICE_F_NONBLOCK | SPLICE_F_MOVE);
      if (n > 0)
        s->sent += (size_t)n;
      else if (n == 0)
        e = EPIPE;
      else if (errno != EINTR)
        e = errno;
    }
    if (!e) {
      conn->splice_cur = NULL;
      s->cb(conn, s->opaque, 0);
      free(s);
      continue;
    }
    if (e == EAGAIN || e == EWOULDBLOCK || e == EINVAL || e == ENOSYS || e == EOPNOTSUPP) {
      /* Full, or a socket that takes no splice: copy the next part. */
      splice_copy_part(conn, s, e != EAGAIN && e != EWOULDBLOCK);
      return;
    }
    log_msg(LOG_LEVEL_INFO, "%s: write error: %s", conn->peer, strerror(e));
    conn_close(conn, "write error");
    return;
  }
}

void conn_stream_done(struct connection *conn) {
  if (!conn->closing && (conn->splice_head || conn->splice_cur))
    outq_list(conn);
}

void conn_flush_output(struct connection *conn) {
  if (!conn->splice_cur && !conn->splice_head)
    flush_queue(conn);
  else
    splice_pump(conn);
}

int conn_write_splice(struct connection *conn, const void *hdr, size_t hdr_len, int pipe_rd,
                      size_t len, conn_write_cb cb, void *opaque) {
  struct splice_out *s = NULL;
  if (conn->closing || conn->lingering || conn->direct_fd < 0 ||
      !(s = calloc(1, sizeof *s + hdr_len))) {
    cb(conn, opaque, s ? UV_ECANCELED : UV_ENOMEM);
    return s ? UV_ECANCELED : -ENOMEM;
  }
  s->pipe = pipe_rd;
  s->len = len;
  s->hdr_len = hdr_len;
  s->cb = cb;
  s->opaque = opaque;
  memcpy(s->hdr, hdr, hdr_len);
  if (conn->splice_tail)
    conn->splice_tail->next = s;
  else
    conn->splice_head = s;
  conn->splice_tail = s;
  outq_list(conn);
  return 0;
}

void conn_flush_all(struct loop *l) {
  while (l->outq_head) {
    struct connection *conn = l->outq_head;
    l->outq_head = conn->outq_next;
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
  outq_list(conn);
  return 0;
nomem:
  if (cb)
    cb(conn, opaque, UV_ENOMEM);
  conn_close(conn, "out of memory");
  return -ENOMEM;
}

void conn_write_tls_records(struct connection *conn) {
  struct write_req *w = calloc(1, sizeof *w);
  if (!w) {
    conn_close(conn, "out of memory");
    return;
  }
  write_bufs(conn, w, NULL, 0);
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


int conn_send_rest(struct connection *conn, const uv_buf_t *bufs, unsigned nbufs,
                   conn_write_cb cb, void *opaque) {
  pthread_mutex_lock(&conn->direct_lock);
  conn->direct_held = false;
  pthread_mutex_unlock(&conn->direct_lock);
  /* Queue it, then move it in front of every reply queued since. */
  unsigned queued = conn->outq_nbufs, n_done = conn->outq_n_done;
  int r = conn_write(conn, bufs, nbufs, cb, opaque);
  if (r < 0)
    return r;
  memmove(conn->outq + nbufs, conn->outq, queued * sizeof *conn->outq);
  memcpy(conn->outq, bufs, nbufs * sizeof *conn->outq);
  memmove(conn->outq_done + 1, conn->outq_done, n_done * sizeof *conn->outq_done);
  conn->outq_done[0] = (struct write_done){cb, opaque};
  return 0;
}

void conn_output_stop(struct connection *conn) {
  direct_stop(conn);
  /* Spliced replies not (wholly) written: their pipes may hold bytes. */
  struct splice_out *s = conn->splice_cur;
  conn->splice_cur = NULL;
  if (s)
    s->next = conn->splice_head;
  else
    s = conn->splice_head;
  conn->splice_head = conn->splice_tail = NULL;
  while (s) {
    struct splice_out *next = s->next;
    s->cb(conn, s->opaque, UV_ECANCELED);
    free(s);
    s = next;
  }
  if (conn->outq_n_done == 0)
    return;
  /* Held behind a reply a worker wrote in part: they can never follow it. */
  unsigned n_done;
  struct write_done *done = outq_take(conn, &n_done);
  write_done_all(conn, done, n_done, UV_ECANCELED);
}
