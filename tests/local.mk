EXTRA_DIST += tests/functions.sh
# Planted bugs, each naming the test that must catch it (see HACKING.md).
EXTRA_DIST += tests/mutants/queue-overlap-off-by-one.patch tests/mutants/queue-flush-barrier.patch
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
