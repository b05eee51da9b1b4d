/* test-same-client: which peer addresses count as one client for
 * --max-connections-per-address. */
#include "config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "check.h"
#include "same-client.h"

static struct sockaddr_storage addr(const char *ip) {
  struct sockaddr_storage ss;
  memset(&ss, 0, sizeof ss);
  if (strchr(ip, ':')) {
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    s6->sin6_family = AF_INET6;
    CHECK(inet_pton(AF_INET6, ip, &s6->sin6_addr) == 1);
  } else {
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    s4->sin_family = AF_INET;
    CHECK(inet_pton(AF_INET, ip, &s4->sin_addr) == 1);
  }
  return ss;
}

static bool same(const char *x, const char *y) {
  struct sockaddr_storage a = addr(x), b = addr(y);
  bool r = same_client((struct sockaddr *)&a, (struct sockaddr *)&b);
  CHECK(r == same_client((struct sockaddr *)&b, (struct sockaddr *)&a));
  return r;
}

int main(void) {
  CHECK(same("192.0.2.1", "192.0.2.1"));
  CHECK(!same("192.0.2.1", "192.0.2.2"));
  CHECK(!same("192.0.2.1", "193.0.2.1"));
  /* One /64 is one client, whatever the interface identifier. */
  CHECK(same("2001:db8:1:2::1", "2001:db8:1:2:ffff:ffff:ffff:ffff"));
  CHECK(same("::1", "::1"));
  CHECK(!same("2001:db8:1:2::1", "2001:db8:1:3::1"));
  CHECK(!same("2001:db8:1:2::1", "2001:db9:1:2::1"));
  /* Mapped IPv4 is IPv4: the same client on a dual-stack or an IPv4
   * listener, and never merged into one /64 with other IPv4 clients. */
  CHECK(same("::ffff:192.0.2.1", "192.0.2.1"));
  CHECK(same("::ffff:192.0.2.1", "::ffff:192.0.2.1"));
  CHECK(!same("::ffff:192.0.2.1", "::ffff:192.0.2.2"));
  CHECK(!same("::ffff:192.0.2.1", "192.0.2.2"));
  CHECK(!same("::ffff:192.0.2.1", "::ffff:0:0"));
  /* The first 8 bytes of a mapped address are zero, like ::1's. */
  CHECK(!same("::ffff:127.0.0.1", "::1"));
  /* Unix-socket peers have no address to group by. */
  struct sockaddr_un u = {.sun_family = AF_UNIX};
  struct sockaddr_storage v4 = addr("127.0.0.1");
  CHECK(!same_client((struct sockaddr *)&u, (struct sockaddr *)&u));
  CHECK(!same_client((struct sockaddr *)&u, (struct sockaddr *)&v4));
  return check_finish("same-client");
}
