# Network policy pieces the server uses: TLS sessions and client allow lists.
noinst_LIBRARIES += libnet.a
libnet_a_SOURCES = \
	src/net/tls.c src/net/tls.h \
	src/net/acl.c src/net/acl.h
libnet_a_CFLAGS = $(AM_CFLAGS) $(GNUTLS_CFLAGS)
