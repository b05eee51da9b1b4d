/* connection.c: one client connection's lifetime: accepted (or --stdio),
 * who the peer is, timeouts, and a close that waits for every outstanding
 * request and write.  Input, TLS and output are in conn-input.c,
 * conn-tls.c and conn-output.c. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cleanup.h"
#include "conn-internal.h"
#include "log.h"
#include "metrics.h"
#include "server.h"

void conn_ref(struct connection *conn) { conn->refs++; }

/* Main loop: the last of a connection, wherever it was served. */
static void conn_finish(struct connection *conn) {
  server.n_conns--;
  if (conn->exp)
    export_put(conn->exp); /* taken when transmission started */
  pthread_mutex_destroy(&conn->direct_lock);
  free(conn);
  server_check_done(&server);
}

static void on_moved_gone(struct loop *l, struct loop_msg *msg) {
  (void)l;
  struct connection *conn = CONTAINER_OF(msg, struct connection, msg);
  if (conn->moved_prev)
    conn->moved_prev->moved_next = conn->moved_next;
  else
    server.moved = conn->moved_next;
  if (conn->moved_next)
    conn->moved_next->moved_prev = conn->moved_prev;
  if (!server.moved)
    loops_main_wait(false);
  conn_finish(conn);
}

static void list_remove(struct loop *l, struct connection *conn) {
  if (conn->prev)
    conn->prev->next = conn->next;
  else
    l->conns = conn->next;
  if (conn->next)
    conn->next->prev = conn->prev;
  conn->prev = conn->next = NULL;
}

static void list_add(struct loop *l, struct connection *conn) {
  conn->prev = NULL;
  conn->next = l->conns;
  if (l->conns)
    l->conns->prev = conn;
  l->conns = conn;
}

void conn_unref(struct connection *conn) {
  if (--conn->refs > 0)
    return;
  struct loop *l = conn->loop;
  list_remove(l, conn);
  if (conn->serving_loop)
    atomic_fetch_sub(&conn->serving_loop->serving, 1);
  free(conn->inbuf);
  free(conn->optbuf);
  tls_session_free(conn->tls);
  free(conn->tls_in);
  free(conn->tls_out);
  free(conn->meta_export);
  free(conn->outq);
  free(conn->outq_done);
  if (l == loops_main()) {
    conn_finish(conn);
    return;
  }
  /* The main loop holds its export and counts it. */
  conn->msg.fn = on_moved_gone;
  loop_post(loops_main(), &conn->msg);
}

static void on_handle_closed(uv_handle_t *h) { conn_unref(h->data); }

