EXTRA_DIST += tests/functions.sh
# Planted bugs (patches against src, applied with patch -p1); the first line
# of each names the test that must catch it.
EXTRA_DIST += \
	tests/mutants/layout-footer-over-metadata.patch \
	tests/mutants/layout-alloc-over-metadata.patch \
	tests/mutants/layout-reuse-stale-bytes.patch \
	tests/mutants/layout-repair-cuts-data.patch \
	tests/mutants/layout-repair-keeps-stale-footer.patch
include tests/unit/engine.mk
include tests/unit/codec.mk
include tests/unit/net.mk
include tests/unit/engine-threads.mk
include tests/server/local.mk
include tests/interop/image.mk
include tests/interop/server.mk
include tests/fuzz/local.mk
include tests/stress/local.mk
include tests/kernel/local.mk
