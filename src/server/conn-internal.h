/* conn-internal.h: what the files of one client connection share
 * (connection.c, conn-input.c, conn-tls.c, conn-output.c); the rest of the
 * server sees only the conn_* calls in server.h.  The connection's loop's
 * thread only. */
#ifndef VHDNBD_CONN_INTERNAL_H
#define VHDNBD_CONN_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "server.h"

/* conn-input.c */
/* Feeds buffered input to the current reader until it needs more bytes or
 * must stop (back-pressure, close, DISC); then starts or stops reading. */
void conn_process(struct connection *conn);
/* Starts or stops reading the socket as the connection's state allows, and
 * closes a draining connection with nothing left to do. */
void conn_update_reading(struct connection *conn);
/* No more input will come (EOF, or the TLS session ended). */
void conn_on_eof(struct connection *conn);
/* Makes room at the end of inbuf: rewinds an empty buffer, and moves what
 * is left to the front once less than 4 KiB is free behind it. */
void conn_inbuf_compact(struct connection *conn);

/* connection.c */
/* While the connection moves to another loop (conn_move): stops its
 * input, and hands the socket over once its output is idle.  Returns
 * whether it is moving, and so must not read. */
bool conn_move_step(struct connection *conn);

/* conn-tls.c */
/* Decrypts what fits into inbuf.  Returns < 0 when the connection ended. */
int conn_tls_pull(struct connection *conn);
/* Ciphertext read from the socket. */
void conn_tls_read(struct connection *conn, const uint8_t *data, size_t len);
/* Sends close_notify once, at the orderly end of a TLS session.  Returns
 * true while the caller must wait for it to be written before closing. */
bool conn_tls_bye(struct connection *conn);

/* conn-output.c */
/* Writes the connection's queued replies now (see conn_flush_all). */
void conn_flush_output(struct connection *conn);
/* Before a close or a shutdown, after conn_flush_output: no worker writes
 * to the socket any more, and replies that could not be written (held
 * behind a reply a worker wrote in part) are cancelled. */
void conn_output_stop(struct connection *conn);
/* Writes the ciphertext waiting in tls_out (records GnuTLS produced on its
 * own: handshake, alerts, tickets) as a write with no reply of its own. */
void conn_write_tls_records(struct connection *conn);

#endif
