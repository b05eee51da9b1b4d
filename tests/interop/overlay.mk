# Per-client copy-on-write overlays and live reconfiguration (SIGHUP).
SERVER_OVERLAY_TESTS = \
	tests/interop/test-overlay.sh \
	tests/interop/test-overlay-base.sh \
	tests/interop/test-overlay-mapped.sh \
	tests/interop/test-reload.sh \
	tests/interop/test-reload-locks.sh \
	tests/interop/test-reload-replaced.sh
TESTS += $(SERVER_OVERLAY_TESTS)
EXTRA_DIST += $(SERVER_OVERLAY_TESTS) tests/interop/reload_server.py
