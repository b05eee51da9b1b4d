/* acl.h: allow lists of client networks (IPv4 and IPv6 CIDR). */
#ifndef VHDNBD_ACL_H
#define VHDNBD_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct acl_entry {
  int family; /* AF_INET or AF_INET6 */
  uint8_t addr[16];
  unsigned prefix;
};

struct acl {
  struct acl_entry *entries;
  size_t n;
};

/* Adds "ADDR[/PREFIX]" or a comma-separated list of them.  -EINVAL on a
 * malformed entry (err names it). */
int acl_add(struct acl *acl, const char *spec, char *err, size_t errlen);
/* An empty list allows everyone.  IPv4-mapped IPv6 addresses match IPv4
 * entries.  Unix-socket peers (family AF_UNIX) are always allowed. */
bool acl_allows(const struct acl *acl, const struct sockaddr *sa);
void acl_free(struct acl *acl);

#endif
