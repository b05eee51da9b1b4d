/* tls-psk-client PORT USERNAME HEXKEY PRIORITY [MODE]: connects to
 * 127.0.0.1:PORT, negotiates NBD_OPT_STARTTLS in the clear, then tries a
 * TLS-PSK handshake with the given GnuTLS priority string (to choose the key
 * exchange).  Prints "ok KX" with the key exchange used, or "refused:
 * REASON"; exits 0 either way, 1 when the NBD part itself goes wrong.
 *
 * With MODE, once the handshake is done: NBD_OPT_GO for the default export
 * and a 4 KiB READ at 0, then
 *   keyupdate  a TLS 1.3 KeyUpdate and a second READ, in one TCP segment;
 *   alert      a warning alert (user_canceled) and a second READ, likewise.
 * Prints "answered VERSION" (TLS1.3, TLS1.2) when the second READ was
 * answered; exits 1 when a reply does not come (30 s) or is wrong. */
#include "config.h"

#include <arpa/inet.h>
#include <endian.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gnutls/gnutls.h>

static int read_all(int fd, void *buf, size_t len) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = read(fd, p, len);
    if (n <= 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static gnutls_session_t s;
static int fd;

static int tls_read_all(void *buf, size_t len) {
  uint8_t *p = buf;
  while (len > 0) {
    ssize_t n = gnutls_record_recv(s, p, len);
    if (n == GNUTLS_E_AGAIN || n == GNUTLS_E_INTERRUPTED)
      continue;
    if (n <= 0)
      return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int tls_write_all(const void *buf, size_t len) {
  return gnutls_record_send(s, buf, len) == (ssize_t)len ? 0 : -1;
}

static void read_request(uint8_t req[28], uint64_t cookie) {
  static const uint8_t magic[4] = {0x25, 0x60, 0x95, 0x13};
  uint64_t c = htobe64(cookie);
  uint32_t len = htobe32(4096);
  memset(req, 0, 28);
  memcpy(req, magic, 4); /* flags 0, type 0 (READ), offset 0 */
  memcpy(req + 8, &c, 8);
  memcpy(req + 24, &len, 4);
}

/* A simple reply to READ cookie, without error, and its 4 KiB. */
static int read_reply(uint64_t cookie) {
  uint8_t rep[16 + 4096];
  if (tls_read_all(rep, sizeof rep) < 0)
    return -1;
  uint32_t magic, err;
  uint64_t c;
  memcpy(&magic, rep, 4);
  memcpy(&err, rep + 4, 4);
  memcpy(&c, rep + 8, 8);
  return be32toh(magic) == 0x67446698 && err == 0 && be64toh(c) == cookie ? 0 : -1;
}

static int go_default_export(void) {
  uint8_t opt[16 + 6] = {0};
  uint64_t magic = htobe64(0x49484156454F5054ull);
  uint32_t go = htobe32(7), len = htobe32(6);
  memcpy(opt, &magic, 8);
  memcpy(opt + 8, &go, 4);
  memcpy(opt + 12, &len, 4); /* name length 0, no info requests */
  if (tls_write_all(opt, sizeof opt) < 0)
    return -1;
  for (;;) {
    uint8_t rep[20], data[1024];
    uint32_t type, rlen;
    if (tls_read_all(rep, sizeof rep) < 0)
      return -1;
    memcpy(&type, rep + 12, 4);
    memcpy(&rlen, rep + 16, 4);
    if (be32toh(rlen) > sizeof data || tls_read_all(data, be32toh(rlen)) < 0)
      return -1;
    if (be32toh(type) == 1) /* NBD_REP_ACK */
      return 0;
    if (be32toh(type) != 3) /* NBD_REP_INFO */
      return -1;
  }
}

static int post_handshake(const char *mode) {
  uint8_t req[28];
  if (go_default_export() < 0) {
    fprintf(stderr, "NBD_OPT_GO failed\n");
    return 1;
  }
  read_request(req, 1);
  if (tls_write_all(req, sizeof req) < 0 || read_reply(1) < 0) {
    fprintf(stderr, "the first READ was not answered\n");
    return 1;
  }
  read_request(req, 2);
  int one = 1, zero = 0;
  setsockopt(fd, IPPROTO_TCP, TCP_CORK, &one, sizeof one);
  int r = strcmp(mode, "keyupdate") == 0
              ? gnutls_session_key_update(s, 0)
              : gnutls_alert_send(s, GNUTLS_AL_WARNING, GNUTLS_A_USER_CANCELED);
  if (r < 0 || tls_write_all(req, sizeof req) < 0) {
    fprintf(stderr, "%s: %s\n", mode, gnutls_strerror(r));
    return 1;
  }
  setsockopt(fd, IPPROTO_TCP, TCP_CORK, &zero, sizeof zero);
  if (read_reply(2) < 0) {
    printf("not answered\n");
    return 1;
  }
  printf("answered %s\n", gnutls_protocol_get_name(gnutls_protocol_get_version(s)));
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 5 && argc != 6) {
    fprintf(stderr, "usage: %s PORT USERNAME HEXKEY PRIORITY [keyupdate|alert]\n",
            argv[0]);
    return 2;
  }
  fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
    perror("connect");
    return 1;
  }
  uint8_t greeting[18], reply[20];
  if (read_all(fd, greeting, sizeof greeting) < 0) {
    fprintf(stderr, "no NBD greeting\n");
    return 1;
  }
  uint32_t flags = htobe32(3); /* FIXED_NEWSTYLE | NO_ZEROES */
  uint8_t opt[16];
  uint64_t magic = htobe64(0x49484156454F5054ull);
  uint32_t starttls = htobe32(5), zero = 0;
  memcpy(opt, &magic, 8);
  memcpy(opt + 8, &starttls, 4);
  memcpy(opt + 12, &zero, 4);
  if (write(fd, &flags, 4) != 4 || write(fd, opt, sizeof opt) != (ssize_t)sizeof opt ||
      read_all(fd, reply, sizeof reply) < 0) {
    fprintf(stderr, "NBD_OPT_STARTTLS exchange failed\n");
    return 1;
  }
  uint32_t type;
  memcpy(&type, reply + 12, 4);
  if (be32toh(type) != 1) {
    fprintf(stderr, "NBD_OPT_STARTTLS answered with reply type 0x%x\n", be32toh(type));
    return 1;
  }

  gnutls_global_init();
  gnutls_psk_client_credentials_t cred;
  gnutls_datum_t key = {.data = (unsigned char *)argv[3], .size = (unsigned)strlen(argv[3])};
  const char *errpos;
  if (gnutls_psk_allocate_client_credentials(&cred) < 0 ||
      gnutls_psk_set_client_credentials(cred, argv[2], &key, GNUTLS_PSK_KEY_HEX) < 0 ||
      gnutls_init(&s, GNUTLS_CLIENT) < 0 ||
      gnutls_priority_set_direct(s, argv[4], &errpos) < 0 ||
      gnutls_credentials_set(s, GNUTLS_CRD_PSK, cred) < 0) {
    fprintf(stderr, "GnuTLS setup failed (priority '%s')\n", argv[4]);
    return 1;
  }
  gnutls_transport_set_int(s, fd);
  gnutls_handshake_set_timeout(s, 10000);
  int r;
  do
    r = gnutls_handshake(s);
  while (r < 0 && !gnutls_error_is_fatal(r));
  int rc = 0;
  if (r < 0) {
    printf("refused: %s\n", gnutls_strerror(r));
  } else if (argc == 6) {
    /* Every read of the replies ends within 30 s: a server that does not
     * answer fails the run rather than hanging it. */
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    rc = post_handshake(argv[5]);
  } else {
    printf("ok %s\n", gnutls_kx_get_name(gnutls_kx_get(s)));
  }
  gnutls_deinit(s);
  gnutls_psk_free_client_credentials(cred);
  gnutls_global_deinit();
  close(fd);
  return rc;
}
