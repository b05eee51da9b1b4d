/* same-client.h: whether two peer addresses belong to the same client, for
 * caps counted per client address. */
#ifndef VHDNBD_SAME_CLIENT_H
#define VHDNBD_SAME_CLIENT_H

#include <stdbool.h>
#include <sys/socket.h>

/* IPv4 addresses compare whole.  IPv6 addresses compare by their /64
 * prefix: a host is normally given a whole /64, and one that counted by full
 * address could open as many connections as it has addresses.  An
 * IPv4-mapped IPv6 address (::ffff:a.b.c.d, as a dual-stack listener sees
 * an IPv4 client) compares as the IPv4 address it carries.  Anything else
 * (Unix sockets, unknown families) is never the same client. */
bool same_client(const struct sockaddr *a, const struct sockaddr *b);

#endif
