/* tls.c: GnuTLS sessions over a memory transport (see tls.h). */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <gnutls/gnutls.h>
#include <gnutls/x509.h>

#include "tls.h"

struct tls_creds {
  bool psk;
  bool verify_peer;
  gnutls_certificate_credentials_t x509;
  gnutls_psk_server_credentials_t psk_cred;
  gnutls_priority_t priority;
};

struct tls_session {
  gnutls_session_t gs;
  struct tls_creds *creds;
  tls_send_fn send;
  void *opaque;
  uint8_t *in;           /* ciphertext not yet consumed by GnuTLS */
  size_t in_start, in_end, in_cap;
  char error[256];
  char peer[256];
  char *dn;  /* verified client certificate's subject, or NULL */
  char *psk; /* PSK identity, or NULL */
};

static int global_refs;

static int set_err(char *err, size_t len, int e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int set_err(char *err, size_t len, int e, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, len, fmt, ap);
  va_end(ap);
  return e;
}

/* GnuTLS reads the key file only when a client connects: read it now, so
 * that a file that cannot be read (a directory, no permission) or holds no
 * usable key stops startup rather than every handshake. */
static int psk_file_check(const char *path, char *err, size_t errlen) {
  FILE *f = fopen(path, "r");
  if (!f)
    return set_err(err, errlen, -errno, "%s: %s", path, strerror(errno));
  char line[4096];
  unsigned lineno = 0, keys = 0;
  int r = 0;
  while (r == 0 && fgets(line, sizeof line, f)) {
    lineno++;
    size_t n = strlen(line);
    while (n > 0 && isspace((unsigned char)line[n - 1]))
      line[--n] = '\0';
    if (n == 0)
      continue;
    char *colon = strchr(line, ':');
    size_t hex = colon ? strspn(colon + 1, "0123456789abcdefABCDEF") : 0;
    if (!colon || colon == line || hex == 0 || hex % 2 || colon[1 + hex] != '\0')
      r = set_err(err, errlen, -EINVAL, "%s:%u: expected IDENTITY:HEXKEY (as psktool writes)",
                  path, lineno);
    else
      keys++;
  }
  if (r == 0 && ferror(f))
    r = set_err(err, errlen, -EIO, "%s: %s", path, strerror(errno));
  else if (r == 0 && keys == 0)
    r = set_err(err, errlen, -EINVAL, "%s: no keys in the file", path);
  fclose(f);
  return r;
}

int tls_creds_load(const char *cert_dir, const char *psk_file, bool verify_peer,
                   struct tls_creds **out, char *err, size_t errlen) {
  struct tls_creds *c = calloc(1, sizeof *c);
  if (!c)
    return set_err(err, errlen, -ENOMEM, "out of memory");
  if (global_refs++ == 0)
    gnutls_global_init();
  int r;
  const char *prio;
  if (psk_file) {
    c->psk = true;
    if ((r = psk_file_check(psk_file, err, errlen)) < 0)
      goto fail;
    if ((r = gnutls_psk_allocate_server_credentials(&c->psk_cred)) < 0 ||
        (r = gnutls_psk_set_server_credentials_file(c->psk_cred, psk_file)) < 0) {
      r = set_err(err, errlen, -EINVAL, "%s: cannot load PSK keys: %s", psk_file,
                  gnutls_strerror(r));
      goto fail;
    }
    gnutls_psk_set_server_known_dh_params(c->psk_cred, GNUTLS_SEC_PARAM_MEDIUM);
    /* Only key exchanges with (EC)DHE: with plain PSK, whoever learns a key
     * later can decrypt every session recorded with it. */
    prio = "NORMAL:+ECDHE-PSK:+DHE-PSK";
  } else {
    char cert[4096], key[4096], ca[4096];
    snprintf(cert, sizeof cert, "%s/server-cert.pem", cert_dir);
    snprintf(key, sizeof key, "%s/server-key.pem", cert_dir);
    snprintf(ca, sizeof ca, "%s/ca-cert.pem", cert_dir);
    /* GnuTLS says only "Error while reading file" for either file. */
    const char *const needed[] = {cert, key};
    for (size_t i = 0; i < 2; i++) {
      if (access(needed[i], R_OK) != 0) {
        r = set_err(err, errlen, -errno, "%s: %s", needed[i], strerror(errno));
        goto fail;
      }
    }
    if ((r = gnutls_certificate_allocate_credentials(&c->x509)) < 0) {
      r = set_err(err, errlen, -ENOMEM, "GnuTLS: %s", gnutls_strerror(r));
      goto fail;
    }
    if (access(ca, R_OK) == 0) {
      r = gnutls_certificate_set_x509_trust_file(c->x509, ca, GNUTLS_X509_FMT_PEM);
      if (r < 0) {
        r = set_err(err, errlen, -EINVAL, "%s: %s", ca, gnutls_strerror(r));
        goto fail;
      }
    } else if (verify_peer) {
      r = set_err(err, errlen, -ENOENT, "%s: needed to verify client certificates: %s", ca,
                  strerror(errno));
      goto fail;
    }
    /* Revoked client certificates: ca-crl.pem, when present, as QEMU reads it. */
    char crl[4096];
    snprintf(crl, sizeof crl, "%s/ca-crl.pem", cert_dir);
    if (access(crl, F_OK) == 0) {
      r = gnutls_certificate_set_x509_crl_file(c->x509, crl, GNUTLS_X509_FMT_PEM);
      if (r < 0) {
        r = set_err(err, errlen, -EINVAL, "%s: cannot load the revocation list: %s", crl,
                    gnutls_strerror(r));
        goto fail;
      }
    }
    r = gnutls_certificate_set_x509_key_file(c->x509, cert, key, GNUTLS_X509_FMT_PEM);
    if (r < 0) {
      r = set_err(err, errlen, -EINVAL, "%s, %s: cannot load the certificate and key: %s", cert,
                  key, gnutls_strerror(r));
      goto fail;
    }
    gnutls_certificate_set_known_dh_params(c->x509, GNUTLS_SEC_PARAM_MEDIUM);
    prio = "NORMAL";
  }
  c->verify_peer = verify_peer;
  const char *errpos;
  if ((r = gnutls_priority_init(&c->priority, prio, &errpos)) < 0) {
    r = set_err(err, errlen, -EINVAL, "GnuTLS priority \"%s\": %s", prio, gnutls_strerror(r));
    goto fail;
  }
  *out = c;
  return 0;
fail:
  tls_creds_free(c);
  return r;
}