void conn_close(struct connection *conn, const char *why) {
  if (conn->closing || conn->close_flushing)
    return;
  /* Queued replies go to libuv first: written if the socket takes them at
   * once, cancelled by the close otherwise; their requests are freed either way.
   * A write that fails at once asks for this close again from inside the
   * flush: that call returns at once (a spliced reply that failed would
   * otherwise be retried, fail and close again, until the stack ran out). */
  conn->close_flushing = true;
  conn_flush_output(conn);
  conn->close_flushing = false;
  if (conn->closing)
    return;
  conn_output_stop(conn);
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
  conn_output_stop(conn);
  conn->lingering = true;
  conn->want_cb = NULL;
  conn->want_dst = NULL;
  conn->want_pipe_rd = conn->want_pipe_wr = -1;
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
  conn_update_reading(conn);
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
  pthread_mutex_init(&conn->direct_lock, NULL);
  conn->direct_fd = -1;
  conn->want_pipe_rd = conn->want_pipe_wr = -1;
  conn->move_fd = -1;
  conn->loop = loops_main();
  conn->id = ++server.next_conn_id;
  conn->last_input = conn->accepted = uv_now(server.loop);
  conn->out = &conn->sock.stream;
  conn->sock.handle.data = conn;
  uv_timer_init(server.loop, &conn->timer);
  conn->timer.data = conn;
  conn->refs = 1; /* the timer */
  list_add(conn->loop, conn);
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
  /* TCP decides two input paths: the low-water mark for large payloads
   * and when a payload is spliced (conn-input.c). */
  conn->is_tcp = is_tcp;
  conn->rcvlowat = 1;
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

/* ---- moving to another loop ---- */

static void on_arrived(struct loop *l, struct loop_msg *msg) {
  struct connection *conn = CONTAINER_OF(msg, struct connection, msg);
  int fd = conn->move_fd;
  conn->move_fd = -1;
  conn->loop = l;
  conn->move_to = NULL;
  list_add(l, conn);
  uv_timer_init(l->uv, &conn->timer);
  conn->timer.data = conn;
  int r;
  if (conn->is_tcp) {
    uv_tcp_init(l->uv, &conn->sock.tcp);
    r = uv_tcp_open(&conn->sock.tcp, fd);
  } else {
    uv_pipe_init(l->uv, &conn->sock.pipe, 0);
    r = uv_pipe_open(&conn->sock.pipe, fd);
  }
  conn->sock.handle.data = conn;
  conn->refs += 2; /* the two handles */
  conn->refs--;    /* the move's own */
  if (r < 0) {
    close(fd);
    log_msg(LOG_LEVEL_WARNING, "%s: event loop %u cannot take the socket: %s", conn->peer,
            l->index, uv_strerror(r));
    conn_close(conn, "cannot move to another event loop");
    return;
  }
  pthread_mutex_lock(&conn->direct_lock);
  conn->direct_fd = fd;
  pthread_mutex_unlock(&conn->direct_lock);
  log_msg(LOG_LEVEL_INFO, "%s: served by event loop %u", conn->peer, l->index);
  transmission_arrived(conn);
  /* What was asked of every connection of this loop while this one was on
   * its way. */
  int level = loops_shutdown();
  if (level >= 2)
    conn_close(conn, "server shutdown timed out");
  else if (level == 1 || reload_conn_uses_retired(conn))
    conn_drain(conn);
}

static void on_move_handle_closed(uv_handle_t *h) {
  struct connection *conn = h->data;
  conn->refs--;
  if (--conn->move_handles > 0)
    return;
  conn->msg.fn = on_arrived;
  loop_post(conn->move_to, &conn->msg);
}

/* Output idle: nothing queued, being written, or held back. */
static bool output_idle(const struct connection *conn) {
  return conn->writes_pending == 0 && conn->outq_nbufs == 0 && conn->outq_n_done == 0 &&
         !conn->outq_listed && !conn->splice_head && !conn->splice_cur && !conn->streaming &&
         conn->inflight == 0 && !conn->tls_out_len;
}

/* Hands the socket over once the replies are out: a duplicate goes to the
 * loop, and the handles here close.  Until they have, and the loop has
 * opened its own, neither side touches the connection's I/O. */
bool conn_move_step(struct connection *conn) {
  if (!conn->move_to)
    return false;
  if (conn->reading) {
    uv_read_stop(&conn->sock.stream);
    conn->reading = false;
  }
  if (!output_idle(conn) || conn->move_handles)
    return true;
  uv_os_fd_t fd;
  int dup = -1;
  if (uv_fileno(&conn->sock.handle, &fd) == 0)
    dup = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (dup < 0) {
    log_msg(LOG_LEVEL_WARNING, "%s: cannot move to event loop %u (%s): served by the main loop",
            conn->peer, conn->move_to->index, strerror(errno));
    atomic_fetch_sub(&conn->move_to->serving, 1);
    atomic_fetch_add(&conn->loop->serving, 1);
    conn->serving_loop = conn->loop;
    conn->move_to = NULL;
    conn_direct_allow(conn);
    return false;
  }
  conn->move_fd = dup;
  uv_timer_stop(&conn->timer);
  list_remove(conn->loop, conn);
  conn->moved_prev = NULL;
  conn->moved_next = server.moved;
  if (server.moved)
    server.moved->moved_prev = conn;
  server.moved = conn;
  loops_main_wait(true);
  conn->move_handles = 2;
  conn->refs++; /* the move's own, until it arrives */
  uv_close(&conn->sock.handle, on_move_handle_closed);
  uv_close((uv_handle_t *)&conn->timer, on_move_handle_closed);
  return true;
}

void conn_move(struct connection *conn, struct loop *l) {
  conn->move_to = l;
  conn->serving_loop = l;
  /* No worker writes to the old socket from now on. */
  pthread_mutex_lock(&conn->direct_lock);
  conn->direct_ok = false;
  conn->direct_fd = -1;
  pthread_mutex_unlock(&conn->direct_lock);
}

/* Server shutdown: connections still negotiating are closed at once; those in
 * transmission stop reading and close when their requests are answered.
 * force closes everything (in-flight work finishes in the background). */
static void shutdown_list(struct connection *list, bool force) {
  struct connection *next;
  for (struct connection *c = list; c; c = next) {
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

static void shutdown_loop(struct loop *l, uintptr_t force) {
  shutdown_list(l->conns, force != 0);
}

void conns_shutdown(struct server *srv, bool force) {
  (void)srv;
  loops_set_shutdown(force ? 2 : 1);
  shutdown_list(loops_main()->conns, force);
  loops_each_other(shutdown_loop, force);
}
