/* tls-psk-client PORT USERNAME HEXKEY PRIORITY: connects to 127.0.0.1:PORT,
 * negotiates NBD_OPT_STARTTLS in the clear, then tries a TLS-PSK handshake
 * with the given GnuTLS priority string (to choose the key exchange).
 * Prints "ok KX" with the key exchange used, or "refused: REASON"; exits 0
 * either way, 1 when the NBD part itself goes wrong. */
#include "config.h"

#include <arpa/inet.h>
#include <endian.h>
#include <netinet/in.h>
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

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s PORT USERNAME HEXKEY PRIORITY\n", argv[0]);
    return 2;
  }
  int fd = socket(AF_INET, SOCK_STREAM, 0);
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
  gnutls_session_t s;
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
  if (r < 0)
    printf("refused: %s\n", gnutls_strerror(r));
  else
    printf("ok %s\n", gnutls_kx_get_name(gnutls_kx_get(s)));
  gnutls_deinit(s);
  gnutls_psk_free_client_credentials(cred);
  gnutls_global_deinit();
  close(fd);
  return 0;
}