void tls_creds_free(struct tls_creds *c) {
  if (!c)
    return;
  if (c->x509)
    gnutls_certificate_free_credentials(c->x509);
  if (c->psk_cred)
    gnutls_psk_free_server_credentials(c->psk_cred);
  if (c->priority)
    gnutls_priority_deinit(c->priority);
  free(c);
  if (--global_refs == 0)
    gnutls_global_deinit();
}

static ssize_t pull(gnutls_transport_ptr_t ptr, void *buf, size_t len) {
  struct tls_session *s = ptr;
  size_t avail = s->in_end - s->in_start;
  if (avail == 0) {
    gnutls_transport_set_errno(s->gs, EAGAIN);
    return -1;
  }
  size_t n = avail < len ? avail : len;
  memcpy(buf, s->in + s->in_start, n);
  s->in_start += n;
  if (s->in_start == s->in_end)
    s->in_start = s->in_end = 0;
  return (ssize_t)n;
}

static ssize_t push(gnutls_transport_ptr_t ptr, const void *buf, size_t len) {
  struct tls_session *s = ptr;
  s->send(s->opaque, buf, len);
  return (ssize_t)len;
}

static ssize_t push_vec(gnutls_transport_ptr_t ptr, const giovec_t *iov, int n) {
  struct tls_session *s = ptr;
  size_t total = 0;
  for (int i = 0; i < n; i++)
    total += iov[i].iov_len;
  uint8_t *buf = malloc(total ? total : 1);
  if (!buf) {
    gnutls_transport_set_errno(s->gs, ENOMEM);
    return -1;
  }
  size_t pos = 0;
  for (int i = 0; i < n; i++) {
    memcpy(buf + pos, iov[i].iov_base, iov[i].iov_len);
    pos += iov[i].iov_len;
  }
  s->send(s->opaque, buf, total);
  free(buf);
  return (ssize_t)total;
}

int tls_session_new(struct tls_creds *creds, tls_send_fn send, void *opaque,
                    struct tls_session **out) {
  struct tls_session *s = calloc(1, sizeof *s);
  if (!s)
    return -ENOMEM;
  s->creds = creds;
  s->send = send;
  s->opaque = opaque;
  int r = gnutls_init(&s->gs, GNUTLS_SERVER | GNUTLS_NONBLOCK);
  if (r < 0) {
    free(s);
    return -ENOMEM;
  }
  gnutls_priority_set(s->gs, creds->priority);
  if (creds->psk) {
    gnutls_credentials_set(s->gs, GNUTLS_CRD_PSK, creds->psk_cred);
  } else {
    gnutls_credentials_set(s->gs, GNUTLS_CRD_CERTIFICATE, creds->x509);
    if (creds->verify_peer) {
      gnutls_certificate_server_set_request(s->gs, GNUTLS_CERT_REQUIRE);
      gnutls_session_set_verify_cert(s->gs, NULL, 0);
    }
  }
  gnutls_transport_set_ptr(s->gs, s);
  gnutls_transport_set_pull_function(s->gs, pull);
  gnutls_transport_set_push_function(s->gs, push);
  gnutls_transport_set_vec_push_function(s->gs, push_vec);
  *out = s;
  return 0;
}

void tls_session_free(struct tls_session *s) {
  if (!s)
    return;
  gnutls_deinit(s->gs);
  free(s->in);
  free(s->dn);
  free(s->psk);
  free(s);
}

