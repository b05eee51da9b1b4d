# Interop tests of the server: real NBD clients (QEMU, libnbd's tools, fio,
# nbd-client) against vhdnbd on a Unix socket (TCP on 127.0.0.1 for
# nbd-client -l).  Each skips when its client is not installed.
SERVER_INTEROP_TESTS = \
	tests/interop/test-qemu-img-nbd.sh \
	tests/interop/test-qemu-io-nbd.sh \
	tests/interop/test-nbdinfo.sh \
	tests/interop/test-allocation-depth.sh \
	tests/interop/test-fio-nbd.sh \
	tests/interop/test-nbd-client-list.sh \
	tests/interop/test-nbdcopy.sh \
	tests/interop/test-nbdcopy-overwrite.sh \
	tests/interop/test-log-client-strings.sh \
	tests/interop/test-metrics.sh \
	tests/interop/test-loop-writes.sh \
	tests/interop/test-direct-replies.sh \
	tests/interop/test-direct-read-replies.sh \
	tests/interop/test-spliced-writes.sh \
	tests/interop/test-payload-low-water.sh \
	tests/interop/test-splice-reads.sh \
	tests/interop/test-splice-read-trim.sh \
	tests/interop/test-zero-full-fs.sh \
	tests/interop/test-spliced-reply-framing.sh \
	tests/interop/test-loops.sh \
	tests/interop/test-loops-protocol.sh \
	tests/interop/test-worker-policy.sh \
	tests/interop/test-sparse-blocks.sh \
	tests/interop/test-write-lanes.sh \
	tests/interop/test-write-ahead.sh \
	tests/interop/test-sigterm-twice.sh \
	tests/interop/test-unix-socket.sh \
	tests/interop/test-crash-window.sh

TESTS += $(SERVER_INTEROP_TESTS)
EXTRA_DIST += $(SERVER_INTEROP_TESTS)

# Read-only exports, access control, TLS (TCP on loopback), the idle timeout, the server-wide
# in-flight cap, and --check-config.
SERVER_POLICY_TESTS = \
	tests/interop/test-check-config.sh \
	tests/interop/test-acl.sh \
	tests/interop/test-allow-identity.sh \
	tests/interop/test-option-errors.sh \
	tests/interop/test-tls.sh \
	tests/interop/test-idle-timeout.sh \
	tests/interop/test-max-inflight.sh \
	tests/interop/test-read-only.sh
TESTS += $(SERVER_POLICY_TESTS)
# test-tls.sh's GnuTLS client that picks the PSK key exchange.
check_PROGRAMS += tls-psk-client
tls_psk_client_SOURCES = tests/interop/tls-psk-client.c
tls_psk_client_CFLAGS = $(AM_CFLAGS) $(GNUTLS_CFLAGS)
tls_psk_client_LDADD = $(GNUTLS_LIBS)
EXTRA_DIST += $(SERVER_POLICY_TESTS)
# The caps on connections per address and negotiating, and --payload-timeout.
SERVER_POLICY_TESTS += tests/interop/test-connection-caps.sh
