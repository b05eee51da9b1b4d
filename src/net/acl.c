/* acl.c: CIDR allow lists. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "acl.h"

static int add_one(struct acl *acl, const char *item, char *err, size_t errlen) {
  char buf[128];
  if (strlen(item) >= sizeof buf) {
    snprintf(err, errlen, "allow list entry \"%.40s...\" is too long", item);
    return -EINVAL;
  }
  snprintf(buf, sizeof buf, "%s", item);
  struct acl_entry e = {0};
  char *slash = strchr(buf, '/');
  if (slash)
    *slash = '\0';
  if (inet_pton(AF_INET, buf, e.addr) == 1) {
    e.family = AF_INET;
    e.prefix = 32;
  } else if (inet_pton(AF_INET6, buf, e.addr) == 1) {
    e.family = AF_INET6;
    e.prefix = 128;
  } else {
    snprintf(err, errlen, "allow list entry \"%s\": not an IPv4 or IPv6 address", item);
    return -EINVAL;
  }
  if (slash) {
    char *end;
    unsigned long p = strtoul(slash + 1, &end, 10);
    if (!slash[1] || *end || p > e.prefix) {
      snprintf(err, errlen, "allow list entry \"%s\": bad prefix length", item);
      return -EINVAL;
    }
    e.prefix = (unsigned)p;
  }
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
  char *copy = strdup(spec);
  if (!copy)
    return -ENOMEM;
  int r = 0;
  char *save = NULL;
  for (char *tok = strtok_r(copy, ", \t", &save); tok && r == 0; tok = strtok_r(NULL, ", \t", &save))
    r = add_one(acl, tok, err, errlen);
  free(copy);
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

bool acl_allows(const struct acl *acl, const struct sockaddr *sa) {
  if (!acl || acl->n == 0 || !sa || sa->sa_family == AF_UNIX)
    return true;
  uint8_t v4[4], v6[16];
  bool have4 = false, have6 = false;
  if (sa->sa_family == AF_INET) {
    memcpy(v4, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    have4 = true;
  } else if (sa->sa_family == AF_INET6) {
    const struct in6_addr *a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    memcpy(v6, a, 16);
    have6 = true;
    if (IN6_IS_ADDR_V4MAPPED(a)) {
      memcpy(v4, v6 + 12, 4);
      have4 = true;
    }
  } else {
    return false;
  }
  for (size_t i = 0; i < acl->n; i++) {
    const struct acl_entry *e = &acl->entries[i];
    if (e->family == AF_INET && have4 && prefix_match(v4, e->addr, e->prefix))
      return true;
    if (e->family == AF_INET6 && have6 && prefix_match(v6, e->addr, e->prefix))
      return true;
  }
  return false;
}

void acl_free(struct acl *acl) {
  free(acl->entries);
  acl->entries = NULL;
  acl->n = 0;
}
