# Unit tests of the NBD codec.
check_PROGRAMS += test-nbd-codec
TESTS += test-nbd-codec
VALGRIND_TESTS += test-nbd-codec
test_nbd_codec_SOURCES = tests/unit/test-nbd-codec.c tests/unit/check.h
test_nbd_codec_LDADD = libnbdcodec.a libcommon.a

# The server's serializing queue (pure bookkeeping, no loop needed).
check_PROGRAMS += test-server-queue
TESTS += test-server-queue
VALGRIND_TESTS += test-server-queue
test_server_queue_SOURCES = tests/unit/test-server-queue.c tests/unit/check.h src/server/queue.c \
	src/server/queue.h
test_server_queue_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/src/server \
	-DQUEUE_REALLOC=queue_test_realloc

# The server's write lane policy.
check_PROGRAMS += test-server-lanes
TESTS += test-server-lanes
VALGRIND_TESTS += test-server-lanes
test_server_lanes_SOURCES = tests/unit/test-server-lanes.c tests/unit/check.h src/server/lanes.c \
	src/server/lanes.h
test_server_lanes_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/src/server

# The server's payload buffer pool.
check_PROGRAMS += test-server-bufpool
TESTS += test-server-bufpool
VALGRIND_TESTS += test-server-bufpool
test_server_bufpool_SOURCES = tests/unit/test-server-bufpool.c tests/unit/check.h src/server/bufpool.c \
	src/server/bufpool.h
test_server_bufpool_CPPFLAGS = $(AM_CPPFLAGS) -I$(top_srcdir)/src/server
