/* test-acl: allow lists by network and by identity. */
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

  /* Identity rules. */
  struct sockaddr_in lo = {.sin_family = AF_INET};
  inet_pton(AF_INET, "127.0.0.1", &lo.sin_addr);
  struct acl_peer tcp = {.addr = (struct sockaddr *)&lo};
  struct acl_peer unix_root = {.has_cred = true, .uid = 0, .gid = 0};
  struct acl_peer unix_nobody = {.has_cred = true, .uid = 65534, .gid = 65534};
  struct acl_peer unix_unknown = {0};
  /* Address rules alone: clients without an address pass, as before. */
  CHECK(acl_add(&a, "10.0.0.0/8", err, sizeof err) == 0);
  CHECK(acl_check(&a, &unix_root) == ACL_ALLOW);
  CHECK(acl_check(&a, &unix_unknown) == ACL_ALLOW);
  CHECK(acl_check(&a, &tcp) == ACL_DENY);
  /* An identity rule makes the list apply to everyone. */
  CHECK(acl_add(&a, "uid:65534", err, sizeof err) == 0);
  CHECK(acl_check(&a, &unix_nobody) == ACL_ALLOW);
  CHECK(acl_check(&a, &unix_root) == ACL_DENY);
  CHECK(acl_check(&a, &unix_unknown) == ACL_DENY);
  CHECK(acl_check(&a, &tcp) == ACL_DENY);
  acl_free(&a);
  CHECK(acl_add(&a, "gid:0", err, sizeof err) == 0);
  CHECK(acl_check(&a, &unix_root) == ACL_ALLOW);
  CHECK(acl_check(&a, &unix_nobody) == ACL_DENY);
  acl_free(&a);
  /* A user in another group: each rule looks at its own id. */
  struct acl_peer mixed = {.has_cred = true, .uid = 65534, .gid = 100};
  CHECK(acl_add(&a, "uid:100", err, sizeof err) == 0);
  CHECK(acl_check(&a, &mixed) == ACL_DENY);
  CHECK(acl_add(&a, "gid:65534", err, sizeof err) == 0);
  CHECK(acl_check(&a, &mixed) == ACL_DENY);
  CHECK(acl_add(&a, "gid:100", err, sizeof err) == 0);
  CHECK(acl_check(&a, &mixed) == ACL_ALLOW);
  acl_free(&a);
  CHECK(acl_add(&a, "uid:65534", err, sizeof err) == 0);
  CHECK(acl_check(&a, &mixed) == ACL_ALLOW);
  acl_free(&a);
  /* dn: takes the rest of the value, commas and blanks included. */
  CHECK(acl_add(&a, "127.0.0.0/8, psk:alice dn:CN=a*,O=vhdnbd test  ", err, sizeof err) == 0);
  CHECK(a.n == 3 && a.entries[2].kind == ACL_DN);
  CHECK(strcmp(a.entries[2].text, "dn:CN=a*,O=vhdnbd test") == 0);
  char desc[256];
  acl_describe(&a, desc, sizeof desc);
  CHECK(strcmp(desc, "127.0.0.0/8, psk:alice, dn:CN=a*,O=vhdnbd test") == 0);
  struct acl_peer far = {.addr = (struct sockaddr *)&lo};
  struct sockaddr_in other = {.sin_family = AF_INET};
  inet_pton(AF_INET, "192.0.2.1", &other.sin_addr);
  far.addr = (struct sockaddr *)&other;
  CHECK(acl_check(&a, &far) == ACL_AFTER_TLS); /* may match after TLS */
  far.tls = true;
  CHECK(acl_check(&a, &far) == ACL_DENY);
  far.dn = "CN=alice,O=vhdnbd test";
  CHECK(acl_check(&a, &far) == ACL_ALLOW);
  far.dn = "CN=bob,O=vhdnbd test";
  CHECK(acl_check(&a, &far) == ACL_DENY);
  far.dn = "CN=alice,O=vhdnbd test,C=XX"; /* the glob matches the whole DN */
  CHECK(acl_check(&a, &far) == ACL_DENY);
  far.dn = NULL;
  far.psk = "alice";
  CHECK(acl_check(&a, &far) == ACL_ALLOW);
  far.psk = "alice2";
  CHECK(acl_check(&a, &far) == ACL_DENY);
  CHECK(acl_check(&a, &tcp) == ACL_ALLOW);
  acl_free(&a);
  CHECK(acl_add(&a, "uid:x", err, sizeof err) < 0 && strstr(err, "uid:x"));
  CHECK(acl_add(&a, "gid:-1", err, sizeof err) < 0);
  CHECK(acl_add(&a, "uid:4294967295", err, sizeof err) < 0);
  CHECK(acl_add(&a, "psk:", err, sizeof err) < 0 && strstr(err, "psk:"));
  CHECK(acl_add(&a, "dn:  ", err, sizeof err) < 0);
  CHECK(a.n == 0);
  return check_finish("ACL");
}
