/* acl.h: allow lists of clients, by network (IPv4 and IPv6 CIDR) or by
 * identity: the subject DN of a verified TLS client certificate (dn:GLOB),
 * a TLS PSK identity (psk:NAME), the user or group id of a Unix-socket
 * client (uid:N, gid:N).
 *
 * A list admits a client that one of its rules matches.  Address rules
 * restrict TCP clients only: a list of address rules alone admits every
 * client without an address (Unix socket, stdio), as the socket's own
 * permissions guard those.  A list with an identity rule admits only the
 * clients some rule matches.  An empty list admits everyone. */
#ifndef VHDNBD_ACL_H
#define VHDNBD_ACL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

enum acl_kind { ACL_CIDR, ACL_DN, ACL_PSK, ACL_UID, ACL_GID };

#define ACL_TEXT_MAX 256

/* Holds no pointers: lists are copied and joined with memcpy. */
struct acl_entry {
  enum acl_kind kind;
  int family; /* ACL_CIDR: AF_INET or AF_INET6 */
  uint8_t addr[16];
  unsigned prefix;
  unsigned long id;          /* ACL_UID, ACL_GID */
  char text[ACL_TEXT_MAX];   /* the entry as written */
  unsigned value;            /* ACL_DN, ACL_PSK: where the pattern or identity
                                starts in text (after "dn:" or "psk:") */
};

struct acl {
  struct acl_entry *entries;
  size_t n;
};

/* Who a client is, as far as known when a list is checked. */
struct acl_peer {
  const struct sockaddr *addr; /* TCP peers; NULL otherwise */
  bool has_cred;               /* Unix-socket peer credentials (SO_PEERCRED) */
  uid_t uid;
  gid_t gid;
  bool tls;                    /* the TLS handshake is done: dn, psk are final */
  const char *dn;              /* subject DN of a verified client certificate */
  const char *psk;             /* PSK identity */
};

enum acl_verdict {
  ACL_ALLOW,
  ACL_DENY,
  ACL_AFTER_TLS, /* no rule matches yet, but a dn: or psk: rule may once the
                    client has negotiated TLS */
};

/* Adds an entry or a comma-separated list of them: ADDR[/PREFIX],
 * dn:GLOB, psk:IDENTITY, uid:N, gid:N.  A DN holds commas and spaces, so a
 * dn: entry takes the rest of spec, whatever it holds.  -EINVAL on a
 * malformed entry (err names it). */
int acl_add(struct acl *acl, const char *spec, char *err, size_t errlen);
enum acl_verdict acl_check(const struct acl *acl, const struct acl_peer *peer);
/* acl_check for a peer known only by its address (sa NULL or AF_UNIX: a
 * client without one): whether it is admitted now. */
bool acl_allows(const struct acl *acl, const struct sockaddr *sa);
/* Whether the list has a rule of this kind. */
bool acl_has(const struct acl *acl, enum acl_kind kind);
/* The list as written, "a, b, c", cut to fit len. */
void acl_describe(const struct acl *acl, char *buf, size_t len);
void acl_free(struct acl *acl);

#endif
