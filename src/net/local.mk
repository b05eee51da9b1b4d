# Network policy pieces the server uses: TLS sessions, client allow lists,
# and which peer addresses count as one client.
noinst_LIBRARIES += libnet.a
libnet_a_SOURCES = \
	src/net/tls.c src/net/tls.h \
	src/net/acl.c src/net/acl.h \
	src/net/same-client.c src/net/same-client.h
libnet_a_CFLAGS = $(AM_CFLAGS) $(GNUTLS_CFLAGS)
