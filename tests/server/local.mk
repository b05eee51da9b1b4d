# Protocol tests of the server: C programs driving vhdnbd through libnbd (and
# raw sockets for what libnbd will not send).  Each starts its own server on a
# Unix socket in a private temp dir; see tests/server/harness.h.
if HAVE_LIBNBD
noinst_LIBRARIES += libtestharness.a
libtestharness_a_SOURCES = tests/server/harness.c tests/server/harness.h
libtestharness_a_CFLAGS = $(AM_CFLAGS) $(LIBNBD_CFLAGS)

SERVER_TESTS = \
	tests/server/test-handshake \
	tests/server/test-structured-reads \
	tests/server/test-block-status \
	tests/server/test-errors \
	tests/server/test-write-zeroes \
	tests/server/test-multi-conn \
	tests/server/test-pipelining \
	tests/server/test-client-vanish \
	tests/server/test-stdio \
	tests/server/test-socket-activation \
	tests/server/test-shutdown \
	tests/server/test-options \
	tests/server/test-limits \
	tests/server/test-listen \
	tests/server/test-sub-sector \
	tests/server/test-differencing \
	tests/server/test-io-errors \
	tests/server/test-flush-error \
	tests/server/test-space-reuse \
	tests/server/test-error-messages \
	tests/server/test-extended-headers

check_PROGRAMS += $(SERVER_TESTS)
TESTS += $(SERVER_TESTS)

SERVER_TEST_CFLAGS = $(AM_CFLAGS) $(LIBNBD_CFLAGS)
SERVER_TEST_LDADD = libtestharness.a $(LIBNBD_LIBS)

tests_server_test_extended_headers_SOURCES = tests/server/test-extended-headers.c
tests_server_test_extended_headers_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_extended_headers_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_error_messages_SOURCES = tests/server/test-error-messages.c
tests_server_test_error_messages_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_error_messages_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_space_reuse_SOURCES = tests/server/test-space-reuse.c
tests_server_test_space_reuse_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_space_reuse_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_handshake_SOURCES = tests/server/test-handshake.c
tests_server_test_handshake_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_handshake_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_structured_reads_SOURCES = tests/server/test-structured-reads.c
tests_server_test_structured_reads_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_structured_reads_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_block_status_SOURCES = tests/server/test-block-status.c
tests_server_test_block_status_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_block_status_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_errors_SOURCES = tests/server/test-errors.c
tests_server_test_errors_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_errors_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_multi_conn_SOURCES = tests/server/test-multi-conn.c
tests_server_test_multi_conn_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_multi_conn_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_pipelining_SOURCES = tests/server/test-pipelining.c
tests_server_test_pipelining_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_pipelining_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_client_vanish_SOURCES = tests/server/test-client-vanish.c
tests_server_test_client_vanish_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_client_vanish_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_stdio_SOURCES = tests/server/test-stdio.c
tests_server_test_stdio_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_stdio_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_socket_activation_SOURCES = tests/server/test-socket-activation.c
tests_server_test_socket_activation_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_socket_activation_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_shutdown_SOURCES = tests/server/test-shutdown.c
tests_server_test_shutdown_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_shutdown_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_write_zeroes_SOURCES = tests/server/test-write-zeroes.c
tests_server_test_write_zeroes_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_write_zeroes_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_options_SOURCES = tests/server/test-options.c
tests_server_test_options_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_options_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_limits_SOURCES = tests/server/test-limits.c
tests_server_test_limits_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_limits_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_listen_SOURCES = tests/server/test-listen.c
tests_server_test_listen_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_listen_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_sub_sector_SOURCES = tests/server/test-sub-sector.c
tests_server_test_sub_sector_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_sub_sector_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_differencing_SOURCES = tests/server/test-differencing.c
tests_server_test_differencing_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_differencing_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_io_errors_SOURCES = tests/server/test-io-errors.c
tests_server_test_io_errors_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_io_errors_LDADD = $(SERVER_TEST_LDADD)
tests_server_test_flush_error_SOURCES = tests/server/test-flush-error.c
tests_server_test_flush_error_CFLAGS = $(SERVER_TEST_CFLAGS)
tests_server_test_flush_error_LDADD = $(SERVER_TEST_LDADD)
else
# Without libnbd nothing here can be built: one stand-in test skips (77)
# with the reason, so that make check does not drop the protocol tests
# without a word.
TESTS += tests/server/no-libnbd.sh
endif
EXTRA_DIST += tests/server/no-libnbd.sh
