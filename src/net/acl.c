/* acl.c: allow lists by network and by identity (see acl.h). */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fnmatch.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"

static int parse_cidr(struct acl_entry *e, const char *item, char *err, size_t errlen) {
  char buf[ACL_TEXT_MAX];
  snprintf(buf, sizeof buf, "%s", item);
  char *slash = strchr(buf, '/');
  if (slash)
    *slash = '\0';
  if (inet_pton(AF_INET, buf, e->addr) == 1) {
    e->family = AF_INET;
    e->prefix = 32;
  } else if (inet_pton(AF_INET6, buf, e->addr) == 1) {
    e->family = AF_INET6;
    e->prefix = 128;
  } else {
    snprintf(err, errlen,
             "allow list entry \"%s\": not an IPv4 or IPv6 address, nor dn:, psk:, uid: or gid:",
             item);
    return -EINVAL;
  }
  if (slash) {
    char *end;
    unsigned long p = strtoul(slash + 1, &end, 10);
    if (!slash[1] || *end || p > e->prefix) {
      snprintf(err, errlen, "allow list entry \"%s\": bad prefix length", item);
      return -EINVAL;
    }
    e->prefix = (unsigned)p;
  }
  return 0;
}

static int parse_id(struct acl_entry *e, const char *item, char *err, size_t errlen) {
  const char *v = item + 4;
  char *end;
  errno = 0;
  unsigned long id = strtoul(v, &end, 10);
  /* (uid_t)-1 means "no id" to the kernel: no client has it. */
  if (!*v || *end || *v == '-' || *v == '+' || errno || id >= UINT32_MAX) {
    snprintf(err, errlen, "allow list entry \"%s\": expected a numeric %s", item,
             e->kind == ACL_UID ? "user id" : "group id");
    return -EINVAL;
  }
  e->id = id;
  return 0;
}

static int add_one(struct acl *acl, const char *item, char *err, size_t errlen) {
  if (strlen(item) >= ACL_TEXT_MAX) {
    snprintf(err, errlen, "allow list entry \"%.40s...\" is too long", item);
    return -EINVAL;
  }
  struct acl_entry e = {0};
  snprintf(e.text, sizeof e.text, "%s", item);
  int r;
  if (strncmp(item, "dn:", 3) == 0 || strncmp(item, "psk:", 4) == 0) {
    e.kind = item[0] == 'd' ? ACL_DN : ACL_PSK;
    e.value = e.kind == ACL_DN ? 3 : 4;
    r = e.text[e.value] ? 0 : -EINVAL;
    if (r < 0)
      snprintf(err, errlen, "allow list entry \"%s\": empty %s", item,
               e.kind == ACL_DN ? "DN pattern" : "PSK identity");
  } else if (strncmp(item, "uid:", 4) == 0 || strncmp(item, "gid:", 4) == 0) {
    e.kind = item[0] == 'u' ? ACL_UID : ACL_GID;
    r = parse_id(&e, item, err, errlen);
  } else {
    e.kind = ACL_CIDR;
    r = parse_cidr(&e, item, err, errlen);
  }
  if (r < 0)
    return r;
  struct acl_entry *n = realloc(acl->entries, (acl->n + 1) * sizeof *n);
  if (!n) {
    snprintf(err, errlen, "out of memory");
    return -ENOMEM;
  }
  acl->entries = n;
  acl->entries[acl->n++] = e;
  return 0;
}

int acl_add(struct acl *acl, const char *spec, char *err, size_t errlen) {
  const char *p = spec;
  const char *sep = ", \t";
  int r = 0;
  while (r == 0) {
    p += strspn(p, sep);
    if (!*p)
      break;
    if (strncmp(p, "dn:", 3) == 0) {
      /* The rest is the pattern, commas and spaces included, less the
       * blanks a line may end with. */
      size_t n = strlen(p);
      while (n > 3 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
      char *item = strndup(p, n);
      if (!item)
        return -ENOMEM;
      r = add_one(acl, item, err, errlen);
      free(item);
      break;
    }
    size_t n = strcspn(p, sep);
    char *item = strndup(p, n);
    if (!item)
      return -ENOMEM;
    r = add_one(acl, item, err, errlen);
    free(item);
    p += n;
  }
  return r;
}

static bool prefix_match(const uint8_t *a, const uint8_t *b, unsigned bits) {
  unsigned bytes = bits / 8, rest = bits % 8;
  if (memcmp(a, b, bytes) != 0)
    return false;
  if (rest == 0)
    return true;
  uint8_t mask = (uint8_t)(0xFF << (8 - rest));
  return (a[bytes] & mask) == (b[bytes] & mask);
}

static bool cidr_match(const struct acl_entry *e, const struct sockaddr *sa) {
  if (!sa)
    return false;
  if (sa->sa_family == AF_INET)
    return e->family == AF_INET &&
           prefix_match((const uint8_t *)&((const struct sockaddr_in *)sa)->sin_addr, e->addr,
                        e->prefix);
  if (sa->sa_family != AF_INET6)
    return false;
  const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
  if (e->family == AF_INET6)
    return prefix_match(a->s6_addr, e->addr, e->prefix);
  /* IPv4-mapped IPv6 addresses match IPv4 entries. */
  return IN6_IS_ADDR_V4MAPPED(a) && prefix_match(a->s6_addr + 12, e->addr, e->prefix);
}

static bool entry_matches(const struct acl_entry *e, const struct acl_peer *p) {
  switch (e->kind) {
  case ACL_CIDR:
    return cidr_match(e, p->addr);
  case ACL_UID:
    return p->has_cred && (unsigned long)p->uid == e->id;
  case ACL_GID:
    return p->has_cred && (unsigned long)p->gid == e->id;
  case ACL_DN:
    return p->dn && fnmatch(e->text + e->value, p->dn, 0) == 0;
  case ACL_PSK:
    return p->psk && strcmp(e->text + e->value, p->psk) == 0;
  }
  return false;
}

bool acl_has(const struct acl *acl, enum acl_kind kind) {
  for (size_t i = 0; acl && i < acl->n; i++)
    if (acl->entries[i].kind == kind)
      return true;
  return false;
}

enum acl_verdict acl_check(const struct acl *acl, const struct acl_peer *peer) {
  if (!acl || acl->n == 0)
    return ACL_ALLOW;
  for (size_t i = 0; i < acl->n; i++)
    if (entry_matches(&acl->entries[i], peer))
      return ACL_ALLOW;
  bool tls_rules = acl_has(acl, ACL_DN) || acl_has(acl, ACL_PSK);
  if (!peer->addr && !tls_rules && !acl_has(acl, ACL_UID) && !acl_has(acl, ACL_GID))
    return ACL_ALLOW; /* address rules alone: not about clients without one */
  if (tls_rules && !peer->tls)
    return ACL_AFTER_TLS;
  return ACL_DENY;
}

bool acl_allows(const struct acl *acl, const struct sockaddr *sa) {
  struct acl_peer p = {.addr = sa && sa->sa_family != AF_UNIX ? sa : NULL};
  return acl_check(acl, &p) == ACL_ALLOW;
}

void acl_describe(const struct acl *acl, char *buf, size_t len) {
  size_t pos = 0;
  if (len == 0)
    return;
  buf[0] = '\0';
  for (size_t i = 0; i < acl->n && pos < len; i++) {
    int n = snprintf(buf + pos, len - pos, "%s%s", i ? ", " : "", acl->entries[i].text);
    if (n < 0)
      break;
    pos += (size_t)n;
  }
}

void acl_free(struct acl *acl) {
  free(acl->entries);
  acl->entries = NULL;
  acl->n = 0;
}
