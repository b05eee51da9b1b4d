/* same-client.c: grouping peer addresses into clients (see same-client.h). */
#include "config.h"

#include <netinet/in.h>
#include <stdint.h>
#include <string.h>

#include "same-client.h"

/* The client part of an address: 4 bytes for IPv4 (mapped or not), the
 * first 8 for IPv6.  Returns its length, 0 when the family has none. */
static size_t client_part(const struct sockaddr *sa, const uint8_t **p) {
  if (sa->sa_family == AF_INET) {
    *p = (const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr;
    return 4;
  }
  if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a6 = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a6)) {
      *p = a6->s6_addr + 12;
      return 4;
    }
    *p = a6->s6_addr;
    return 8;
  }
  return 0;
}

bool same_client(const struct sockaddr *a, const struct sockaddr *b) {
  const uint8_t *pa = NULL, *pb = NULL;
  size_t la = client_part(a, &pa), lb = client_part(b, &pb);
  return la != 0 && la == lb && memcmp(pa, pb, la) == 0;
}
