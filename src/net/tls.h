/* tls.h: TLS for NBD connections with GnuTLS, over an in-memory transport.
 *
 * The event loop owns the socket: ciphertext read from it is fed in with
 * tls_session_feed, ciphertext to send comes out through the send callback.
 * Nothing here blocks or touches a file descriptor after loading credentials,
 * so the loop thread can drive it. */
#ifndef VHDNBD_TLS_H
#define VHDNBD_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct tls_creds;
struct tls_session;

/* Loads X.509 credentials from cert_dir (server-cert.pem, server-key.pem, and
 * ca-cert.pem which, when verify_peer is set, client certificates must chain
 * to) or PSK credentials from psk_file (psktool format: identity:hexkey).
 * Exactly one of cert_dir and psk_file is non-NULL; the PSK file is read and
 * checked at once (GnuTLS itself reads it per handshake).  On error writes a
 * message naming the file into err and returns a negative errno. */
int tls_creds_load(const char *cert_dir, const char *psk_file, bool verify_peer,
                   struct tls_creds **out, char *err, size_t errlen);
void tls_creds_free(struct tls_creds *creds);

typedef void (*tls_send_fn)(void *opaque, const uint8_t *data, size_t len);

int tls_session_new(struct tls_creds *creds, tls_send_fn send, void *opaque,
                    struct tls_session **out);
void tls_session_free(struct tls_session *s);
/* Queues ciphertext received from the peer.  Returns 0 or -ENOMEM. */
int tls_session_feed(struct tls_session *s, const uint8_t *data, size_t len);
/* Drives the handshake: 1 done, 0 needs more input, < 0 failed (message in
 * tls_session_error). */
int tls_session_handshake(struct tls_session *s);
/* Decrypts into buf: > 0 bytes, 0 needs more input, -EPIPE peer closed the
 * TLS session, other < 0 failure. */
ssize_t tls_session_read(struct tls_session *s, uint8_t *buf, size_t len);
/* True when decrypted bytes are buffered inside GnuTLS. */
bool tls_session_pending(struct tls_session *s);
/* Encrypts; ciphertext leaves through the send callback.  0 or < 0. */
int tls_session_write(struct tls_session *s, const uint8_t *data, size_t len);
/* Sends close_notify. */
void tls_session_bye(struct tls_session *s);
const char *tls_session_error(const struct tls_session *s);
/* Human description of the peer ("PSK identity alice", "x509 CN=..."). */
const char *tls_session_peer(const struct tls_session *s);
/* What the peer proved in the handshake, NULL when nothing (or before the
 * handshake is done): the subject DN of its certificate as GnuTLS prints
 * it (RFC 4514, most specific first: "CN=alice,O=Example Corp"), only when
 * client certificates are verified against the CA; its PSK identity. */
const char *tls_session_peer_dn(const struct tls_session *s);
const char *tls_session_psk_identity(const struct tls_session *s);
/* The peer's identity for keying per-client state: the PSK identity, else
 * the verified certificate's DN; NULL when it proved none. */
const char *tls_session_identity(const struct tls_session *s);

#endif
