/* test-acl: CIDR allow lists. */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "acl.h"
#include "check.h"

static bool allows4(const struct acl *a, const char *ip) {
  struct sockaddr_in sin = {.sin_family = AF_INET};
  inet_pton(AF_INET, ip, &sin.sin_addr);
  return acl_allows(a, (struct sockaddr *)&sin);
}
static bool allows6(const struct acl *a, const char *ip) {
  struct sockaddr_in6 sin6 = {.sin6_family = AF_INET6};
  inet_pton(AF_INET6, ip, &sin6.sin6_addr);
  return acl_allows(a, (struct sockaddr *)&sin6);
}

int main(void) {
  struct acl a = {0};
  char err[256];
  CHECK(allows4(&a, "192.0.2.1")); /* empty list: everyone */
  CHECK(acl_add(&a, "127.0.0.0/8, 10.1.0.0/16", err, sizeof err) == 0);
  CHECK(acl_add(&a, "2001:db8::/32", err, sizeof err) == 0);
  CHECK(allows4(&a, "127.0.0.1"));
  CHECK(allows4(&a, "127.255.255.254"));
  CHECK(allows4(&a, "10.1.200.3"));
  CHECK(!allows4(&a, "10.2.0.1"));
  CHECK(!allows4(&a, "128.0.0.1"));
  CHECK(allows6(&a, "2001:db8:1::5"));
  CHECK(!allows6(&a, "2001:db9::1"));
  CHECK(allows6(&a, "::ffff:127.0.0.1")); /* v4-mapped matches v4 entries */
  CHECK(!allows6(&a, "::1"));
  struct sockaddr_un sun = {.sun_family = AF_UNIX};
  CHECK(acl_allows(&a, (struct sockaddr *)&sun));
  acl_free(&a);

  CHECK(acl_add(&a, "192.0.2.7", err, sizeof err) == 0); /* host entry */
  CHECK(allows4(&a, "192.0.2.7"));
  CHECK(!allows4(&a, "192.0.2.8"));
  CHECK(acl_add(&a, "10.0.0.0/33", err, sizeof err) < 0 && strstr(err, "prefix"));
  CHECK(acl_add(&a, "not-an-address", err, sizeof err) < 0 && strstr(err, "not-an-address"));
  CHECK(acl_add(&a, "::1/129", err, sizeof err) < 0);
  CHECK(acl_add(&a, "10.0.0.0/", err, sizeof err) < 0);
  CHECK(acl_add(&a, "0.0.0.0/0", err, sizeof err) == 0);
  CHECK(allows4(&a, "203.0.113.9"));
  acl_free(&a);
  return check_finish("ACL");
}