int tls_session_feed(struct tls_session *s, const uint8_t *data, size_t len) {
  if (s->in_end + len > s->in_cap) {
    if (s->in_start > 0) {
      memmove(s->in, s->in + s->in_start, s->in_end - s->in_start);
      s->in_end -= s->in_start;
      s->in_start = 0;
    }
    if (s->in_end + len > s->in_cap) {
      size_t cap = s->in_cap ? s->in_cap : 32768;
      while (cap < s->in_end + len)
        cap *= 2;
      uint8_t *n = realloc(s->in, cap);
      if (!n)
        return -ENOMEM;
      s->in = n;
      s->in_cap = cap;
    }
  }
  memcpy(s->in + s->in_end, data, len);
  s->in_end += len;
  return 0;
}

static void describe_peer(struct tls_session *s) {
  if (s->creds->psk) {
    const char *id = gnutls_psk_server_get_username(s->gs);
    snprintf(s->peer, sizeof s->peer, "PSK identity %s", id ? id : "?");
    s->psk = id ? strdup(id) : NULL;
    return;
  }
  unsigned n = 0;
  const gnutls_datum_t *certs = gnutls_certificate_get_peers(s->gs, &n);
  snprintf(s->peer, sizeof s->peer, "x509 (no client certificate)");
  if (!certs || n == 0)
    return;
  gnutls_x509_crt_t crt;
  if (gnutls_x509_crt_init(&crt) < 0)
    return;
  gnutls_datum_t dn = {NULL, 0};
  if (gnutls_x509_crt_import(crt, &certs[0], GNUTLS_X509_FMT_DER) == 0 &&
      gnutls_x509_crt_get_dn3(crt, &dn, 0) == 0) {
    snprintf(s->peer, sizeof s->peer, "x509 %s", (const char *)dn.data);
    /* Without verification the certificate proves nothing: anyone can
     * make one with any subject. */
    if (s->creds->verify_peer)
      s->dn = strdup((const char *)dn.data);
    gnutls_free(dn.data);
  }
  gnutls_x509_crt_deinit(crt);
}

int tls_session_handshake(struct tls_session *s) {
  int r = gnutls_handshake(s->gs);
  if (r == GNUTLS_E_SUCCESS) {
    describe_peer(s);
    return 1;
  }
  if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
    return 0;
  if (!gnutls_error_is_fatal(r))
    return 0;
  snprintf(s->error, sizeof s->error, "TLS handshake failed: %s", gnutls_strerror(r));
  return -EPROTO;
}

ssize_t tls_session_read(struct tls_session *s, uint8_t *buf, size_t len) {
  for (;;) {
    size_t held = s->in_end - s->in_start;
    ssize_t r = gnutls_record_recv(s->gs, buf, len);
    if (r > 0)
      return r;
    if (r == 0)
      return -EPIPE;
    /* After a post-handshake message (a TLS 1.3 KeyUpdate, say) GnuTLS
     * answers AGAIN with the records behind it still in memory, and no
     * socket read may come to ask again: go on while it took bytes and
     * some are left.  Each turn takes some, so this ends. */
    if (r == GNUTLS_E_AGAIN) {
      size_t left = s->in_end - s->in_start;
      if (left > 0 && left < held)
        continue;
      return 0;
    }
    /* A warning alert (user_canceled, say) ends nothing; close_notify
     * comes back as 0 above. */
    if (r == GNUTLS_E_WARNING_ALERT_RECEIVED || r == GNUTLS_E_INTERRUPTED ||
        r == GNUTLS_E_REHANDSHAKE)
      continue;
    if (r == GNUTLS_E_PREMATURE_TERMINATION)
      return -EPIPE;
    snprintf(s->error, sizeof s->error, "TLS receive failed: %s", gnutls_strerror((int)r));
    return -EPROTO;
  }
}

bool tls_session_pending(struct tls_session *s) { return gnutls_record_check_pending(s->gs) > 0; }

int tls_session_write(struct tls_session *s, const uint8_t *data, size_t len) {
  while (len > 0) {
    ssize_t r = gnutls_record_send(s->gs, data, len);
    if (r == GNUTLS_E_AGAIN || r == GNUTLS_E_INTERRUPTED)
      continue; /* push never blocks: cannot loop forever */
    if (r < 0) {
      snprintf(s->error, sizeof s->error, "TLS send failed: %s", gnutls_strerror((int)r));
      return -EPROTO;
    }
    data += r;
    len -= (size_t)r;
  }
  return 0;
}

void tls_session_bye(struct tls_session *s) { gnutls_bye(s->gs, GNUTLS_SHUT_WR); }
const char *tls_session_error(const struct tls_session *s) { return s->error; }
const char *tls_session_peer(const struct tls_session *s) { return s->peer; }
const char *tls_session_peer_dn(const struct tls_session *s) { return s->dn; }
const char *tls_session_psk_identity(const struct tls_session *s) { return s->psk; }
/* For overlay keys: the PSK identity, else the verified certificate's DN. */
const char *tls_session_identity(const struct tls_session *s) {
  return s->psk ? s->psk : s->dn;
}
