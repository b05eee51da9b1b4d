/* conn-tls.c: TLS under a connection after STARTTLS: ciphertext in and out
 * of the session, the handshake, and close_notify at the end. */
#include "config.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cleanup.h"
#include "conn-internal.h"
#include "log.h"
#include "server.h"

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

/* Sends ciphertext GnuTLS produced on its own (handshake, alerts, tickets). */
static void tls_flush(struct connection *conn) {
  if (conn->tls_out_len == 0 && !conn->tls_out_failed)
    return;
  conn_flush_output(conn); /* may have sent the pending ciphertext already */
  if (conn->closing || (conn->tls_out_len == 0 && !conn->tls_out_failed))
    return;
  conn_write_tls_records(conn);
}

int conn_tls_pull(struct connection *conn) {
  if (!conn->tls || conn->tls_handshaking)
    return 0;
  for (;;) {
    conn_inbuf_compact(conn);
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
      conn_on_eof(conn);
      return -EPIPE;
    }
    log_msg(LOG_LEVEL_INFO, "%s: %s", conn->peer, tls_session_error(conn->tls));
    conn_close(conn, "TLS error");
    return (int)n;
  }
}

void conn_tls_read(struct connection *conn, const uint8_t *data, size_t len) {
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


bool conn_tls_bye(struct connection *conn) {
  /* An orderly end of a TLS session says so (close_notify), so the client
   * can tell it from a connection cut by an attacker. */
  if (conn->tls && !conn->tls_handshaking && !conn->tls_bye_sent) {
    conn->tls_bye_sent = true;
    tls_session_bye(conn->tls);
    tls_flush(conn);
    if (conn->closing || conn->writes_pending > 0)
      return true;
  }
  return false;
}
