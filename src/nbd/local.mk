# NBD codec (bytes <-> options, requests, replies); no sockets.
noinst_LIBRARIES += libnbdcodec.a
libnbdcodec_a_SOURCES = \
	src/nbd/nbd-proto.h \
	src/nbd/codec.c src/nbd/codec.h
